"""docs/server.md's error table says what server/errors.py does: each status's HTTP code."""

from __future__ import annotations

import re
from pathlib import Path

from server.errors import Status

DOC = Path(__file__).resolve().parents[2] / "docs" / "server.md"


def test_error_table_http_codes_are_the_server_statuses() -> None:
    section = DOC.read_text().split("## Errors", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([A-Z_]+)` \| (\d{3}) \|", section, re.M)
    assert len(rows) >= 9, rows
    for name, http in rows:
        assert Status[name].http == int(http), f"docs/server.md says {name} is HTTP {http}"
    assert {name for name, _ in rows} == {s.name for s in Status} - {"OK"}
