"""Process environment defaults: telemetry off, quiet TensorFlow. Called at every entry point."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping

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
