"""The one preprocessing function: mode conversion, resize, scaling, normalisation, layout."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from modelrepo import Preprocessing, preprocess_image, preprocess_images
from modelrepo.preprocess import UnsupportedImage


def test_grayscale_is_scaled_and_normalised() -> None:
    image = Image.fromarray(np.array([[0, 255], [51, 102]], dtype=np.uint8))
    out = preprocess_image(image, Preprocessing(2, 2, 1, (0.5,), (0.5,)))
    assert out.shape == (1, 2, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], [[-1.0, 1.0], [-0.6, -0.2]], atol=1e-6)


def test_rgb_is_chw_with_per_channel_statistics() -> None:
    pixels = np.zeros((3, 5, 3), dtype=np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = 255, 0, 51
    out = preprocess_image(Image.fromarray(pixels), Preprocessing(3, 5, 3, (0.0, 0.5, 0.2), (1.0, 0.5, 0.1)))
    assert out.shape == (3, 3, 5)
    np.testing.assert_allclose(out[:, 0, 0], [1.0, -1.0, 0.0], atol=1e-5)


def test_gray_becomes_three_equal_channels_and_rgb_becomes_gray() -> None:
    gray = Image.fromarray(np.full((4, 4), 128, dtype=np.uint8))
    out = preprocess_image(gray, Preprocessing(4, 4, 3, (0.0,) * 3, (1.0,) * 3))
    assert out.shape == (3, 4, 4) and np.all(out == out[0])
    red = Image.fromarray(
        np.dstack([np.full((4, 4), 255, np.uint8), np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8)])
    )
    assert preprocess_image(red, Preprocessing(4, 4, 1, (0.0,), (1.0,))).shape == (1, 4, 4)


def test_resize_and_batch() -> None:
    image = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8))
    pre = Preprocessing(16, 12, 1, (0.0,), (1.0,))
    batch = preprocess_images([image, image.convert("RGBA")], pre)
    assert batch.shape == (2, 1, 16, 12)
    np.testing.assert_array_equal(batch[0], batch[1])
    assert preprocess_images([], pre).shape == (0, 1, 16, 12)


# --- Mode conversion: every Pillow mode becomes L or RGB by modelrepo.preprocess.CONVERSIONS ---

RAW = Preprocessing(2, 3, 1, (0.0,), (1.0,))  # 2 high, 3 wide: the tensor is the 8-bit value / 255
RAW_RGB = Preprocessing(2, 3, 3, (0.0,) * 3, (1.0,) * 3)


def _random_image(mode: str, size: tuple[int, int] = (7, 5)) -> Image.Image:
    """A random image in ``mode``, filling the mode's nominal range."""
    rng = np.random.default_rng(0)
    width, height = size
    if mode == "I":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.int32), "I")
    if mode == "F":
        return Image.fromarray(rng.random((height, width), dtype=np.float32), "F")
    depth = {"I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "1": 1}.get(
        mode, len(Image.new(mode, (1, 1)).getbands())
    )
    if mode == "1":
        return Image.frombytes(
            "L", size, rng.integers(0, 256, width * height, dtype=np.uint8).tobytes()
        ).convert("1")
    image = Image.frombytes(
        mode, size, rng.integers(0, 256, width * height * depth, dtype=np.uint8).tobytes()
    )
    if mode in ("P", "PA"):
        image.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
    return image


def _raw(image: Image.Image, pre: Preprocessing = RAW) -> np.ndarray:
    """The 8-bit values the conversion produced (preprocessing that only divides by 255)."""
    return np.rint(preprocess_image(image, pre) * 255).astype(np.int64)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("mode", Image.MODES)
def test_every_pillow_mode_becomes_a_finite_tensor(mode: str, channels: int) -> None:
    pre = Preprocessing(4, 6, channels, (0.5,) * channels, (0.25,) * channels)
    out = preprocess_image(_random_image(mode), pre)
    assert out.shape == (channels, 4, 6) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= -2.0 and out.max() <= 2.0


@pytest.mark.parametrize("mode", ["L", "RGB", "1", "P", "RGBX", "CMYK", "YCbCr", "HSV"])
@pytest.mark.parametrize("channels", [1, 3])
def test_modes_without_alpha_or_depth_convert_as_before(mode: str, channels: int) -> None:
    # The tensors models were trained on: Pillow's convert to L / RGB, then resize.
    image = _random_image(mode)
    pre = Preprocessing(4, 6, channels, (0.5,) * channels, (0.25,) * channels)
    before = image.convert("L" if channels == 1 else "RGB").resize((6, 4), Image.Resampling.BILINEAR)
    expected = (np.asarray(before, dtype=np.float32) * np.float32(1 / 255) - np.float32(0.5)) / np.float32(
        0.25
    )
    expected = expected[None] if channels == 1 else expected.transpose(2, 0, 1)
    np.testing.assert_array_equal(preprocess_image(image, pre), expected)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I;16N", "I"])
