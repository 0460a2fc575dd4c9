"""Data sets for training and evaluating exported models.

Every image goes through :func:`modelrepo.preprocess_image`, the function the server
uses on requests, so a model is trained and tested on exactly the tensors it will be
served. Grayscale images become 3-channel for RGB models there (PIL ``convert``).

- ``digits`` (default): scikit-learn's 1,797 handwritten 8x8 digits, shipped with
  scikit-learn, split once with a fixed seed into stratified train/val/test parts.
- ``mnist``, ``fashion-mnist``, ``cifar10``: torchvision's files in ``--data-dir``
  (never downloaded); the official test split is the test set.
- ``folder``: a directory with one subfolder of images per class.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from sklearn.model_selection import train_test_split

from modelrepo import Preprocessing, preprocess_images

logger = logging.getLogger(__name__)

DatasetName = Literal["digits", "mnist", "fashion-mnist", "cifar10", "folder"]
DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10", "folder")

#: The split never depends on the training seed, so every model is tested on the same images.
SPLIT_SEED = 0
#: Fractions of the data held out for validation and test where a data set has no official split.
VAL_FRACTION = 0.15
TEST_FRACTION = 0.2


class DatasetNotFoundError(FileNotFoundError):
    """The files of a data set are not where they were looked for."""


@dataclass(frozen=True)
class Split:
    """Preprocessed images (NCHW float32) and their integer labels."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Dataset:
    """A data set split three ways, with the class labels that travel with the model."""

    name: str
    labels: tuple[str, ...]
    train: Split
    val: Split
    test: Split

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def load_dataset(
    name: str,
    pre: Preprocessing,
    *,
    data_dir: Path | None = None,
    max_train_samples: int | None = None,
) -> Dataset:
    """Load data set ``name`` preprocessed for a model with preprocessing ``pre``.

    ``max_train_samples`` keeps a stratified subset of the training split.
    Raises ValueError for an unknown name and :class:`DatasetNotFoundError` for missing files.
    """
    if name == "digits":
        images, targets, labels = _digits()
        return _split_and_preprocess("digits", images, targets, labels, pre, max_train_samples)
    if name == "folder":
        if data_dir is None:
            raise ValueError("dataset 'folder' needs --data-dir DIR with one subfolder of images per class")
        images, targets, labels = _image_folder(Path(data_dir))
        return _split_and_preprocess("folder", images, targets, labels, pre, max_train_samples)
    if name in ("mnist", "fashion-mnist", "cifar10"):
        if data_dir is None:
            raise ValueError(f"dataset {name!r} needs --data-dir DIR holding torchvision's files")
        return _torchvision(name, Path(data_dir), pre, max_train_samples)
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")


def digits_images() -> tuple[list[Image.Image], np.ndarray, tuple[str, ...]]:
    """scikit-learn's digits as 8x8 grayscale PIL images (0..16 scaled to 0..255), targets, labels."""
    return _digits()


def _digits() -> tuple[list[Image.Image], np.ndarray, tuple[str, ...]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)
    images = [Image.fromarray(p) for p in pixels]  # 2-D uint8: mode "L"
    labels = tuple(str(int(n)) for n in bunch.target_names)
    return images, np.asarray(bunch.target, dtype=np.int64), labels


def _image_folder(root: Path) -> tuple[list[Image.Image], np.ndarray, tuple[str, ...]]:
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} does not exist; expected one subfolder per class")
    try:
        folder = ImageFolder(str(root))
    except FileNotFoundError as exc:
        raise DatasetNotFoundError(f"image folder {root}: {exc}") from None
    images = []
    for path, _ in folder.samples:
        with Image.open(path) as image:
            image.load()
            images.append(image.copy())
    return images, np.asarray(folder.targets, dtype=np.int64), tuple(folder.classes)


