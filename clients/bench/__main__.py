"""``python -m clients.bench``: see :mod:`clients.bench`."""

from __future__ import annotations

import sys

try:
    from clients.bench.cli import main
except ModuleNotFoundError as exc:
    if exc.name != "psutil":
        raise
    # psutil comes with the project's dev extra, not with the serving dependencies.
    sys.exit(
        "error: python -m clients.bench needs psutil, which the serving dependencies leave out; "
        "install the dev extra (pip install 'cnnserve[dev]') or psutil itself"
    )

if __name__ == "__main__":
    sys.exit(main())
