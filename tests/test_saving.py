"""Self-contained models: a saved `.keras` file loads after `import xpz` alone, and the logged MLflow
model loads and predicts with the training-only packages (keras_tuner, prefect, dvc,
great_expectations) unimportable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from xpz_models import tiny_keras_model

TRAINING_ONLY = ("keras_tuner", "prefect", "dvc", "great_expectations")

# Prepended to a subprocess's script: any import of a training-only package raises ImportError.
BLOCKER = textwrap.dedent(
    f"""
    import importlib.abc, sys
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {TRAINING_ONLY!r}:
                raise ImportError(f"blocked training-only package: {{name}}")
            return None
    sys.meta_path.insert(0, _Block())
    """
)


def _run(script: str, cwd, env=None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(script)],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.slow  # > 5 s: left out of `make check`
def test_plain_keras_load_model_works_after_import_xpz(tmp_path, dataset):
    """`import xpz` registers every custom object: plain `keras.saving.load_model` (compiled, loss and
    metric included) gives the same output, in a fresh interpreter without keras_tuner & co. `import xpz`
    itself imports no Keras/TensorFlow: the objects are registered when Keras's import completes."""
    from xpz.spectra import flux_matrix

    x = flux_matrix(dataset)[:16].astype(np.float32)
    model = tiny_keras_model(x)
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "x.npy", x)
    expected = model.predict(x, verbose=0)
    done = _run(
        """
        import sys
        import xpz
        print("keras after import xpz:", "keras" in sys.modules or "tensorflow" in sys.modules)
        import numpy as np, keras
        model = keras.saving.load_model("model.keras")
        np.save("out.npy", model.predict(np.load("x.npy"), verbose=0))
        print(type(model.loss).__name__)
        """,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SmoothedBinCrossentropy" in done.stdout
    assert "keras after import xpz: False" in done.stdout  # registered once Keras is imported, not before
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-6)


@pytest.mark.slow  # > 5 s: left out of `make check`
def test_logged_model_loads_and_predicts_without_training_only_packages(tmp_path, registered, dataset):
    """Issue 20 item 4: the pyfunc's loader imports nothing that only training needs, so its pinned
    requirements are enough."""
    from xpz.spectra import FLUX_COLUMNS, flux_matrix
    from xpz.tracking.pyfunc import pip_requirements

    x = flux_matrix(dataset)[:8]
    frame_path = tmp_path / "in.json"
    frame_path.write_text(json.dumps(x.astype(float).tolist()))
    uri = f"models:/{registered.name}/{registered.version}"
    done = _run(
        f"""
        import json, sys
        import mlflow, pandas as pd
        x = json.load(open("in.json"))
        model = mlflow.pyfunc.load_model({uri!r})
        out = model.predict(pd.DataFrame(x, columns={list(FLUX_COLUMNS)!r}))
        print(json.dumps(out["z"].tolist()))
        print("LOADED", sorted(m for m in {TRAINING_ONLY!r} if m in sys.modules))
        """,
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": registered.tracking_uri},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    z = json.loads(done.stdout.splitlines()[-2])
    assert len(z) == 8 and all(np.isfinite(z))
    assert done.stdout.splitlines()[-1] == "LOADED []"
    names = {r.split("==")[0] for r in pip_requirements()}
    assert not names & {"keras-tuner", "prefect", "dvc", "great-expectations"}


@pytest.mark.parametrize(
    "module", ["xpz.model.ood", "xpz.model.conformal", "xpz.model.head", "xpz.model.ood_fast"]
)
def test_any_model_module_imports_first(tmp_path, module):
    """Importing a model module before Keras works (the registration on Keras's import must not meet
    that module half-initialised) and leaves every custom object registered."""
    script = (
        f"import {module}\nimport keras\n"
        "from xpz.model.saving import CUSTOM_OBJECTS\n"
        "missing = [n for n in CUSTOM_OBJECTS if keras.saving.get_registered_object('xpz>' + n) is None]\n"
        "assert not missing, missing\nprint('ok')\n"
    )
    result = _run(script, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")
