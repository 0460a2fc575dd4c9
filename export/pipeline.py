"""One model's export: build, (pre)train, export to ONNX, prove parity, publish.

Nothing is published unless every step succeeds; the repository only ever gains a
complete, parity-checked version. With ``quantize="int8"`` the same training run also
yields ``<name>_int8`` (see :mod:`export.quantize`), and neither model is published
unless the INT8 one passes its gate as well.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import logging
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

import modelrepo
from export.data import Dataset, load_dataset
from export.models import (
    ModelSpec,
    PretrainedWeights,
    WeightsNotFoundError,
    find_weights,
    get_spec,
    load_pretrained,
)
from export.onnx_export import INPUT_NAME, OPSET, OUTPUT_NAME, TRACE_BATCH, export_onnx
from export.parity import check_parity, ort_predict, ort_session, require_parity
from export.plots import confusion_matrix, plot_confusion_matrix, plot_training_curves
from export.quantize import (
    DEFAULT_CALIBRATION_SAMPLES,
    QUANTIZED_SUFFIX,
    QuantizationReport,
    compare,
    quantize_int8,
    require_gate,
)
from export.train import TrainConfig, accuracy, predict, seed_everything, train

logger = logging.getLogger(__name__)

Init = Literal["auto", "pretrained", "random"]
TRAINING_CURVES = "training_curves.png"
CONFUSION_MATRIX = "confusion_matrix.png"


@dataclass(frozen=True)
class ExportOptions:
    """Settings for exporting models; None means the model's own default."""

    repository: Path = Path("model_repository")
    dataset: str = "digits"
    data_dir: Path | None = None
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    max_train_samples: int | None = None
    image_size: int | None = None
    seed: int = 0
    device: str = "cpu"
    init: Init = "auto"
    weights_file: Path | None = None
    skip_existing: bool = False
    progress: bool = True
    #: Also publish a quantized variant: None or "int8".
    quantize: str | None = None
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES


def _library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in (
        "torch",
        "torchvision",
        "onnx",
        "onnxruntime-gpu",
        "onnxruntime",
        "numpy",
        "scikit-learn",
    ):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


@dataclass(frozen=True)
class WeightsPlan:
    """How an export initialises a model on this machine: the checkpoint it loads, or why none.

    Made once by :func:`plan_weights`, so that what ``--list`` announces, what the export does
    and what its metadata says cannot disagree.
    """

    #: The ImageNet weights the architecture can start from; None for seed architectures.
    weights: PretrainedWeights | None
    #: The checkpoint to load; None means random initialisation.
    checkpoint: Path | None = None
    #: True when ``checkpoint`` is the user's ``--weights-file``, not torchvision's cache entry.
    from_file: bool = False
    #: Where pretrained weights were looked for and not found.
    missing: Path | None = None
    #: Why the export must stop before training (``--init pretrained`` that cannot be honoured).
    error: Exception | None = None

    @property
    def pretrained(self) -> bool:
        """Whether the model starts from a pretrained checkpoint."""
        return self.checkpoint is not None

    def init(self) -> str:
        """The metadata's ``init``: ``pretrained (ENUM from PATH)``, ``random`` or ``random (why)``."""
        if self.checkpoint is not None and self.weights is not None:
            return f"pretrained ({self.weights.enum} from {self.checkpoint})"
        if self.missing is not None:
            return f"random (pretrained weights not found at {self.missing})"
        return "random"

    def describe(self, *, where: bool = False) -> str:
        """What the weights start from, in words: the metadata's ``weights``, and ``--list``.

        ``where`` adds the path at which missing pretrained weights were looked for.
        """
        if self.error is not None:
            return f"none: the export fails ({self.error})"
        if self.weights is None:
            return "random initialisation"
        if self.checkpoint is not None:
            if self.from_file:
                return f"checkpoint {self.checkpoint.name} from --weights-file (fine-tuned)"
            return f"torchvision {self.weights.enum} (fine-tuned)"
        if self.missing is not None:
            at = f" at {self.missing}" if where else ""
            return f"random initialisation (ImageNet weights {self.weights.enum} not found{at})"
        return "random initialisation (--init random)"


