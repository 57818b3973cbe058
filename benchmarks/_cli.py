"""What every benchmark's command line shares: counts checked by argparse, and one message for a
bad parameters file or input.

A count below what a benchmark can use (`--n 0`, `--repeats -1`) is argparse's one-line error and
exit 2 before any work; an invalid parameters file, profile or input is `error: ...` and exit 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


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
    exit 2."""
    from xpz.config import ConfigError
    from xpz.errors import InputError

    try:
        status = main()
    except (ConfigError, InputError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(status or 0)
