"""The server's batch counters, read from its Prometheus endpoint(s) with prometheus_client's parser."""

from __future__ import annotations

import logging
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

logger = logging.getLogger(__name__)

#: Counter families (the parser names a counter without its ``_total`` suffix).
INFERENCE_METRIC = "cnnserve_inference_count"
EXECUTION_METRIC = "cnnserve_execution_count"


def parse_counters(text: str, model: str) -> tuple[float, float]:
    """(samples computed, batches executed) for ``model`` in one Prometheus text exposition.

    A model the exposition does not mention (not loaded, or nothing computed yet) has (0, 0).
    """
    totals = {INFERENCE_METRIC: 0.0, EXECUTION_METRIC: 0.0}
    for family in text_string_to_metric_families(text):
        if family.name not in totals:
            continue
        # The text format gives each counter's `_created` timestamp a family of its own, so
        # these families hold only the `_total` samples, one per model.
        for sample in family.samples:
            if sample.labels.get("model") == model:
                totals[family.name] += sample.value
    return totals[INFERENCE_METRIC], totals[EXECUTION_METRIC]


def scrape_counters(url: str, model: str, timeout: float = 5.0) -> tuple[float, float] | None:
    """(samples computed, batches executed) for ``model``, or None if an endpoint cannot be read.

    ``url`` may list several endpoints separated by commas (one per server worker): their
    counters are added up.
    """
    inferences = executions = 0.0
    for one in url.split(","):
        try:
            with urllib.request.urlopen(one.strip(), timeout=timeout) as response:
                text = response.read().decode()
        except OSError as exc:
            logger.warning("cannot read metrics from %s: %s", one, exc)
            return None
        samples, batches = parse_counters(text, model)
        inferences += samples
        executions += batches
    return inferences, executions
