"""The targets as data, and their verdicts computed from a :class:`~benchmarking.results.Results`.

Every verdict compares medians over the repeats of the default single-process
configuration (``python -m server`` as configured, one process); the other
configurations are shown beside it and never turn a verdict. Every explanation is
put together from figures of the same run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarking.ceiling import batch_figures, best_batch
from benchmarking.results import Results
from benchmarking.stats import LevelSummary, spread

MiB = 2**20

#: Issue 12, item 4: served ResNet-18 INT8 at 224x224 against the FP32 in-process ceiling.
INT8_MODEL = "resnet18_int8"
FP32_MODEL = "resnet18"
INT8_CONCURRENCY = 8
INT8_MIN_SPEEDUP = 2.5
#: LeNet unary, one process, against the bare handler in the same run: (concurrency, factor).
LENET_VS_BARE = ((16, 1.1), (64, 1.0))
#: At concurrency 64: throughput at least the concurrency-16 figure, p99 at most 2 x p50.
LENET_HIGH, LENET_MID = 64, 16
LENET_MAX_TAIL_RATIO = 2.0
LENET_MAX_P50_MS = 0.8
#: ModelStreamInfer against unary calls, LeNet at concurrency 64.
STREAM_CONCURRENCY = 64
STREAM_MIN_SPEEDUP = 2.0
MAX_RSS_BYTES = 300 * MiB
#: Issue 4's ResNet-18 targets, still meaningful for the FP32 model.
RESNET_CONCURRENCY = 8
RESNET_MIN_CEILING_SHARE = 0.9
RESNET_P50_SLACK_MS = 2.0


@dataclass(frozen=True)
class Target:
    """One target's verdict in this run."""

    name: str
    #: Which issue set the target.
    issue: str
    goal: str
    measured: str
    #: None: not measured in this run.
    met: bool | None
    #: Sentences computed from this run's figures: what the verdict rests on.
    why: str = ""


def _unmeasured(name: str, issue: str, goal: str, missing: str) -> Target:
    return Target(name, issue, goal, "-", None, f"Not measured in this run: {missing}.")


def cpu_note(level: LevelSummary | None, cores: int) -> str:
    """Where the CPU went during a level: the generator, the server, everything else."""
    if level is None:
        return ""
    generator, server, machine = (level.get(k) for k in ("generator_cores", "server_cores", "machine_cores"))
    parts = []
    if generator is not None:
        parts.append(f"the load generator used {generator.median:.2f} cores")
    if server is not None:
        parts.append(f"the server {server.median:.2f} cores")
    if not parts:
        return ""
    note = " and ".join(parts) + f" of the machine's {cores}"
    if machine is not None:
        other = max(0.0, machine.median - sum(s.median for s in (generator, server) if s is not None))
        note += f"; the whole machine was busy {machine.median:.2f} cores, {other:.2f} of them other work"
    return note[0].upper() + note[1:] + "."


def _per_request(results: Results, key: str, concurrency: int) -> str:
    us = results.figure(key, concurrency, "server_us_per_request")
    return "-" if us is None else f"{us.median:.0f} µs"


def gate_verdict(facts: dict[str, Any] | None) -> tuple[bool, str]:
    """Whether the INT8 model's accuracy gate, as its metadata.json records it, was met; and a sentence.

    The recorded figures are checked against the recorded limits as well, so a record whose
    ``passed`` disagrees with its own figures does not pass.
    """
    if not facts:
        return False, f"{INT8_MODEL} is not in the benchmark repository"
    where = f"metadata.json of {facts['model']} version {facts['version']}"
    record = facts.get("quantization")
    if not isinstance(record, dict) or not isinstance(record.get("gate"), dict):
        return False, f"{where} records no quantization gate"
    gate = record["gate"]
    try:
        drop, agreement = float(record["accuracy_drop"]), float(record["top1_agreement"])
        max_drop, min_agreement = float(gate["max_accuracy_drop"]), float(gate["min_top1_agreement"])
    except (KeyError, TypeError, ValueError) as exc:
        return False, f"{where} has an incomplete quantization record (missing or bad {exc})"
    within = drop <= max_drop + 1e-9 and agreement >= min_agreement - 1e-9
    passed = gate.get("passed") is True and within
    text = (
        f"{where}: test accuracy drop {drop:.4f} (at most {max_drop:g} allowed), top-1 agreement with "
        f"FP32 {agreement:.4f} (at least {min_agreement:g} required)"
    )
    if "calibration_samples" in record:
        text += f", {record['calibration_samples']} calibration samples"
    if gate.get("passed") is True and not within:
        text += "; the record says passed, but its figures are outside its limits"
    text += f": gate {'passed' if passed else 'failed'}"
    if facts.get("precision") != "int8":
        text += f" (its precision is recorded as {facts.get('precision')!r}, not 'int8')"
    return passed, text


