"""Pretrained weights arrive in the model from the torch hub cache or from --weights-file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision import models as tvm

from export.models import WeightsNotFoundError, cache_path, find_weights, get_model, get_spec, load_pretrained


def _marked_checkpoint(model: torch.nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """Save ``model``'s state dict with every floating tensor set to recognisable values."""
    state = model.state_dict()
    for index, (key, value) in enumerate(state.items()):
        if value.is_floating_point():
            state[key] = torch.full_like(value, 0.001 * (index + 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_weights_load_from_the_torch_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = get_spec("resnet18").weights
    assert weights is not None
    expected_path = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert cache_path(weights) == expected_path
    with pytest.raises(WeightsNotFoundError, match=str(expected_path)) as info:
        find_weights(weights)
    assert "--weights-file" in str(info.value)

    state = _marked_checkpoint(tvm.resnet18(num_classes=1000), expected_path)
    model = get_model("resnet18")
    head_before = model.fc.weight.detach().clone()
    load_pretrained(model, weights, find_weights(weights))
    loaded = model.state_dict()
    assert torch.equal(loaded["conv1.weight"], state["conv1.weight"])
    assert torch.equal(loaded["layer4.1.bn2.running_var"], state["layer4.1.bn2.running_var"])
    # The 1000-class head is not loaded; the 10-class head keeps its fresh weights.
    assert loaded["fc.weight"].shape == (10, 512)
    assert torch.equal(model.fc.weight, head_before)


def test_weights_file_overrides_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    weights = get_spec("googlenet").weights
    assert weights is not None
    # torchvision's GoogLeNet checkpoint carries the auxiliary classifiers; they are dropped.
    file = tmp_path / "my-googlenet.pth"
    state = _marked_checkpoint(tvm.googlenet(num_classes=1000, aux_logits=True, init_weights=False), file)
    assert any(k.startswith("aux1.") for k in state)
    model = get_model("googlenet")
    load_pretrained(model, weights, find_weights(weights, file))
    assert torch.equal(
        model.state_dict()["inception5b.branch4.1.conv.weight"], state["inception5b.branch4.1.conv.weight"]
    )
    assert isinstance(model, tvm.GoogLeNet) and model.transform_input
    with pytest.raises(WeightsNotFoundError, match=r"nope\.pth"):
        find_weights(weights, tmp_path / "nope.pth")


def test_legacy_densenet_checkpoint_keys_are_mapped(tmp_path: Path) -> None:
    weights = get_spec("densenet121").weights
    assert weights is not None
    reference = tvm.densenet121(num_classes=1000)
    state = _marked_checkpoint(reference, tmp_path / "unused.pth")
    # torchvision's published file names layers "norm.1" where the module says "norm1".
    # It also predates batch norm's num_batches_tracked buffers.
    legacy = {
        k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }
    torch.save(legacy, tmp_path / "densenet121.pth")
    model = get_model("densenet121")
    load_pretrained(model, weights, tmp_path / "densenet121.pth")
    key = "features.denseblock4.denselayer16.conv2.weight"
    assert torch.equal(model.state_dict()[key], state[key])


def test_mismatched_checkpoint_is_rejected(tmp_path: Path) -> None:
    weights = get_spec("resnet18").weights
    assert weights is not None
    file = tmp_path / "resnet50.pth"
    torch.save(tvm.resnet50().state_dict(), file)
    with pytest.raises(ValueError, match="does not match the architecture"):
        load_pretrained(get_model("resnet18"), weights, file)
