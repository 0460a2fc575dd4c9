"""The one preprocessing function: mode conversion, resize, scaling, normalisation, layout."""

from __future__ import annotations

import numpy as np
from PIL import Image

from modelrepo import Preprocessing, preprocess_image, preprocess_images


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
