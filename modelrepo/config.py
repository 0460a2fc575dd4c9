"""Typed form of a model version's ``config.json``.

Example::

    {
      "name": "lenet",
      "platform": "onnxruntime_onnx",
      "input": {"name": "input", "datatype": "FP32", "shape": [1, 28, 28]},
      "output": {"name": "logits", "datatype": "FP32", "shape": [10]},
      "labels": ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
      "preprocessing": {"height": 28, "width": 28, "channels": 1,
                        "mean": [0.5], "std": [0.5]},
      "batching": {"max_batch_size": 64, "max_queue_delay_us": 500,
                   "max_queue_size": 1024, "instances": 1}
    }

Shapes leave out the batch dimension; the model takes ``[N, *shape]``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from modelrepo.datatypes import MODEL_DATATYPES


class ConfigError(ValueError):
    """A ``config.json`` that is missing a field or holds a value of the wrong kind."""


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor: KServe v2 datatype and shape without the batch dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.datatype not in MODEL_DATATYPES:
            raise ConfigError(
                f"tensor {self.name!r} has datatype {self.datatype!r}; "
                f"expected one of {sorted(MODEL_DATATYPES)}"
            )


@dataclass(frozen=True)
class Preprocessing:
    """How an encoded image becomes the model's input tensor.

    The image is converted to ``channels`` (1: grayscale, 3: RGB), resized to
    ``height`` x ``width``, scaled to [0, 1], then normalised per channel with
    ``mean`` and ``std``; the result is laid out as CHW float32.
    """

    height: int
    width: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ConfigError(f"preprocessing channels is {self.channels}; expected 1 or 3")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError(
                f"preprocessing mean {list(self.mean)} and std {list(self.std)} "
                f"must have {self.channels} values, one per channel"
            )
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"preprocessing std {list(self.std)} must be positive")


@dataclass(frozen=True)
class BatchingConfig:
    """Default dynamic-batching settings; the server's flags may override them."""

    max_batch_size: int = 64
    max_queue_delay_us: int = 500
    max_queue_size: int = 1024
    instances: int = 1

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue_size", "instances"):
            if getattr(self, name) < 1:
                raise ConfigError(f"batching {name} is {getattr(self, name)}; expected >= 1")
        if self.max_queue_delay_us < 0:
            raise ConfigError(f"batching max_queue_delay_us is {self.max_queue_delay_us}; expected >= 0")


@dataclass(frozen=True)
class ModelConfig:
    """Everything a server needs to call one model version."""

    name: str
    input: TensorSpec
    output: TensorSpec
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    platform: str = "onnxruntime_onnx"

    def __post_init__(self) -> None:
        if self.output.shape != (len(self.labels),):
            raise ConfigError(
                f"output {self.output.name!r} has shape {list(self.output.shape)}; "
                f"expected [{len(self.labels)}], one logit per label"
            )
        expected = (self.preprocessing.channels, self.preprocessing.height, self.preprocessing.width)
        if self.input.shape != expected:
            raise ConfigError(
                f"input {self.input.name!r} has shape {list(self.input.shape)}; "
                f"preprocessing produces {list(expected)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        try:
            return cls(
                name=str(data["name"]),
                platform=str(data.get("platform", "onnxruntime_onnx")),
                input=_tensor(data["input"]),
                output=_tensor(data["output"]),
                labels=tuple(str(label) for label in data["labels"]),
                preprocessing=Preprocessing(
                    height=int(data["preprocessing"]["height"]),
                    width=int(data["preprocessing"]["width"]),
                    channels=int(data["preprocessing"]["channels"]),
                    mean=tuple(float(v) for v in data["preprocessing"]["mean"]),
                    std=tuple(float(v) for v in data["preprocessing"]["std"]),
                ),
                batching=BatchingConfig(**{k: int(v) for k, v in data.get("batching", {}).items()}),
            )
        except KeyError as exc:
            raise ConfigError(f"config is missing the field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"config has a malformed value: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        return cls.from_dict(data)


def _tensor(data: dict[str, Any]) -> TensorSpec:
    return TensorSpec(
        name=str(data["name"]),
        datatype=str(data["datatype"]),
        shape=tuple(int(d) for d in data["shape"]),
    )
