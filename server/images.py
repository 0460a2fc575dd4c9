"""Decoding encoded images for the image-classification service, with limits.

Only the raster formats in :data:`ALLOWED_FORMATS` are decoded: Pillow's ``Image.open``
is given them as ``formats=``, so it never runs the parser of any other format it knows.
A file in another format - EPS (whose decoder runs Ghostscript), PSD, PCX, TGA, DDS, ICO,
JPEG 2000, ... - is refused with its format named, found by opening its header only
(never its pixels) after the allowed formats have all declined it.

The pixel count is checked from the header before any pixel is decoded, so a
small file that expands to a huge image (a decompression bomb) is refused cheaply.
Of a multi-frame image (animated GIF, WebP or PNG, multi-page TIFF, MPO) only the
first frame is decoded and used; nothing seeks to the others, so their size and pixel
data never matter.

The decoded pixels, in whatever mode the file holds (bit depth, alpha, palette,
colour space), become the model's input through :func:`modelrepo.preprocess_image`,
whose table (:data:`modelrepo.preprocess.CONVERSIONS`) converts every Pillow mode to
L or RGB: alpha composited onto white, 16-bit samples reduced to their high byte,
float samples read as 0.0..1.0. Every image either becomes a tensor or raises
:class:`~server.errors.InvalidInput` naming the image's index and the problem: empty,
too many pixels, a format not allowed or not recognised, data that cannot be decoded
(truncated, corrupt), or pixels the table refuses (NaN, out of range).
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from modelrepo import Preprocessing, preprocess_image
from modelrepo.preprocess import UnsupportedImage
from server.errors import InvalidInput

#: Pillow format ids the server decodes: the raster formats cameras, browsers, scanners and
#: imaging tools write, each decoded by Pillow or a library bundled with it (libjpeg,
#: zlib, libwebp, libtiff), none by an external program. JPEG includes MPO (the
#: multi-picture JPEG of many cameras); PPM is the Netpbm family (PBM, PGM, PPM, PFM).
#: Left out: ICO (icons, a container of BMP or PNG at several sizes), JPEG 2000 (rare,
#: a large decoder) and Pillow's many legacy or niche formats.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF", "PPM")

_ALLOWED = ", ".join(ALLOWED_FORMATS)

#: What Pillow raises for truncated or corrupt data while opening, decoding or converting
#: (TypeError: a TIFF tag of the wrong type, e.g. float StripOffsets, reaches ``seek``).
_DATA_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, struct.error)


def _other_format(data: bytes) -> str | None:
    """The format of ``data`` among those not allowed, from its header only, or None."""
    Image.init()
    others = [fmt for fmt in Image.ID if fmt not in ALLOWED_FORMATS]
    try:
        with Image.open(io.BytesIO(data), formats=others) as image:
            return image.format
    except Exception:  # naming the format is best effort: any failure means "not recognised"
        return None


def _signature(data: bytes) -> tuple[str, bool | str] | None:
    """The allowed format whose signature ``data`` starts with, and Pillow's verdict on it."""
    Image.init()
    for fmt in ALLOWED_FORMATS:
        accept = Image.OPEN[fmt][1]
        verdict = accept(data[:16]) if accept is not None else False
        if verdict:
            return fmt, verdict
    return None


def _not_opened(data: bytes, index: int) -> str:
    """Why no allowed format opened ``data``: which format it is, or what is wrong with it."""
    signature = _signature(data)
    if signature is not None:
        fmt, verdict = signature
        if isinstance(verdict, str):  # Pillow knows the format but lacks support for it
            return f"image {index} could not be decoded as {fmt}: {verdict}"
        # The signature matched but the header did not parse; the parser says why.
        try:
            Image.OPEN[fmt][0](io.BytesIO(data), "").close()
        except Exception as exc:  # whatever it is, it is the reason; the request is refused anyway
            return f"image {index} could not be decoded as {fmt}: {exc}"
        return f"image {index} could not be decoded as {fmt}: its header is invalid"
    other = _other_format(data)
    if other is not None:
        return (
            f"image {index} is in {other} format, which the server does not decode; "
            f"expected one of {_ALLOWED}"
        )
    return f"image {index} ({len(data)} bytes) is not a recognised image format; expected one of {_ALLOWED}"


def _open(data: bytes, index: int, max_pixels: int) -> Image.Image:
    """Open ``data`` in an allowed format and decode its first frame, within ``max_pixels``."""
    with warnings.catch_warnings():
        # Pillow's own bomb check only warns below 2x its limit; ours is the one that counts.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except UnidentifiedImageError:
            raise InvalidInput(_not_opened(data, index)) from None
        except Image.DecompressionBombError as exc:
            # Pillow's own, larger limit tripped before ours could look at the size.
            raise InvalidInput(
                f"image {index} has more pixels than the server accepts (at most {max_pixels}): {exc}"
            ) from None
        except _DATA_ERRORS as exc:
            signature = _signature(data)
            fmt = f" as {signature[0]}" if signature is not None else ""
            raise InvalidInput(f"image {index} could not be decoded{fmt}: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidInput(
            f"image {index} is {width}x{height} ({width * height} pixels); "
            f"the server accepts at most {max_pixels} pixels"
        )
    try:
        image.load()  # the current frame, the first: nothing seeks to the others
    except _DATA_ERRORS as exc:
        raise InvalidInput(f"image {index} could not be decoded as {image.format}: {exc}") from None
    return image


def decode_image(data: bytes, index: int, pre: Preprocessing, max_pixels: int) -> np.ndarray:
    """Decode one encoded image and preprocess it into the model's CHW float32 input."""
    if not data:
        raise InvalidInput(f"image {index} is empty; expected encoded image bytes ({_ALLOWED})")
    with _open(data, index, max_pixels) as image:
        try:
            return preprocess_image(image, pre)
        except UnsupportedImage as exc:
            raise InvalidInput(f"image {index} {exc.problem}") from None
        except _DATA_ERRORS as exc:
            raise InvalidInput(f"image {index} could not be decoded as {image.format}: {exc}") from None


def decode_images(images: Sequence[bytes], pre: Preprocessing, max_pixels: int) -> np.ndarray:
    """Decode a request's images into one NCHW float32 batch."""
    return np.stack([decode_image(data, i, pre, max_pixels) for i, data in enumerate(images)])
