"""The clients' retry policy: gRPC's own retries, for the calls that are safe to send twice.

Off unless a client is given a :class:`RetryPolicy`. Then gRPC itself (a service config
``retryPolicy`` on the channel) sends again an attempt that ended with one of the policy's codes
before any answer came: by default only UNAVAILABLE, which is what a replica that is shutting
down answers and what a proxy answers when its upstream connection was reset, so the request
can go to another replica. Inference has no side effects, so sending it twice is safe; loading
and unloading models change the server, and streams cannot be replayed, so they never are
(:data:`RETRIED_METHODS`). The call's one deadline covers all its attempts and the waits
between them.

gRPC does not tell the client how many attempts a call took (grpcio 1.85 shows
``grpc-previous-rpc-attempts`` to the server only, on each retried attempt's request
headers): count retries where those requests arrive (see docs/clients.md, "Retries").
"""

from __future__ import annotations

import argparse
import json
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from clients.errors import described, invalid_argument

#: Most attempts gRPC makes of one call, the first included (it caps ``maxAttempts`` there).
MAX_ATTEMPTS = 5

#: The calls gRPC may retry, by service: unary, and with no effect beyond their answer.
#: Never retried: ModelStreamInfer and Health/Watch (streams), RepositoryModelLoad and
#: RepositoryModelUnload (they change what the server serves). Health/List would be safe, but
#: the server does not serve it and the clients do not call it.
RETRIED_METHODS: Mapping[str, tuple[str, ...]] = {
    "inference.GRPCInferenceService": (
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelConfig",
        "ModelStatistics",
        "ModelInfer",
        "RepositoryIndex",
    ),
    "cnnserve.v1.ImageClassification": ("Classify",),
    "grpc.health.v1.Health": ("Check",),
}

#: Shortest backoff. grpcio 1.85 sometimes never sends a retry due within about a millisecond
#: (the call then waits out its deadline: grpc/grpc#41036), and a replica that refused a call is
#: not back within 10 ms anyway.
MIN_BACKOFF = 0.01


