"""The table of malformed requests (docs/reliability.md is generated from the same list)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from reliability_testlib import BAD_INPUTS, BadInput, ServerThread, call_case_sync


@pytest.fixture(scope="module")
def channel(bad_input_server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(
        bad_input_server.address, options=[("grpc.max_send_message_length", 8 << 20)]
    ) as channel:
        yield channel


def test_case_ids_are_unique() -> None:
    """Every bad-input case has its own id."""
    ids = [case.id for case in BAD_INPUTS]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c.id for c in BAD_INPUTS])
def test_bad_input(case: BadInput, channel: grpc.Channel) -> None:
    """Each bad request of the table gets its documented status and a message naming the problem, and a good
    request right after succeeds.
    """
    code, details = call_case_sync(channel, case)
    assert code == case.code, f"{case.id}: got {code.name}: {details}"
    assert case.expect in details, f"{case.id}: {details!r} lacks {case.expect!r}"
    assert "Traceback" not in details and "internal server error" not in details
    # The server keeps serving: a good request right after every bad one succeeds.
    good = next(c for c in BAD_INPUTS if c.id == "unknown-parameters")
    assert call_case_sync(channel, good) == (grpc.StatusCode.OK, "")


def test_still_serving_after_the_table(channel: grpc.Channel) -> None:
    """After the whole bad-input table the models still serve and health says SERVING."""
    for case in BAD_INPUTS:
        call_case_sync(channel, case)
    health = health_pb2_grpc.HealthStub(channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service="tiny"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
