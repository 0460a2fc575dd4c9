"""Everything one run found and measured, as one object: what the verdicts judge and the documents show."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from gpucheck.plan import Plan
from gpucheck.preflight import Preflight


@dataclass
class ModelResult:
    """Everything measured for one published model."""

    name: str
    version: int
    size_bytes: int
    made_by: str
    #: The FP16 variant's agreement with FP32 (:func:`~gpucheck.models.compare_logits`); None for FP32.
    agreement: dict[str, Any] | None
    placement: dict[str, Any]
    plain: dict[str, Any]
    iobinding: dict[str, Any]
    served_device: dict[str, Any] = field(default_factory=dict)
    levels: list[dict[str, Any]] = field(default_factory=list)
    server_command: str = ""
    bench_command: str = ""


@dataclass
class Results:
    """The run's provenance and every measurement; the JSON file is this object written out."""

    command: str
    started: str
    #: :func:`benchmarking.provenance.source_state`: commit, dirty, changed paths.
    source: dict[str, Any]
    plan: Plan
    preflight: Preflight
    #: :func:`benchmarking.provenance.machine_info`.
    machine: dict[str, Any]
    #: The variables the server runs with (:func:`~gpucheck.preflight.library_environment`).
    library_env: dict[str, str]
    export_command: str = ""
    models: list[ModelResult] = field(default_factory=list)
    tensorrt: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["plan"]["device"] = str(self.plan.device)
        return json.dumps(data, indent=2, default=str) + "\n"
