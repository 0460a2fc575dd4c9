"""Plain result types the clients return instead of protobuf messages."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClassScore:
    """One class of a classification: its index, label and softmax probability."""

    index: int
    label: str
    score: float


@dataclass(frozen=True)
class Classification:
    """The top-k classes for one image, best first, and the model version that answered."""

    classes: tuple[ClassScore, ...]
    model: str = ""
    version: str = ""

    @property
    def label(self) -> str:
        """The best class's label."""
        return self.classes[0].label

    @property
    def score(self) -> float:
        """The best class's probability."""
        return self.classes[0].score


@dataclass(frozen=True)
class TensorMetadata:
    """A model input or output as the server describes it; -1 is a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelMetadata:
    """The answer to ModelMetadata: what a model takes and returns."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]


@dataclass(frozen=True)
class ModelIndexEntry:
    """One row of the repository index."""

    name: str
    version: str
    state: str
    reason: str
