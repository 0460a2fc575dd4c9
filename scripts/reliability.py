# ruff: noqa: E501  (the document template keeps its markdown table rows on one line)
"""Run the reliability suite in its long form and write docs/reliability.md from the results.

    python scripts/reliability.py --soak-seconds 60 --fuzz-examples 2000 --atheris-seconds 600

Every figure in the document comes from this run, and every claim is the docstring of a
test that ran in it, with that test's result; the command line and commit are written in.
The same drivers run in a bounded form in CI (``pytest tests/reliability``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests" / "reliability"))

import grpc  # noqa: E402
import pytest  # noqa: E402
from reliability_testlib import (  # noqa: E402
    BAD_INPUTS,
    Reference,
    ServerProcess,
    ServerThread,
    bad_input_settings,
    call_case_sync,
    large_overload_rss_bound,
    large_request_overload,
    overload,
    pct,
    publish_fleet,
    publish_slow,
    repo_args,
    soak,
)

from modelrepo import BatchingConfig  # noqa: E402


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").replace("\x00", "\\x00")


def bad_input_table() -> tuple[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        publish_fleet(repo)
        server = ServerThread(bad_input_settings(repo))
        rows, failures = [], 0
        try:
            with grpc.insecure_channel(
                server.address, options=[("grpc.max_send_message_length", 8 << 20)]
            ) as ch:
                for case in BAD_INPUTS:
                    code, details = call_case_sync(ch, case)
                    ok = code == case.code and case.expect in details
                    failures += not ok
                    message = details if len(details) <= 160 else details[:157] + "…"
                    rows.append(
                        f"| {_md(case.what)} | `{case.rpc}` | `{code.name}` | {_md(message) or '(answered)'} |"
                        f" {'yes' if ok else '**NO**'} |"
                    )
        finally:
            server.stop()
    header = "| request | RPC | status | message | as expected |\n|---|---|---|---|---|\n"
    return header + "\n".join(rows), failures


def run_pytest(args: list[str], env: dict[str, str]) -> tuple[int, float, str]:
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    out = io.StringIO()
    started = time.monotonic()
    try:
        with contextlib.redirect_stdout(out):
            code = pytest.main(["-q", "-rf", "-p", "no:cacheprovider", "-p", "no:warnings", *args])
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return int(code), time.monotonic() - started, out.getvalue()


#: The test files whose tests are the document's claims, by section: (title, files).
CLAIM_SECTIONS = (
    ("Security", ("tests/reliability/test_security.py",)),
    (
        "Bad input and fuzzing",
        (
            "tests/reliability/test_bad_input.py",
            "tests/reliability/test_fuzz.py",
            "tests/reliability/test_fuzz_script.py",
            "tests/server/test_image_modes.py",
            "tests/server/test_errors.py",
        ),
    ),
    ("Load and overload", ("tests/reliability/test_load.py", "tests/reliability/test_overload_memory.py")),
    ("Faults", ("tests/reliability/test_faults.py",)),
    ("Batcher", ("tests/server/test_batcher.py", "tests/server/test_batcher_state.py")),
    (
        "Health, models and start-up",
        (
            "tests/server/test_lifecycle.py",
            "tests/server/test_startup_errors.py",
            "tests/server/test_workers.py",
            "tests/server/test_logs.py",
        ),
    ),
)


def _claim_files() -> list[str]:
    return [f for _, files in CLAIM_SECTIONS for f in files if (REPO_ROOT / f).is_file()]


def _docstrings(path: Path) -> dict[str, str]:
    """Each test's claim: the first paragraph of its docstring (or its name, spelled out)."""
    import ast

    tree = ast.parse(path.read_text())
    claims = {"__module__": " ".join((ast.get_docstring(tree) or "").split("\n\n")[0].split())}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name.startswith(
            ("test_", "Test")
        ):
            doc = ast.get_docstring(node) or node.name.removeprefix("test_").replace("_", " ")
            claims[node.name] = " ".join(doc.split("\n\n")[0].split())
    return claims


