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
from export.models import ModelSpec, WeightsNotFoundError, find_weights, get_spec, load_pretrained
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


def _initialise(model: torch.nn.Module, spec: ModelSpec, options: ExportOptions) -> str:
    """Load pretrained weights as ``options.init`` asks; return how the model was initialised."""
    if spec.weights is None or options.init == "random":
        if options.init == "pretrained":
            raise ValueError(f"model {spec.name!r} is a {spec.source}; it has no pretrained weights")
        return "random"
    try:
        path = find_weights(spec.weights, options.weights_file)
    except WeightsNotFoundError as exc:
        if options.init == "pretrained":
            raise
        logger.warning("%s: %s; training from random initialisation instead", spec.name, exc)
        return f"random (pretrained weights not found at {exc.path})"
    load_pretrained(model, spec.weights, path)
    return f"pretrained ({spec.weights.enum} from {path})"


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
    init = _initialise(model, spec, options)
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
        "%s: training %s for up to %d epochs at %dx%d (%s)", name, init, config.epochs, size, size, config
    )
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
            "init": init,
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
