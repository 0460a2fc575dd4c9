"""Publishing is atomic and numbered; names cannot escape the repository."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

import modelrepo
from modelrepo import InvalidModelName, ModelConfig, Preprocessing, TensorSpec


def config(name: str = "m") -> ModelConfig:
    return ModelConfig(
        name=name,
        input=TensorSpec("input", "FP32", (1, 4, 4)),
        output=TensorSpec("logits", "FP32", (2,)),
        labels=("no", "yes"),
        preprocessing=Preprocessing(4, 4, 1, (0.0,), (1.0,)),
    )


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(b"not really onnx, but bytes with a hash")
    return path


def test_publish_numbers_versions_and_records_the_hash(tmp_path: Path, model_file: Path) -> None:
    repo = tmp_path / "repo"
    extra = model_file.parent / "curves.png"
    extra.write_bytes(b"png")
    first = modelrepo.publish(repo, config(), model_file, {"source": "test"}, [extra])
    second = modelrepo.publish(repo, config(), model_file, {"source": "test"})
    assert (first.version, second.version) == (1, 2)
    assert sorted(p.name for p in first.path.iterdir()) == [
        "config.json",
        "curves.png",
        "metadata.json",
        "model.onnx",
    ]
    meta = json.loads((first.path / "metadata.json").read_text())
    assert meta["model_sha256"] == modelrepo.file_sha256(model_file) == first.expected_sha256
    assert meta["version"] == 1 and meta["source"] == "test"
    assert modelrepo.list_models(repo) == ["m"]
    assert modelrepo.list_versions(repo, "m") == [1, 2] and modelrepo.latest_version(repo, "m") == 2
    assert modelrepo.read_version(repo, "m", 1).config == config()


def test_concurrent_publishers_get_distinct_complete_versions(tmp_path: Path, model_file: Path) -> None:
    repo = tmp_path / "repo"
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def publish(index: int) -> None:
        try:
            barrier.wait()
            modelrepo.publish(repo, config(), model_file, {"publisher": index})
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert modelrepo.list_versions(repo, "m") == list(range(1, 9))
    publishers = {modelrepo.read_version(repo, "m", v).metadata["publisher"] for v in range(1, 9)}
    assert publishers == set(range(8))
    assert [p.name for p in (repo / "m").iterdir() if p.name.startswith(".")] == []


def test_failed_publish_leaves_no_partial_version(tmp_path: Path, model_file: Path) -> None:
    repo = tmp_path / "repo"
    with pytest.raises(FileNotFoundError):
        modelrepo.publish(repo, config(), model_file, {}, [tmp_path / "missing.png"])
    assert list((repo / "m").iterdir()) == []
    assert modelrepo.list_versions(repo, "m") == [] and modelrepo.list_models(repo) == []


def test_unnumbered_and_hidden_directories_are_not_versions(tmp_path: Path, model_file: Path) -> None:
    repo = tmp_path / "repo"
    for name in (".staging-x", "latest", "01"):
        (repo / "m" / name).mkdir(parents=True)
    assert modelrepo.list_versions(repo, "m") == []
    assert modelrepo.publish(repo, config(), model_file, {}).version == 1


@pytest.mark.parametrize("name", ["../etc", "a/b", "..", ".hidden", "", "a..b", "x" * 129, "a\\b", "a b"])
def test_unsafe_names_are_rejected(name: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidModelName, match="not valid"):
        modelrepo.validate_model_name(name)
    with pytest.raises(InvalidModelName):
        modelrepo.list_versions(tmp_path, name)


@pytest.mark.parametrize("name", ["lenet", "resnet18_scratch", "model-v1.2", "A"])
def test_safe_names_are_accepted(name: str) -> None:
    assert modelrepo.validate_model_name(name) == name


def test_read_version_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        modelrepo.read_version(tmp_path, "m", 1)
    bad = tmp_path / "m" / "1"
    bad.mkdir(parents=True)
    (bad / "config.json").write_text(config().to_json())
    (bad / "metadata.json").write_text("[1]")
    with pytest.raises(modelrepo.ConfigError, match="JSON object"):
        modelrepo.read_version(tmp_path, "m", 1)