def test_sixteen_bit_samples_keep_their_high_byte(mode: str) -> None:
    values = np.array([[0, 255, 256], [32768, 65280, 65535]])
    image = Image.new(mode, (3, 2))
    for (y, x), value in np.ndenumerate(values):
        image.putpixel((x, y), int(value))
    np.testing.assert_array_equal(_raw(image)[0], [[0, 0, 1], [128, 255, 255]])
    np.testing.assert_array_equal(_raw(image, RAW_RGB), np.repeat(_raw(image), 3, axis=0))


def test_float_pixels_are_read_as_zero_to_one() -> None:
    image = Image.fromarray(np.array([[0.0, 0.5, 1.0], [1 / 255, 0.25, 0.999]], dtype=np.float32), "F")
    np.testing.assert_array_equal(_raw(image)[0], [[0, 128, 255], [1, 64, 255]])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            [[0.0, np.nan, 0.5], [0.5, 0.5, 0.5]],
            "image has 1 NaN or infinite float pixels; expected finite values",
        ),
        ([[0.0, np.inf, -np.inf], [0.5, 0.5, 0.5]], "image has 2 NaN or infinite float pixels"),
        ([[0.0, 2.0, 0.5], [0.5, 0.5, -1.0]], "image has float pixels from -1 to 2; expected 0.0..1.0"),
    ],
    ids=["nan", "inf", "out of range"],
)
def test_float_pixels_outside_the_nominal_range_are_refused(values: list[list[float]], message: str) -> None:
    image = Image.fromarray(np.array(values, dtype=np.float32), "F")
    with pytest.raises(UnsupportedImage) as info:
        preprocess_image(image, RAW)
    assert message in str(info.value)


def test_integer_pixels_outside_sixteen_bits_are_refused() -> None:
    image = Image.fromarray(np.array([[0, 70000, 5], [-3, 0, 0]], dtype=np.int32), "I")
    with pytest.raises(UnsupportedImage) as info:
        preprocess_image(image, RAW_RGB)
    assert info.value.problem == (
        "has 32-bit integer pixels from -3 to 70000; "
        "expected 0..65535 (16-bit samples, scaled to 8 bits for RGB)"
    )


def test_constant_float_and_integer_images_do_not_divide_by_zero() -> None:
    assert np.all(_raw(Image.new("F", (3, 2), 0.0)) == 0)
    assert np.all(_raw(Image.new("I", (3, 2), 0)) == 0)


def test_alpha_is_composited_onto_white() -> None:
    # Transparent black -> white; opaque -> unchanged; half-transparent -> halfway, rounded.
    rgba = np.array([[[0, 0, 0, 0], [10, 20, 30, 255], [0, 100, 200, 128]]] * 2, dtype=np.uint8)
    out = _raw(Image.fromarray(rgba, "RGBA"), RAW_RGB)
    np.testing.assert_array_equal(out[:, 0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[:, 0, 1], [10, 20, 30])
    np.testing.assert_array_equal(out[:, 0, 2], [127, 177, 227])
    la = Image.fromarray(rgba[..., [1, 3]], "LA")
    np.testing.assert_array_equal(_raw(la)[0, 0], [255, 20, 177])


def test_every_alpha_mode_uses_the_same_background() -> None:
    transparent = {
        "LA": Image.new("LA", (3, 2), (0, 0)),
        "La": Image.new("La", (3, 2), (0, 0)),
        "RGBA": Image.new("RGBA", (3, 2), (0, 0, 0, 0)),
        "RGBa": Image.new("RGBa", (3, 2), (0, 0, 0, 0)),
        "PA": Image.new("PA", (3, 2), (0, 0)),
    }
    palette = Image.new("P", (3, 2), 0)
    palette.info["transparency"] = 0
    transparent["P with transparency"] = palette
    alpha_palette = Image.new("P", (3, 2), 0)
    alpha_palette.putpalette(b"\x00\x00\x00\x00" * 256, "RGBA")
    transparent["P with an RGBA palette"] = alpha_palette
    for name, image in transparent.items():
        assert np.all(_raw(image) == 255), name
        assert np.all(_raw(image, RAW_RGB) == 255), name


def test_opaque_alpha_gives_the_same_tensor_as_no_alpha() -> None:
    rgb = _random_image("RGB")
    for channels in (1, 3):
        pre = Preprocessing(4, 6, channels, (0.5,) * channels, (0.25,) * channels)
        np.testing.assert_array_equal(preprocess_image(rgb.convert("RGBA"), pre), preprocess_image(rgb, pre))
        gray = rgb.convert("L")
        np.testing.assert_array_equal(preprocess_image(gray.convert("LA"), pre), preprocess_image(gray, pre))


def test_lab_becomes_gray_through_rgb() -> None:
    white = Image.new("LAB", (3, 2), (255, 128, 128))  # L* = 100: white
    assert np.all(_raw(white) >= 254)
