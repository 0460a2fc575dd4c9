"""``python -m server``: parse settings, set up logging, serve until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from server.app import create_server
from server.errors import StartupError
from server.logs import setup_logging
from server.settings import Settings, settings_from_args

logger = logging.getLogger("server")


async def serve(settings: Settings) -> int:
    """Run the server until a stop signal; return the process exit code."""
    try:
        server, port = await create_server(settings)
    except StartupError as exc:
        logger.error("cannot start: %s", exc.message)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logger.info("ready on port %d", port)
    await stop.wait()
    logger.info("stop signal received")
    await server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    settings = settings_from_args(argv)
    setup_logging(settings.log_level, settings.log_format)
    if settings.workers > 1:
        from server.workers import run_workers

        return run_workers(settings)
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
