"""torchvision architectures with 10-class heads, fine-tuned from ImageNet weights when available.

The builders create the architecture with a fresh ``num_classes`` head and random
weights; :func:`load_pretrained` then fills every layer but the head from an ImageNet
checkpoint, taken from ``--weights-file`` or the torch hub cache
(``$TORCH_HOME/hub/checkpoints/<file>``, where torchvision's weights API keeps it).
Nothing is downloaded: these machines have no internet.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

from export.models._api import PretrainedWeights

logger = logging.getLogger(__name__)

# torchvision's DenseNet checkpoints predate its module names ("norm.1" for "norm1").
_LEGACY_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights were asked for but no checkpoint file exists where the loader looks."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:
        return str(self.args[0])


def _require_rgb(name: str, in_channels: int) -> None:
    if in_channels != 3:
        raise ValueError(f"{name} takes 3 input channels (ImageNet RGB), got in_channels={in_channels}")


def resnet18(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 64) -> nn.Module:
    """torchvision ResNet-18 with a ``num_classes`` head."""
    _require_rgb("resnet18", in_channels)
    return tvm.resnet18(weights=None, num_classes=num_classes)


def resnet50(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """torchvision ResNet-50 with a ``num_classes`` head."""
    _require_rgb("resnet50", in_channels)
    return tvm.resnet50(weights=None, num_classes=num_classes)


def vgg16(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """torchvision VGG-16 with a ``num_classes`` head."""
    _require_rgb("vgg16", in_channels)
    return tvm.vgg16(weights=None, num_classes=num_classes)


def googlenet(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 64) -> nn.Module:
    """torchvision GoogLeNet (Inception v1) with a ``num_classes`` head and no auxiliary classifiers."""
    _require_rgb("googlenet", in_channels)
    return tvm.googlenet(weights=None, num_classes=num_classes, aux_logits=False, init_weights=True)


def densenet121(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """torchvision DenseNet-121 with a ``num_classes`` head."""
    _require_rgb("densenet121", in_channels)
    return tvm.densenet121(weights=None, num_classes=num_classes)


def cache_path(weights: PretrainedWeights) -> Path:
    """Where torchvision's weights API keeps ``weights``: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / weights.filename


def find_weights(weights: PretrainedWeights, weights_file: Path | None = None) -> Path:
    """The checkpoint to load: ``weights_file`` if given, else the torch hub cache entry.

    Raises :class:`WeightsNotFoundError` naming the expected location if the file is absent.
    """
    path = Path(weights_file) if weights_file is not None else cache_path(weights)
    if not path.is_file():
        hint = "" if weights_file is not None else f" (torchvision {weights.enum}; set TORCH_HOME to move it)"
        raise WeightsNotFoundError(
            f"pretrained weights not found at {path}{hint}; copy the ImageNet checkpoint "
            f"{weights.filename} there or pass --weights-file PATH",
            path,
        )
    return path


def load_pretrained(model: nn.Module, weights: PretrainedWeights, path: Path) -> None:
    """Fill every layer of ``model`` except its classification head from the checkpoint at ``path``.

    Raises ValueError if the checkpoint does not match the architecture.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}; expected a state dict")
    backbone: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = _LEGACY_DENSENET_KEY.match(key)
        key = match.group(1) + match.group(2) if match else key
        if key.startswith(weights.head_prefixes + weights.ignored_prefixes):
            continue
        backbone[key] = value
    expected = {k for k in model.state_dict() if not k.startswith(weights.head_prefixes)}
    # Checkpoints older than batch norm's step counter lack it; the counter is unused in eval.
    missing = sorted(k for k in expected - backbone.keys() if not k.endswith("num_batches_tracked"))
    unexpected = sorted(backbone.keys() - expected)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not match the architecture: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    try:
        model.load_state_dict(backbone, strict=False)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path} does not match the architecture: {exc}") from None
    if isinstance(model, tvm.GoogLeNet):
        # The ImageNet GoogLeNet weights were trained on inputs normalised as (x - 0.5) / 0.5;
        # torchvision turns this on for them, and so do we.
        model.transform_input = True
    logger.info("loaded pretrained weights from %s (%d tensors)", path, len(backbone))
