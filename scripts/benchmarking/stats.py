"""Repeated figures: the median of the repeats, with their min and max beside it."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Spread:
    """One figure over its repeats: the median is the figure, low and high show how far it moved."""

    median: float
    low: float
    high: float
    n: int

    def to_json(self) -> dict[str, float | int]:
        return {"median": self.median, "min": self.low, "max": self.high, "n": self.n}

    def format(self, spec: str, scale: float = 1.0) -> str:
        """``median (min–max)`` in ``spec``, each value times ``scale``; the median alone for one repeat."""
        median = format(self.median * scale, spec)
        if self.n == 1:
            return median
        return f"{median} ({format(self.low * scale, spec)}–{format(self.high * scale, spec)})"


def spread(values: Iterable[float | None]) -> Spread | None:
    """The spread of the values that were measured (None ones left out); None if there are none."""
    measured = [float(v) for v in values if v is not None]
    if not measured:
        return None
    return Spread(statistics.median(measured), min(measured), max(measured), len(measured))


def _per_request_us(level: Mapping[str, Any]) -> float | None:
    cores, rate = level.get("server_cpu_cores"), level.get("throughput_rps")
    return None if not cores or not rate else float(cores) / float(rate) * 1e6


def _at(*keys: str) -> Callable[[Mapping[str, Any]], float | None]:
    def get(level: Mapping[str, Any]) -> float | None:
        value: Any = level
        for key in keys:
            value = value.get(key) if isinstance(value, Mapping) else None
        return None if value is None else float(value)

    return get


#: The figures summarized over repeats, each read from one ``clients.bench`` JSON level.
LEVEL_FIGURES: dict[str, Callable[[Mapping[str, Any]], float | None]] = {
    "requests_per_s": _at("throughput_rps"),
    "samples_per_s": _at("samples_per_s"),
    "p50_ms": _at("latency_ms", "p50"),
    "p90_ms": _at("latency_ms", "p90"),
    "p99_ms": _at("latency_ms", "p99"),
    "max_ms": _at("latency_ms", "max"),
    "mean_batch": _at("server_mean_batch"),
    "generator_cores": _at("client_cpu_cores"),
    "server_cores": _at("server_cpu_cores"),
    "machine_cores": _at("machine_cpu_cores"),
    # The server's CPU time per answered request, from its CPU in cores over its throughput.
    "server_us_per_request": _per_request_us,
}


@dataclass(frozen=True)
class LevelSummary:
    """One concurrency level of one configuration over its repeats."""

    concurrency: int
    repeats: int
    figures: dict[str, Spread | None]
    #: Failed requests by status, added up over the repeats.
    failed: dict[str, int]

    def get(self, name: str) -> Spread | None:
        if name not in LEVEL_FIGURES:
            raise KeyError(f"figure {name!r} is not one of {sorted(LEVEL_FIGURES)}")
        return self.figures[name]

    def to_json(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "repeats": self.repeats,
            "failed": self.failed,
            **{k: (None if v is None else v.to_json()) for k, v in self.figures.items()},
        }


def summarize_levels(repeats: Sequence[Sequence[Mapping[str, Any]]]) -> dict[int, LevelSummary]:
    """Per concurrency, every :data:`LEVEL_FIGURES` figure over the repeats (``clients.bench`` levels)."""
    by_level: dict[int, list[Mapping[str, Any]]] = {}
    for levels in repeats:
        for level in levels:
            by_level.setdefault(int(level["concurrency"]), []).append(level)
    summaries = {}
    for concurrency, levels in sorted(by_level.items()):
        failed: Counter[str] = Counter()
        for level in levels:
            failed.update(level.get("failed", {}))
        summaries[concurrency] = LevelSummary(
            concurrency=concurrency,
            repeats=len(levels),
            figures={name: spread(get(level) for level in levels) for name, get in LEVEL_FIGURES.items()},
            failed=dict(sorted(failed.items())),
        )
    return summaries
