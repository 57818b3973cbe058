"""TensorFlow's start-up lines: `import tensorflow` (2.19+) prints INFO lines from its native libraries
that TF_CPP_MIN_LOG_LEVEL does not filter. `import xpz` drops exactly those (`xpz.env.TF_STARTUP_NOISE`)
and keeps anything else, all of it when the import fails or the process dies during it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
BIN = Path(sys.executable).parent

ABSL = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
ONEDNN = (
    "I0000 00:00:1796427363.504886   10383 port.cc:153] oneDNN custom operations are on. You may see "
    "slightly different numerical results due to floating-point round-off errors from different "
    "computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`."
)
GUARD = [
    "2025-01-11 05:40:05.061907: I tensorflow/core/platform/cpu_feature_guard.cc:182] This TensorFlow "
    "binary is optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with "
    "the appropriate compiler flags.",
]
CUDA = "I0000 00:00:1758131045.157831 3722035 cudart_stub.cc:32] Could not find cuda drivers on your machine, GPU will not be used."  # fmt: skip
NOISE = [ABSL, ONEDNN, *GUARD, CUDA]
REAL = [
    "E0000 00:00:1758131045.203198 3722035 cuda_dnn.cc:8579] Unable to register cuDNN factory",
    "I0000 00:00:1796427363.504886   10383 port.cc:153] oneDNN custom operations are on, but something else",
    "F0000 00:00:1796427363.504886   10383 cpu_feature_guard.cc:99] The TensorFlow library was compiled to use AVX instructions, but these aren't available on your machine.",  # fmt: skip
]
MARKERS = ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard", "cudart_stub")


def _env(**extra: str) -> dict[str, str]:
    """This environment without TF_CPP_MIN_LOG_LEVEL (a shell without the Makefile's exports: the
    entry point sets it), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return {**env, "PYTHONPATH": str(REPO / "src"), **extra}


def _block(ending: str) -> subprocess.CompletedProcess:
    """A process that writes NOISE and REAL lines interleaved to fd 2 (as native code does) and to
    sys.stderr inside `filtered_stderr(TF_STARTUP_NOISE)`, the block ending with `ending`."""
    lines = [NOISE[0], REAL[0], *NOISE[1:3], REAL[1], *NOISE[3:], REAL[2]]
    script = textwrap.dedent(f"""
        import os, sys
        from xpz.env import TF_STARTUP_NOISE, filtered_stderr
        print("before", file=sys.stderr, flush=True)
        with filtered_stderr(TF_STARTUP_NOISE):
            for line in {lines!r}:
                os.write(2, (line + "\\n").encode())
            print("from python", file=sys.stderr)
            os.write(2, b"no newline at the end")
            {ending}
        print("after", file=sys.stderr)
    """)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=60
    )


def test_known_start_up_lines_are_dropped_and_anything_else_kept_in_order():
    done = _block("pass")
    assert done.returncode == 0, done.stderr
    assert done.stderr == "before\n" + "\n".join(REAL) + "\nfrom python\nno newline at the endafter\n"


@pytest.mark.parametrize(
    ("ending", "status"),
    [("raise ImportError('no libcudart')", 1), ("os.abort()", -6)],
    ids=["raises", "dies"],
)
def test_everything_is_kept_when_the_block_raises_or_the_process_dies(ending, status):
    done = _block(ending)
    assert done.returncode == status
    for line in [*NOISE, *REAL, "from python", "no newline at the end"]:
        assert line in done.stderr
    if status == 1:
        assert "ImportError: no libcudart" in done.stderr and "after" not in done.stderr


def test_a_real_command_that_imports_tensorflow_prints_none_of_its_start_up_lines(tmp_path):
    """`xpz predict` with a saved model (Keras, so TensorFlow) on a Gaia XP file, as the CLI runs it."""
    out = tmp_path / "z.parquet"
    done = subprocess.run(
        [str(BIN / "xpz"), "predict", str(FIXTURES / "gaia_xp" / "XP_CONTINUOUS_RAW.csv"), "--model",
         str(FIXTURES / "old_layout_model" / "model"), "--out", str(out), "--no-progress"],
        capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.exists() and "model loaded in" in done.stdout
    assert not [line for line in done.stderr.splitlines() if any(m in line for m in MARKERS)], done.stderr


@pytest.mark.parametrize("level", ["0", "2"])
def test_tf_cpp_min_log_level_0_still_shows_them(level):
    """The filter follows TensorFlow's own switch: at level 0 (TensorFlow's default) nothing is dropped."""
    script = "import xpz, tensorflow"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env=_env(TF_CPP_MIN_LOG_LEVEL=level))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert ("oneDNN custom operations are on" in done.stderr) is (level == "0"), done.stderr