def plan_weights(spec: ModelSpec, init: Init = "auto", weights_file: Path | None = None) -> WeightsPlan:
    """Decide how ``spec`` is initialised: ``init`` as ``--init`` means it, given the files present."""
    if spec.weights is None:
        if init == "pretrained":
            error = ValueError(f"model {spec.name!r} is a {spec.source}; it has no pretrained weights")
            return WeightsPlan(None, error=error)
        return WeightsPlan(None)
    if init == "random":
        return WeightsPlan(spec.weights)
    try:
        path = find_weights(spec.weights, weights_file)
    except WeightsNotFoundError as exc:
        return WeightsPlan(spec.weights, missing=exc.path, error=exc if init == "pretrained" else None)
    return WeightsPlan(spec.weights, checkpoint=path, from_file=weights_file is not None)


def _initialise(model: torch.nn.Module, spec: ModelSpec, plan: WeightsPlan) -> None:
    """Load the pretrained weights ``plan`` names, or leave ``model``'s random ones (with a warning)."""
    if plan.error is not None:
        raise plan.error
    if plan.checkpoint is not None and plan.weights is not None:
        load_pretrained(model, plan.weights, plan.checkpoint)
    elif plan.missing is not None:
        logger.warning(
            "%s: pretrained weights not found at %s; training from random initialisation instead",
            spec.name, plan.missing,
        )  # fmt: skip


def published_names(name: str, quantize: str | None = None) -> list[str]:
    """The models an export of ``name`` publishes: itself, then its quantized variant if asked."""
    return [name] if quantize is None else [name, name + QUANTIZED_SUFFIX[quantize]]


