"""config.json round-trips and rejects malformed configurations with clear messages."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelrepo import BatchingConfig, ConfigError, ModelConfig, Preprocessing, TensorSpec


def make_config(**overrides: Any) -> ModelConfig:
    fields: dict[str, Any] = {
        "name": "lenet",
        "input": TensorSpec("input", "FP32", (1, 28, 28)),
        "output": TensorSpec("logits", "FP32", (3,)),
        "labels": ("a", "b", "c"),
        "preprocessing": Preprocessing(28, 28, 1, (0.5,), (0.5,)),
    }
    return ModelConfig(**{**fields, **overrides})


def test_json_round_trip() -> None:
    config = make_config(batching=BatchingConfig(max_batch_size=8, max_queue_delay_us=100))
    text = config.to_json()
    assert json.loads(text)["input"]["shape"] == [1, 28, 28]
    assert ModelConfig.from_json(text) == config


def test_defaults_fill_missing_optional_fields() -> None:
    data = make_config().to_dict()
    del data["batching"], data["platform"]
    parsed = ModelConfig.from_dict(data)
    assert parsed.batching == BatchingConfig() and parsed.platform == "onnxruntime_onnx"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("labels"), "missing the field 'labels'"),
        (lambda d: d["input"].update(datatype="FLOAT"), "datatype 'FLOAT'"),
        (lambda d: d["output"].update(shape=[4]), r"shape \[4\]; expected \[3\]"),
        (lambda d: d["input"].update(shape=[3, 28, 28]), r"preprocessing produces \[1, 28, 28\]"),
        (lambda d: d["preprocessing"].update(channels=2), "channels is 2"),
        (lambda d: d["preprocessing"].update(std=[0.0]), "must be positive"),
        (lambda d: d["preprocessing"].update(mean=[0.5, 0.5]), "one per channel"),
        (lambda d: d["batching"].update(max_batch_size=0), "max_batch_size is 0"),
        (lambda d: d["batching"].update(max_queue_delay_us=-1), "max_queue_delay_us is -1"),
        (lambda d: d["preprocessing"].update(height="tall"), "malformed value"),
    ],
)
def test_invalid_configs_name_the_problem(mutate: Any, message: str) -> None:
    data = make_config().to_dict()
    mutate(data)
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict(data)


def test_not_json_or_not_an_object() -> None:
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.from_json("{")
    with pytest.raises(ConfigError, match="JSON object, got list"):
        ModelConfig.from_json("[]")
