"""Process environment defaults: telemetry off, quiet TensorFlow. Called at every entry point.

TensorFlow's start-up lines: since TF 2.19 its native libraries log a few INFO lines while `import
tensorflow` runs, before absl's logging is set up, so TF_CPP_MIN_LOG_LEVEL does not filter them
(tensorflow/tensorflow#100442). `import xpz` runs that import inside `quiet_tensorflow_startup`, which
drops exactly those lines (`TF_STARTUP_NOISE`) and nothing else; oneDNN stays on (numerics unchanged).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

_DEFAULTS = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "KERAS_BACKEND": "tensorflow",
}


def quiet_telemetry() -> None:
    """Turn off analytics of MLflow, Prefect, DVC and GX (offline machines must never wait on them)."""
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def environ(
    set_: Mapping[str, str] | None = None,
    unset: Iterable[str] = (),
    defaults: Mapping[str, str] | None = None,
) -> Iterator[None]:
    """Environment variables changed for a block, then restored as they were (absent ones removed):
    `set_` overrides, `unset` removes, `defaults` sets only where the variable is not set already."""
    set_, defaults, unset = dict(set_ or {}), dict(defaults or {}), list(unset)
    saved = {k: os.environ.get(k) for k in [*set_, *unset, *defaults]}
    for key in unset:
        os.environ.pop(key, None)
    os.environ.update(set_)
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


# A native INFO line: absl's `I0000 00:00:<time> <thread> <file>.cc:<line>] ` or the older
# `<date> <time>: I <path>/<file>.cc:<line>] `.
_INFO = r"(?:I\d{4} [\d:.]+ +\d+ |\d{4}-\d\d-\d\d [\d:.]+: I )(?:\S*/)?"
# Full-line patterns of what `import tensorflow` writes that only informs: absl's notice that it logs
# before its set-up, the oneDNN notice, the CPU feature guard (2 lines), no CUDA driver (a CPU host).
TF_STARTUP_NOISE: tuple[str, ...] = (
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    _INFO + r"port\.cc:\d+\] oneDNN custom operations are on\. You may see slightly different numerical "
    r"results due to floating-point round-off errors from different computation orders\. To turn them "
    r"off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`\.",
    _INFO + r"cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized to use available CPU "
    r"instructions in performance-critical operations\.",
    r"To enable the following instructions: [A-Z0-9_ ,]+, in other operations, rebuild TensorFlow with "
    r"the appropriate compiler flags\.",
    _INFO + r"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine, GPU will not be used\.",
)

# The filter process: reads everything written to fd 2 during the block; when the stream ends with the
# parent's all-clear (the block ended normally) it drops the lines matching a pattern, otherwise (an
# exception, a crash of the parent: no all-clear) it writes everything back unchanged.
_FILTER = """
import re, sys
token, patterns = sys.argv[1].encode(), sys.argv[2:]
data = sys.stdin.buffer.read()
if data.endswith(token):
    noise = re.compile("|".join(f"(?:{p})" for p in patterns))
    lines = data[: -len(token)].splitlines(keepends=True)
    data = b"".join(l for l in lines if not noise.fullmatch(l.rstrip(b"\\r\\n").decode("utf-8", "replace")))
sys.stdout.buffer.write(data)
"""


@contextlib.contextmanager
def filtered_stderr(noise: Sequence[str]) -> Iterator[None]:
    """File descriptor 2 (C/C++ libraries and `sys.stderr` alike) goes through a filter process for the
    block and comes out, in order, when the block ends: without the lines that fully match one of the
    `noise` regexes if the block ended normally, unchanged if it raised or the process died in it (the
    filter then sees its pipe close without the all-clear). Where no filter can start, a plain block.
    Meant for short blocks (an import): other threads' output to fd 2 is held until the block ends, and
    so is that of a process started in the block until it exits (it inherits the pipe as its fd 2)."""
    import secrets

    token = f"\nxpz-stderr-ok-{secrets.token_hex(8)}\n"
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    started = _start_filter(token, noise)
    if started is None:
        yield
        return
    filt, write_end, saved = started
    os.dup2(write_end, 2)
    ended_normally = False
    try:
        yield
        ended_normally = True
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        try:
            if ended_normally:
                os.write(write_end, token.encode())
        finally:
            os.close(write_end)
        with contextlib.suppress(Exception):  # a process started in the block may still hold the pipe
            filt.wait(10)


def _start_filter(token: str, noise: Sequence[str]) -> tuple[Any, int, int] | None:
    """(the filter process, the write end of its pipe, a copy of fd 2), or None where it cannot start
    (no fd 2, no interpreter, no file descriptors left)."""
    import subprocess

    if not sys.executable:
        return None
    try:
        saved = os.dup(2)
    except OSError:
        return None
    try:
        read_end, write_end = os.pipe()
    except OSError:
        os.close(saved)
        return None
    try:
        filt = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _FILTER, token, *noise], stdin=read_end, stdout=saved
        )
    except OSError:
        os.close(write_end)
        os.close(saved)
        return None
    finally:
        os.close(read_end)
    return filt, write_end, saved


@contextlib.contextmanager
def quiet_tensorflow_startup() -> Iterator[None]:
    """`filtered_stderr(TF_STARTUP_NOISE)` when TF_CPP_MIN_LOG_LEVEL asks for no INFO lines (1 or
    more; `quiet_telemetry` sets 2), a plain block otherwise (unset or 0: TensorFlow's default)."""
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0").strip()
    if not (level.isdigit() and int(level) >= 1):
        yield
        return
    with filtered_stderr(TF_STARTUP_NOISE):
        yield
