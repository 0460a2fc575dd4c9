"""The generated part of docs/scaling.md (``scripts/compose_test.py``): every sentence follows the
figures it is given, for runs where the callers without retries lost requests and where they lost none."""

from __future__ import annotations

import compose_test
import failover


def tally(sent: int, failed: int) -> failover.Tally:
    requests = [failover.Request(0.0, 0.01, "OK")] * (sent - failed)
    requests += [failover.Request(0.0, 0.02, "UNAVAILABLE")] * failed
    return failover.Tally.of(requests, retried=0)


def text(failed: dict[str, int]) -> str:
    phases = ("rolling restart, no shutdown delay", "rolling restart", "SIGKILL")
    tallies = {
        (phase, callers): tally(100, failed[phase] if callers == "retry off" else 0)
        for phase in phases
        for callers in ("retry on", "retry off")
    }
    roll = compose_test.Roll(compose_test.PhaseLoad({}), [("replica-1", 10.0, 10.5, 14.0)])
    capacity = [compose_test.Capacity("lenet", 4, 1000.0, 0.8, 90.0, 3.0)]
    return compose_test.scaling_text(
        tallies,
        {"shipped settings": roll},
        window=1.5,
        moved=0.25,
        gone=0.25,
        back=2.0,
        served_after=600,
        longest=0.5,
        capacity=capacity,
    )


def test_sentences_follow_the_failures() -> None:
    lost = text({"rolling restart, no shutdown delay": 38, "rolling restart": 1, "SIGKILL": 2})
    assert "38 requests of the callers without retries failed, every one inside a shutdown window" in lost
    assert "1 request of the callers without retries failed, every one inside" in lost
    assert "2 requests of the callers without retries failed, the last ending 0.25 s after the kill" in lost


def test_no_failure_is_not_described_as_one() -> None:
    none = text({"rolling restart, no shutdown delay": 0, "rolling restart": 0, "SIGKILL": 0})
    assert none.count("no request of the callers without retries failed") == 3
    assert "the last" not in none and "every one inside" not in none
    assert "| lenet | 4 | 1000 | 0.80 | 1250 | 3.0 ms | 90 MiB |" in none
