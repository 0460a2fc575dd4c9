#!/usr/bin/env python3
"""Rewrite the flag table of docs/server.md from the server's own parser (server/settings.py).

Usage: ``python scripts/settings_table.py [--check]``. Replaces what lies between the
``<!-- settings-table:begin -->`` and ``<!-- settings-table:end -->`` markers with
``server.settings.settings_table()``; ``--check`` writes nothing and exits 1 when the document
is out of date. tests/server/test_settings_table.py fails until the table is regenerated.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.settings import settings_table  # noqa: E402  (after the path set-up)

DOC = ROOT / "docs" / "server.md"
BEGIN = "<!-- settings-table:begin -->"
END = "<!-- settings-table:end -->"


def write_between(text: str, begin: str, end: str, body: str) -> str:
    """``text`` with what lies between the two markers replaced by ``body``; both must be there."""
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"expected {begin} followed by {end}")
    return text[: start + len(begin)] + "\n" + body + text[stop:]


def rewritten(text: str) -> str:
    """The document ``text`` with its flag table as the code renders it now."""
    return write_between(text, BEGIN, END, settings_table())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the document is out of date")
    args = parser.parse_args(argv)
    text = DOC.read_text()
    new = rewritten(text)
    if args.check:
        if new != text:
            print(f"{DOC.relative_to(ROOT)}: the flag table is out of date; run {Path(__file__).name}")
            return 1
        return 0
    if new != text:
        DOC.write_text(new)
        print(f"{DOC.relative_to(ROOT)}: flag table rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
