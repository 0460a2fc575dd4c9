"""The server's settings: one frozen object built once from flags and environment.

Every flag ``--some-flag`` can also come from the environment variable
``CNNSERVE_SOME_FLAG``; a flag given on the command line wins over the
environment, which wins over the default. A bad value, from either, stops
``python -m server`` with one line naming the flag or variable, the value and
what was expected (``--port 99999: expected an integer from 0 to 65535 ...``), exit 2.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from modelrepo.repository import VERSION, validate_model_name

ENV_PREFIX = "CNNSERVE_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MiB = 1 << 20
MAX_PORT = 65535


@dataclass(frozen=True)
class ModelSelection:
    """A model to load at start-up, optionally pinned to one version."""

    name: str
    version: int | None = None

    @classmethod
    def parse(cls, text: str) -> ModelSelection:
        """Parse ``name`` or ``name:version``."""
        name, sep, version = text.strip().partition(":")
        validate_model_name(name)
        if not sep:
            return cls(name)
        if not VERSION.fullmatch(version):
            raise ValueError(f"model {text!r} has version {version!r}; expected a positive integer")
        return cls(name, int(version))


@dataclass(frozen=True)
class Settings:
    """Everything the server is configured with; see ``docs/server.md``."""

    repository: Path = Path("model_repository")
    host: str = "0.0.0.0"
    port: int = 8001
    #: KServe v2 HTTP/REST and the model page; 0 picks a free port, a negative value disables it.
    http_port: int = 8000
    #: 0 picks a free port; a negative value disables the metrics endpoint.
    metrics_port: int = 8002
    device: str = "auto"
    #: Models to load at start-up; empty means every model in the repository.
    models: tuple[ModelSelection, ...] = ()
    #: Model used by the image service when a request names none; None means the first loaded.
    default_model: str | None = None
    # Batching overrides; None keeps each model's own config.json value.
    max_batch_size: int | None = None
    max_queue_delay_us: int | None = None
    max_queue_size: int | None = None
    instances: int | None = None
    #: ONNX Runtime intra-op threads per instance; 0 picks min(4, cores // instances), or 1 for a
    #: model whose batch of one runs in under a millisecond.
    intra_op_threads: int = 0
    #: A request to a model that has been serving one request at a time runs at once instead of
    #: waiting max_queue_delay_us for company (off: Triton's behaviour, every batch waits).
    greedy_batching: bool = True
    #: Server processes sharing the gRPC port (SO_REUSEPORT); worker i serves metrics on
    #: metrics_port + i.
    workers: int = 1
    #: Seconds a stopping server keeps serving, health already NOT_SERVING, before it refuses new
    #: requests: long enough for a health-checking load balancer to stop sending it any.
    shutdown_delay: float = 0.0
    grace_period: float = 10.0
    max_message_bytes: int = 64 * MiB
    max_image_pixels: int = 4096 * 4096
    log_level: str = "INFO"
    log_format: str = "text"
    # -- security and limits (docs/reliability.md) --
    #: PEM server certificate chain and key; both set: the gRPC port speaks TLS only.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: PEM CA bundle; set: clients must present a certificate signed by it (mutual TLS).
    tls_client_ca: Path | None = None
    #: Bearer token every RPC except health checks must carry; None: no authentication.
    #: Kept out of repr so it never reaches a log line.
    auth_token: str | None = field(default=None, repr=False)
    #: Whether RepositoryModelLoad / RepositoryModelUnload may be called at all.
    allow_model_control: bool = False
    #: HTTP/2 streams one client connection may have open at once.
    max_concurrent_streams: int = 128
    #: RPCs in progress across all connections before new ones get RESOURCE_EXHAUSTED; 0: no limit.
    max_concurrent_rpcs: int = 1024
    #: Requests one ModelStreamInfer stream may have outstanding (running or unread answers).
    max_stream_inflight: int = 64
    #: Input bytes one model may hold queued (waiting for a batch) before RESOURCE_EXHAUSTED.
    max_queue_bytes: int = 256 * MiB

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers is {self.workers}; expected >= 1")
        if not 0 <= self.port <= MAX_PORT or self.metrics_port > MAX_PORT or self.http_port > MAX_PORT:
            raise ValueError(
                f"port is {self.port}, http_port {self.http_port} and metrics_port {self.metrics_port}; "
                f"expected 0-{MAX_PORT}"
            )
        if self.intra_op_threads < 0:
            raise ValueError(f"intra_op_threads is {self.intra_op_threads}; expected >= 0 (0: automatic)")
        if self.max_image_pixels < 1:
            raise ValueError(f"max_image_pixels is {self.max_image_pixels}; expected >= 1")
        for name in ("max_batch_size", "max_queue_size", "instances"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} is {value}; expected >= 1")
        if self.max_queue_delay_us is not None and self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us is {self.max_queue_delay_us}; expected >= 0")
        if not self.grace_period >= 0 or math.isinf(self.grace_period):
            raise ValueError(f"grace_period is {self.grace_period}; expected >= 0")
        if not self.shutdown_delay >= 0 or math.isinf(self.shutdown_delay):
            raise ValueError(f"shutdown_delay is {self.shutdown_delay}; expected >= 0")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format is {self.log_format!r}; expected 'text' or 'json'")
        if self.max_message_bytes < 1 * MiB:
            raise ValueError(f"max_message_bytes is {self.max_message_bytes}; expected >= {MiB}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                f"tls_cert is {self.tls_cert} and tls_key is {self.tls_key}; expected both or neither"
            )
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key (client certificates need TLS)")
        if self.auth_token is not None and not _valid_token(self.auth_token):
            raise ValueError(
                "auth_token is empty or holds characters outside printable ASCII (or spaces); "
                f"expected at least {MIN_TOKEN_LENGTH} of them"
            )
        for name in ("max_concurrent_streams", "max_stream_inflight", "max_queue_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} is {getattr(self, name)}; expected >= 1")
        if self.max_concurrent_rpcs < 0:
            raise ValueError(
                f"max_concurrent_rpcs is {self.max_concurrent_rpcs}; expected >= 0 (0: no limit)"
            )

    @property
    def tls(self) -> bool:
        """Whether the gRPC port speaks TLS."""
        return self.tls_cert is not None


#: A shorter token is refused: it is guessable, and almost surely a configuration mistake.
MIN_TOKEN_LENGTH = 16


def _valid_token(token: str) -> bool:
    # Metadata values must be printable ASCII; a space would split "Bearer <token>".
    return len(token) >= MIN_TOKEN_LENGTH and all("!" <= c <= "~" for c in token)


# -- converters: each flag's (and its variable's) text to a value, or "VALUE: expected ..." --


def _bad(text: str, expected: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"{shlex.quote(text)}: expected {expected}")


def _integer(low: int | None = None, high: int | None = None, note: str = "") -> Callable[[str], int]:
    """A converter to an integer in ``low..high`` (None: unbounded); ``note`` explains special values."""
    if low is not None and high is not None:
        expected = f"an integer from {low} to {high}"
    elif low is not None:
        expected = f"an integer >= {low}"
    else:
        expected = f"an integer <= {high}"
    if note:
        expected += f" ({note})"

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise _bad(text, expected) from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise _bad(text, expected)
        return value

    return integer


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise _bad(text, "a number of seconds >= 0")
    return value


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise _bad(text, "a boolean: 1/0, true/false, yes/no or on/off")


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise _bad(text, f"one of {', '.join(LOG_LEVELS)} (any case)")
    return level


def _log_format(text: str) -> str:
    if text not in ("text", "json"):
        raise _bad(text, "text or json")
    return text


def _model_name(text: str) -> str:
    if not text:  # CNNSERVE_DEFAULT_MODEL= : no default model
        return text
    try:
        return validate_model_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{shlex.quote(text)}: {exc}") from None


def _model_list(text: str) -> tuple[ModelSelection, ...]:
    try:
        return tuple(ModelSelection.parse(m) for m in text.split(",") if m.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{shlex.quote(text)}: {exc}") from None


_PORT = _integer(0, MAX_PORT, "0: any free port")
_AT_LEAST_1 = _integer(1)
_AT_LEAST_0 = _integer(0)


def read_token_file(path: Path) -> str:
    """The token in ``path`` (surrounding whitespace, e.g. a final newline, removed)."""
    try:
        return Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"expected a readable file holding the token ({why})") from None


def get_args_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m server``."""
    d = Settings()
    p = argparse.ArgumentParser(
        prog="python -m server",
        # A bad value is then one short usage line and one error line, not the whole synopsis.
        usage="%(prog)s [options]",
        # Bad values raise, so settings_from_args can word the error (see _error_line).
        exit_on_error=False,
        description="Serve a model repository over KServe v2 gRPC and HTTP/REST on ONNX Runtime. "
        f"Every flag can also be set as an environment variable {ENV_PREFIX}<FLAG> "
        f"(e.g. {ENV_PREFIX}PORT=8001).",
    )
    p.add_argument("--repository", type=Path, default=d.repository, help="model repository directory")
    p.add_argument("--host", default=d.host, help="address to bind")
    p.add_argument("--port", type=_PORT, default=d.port, help="gRPC port (0: any free port)")
    p.add_argument(
        "--http-port",
        type=_integer(None, MAX_PORT, "0: any free port, negative: no HTTP endpoint"),
        default=d.http_port,
        help="HTTP/REST port and the model page (0: any, <0: disabled)",
    )
    p.add_argument(
        "--metrics-port",
        type=_integer(None, MAX_PORT, "0: any free port, negative: no metrics endpoint"),
        default=d.metrics_port,
        help="Prometheus port (0: any, <0: disabled)",
    )
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--models",
        type=_model_list,
        default=d.models,
        help="comma-separated models to load, each NAME or NAME:VERSION (default: all)",
    )
    p.add_argument(
        "--default-model",
        type=_model_name,
        default=d.default_model,
        help="model for image requests that name none (default: the first loaded)",
    )
    p.add_argument(
        "--max-batch-size",
        type=_AT_LEAST_1,
        default=d.max_batch_size,
        help="override every model's max batch (default: each model's config)",
    )
    p.add_argument(
        "--max-queue-delay-us",
        type=_AT_LEAST_0,
        default=d.max_queue_delay_us,
        help="override max queue delay (default: each model's config)",
    )
    p.add_argument(
        "--max-queue-size",
        type=_AT_LEAST_1,
        default=d.max_queue_size,
        help="override queue bound in requests (default: each model's config)",
    )
    p.add_argument(
        "--instances",
        type=_AT_LEAST_1,
        default=d.instances,
        help="override sessions per model (default: each model's config)",
    )
    p.add_argument(
        "--intra-op-threads",
        type=_integer(0, None, "0: automatic"),
        default=d.intra_op_threads,
        help="ONNX Runtime threads per session (0: automatic, each worker's share of the cores)",
    )
    p.add_argument(
        "--greedy-batching",
        type=_flag,
        nargs="?",
        const=True,
        default=d.greedy_batching,
        help="run a lone request at once instead of waiting the queue delay for company (default on)",
    )
    p.add_argument(
        "--workers",
        type=_AT_LEAST_1,
        default=d.workers,
        help="server processes sharing the gRPC and HTTP ports (SO_REUSEPORT); worker i serves metrics "
        "on port + i",
    )
    p.add_argument(
        "--shutdown-delay",
        type=_seconds,
        default=d.shutdown_delay,
        help="seconds to keep serving after a stop signal, health NOT_SERVING, before refusing new requests "
        "(so a health-checking load balancer stops sending first; default 0)",
    )
    p.add_argument("--grace-period", type=_seconds, default=d.grace_period, help="seconds to drain on stop")
    p.add_argument(
        "--max-message-bytes",
        type=_integer(MiB, None, "1 MiB"),
        default=d.max_message_bytes,
        help="gRPC message and HTTP request body cap",
    )
    p.add_argument(
        "--max-image-pixels", type=_AT_LEAST_1, default=d.max_image_pixels, help="decoded image cap"
    )
    p.add_argument(
        "--log-level",
        type=_log_level,
        default=d.log_level,
        metavar="{" + ",".join(LOG_LEVELS) + "}",
        help=f"{', '.join(LOG_LEVELS[:-1])} or {LOG_LEVELS[-1]} (any case)",
    )
    p.add_argument(
        "--log-format",
        type=_log_format,
        default=d.log_format,
        metavar="{text,json}",
        help="text, or json (one object per line)",
    )
    sec = p.add_argument_group("security and limits")
    sec.add_argument(
        "--tls-cert", type=Path, default=d.tls_cert, help="PEM server certificate (chain); enables TLS"
    )
    sec.add_argument("--tls-key", type=Path, default=d.tls_key, help="PEM private key of --tls-cert")
    sec.add_argument(
        "--tls-client-ca",
        type=Path,
        default=d.tls_client_ca,
        help="PEM CA; require client certificates it signed",
    )
    sec.add_argument(
        "--auth-token",
        default=d.auth_token,
        help="require 'authorization: Bearer TOKEN' on every RPC and HTTP request except health (prefer the "
        "environment variable or --auth-token-file: flags show up in ps)",
    )
    sec.add_argument("--auth-token-file", type=Path, default=None, help="file holding the token")
    sec.add_argument(
        "--allow-model-control",
        type=_flag,
        nargs="?",
        const=True,
        default=d.allow_model_control,
        help="enable RepositoryModelLoad/Unload and HTTP load/unload (off: PERMISSION_DENIED, 403)",
    )
    sec.add_argument(
        "--max-concurrent-streams",
        type=_AT_LEAST_1,
        default=d.max_concurrent_streams,
        help="HTTP/2 streams per client connection",
    )
    sec.add_argument(
        "--max-concurrent-rpcs",
        type=_integer(0, None, "0: no limit"),
        default=d.max_concurrent_rpcs,
        help="RPCs in progress server-wide before RESOURCE_EXHAUSTED; HTTP: connections before 503 "
        "(0: no limit)",
    )
    sec.add_argument(
        "--max-stream-inflight",
        type=_AT_LEAST_1,
        default=d.max_stream_inflight,
        help="outstanding requests per ModelStreamInfer stream",
    )
    sec.add_argument(
        "--max-queue-bytes",
        type=_AT_LEAST_1,
        default=d.max_queue_bytes,
        help="input bytes each model may hold queued before RESOURCE_EXHAUSTED",
    )
    return p


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's options in declaration order, argument groups included, ``--help`` left out."""
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def env_var(action: argparse.Action) -> str:
    """The environment variable that sets an option: ``CNNSERVE_<DEST>``."""
    return ENV_PREFIX + action.dest.upper()


