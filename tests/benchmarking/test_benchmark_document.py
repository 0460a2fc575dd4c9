"""The document rendered from a results object: provenance, repeats, verdicts and their reasons."""

from __future__ import annotations

import dataclasses
import re

from benchmark_testlib import passing, set_repeats
from benchmarking.document import render
from benchmarking.plan import Plan
from benchmarking.targets import check_targets


def test_the_header_names_the_commit_the_repeats_and_the_verdicts() -> None:
    results = passing()
    set_repeats(results, "lenet", 1, "p50", [0.9, 0.95, 1.0])
    targets = check_targets(results)
    text = render(results, targets)
    assert "from commit `abc`, tree clean." in text
    assert "Each figure is the median of 3 repeats, with the lowest and highest in brackets." in text
    assert (
        "| LeNet unary p50 at concurrency 1 | issue 12 | <= 0.8 ms | 0.950 (0.900–1.000) ms | **MISSED** |"
        in text
    )
    # Every verdict's reason is in the document, computed from the same figures.
    for target in targets:
        assert target.why in text
    # The tables show each figure's range: requests/s of our server at concurrency 16.
    assert re.search(r"\| 16 \| 3000\.0 \(2970\.0–3030\.0\) \|", text)


def test_a_dirty_tree_and_too_few_repeats_are_said_plainly() -> None:
    results = passing()
    results.source = {"commit": "abc", "dirty": True, "changed": ["server/app.py", "notes.txt"]}
    results.plan = dataclasses.replace(Plan.make(quick=True), repeats=1)
    text = render(results, check_targets(results))
    assert "from commit `abc` with uncommitted changes in `server/app.py`, `notes.txt`." in text
    assert "Each figure is from a single repeat." in text
    results.source["changed"] = [f"file{i}.py" for i in range(12)]
    text = render(results, check_targets(results))
    assert "`file9.py` and 2 more paths (all listed in benchmarks.json)." in text and "file10" not in text
    assert "**1 repeat only, fewer than the 3 the targets are judged on (a `--quick` smoke-test run" in text
