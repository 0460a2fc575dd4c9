# ruff: noqa: E501  (the document template keeps its markdown table rows on one line)
"""Run the reliability suite in its long form and write docs/reliability.md from the results.

    python scripts/reliability.py --soak-seconds 60 --fuzz-examples 2000

Every figure in the document comes from this run; the command line is written into it.
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
    overload,
    pct,
    publish_fleet,
    publish_slow,
    repo_args,
    soak,
)

from modelrepo import BatchingConfig  # noqa: E402
from server.settings import Settings  # noqa: E402


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


def fault_rows(junit: Path) -> list[str]:
    import ast
    import xml.etree.ElementTree as ET

    source = (REPO_ROOT / "tests" / "reliability" / "test_faults.py").read_text()
    docs = {
        node.name: (ast.get_docstring(node) or "").splitlines()[0]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_")
    }
    rows = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        if not case.get("classname", "").endswith("test_faults"):
            continue
        name = case.get("name", "")
        base = name.split("[")[0]
        failed = case.find("failure") is not None or case.find("error") is not None
        fault = base.removeprefix("test_").replace("_", " ") + (
            f" ({name.split('[')[1][:-1]})" if "[" in name else ""
        )
        rows.append(
            f"| {fault} | {_md(docs.get(base, ''))} | {'**FAILED**' if failed else 'passed'} |"
            f" {float(case.get('time', 0)):.1f} |"
        )
    return rows


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


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--soak-seconds", type=float, default=60)
    p.add_argument("--soak-clients", type=int, default=16)
    p.add_argument("--overload-seconds", type=float, default=20)
    p.add_argument("--overload-clients", type=int, default=64)
    p.add_argument("--fuzz-examples", type=int, default=2000)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "reliability.md")
    args = p.parse_args()
    command = "python scripts/reliability.py " + shlex.join(sys.argv[1:])
    problems: list[str] = []

    print("bad-input table ...", flush=True)
    table, bad = bad_input_table()
    if bad:
        problems.append(f"{bad} bad-input cases did not get the expected status")

    print(f"fuzzing ({args.fuzz_examples} examples per test) ...", flush=True)
    fuzz_code, fuzz_time, fuzz_out = run_pytest(
        ["tests/reliability/test_fuzz.py"], {"FUZZ_EXAMPLES": str(args.fuzz_examples), "FUZZ_SEED": "1"}
    )
    outcomes: dict[str, Counter[str]] = (
        sys.modules["test_fuzz"].OUTCOMES if "test_fuzz" in sys.modules else {}
    )
    if fuzz_code:
        problems.append("fuzzing found a failure:\n" + fuzz_out[-3000:])

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

    print("faults and the whole suite ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        suite_code, suite_time, suite_out = run_pytest(["tests/reliability", f"--junitxml={junit}"], {})
        faults = fault_rows(junit)
    summary = suite_out.strip().splitlines()[-1] if suite_out.strip() else "?"
    if suite_code:
        problems.append("the bounded suite failed:\n" + suite_out[-3000:])

    d = Settings()
    fuzz_lines = "\n".join(
        f"| `{kind}` | {sum(c.values())} | "
        + ", ".join(f"{code} {n}" for code, n in sorted(c.items(), key=lambda kv: -kv[1]))
        + " |"
        for kind, c in outcomes.items()
    )
    doc = f"""# Reliability and security

Generated by `{command}` on {time.strftime("%Y-%m-%d %H:%M")} ({platform.machine()}, {os.cpu_count()} cores
shared with other work, Python {platform.python_version()}, CPU execution provider). Do not edit the
figures by hand: run the command again. The same drivers run in a bounded form in CI:
`pytest tests/reliability` (this run: {summary}, {suite_time:.0f} s).

{
        "**Problems found in this run:**" + chr(10) + chr(10).join("- " + _md(x) for x in problems)
        if problems
        else "This run found no problem: every check below passed."
    }

## Security

