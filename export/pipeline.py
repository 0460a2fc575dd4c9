"""One model's export: build, (pre)train, export to ONNX, prove parity, publish.

Nothing is published unless every step succeeds; the repository only ever gains a
complete, parity-checked version.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import logging
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

import modelrepo
from export.data import load_dataset
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


def export_model(name: str, options: ExportOptions) -> modelrepo.ModelVersion | None:
    """Export model ``name`` and publish it; returns the new version, or None if skipped.

    Raises :class:`export.parity.ParityError` (and publishes nothing) if ONNX Runtime
    does not reproduce PyTorch's outputs.
    """
    spec = get_spec(name)
    repository = Path(options.repository)
    existing = modelrepo.latest_version(repository, name)
    if options.skip_existing and existing is not None:
        logger.info("%s: version %d already in %s; skipping", name, existing, repository)
        return None
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
    return version
