"""The model manager: which model versions are loaded, their state, load and unload.

Each loaded version owns its ONNX Runtime sessions (one per instance) and its
batcher. A new version is loaded and warmed up before it replaces the old one;
the old one then drains (its queued and running requests finish on it) and is
released. A model that fails to load is UNAVAILABLE with the reason, and the other
models keep serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

import modelrepo
from modelrepo import BatchingConfig, ModelConfig
from modelrepo.datatypes import DATATYPES
from server.batcher import DynamicBatcher, Reservation
from server.errors import InvalidInput, LoadFailed, ModelNotFound, StartupError, Unavailable
from server.metrics import Metrics, ModelStats
from server.runtime import Device, open_session, warm_up
from server.settings import ModelSelection, Settings

logger = logging.getLogger(__name__)

READY = "READY"
LOADING = "LOADING"
UNLOADING = "UNLOADING"
UNAVAILABLE = "UNAVAILABLE"

#: Called with (model name, serving?) whenever a model becomes ready or stops being ready.
StateListener = Callable[[str, bool], Awaitable[None]]


@dataclass
class LoadedModel:
    """One model version in memory: its sessions, batcher and statistics."""

    name: str
    version: int
    config: ModelConfig
    batching: BatchingConfig
    device: Device
    sessions: list[ort.InferenceSession]
    stats: ModelStats
    #: ONNX Runtime intra-op threads of each session.
    intra_op_threads: int = 1
    #: Whether the batcher runs a lone request at once (see :class:`DynamicBatcher`).
    greedy_batching: bool = True
    #: Input bytes the batcher may hold queued (see :class:`DynamicBatcher`).
    max_queue_bytes: int = 256 * 2**20
    batcher: DynamicBatcher = field(init=False)

    def __post_init__(self) -> None:
        self.input_name = self.config.input.name
        self.output_names = [self.config.output.name]
        self.dtype = DATATYPES[self.config.input.datatype].dtype
        self.sample_shape = self.config.input.shape
        self.max_batch_size = self.batching.max_batch_size
        sessions = self.sessions
        feed_name = self.input_name
        outputs = self.output_names

        def run(index: int, batch: np.ndarray) -> np.ndarray:
            result: np.ndarray = sessions[index].run(outputs, {feed_name: batch})[0]
            return result

        self.batcher = DynamicBatcher(
            self.name,
            run,
            instances=len(sessions),
            max_batch_size=self.batching.max_batch_size,
            max_queue_delay_s=self.batching.max_queue_delay_us / 1e6,
            max_queue_size=self.batching.max_queue_size,
            max_queue_bytes=self.max_queue_bytes,
            observer=self.stats,
            greedy=self.greedy_batching,
        )

    def submit(self, batch: np.ndarray, deadline: float | None) -> asyncio.Future[np.ndarray]:
        """Queue a validated batch; see :meth:`DynamicBatcher.submit`."""
        if len(batch) > self.batching.max_batch_size:
            raise InvalidInput(
                f"input {self.input_name!r} has batch size {len(batch)}; model {self.name!r} "
                f"accepts at most {self.batching.max_batch_size}"
            )
        return self.batcher.submit(batch, deadline)

    async def infer(
        self, batch: np.ndarray, deadline: float | None, reservation: Reservation | None = None
    ) -> np.ndarray:
        """Queue a validated batch and wait for its output; see :meth:`DynamicBatcher.infer`."""
        if len(batch) > self.max_batch_size:
            if reservation is not None:
                self.batcher.cancel_reservation(reservation)
            raise InvalidInput(
                f"input {self.input_name!r} has batch size {len(batch)}; model {self.name!r} "
                f"accepts at most {self.max_batch_size}"
            )
        return await self.batcher.infer(batch, deadline, reservation)

    async def stop(self, grace: float | None) -> None:
        """Let queued and running requests finish (up to ``grace`` seconds), then release."""
        if not await self.batcher.drain(grace):
            logger.warning(
                "model %s version %d: requests still pending after %.1fs", self.name, self.version, grace
            )
        await self.batcher.close()
        self.sessions.clear()


@dataclass
class ModelEntry:
    """A model name the server knows, loaded or not."""

    name: str
    state: str = UNAVAILABLE
    reason: str = "not loaded"
    current: LoadedModel | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ModelManager:
    """Loads, serves and unloads the models of one repository."""

    def __init__(
        self,
        settings: Settings,
        device: Device,
        metrics: Metrics | None = None,
        listener: StateListener | None = None,
    ) -> None:
        self.settings = settings
        self.repository = settings.repository
        self.device = device
        self.metrics = metrics
        self._listener = listener
        self._entries: dict[str, ModelEntry] = {}
        self.shutting_down = False

    # -- serving ---------------------------------------------------------------------------------

    def get(self, name: str, version: str = "") -> LoadedModel:
        """The loaded model for a request; raises ModelNotFound or Unavailable."""
        if self.shutting_down:
            raise Unavailable("server is shutting down")
        entry = self._entries.get(name)
        if entry is None:
            known = sorted(self._entries)
            raise ModelNotFound(f"unknown model {name!r}; available models: {known[:20]}")
        model = entry.current
        if model is None:
            raise Unavailable(f"model {name!r} is {entry.state}: {entry.reason}")
        if version and version != str(model.version):
            raise ModelNotFound(
                f"model {name!r} version {version!r} is not loaded; loaded version: {model.version}"
            )
        return model

    def loaded(self) -> list[LoadedModel]:
        """The currently loaded versions, by model name."""
        return [e.current for _, e in sorted(self._entries.items()) if e.current is not None]

    async def entries(self) -> list[ModelEntry]:
        """Every model the server knows or the repository holds, by name.

        The repository is scanned in a thread: a slow or large file system never stalls
        the event loop that serves every other request.
        """
        for name in await asyncio.to_thread(modelrepo.list_models, self.repository):
            self._entries.setdefault(name, ModelEntry(name))
        return [e for _, e in sorted(self._entries.items())]

    def first_ready(self) -> LoadedModel | None:
        for entry in self._entries.values():
            if entry.current is not None:
                return entry.current
        return None

    # -- loading -------------------------------------------------------------------------------

    async def load_initial(self) -> None:
        """Load the models named in the settings, or all in the repository; failures only mark them."""
        selections: Iterable[ModelSelection] = self.settings.models or [
            ModelSelection(name) for name in await asyncio.to_thread(modelrepo.list_models, self.repository)
        ]
        for selection in selections:
            try:
                await self.load(selection.name, selection.version)
            except (LoadFailed, ModelNotFound) as exc:
                logger.error("model %s is unavailable: %s", selection.name, exc.message)

    async def load(self, name: str, version: int | None = None) -> LoadedModel:
        """Load (or reload) a model: the latest version unless ``version`` is given.

        The old version keeps serving until the new one is ready, then drains.
        """
        try:
            modelrepo.validate_model_name(name)
        except modelrepo.InvalidModelName as exc:
            raise InvalidInput(str(exc)) from None
        versions = await asyncio.to_thread(modelrepo.list_versions, self.repository, name)
        if not versions:
            raise ModelNotFound(f"model {name!r} is not in the model repository")
        if version is None:
            version = versions[-1]
        elif version not in versions:
            raise ModelNotFound(f"model {name!r} has no version {version}; versions: {versions}")
        entry = self._entries.setdefault(name, ModelEntry(name))
        async with entry.lock:
            if entry.current is None:
                await self._set_state(entry, LOADING, "loading")
            started = time.perf_counter()
            try:
                model = await asyncio.to_thread(self._build_reported, name, version)
            except LoadFailed as exc:
                if entry.current is None:
                    await self._set_state(entry, UNAVAILABLE, exc.message)
                raise
            model.batcher.start()
            old, entry.current = entry.current, model
            await self._set_state(entry, READY, "")
            logger.info(
                "model %s version %d ready on %s in %.2fs (max batch %d, delay %dus, instances %d, "
                "intra-op threads %d)",
                name,
                version,
                model.device,
                time.perf_counter() - started,
                model.batching.max_batch_size,
                model.batching.max_queue_delay_us,
                len(model.sessions),
                model.intra_op_threads,
            )
        if old is not None:
            await old.stop(self.settings.grace_period)
            logger.info("model %s version %d released", name, old.version)
        return model

    async def unload(self, name: str) -> None:
        """Stop serving a model; its queued and running requests finish first."""
        entry = self._entries.get(name)
        if entry is None or entry.current is None:
            raise ModelNotFound(f"model {name!r} is not loaded")
        async with entry.lock:
            old, entry.current = entry.current, None
            if old is None:
                return
            await self._set_state(entry, UNLOADING, "unloading")
            await old.stop(self.settings.grace_period)
            await self._set_state(entry, UNAVAILABLE, "unloaded")
        logger.info("model %s unloaded", name)

    async def drain(self, timeout: float | None) -> None:
        """Stop accepting requests and wait for every model's queued and running ones."""
        self.shutting_down = True
        models = self.loaded()
        await asyncio.gather(*(m.batcher.drain(timeout) for m in models))

    async def close(self) -> None:
        """Release every model."""
        for entry in self._entries.values():
            model, entry.current = entry.current, None
            if model is not None:
                await model.stop(0)

    # -- internals ------------------------------------------------------------------------------

    async def _set_state(self, entry: ModelEntry, state: str, reason: str) -> None:
        entry.state, entry.reason = state, reason
        if self.metrics is not None:
            self.metrics.set_state(entry.name, state)
        if self._listener is not None:
            await self._listener(entry.name, state == READY)

    def _effective_batching(self, config: ModelConfig) -> BatchingConfig:
        s, b = self.settings, config.batching
        return BatchingConfig(
            max_batch_size=s.max_batch_size if s.max_batch_size is not None else b.max_batch_size,
            max_queue_delay_us=s.max_queue_delay_us
            if s.max_queue_delay_us is not None
            else b.max_queue_delay_us,
            max_queue_size=s.max_queue_size if s.max_queue_size is not None else b.max_queue_size,
            instances=s.instances if s.instances is not None else b.instances,
        )

    def _build_reported(self, name: str, version: int) -> LoadedModel:
        """:meth:`_build`, with failures told to clients without the server's file-system paths."""
        try:
            return self._build(name, version)
        except LoadFailed as exc:
            logger.debug("loading model %s version %d failed: %s", name, version, exc.message)
            raise LoadFailed(repository_relative(exc.message, self.repository)) from None

    def _build(self, name: str, version: int) -> LoadedModel:
        """Read, verify, open and warm up one version (blocking: runs in a thread)."""
        try:
            mv = modelrepo.read_version(self.repository, name, version)
        except (OSError, modelrepo.ConfigError) as exc:
            raise LoadFailed(
                f"model {name!r} version {version} has an unreadable configuration: {exc}"
            ) from None
        expected = mv.expected_sha256
        if not mv.model_path.is_file():
            raise LoadFailed(f"model {name!r} version {version} has no model file at {mv.model_path}")
        if expected is not None:
            actual = modelrepo.file_sha256(mv.model_path)
            if actual != expected:
                raise LoadFailed(
                    f"model {name!r} version {version}: model.onnx has sha256 {actual[:12]}…; "
                    f"metadata.json records {expected[:12]}…"
                )
        batching = self._effective_batching(mv.config)
        threads = 0
        sessions = []
        device = self.device
        try:
            dtype = DATATYPES[mv.config.input.datatype].dtype.name
            spec = mv.config.input
            for _ in range(batching.instances):
                session, device, threads = open_session(
                    mv.model_path,
                    self.device,
                    intra_op_threads=self.settings.intra_op_threads,
                    instances=batching.instances,
                    processes=self.settings.workers,
                    input_name=spec.name,
                    sample_shape=spec.shape,
                    dtype=dtype,
                    check=lambda session: _check_signature(session, mv.config),
                )
                batches = (1, batching.max_batch_size) if device.kind == "cuda" else (1,)
                warm_up(session, spec.name, spec.shape, dtype, batches)
                sessions.append(session)
        except (LoadFailed, StartupError):
            raise
        except Exception as exc:  # ORT raises several unrelated types for a bad file
            logger.debug("loading %s version %d failed", name, version, exc_info=True)
            raise LoadFailed(f"model {name!r} version {version} failed to load: {_first_line(exc)}") from None
        stats = ModelStats(name, version, self.metrics)
        return LoadedModel(
            name,
            version,
            mv.config,
            batching,
            device,
            sessions,
            stats,
            threads,
            greedy_batching=self.settings.greedy_batching,
            max_queue_bytes=self.settings.max_queue_bytes,
        )


def repository_relative(message: str, repository: Path) -> str:
    """``message`` with the repository's location removed from every path in it.

    ``/srv/models/tiny/1/config.json`` becomes ``tiny/1/config.json``: what a client
    needs to fix its repository, without where the server keeps it.
    """
    for prefix in {str(repository.resolve()), str(repository.absolute()), str(repository)}:
        message = message.replace(prefix.rstrip("/") + "/", "").replace(prefix, "<repository>")
    return message


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _check_signature(session: ort.InferenceSession, config: ModelConfig) -> None:
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != [config.input.name] or config.output.name not in outputs:
        raise LoadFailed(
            f"model {config.name!r}: model.onnx has inputs {inputs} and outputs {outputs}; "
            f"config.json expects input {config.input.name!r} and output {config.output.name!r}"
        )
