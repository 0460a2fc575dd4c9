"""The model zoo: classic CNNs built from scratch and torchvision architectures with 10-class heads.

``get_model(name, **config)`` builds a registered model and ``list_models()`` names them;
``get_spec(name)`` returns the entry with the model's source, default input and
preprocessing, and training defaults.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from export.models._api import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelSpec,
    PretrainedWeights,
    TrainingDefaults,
    UnknownModelError,
    get_model,
    get_spec,
    list_models,
    register,
)
from export.models.classic import alexnet, lenet, nin, smallcnn, vgg11
from export.models.densenet import densenet_scratch
from export.models.googlenet import googlenet_scratch
from export.models.pretrained import (
    WeightsNotFoundError,
    cache_path,
    densenet121,
    find_weights,
    googlenet,
    load_pretrained,
    resnet18,
    resnet50,
    vgg16,
)
from export.models.resnet import resnet18_scratch

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ModelSpec",
    "PretrainedWeights",
    "TrainingDefaults",
    "UnknownModelError",
    "WeightsNotFoundError",
    "cache_path",
    "find_weights",
    "get_model",
    "get_spec",
    "list_models",
    "load_pretrained",
    "register",
]


def _seed(
    name: str,
    builder: Callable[..., nn.Module],
    description: str,
    size: int,
    min_size: int,
    training: TrainingDefaults,
) -> ModelSpec:
    # Grayscale digits scaled to [0, 1] and centred; the scratch models see one channel.
    return register(
        ModelSpec(
            name, builder, "seed architecture", description, size, 1, (0.5,), (0.5,), min_size, training
        )
    )


def _torchvision(
    name: str,
    builder: Callable[..., nn.Module],
    size: int,
    training: TrainingDefaults,
    weights: PretrainedWeights,
) -> ModelSpec:
    # ImageNet weights expect RGB normalised with ImageNet's statistics.
    return register(
        ModelSpec(
            name, builder, "torchvision architecture", f"torchvision {name}", size, 3,
            IMAGENET_MEAN, IMAGENET_STD, 32, training, weights,
        )
    )  # fmt: skip


# Training defaults: measured on the digits on a 2-core CPU (see docs/models.md), each chosen to
# finish in a few minutes while clearing 95% test accuracy (97% for resnet18).
T = TrainingDefaults
_seed(
    "lenet",
    lenet,
    "LeNet-5 (sigmoid, average pooling)",
    28,
    12,
    T(epochs=60, lr=5e-3, batch_size=32, patience=15),
)
_seed("alexnet", alexnet, "AlexNet (He initialisation)", 68, 65, T(epochs=15, lr=1e-4, batch_size=32))
_seed(
    "vgg11",
    vgg11,
    "VGG-11 from VGG blocks (He initialisation)",
    32,
    32,
    # A plain deep stack like vgg16: two-pixel shifts, and epochs to spare (15 gave 95.6%, still rising).
    T(epochs=20, lr=1e-4, batch_size=32, shift_fraction=0.0625),
)
_seed("nin", nin, "Network in Network (batch norm)", 96, 67, T(epochs=15, lr=1e-3))
_seed(
    "googlenet_scratch",
    googlenet_scratch,
    "GoogLeNet from Inception blocks (batch norm)",
    64,
    16,
    T(epochs=10),
)
_seed("resnet18_scratch", resnet18_scratch, "ResNet-18 from residual blocks", 32, 16, T(epochs=10))
_seed("densenet_scratch", densenet_scratch, "DenseNet from dense and transition blocks", 32, 32, T(epochs=10))
_seed("smallcnn", smallcnn, "Small two-convolution CNN", 28, 4, T(epochs=20))
_torchvision(
    "resnet18",
    resnet18,
    64,
    T(epochs=15),
    PretrainedWeights("ResNet18_Weights.IMAGENET1K_V1", "resnet18-f37072fd.pth", ("fc.",)),
)
_torchvision(
    "vgg16",
    vgg16,
    32,
    # 134M parameters (the 25088-wide head): about 30 s an epoch here, so few epochs. Shifts of
    # two pixels, not four: with four, two runs (batch 32 at lr 1e-4, batch 64 at lr 2e-4) had
    # 55% validation accuracy after 3 epochs and 49% after 5; with two, 70% and 93%.
    T(epochs=12, lr=1e-4, batch_size=64, shift_fraction=0.0625),
    PretrainedWeights("VGG16_Weights.IMAGENET1K_V1", "vgg16-397923af.pth", ("classifier.6.",)),
)
_torchvision(
    "googlenet",
    googlenet,
    64,
    T(epochs=10),
    PretrainedWeights(
        "GoogLeNet_Weights.IMAGENET1K_V1", "googlenet-1378be20.pth", ("fc.",), ("aux1.", "aux2.")
    ),
)
_torchvision(
    "resnet50",
    resnet50,
    32,
    T(epochs=12),
    PretrainedWeights("ResNet50_Weights.IMAGENET1K_V1", "resnet50-0676ba61.pth", ("fc.",)),
)
_torchvision(
    "densenet121",
    densenet121,
    32,
    T(epochs=10),
    PretrainedWeights("DenseNet121_Weights.IMAGENET1K_V1", "densenet121-a639ec97.pth", ("classifier.",)),
)