def _seconds(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise invalid_argument(f"{what} is {described(value)}; expected seconds >= {MIN_BACKOFF}")
    if value < MIN_BACKOFF:
        raise invalid_argument(f"{what} is {value}; expected seconds >= {MIN_BACKOFF}")
    return float(value)


def _duration(seconds: float) -> str:
    """A protobuf Duration in the service config's JSON form, e.g. ``"0.1s"``."""
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


@dataclass(frozen=True)
class RetryPolicy:
    """How gRPC retries a call that was refused with one of ``retryable_codes``.

    ``max_attempts`` counts the first attempt (2 to 5: gRPC makes at most 5). Retry n waits
    about ``min(initial_backoff * backoff_multiplier ** (n - 1), max_backoff)`` seconds (gRPC
    adds jitter of ±20%); backoffs are at least :data:`MIN_BACKOFF`, the multiplier at least 1.
    Bad values raise :class:`~clients.errors.InvalidArgumentError`.
    """

    max_attempts: int = 3
    initial_backoff: float = 0.1
    max_backoff: float = 1.0
    backoff_multiplier: float = 2.0
    retryable_codes: tuple[grpc.StatusCode, ...] = (grpc.StatusCode.UNAVAILABLE,)

    def __post_init__(self) -> None:
        attempts = self.max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, numbers.Integral):
            raise invalid_argument(
                f"max_attempts is {described(attempts)}; expected an int from 2 to {MAX_ATTEMPTS}"
            )
        if not 2 <= attempts <= MAX_ATTEMPTS:
            raise invalid_argument(
                f"max_attempts is {attempts}; expected 2 to {MAX_ATTEMPTS} (the first attempt counts; "
                f"gRPC makes at most {MAX_ATTEMPTS}; retry=None retries nothing)"
            )
        initial = _seconds(self.initial_backoff, "initial_backoff")
        if _seconds(self.max_backoff, "max_backoff") < initial:
            raise invalid_argument(
                f"max_backoff is {self.max_backoff}; expected seconds >= initial_backoff ({initial})"
            )
        multiplier = self.backoff_multiplier
        # At least 1, so that no later wait is shorter than MIN_BACKOFF.
        if isinstance(multiplier, bool) or not isinstance(multiplier, numbers.Real) or not multiplier >= 1:
            raise invalid_argument(f"backoff_multiplier is {described(multiplier)}; expected a number >= 1")
        if not math.isfinite(multiplier):
            raise invalid_argument(f"backoff_multiplier is {multiplier}; expected a finite number >= 1")
        codes = self.retryable_codes
        if not isinstance(codes, Iterable) or isinstance(codes, str):
            raise invalid_argument(
                f"retryable_codes is {described(codes)}; expected a tuple of grpc.StatusCode"
            )
        codes = tuple(codes)
        for code in codes:
            if not isinstance(code, grpc.StatusCode):
                raise invalid_argument(
                    f"retryable code {described(code)} is not a grpc.StatusCode; "
                    "expected e.g. grpc.StatusCode.UNAVAILABLE"
                )
            if code is grpc.StatusCode.OK:
                raise invalid_argument(
                    "retryable code OK is a success; expected failure codes such as UNAVAILABLE"
                )
        if not codes:
            raise invalid_argument("retryable_codes is empty; expected at least one grpc.StatusCode")
        # Plain values, so that numpy scalars and lists become JSON and hash like the rest.
        object.__setattr__(self, "max_attempts", int(attempts))
        object.__setattr__(self, "initial_backoff", initial)
        object.__setattr__(self, "max_backoff", float(self.max_backoff))
        object.__setattr__(self, "backoff_multiplier", float(multiplier))
        object.__setattr__(self, "retryable_codes", codes)

    @classmethod
    def from_retries(cls, retries: int) -> RetryPolicy | None:
        """The policy of the CLIs' ``--retries N``: N retries after the first attempt; 0 is None (off)."""
        return cls(max_attempts=retries + 1) if retries else None

    def service_config(self) -> str:
        """The gRPC service config (JSON) that applies this policy to :data:`RETRIED_METHODS`."""
        names = [
            {"service": service, "method": method}
            for service, methods in RETRIED_METHODS.items()
            for method in methods
        ]
        policy = {
            "maxAttempts": self.max_attempts,
            "initialBackoff": _duration(self.initial_backoff),
            "maxBackoff": _duration(self.max_backoff),
            "backoffMultiplier": self.backoff_multiplier,
            "retryableStatusCodes": [code.name for code in self.retryable_codes],
        }
        return json.dumps({"methodConfig": [{"name": names, "retryPolicy": policy}]})

    def channel_options(self, max_message_bytes: int) -> list[tuple[str, Any]]:
        """The channel options that turn the policy on (added to the clients' usual ones)."""
        return [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", self.service_config()),
            # Ours is the only service config: none from DNS TXT records. gRPC's DNS resolvers
            # already skip them unless this is 0; saying so keeps a changed default from
            # replacing the policy with whatever a DNS zone holds.
            ("grpc.service_config_disable_resolution", 1),
            # gRPC retries only a call whose request it still holds, and by default holds
            # 256 KiB: a bigger request (most image batches) would never be retried.
            ("grpc.per_rpc_retry_buffer_size", max_message_bytes),
        ]


def _retries(text: str) -> int:
    try:
        retries = int(text)
    except ValueError:
        retries = -1
    if not 0 <= retries < MAX_ATTEMPTS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of retries; expected 0 (off) to {MAX_ATTEMPTS - 1} "
            f"(gRPC makes at most {MAX_ATTEMPTS} attempts)"
        )
    return retries


def add_retries_argument(parser: argparse.ArgumentParser) -> None:
    """The CLIs' ``--retries N`` flag (see :meth:`RetryPolicy.from_retries`)."""
    parser.add_argument(
        "--retries",
        type=_retries,
        default=0,
        metavar="N",
        help=f"retry a call refused with UNAVAILABLE up to N times (0 = off, the default; "
        f"at most {MAX_ATTEMPTS - 1}); see docs/clients.md, 'Retries'",
    )
