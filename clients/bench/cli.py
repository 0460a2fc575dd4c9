"""The command line of ``python -m clients.bench``: flags, their checks, and the run."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clients.bench.driver import BenchConfig, run
from clients.bench.report import format_table, plot, to_json
from clients.retry import add_retries_argument


def _positive_list(kind: type, text: str) -> tuple[Any, ...]:
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} must hold positive numbers")
    return values


def get_args_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m clients.bench``."""
    p = argparse.ArgumentParser(
        prog="python -m clients.bench",
        description="Closed- or open-loop load against a cnnserve server; see the module docstring.",
    )
    p.add_argument("--server", default="127.0.0.1:8001", help="HOST:PORT of the gRPC server")
    p.add_argument("--model", required=True, help="model to load")
    p.add_argument("--version", default="", help="model version (default: the latest)")
    p.add_argument(
        "--concurrency",
        type=lambda t: _positive_list(int, t),
        default=(1, 4, 16, 64),
        help="comma-separated closed-loop levels (default 1,4,16,64)",
    )
    p.add_argument(
        "--rate",
        type=lambda t: _positive_list(float, t),
        default=(),
        help="comma-separated open-loop request rates per second (replaces the closed-loop levels)",
    )
    bound = p.add_mutually_exclusive_group()
    bound.add_argument("--duration", type=float, default=None, help="seconds per level (default 10)")
    bound.add_argument("--requests", type=int, default=None, help="requests per level")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each level")
    p.add_argument("--batch-size", type=int, default=1, help="samples per request")
    p.add_argument(
        "--mode", choices=["tensor", "image"], default="tensor", help="raw tensors or encoded images"
    )
    p.add_argument("--image", type=Path, default=None, help="image file for --mode image (default: random)")
    p.add_argument(
        "--stream",
        action="store_true",
        help="tensor mode, closed loop: one ModelStreamInfer stream per worker instead of unary calls",
    )
    p.add_argument("--processes", type=int, default=1, help="load processes, each with its own event loop")
    p.add_argument(
        "--connections",
        type=int,
        default=1,
        help="TCP connections per load process, workers spread over them (a server's --workers "
        "share connections, not requests)",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="deadline of each request, seconds")
    add_retries_argument(p)
    p.add_argument("--max-outstanding", type=int, default=1024, help="open loop: most requests in flight")
    p.add_argument(
        "--metrics-url",
        default=None,
        help="Prometheus endpoint(s), comma-separated (one per server worker), for the mean batch size",
    )
    p.add_argument(
        "--server-pid",
        type=int,
        default=None,
        help="server process id, for its CPU use (with psutil; child processes such as workers included)",
    )
    p.add_argument("--json", type=Path, default=None, dest="json_path", help="write the results as JSON")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG of throughput and latency")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="live progress on stderr (default: when stderr is a terminal)",
    )
    return p


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> BenchConfig:
    """Check the parsed flags and build the :class:`BenchConfig`."""
    for name in ("batch_size", "processes", "connections", "max_outstanding"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} is {getattr(args, name)}; expected >= 1")
    if args.requests is not None and args.requests < 1:
        parser.error(f"--requests is {args.requests}; expected >= 1")
    duration = args.duration if args.duration is not None else (None if args.requests else 10.0)
    if duration is not None and not 0 < duration <= 3600:
        parser.error(f"--duration is {duration}; expected 0 < S <= 3600")
    if args.stream and (args.mode != "tensor" or args.rate):
        parser.error("--stream works with --mode tensor and closed-loop --concurrency only")
    if args.stream and args.retries:
        parser.error(f"--retries is {args.retries}; --stream sends on streams, which are never retried")
    if args.timeout <= 0 or args.warmup < 0:
        parser.error(f"--timeout {args.timeout} must be > 0 and --warmup {args.warmup} >= 0")
    return BenchConfig(
        server=args.server,
        model=args.model,
        version=args.version,
        concurrency=args.concurrency,
        rates=args.rate,
        duration=duration,
        requests=args.requests,
        warmup=args.warmup,
        batch_size=args.batch_size,
        mode=args.mode,
        stream=args.stream,
        image=args.image,
        processes=args.processes,
        connections=args.connections,
        timeout=args.timeout,
        retries=args.retries,
        max_outstanding=args.max_outstanding,
        metrics_url=args.metrics_url,
        server_pid=args.server_pid,
        progress=sys.stderr.isatty() if args.progress is None else args.progress,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return the exit status (1 if the server cannot be reached or the model is unknown)."""
    from clients.errors import InferenceServerError

    parser = get_args_parser()
    args = parser.parse_args(argv)
    config = config_from_args(args, parser)
    command = shlex.join(["python", "-m", "clients.bench", *(sys.argv[1:] if argv is None else argv)])
    try:
        reports = run(config)
    except InferenceServerError as exc:
        print(f"error: {exc.status}: {exc.message}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    mode = f"{config.mode} requests of batch {config.batch_size}" + (" on streams" if config.stream else "")
    print(f"{config.model} @ {config.server}: {mode}, {config.processes} load process(es)")
    print(format_table(reports))
    if args.json_path is not None:
        args.json_path.write_text(json.dumps(to_json(config, reports, command), indent=2) + "\n")
    if args.plot is not None:
        plot(reports, args.plot, f"{config.model}: {mode}")
    return 0
