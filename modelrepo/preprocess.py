"""Image preprocessing shared by training (export) and serving (server, clients).

One function turns a PIL image into the model's input, so the tensors a model was
trained and evaluated on are made exactly as the server makes them from a request.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from modelrepo.config import Preprocessing


def preprocess_image(image: Image.Image, pre: Preprocessing) -> np.ndarray:
    """Return the CHW float32 tensor for one image."""
    mode = "L" if pre.channels == 1 else "RGB"
    if image.mode != mode:
        image = image.convert(mode)
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