def export_model(name: str, options: ExportOptions) -> list[modelrepo.ModelVersion]:
    """Export model ``name`` and publish it, and its quantized variant with ``options.quantize``.

    Returns the new versions; none when ``skip_existing`` is set and every model the export
    would publish has a version already. Raises :class:`export.parity.ParityError` if ONNX
    Runtime does not reproduce PyTorch's outputs, :class:`export.quantize.QuantizationGateError`
    if the quantized model fails its gate; either way nothing is published.
    """
    spec = get_spec(name)
    repository = Path(options.repository)
    names = published_names(name, options.quantize)
    existing = {n: modelrepo.latest_version(repository, n) for n in names}
    if options.skip_existing and None not in existing.values():
        held = ", ".join(f"{n} version {v}" for n, v in existing.items())
        logger.info("%s: %s already in %s; skipping", name, held, repository)
        return []
    started = time.monotonic()
    started_at = dt.datetime.now(dt.UTC)
    size = options.image_size or spec.image_size
    pre = modelrepo.Preprocessing(
        height=size, width=size, channels=spec.channels, mean=spec.mean, std=spec.std
    )
    defaults = spec.training
    max_train = options.max_train_samples or defaults.max_train_samples
    data = load_dataset(options.dataset, pre, data_dir=options.data_dir, max_train_samples=max_train)

    # Seeded here, not only in train(): the initial weights come from the same random stream,
    # and must not depend on what ran before in this process (``--all``) or on torch's default seed.
    seed_everything(options.seed)
    model = spec.build(num_classes=len(data.labels), image_size=size)
    plan = plan_weights(spec, options.init, options.weights_file)
    _initialise(model, spec, plan)
    config = TrainConfig(
        epochs=options.epochs or defaults.epochs,
        lr=options.lr or defaults.lr,
        batch_size=options.batch_size or defaults.batch_size,
        optimizer=defaults.optimizer,
        weight_decay=defaults.weight_decay,
        patience=defaults.patience,
        shift_fraction=defaults.shift_fraction,
        seed=options.seed,
        device=options.device,
        progress=options.progress,
    )
    logger.info(
        "%s: training from %s for up to %d epochs at %dx%d (%s)",
        name, plan.describe(), config.epochs, size, size, config,
    )  # fmt: skip
    result = train(model, data, config, desc=name)
    train_seconds = time.monotonic() - started
    test_logits = predict(model, data.test.x, device=options.device)
    torch_test_accuracy = accuracy(test_logits, data.test.y)
    model.to("cpu")

    with tempfile.TemporaryDirectory(prefix=f"export-{name}-") as tmp:
        work = Path(tmp)
        onnx_path = work / modelrepo.MODEL_FILENAME
        exporter = export_onnx(model, onnx_path, (spec.channels, size, size))
        report = require_parity(check_parity(model, onnx_path, data.test.x, seed=options.seed))
        onnx_logits = ort_predict(ort_session(onnx_path), data.test.x)
        onnx_test_accuracy = accuracy(onnx_logits, data.test.y)
        predictions = onnx_logits.argmax(1)
        plot_training_curves(result, work / TRAINING_CURVES, f"{name} on {data.name}")
        plot_confusion_matrix(
            confusion_matrix(predictions, data.test.y, len(data.labels)),
            data.labels,
            work / CONFUSION_MATRIX,
            f"{name}: ONNX on {len(data.test)} test images (accuracy {onnx_test_accuracy:.4f})",
        )
        model_config = modelrepo.ModelConfig(
            name=name,
            input=modelrepo.TensorSpec(INPUT_NAME, "FP32", (spec.channels, size, size)),
            output=modelrepo.TensorSpec(OUTPUT_NAME, "FP32", (len(data.labels),)),
            labels=data.labels,
            preprocessing=pre,
        )
        metadata: dict[str, Any] = {
            "model": name,
            "description": spec.description,
            "precision": "fp32",
            "source": spec.source,
            "weights": plan.describe(),
            "pretrained": plan.pretrained,
            "init": plan.init(),
            "parameters": sum(p.numel() for p in model.parameters()),
            "dataset": {"name": data.name, "splits": data.sizes(), "labels": list(data.labels)},
            "training": {
                **asdict(config),
                "epochs_run": result.epochs_run,
                "best_epoch": result.best_epoch,
                "stopped_early": result.stopped_early,
                "history": {
                    "train_loss": result.train_loss,
                    "train_accuracy": result.train_accuracy,
                    "val_loss": result.val_loss,
                    "val_accuracy": result.val_accuracy,
                },
                "seconds": round(train_seconds, 2),
            },
            "seed": options.seed,
            "val_accuracy": result.best_val_accuracy,
            "test_accuracy": {"torch": torch_test_accuracy, "onnx": onnx_test_accuracy},
            "parity": report.to_dict(),
            "onnx": {"opset": OPSET, "exporter": exporter, "traced_batch_size": TRACE_BATCH},
            "libraries": _library_versions(),
            "exported_at": started_at.isoformat(timespec="seconds"),
        }
        quantized: _Quantized | None = None
        if options.quantize is not None:
            # Before anything is published: a failed gate leaves the repository as it was.
            quantized = _quantize(
                name, options, data, onnx_path, onnx_logits, work / options.quantize, work / TRAINING_CURVES
            )
        files = {"fp32": onnx_path}
        if quantized is not None:
            files[quantized.report.precision] = quantized.path
        metadata["speed"] = _speed(files, data.test.x)
        speeds = metadata["speed"]["images_per_second"]
        if quantized is not None and speeds[quantized.report.precision] < speeds["fp32"]:
            # Published all the same (it passed its gate, and the user asked for it), but said.
            logger.warning(
                "%s: %s runs slower than FP32 on this CPU (%.0f vs %.0f images/s at batch %d): "
                "serve %s",
                name, quantized.name, speeds[quantized.report.precision], speeds["fp32"],
                metadata["speed"]["batch_size"], name,
            )  # fmt: skip
        metadata["export_seconds"] = round(time.monotonic() - started, 2)
        version = modelrepo.publish(
            repository,
            model_config,
            onnx_path,
            metadata,
            extra_files=[work / TRAINING_CURVES, work / CONFUSION_MATRIX],
        )
        logger.info(
            "%s: published version %d at %s (test accuracy torch %.4f, onnx %.4f; %s; %.0f s)",
            name, version.version, version.path, torch_test_accuracy, onnx_test_accuracy,
            report.summary(), metadata["export_seconds"],
        )  # fmt: skip
        versions = [version]
        if quantized is not None:
            versions.append(_publish_quantized(repository, quantized, model_config, metadata, version))
    return versions


@dataclass(frozen=True)
class _Quantized:
    """A quantized model that passed its gate, in the export's work directory."""

    name: str
    path: Path
    report: QuantizationReport
    extra_files: tuple[Path, ...]