| flag | environment | default | meaning |
|---|---|---|---|
| `--tls-cert PEM` | `CNNSERVE_TLS_CERT` | off | server certificate chain; with `--tls-key` the gRPC port speaks TLS only (plaintext clients fail with UNAVAILABLE) |
| `--tls-key PEM` | `CNNSERVE_TLS_KEY` | off | its private key |
| `--tls-client-ca PEM` | `CNNSERVE_TLS_CLIENT_CA` | off | require client certificates signed by this CA (mutual TLS); clients without one, or with one from another CA, fail the handshake |
| `--auth-token T` | `CNNSERVE_AUTH_TOKEN` | off | require `authorization: Bearer T` on every RPC except `grpc.health.v1.Health` |
| `--auth-token-file F` | `CNNSERVE_AUTH_TOKEN_FILE` | off | the same, read from a file (e.g. a mounted secret; surrounding whitespace removed) |
| `--allow-model-control [0/1]` | `CNNSERVE_ALLOW_MODEL_CONTROL=1` | `{
        int(d.allow_model_control)
    }` | enable `RepositoryModelLoad` / `RepositoryModelUnload`; otherwise PERMISSION_DENIED naming the flag |
| `--max-concurrent-streams N` | `CNNSERVE_MAX_CONCURRENT_STREAMS` | `{
        d.max_concurrent_streams
    }` | HTTP/2 streams per client connection (gRPC `grpc.max_concurrent_streams`); more wait in the client |
| `--max-concurrent-rpcs N` | `CNNSERVE_MAX_CONCURRENT_RPCS` | `{
        d.max_concurrent_rpcs
    }` | RPCs in progress server-wide; more get RESOURCE_EXHAUSTED at once (0: no limit) |
| `--max-stream-inflight N` | `CNNSERVE_MAX_STREAM_INFLIGHT` | `{
        d.max_stream_inflight
    }` | outstanding requests per `ModelStreamInfer` stream; past it the server stops reading the stream (HTTP/2 flow control pushes back) |

* **Token.** Compared with `hmac.compare_digest`; at least 16 printable ASCII characters without
  spaces, otherwise the server refuses to start (an empty `CNNSERVE_AUTH_TOKEN` is an error, not
  "no authentication"). Missing, malformed, repeated or wrong: `UNAUTHENTICATED` with the reason
  (`missing 'authorization' metadata; ...`, `invalid bearer token`), never echoing the value; the
  token is kept out of `repr(Settings)` and the log. Health checks are exempt so that probes need
  no secret; they reveal only SERVING / NOT_SERVING. Reflection is *not* exempt (it lists the
  services). Without a token no interceptor is installed at all. Prefer the environment or the
  file over `--auth-token`: command lines are visible in `ps`. Over plaintext the token can be
  sniffed: use it with TLS outside a trusted network.
* **Model control** is off by default, and behind the token when one is set.
* **Confinement.** Request model names are only ever dictionary keys of the loaded models; the
  one place a request name becomes a path (`RepositoryModelLoad`) goes through
  `modelrepo.validate_model_name` (letters, digits, `_ - .`, at most 128, not starting with `.`,
  no `..`). A load's `version` parameter must be a canonical positive integer (`'01'`, `'-1'`,
  `'1/../x'`, `'²'` are INVALID_ARGUMENT); versions in inference requests are compared as text
  with the loaded version. See the bad-input table below.
* **Limits** a client cannot exceed: message size `--max-message-bytes` (default {
        d.max_message_bytes >> 20
    } MiB,
  RESOURCE_EXHAUSTED from gRPC before the server reads the message), batch size (the model's
  `max_batch_size`, checked before the data is decoded), images per request (the same),
  decoded image pixels `--max-image-pixels` (default {d.max_image_pixels}, checked from the header
  before decoding), per-model queue `max_queue_size` (RESOURCE_EXHAUSTED when full), streams per
  connection, RPCs in progress, requests per stream (table above).

## Bad input

