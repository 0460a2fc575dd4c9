"""What this machine offers for CUDA inference, found without creating any session.

nvidia-smi, the CUDA driver (asked as ``server.runtime`` asks it), the ONNX Runtime build and
its execution providers, the NVIDIA pip wheels that ship the CUDA libraries, and what each
provider library of this build cannot load. The wheels' libraries are not on the loader's
path: :func:`library_environment` is what a child process needs to find them.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from server.runtime import CUDA, cuda_device_count

TENSORRT = "TensorrtExecutionProvider"
#: The CUDA user-space libraries the execution provider loads, by the pip distributions that ship them.
CUDA_WHEELS = {
    "CUDA runtime": ("nvidia-cuda-runtime", "nvidia-cuda-runtime-cu13", "nvidia-cuda-runtime-cu12"),
    "cuBLAS": ("nvidia-cublas", "nvidia-cublas-cu13", "nvidia-cublas-cu12"),
    "cuDNN": ("nvidia-cudnn-cu13", "nvidia-cudnn-cu12"),
    "TensorRT": ("tensorrt-cu13-libs", "tensorrt-cu12-libs", "tensorrt"),
}
#: The shared library of each GPU execution provider in an onnxruntime-gpu wheel.
PROVIDER_LIBRARIES = {
    CUDA: "libonnxruntime_providers_cuda.so",
    TENSORRT: "libonnxruntime_providers_tensorrt.so",
}


@dataclass(frozen=True)
class Preflight:
    """What this machine offers for CUDA inference, found without creating any session."""

    nvidia_smi: str  # one sentence
    gpus: tuple[dict[str, str], ...]
    driver_devices: int
    driver_reason: str  # why driver_devices is 0, else ""
    driver_cuda_version: str | None
    onnxruntime: str
    providers: tuple[str, ...]
    cuda_build: str | None
    wheels: dict[str, str]
    #: Libraries each provider library of this build cannot find (``ldd``, the wheels' directories added).
    unresolved: dict[str, tuple[str, ...]]

    @property
    def cuda_provider(self) -> bool:
        return CUDA in self.providers

    @property
    def usable(self) -> bool:
        return self.driver_devices > 0 and self.cuda_provider

    def why_not_measured(self) -> str:
        """The preflight's own reason that no GPU figure can be measured ("" when one can)."""
        reasons = []
        if self.driver_devices == 0:
            reasons.append(f"this machine's CUDA driver reports 0 devices: {self.driver_reason}")
        if not self.cuda_provider:
            reasons.append(f"{self.onnxruntime} offers no {CUDA} (providers: {', '.join(self.providers)})")
        return "; ".join(reasons)


def preflight() -> Preflight:
    """Ask nvidia-smi, the CUDA driver (as the server does) and ONNX Runtime what is there."""
    from onnxruntime.capi import build_and_package_info

    sentence, gpus = _nvidia_smi()
    count, why = cuda_device_count()
    return Preflight(
        nvidia_smi=sentence,
        gpus=gpus,
        driver_devices=count,
        driver_reason=why,
        driver_cuda_version=_driver_cuda_version(),
        onnxruntime=ort_distribution(),
        providers=tuple(ort.get_available_providers()),
        cuda_build=getattr(build_and_package_info, "cuda_version", None),
        wheels=_wheel_versions(),
        unresolved={
            provider: tuple(missing_libraries(library, library_environment()))
            for provider, library in PROVIDER_LIBRARIES.items()
        },
    )


def ort_distribution() -> str:
    """The installed ONNX Runtime distribution and its version, e.g. ``onnxruntime-gpu 1.31.1``."""
    for name in ("onnxruntime-gpu", "onnxruntime"):
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return f"onnxruntime {ort.__version__}"


def _wheel_versions() -> dict[str, str]:
    found = {}
    for library, distributions in CUDA_WHEELS.items():
        found[library] = f"not installed (none of {', '.join(distributions)})"
        for name in distributions:
            try:
                found[library] = f"{name} {importlib.metadata.version(name)}"
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return found


def _nvidia_smi() -> tuple[str, tuple[dict[str, str], ...]]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "nvidia-smi is not on PATH", ()
    fields = ("index", "name", "driver_version", "memory.total")
    query = [exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader"]
    try:
        done = subprocess.run(query, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi could not be run: {exc}", ()
    if done.returncode != 0:
        detail = (done.stdout + done.stderr).strip().splitlines()
        return f"nvidia-smi exited with {done.returncode}: {detail[0] if detail else 'no output'}", ()
    gpus = tuple(
        dict(zip(fields, (part.strip() for part in line.split(",")), strict=False))
        for line in done.stdout.strip().splitlines()
        if line.strip()
    )
    names = "; ".join(f"GPU {g['index']}: {g.get('name')} ({g.get('memory.total')})" for g in gpus)
    return f"nvidia-smi lists {len(gpus)} GPU(s): {names or 'none'}", gpus


def _driver_cuda_version() -> str | None:
    """The CUDA version the driver supports (cuDriverGetVersion), or None without a driver."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def wheel_library_dirs() -> list[Path]:
    """The ``nvidia/*/lib`` directories of the NVIDIA pip wheels: where the CUDA EP finds its libraries."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    return sorted(
        lib
        for base in spec.submodule_search_locations
        for lib in Path(base).glob("*/lib")
        if any(lib.glob("*.so*"))
    )


def library_environment() -> dict[str, str]:
    """The variables a child process needs to load the wheels' CUDA libraries (empty when none)."""
    dirs = [str(d) for d in wheel_library_dirs()]
    if not dirs:
        return {}
    existing = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    return {"LD_LIBRARY_PATH": ":".join(dict.fromkeys([*dirs, *existing]))}


def missing_libraries(provider_library: str, env: dict[str, str]) -> list[str]:
    """The shared libraries that ``ldd`` cannot find for an ONNX Runtime provider library."""
    path = Path(ort.__file__).parent / "capi" / provider_library
    ldd = shutil.which("ldd")
    if not path.exists() or ldd is None:
        return []  # no such provider in this build (the providers row says so), or no way to ask
    done = subprocess.run(
        [ldd, str(path)], capture_output=True, text=True, env={**os.environ, **env}, timeout=60, check=False
    )
    return [line.split()[0] for line in done.stdout.splitlines() if "not found" in line]
