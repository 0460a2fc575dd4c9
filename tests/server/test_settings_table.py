"""docs/server.md's flag table is what server/settings.py renders (scripts/settings_table.py)."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from server.settings import Settings, env_var, get_args_parser, options, settings_table

ROOT = Path(__file__).resolve().parents[2]


def _script() -> ModuleType:
    # scripts/ is not a package; load the script by its path.
    path = ROOT / "scripts" / "settings_table.py"
    spec = importlib.util.spec_from_file_location("settings_table_script", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_doc_table_is_what_the_code_renders() -> None:
    script = _script()
    doc = script.DOC.read_text()
    assert doc.count(script.BEGIN) == 1 and doc.count(script.END) == 1
    assert script.rewritten(doc) == doc, (
        "docs/server.md's flag table is out of date: run python scripts/settings_table.py"
    )


def test_table_has_one_row_per_option_in_parser_order() -> None:
    parser = get_args_parser()
    rows = settings_table(parser).splitlines()[2:]
    cells = [row.split(" | ")[:2] for row in rows]
    flags = [flag.removeprefix("| `").split("`")[0].split(" ")[0] for flag, _ in cells]
    assert flags == [a.option_strings[-1] for a in options(parser)]
    assert [env for _, env in cells] == [f"`{env_var(a)}`" for a in options(parser)]
    # Argument groups included, --help left out: every long option there is, once.
    every = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    assert sorted(flags) == sorted(set(every) - {"--help"})
    assert "security and limits" in {g.title for g in parser._action_groups}
    assert "--max-queue-bytes" in flags  # the last option of that group


def test_table_renders_unset_booleans_and_the_help_text() -> None:
    table = settings_table()
    assert "| `--port` | `CNNSERVE_PORT` | `8001` | gRPC port (0: any free port) |" in table
    assert "| `--http-port` | `CNNSERVE_HTTP_PORT` | `8000` |" in table
    assert "| `--greedy-batching [0/1]` | `CNNSERVE_GREEDY_BATCHING` | `1` |" in table
    assert "| `--tls-cert` | `CNNSERVE_TLS_CERT` | *unset* |" in table
    assert "| `--grace-period` | `CNNSERVE_GRACE_PERIOD` | `10` |" in table
    assert "auto \\| cpu" in table  # a | in a help text does not split the row


def test_every_option_is_a_settings_field() -> None:
    # settings_from_args passes the parsed namespace to Settings(**...) as it is.
    fields = {f.name for f in dataclasses.fields(Settings)}
    dests = {a.dest for a in options(get_args_parser())}
    assert dests - {"auth_token_file"} == fields
