"""What one run measures and for how long: the full run, or ``--quick`` for a smoke test."""

from __future__ import annotations

from dataclasses import dataclass

# What `python -m export --defaults` publishes: the models of the memory target (light: no torch).
from export.__main__ import DEFAULT_MODELS

__all__ = ["DEFAULT_MODELS", "EXPORTED_BY", "EXPORT_ARGS", "MODELS", "Plan"]

#: The benchmarked models: LeNet (1x28x28), ResNet-18 (3x224x224) and its INT8 variant.
MODELS = ("lenet", "resnet18", "resnet18_int8")
#: Which ``python -m export NAME`` publishes each model, and with which flags. LeNet's speed does
#: not depend on its accuracy, so it trains briefly. ResNet-18's run with ``--quantize int8``
#: publishes both ``resnet18`` and ``resnet18_int8`` from the same trained weights, and only if
#: the INT8 model passes its accuracy gate, which a barely trained model does not (measured:
#: three epochs on 600 images at 224x224, 81% test accuracy, disagreed with its INT8 model on
#: 1.1% of the test images; six epochs on 1,000 images, 99.4%, on none).
EXPORTED_BY = {"lenet": "lenet", "resnet18": "resnet18", "resnet18_int8": "resnet18"}
EXPORT_ARGS = {
    "lenet": ["--epochs", "1", "--max-train-samples", "200"],
    "resnet18": ["--image-size", "224", "--quantize", "int8", "--epochs", "6", "--max-train-samples", "1000"],
}
#: Repeats of every measured figure unless ``--repeats`` says otherwise; the median is reported.
FULL_REPEATS = 3
QUICK_REPEATS = 1


@dataclass(frozen=True)
class Plan:
    """How long and how wide the run is; ``--quick`` shrinks everything."""

    quick: bool
    repeats: int
    concurrency: tuple[int, ...]
    #: Measured seconds per concurrency level, per model.
    duration: dict[str, float]
    #: Unmeasured seconds before each level.
    warmup: float
    ceiling_batches: tuple[int, ...]
    #: Measured seconds per batch size and repeat of the in-process ceiling.
    ceiling_seconds: float
    perf_analyzer_interval_ms: int

    @classmethod
    def make(cls, quick: bool, repeats: int | None = None) -> Plan:
        """The full plan or the quick one; ``repeats`` overrides its default number of repeats."""
        if repeats is not None and repeats < 1:
            raise ValueError(f"--repeats is {repeats}; expected >= 1")
        if quick:
            return cls(
                quick=True,
                repeats=repeats or QUICK_REPEATS,
                concurrency=(1, 8, 16, 64),
                duration={"lenet": 1.0, "resnet18": 2.0, "resnet18_int8": 2.0},
                warmup=0.3,
                ceiling_batches=(1, 8, 64),
                ceiling_seconds=0.3,
                perf_analyzer_interval_ms=1000,
            )
        return cls(
            quick=False,
            repeats=repeats or FULL_REPEATS,
            concurrency=(1, 4, 8, 16, 64),
            duration={"lenet": 5.0, "resnet18": 8.0, "resnet18_int8": 8.0},
            warmup=1.5,
            ceiling_batches=(1, 2, 4, 8, 16, 32, 64),
            ceiling_seconds=2.0,
            perf_analyzer_interval_ms=2000,
        )
