"""Process environment defaults: telemetry off, quiet TensorFlow. Called at every entry point."""

from __future__ import annotations

import os

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
