"""What both command-line tools do at a terminal's edges: a closed pipe (``... | head``)
ends the command quietly, Ctrl-C ends it with a new line and exit status 130."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

__all__ = ["run_command"]

SIGPIPE_EXIT = 141  # 128 + SIGPIPE: what a shell shows for a command whose reader went away
SIGINT_EXIT = 130  # 128 + SIGINT


def run_command(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None
                ) -> int:
    """``main(argv)``, without a traceback for a reader that went away or for Ctrl-C."""
    try:
        return main(argv)
    except BrokenPipeError:
        _quiet_stdout()
        return SIGPIPE_EXIT
    except KeyboardInterrupt:
        try:
            print(file=sys.stderr, flush=True)  # the prompt's line ends; the shell's is clean
        except OSError:
            pass
        return SIGINT_EXIT


def _quiet_stdout() -> None:
    """Point stdout at /dev/null: Python's own flush at exit then finds nobody to complain to
    about the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
