"""Reading and atomically publishing model versions in a repository directory."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelrepo.config import ConfigError, ModelConfig

MODEL_FILENAME = "model.onnx"
CONFIG_FILENAME = "config.json"
METADATA_FILENAME = "metadata.json"

# Names become directory names: letters, digits, '_', '-' and '.', not starting with
# '.', so that no name can climb out of the repository or hide as a dot-file.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


#: A version as the repository spells its directories: ASCII digits without a leading zero, so
#: that a version can only ever become one numeric directory name.
VERSION_PATTERN = r"[1-9][0-9]{0,17}"
VERSION = re.compile(VERSION_PATTERN)


class InvalidModelName(ValueError):
    """A model name that could address something other than a model directory."""


def validate_model_name(name: str) -> str:
    """Return ``name`` if it is a safe model name, else raise :class:`InvalidModelName`."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise InvalidModelName(
            f"model name {name!r} is not valid; expected 1-128 characters of letters, "
            "digits, '_', '-' and '.', not starting with '.' and without '..'"
        )
    return name


def model_dir(repository: Path, name: str) -> Path:
    """The directory of model ``name``; the name is validated first."""
    return Path(repository) / validate_model_name(name)


def list_models(repository: Path) -> list[str]:
    """Names of the models in the repository that have at least one version."""
    repository = Path(repository)
    if not repository.is_dir():
        return []
    names = []
    for entry in sorted(repository.iterdir()):
        if entry.is_dir() and _NAME.fullmatch(entry.name) and list_versions(repository, entry.name):
            names.append(entry.name)
    return names


def list_versions(repository: Path, name: str) -> list[int]:
    """The model's published version numbers, ascending."""
    directory = model_dir(repository, name)
    if not directory.is_dir():
        return []
    return sorted(
        int(entry.name)
        for entry in directory.iterdir()
        if entry.is_dir() and entry.name.isdigit() and not entry.name.startswith("0")
    )


def latest_version(repository: Path, name: str) -> int | None:
    """The highest published version of the model, or None if it has none."""
    versions = list_versions(repository, name)
    return versions[-1] if versions else None


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelVersion:
    """One published version, with its parsed configuration and metadata."""

    name: str
    version: int
    path: Path
    config: ModelConfig
    metadata: dict[str, Any]

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILENAME

    @property
    def expected_sha256(self) -> str | None:
        value = self.metadata.get("model_sha256")
        return str(value) if value else None


def read_metadata(version_dir: Path) -> dict[str, Any]:
    path = Path(version_dir) / METADATA_FILENAME
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return data


def read_version(repository: Path, name: str, version: int) -> ModelVersion:
    """Read one version's configuration and metadata.

    Raises FileNotFoundError if the version does not exist and ConfigError if its
    files are malformed.
    """
    path = model_dir(repository, name) / str(int(version))
    config_path = path / CONFIG_FILENAME
    if not config_path.is_file():
        raise FileNotFoundError(f"model {name!r} version {version} has no {CONFIG_FILENAME} at {path}")
    config = ModelConfig.from_json(config_path.read_text())
    return ModelVersion(
        name=name, version=int(version), path=path, config=config, metadata=read_metadata(path)
    )


def publish(
    repository: Path,
    config: ModelConfig,
    model_file: Path,
    metadata: dict[str, Any],
    extra_files: Iterable[Path] = (),
) -> ModelVersion:
    """Publish ``model_file`` as the next version of ``config.name``, atomically.

    Everything is written into a hidden staging directory beside the versions and
    then renamed into place, so a reader sees either no new version or a complete
    one. ``model_sha256`` is added to the metadata. If another publisher takes the
    version number first, the next free one is used.
    """
    directory = model_dir(repository, config.name)
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=directory))
    try:
        shutil.copyfile(model_file, staging / MODEL_FILENAME)
        for extra in extra_files:
            shutil.copyfile(extra, staging / Path(extra).name)
        (staging / CONFIG_FILENAME).write_text(config.to_json())
        metadata = {**metadata, "model_sha256": file_sha256(staging / MODEL_FILENAME)}
        version = (latest_version(repository, config.name) or 0) + 1
        while True:
            metadata["version"] = version
            (staging / METADATA_FILENAME).write_text(json.dumps(metadata, indent=2, default=str) + "\n")
            for child in staging.iterdir():
                _fsync(child)
            staging.chmod(0o755)
            try:
                os.rename(staging, directory / str(version))
                break
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                version += 1
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return read_version(repository, config.name, version)


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
