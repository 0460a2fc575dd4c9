"""``python -m clients.classify`` and ``python -m clients.bench`` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from clienttest_support import RunningServer

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_classify_prints_a_table(server: RunningServer, image_files: dict[str, Path]) -> None:
    white, black = image_files["white"], image_files["black"]
    done = _run(
        "clients.classify",
        "--server",
        server.address,
        "--model",
        "tiny",
        str(white),
        str(black),
        "--top-k",
        "2",
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["image", "rank", "class", "label", "score"]
    assert set(lines[1]) <= {"-", " "}
    rows = [line.split() for line in lines[2:]]
    assert rows[0][:4] == [str(white), "1", "0", "bright"]
    assert rows[1][:3] == ["2", "2", "neutral"]  # the second class of the same image: no path repeated
    assert rows[2][:4] == [str(black), "1", "1", "dark"]
    assert len(rows) == 4


def test_classify_json(server: RunningServer, image_files: dict[str, Path]) -> None:
    done = _run(
        "clients.classify", "--server", server.address, "--json", str(image_files["black"]), "--top-k", "3"
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    [result] = data["results"]
    assert result["image"] == str(image_files["black"])
    assert (result["model"], result["version"]) == ("tiny", "1")  # the server's default model answered
    assert result["classes"][0]["label"] == "dark"
    assert len(result["classes"]) == 3
    assert abs(sum(c["score"] for c in result["classes"]) - 1.0) < 1e-5


def test_classify_reports_server_errors(server: RunningServer, image_files: dict[str, Path]) -> None:
    done = _run("clients.classify", "--server", server.address, "--model", "nope", str(image_files["white"]))
    assert done.returncode == 1
    assert done.stderr.startswith("error: NOT_FOUND:") and "nope" in done.stderr
    missing = _run("clients.classify", "--server", server.address, "/nonexistent/image.png")
    assert missing.returncode == 2 and "/nonexistent/image.png" in missing.stderr


def test_bench_counts_add_up(server: RunningServer, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    plot = tmp_path / "bench.png"
    done = _run(
        "clients.bench",
        "--server",
        server.address,
        "--model",
        "tiny",
        "--concurrency",
        "1,8",
        "--requests",
        "120",
        "--warmup",
        "0",
        "--batch-size",
        "2",
        "--metrics-url",
        server.metrics_url,
        "--json",
        str(out),
        "--plot",
        str(plot),
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert data["command"].startswith("python -m clients.bench --server")
    levels = data["levels"]
    assert [lvl["concurrency"] for lvl in levels] == [1, 8]
    for level in levels:
        assert level["sent"] == 120
        assert level["sent"] == level["succeeded"] + sum(level["failed"].values())
        assert level["failed"] == {}
        assert level["samples_per_s"] == level["throughput_rps"] * 2
        latency = level["latency_ms"]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
        # The server computed exactly what was sent: 120 requests of 2 samples.
        assert level["server_inferences"] == 240
        assert 1 <= level["server_mean_batch"] <= 16
        assert level["client_cpu_cores"] > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "conc" in done.stdout and "p99 ms" in done.stdout


def test_bench_counts_failures_by_status(server: RunningServer, tmp_path: Path) -> None:
    """Requests to the slow model miss their deadline: every one is counted, none lost."""
    out = tmp_path / "bench.json"
    done = _run(
        "clients.bench",
        "--server",
        server.address,
        "--model",
        "slow",
        "--concurrency",
        "4",
        "--requests",
        "8",
        "--warmup",
        "0",
        "--timeout",
        "0.2",
        "--mode",
        "image",
        "--json",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    [level] = json.loads(out.read_text())["levels"]
    assert level["sent"] == 8
    assert level["succeeded"] + sum(level["failed"].values()) == 8
    assert level["failed"].get("DEADLINE_EXCEEDED", 0) >= 1
    assert "DEADLINE_EXCEEDED" in done.stdout


def test_bench_open_loop_with_two_processes(server: RunningServer, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = _run(
        "clients.bench",
        "--server",
        server.address,
        "--model",
        "tiny",
        "--rate",
        "200",
        "--requests",
        "60",
        "--warmup",
        "0",
        "--processes",
        "2",
        "--json",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    [level] = json.loads(out.read_text())["levels"]
    assert level["mode"] == "open" and level["rate"] == 200
    assert level["sent"] + level["skipped"] == 60
    assert level["sent"] == level["succeeded"] + sum(level["failed"].values())
    # 60 requests at 200/s take about 0.3 s; far longer would mean the schedule was ignored.
    assert 0.2 < level["duration_s"] < 5


def test_bench_refuses_an_unknown_model(server: RunningServer) -> None:
    done = _run("clients.bench", "--server", server.address, "--model", "nope", "--requests", "1")
    assert done.returncode == 1
    assert "NOT_FOUND" in done.stderr


def test_bench_on_streams_counts_add_up(server: RunningServer, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = _run(
        "clients.bench",
        "--server",
        server.address,
        "--model",
        "tiny",
        "--stream",
        "--concurrency",
        "4",
        "--requests",
        "80",
        "--warmup",
        "0",
        "--metrics-url",
        server.metrics_url,
        "--json",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    [level] = json.loads(out.read_text())["levels"]
    assert level["api"] == "stream"
    assert level["sent"] == 80 == level["succeeded"] + sum(level["failed"].values())
    assert level["failed"] == {}
    assert level["server_inferences"] == 80


def test_bench_stream_failures_are_counted(server: RunningServer, tmp_path: Path) -> None:
    """A stream that hits its deadline (the slow model holds requests for 2 s) is a counted failure.

    Each request on a stream carries the stream's deadline, so two correct outcomes race: the
    server's batcher answers a queued request in-stream that it expired (STREAM_ERROR), or
    gRPC ends the stream with DEADLINE_EXCEEDED first. Either way nothing succeeds and every
    request sent is counted under one of those two names.
    """
    out = tmp_path / "bench.json"
    done = _run(
        "clients.bench",
        "--server",
        server.address,
        "--model",
        "slow",
        "--stream",
        "--concurrency",
        "2",
        "--duration",
        "0.3",
        "--warmup",
        "0",
        "--timeout",
        "0.2",
        "--json",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    [level] = json.loads(out.read_text())["levels"]
    assert level["succeeded"] == 0
    assert set(level["failed"]) <= {"DEADLINE_EXCEEDED", "STREAM_ERROR"}, level["failed"]
    assert level["sent"] == 2 == sum(level["failed"].values())
