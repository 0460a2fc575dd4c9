"""Classify image files with a running server.

::

    python -m clients.classify --server 127.0.0.1:8001 --model lenet digit.png other.png --top-k 3
    python -m clients.classify --server 127.0.0.1:8001 --model lenet *.png --json

Exit status: 0 on success, 1 when the server answers with an error (its status
code and message are printed on stderr), 2 for bad arguments or unreadable files
(image or TLS files), which the client refuses before sending anything.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from clients.errors import InferenceServerError
from clients.retry import RetryPolicy, add_retries_argument
from clients.sync import InferenceClient
from clients.types import Classification


def get_args_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m clients.classify``."""
    p = argparse.ArgumentParser(prog="python -m clients.classify", description=__doc__.split("\n\n")[0])
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    p.add_argument("--server", default="127.0.0.1:8001", help="HOST:PORT of the gRPC server")
    p.add_argument("--model", default=None, help="model name (default: the server's default model)")
    p.add_argument("--version", default="", help="model version (default: the latest loaded)")
    p.add_argument("--top-k", type=int, default=1, help="classes to show per image")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer")
    add_retries_argument(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--tls", action="store_true", help="use TLS (with the system's root certificates)")
    p.add_argument("--root-certificates", type=Path, default=None, help="PEM file of trusted roots")
    p.add_argument("--client-key", type=Path, default=None, help="PEM private key for mutual TLS")
    p.add_argument("--client-cert", type=Path, default=None, help="PEM certificate chain for mutual TLS")
    p.add_argument(
        "--token",
        default=os.environ.get("CNNSERVE_AUTH_TOKEN") or None,
        help="bearer token for a server started with one (default: $CNNSERVE_AUTH_TOKEN)",
    )
    return p


def format_table(paths: Sequence[Path], results: Sequence[Classification]) -> str:
    """A readable table: one block of rows per image, best class first."""
    rows = [("image", "rank", "class", "label", "score")]
    for path, result in zip(paths, results, strict=True):
        for rank, c in enumerate(result.classes, 1):
            rows.append((str(path) if rank == 1 else "", str(rank), str(c.index), c.label, f"{c.score:.4f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            cell.ljust(w) if i in (0, 3) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def to_json(paths: Sequence[Path], results: Sequence[Classification]) -> str:
    """Machine-readable output: one object per image with the model that answered and its classes."""
    return json.dumps(
        {
            "results": [
                {
                    "image": str(path),
                    "model": result.model,
                    "version": result.version,
                    "classes": [
                        {"index": c.index, "label": c.label, "score": c.score} for c in result.classes
                    ],
                }
                for path, result in zip(paths, results, strict=True)
            ],
        },
        indent=2,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return the exit status."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f"--top-k is {args.top_k}; expected >= 1")
    try:
        images = [path.read_bytes() for path in args.images]
    except OSError as exc:
        print(f"error: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    tls = args.tls or args.root_certificates or args.client_key or args.client_cert
    try:
        with InferenceClient(
            args.server,
            timeout=args.timeout,
            ssl=bool(tls),
            root_certificates=args.root_certificates,
            private_key=args.client_key,
            certificate_chain=args.client_cert,
            token=args.token,
            retry=RetryPolicy.from_retries(args.retries),
        ) as client:
            results = client.classify(images, model=args.model, top_k=args.top_k, version=args.version)
    except InferenceServerError as exc:
        if exc.local:  # refused before sending: a bad argument, not the server's answer
            print(f"error: {exc.message}", file=sys.stderr)
            return 2
        print(f"error: {exc.status}: {exc.message}", file=sys.stderr)
        return 1
    print(to_json(args.images, results) if args.json else format_table(args.images, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
