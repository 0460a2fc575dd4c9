"""``python -m export``: train or fine-tune, export to ONNX, prove parity, publish.

Examples::

    python -m export --list
    python -m export resnet18
    python -m export resnet18 --quantize int8      # also publishes resnet18_int8
    python -m export lenet nin --epochs 5 --repository ./model_repository
    python -m export --all --skip-existing
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# Light (no torch): the flags' help text quotes the gate.
from export.quantize import (
    DEFAULT_CALIBRATION_SAMPLES,
    MAX_ACCURACY_DROP,
    MIN_TOP1_AGREEMENT,
    QUANTIZED_SUFFIX,
)

DEFAULT_MODELS = ("lenet", "resnet18")


def get_args_parser() -> argparse.ArgumentParser:
    """The command-line parser; ``main`` turns its namespace into :class:`ExportOptions`."""
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Train or fine-tune CNNs, export them to ONNX, check parity with ONNX Runtime, "
        "and publish them to a model repository.",
    )
    parser.add_argument("models", nargs="*", metavar="NAME", help="models to export (see --list)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="export every registered model")
    which.add_argument("--defaults", action="store_true", help=f"export {', '.join(DEFAULT_MODELS)}")
    which.add_argument("--list", action="store_true", help="list the models and exit")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"), help="model repository")
    parser.add_argument(
        "--skip-existing", action="store_true", help="skip models that already have a version"
    )
    parser.add_argument(
        "--dataset", default="digits", choices=["digits", "mnist", "fashion-mnist", "cifar10", "folder"]
    )
    parser.add_argument(
        "--data-dir", type=Path, help="directory of mnist/fashion-mnist/cifar10 files or an image folder"
    )
    parser.add_argument("--epochs", type=int, help="maximum epochs (default: per model)")
    parser.add_argument("--lr", type=float, help="learning rate (default: per model)")
    parser.add_argument("--batch-size", type=int, help="training batch size (default: per model)")
    parser.add_argument("--max-train-samples", type=int, help="cap on training samples, for quick runs")
    parser.add_argument("--image-size", type=int, help="square input size (default: per model)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="training device")
    parser.add_argument(
        "--init",
        default="auto",
        choices=["auto", "pretrained", "random"],
        help="torchvision models: auto uses ImageNet weights if present, else random with a warning "
        "(--list shows which, on this machine)",
    )
    parser.add_argument(
        "--weights-file", type=Path, help="ImageNet checkpoint (state dict) to fine-tune from"
    )
    parser.add_argument(
        "--quantize",
        choices=sorted(QUANTIZED_SUFFIX),
        help="also publish NAME_int8, statically quantized and calibrated on training images; neither "
        f"model is published unless its test accuracy drops by at most {MAX_ACCURACY_DROP * 100:.1f} "
        f"percentage points and it agrees with the FP32 model on at least {MIN_TOP1_AGREEMENT * 100:g}%% "
        "of the test images",
    )
    parser.add_argument(
        "--calibration-samples",
        type=int,
        default=DEFAULT_CALIBRATION_SAMPLES,
        help=f"training images used to calibrate --quantize (default: {DEFAULT_CALIBRATION_SAMPLES})",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def _positive(parser: argparse.ArgumentParser, flag: str, value: float | None) -> None:
    if value is not None and value <= 0:
        parser.error(f"{flag} is {value}; expected a positive number")


def main(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    """Run the export for the parsed ``args``; returns the process exit status."""
    parser = parser or get_args_parser()
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The ONNX exporter's own passes log every step at INFO; keep our log readable.
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    # Heavy imports after parsing, so --help and argument errors stay instant.
    import torch

    from export.models import get_spec, list_models
    from export.pipeline import ExportOptions, export_model, plan_weights

    if args.list:
        if args.weights_file is not None:
            parser.error("--weights-file applies to the one model being exported, not to --list")
        for name in list_models():
            spec = get_spec(name)
            with torch.device("meta"):  # shapes only: no memory, no initialisation cost
                params = sum(p.numel() for p in spec.build().parameters())
            # What an export with this --init would start from on this machine, not what it could.
            print(
                f"{name:<18} {spec.source:<24} {params:>12,d} params  "
                f"{spec.channels}x{spec.image_size}x{spec.image_size:<4} "
                f"weights: {plan_weights(spec, args.init).describe(where=True)}"
            )
        return 0
    if args.all:
        names = list_models()
    elif args.defaults:
        names = list(DEFAULT_MODELS)
    else:
        names = list(args.models)
    if not names:
        parser.error("name at least one model, or use --all, --defaults or --list")
    unknown = [n for n in names if n not in list_models()]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; expected one of: {', '.join(list_models())}")
    for flag, value in (
        ("--epochs", args.epochs),
        ("--lr", args.lr),
        ("--batch-size", args.batch_size),
        ("--max-train-samples", args.max_train_samples),
        ("--image-size", args.image_size),
        ("--calibration-samples", args.calibration_samples),
    ):
        _positive(parser, flag, value)
    if args.weights_file is not None and len(names) > 1:
        parser.error("--weights-file applies to one model; name exactly one")
    options = ExportOptions(
        repository=args.repository,
        dataset=args.dataset,
        data_dir=args.data_dir,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        max_train_samples=args.max_train_samples,
        image_size=args.image_size,
        seed=args.seed,
        device=args.device,
        init=args.init,
        weights_file=args.weights_file,
        skip_existing=args.skip_existing,
        progress=not args.no_progress,
        quantize=args.quantize,
        calibration_samples=args.calibration_samples,
    )
    logger = logging.getLogger("export")
    failed: list[str] = []
    for name in dict.fromkeys(names):
        try:
            versions = export_model(name, options)
        except Exception as exc:
            logger.error("%s: export failed: %s", name, exc, exc_info=logger.isEnabledFor(logging.DEBUG))
            failed.append(name)
            continue
        for version in versions:
            print(f"{version.name}: published version {version.version} at {version.path}")
    if failed:
        logger.error("failed: %s", ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    _parser = get_args_parser()
    sys.exit(main(_parser.parse_args(), _parser))