def int8_speedup(results: Results) -> Target:
    name = f"{INT8_MODEL} served at concurrency {INT8_CONCURRENCY}"
    goal = f">= {INT8_MIN_SPEEDUP:g} x FP32 ceiling (best batch), accuracy gate met"
    served = results.figure(INT8_MODEL, INT8_CONCURRENCY, "samples_per_s")
    fp32 = results.ceilings.get(FP32_MODEL)
    best = best_batch(fp32) if fp32 else None
    if served is None or best is None:
        missing = "served INT8 figure" if served is None else "FP32 in-process ceiling"
        return _unmeasured(name, "issue 12", goal, f"no {missing}")
    batch, ceiling = best
    ratio = served.median / ceiling.median
    gate_passed, gate_text = gate_verdict(results.models.get(INT8_MODEL))
    met = ratio >= INT8_MIN_SPEEDUP and gate_passed
    why = (
        f"{INT8_MODEL} served {served.format('.1f')} samples/s at concurrency {INT8_CONCURRENCY}, "
        f"{ratio:.2f}x the FP32 in-process ceiling's best, {ceiling.format('.1f')} samples/s at batch "
        f"{batch}."
    )
    int8 = results.ceilings.get(INT8_MODEL)
    int8_best = best_batch(int8) if int8 else None
    if int8_best is not None:
        why += (
            f" In-process, the INT8 model reached {int8_best[1].median:.1f} samples/s at batch "
            f"{int8_best[0]} ({int8_best[1].median / ceiling.median:.2f}x FP32)."
        )
    level = results.level(INT8_MODEL, INT8_CONCURRENCY)
    batch_size = level.get("mean_batch") if level else None
    if batch_size is not None:
        why += f" The server's mean executed batch was {batch_size.median:.1f}."
    why += f" {cpu_note(level, int(results.machine['cores']))} Accuracy: {gate_text}."
    measured = (
        f"{served.format('.1f')} samples/s = {ratio:.2f}x; gate {'passed' if gate_passed else 'failed'}"
    )
    return Target(name, "issue 12", goal, measured, met, why)


def lenet_against_bare(concurrency: int, factor: float) -> Callable[[Results], Target]:
    def target(results: Results) -> Target:
        name = f"LeNet unary at concurrency {concurrency} vs the bare handler"
        goal = f">= {factor:g} x bare handler"
        ours = results.figure("lenet", concurrency, "requests_per_s")
        bare = results.figure("lenet-bare", concurrency, "requests_per_s")
        if ours is None or bare is None:
            return _unmeasured(name, "issue 12", goal, "no figure for our server or for the bare handler")
        ratio = ours.median / bare.median
        why = (
            f"Our server answered {ours.format('.0f')} requests/s, the bare handler "
            f"{bare.format('.0f')} ({ratio:.2f}x). Server CPU per request: ours "
            f"{_per_request(results, 'lenet', concurrency)}, the bare handler's "
            f"{_per_request(results, 'lenet-bare', concurrency)}. "
            f"{cpu_note(results.level('lenet', concurrency), int(results.machine['cores']))}"
        )
        measured = f"{ours.format('.0f')} vs {bare.format('.0f')} requests/s = {ratio:.2f}x"
        return Target(name, "issue 12", goal, measured, ratio >= factor, why)

    return target


