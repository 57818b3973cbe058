"""Clean kills: SIGTERM raises (like Ctrl-C) so that every cleanup path of the running command runs.

Python's default for SIGTERM ends the process on the spot: no `finally`, no context manager exit, so
temporary outputs (`.out.parquet.*.tmp`, a p(z) file being written, `xpz-bundle-*` folders) stay
behind and an MLflow run stays RUNNING. Inside `terminate_raises()` a SIGTERM raises `Terminated` (a
`KeyboardInterrupt`, so code that handles Ctrl-C, e.g. `xpz.tracking.run` marking the run KILLED,
handles it too). Only the first SIGTERM raises; a second one during the cleanup is ignored (SIGKILL
still ends the process).

Core module: the standard library only.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, the shell's status for a process ended by SIGTERM
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, the shell's status for a process ended by Ctrl-C


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM inside `terminate_raises()`."""


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """SIGTERM raises `Terminated` in the main thread for the block; the previous handler is restored
    after. Outside the main thread (where handlers cannot be installed) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal raised
        if raised:  # already unwinding: let the cleanup finish
            return
        raised = True
        raise Terminated(f"terminated by signal {signum} (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def note_sigterm() -> Callable[[], bool]:
    """From now on a SIGTERM is noted before the handler in place runs, and the function returned says
    whether one arrived. In a Prefect flow run that handler is Prefect's, which raises an exception
    wherever the main thread is; raised inside tf.data's iterator, Keras reports it as a TypeError, and
    the stop would read as a failure. Outside the main thread it notes nothing. A previous handler of
    SIG_DFL becomes `Terminated` (as in `terminate_raises`); SIG_IGN stays ignored."""
    seen = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        return seen.is_set
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: FrameType | None) -> None:
        seen.set()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            raise Terminated(f"terminated by signal {signum} (SIGTERM)")

    signal.signal(signal.SIGTERM, handler)
    return seen.is_set
