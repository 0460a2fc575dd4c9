"""Image preprocessing shared by training (export) and serving (server, clients).

One function turns a PIL image into the model's input, so the tensors a model was
trained and evaluated on are made exactly as the server makes them from a request.

First the image becomes 8-bit ``L`` (1-channel models) or ``RGB`` (3-channel models).
:data:`CONVERSIONS` holds the rule for every Pillow mode:

==========================  ================================================================
mode                        becomes L / RGB by
==========================  ================================================================
``L``, ``RGB``              nothing (L <-> RGB: Pillow's ``convert``, RGB -> L is ITU-R 601-2
                            luma, L -> RGB copies the channel). Results for these never change.
``1``, ``P``, ``RGBX``,     Pillow's ``convert`` (``P`` through its palette; ``CMYK`` naively,
``CMYK``, ``YCbCr``,        without a colour profile; ``YCbCr`` -> L keeps Y). ``LAB`` -> L
``HSV``, ``LAB``            goes through RGB, which Pillow converts to with a real L*a*b* -> sRGB
                            transform.
``LA``, ``La``, ``PA``,     alpha composited onto white (:data:`ALPHA_BACKGROUND`); then as
``RGBA``, ``RGBa``,         L / RGB. Fully opaque pixels keep their exact value, so an opaque
``P`` with transparency     RGBA or LA image gives the same tensor as the RGB or L one.
``I;16`` (any byte order)   the high byte (``v >> 8``): 0..65535 -> 0..255, the reduction
                            Pillow itself applies to 16-bit-per-channel PNG and TIFF colour.
``I`` (32-bit signed)       treated as 16-bit, what Pillow mostly decodes into it (16-bit
                            PGM/PPM, 16-bit signed TIFF): ``v >> 8`` after checking 0..65535,
                            so 32-bit TIFF samples beyond 16 bits are refused, not saturated.
``F`` (32-bit float)        nominal range 0.0..1.0, the convention of float image data:
                            ``round(v * 255)`` after checking the range.
==========================  ================================================================

Only the first frame of a multi-frame image is used (it is the one a Pillow image holds
unless seeked). L and RGB images with a ``tRNS`` colour key are used as they are.

An image the table cannot convert - a mode it does not know, ``I`` or ``F`` pixels outside
the nominal range, NaN or infinite ``F`` pixels - raises :class:`UnsupportedImage` naming
the mode and the problem. Pixels are never clamped or scaled by their own minimum and
maximum, so the same pixel value always gives the same input, whatever else the image holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from modelrepo.config import Preprocessing

#: The grey level transparent pixels are composited onto: white, the background a transparent
#: image is seen on in a document, in a browser's default style and when image editors flatten
#: it. Dropping alpha instead (Pillow's ``convert``) shows whatever colour the encoder left
#: under alpha 0, usually black: a dark drawing on a transparent background would vanish.
ALPHA_BACKGROUND = 255


class UnsupportedImage(ValueError):
    """A PIL image that cannot be converted to the model's L or RGB mode.

    ``problem`` completes a sentence about the image ("has mode 'XYZ' which ...") so a
    caller can name the image: ``f"image 3 {exc.problem}"``.
    """

    def __init__(self, problem: str) -> None:
        super().__init__(f"image {problem}")
        self.problem = problem


def _composite(image: Image.Image) -> Image.Image:
    """Blend an LA or RGBA image onto :data:`ALPHA_BACKGROUND`; return L or RGB."""
    if image.mode not in ("LA", "RGBA"):
        # Pillow un-premultiplies La / RGBa and expands PA / P palettes with their alpha.
        image = image.convert("LA" if image.mode == "La" else "RGBA")
    pixels = np.asarray(image, dtype=np.uint16)
    colour, alpha = pixels[..., :-1], pixels[..., -1:]
    # Integer blend rounded to nearest: alpha 255 keeps the colour exactly, alpha 0 is the background.
    blended = (colour * alpha + ALPHA_BACKGROUND * (255 - alpha) + 127) // 255
    flat = blended.astype(np.uint8)
    return Image.fromarray(flat[..., 0], "L") if flat.shape[-1] == 1 else Image.fromarray(flat, "RGB")


def _has_transparency(image: Image.Image) -> bool:
    palette_alpha = image.palette is not None and image.palette.mode.endswith("A")
    return "transparency" in image.info or palette_alpha


def _alpha(image: Image.Image, target: str) -> Image.Image:
    return _composite(image)


def _palette(image: Image.Image, target: str) -> Image.Image:
    return _composite(image) if _has_transparency(image) else image.convert(target)


def _high_byte(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray((pixels >> 8).astype(np.uint8), "L")


def _sixteen_bit(image: Image.Image, target: str) -> Image.Image:
    return _high_byte(np.asarray(image))


def _int32(image: Image.Image, target: str) -> Image.Image:
    pixels = np.asarray(image)
    low, high = (int(pixels.min()), int(pixels.max())) if pixels.size else (0, 0)
    if low < 0 or high > 65535:
        raise UnsupportedImage(
            f"has 32-bit integer pixels from {low} to {high}; expected 0..65535 (16-bit samples, "
            f"scaled to 8 bits for {target})"
        )
    return _high_byte(pixels)


def _float(image: Image.Image, target: str) -> Image.Image:
    pixels = np.asarray(image)
    bad = int(np.count_nonzero(~np.isfinite(pixels)))
    if bad:
        raise UnsupportedImage(
            f"has {bad} NaN or infinite float pixels; expected finite values in 0.0..1.0 for {target}"
        )
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    if low < 0.0 or high > 1.0:
        raise UnsupportedImage(
            f"has float pixels from {low:g} to {high:g}; expected 0.0..1.0 (scaled to 8 bits for {target})"
        )
    return Image.fromarray(np.floor(pixels * np.float32(255.0) + np.float32(0.5)).astype(np.uint8), "L")


def _pillow(image: Image.Image, target: str) -> Image.Image:
    return image.convert(target)


def _through_rgb(image: Image.Image, target: str) -> Image.Image:
    return image.convert("RGB")


Converter = Callable[[Image.Image, str], Image.Image]

#: Every Pillow mode and how it becomes 8-bit L or RGB (the target's name is passed so
#: that a converter may go there directly); the result is then converted to the target.
CONVERSIONS: dict[str, Converter] = {
    "L": _pillow,
    "RGB": _pillow,
    "1": _pillow,
    "P": _palette,
    "RGBX": _pillow,
    "CMYK": _pillow,
    "YCbCr": _pillow,
    "HSV": _pillow,
    "LAB": _through_rgb,  # Pillow has no LAB -> L
    "LA": _alpha,
    "La": _alpha,
    "PA": _alpha,
    "RGBA": _alpha,
    "RGBa": _alpha,
    "I;16": _sixteen_bit,
    "I;16B": _sixteen_bit,
    "I;16L": _sixteen_bit,
    "I;16N": _sixteen_bit,
    "I": _int32,
    "F": _float,
}


def to_model_mode(image: Image.Image, channels: int) -> Image.Image:
    """Return ``image`` as 8-bit ``L`` (``channels`` 1) or ``RGB`` (3) by :data:`CONVERSIONS`.

    Raises :class:`UnsupportedImage` for a mode not in the table or pixels it refuses.
    """
    target = "L" if channels == 1 else "RGB"
    if image.mode == target:
        return image
    converter = CONVERSIONS.get(image.mode)
    if converter is None:
        raise UnsupportedImage(
            f"has mode {image.mode!r} which cannot be converted to {target}; "
            f"convertible modes are {', '.join(CONVERSIONS)}"
        )
    try:
        flat = converter(image, target)
    except UnsupportedImage:
        raise
    except ValueError as exc:  # a Pillow build without one of the conversions used
        raise UnsupportedImage(
            f"has mode {image.mode!r} which cannot be converted to {target}: {exc}"
        ) from None
    return flat if flat.mode == target else flat.convert(target)


def preprocess_image(image: Image.Image, pre: Preprocessing) -> np.ndarray:
    """Return the CHW float32 tensor for one image (any mode, see :data:`CONVERSIONS`)."""
    image = to_model_mode(image, pre.channels)
    if image.size != (pre.width, pre.height):
        image = image.resize((pre.width, pre.height), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.float32) * np.float32(1.0 / 255.0)
    if array.ndim == 2:
        array = array[None, :, :]
    else:
        array = array.transpose(2, 0, 1)
    mean = np.asarray(pre.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(pre.std, dtype=np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((array - mean) / std, dtype=np.float32)


def preprocess_images(images: Sequence[Image.Image], pre: Preprocessing) -> np.ndarray:
    """Return the NCHW float32 batch for several images."""
    if not images:
        return np.zeros((0, pre.channels, pre.height, pre.width), dtype=np.float32)
    return np.stack([preprocess_image(image, pre) for image in images])
