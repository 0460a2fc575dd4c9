"""ONNX Runtime sessions: device choice, thread settings, warm-up.

``--device auto`` uses CUDA only when a GPU is really usable: the CUDA driver
answers with at least one device *and* the created session lists the CUDA
provider. ``--device cuda[:N]`` without a usable GPU is a :class:`StartupError`,
never a silent fall-back to the CPU.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from server.errors import StartupError

logger = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class Device:
    """Where sessions run: ``kind`` is "cpu" or "cuda"; ``explicit`` when the user asked for it."""

    kind: str
    index: int = 0
    explicit: bool = False

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"

    @property
    def providers(self) -> list[str | tuple[str, dict[str, str]]]:
        if self.kind == "cpu":
            return [CPU]
        return [(CUDA, {"device_id": str(self.index)}), CPU]


def cuda_device_count() -> tuple[int, str]:
    """Number of CUDA devices the driver reports, and why it is 0 when it is.

    Asks the driver directly (libcuda), which is silent on machines without a GPU,
    instead of letting ONNX Runtime try and log errors about missing libraries.
    """
    if CUDA not in ort.get_available_providers():
        return 0, "this onnxruntime build has no CUDA execution provider"
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0, "no CUDA driver (libcuda.so.1 not found)"
    if lib.cuInit(0) != 0:
        return 0, "the CUDA driver failed to initialise (cuInit)"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0, "the CUDA driver could not count devices"
    if count.value == 0:
        return 0, "the CUDA driver reports no devices"
    return count.value, ""


def resolve_device(spec: str) -> Device:
    """Turn ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` into a :class:`Device`.

    Raises StartupError for an unknown spelling or a CUDA request without a usable GPU.
    """
    spec = spec.strip().lower()
    if spec == "cpu":
        return Device("cpu", explicit=True)
    if spec == "auto":
        count, why = cuda_device_count()
        if count:
            return Device("cuda", 0)
        logger.info("device auto: using the CPU (%s)", why)
        return Device("cpu")
    kind, _, index_text = spec.partition(":")
    if kind != "cuda" or (index_text and not index_text.isdigit()):
        raise StartupError(f"device {spec!r} is not valid; expected auto, cpu, cuda or cuda:N")
    index = int(index_text or 0)
    count, why = cuda_device_count()
    if index >= count:
        detail = why or f"only {count} CUDA device(s) present"
        raise StartupError(f"device {spec!r} was requested but no usable CUDA GPU {index} exists: {detail}")
    return Device("cuda", index, explicit=True)


#: A model whose batch of one computes faster than this gets one intra-op thread (``--intra-op-threads 0``).
SMALL_MODEL_SECONDS = 1e-3


def available_cores() -> int:
    """The cores this process may run on (a taskset or container limit), not all of the host."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


#: The most intra-op threads the automatic rule gives one session.
MAX_AUTO_THREADS = 4


def intra_op_threads_for(cores: int, instances: int, processes: int = 1) -> int:
    """Threads per session such that ``instances`` sessions in each of ``processes`` fill ``cores``.

    At least 1 and at most :data:`MAX_AUTO_THREADS`: past a few threads one session gains
    little, and more instances use the cores better.
    """
    return max(1, min(MAX_AUTO_THREADS, cores // max(1, instances * processes)))


def default_intra_op_threads(instances: int, processes: int = 1) -> int:
    """Threads per session: one of ``processes`` server processes' share of the cores over its instances.

    With ``--workers N`` each worker gets 1/N of the cores: N workers each sized for the whole
    machine would oversubscribe it N times.
    """
    return intra_op_threads_for(available_cores(), instances, processes)


def batch1_seconds(
    session: ort.InferenceSession, input_name: str, sample_shape: tuple[int, ...], dtype: str, runs: int = 5
) -> float:
    """Median time of a warm batch of one: how the automatic thread count tells small models apart."""
    feed = {input_name: np.zeros((1, *sample_shape), dtype=dtype)}
    session.run(None, feed)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def create_session(path: Path, device: Device, intra_op_threads: int) -> tuple[ort.InferenceSession, Device]:
    """Create one session and return it with the device it really runs on.

    Spinning is off and inter-op parallelism is 1 because several models, each
    with their own pools, share a few cores: busy-waiting pools would steal the
    cores that other sessions are computing on.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    # Errors only: missing optional CUDA libraries are reported by our own check, not as ORT noise.
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=device.providers)
    if device.kind == "cuda" and CUDA not in session.get_providers():
        if device.explicit:
            raise StartupError(
                f"device {device} was requested but ONNX Runtime could not create a CUDA session "
                f"for {path} (providers: {session.get_providers()})"
            )
        logger.warning("CUDA session could not be created for %s; using the CPU", path)
        return session, Device("cpu")
    return session, device


def open_session(
    path: Path,
    device: Device,
    *,
    intra_op_threads: int,
    instances: int,
    processes: int = 1,
    input_name: str,
    sample_shape: tuple[int, ...],
    dtype: str,
    check: Callable[[ort.InferenceSession], None] | None = None,
) -> tuple[ort.InferenceSession, Device, int]:
    """One instance's session with the server's thread rule; returns it, its device and its threads.

    ``intra_op_threads`` 0 means automatic: this process's share of the cores (all of
    them, or one worker's share with ``--workers``) over the instances
    (:func:`default_intra_op_threads`), except that a model whose batch of one takes
    under :data:`SMALL_MODEL_SECONDS` gets one thread: splitting microsecond-sized
    operators over threads costs more in wake-ups than it gains, and the other cores
    are busy serving the RPCs anyway. ``check`` sees the session before it is first run.
    The benchmark's in-process ceiling opens its sessions with this same function.
    """
    threads = intra_op_threads or default_intra_op_threads(instances, processes)
    session, actual = create_session(path, device, threads)
    if check is not None:
        check(session)
    if (
        not intra_op_threads
        and threads > 1
        and actual.kind == "cpu"
        and batch1_seconds(session, input_name, sample_shape, dtype) < SMALL_MODEL_SECONDS
    ):
        threads = 1
        session, actual = create_session(path, device, threads)
    return session, actual, threads


def warm_up(
    session: ort.InferenceSession,
    input_name: str,
    sample_shape: tuple[int, ...],
    dtype: str,
    batch_sizes: tuple[int, ...],
) -> None:
    """Run zero batches of the given sizes so the first request does not pay for set-up."""
    for batch in sorted(set(batch_sizes)):
        session.run(None, {input_name: np.zeros((batch, *sample_shape), dtype=dtype)})
