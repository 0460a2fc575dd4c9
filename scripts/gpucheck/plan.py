"""What one run measures and for how long: on the GPU, or the ``--device cpu`` dry run."""

from __future__ import annotations

from dataclasses import dataclass

from server.runtime import Device

#: The exported model, and the FP16 variant the run converts and publishes beside it.
MODEL = "resnet18"
FP16_MODEL = "resnet18_fp16"
#: Tiny training: the speed of a network does not depend on how well it was trained.
EXPORT_TRAINING = ("--epochs", "1", "--max-train-samples", "200")
MIN_IMAGE_SIZE = 32  # ResNet-18 halves the image five times
#: 0 measured (the verdicts are in the document), 1 a step failed (no document is written),
#: 2 bad flags (argparse's own status), 3 no usable GPU (the "not measured" document is written).
EXIT_MEASURED, EXIT_FAILED, EXIT_NO_GPU = 0, 1, 3


@dataclass(frozen=True)
class Plan:
    """Where and how long the run measures; built once in ``main``."""

    device: Device
    image_size: int
    concurrency: tuple[int, ...]
    #: Measured seconds per load level.
    duration: float
    #: Unmeasured seconds before each load level.
    warmup: float
    ceiling_batches: tuple[int, ...]
    #: Measured seconds per batch size of the in-process ceiling.
    ceiling_seconds: float
    #: Load-generator processes (``clients.bench --processes``).
    bench_processes: int

    @property
    def dry_run(self) -> bool:
        return self.device.kind == "cpu"

    @classmethod
    def make(cls, device: str, image_size: int, duration: float | None, warmup: float | None) -> Plan:
        """The plan for ``device`` ("cuda" or "cpu"); ``duration`` and ``warmup`` override its defaults."""
        if device == "cpu":
            return cls(
                Device("cpu", explicit=True), image_size, (1, 8, 32), duration or 1.0,
                0.3 if warmup is None else warmup, (1, 8, 32), 0.3, 1,
            )  # fmt: skip
        # A Python gRPC client needs several processes to keep a GPU server busy.
        return cls(
            Device("cuda", 0, explicit=True), image_size, (1, 8, 32), duration or 10.0,
            2.0 if warmup is None else warmup, (1, 8, 16, 32, 64), 2.0, 4,
        )  # fmt: skip
