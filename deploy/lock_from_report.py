"""Turn a ``pip install --dry-run --report -`` JSON report into ``name==version`` pins.

Used to regenerate ``deploy/requirements-serve.txt`` and ``deploy/requirements-gpu.txt``; the
project itself (the report's direct requirement) is left out because the image installs it
from its own wheel after the dependencies, so code changes do not invalidate that layer.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from collections.abc import Sequence


def pins(report: dict[str, object], only: str = "*") -> list[str]:
    """Sorted ``name==version`` lines for every non-direct install in ``report``."""
    installs = report.get("install")
    if not isinstance(installs, list):
        raise ValueError("report has no 'install' list; expected output of pip install --report")
    lines: list[tuple[str, str]] = []
    for item in installs:
        if item.get("is_direct"):
            continue
        name = str(item["metadata"]["name"]).lower().replace("_", "-")
        if fnmatch.fnmatch(name, only):
            lines.append((name, str(item["metadata"]["version"])))
    return [f"{name}=={version}" for name, version in sorted(lines)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="*", help="keep only names matching this glob")
    args = parser.parse_args(argv)
    for line in pins(json.load(sys.stdin), args.only):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
