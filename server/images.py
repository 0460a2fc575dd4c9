"""Decoding encoded images for the image-classification service, with limits.

The pixel count is checked from the header before any pixel is decoded, so a
small file that expands to a huge image (a decompression bomb) is refused cheaply.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from modelrepo import Preprocessing, preprocess_image
from server.errors import InvalidInput


def decode_image(data: bytes, index: int, pre: Preprocessing, max_pixels: int) -> np.ndarray:
    """Decode one encoded image and preprocess it into the model's CHW float32 input."""
    if not data:
        raise InvalidInput(f"image {index} is empty; expected encoded image bytes (JPEG, PNG, ...)")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check only warns below 2x its limit; ours is the one that counts.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidInput(
                    f"image {index} is {width}x{height} ({width * height} pixels); "
                    f"the server accepts at most {max_pixels} pixels"
                )
            image.load()
    except InvalidInput:
        raise
    except UnidentifiedImageError:
        raise InvalidInput(
            f"image {index} ({len(data)} bytes) is not a recognised image format; "
            "expected JPEG, PNG, BMP, GIF, WebP, ..."
        ) from None
    except Image.DecompressionBombError as exc:
        # Pillow's own, larger limit tripped before ours could look at the size.
        raise InvalidInput(
            f"image {index} has more pixels than the server accepts (at most {max_pixels}): {exc}"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidInput(f"image {index} could not be decoded: {exc}") from None
    return preprocess_image(image, pre)


def decode_images(images: Sequence[bytes], pre: Preprocessing, max_pixels: int) -> np.ndarray:
    """Decode a request's images into one NCHW float32 batch."""
    return np.stack([decode_image(data, i, pre, max_pixels) for i, data in enumerate(images)])