def _subsample(targets: np.ndarray, limit: int | None) -> np.ndarray:
    """Indices of a stratified subset of at most ``limit`` samples (all of them if None)."""
    indices = np.arange(len(targets))
    if limit is None or limit >= len(targets):
        return indices
    if limit < 1:
        raise ValueError(f"max_train_samples is {limit}; expected >= 1")
    classes = len(np.unique(targets))
    if limit < classes:
        rng = np.random.default_rng(SPLIT_SEED)
        return np.sort(rng.choice(indices, size=limit, replace=False))
    kept, _ = train_test_split(indices, train_size=limit, stratify=targets, random_state=SPLIT_SEED)
    return np.sort(kept)


def _split_and_preprocess(
    name: str,
    images: Sequence[Image.Image],
    targets: np.ndarray,
    labels: tuple[str, ...],
    pre: Preprocessing,
    max_train_samples: int | None,
) -> Dataset:
    indices = np.arange(len(targets))
    rest, test = train_test_split(indices, test_size=TEST_FRACTION, stratify=targets, random_state=SPLIT_SEED)
    train, val = train_test_split(
        rest,
        test_size=VAL_FRACTION / (1 - TEST_FRACTION),
        stratify=targets[rest],
        random_state=SPLIT_SEED,
    )
    train = np.sort(train)[_subsample(targets[np.sort(train)], max_train_samples)]

    def part(idx: np.ndarray) -> Split:
        idx = np.sort(idx)
        return Split(preprocess_images([images[i] for i in idx], pre), targets[idx])

    dataset = Dataset(name, labels, part(train), part(val), part(test))
    logger.info("dataset %s: %s", name, dataset.sizes())
    return dataset


_TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}


def expected_files(name: str, data_dir: Path) -> list[Path]:
    """The files torchvision's dataset class ``name`` reads from ``data_dir`` (download disabled)."""
    from torchvision import datasets

    cls: Any = getattr(datasets, _TORCHVISION_CLASSES[name])
    if name == "cifar10":
        folder = data_dir / cls.base_folder
        return [folder / entry[0] for entry in cls.train_list + cls.test_list] + [
            folder / cls.meta["filename"]
        ]
    raw = data_dir / cls.__name__ / "raw"
    # torchvision reads the decompressed files: the resource names without ".gz".
    return [raw / Path(url).name.removesuffix(".gz") for url, _ in cls.resources]


def _torchvision(name: str, data_dir: Path, pre: Preprocessing, max_train_samples: int | None) -> Dataset:
    from torchvision import datasets

    missing = [path for path in expected_files(name, data_dir) if not path.is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"dataset {name!r} is missing {len(missing)} file(s) under {data_dir}: "
            f"{', '.join(str(p) for p in missing)}; nothing is downloaded, copy torchvision's files there"
        )
    cls: Any = getattr(datasets, _TORCHVISION_CLASSES[name])
    train_set = cls(str(data_dir), train=True, download=False)
    test_set = cls(str(data_dir), train=False, download=False)

    def arrays(ds: Any) -> tuple[np.ndarray, np.ndarray]:
        data = ds.data.numpy() if hasattr(ds.data, "numpy") else np.asarray(ds.data)
        return data, np.asarray(ds.targets, dtype=np.int64)

    train_x, train_y = arrays(train_set)
    test_x, test_y = arrays(test_set)
    fit, val = train_test_split(
        np.arange(len(train_y)), test_size=VAL_FRACTION, stratify=train_y, random_state=SPLIT_SEED
    )
    fit = np.sort(fit)
    fit = fit[_subsample(train_y[fit], max_train_samples)]

    def part(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> Split:
        idx = np.sort(idx)
        return Split(preprocess_images([Image.fromarray(x[i]) for i in idx], pre), y[idx])

    labels = tuple(str(c).split(" - ")[0] if name == "mnist" else str(c) for c in train_set.classes)
    dataset = Dataset(
        name,
        labels,
        part(train_x, train_y, fit),
        part(train_x, train_y, val),
        part(test_x, test_y, np.arange(len(test_y))),
    )
    logger.info("dataset %s: %s", name, dataset.sizes())
    return dataset
