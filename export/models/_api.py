"""The model registry: one entry per exportable model, looked up by name.

Each entry pairs a keyword-only builder with what the export stage needs to know
about the model: where it comes from, its default input, its preprocessing and the
training defaults that reach the accuracy targets on the digits in a few minutes
on a 2-core CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

#: Where a model's architecture comes from. Where its weights come from is decided per export
#: (pretrained ImageNet weights are used only when present): see ``export.pipeline.plan_weights``.
Source = Literal["seed architecture", "torchvision architecture"]

#: Channel statistics of ImageNet, which the pretrained torchvision weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TrainingDefaults:
    """Per-model training settings used when the command line does not override them."""

    epochs: int = 10
    lr: float = 1e-3
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    batch_size: int = 64
    weight_decay: float = 0.0
    #: Cap on training samples; None uses the whole training split.
    max_train_samples: int | None = None
    #: Stop after this many epochs without a better validation accuracy.
    patience: int = 5
    #: Random translation of training images, as a fraction of their size; 1/8 is one pixel
    #: of the 8x8 digits.
    shift_fraction: float = 0.125


@dataclass(frozen=True)
class PretrainedWeights:
    """Where a torchvision model's ImageNet weights come from and how they map onto it."""

    #: torchvision weights enum member, e.g. ``"ResNet18_Weights.IMAGENET1K_V1"``.
    enum: str
    #: File name in the torch hub cache (``$TORCH_HOME/hub/checkpoints/``).
    filename: str
    #: State-dict key prefixes of the 1000-class head that the 10-class head replaces.
    head_prefixes: tuple[str, ...]
    #: Key prefixes present in the checkpoint but not in the fine-tuned model.
    ignored_prefixes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its builder and everything the export stage needs to know about it."""

    name: str
    builder: Callable[..., nn.Module]
    source: Source
    description: str
    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    #: Smallest square input the architecture accepts (its down-sampling must not reach zero).
    min_image_size: int
    training: TrainingDefaults = field(default_factory=TrainingDefaults)
    weights: PretrainedWeights | None = None

    def build(self, *, num_classes: int = 10, image_size: int | None = None) -> nn.Module:
        """Build the model for ``num_classes`` classes and square inputs of ``image_size``."""
        size = self.image_size if image_size is None else image_size
        if size < self.min_image_size:
            raise ValueError(
                f"image size {size} is too small for model {self.name!r}; expected >= {self.min_image_size}"
            )
        return self.builder(num_classes=num_classes, in_channels=self.channels, image_size=size)


_REGISTRY: dict[str, ModelSpec] = {}


class UnknownModelError(KeyError):
    """A model name that is not in the registry."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown model {self.name!r}; expected one of: {', '.join(list_models())}"


def register(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the registry; names must be unique."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_models() -> list[str]:
    """Names of every registered model, in registration order."""
    return list(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; raises :class:`UnknownModelError`."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(name) from None


def get_model(name: str, **config: int) -> nn.Module:
    """Build the registered model ``name``; ``config`` takes ``num_classes`` and ``image_size``."""
    return get_spec(name).build(**config)