def _typed(value: object) -> str:
    """A default as one would type it on the command line or in the variable."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def settings_table(parser: argparse.ArgumentParser | None = None) -> str:
    """The Markdown table of every option of ``python -m server`` (docs/server.md's flag table).

    One row per option in parser order: flag, environment variable, default and help text.
    An option without a default (None or empty) shows *unset*.
    """
    parser = parser or get_args_parser()
    formatter = parser._get_formatter()
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for action in options(parser):
        flag = action.option_strings[-1] + (" [0/1]" if action.type is _flag else "")
        value = action.default
        if value is None or value == () or value == "":
            default = "*unset*"
        else:
            default = f"`{_typed(value)}`"
            if action.dest.endswith("_bytes") and value % MiB == 0:
                default += f" ({value // MiB} MiB)"
        meaning = formatter._expand_help(action) if action.help else ""
        meaning = " ".join(meaning.split()).replace("|", "\\|")
        rows.append(f"| `{flag}` | `{env_var(action)}` | {default} | {meaning} |")
    return "\n".join(rows) + "\n"


def _env_defaults(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> dict[str, str]:
    """Let CNNSERVE_* variables replace the parser's defaults (flags still win).

    Returns the variable each replaced default came from, by destination.
    """
    used = {}
    for action in options(parser):
        key = env_var(action)
        if key in environ:
            raw = environ[key]
            try:
                value = action.type(raw) if callable(action.type) else raw
            except (ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"{key}={exc}")
            parser.set_defaults(**{action.dest: value})
            used[action.dest] = key
    return used


def _error_line(exc: argparse.ArgumentError) -> str:
    """``--flag VALUE: expected ...`` for a bad value; argparse's own wording for anything else."""
    if isinstance(exc.__context__, argparse.ArgumentTypeError):
        return f"{exc.argument_name} {exc.message}"
    return str(exc)


def settings_from_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build the :class:`Settings` from command-line arguments and the environment."""
    parser = get_args_parser()
    from_env = _env_defaults(parser, os.environ if environ is None else environ)
    try:
        args = parser.parse_args(argv)
    except argparse.ArgumentError as exc:
        parser.error(_error_line(exc))
    try:
        token = args.auth_token
        if args.auth_token_file is not None:
            if token is not None:
                raise ValueError("give the auth token either directly or as a file, not both")
            # A default that is still the very object the variable produced came from the variable.
            env = from_env.get("auth_token_file")
            source = (
                f"{env}=" if env and args.auth_token_file is parser.get_default("auth_token_file") else ""
            )
            try:
                token = read_token_file(args.auth_token_file)
            except ValueError as exc:
                name = source or "--auth-token-file "
                raise ValueError(f"{name}{shlex.quote(str(args.auth_token_file))}: {exc}") from None
        # Every option's destination is the Settings field of that name, except the token file,
        # which only supplies auth_token.
        values = dict(vars(args))
        del values["auth_token_file"]
        return Settings(**{**values, "auth_token": token, "default_model": args.default_model or None})
    except ValueError as exc:
        parser.error(str(exc))
