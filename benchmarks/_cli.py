"""What every benchmark's command line shares: counts checked by argparse, and one message for a
bad parameters file or input.

A count below what a benchmark can use (`--n 0`, `--repeats -1`) is argparse's one-line error and
exit 2 before any work; an invalid parameters file, profile or input is `error: ...` and exit 2,
never a traceback. SIGTERM unwinds like Ctrl-C (`xpz.interrupts.terminate_raises`), so a benchmark's
`finally` blocks and context managers run (servers it started stop, temporary folders go); either
ends with one line, `error: NAME stopped by ...` plus the notes the cleanup added to the exception
(`add_note`), and exit 143 (SIGTERM) or 130 (Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def count(minimum: int) -> Callable[[str], int]:
    """An argparse `type`: an integer of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"count >= {minimum}"
    return parse


def run_main(main: Callable[[], int | None]) -> None:
    """Run a benchmark's `main` and exit with its status; ConfigError / InputError -> one message,
    exit 2; SIGTERM / Ctrl-C -> the cleanup runs, one message, exit 143 / 130."""
    from xpz.config import ConfigError
    from xpz.errors import InputError
    from xpz.interrupts import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated, terminate_raises

    try:
        with terminate_raises():
            status = main()
    except (ConfigError, InputError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (Terminated) inside terminate_raises
        how, code = (
            ("SIGTERM", EXIT_TERMINATED) if isinstance(err, Terminated) else ("Ctrl-C", EXIT_INTERRUPTED)
        )
        name = Path(sys.argv[0]).name
        print("; ".join([f"error: {name} stopped by {how}", *getattr(err, "__notes__", [])]), file=sys.stderr)
        sys.exit(code)
    sys.exit(status or 0)