def claim_tables(junit: Path) -> tuple[str, int, int]:
    """One table per section: each test's claim and how it did in this run; (markdown, passed, failed)."""
    import xml.etree.ElementTree as ET

    results: dict[str, dict[str, list[tuple[str, bool, float]]]] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")
        file = next((f for f in _claim_files() if Path(f).stem in module), None)
        if file is None:
            continue
        name = case.get("name", "")
        if case.find("skipped") is not None:
            continue
        failed = case.find("failure") is not None or case.find("error") is not None
        base = name.split("[")[0]
        if base == "runTest":  # a hypothesis state machine: the class is the test
            base = module[-1]
        results.setdefault(file, {}).setdefault(base, []).append(
            (name, not failed, float(case.get("time", 0)))
        )
    out, passed, failed = [], 0, 0
    for title, files in CLAIM_SECTIONS:
        rows = []
        for file in files:
            if file not in results:
                continue
            claims = _docstrings(REPO_ROOT / file)
            for base, runs in results[file].items():
                ok = sum(r[1] for r in runs)
                passed += ok
                failed += len(runs) - ok
                cases = f" ({len(runs)} cases)" if len(runs) > 1 else ""
                verdict = "passed" if ok == len(runs) else f"**FAILED** {len(runs) - ok} of {len(runs)}"
                rows.append(
                    f"| {_md(claims.get(base) or claims['__module__'] or base)} | `{Path(file).name}::{base}`{cases} | {verdict} |"
                    f" {sum(r[2] for r in runs):.1f} |"
                )
        if rows:
            out.append(
                f"### {title}\n\n| claim | test | result | seconds |\n|---|---|---|---|\n" + "\n".join(rows)
            )
    return "\n\n".join(out), passed, failed


def security_flags() -> str:
    """The security and limits flags, as the server's own parser declares them."""
    from server.settings import ENV_PREFIX, get_args_parser

    parser = get_args_parser()
    rows = []
    for group in parser._action_groups:
        if group.title != "security and limits":
            continue
        for action in group._group_actions:
            flag = action.option_strings[-1]
            default = "off" if action.default in (None, False) else f"`{action.default}`"
            rows.append(
                f"| `{flag}` | `{ENV_PREFIX}{action.dest.upper()}` | {default} | {_md(action.help or '')} |"
            )
    return "| flag | environment | default | meaning |\n|---|---|---|---|\n" + "\n".join(rows)


def atheris_run(seconds: int) -> tuple[dict[str, Any] | None, str]:
    """Coverage-guided fuzzing of the decoders (scripts/fuzz.py) for ``seconds``; its JSON report."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fuzz.json"
        run = subprocess.run(
            [
                sys.executable,
                str(REPO_ROOT / "scripts" / "fuzz.py"),
                "--seconds",
                str(seconds),
                "--json",
                str(out),
            ],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
        )
        if not out.is_file():
            return None, (run.stdout + run.stderr)[-3000:]
        import json

        return json.loads(out.read_text()), (run.stdout + run.stderr)[-3000:] if run.returncode else ""


def source_state(output: Path) -> str:
    """The commit this run measured, and whether the working tree differed from it (``output`` aside)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO_ROOT, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit (no git)"
    try:
        mine = str(output.resolve().relative_to(REPO_ROOT))
    except ValueError:
        mine = ""
    changed = [line[3:] for line in dirty.splitlines() if line[3:] != mine]
    return f"commit `{commit}`" + (" with uncommitted changes" if changed else "")


async def long_soak(seconds: float, clients: int) -> tuple[Any, float]:
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        models = publish_fleet(repo)
        process = ServerProcess(repo_args(repo))
        try:
            shapes = {name: m.config.input.shape for name, m in models.items()}
            started = time.monotonic()
            tally = await soak(process.address, Reference(repo), shapes, duration=seconds, clients=clients)
            elapsed = time.monotonic() - started
        finally:
            process.terminate()
            process.wait(60)
    return tally, elapsed


