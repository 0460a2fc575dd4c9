"""The lock files in requirements/: made from pyproject.toml by `make lock`, one per environment.

Every install (the development venv, CI, the serving and export images) installs one of these
with ``--require-hashes --no-deps``, so these checks are what keeps "the image runs what the tests
ran" true: each lock satisfies what pyproject.toml asks of its environment, a package shared by
two environments has one version, and re-running the lock tool changes no pin.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from deploytools import ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REQUIREMENTS = ROOT / "requirements"
#: lock file -> the pyproject extras it is resolved from (None: the build-system requirements).
LOCKS: dict[str, tuple[str, ...] | None] = {
    "dev.txt": ("gpu", "export", "dev"),
    "serve-cpu.txt": ("cpu",),
    "serve-gpu.txt": ("gpu", "cuda"),
    "export.txt": ("cpu", "export"),
    "build.txt": None,
}
SERVING_LOCKS = ("serve-cpu.txt", "serve-gpu.txt")
#: What only the export side needs; none of it may reach the serving image.
EXPORT_ONLY = {"torch", "torchvision", "onnx", "onnxscript", "scikit-learn", "matplotlib", "tqdm"}
#: The environment every lock is resolved for (scripts/lock.sh: CPython 3.11, Linux x86_64).
TARGET = {"python_version": "3.11", "sys_platform": "linux", "platform_machine": "x86_64"}


def read_lock(path: Path) -> dict[str, str]:
    """``{canonical name: version}`` of a hash-pinned requirements file; fails on a loose line."""
    text = path.read_text().replace("\\\n", " ")
    pins: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement_text, *hashes = line.split(" --hash=")
        requirement = Requirement(requirement_text)
        specs = list(requirement.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{path.name}: {line!r}; expected name==version"
        assert hashes, f"{path.name}: {requirement_text!r} has no --hash; --require-hashes would refuse it"
        pins[canonicalize_name(requirement.name)] = specs[0].version
    return pins


def project() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def asked_for(extras: tuple[str, ...] | None) -> list[Requirement]:
    """What pyproject.toml asks of an environment with these extras."""
    data = project()
    if extras is None:
        return [Requirement(line) for line in data["build-system"]["requires"]]  # type: ignore[index]
    table = data["project"]
    lines = list(table["dependencies"])  # type: ignore[index]
    for extra in extras:
        lines += table["optional-dependencies"][extra]  # type: ignore[index]
    return [Requirement(line) for line in lines]


@pytest.mark.parametrize("lock", LOCKS)
def test_lock_satisfies_what_pyproject_asks(lock: str) -> None:
    pins = read_lock(REQUIREMENTS / lock)
    for requirement in asked_for(LOCKS[lock]):
        if requirement.marker is not None and not requirement.marker.evaluate(TARGET):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"pyproject.toml asks for {requirement}; {lock} does not pin it (run make lock)"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{lock} pins {name}=={pins[name]}; pyproject.toml asks for {requirement} (run make lock)"
        )


def test_a_package_has_one_version_in_every_environment() -> None:
    versions: dict[str, dict[str, str]] = {}
    for lock in LOCKS:
        for name, version in read_lock(REQUIREMENTS / lock).items():
            versions.setdefault(name, {})[lock] = version
    split = {name: seen for name, seen in versions.items() if len(set(seen.values())) > 1}
    assert not split, f"packages locked at different versions: {split}"
    # The two builds of ONNX Runtime are one release: the CPU image runs what the tests ran.
    cpu = read_lock(REQUIREMENTS / "serve-cpu.txt")["onnxruntime"]
    gpu = read_lock(REQUIREMENTS / "dev.txt")["onnxruntime-gpu"]
    assert cpu == gpu, f"onnxruntime=={cpu} for the CPU image but onnxruntime-gpu=={gpu} in the tests"


@pytest.mark.parametrize("lock", LOCKS)
def test_never_both_builds_of_onnxruntime_in_one_environment(lock: str) -> None:
    builds = {"onnxruntime", "onnxruntime-gpu"} & set(read_lock(REQUIREMENTS / lock))
    assert len(builds) <= 1, f"{lock} installs {sorted(builds)}; they overwrite each other's module"


@pytest.mark.parametrize("lock", SERVING_LOCKS)
def test_serving_locks_have_no_export_packages(lock: str) -> None:
    leaked = EXPORT_ONLY & set(read_lock(REQUIREMENTS / lock))
    assert not leaked, f"{lock} pins export-only packages {sorted(leaked)}"


def test_gpu_lock_provides_what_onnxruntime_gpu_asks_for() -> None:
    pins = read_lock(REQUIREMENTS / "serve-gpu.txt")
    metadata = importlib.metadata.metadata("onnxruntime-gpu")
    needed = [
        requirement
        for requirement in map(Requirement, metadata.get_all("Requires-Dist") or [])
        if requirement.marker is not None
        and any(requirement.marker.evaluate({**TARGET, "extra": e}) for e in ("cuda", "cudnn"))
    ]
    assert needed, "onnxruntime-gpu declares no [cuda]/[cudnn] extras to check against"
    for requirement in needed:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"serve-gpu.txt lacks {requirement} (onnxruntime-gpu's CUDA extras)"
        assert requirement.specifier.contains(pins[name]), f"serve-gpu.txt pins {name}=={pins[name]}"
    assert pins["nvidia-cudnn-cu13"].startswith("9."), "onnxruntime-gpu's CUDA EP needs cuDNN 9"


def test_the_test_environment_is_the_development_lock() -> None:
    # What CI's `make test` runs in must be exactly requirements/dev.txt (make installs it).
    drift = {}
    for name, version in read_lock(REQUIREMENTS / "dev.txt").items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = "missing"
        if installed != version:
            drift[name] = f"locked {version}, installed {installed}"
    assert not drift, f"the venv differs from requirements/dev.txt (run make install): {drift}"


@pytest.mark.slow
def test_make_lock_again_moves_no_pin(tmp_path: Path) -> None:
    """The locks are what `make lock` makes from today's pyproject.toml: re-running it (which keeps
    locked versions where they still fit) changes no pin. Needs the package index, as make does."""
    uv = Path(sys.executable).parent / "uv"
    assert uv.exists(), f"{uv} is missing; uv comes with requirements/dev.txt"
    for name in ("pyproject.toml", "scripts/lock.sh"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(REQUIREMENTS, tmp_path / "requirements")
    result = subprocess.run(
        ["bash", "scripts/lock.sh"],
        cwd=tmp_path,
        env={**os.environ, "UV": str(uv), "UPGRADE": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"scripts/lock.sh exited {result.returncode}:\n{result.stderr[-3000:]}"
    for path in sorted(REQUIREMENTS.glob("*.txt")):
        before, after = read_lock(path), read_lock(tmp_path / "requirements" / path.name)
        names = before.keys() | after.keys()
        moved = {n: (before.get(n), after.get(n)) for n in names if before.get(n) != after.get(n)}
        assert not moved, f"{path.name} is out of date with pyproject.toml (run make lock): {moved}"
