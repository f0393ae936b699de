"""The ``impress-lightning`` console script (and ``python -m impress_lightning``)."""

from __future__ import annotations

import sys

from impress_lightning.commands import top_level_help


def entry() -> None:
    """The top-level help without importing Lightning (it answers at once), else the CLI."""
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(top_level_help())
        return
    from impress_lightning.cli import entry as run

    run()
