"""Every registered model builds, has the right output shape, exports with a dynamic batch, passes parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.models import IMAGENET_MEAN, UnknownModelError, get_model, get_spec, list_models
from export.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx, uses_external_data
from export.parity import check_parity

SCRATCH = [
    "lenet",
    "alexnet",
    "vgg11",
    "nin",
    "googlenet_scratch",
    "resnet18_scratch",
    "densenet_scratch",
    "smallcnn",
]
TORCHVISION = ["resnet18", "vgg16", "googlenet"]


def test_registry_names_the_zoo() -> None:
    names = list_models()
    assert set(SCRATCH + TORCHVISION) <= set(names)
    assert len(names) == len(set(names))
    for name in SCRATCH:
        assert get_spec(name).source == "seed architecture"
        assert get_spec(name).weights is None
    for name in TORCHVISION:
        spec = get_spec(name)
        assert spec.source == "torchvision architecture"
        assert spec.channels == 3 and spec.mean == IMAGENET_MEAN
        assert spec.weights is not None


def test_unknown_model_lists_the_valid_names() -> None:
    with pytest.raises(UnknownModelError, match=r"unknown model 'resnet'.*resnet18_scratch"):
        get_model("resnet")


def test_builders_are_keyword_only() -> None:
    from export.models import lenet

    with pytest.raises(TypeError):
        lenet(10)  # type: ignore[misc]
    assert get_model("lenet", num_classes=3)(torch.zeros(1, 1, 28, 28)).shape == (1, 3)


@pytest.mark.parametrize("name", list_models())
def test_too_small_input_is_rejected(name: str) -> None:
    spec = get_spec(name)
    if spec.min_image_size <= 4:
        pytest.skip("accepts tiny inputs")
    with pytest.raises(ValueError, match=f"{spec.min_image_size}"):
        spec.build(image_size=spec.min_image_size - 1)


@pytest.mark.parametrize("name", list_models())
def test_model_builds_exports_and_passes_parity(name: str, tmp_path: Path) -> None:
    spec = get_spec(name)
    # The smallest input the architecture takes keeps this fast; 7 classes checks the head size.
    size = spec.min_image_size
    torch.manual_seed(0)
    model = spec.build(num_classes=7, image_size=size).eval()
    x = torch.randn(3, spec.channels, size, size)
    with torch.no_grad():
        assert model(x).shape == (3, 7)

    path = tmp_path / "out" / "model.onnx"
    export_onnx(model, path, (spec.channels, size, size))
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]
    assert not uses_external_data(path)
    proto = onnx.load(str(path), load_external_data=False)
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    assert [o.name for o in proto.graph.output] == [OUTPUT_NAME]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    del proto  # the torchvision VGG-16 graph holds half a gigabyte of weights

    # Batch sizes 1 and 3 (traced at 2): ONNX Runtime's logits, shape (n, 7) included, match PyTorch's.
    inputs = np.random.default_rng(1).standard_normal((4, spec.channels, size, size)).astype(np.float32)
    report = check_parity(model, path, inputs, batch_sizes=(1, 3), random_samples=2)
    assert report.passed, report.summary()
    assert report.real_samples == 4
