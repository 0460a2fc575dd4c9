"""Data loaders: the digits split, torchvision files that are missing, image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export.data import Dataset, DatasetNotFoundError, digits_images, expected_files, load_dataset
from modelrepo import Preprocessing, preprocess_image

GRAY8 = Preprocessing(8, 8, 1, (0.0,), (1.0,))


def test_digits_split_sizes_and_stratification(digits_gray16: Dataset) -> None:
    data = digits_gray16
    assert data.labels == tuple(str(i) for i in range(10))
    sizes = data.sizes()
    assert sum(sizes.values()) == 1797
    assert sizes == {"train": 1167, "val": 270, "test": 360}
    assert data.train.x.shape == (1167, 1, 16, 16) and data.train.x.dtype == np.float32
    overall = np.bincount(np.concatenate([data.train.y, data.val.y, data.test.y]), minlength=10) / 1797
    for split in (data.train, data.val, data.test):
        counts = np.bincount(split.y, minlength=10)
        # Stratified: every class within about one image of its share of the whole data set.
        assert np.abs(counts - overall * len(split)).max() <= 1.5, counts


def test_digits_splits_are_disjoint_and_deterministic(digits_gray16: Dataset) -> None:
    again = load_dataset("digits", GRAY8)
    other = load_dataset("digits", GRAY8)
    np.testing.assert_array_equal(again.test.x, other.test.x)
    rows = {tuple(r) for r in again.train.x.reshape(len(again.train), -1)}
    overlap = sum(tuple(r) in rows for r in again.test.x.reshape(len(again.test), -1))
    # The digits hold a few exact duplicates; the split itself shares no sample.
    assert overlap < 5
    np.testing.assert_array_equal(again.test.y, digits_gray16.test.y)


def test_digits_are_preprocessed_exactly_as_the_server_does() -> None:
    pre = Preprocessing(12, 12, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    data = load_dataset("digits", pre)
    images, targets, _ = digits_images()
    # The test split is sorted by original index; find the first test sample by its label
    # and pixel values, preprocessing every image of that label as the server would.
    candidates = [
        preprocess_image(img, pre) for img, t in zip(images, targets, strict=True) if t == data.test.y[0]
    ]
    assert any(np.array_equal(c, data.test.x[0]) for c in candidates)
    assert data.test.x.shape[1] == 3
    np.testing.assert_allclose(
        data.test.x[:, 0] * 0.229 + 0.485, data.test.x[:, 1] * 0.224 + 0.456, atol=1e-5
    )


def test_max_train_samples_keeps_a_stratified_subset() -> None:
    data = load_dataset("digits", GRAY8, max_train_samples=100)
    assert len(data.train) == 100
    assert np.bincount(data.train.y, minlength=10).min() >= 9
    assert len(data.test) == 360


@pytest.mark.parametrize(
    ("name", "first_missing"),
    [("mnist", "MNIST/raw/train-images-idx3-ubyte"),
     ("fashion-mnist", "FashionMNIST/raw/train-images-idx3-ubyte"),
     ("cifar10", "cifar-10-batches-py/data_batch_1")],
)  # fmt: skip
def test_torchvision_dataset_missing_files_are_named(name: str, first_missing: str, tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, GRAY8, data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / first_missing) in message
    assert "nothing is downloaded" in message


def test_partially_present_files_name_only_the_missing_ones(tmp_path: Path) -> None:
    files = expected_files("mnist", tmp_path)
    files[0].parent.mkdir(parents=True)
    files[0].write_bytes(b"")
    with pytest.raises(DatasetNotFoundError, match="missing 3 file") as info:
        load_dataset("mnist", GRAY8, data_dir=tmp_path)
    assert str(files[0]) + "," not in str(info.value)


def test_dataset_errors_name_the_bad_value() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet", GRAY8)
    with pytest.raises(ValueError, match="needs --data-dir"):
        load_dataset("mnist", GRAY8)


def test_image_folder_loader_reads_real_pngs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for label, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        folder = tmp_path / label
        folder.mkdir()
        for i in range(10):
            pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (6, 6, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    pre = Preprocessing(4, 4, 3, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    data = load_dataset("folder", pre, data_dir=tmp_path)
    assert data.labels == ("cat", "dog")
    assert sum(data.sizes().values()) == 20
    assert data.test.x.shape[1:] == (3, 4, 4)
    # Labels travel with the images: red images are "cat" (0), blue ones "dog" (1).
    for split in (data.train, data.val, data.test):
        red = split.x[:, 0].mean(axis=(1, 2)) > split.x[:, 2].mean(axis=(1, 2))
        np.testing.assert_array_equal(red, split.y == 0)


def test_image_folder_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_dataset("folder", GRAY8, data_dir=tmp_path / "nope")
