"""The batch counters clients.bench reads, parsed from a real server's /metrics text."""

from __future__ import annotations

import urllib.request

import numpy as np
from clienttest_support import SIDE, RunningServer

from clients import InferenceClient
from clients.bench.metrics import parse_counters, scrape_counters


def metrics_text(server: RunningServer) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text: str = response.read().decode()
    return text


def test_counters_follow_what_the_server_computed(server: RunningServer) -> None:
    before = parse_counters(metrics_text(server), "tiny")
    with InferenceClient(server.address, timeout=10) as client:
        for _ in range(5):  # one after another: each request is a batch of its own
            client.infer("tiny", np.zeros((2, 1, SIDE, SIDE), dtype=np.float32))
    text = metrics_text(server)
    after = parse_counters(text, "tiny")
    assert (after[0] - before[0], after[1] - before[1]) == (10.0, 5.0)
    # The exposition also holds each counter's `_created` timestamp, and the other model's counts.
    assert 'cnnserve_inference_count_created{model="tiny"}' in text
    assert 'model="slow"' in text


def test_a_model_the_server_does_not_mention_has_no_counts(server: RunningServer) -> None:
    assert parse_counters(metrics_text(server), "absent") == (0.0, 0.0)
    assert parse_counters(metrics_text(server), "tin") == (0.0, 0.0)  # a label prefix is not a match


def test_several_endpoints_add_up_and_an_unreachable_one_gives_none(server: RunningServer) -> None:
    with InferenceClient(server.address, timeout=10) as client:
        client.infer("tiny", np.zeros((3, 1, SIDE, SIDE), dtype=np.float32))
    one = scrape_counters(server.metrics_url, "tiny")
    both = scrape_counters(f"{server.metrics_url}, {server.metrics_url}", "tiny")
    assert one is not None and both is not None and one[0] >= 3
    assert both == (2 * one[0], 2 * one[1])
    assert scrape_counters(f"{server.metrics_url},http://127.0.0.1:9/metrics", "tiny", timeout=2) is None
