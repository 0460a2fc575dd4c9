"""``python -m export`` end to end, as a subprocess, on real data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from export_testlib import E2E_TRAIN_SAMPLES, ROOT, Exported
from PIL import Image
from torchvision import models as tvm

import modelrepo
from export.__main__ import get_args_parser, main
from export.models import list_models
from export.parity import ort_predict, ort_session


def test_list_shows_every_model_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main("--list") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list_models()
    lenet = next(line for line in lines if line.startswith("lenet "))
    assert "seed architecture" in lenet and "61,706" in lenet and "1x28x28" in lenet
    assert lenet.endswith("weights: random initialisation")
    assert "torchvision architecture" in next(line for line in lines if line.startswith("resnet18 "))


def _list_line(name: str, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert run_main("--list", *args) == 0
    return next(line for line in capsys.readouterr().out.splitlines() if line.split()[0] == name)


def test_list_says_what_the_weights_start_from_on_this_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    line = _list_line("resnet18", capsys)
    assert "pretrained" not in line
    missing = f"ImageNet weights ResNet18_Weights.IMAGENET1K_V1 not found at {cached}"
    assert line.endswith(f"weights: random initialisation ({missing})")
    assert "the export fails (pretrained weights not found at" in _list_line(
        "resnet18", capsys, "--init", "pretrained"
    )
    assert "the export fails" in _list_line("lenet", capsys, "--init", "pretrained")

    cached.parent.mkdir(parents=True)
    torch.save(tvm.resnet18().state_dict(), cached)
    assert _list_line("resnet18", capsys).endswith(
        "weights: torchvision ResNet18_Weights.IMAGENET1K_V1 (fine-tuned)"
    )
    assert _list_line("resnet18", capsys, "--init", "random").endswith(
        "weights: random initialisation (--init random)"
    )


def run_main(*args: str) -> int:
    """``main`` in this process: the same code path as the command, without a new interpreter."""
    parser = get_args_parser()
    return main(parser.parse_args(["--no-progress", *args]), parser)


def test_unknown_name_exits_nonzero_listing_the_valid_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        run_main("lenet", "resnet", "--repository", str(tmp_path))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown model(s) resnet" in err
    assert "resnet18_scratch" in err and "googlenet" in err
    assert not list(tmp_path.iterdir())


def _smallcnn_outputs(repository: Path, *args: str) -> np.ndarray:
    """Export smallcnn briefly into ``repository`` and return its ONNX logits on fixed inputs."""
    assert (
        run_main(
            "smallcnn", "--epochs", "1", "--max-train-samples", "50", "--repository", str(repository), *args
        )
        == 0
    )
    latest = modelrepo.latest_version(repository, "smallcnn")
    assert latest is not None
    version = modelrepo.read_version(repository, "smallcnn", latest)
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    return ort_predict(ort_session(version.model_path), x)


def test_same_seed_same_model_whatever_ran_before(tmp_path: Path) -> None:
    """Deterministic given --seed: initial weights too, even after other work drew random numbers."""
    first = _smallcnn_outputs(tmp_path / "a")
    torch.rand(1000)  # what an earlier model of an --all run would have drawn
    again = _smallcnn_outputs(tmp_path / "b")
    other_seed = _smallcnn_outputs(tmp_path / "c", "--seed", "1")
    np.testing.assert_array_equal(again, first)
    assert not np.allclose(other_seed, first)


def test_pretrained_init_without_weights_says_where_to_put_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # A small input and training subset: the run must fail before training, whatever they are.
    status = run_main(
        "resnet18", "--init", "pretrained", "--image-size", "32", "--max-train-samples", "10",
        "--repository", str(tmp_path / "repo"),
    )  # fmt: skip
    assert status == 1
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in caplog.text
    assert modelrepo.list_models(tmp_path / "repo") == []


def test_lenet_end_to_end_publishes_a_complete_version(lenet_export: Exported) -> None:
    result, repo = lenet_export.result, lenet_export.repository
    assert result.returncode == 0, result.stderr
    assert "lenet: published version 1" in result.stdout

    version_dir = repo / "lenet" / "1"
    assert sorted(p.name for p in version_dir.iterdir()) == [
        "config.json", "confusion_matrix.png", "metadata.json", "model.onnx", "training_curves.png",
    ]  # fmt: skip
    assert [p.name for p in (repo / "lenet").iterdir()] == ["1"]  # no staging leftovers
    for png in ("training_curves.png", "confusion_matrix.png"):
        with Image.open(version_dir / png) as image:
            assert image.format == "PNG" and image.width > 100


def test_lenet_end_to_end_config_and_metadata(lenet_export: Exported) -> None:
    assert lenet_export.result.returncode == 0, lenet_export.result.stderr
    version = modelrepo.read_version(lenet_export.repository, "lenet", 1)
    config, meta = version.config, version.metadata
    assert config.input == modelrepo.TensorSpec("input", "FP32", (1, 28, 28))
    assert config.output == modelrepo.TensorSpec("logits", "FP32", (10,))
    assert config.labels == tuple(str(i) for i in range(10))
    assert (config.preprocessing.height, config.preprocessing.channels) == (28, 1)

    assert meta["model_sha256"] == modelrepo.file_sha256(version.model_path)
    assert meta["source"] == "seed architecture" and meta["init"] == "random"
    assert meta["weights"] == "random initialisation" and meta["pretrained"] is False
    assert meta["dataset"]["name"] == "digits"
    assert meta["dataset"]["splits"] == {"train": E2E_TRAIN_SAMPLES, "val": 270, "test": 360}
    assert meta["training"]["epochs_run"] == 1 and meta["seed"] == 0
    assert meta["parity"]["passed"] is True and meta["parity"]["max_abs_diff"] < 1e-4
    assert meta["parity"]["real_samples"] == 96 and meta["parity"]["traced_batch_size"] == 2
    assert meta["test_accuracy"]["onnx"] == meta["test_accuracy"]["torch"]
    assert 0 <= meta["val_accuracy"] <= 1
    assert {"torch", "onnx", "numpy"} <= set(meta["libraries"])
    assert meta["export_seconds"] > 0 and meta["exported_at"]


def test_published_model_loads_from_its_file_alone(lenet_export: Exported, tmp_path: Path) -> None:
    assert lenet_export.result.returncode == 0, lenet_export.result.stderr
    version = modelrepo.read_version(lenet_export.repository, "lenet", 1)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(version.model_path, alone / "model.onnx")
    logits = ort_predict(
        ort_session(alone / "model.onnx"), np.zeros((3, 1, 28, 28), np.float32), batch_size=3
    )
    assert logits.shape == (3, 10)


def test_next_export_is_version_2_and_skip_existing_skips(lenet_export: Exported, tmp_path: Path) -> None:
    assert lenet_export.result.returncode == 0, lenet_export.result.stderr
    repo = tmp_path / "repo"
    shutil.copytree(lenet_export.repository, repo)
    assert run_main("lenet", "--epochs", "1", "--max-train-samples", "20", "--repository", str(repo)) == 0
    assert modelrepo.list_versions(repo, "lenet") == [1, 2]
    assert modelrepo.read_version(repo, "lenet", 2).metadata["dataset"]["splits"]["train"] == 20
    assert run_main("lenet", "--skip-existing", "--repository", str(repo)) == 0
    assert modelrepo.list_versions(repo, "lenet") == [1, 2]


def test_fine_tune_from_weights_file_records_the_init(tmp_path: Path) -> None:
    weights = tmp_path / "resnet18-imagenet.pth"
    state = tvm.resnet18(num_classes=1000).state_dict()
    state["conv1.weight"] = torch.full_like(state["conv1.weight"], 0.01)
    torch.save(state, weights)
    repo = tmp_path / "repo"
    status = run_main(
        "resnet18", "--weights-file", str(weights), "--init", "pretrained", "--epochs", "1",
        "--max-train-samples", "20", "--image-size", "32", "--repository", str(repo),
    )  # fmt: skip
    assert status == 0
    meta = json.loads((repo / "resnet18" / "1" / "metadata.json").read_text())
    assert meta["init"].startswith("pretrained (ResNet18_Weights.IMAGENET1K_V1 from ")
    assert str(weights) in meta["init"]
    assert meta["source"] == "torchvision architecture"
    assert meta["weights"] == "checkpoint resnet18-imagenet.pth from --weights-file (fine-tuned)"
    assert meta["pretrained"] is True
    assert modelrepo.read_version(repo, "resnet18", 1).config.preprocessing.mean == (0.485, 0.456, 0.406)


def _table_row(repository: Path, name: str) -> str:
    """The docs table row of ``name``, from ``scripts/model_table.py`` run the way the docs say."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "model_table.py"), str(repository)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    header = result.stdout.splitlines()[0]
    assert header.startswith("| model | source | weights |")
    return next(row for row in result.stdout.splitlines() if row.startswith(f"| `{name}` |"))


