"""Everything one run measured, as one object: what the targets judge and the document shows."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarking.plan import Plan
from benchmarking.served import ServerRun
from benchmarking.stats import LevelSummary, Spread


@dataclass
class Results:
    """The run's provenance and every measurement; the JSON file is this object written out."""

    command: str
    started: str
    #: :func:`~benchmarking.provenance.source_state`: commit, dirty, changed paths.
    source: dict[str, Any]
    machine: dict[str, Any]
    plan: Plan
    #: :func:`~benchmarking.models.model_facts` per model measured.
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    ceilings: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: list[ServerRun] = field(default_factory=list)
    #: :func:`~benchmarking.memory.measure_memory` results: "default" and "zoo".
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: :func:`~benchmarking.perf.measure_perf_analyzer`'s result (empty when not run).
    perf_analyzer: dict[str, Any] = field(default_factory=dict)
    #: What was not measured, and why, one sentence each.
    skipped: list[str] = field(default_factory=list)

    def run(self, key: str) -> ServerRun | None:
        """The served configuration named ``key`` (see :data:`~benchmarking.served.CONFIGS`)."""
        return next((r for r in self.runs if r.config.key == key), None)

    def level(self, key: str, concurrency: int) -> LevelSummary | None:
        run = self.run(key)
        return None if run is None else run.summary().get(concurrency)

    def figure(self, key: str, concurrency: int, name: str) -> Spread | None:
        """One figure of one configuration at one concurrency over its repeats, or None."""
        level = self.level(key, concurrency)
        return None if level is None else level.get(name)

    def to_json(self, targets: list[Any]) -> dict[str, Any]:
        return {
            "command": self.command,
            "started": self.started,
            "source": self.source,
            "machine": self.machine,
            "plan": asdict(self.plan),
            "models": self.models,
            "ceilings": self.ceilings,
            "runs": [run.to_json() for run in self.runs],
            "memory": self.memory,
            "perf_analyzer": self.perf_analyzer,
            "skipped": self.skipped,
            "targets": [asdict(t) for t in targets],
        }
