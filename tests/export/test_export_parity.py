"""The parity check passes on a faithful export and fails on a perturbed one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from export.data import Dataset
from export.models import get_model
from export.onnx_export import export_onnx
from export.parity import ParityError, check_parity, require_parity


@pytest.fixture(scope="module")
def smallcnn_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = get_model("smallcnn", image_size=16).eval()
    path = tmp_path_factory.mktemp("parity") / "model.onnx"
    export_onnx(model, path, (1, 16, 16))
    return model, path


def test_faithful_export_passes_on_real_images(
    smallcnn_export: tuple[torch.nn.Module, Path], digits_gray16: Dataset
) -> None:
    model, path = smallcnn_export
    report = require_parity(check_parity(model, path, digits_gray16.test.x))
    assert report.passed and report.top1_disagreements == 0
    assert report.max_abs_diff < 1e-4
    assert report.batch_sizes == (1, 5, 32) and report.traced_batch_size not in report.batch_sizes
    assert report.real_samples == 96 and report.random_samples == 8
    assert report.to_dict()["passed"] is True


def test_perturbed_export_fails(
    smallcnn_export: tuple[torch.nn.Module, Path], digits_gray16: Dataset, tmp_path: Path
) -> None:
    model, path = smallcnn_export
    proto = onnx.load(str(path))
    # Nudge one weight of the last layer: small, but well past the tolerance.
    initializer = max(proto.graph.initializer, key=lambda t: (len(t.dims) == 2 and t.dims[0] == 10, t.name))
    weights = numpy_helper.to_array(initializer).copy()
    weights.flat[0] += 0.05
    initializer.CopyFrom(numpy_helper.from_array(weights, initializer.name))
    perturbed = tmp_path / "model.onnx"
    onnx.save(proto, str(perturbed))

    report = check_parity(model, perturbed, digits_gray16.test.x)
    assert not report.passed
    assert not report.within_tolerance
    assert report.max_abs_diff > 1e-3
    with pytest.raises(ParityError, match="parity FAILED"):
        require_parity(report)


def test_any_top1_disagreement_fails(
    smallcnn_export: tuple[torch.nn.Module, Path], digits_gray16: Dataset
) -> None:
    model, path = smallcnn_export
    # A huge tolerance hides the logit difference, but swapped predictions must still fail.
    proto = onnx.load(str(path))
    bias = [t for t in proto.graph.initializer if list(t.dims) == [10]][-1]
    values = numpy_helper.to_array(bias).copy()
    values[3] += 100.0
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    perturbed = path.parent / "biased.onnx"
    onnx.save(proto, str(perturbed))
    report = check_parity(model, perturbed, digits_gray16.test.x, atol=1e3)
    assert report.within_tolerance
    assert report.top1_disagreements > 0 and not report.passed


def test_traced_batch_size_is_not_a_parity_batch_size(smallcnn_export: tuple[torch.nn.Module, Path]) -> None:
    model, path = smallcnn_export
    with pytest.raises(ValueError, match="traced size 2"):
        check_parity(model, path, np.zeros((4, 1, 16, 16), np.float32), batch_sizes=(1, 2))
