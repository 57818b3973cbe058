"""The host a figure or a run came from: CPU model, cores, TensorFlow version, numpy sgemm rate, and
the training rate of a fixed reference network.

Every benchmark prints `describe()` beside its figures and every training run records `host_tags()`
as MLflow tags (`xpz.host.*`), so figures from two machines compare as ratios. sgemm alone does not
tell hosts apart for TensorFlow (two hosts with the same sgemm rate trained the default CNN 6-10x
apart), hence the reference network: a fixed small 1-D CNN on fixed random data whose training
samples/s is measured in the same process as the figure it accompanies.
"""

from __future__ import annotations

import os
import platform
import time
from functools import lru_cache
from typing import Any


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else `platform.processor()`)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def sgemm_gflops(n: int = 1024, seconds: float = 0.5) -> float:
    """numpy float32 matrix-multiply rate in GFLOP/s (2 n^3 per product), best of repeated
    products over about `seconds` (best-of, because other processes only ever slow it down)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up (thread pool start)
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds or best == float("inf"):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def tensorflow_version() -> str:
    try:
        import tensorflow as tf

        return str(tf.__version__)
    except ImportError:  # pragma: no cover - TensorFlow is a dependency
        return "none"


def reference_network():
    """The fixed reference network: (186,) in, Conv1D 32x5 -> pool -> Conv1D 64x5 -> pool -> Dense 128
    -> Dense 1, MSE, Adam. Never change it: its rate is the yardstick between hosts."""
    import keras

    inputs = keras.Input(shape=(186,))
    x = keras.layers.Reshape((186, 1))(inputs)
    x = keras.layers.Conv1D(32, 5, activation="relu")(x)
    x = keras.layers.MaxPooling1D(2)(x)
    x = keras.layers.Conv1D(64, 5, activation="relu")(x)
    x = keras.layers.MaxPooling1D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(1)(x), name="xpz_reference")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return model


def reference_samples_per_s(n: int = 16384, batch_size: int = 256, repeats: int = 2) -> float:
    """Training samples/s of `reference_network()` on fixed random data (best of `repeats` epochs
    after a tracing epoch). Takes a few seconds."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 186)).astype(np.float32)
    y = rng.standard_normal((n, 1)).astype(np.float32)
    model = reference_network()
    model.fit(x[: 4 * batch_size], y[: 4 * batch_size], batch_size=batch_size, epochs=1, verbose=0)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
        best = min(best, time.perf_counter() - t0)
    return n / best


@lru_cache(maxsize=1)
def host_facts() -> dict[str, Any]:
    """CPU model, cores, TensorFlow version and numpy sgemm GFLOP/s (measured once per process)."""
    return {
        "cpu": cpu_model(),
        "cores": cpu_count(),
        "tensorflow": tensorflow_version(),
        "sgemm_gflops": round(sgemm_gflops(), 1),
    }


def host_tags(prefix: str = "xpz.host.") -> dict[str, str]:
    """`host_facts()` as MLflow tag strings (`xpz.host.cpu`, `.cores`, `.tensorflow`, `.sgemm_gflops`)."""
    return {f"{prefix}{k}": str(v) for k, v in host_facts().items()}


def describe(reference: bool = True) -> dict[str, Any]:
    """Host facts plus (unless `reference` is False) the reference network's training samples/s,
    measured now; printed by every benchmark via `print_host()`."""
    facts = dict(host_facts())
    if reference:
        facts["reference_samples_per_s"] = round(reference_samples_per_s())
    return facts


def print_host(reference: bool = True) -> dict[str, Any]:
    """Print `describe()` on one line (`host: ...`) and return it."""
    facts = describe(reference)
    parts = [
        f"cpu={facts['cpu']!r}",
        f"cores={facts['cores']}",
        f"tf={facts['tensorflow']}",
        f"sgemm={facts['sgemm_gflops']:.0f} GFLOP/s",
    ]
    if "reference_samples_per_s" in facts:
        parts.append(f"reference net={facts['reference_samples_per_s']:.0f} samples/s")
    print("host: " + ", ".join(parts), flush=True)
    return facts


def training_flops_per_sample(model) -> float:
    """Floating-point operations per training sample of a Keras model: 2 x multiply-adds of its
    Conv1D and Dense layers (forward), times 3 (forward + the two backward products). Counts the
    layers that dominate; elementwise work, pooling and the optimizer are left out."""
    import keras

    def walk(layer):
        if isinstance(layer, keras.Model):
            for sub in layer.layers:
                yield from walk(sub)
        else:
            yield layer

    macs = 0.0
    for layer in walk(model):
        if isinstance(layer, keras.layers.Conv1D):
            out_len = layer.output.shape[1]
            kernel = layer.kernel.shape  # (k, c_in, c_out)
            macs += out_len * kernel[0] * kernel[1] * kernel[2]
        elif isinstance(layer, keras.layers.Dense):
            kernel = layer.kernel.shape
            positions = 1
            for d in layer.output.shape[1:-1]:
                positions *= d or 1
            macs += positions * kernel[0] * kernel[1]
    return 6.0 * macs
