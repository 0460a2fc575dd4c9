"""The model repository: the contract between the export stage and the server.

Layout, like Triton's::

    <repository>/
        <model>/
            <version>/              numeric, 1, 2, ...; the highest is the latest
                model.onnx          self-contained (no external-data file)
                config.json         how to call the model: ModelConfig
                metadata.json       where it came from and the evidence: parity, accuracy
                *.png               training curves, confusion matrix (optional)

This package needs only the standard library, numpy and Pillow, so that both the
export side (torch) and the serving side (onnxruntime) can import it.
"""

from __future__ import annotations

from modelrepo.config import (
    BatchingConfig,
    ConfigError,
    ModelConfig,
    Preprocessing,
    TensorSpec,
)
from modelrepo.preprocess import preprocess_image, preprocess_images
from modelrepo.repository import (
    CONFIG_FILENAME,
    METADATA_FILENAME,
    MODEL_FILENAME,
    InvalidModelName,
    ModelVersion,
    file_sha256,
    latest_version,
    list_models,
    list_versions,
    model_dir,
    publish,
    read_metadata,
    read_version,
    validate_model_name,
)

__all__ = [
    "CONFIG_FILENAME",
    "METADATA_FILENAME",
    "MODEL_FILENAME",
    "BatchingConfig",
    "ConfigError",
    "InvalidModelName",
    "ModelConfig",
    "ModelVersion",
    "Preprocessing",
    "TensorSpec",
    "file_sha256",
    "latest_version",
    "list_models",
    "list_versions",
    "model_dir",
    "preprocess_image",
    "preprocess_images",
    "publish",
    "read_metadata",
    "read_version",
    "validate_model_name",
]