The server started with `--max-message-bytes 1048576 --max-image-pixels 1000000
--allow-model-control`, models `tiny` (FP32 `[N,1,8,8]`, max batch 16) and `tinyrgb`. Every
request got the status shown, and a good request right after each succeeded. Decisions: unknown
parameters (request, input, output) are ignored, as KServe parameters are an open set; NaN and
±infinity are ordinary floats, computed and returned (a classifier's logits then are NaN).

{table}

### Fuzzing

Hypothesis-generated `ModelInfer` requests (random model names, versions, datatypes, shapes up
to ±2^62, raw bytes of right and wrong lengths, typed contents of every kind, both at once,
parameters of every type, requested outputs) and `Classify` requests (images in 9 formats and
modes, truncated and bit-flipped, random bytes, up to 18 per request), {args.fuzz_examples} examples
each ({fuzz_time:.0f} s, {"passed" if not fuzz_code else "**FAILED**"}): every answer is a valid response or a
documented status (never UNKNOWN or INTERNAL), and health is SERVING afterwards.

| RPC | requests | outcomes |
|---|---|---|
{fuzz_lines}

## Soak

{args.soak_clients} concurrent clients, each on its own connection, for {
        soak_time:.0f} s against `python -m server`
(2 shared cores) with three models (`tiny` [1,8,8], `tinyrgb` [3,8,8], `wide` [1,16,16]); half single
requests, half batches of 2-8; 80 % raw, 20 % typed contents; 15 % short `ModelStreamInfer` streams.
Every answer compared with ONNX Runtime run directly on that request's own input (rtol = atol = 1e-4).

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
    } sequential requests.

| offered | accepted | rejected (RESOURCE_EXHAUSTED) | other | accepted p50 / p99 | rejected p50 / p99 | baseline p50 (idle) | RSS before / peak / after | recovery |
|---|---|---|---|---|---|---|---|---|
| {ov.offered} | {ov.accepted} | {ov.rejected} | {dict(ov.other) or 0} | {
        ms(pct(ov.accepted_latency, 50))
    } / {ms(pct(ov.accepted_latency, 99))} | {ms(pct(ov.rejected_latency, 50))} / {
        ms(pct(ov.rejected_latency, 99))
    } | {ms(pct(ov.baseline_latency, 50))} | {ov.rss_before >> 20} / {ov.rss_peak >> 20} / {
        ov.rss_after >> 20
    } MiB | {ov.recovery_ok}/{ov.recovery_total} ok, p50 {ms(pct(ov.recovery_latency, 50))} |

Latencies are measured by the clients on the same 2 cores as the server, so they include the
client's own scheduling under load.

## Faults

From `pytest tests/reliability/test_faults.py` (part of the run above). In every case the other
models were checked to keep serving correct answers.

| fault | what the client sees | result | seconds |
|---|---|---|---|
{chr(10).join(faults)}

Known limit: on SIGTERM, calls that reach gRPC's queue in the instant the port closes are
cancelled by gRPC itself (the client sees `CANCELLED`; for a `ModelStreamInfer` stream the
client's gRPC sometimes reports `INTERNAL: Internal error from Core` instead) before any server
code saw them; they were never computed and are safe to retry. At most one per connection.
Streams open when shutdown begins stop reading, answer what they admitted, and end with
`UNAVAILABLE: server is shutting down`.

## Fixed in the server while building this suite (each has a regression case above)

- A batch dimension whose element count overflows 64 bits (e.g. 2^58) wrapped around in
  `np.prod` and could match the data length; it then failed inside numpy (INTERNAL). Counts are
  now Python integers and the batch size is checked before any data is touched.
- A `classification` output parameter or load `version` of `'²'` (a Unicode digit) passed
  `str.isdigit()` and crashed `int()` (INTERNAL); now only ASCII digits are accepted, and the load
  version must be canonical (`'01'` is refused).
- A request with both `raw_input_contents` and typed `contents` silently used the raw data; now
  INVALID_ARGUMENT.
- A PNG declaring more pixels than Pillow's own limit got Pillow's message; the server now says
  it has more pixels than the server accepts, with the limit.
- `ModelStreamInfer` read requests without bound: a client sending without reading answers grew
  the server's memory; at most `--max-stream-inflight` requests per stream are now outstanding.
- Streams open at SIGTERM were cut by gRPC at port close (client: INTERNAL or CANCELLED); they
  now finish their admitted requests and end with UNAVAILABLE before the port closes (a rare
  race at the very last instant remains, see the known limit above).
- No TLS, no authentication, model load/unload open to anyone, no limit on streams per
  connection or RPCs in progress: added (see Security).
"""
    args.out.write_text(doc)
    print(f"wrote {args.out}")
    for problem in problems:
        print("PROBLEM:", problem[:2000], file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