def lenet_high_holds(results: Results) -> Target:
    name = f"LeNet unary at concurrency {LENET_HIGH} holds the concurrency-{LENET_MID} throughput"
    goal = f">= the concurrency-{LENET_MID} figure"
    high = results.figure("lenet", LENET_HIGH, "requests_per_s")
    mid = results.figure("lenet", LENET_MID, "requests_per_s")
    if high is None or mid is None:
        return _unmeasured(name, "issue 12", goal, f"no figure at concurrency {LENET_MID} or {LENET_HIGH}")
    why = (
        f"{high.format('.0f')} requests/s at concurrency {LENET_HIGH} against {mid.format('.0f')} at "
        f"{LENET_MID} ({high.median / mid.median:.2f}x)."
    )
    measured = f"{high.format('.0f')} vs {mid.format('.0f')} requests/s"
    return Target(name, "issue 12", goal, measured, high.median >= mid.median, why)


def lenet_tail(results: Results) -> Target:
    name = f"LeNet unary p99 at concurrency {LENET_HIGH}"
    goal = f"<= {LENET_MAX_TAIL_RATIO:g} x p50"
    p50 = results.figure("lenet", LENET_HIGH, "p50_ms")
    p99 = results.figure("lenet", LENET_HIGH, "p99_ms")
    if p50 is None or p99 is None:
        return _unmeasured(name, "issue 12", goal, f"no latency figures at concurrency {LENET_HIGH}")
    ratio = p99.median / p50.median
    why = f"p99 {p99.format('.2f')} ms, p50 {p50.format('.2f')} ms: p99 is {ratio:.2f}x p50."
    measured = f"p99 {p99.median:.2f} ms = {ratio:.2f}x p50 {p50.median:.2f} ms"
    return Target(name, "issue 12", goal, measured, ratio <= LENET_MAX_TAIL_RATIO, why)


def lenet_p50(results: Results) -> Target:
    name = "LeNet unary p50 at concurrency 1"
    goal = f"<= {LENET_MAX_P50_MS:g} ms"
    p50 = results.figure("lenet", 1, "p50_ms")
    if p50 is None:
        return _unmeasured(name, "issue 12", goal, "no latency figure at concurrency 1")
    why = f"p50 {p50.format('.3f')} ms."
    ceiling = results.ceilings.get("lenet")
    at_1 = batch_figures(ceiling).get(1) if ceiling else None
    if at_1 is not None:
        why += f" The model call itself takes {at_1['p50_ms'].median:.3f} ms in-process (batch 1, p50)."
    bare = results.figure("lenet-bare", 1, "p50_ms")
    if bare is not None:
        why += f" The bare handler's p50 was {bare.format('.3f')} ms."
    why += " " + cpu_note(results.level("lenet", 1), int(results.machine["cores"]))
    return Target(name, "issue 12", goal, f"{p50.format('.3f')} ms", p50.median <= LENET_MAX_P50_MS, why)


def stream_speedup(results: Results) -> Target:
    c = STREAM_CONCURRENCY
    name = f"LeNet ModelStreamInfer at concurrency {c} vs unary"
    goal = f">= {STREAM_MIN_SPEEDUP:g} x unary"
    stream = results.figure("lenet-stream", c, "requests_per_s")
    unary = results.figure("lenet", c, "requests_per_s")
    if stream is None or unary is None:
        return _unmeasured(name, "issue 12", goal, f"no stream or unary figure at concurrency {c}")
    ratio = stream.median / unary.median
    stream_batch, unary_batch = (results.figure(k, c, "mean_batch") for k in ("lenet-stream", "lenet"))
    why = (
        f"On streams {stream.format('.0f')} requests/s, unary {unary.format('.0f')} ({ratio:.2f}x). "
        f"Server CPU per request: {_per_request(results, 'lenet-stream', c)} on streams, "
        f"{_per_request(results, 'lenet', c)} unary."
    )
    if stream_batch is not None and unary_batch is not None:
        why += f" Mean executed batch: {stream_batch.median:.1f} on streams, {unary_batch.median:.1f} unary."
    measured = f"{stream.format('.0f')} vs {unary.format('.0f')} requests/s = {ratio:.2f}x"
    return Target(name, "issue 12", goal, measured, ratio >= STREAM_MIN_SPEEDUP, why)