async def long_overload(seconds: float, clients: int) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        publish_slow(
            repo,
            "slow",
            layers=6,
            batching=BatchingConfig(max_batch_size=4, max_queue_delay_us=0, max_queue_size=4),
        )
        process = ServerProcess(repo_args(repo))
        try:
            return await overload(
                process.address,
                "slow",
                (3, 32, 32),
                duration=seconds,
                clients=clients,
                rss=process.rss_bytes,
                recovery_requests=50,
            )
        finally:
            process.terminate()
            process.wait(60)


def large_request_overload_section(seconds: float, problems: list[str]) -> str:
    """Large requests against the byte budget, and the same driver with the budget out of reach."""
    rows = []
    for budget, bounded in ((64 << 20, True), (64 << 30, False)):
        print(f"large-request overload (--max-queue-bytes {budget >> 20} MiB) ...", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            ov = asyncio.run(
                large_request_overload(
                    Path(tmp) / "repo", duration=seconds, max_queue_bytes=budget, rss_limit=3 << 30
                )
            )
        bound = large_overload_rss_bound(budget, ov.streams)
        within = ov.rss_growth <= bound
        verdict = f"{bound >> 20} MiB: {'within' if within else '**exceeded**'}" if bounded else "(no budget)"
        if bounded and (not within or not ov.byte_limited or ov.recovery_ok != ov.recovery_total):
            problems.append(
                f"large-request overload with the budget: {ov.summary()} (growth bound {bound >> 20} MiB)"
            )
        rows.append(
            f"| {budget >> 20} MiB | {ov.streams} x {ov.depth} | {ov.request_bytes / 2**20:.1f} MiB | {ov.offered} |"
            f" {ov.accepted} | {ov.byte_limited} | {ov.count_limited} | {dict(ov.other) or 0} |"
            f" {ov.rss_before >> 20} / {ov.rss_peak >> 20} / {ov.rss_after >> 20} MiB |"
            f" {ov.rss_growth >> 20} MiB | {verdict} |"
            f" {ov.recovery_ok}/{ov.recovery_total} |"
        )
    return (
        f"A 3x224x224 FP32 model; clients keep `ModelStreamInfer` streams full of large requests for {seconds:.0f} s,"
        " first against `--max-queue-bytes` 64 MiB, then with the budget out of reach (64 GiB), the request"
        " bound (1024) unchanged. RSS is the server's, from /proc (peak: VmHWM); the growth bound is"
        " `large_overload_rss_bound` in `tests/reliability/reliability_testlib.py`.\n\n"
        "| --max-queue-bytes | streams x depth | request | offered | accepted | refused by bytes | refused by count |"
        " other | RSS before / peak / after | growth | growth bound | recovery |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows)
    )


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


#: scripts/fuzz.py's per-target figures, in the order and with the headings the table shows.
_FUZZ_COLUMNS = (
    ("seconds", "seconds"),
    ("executions", "inputs run"),
    ("exec_per_s", "inputs/s"),
    ("coverage", "coverage (libFuzzer cov)"),
    ("features", "features (ft)"),
    ("corpus_seeds", "seed corpus"),
    ("corpus_final", "corpus at the end"),
    ("restarts", "restarts"),
)


def _targets_table(report: dict[str, Any]) -> str:
    """scripts/fuzz.py's report as a table: one row per target, and its findings."""
    lines = [
        "| target | " + " | ".join(title for _, title in _FUZZ_COLUMNS) + " | findings |",
        "|---|" + "---:|" * len(_FUZZ_COLUMNS) + "---|",
    ]
    for target in report.get("targets", []):
        cells = [f"{target.get(key, 0):,.0f}" for key, _ in _FUZZ_COLUMNS]
        found = target.get("findings") or []
        listed = "; ".join(_md(f.get("signature", "?")) for f in found) if found else "none"
        lines.append(f"| `{target.get('target')}` | " + " | ".join(cells) + f" | {listed} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--soak-seconds", type=float, default=60)
    p.add_argument("--soak-clients", type=int, default=16)
    p.add_argument("--overload-seconds", type=float, default=20)
    p.add_argument("--overload-clients", type=int, default=64)
    p.add_argument("--fuzz-examples", type=int, default=2000)
    p.add_argument("--atheris-seconds", type=int, default=600)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "reliability.md")
    args = p.parse_args()
    command = "python scripts/reliability.py " + shlex.join(sys.argv[1:])
    problems: list[str] = []
    source = source_state(args.out)

    print("bad-input table ...", flush=True)
    table, bad = bad_input_table()
    if bad:
        problems.append(f"{bad} bad-input cases did not get the expected status")

    print(f"hypothesis fuzzing ({args.fuzz_examples} examples per test) ...", flush=True)
    fuzz_code, fuzz_time, fuzz_out = run_pytest(
        ["tests/reliability/test_fuzz.py"], {"FUZZ_EXAMPLES": str(args.fuzz_examples), "FUZZ_SEED": "1"}
    )
    outcomes: dict[str, Counter[str]] = (
        sys.modules["test_fuzz"].OUTCOMES if "test_fuzz" in sys.modules else {}
    )
    if fuzz_code:
        problems.append("hypothesis fuzzing found a failure:\n" + fuzz_out[-3000:])

    print(f"coverage-guided fuzzing ({args.atheris_seconds:.0f} s) ...", flush=True)
    atheris, atheris_log = atheris_run(args.atheris_seconds)
    if atheris is None or atheris_log:
        problems.append("the coverage-guided fuzzing run failed or found something:\n" + atheris_log)

    print(f"soak ({args.soak_seconds:.0f} s, {args.soak_clients} clients) ...", flush=True)
    tally, soak_time = asyncio.run(long_soak(args.soak_seconds, args.soak_clients))
    if tally.wrong or tally.unexplained or not tally.accounted:
        problems.append(f"soak: {tally.wrong} wrong, unexplained {dict(tally.unexplained)}: {tally.examples}")

    print(f"overload ({args.overload_seconds:.0f} s, {args.overload_clients} clients) ...", flush=True)
    ov = asyncio.run(long_overload(args.overload_seconds, args.overload_clients))
    if ov.other or ov.recovery_ok != ov.recovery_total:
        problems.append(
            f"overload: other statuses {dict(ov.other)}, recovery {ov.recovery_ok}/{ov.recovery_total}"
        )

    memory_section = large_request_overload_section(args.overload_seconds, problems)

    print("claims: the bounded suites ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        suite_code, suite_time, suite_out = run_pytest([*_claim_files(), f"--junitxml={junit}"], {})
        claims, claims_passed, claims_failed = claim_tables(junit)
    summary = suite_out.strip().splitlines()[-1] if suite_out.strip() else "?"
    if suite_code:
        problems.append("the bounded suites failed:\n" + suite_out[-3000:])

    bad_settings = bad_input_settings(Path("repo"))
    fuzz_lines = "\n".join(
        f"| `{kind}` | {sum(c.values())} | "
        + ", ".join(f"{code} {n}" for code, n in sorted(c.items(), key=lambda kv: -kv[1]))
        + " |"
        for kind, c in outcomes.items()
    )
    atheris_section = (
        f"`scripts/fuzz.py` ({atheris.get('engine', '?')}, libFuzzer) for {args.atheris_seconds} s in all, on"
        f" {atheris.get('cpus', '?')} CPUs, from the committed seed corpus in `tests/fuzz_corpus/`; the"
        " invariant: only the server's own errors (INVALID_ARGUMENT and the like) escape the decoders, and"
        " what they return has the model's shape. After a finding libFuzzer restarts without that input.\n\n"
        + _targets_table(atheris)
        if atheris is not None
        else "**The coverage-guided fuzzing run did not produce a report** (see the problems above)."
    )
    doc = f"""# Reliability and security

Generated by `{command}` on {time.strftime("%Y-%m-%d %H:%M")} from {source} ({platform.machine()},
{os.cpu_count()} cores shared with other work, Python {platform.python_version()}, CPU execution provider).
Do not edit it by hand: run the command again. Each claim below is the docstring of a test that ran
in this run, with its result; the bounded forms run in CI (`pytest tests`).

{
        "**Problems found in this run:**" + chr(10) + chr(10).join("- " + _md(x) for x in problems)
        if problems
        else f"This run found no problem: all {claims_passed} claim checks passed ({summary}, {suite_time:.0f} s), and every figure below met its check."
    }

## Security and limits

The flags, as `python -m server --help` declares them:

{security_flags()}

## Bad input

Each request below went to a server started with `--max-message-bytes {bad_settings.max_message_bytes}
--max-image-pixels {bad_settings.max_image_pixels}{
        " --allow-model-control" if bad_settings.allow_model_control else ""
    }`,
models `tiny` (FP32 `[N,1,8,8]`, max batch 16) and `tinyrgb`; after each, a good request was sent.

{table}

### Hypothesis fuzzing

{args.fuzz_examples} generated examples per test ({fuzz_time:.0f} s, {
        "passed" if not fuzz_code else "**FAILED**"
    }):
the statuses the generated requests got.

| RPC | requests | outcomes |
|---|---|---|
{fuzz_lines}

### Coverage-guided fuzzing

{atheris_section}

## Soak

{args.soak_clients} concurrent clients, each on its own connection, for {soak_time:.0f} s against
`python -m server` with three models; every answer compared with ONNX Runtime run directly on that
request's own input (rtol = atol = 1e-4).

| sent | correct | wrong | rejected (explicit status) | unexplained | samples | throughput | latency p50 / p99 |
|---|---|---|---|---|---|---|---|
| {tally.sent} | {tally.correct} | {tally.wrong} | {dict(tally.rejected) or 0} | {
        dict(tally.unexplained) or 0
    } | {tally.samples} | {tally.sent / soak_time:.0f} req/s | {ms(tally.percentile(50))} / {
        ms(tally.percentile(99))
    } |

## Overload

A convolution model of several ms per sample, `max_batch_size 4`, `max_queue_size 4`, no queue
delay; {args.overload_clients} clients sending back to back for {args.overload_seconds:.0f} s, then {
        ov.recovery_total
    } sequential requests. Latencies are measured by clients on the same cores as the server.

| offered | accepted | rejected (RESOURCE_EXHAUSTED) | other | accepted p50 / p99 | rejected p50 / p99 | baseline p50 (idle) | RSS before / peak / after | recovery |
|---|---|---|---|---|---|---|---|---|
| {ov.offered} | {ov.accepted} | {ov.rejected} | {dict(ov.other) or 0} | {
        ms(pct(ov.accepted_latency, 50))
    } / {ms(pct(ov.accepted_latency, 99))} | {ms(pct(ov.rejected_latency, 50))} / {
        ms(pct(ov.rejected_latency, 99))
    } | {ms(pct(ov.baseline_latency, 50))} | {ov.rss_before >> 20} / {ov.rss_peak >> 20} / {
        ov.rss_after >> 20
    } MiB | {ov.recovery_ok}/{ov.recovery_total} ok, p50 {ms(pct(ov.recovery_latency, 50))} |

### Large requests

{memory_section}

## Claims

{claims}
"""
    args.out.write_text(doc)
    print(f"wrote {args.out}")
    for problem in problems:
        print("PROBLEM:", problem[:2000], file=sys.stderr)
    return 1 if problems or claims_failed else 0


if __name__ == "__main__":
    sys.exit(main())
