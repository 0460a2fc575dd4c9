"""Every image Pillow can write, in every mode and allowed format, is classified or refused.

Decoding goes through ``server.images.decode_images``, the function the Classify RPC runs;
anything but a tensor or :class:`InvalidInput` there becomes INTERNAL for the client.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from image_cases import (
    SIZE,
    Case,
    encode,
    gif_with_huge_later_frame,
    image_in_mode,
    mode_format_cases,
    refused_cases,
    special_cases,
    tiff_with_float_strip_offsets,
)
from PIL import Image

from modelrepo import Preprocessing, preprocess_image
from server.errors import InvalidInput
from server.images import ALLOWED_FORMATS, decode_images

MAX_PIXELS = 16_777_216
PREPROCESSING = {
    1: Preprocessing(6, 5, 1, (0.5,), (0.25,)),
    3: Preprocessing(6, 5, 3, (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)),
}

#: The cases refused on purpose, with what the message must say; every other case is classified.
REFUSED = {
    "F-0-255-TIFF": "image 0 has float pixels from 0.000346832 to 254.831; expected 0.0..1.0",
    "F-negative-TIFF": "image 0 has float pixels from -0.499999 to 0.499338; expected 0.0..1.0",
    "F-nan-TIFF": "image 0 has 18 NaN or infinite float pixels; expected finite values in 0.0..1.0",
    "F-inf-TIFF": "image 0 has 18 NaN or infinite float pixels; expected finite values in 0.0..1.0",
    "I-32-bit-range-TIFF": "image 0 has 32-bit integer pixels from -2124663807 to 2138185348; expected 0..",
    "I-negative-TIFF": "image 0 has 32-bit integer pixels from -5 to -5; expected 0..65535",
}

CASES = [*mode_format_cases(), *special_cases()]


def test_the_grid_covers_every_mode_and_allowed_format() -> None:
    pairs = [case.name.rsplit("-", 1) for case in mode_format_cases()]
    assert {fmt for _, fmt in pairs} == set(ALLOWED_FORMATS)
    modes = {mode for mode, _ in pairs}
    assert modes >= {
        "1",
        "L",
        "LA",
        "P",
        "PA",
        "RGB",
        "RGBA",
        "RGBX",
        "CMYK",
        "YCbCr",
        "LAB",
        "I;16",
        "I",
        "F",
    }


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_every_mode_and_format_is_classified_or_refused(case: Case, channels: int) -> None:
    pre = PREPROCESSING[channels]
    if case.name in REFUSED:
        with pytest.raises(InvalidInput) as info:
            decode_images([case.data], pre, MAX_PIXELS)
        assert REFUSED[case.name] in info.value.message
        return
    batch = decode_images([case.data], pre, MAX_PIXELS)
    assert batch.shape == (1, channels, pre.height, pre.width) and batch.dtype == np.float32
    assert np.isfinite(batch).all()
    # Scaled to [0, 1] before normalising: nothing outside the normalised range of 0..255.
    mean = np.asarray(pre.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(pre.std, dtype=np.float32).reshape(-1, 1, 1)
    assert np.all(batch[0] >= -mean / std - 1e-5) and np.all(batch[0] <= (1 - mean) / std + 1e-5)


@pytest.mark.parametrize("case", list(refused_cases()), ids=lambda case: case.name)
def test_formats_outside_the_allow_list_are_refused_naming_the_format(case: Case) -> None:
    with pytest.raises(InvalidInput) as info:
        decode_images([case.data], PREPROCESSING[3], MAX_PIXELS)
    assert info.value.message == (
        f"image 0 is in {case.name} format, which the server does not decode; "
        f"expected one of {', '.join(ALLOWED_FORMATS)}"
    )


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    # 0x1234 = 4660: the old path clipped every value above 255 to white.
    data = encode(Image.new("I;16", (4, 4), 0x1234), "PNG")
    batch = decode_images([data], Preprocessing(4, 4, 1, (0.0,), (1.0,)), MAX_PIXELS)
    np.testing.assert_allclose(batch, 0x12 / 255, rtol=1e-6)


def test_float_tiff_is_read_as_zero_to_one() -> None:
    data = encode(Image.new("F", (4, 4), 0.5), "TIFF")
    batch = decode_images([data], Preprocessing(4, 4, 3, (0.0,) * 3, (1.0,) * 3), MAX_PIXELS)
    np.testing.assert_allclose(batch, 128 / 255, rtol=1e-6)


def test_transparent_png_is_composited_onto_white() -> None:
    pixels = np.zeros((4, 4, 4), dtype=np.uint8)  # black, fully transparent
    pixels[0, 0] = (0, 0, 0, 255)  # one opaque black pixel
    data = encode(Image.fromarray(pixels, "RGBA"), "PNG")
    batch = decode_images([data], Preprocessing(4, 4, 1, (0.0,), (1.0,)), MAX_PIXELS)
    expected = np.ones((1, 1, 4, 4), dtype=np.float32)
    expected[0, 0, 0, 0] = 0.0
    np.testing.assert_array_equal(batch, expected)


def test_only_the_first_frame_is_used() -> None:
    black, white, grey = (Image.new("RGB", SIZE, (v, v, v)) for v in (0, 255, 128))
    pre = Preprocessing(4, 4, 3, (0.0,) * 3, (1.0,) * 3)
    for fmt in ("GIF", "WEBP", "PNG", "TIFF"):
        data = encode(black, fmt, save_all=True, append_images=[white, grey])
        assert Image.open(io.BytesIO(data)).n_frames == 3, fmt
        np.testing.assert_array_equal(decode_images([data], pre, MAX_PIXELS), 0.0, err_msg=fmt)


def test_later_frames_are_never_decoded() -> None:
    # Frame 2 claims 4000x4000 (over the limit below) and its data is garbage: neither matters.
    data = gif_with_huge_later_frame()
    batch = decode_images([data], PREPROCESSING[1], max_pixels=1_000_000)
    first = preprocess_image(Image.open(io.BytesIO(data)), PREPROCESSING[1])
    np.testing.assert_array_equal(batch[0], first)


def test_bomb_check_uses_the_first_frames_real_size() -> None:
    # A GIF frame larger than its declared logical screen: Pillow grows the canvas on open,
    # and the pixel limit applies to the grown size before any pixel is decoded.
    data = bytearray(encode(Image.new("L", (3000, 3000)), "GIF"))
    data[6:10] = (10, 0, 10, 0)  # logical screen 10x10
    with pytest.raises(InvalidInput) as info:
        decode_images([bytes(data)], PREPROCESSING[1], max_pixels=1_000_000)
    assert (
        info.value.message
        == "image 0 is 3000x3000 (9000000 pixels); the server accepts at most 1000000 pixels"
    )


@pytest.mark.parametrize("case", CASES[::7], ids=lambda case: case.name)
def test_truncated_images_are_refused_or_classified(case: Case) -> None:
    for cut in (1, 8, 16, 40, len(case.data) // 3, len(case.data) * 2 // 3, len(case.data) - 1):
        try:
            batch = decode_images([case.data[:cut]], PREPROCESSING[3], MAX_PIXELS)
        except InvalidInput as exc:
            assert exc.message.startswith("image 0 "), exc.message
        else:
            assert np.isfinite(batch).all()


def test_corrupt_header_of_an_allowed_format_names_the_format() -> None:
    data = encode(image_in_mode("RGB"), "PNG")
    with pytest.raises(InvalidInput) as info:
        decode_images([data[:20]], PREPROCESSING[3], MAX_PIXELS)
    assert info.value.message.startswith("image 0 could not be decoded as PNG: ")


def test_tiff_with_a_tag_of_the_wrong_type_is_refused() -> None:
    # Found by fuzzing: Pillow raised TypeError from load(), which became INTERNAL.
    with pytest.raises(InvalidInput) as info:
        decode_images([tiff_with_float_strip_offsets()], PREPROCESSING[3], MAX_PIXELS)
    assert info.value.message.startswith("image 0 could not be decoded as TIFF: ")


def test_the_failing_image_is_named_by_its_index() -> None:
    good = encode(image_in_mode("RGB"), "PNG")
    nan = next(case.data for case in CASES if case.name == "F-nan-TIFF")
    with pytest.raises(InvalidInput) as info:
        decode_images([good, good, nan], PREPROCESSING[3], MAX_PIXELS)
    assert info.value.message.startswith("image 2 has 18 NaN or infinite float pixels")