def rss(results: Results) -> Target:
    name = "Server RSS with the default models"
    goal = f"<= {MAX_RSS_BYTES / MiB:.0f} MiB"
    memory = results.memory.get("default")
    resident = spread(memory["rss_bytes"]) if memory else None
    if memory is None or resident is None:
        return _unmeasured(name, "issue 12", goal, "no memory figure")
    idle = spread(memory["rss_idle_bytes"])
    why = (
        f"{resident.format('.0f', 1 / MiB)} MiB with {', '.join(memory['models'])} loaded, after one request "
        f"to each" + (f" ({idle.format('.0f', 1 / MiB)} MiB before the first requests)." if idle else ".")
    )
    measured = f"{resident.format('.0f', 1 / MiB)} MiB"
    return Target(name, "issue 12", goal, measured, resident.median <= MAX_RSS_BYTES, why)


def resnet_fp32_share(results: Results) -> Target:
    c = RESNET_CONCURRENCY
    name = f"ResNet-18 FP32 served at concurrency {c}"
    goal = f">= {RESNET_MIN_CEILING_SHARE:g} x FP32 ceiling (best batch)"
    served = results.figure(FP32_MODEL, c, "samples_per_s")
    fp32 = results.ceilings.get(FP32_MODEL)
    best = best_batch(fp32) if fp32 else None
    if served is None or best is None:
        return _unmeasured(name, "issue 4", goal, "no served FP32 figure or FP32 ceiling")
    share = served.median / best[1].median
    level = results.level(FP32_MODEL, c)
    batch_size = level.get("mean_batch") if level else None
    why = (
        f"{served.format('.1f')} samples/s served, {share:.0%} of the in-process best "
        f"{best[1].median:.1f} samples/s (batch {best[0]})."
        + (f" Mean executed batch {batch_size.median:.1f}." if batch_size else "")
        + f" {cpu_note(level, int(results.machine['cores']))}"
    )
    measured = f"{served.format('.1f')} samples/s = {share:.2f}x"
    return Target(name, "issue 4", goal, measured, share >= RESNET_MIN_CEILING_SHARE, why)


def resnet_fp32_p50(results: Results) -> Target:
    name = "ResNet-18 FP32 p50 at concurrency 1"
    goal = f"<= in-process batch-1 p50 + {RESNET_P50_SLACK_MS:g} ms"
    p50 = results.figure(FP32_MODEL, 1, "p50_ms")
    fp32 = results.ceilings.get(FP32_MODEL)
    at_1 = batch_figures(fp32).get(1) if fp32 else None
    if p50 is None or at_1 is None:
        return _unmeasured(name, "issue 4", goal, "no served p50 at concurrency 1 or no batch-1 ceiling")
    limit = at_1["p50_ms"].median + RESNET_P50_SLACK_MS
    why = (
        f"p50 {p50.format('.2f')} ms served, {at_1['p50_ms'].format('.2f')} ms in-process: serving "
        f"added {p50.median - at_1['p50_ms'].median:.2f} ms. "
        f"{cpu_note(results.level(FP32_MODEL, 1), int(results.machine['cores']))}"
    )
    return Target(
        name, "issue 4", f"<= {limit:.2f} ms ({goal})", f"{p50.format('.2f')} ms", p50.median <= limit, why
    )


#: Every target, in the document's order.
TARGETS: tuple[Callable[[Results], Target], ...] = (
    int8_speedup,
    *(lenet_against_bare(c, factor) for c, factor in LENET_VS_BARE),
    lenet_high_holds,
    lenet_tail,
    lenet_p50,
    stream_speedup,
    rss,
    resnet_fp32_share,
    resnet_fp32_p50,
)


def check_targets(results: Results) -> list[Target]:
    """Every target's verdict on this run's figures."""
    return [target(results) for target in TARGETS]