def test_torchvision_model_says_where_its_weights_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ImageNet weights the model trains from random ones, and every field says so."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    repo = tmp_path / "repo"
    quick = ("--epochs", "1", "--max-train-samples", "20", "--image-size", "32", "--repository", str(repo))
    assert run_main("resnet18", *quick) == 0
    meta = modelrepo.read_version(repo, "resnet18", 1).metadata
    assert meta["source"] == "torchvision architecture"
    assert meta["pretrained"] is False
    assert (
        meta["weights"] == "random initialisation (ImageNet weights ResNet18_Weights.IMAGENET1K_V1 not found)"
    )
    assert meta["init"].startswith("random (pretrained weights not found at ")
    assert "torchvision pretrained" not in json.dumps(meta)
    row = _table_row(repo, "resnet18")
    assert "| torchvision architecture | random initialisation (ImageNet weights" in row

    # The same command once torchvision's cache holds the checkpoint: fine-tuned, and said so.
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    torch.save(tvm.resnet18(num_classes=1000).state_dict(), cached)
    assert run_main("resnet18", *quick) == 0
    meta = modelrepo.read_version(repo, "resnet18", 2).metadata
    assert meta["pretrained"] is True
    assert meta["weights"] == "torchvision ResNet18_Weights.IMAGENET1K_V1 (fine-tuned)"
    assert meta["init"] == f"pretrained (ResNet18_Weights.IMAGENET1K_V1 from {cached})"
    assert (
        "| torchvision architecture | torchvision ResNet18_Weights.IMAGENET1K_V1 (fine-tuned) |"
        in _table_row(repo, "resnet18")
    )


@pytest.mark.parametrize("flag", ["--epochs", "--image-size", "--max-train-samples"])
def test_non_positive_numbers_are_rejected(
    flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        run_main("lenet", flag, "0", "--repository", str(tmp_path))
    assert info.value.code == 2 and f"{flag} is 0" in capsys.readouterr().err