def _quantize(
    name: str,
    options: ExportOptions,
    data: Dataset,
    fp32_path: Path,
    fp32_logits: np.ndarray,
    work: Path,
    training_curves: Path,
) -> _Quantized:
    """Quantize the FP32 ONNX model, gate it against the FP32 model, and plot its confusion matrix."""
    precision = options.quantize or "int8"
    quantized_name = name + QUANTIZED_SUFFIX[precision]
    work.mkdir()
    path = work / modelrepo.MODEL_FILENAME
    calibration = data.train.x[: options.calibration_samples]
    logger.info("%s: quantizing to %s, calibrated on %d training images", name, precision, len(calibration))
    method = quantize_int8(fp32_path, path, calibration)
    logits = ort_predict(ort_session(path), data.test.x)
    report = require_gate(compare(precision, method, fp32_logits, logits, data.test.y, len(calibration)))
    plot_confusion_matrix(
        confusion_matrix(logits.argmax(1), data.test.y, len(data.labels)),
        data.labels,
        work / CONFUSION_MATRIX,
        f"{quantized_name}: ONNX on {len(data.test)} test images "
        f"(accuracy {report.quantized_test_accuracy:.4f})",
    )
    # The same training run produced both models, so they share its curves.
    shutil.copyfile(training_curves, work / TRAINING_CURVES)
    return _Quantized(quantized_name, path, report, (work / TRAINING_CURVES, work / CONFUSION_MATRIX))


def _publish_quantized(
    repository: Path,
    quantized: _Quantized,
    fp32_config: modelrepo.ModelConfig,
    fp32_metadata: dict[str, Any],
    fp32_version: modelrepo.ModelVersion,
) -> modelrepo.ModelVersion:
    report = quantized.report
    # The FP32 model's record, minus its parity with PyTorch (the FP32 graph's evidence, not
    # this one's): the gate against the FP32 model is this model's evidence.
    metadata = {key: value for key, value in fp32_metadata.items() if key != "parity"}
    metadata.update(
        model=quantized.name,
        description=f"{fp32_metadata['description']}; {report.precision.upper()} quantized",
        precision=report.precision,
        test_accuracy={"onnx": report.quantized_test_accuracy},
        quantization={
            **report.to_dict(),
            "reference": {"model": fp32_metadata["model"], "version": fp32_version.version},
        },
    )
    version = modelrepo.publish(
        repository,
        dataclasses.replace(fp32_config, name=quantized.name),
        quantized.path,
        metadata,
        extra_files=list(quantized.extra_files),
    )
    logger.info(
        "%s: published version %d at %s (%s)", quantized.name, version.version, version.path, report.summary()
    )
    return version


#: What the export's speed figure measures: one batch size, a few interleaved repeats.
SPEED_BATCH = 32
SPEED_REPEATS = 3
SPEED_SECONDS = 0.5


def _speed(models: dict[str, Path], images: np.ndarray) -> dict[str, Any]:
    """Images per second of each model file on this machine's CPU, measured interleaved.

    Each repeat runs every model for ``SPEED_SECONDS`` at batch ``SPEED_BATCH`` (test images,
    repeated to fill the batch), the models taking turns; the figure is the median repeat.
    """
    sessions = {precision: ort_session(path) for precision, path in models.items()}
    batch = np.ascontiguousarray(np.resize(images, (SPEED_BATCH, *images.shape[1:])), dtype=np.float32)
    runs: dict[str, list[float]] = {precision: [] for precision in sessions}
    for session in sessions.values():
        ort_predict(session, batch, batch_size=SPEED_BATCH)  # warm-up
    for _ in range(SPEED_REPEATS):
        for precision, session in sessions.items():
            count, began = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - began) < SPEED_SECONDS:
                ort_predict(session, batch, batch_size=SPEED_BATCH)
                count += SPEED_BATCH
            runs[precision].append(count / elapsed)
    return {
        "batch_size": SPEED_BATCH,
        "intra_op_threads": "ONNX Runtime default (all cores)",
        "cores": os.cpu_count(),
        "images_per_second": {precision: round(float(np.median(r)), 1) for precision, r in runs.items()},
        "repeats": {precision: [round(x, 1) for x in r] for precision, r in runs.items()},
    }
