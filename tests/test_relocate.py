"""A project that moves: a copied checkout (mlflow.db + mlruns/) loads ITS OWN model files, also once
the original is deleted; a copy without its artifacts stops with a message naming the path it looked for."""

from __future__ import annotations

import shutil
import sqlite3

import numpy as np
import pytest

from xpz_models import register_tiny_model


def recorded_locations(db) -> list[str]:
    with sqlite3.connect(db) as con:
        rows = [r[0] for r in con.execute("SELECT artifact_uri FROM runs")]
        rows += [r[0] for r in con.execute("SELECT storage_location FROM model_versions")]
        rows += [r[0] for r in con.execute("SELECT artifact_location FROM logged_models")]
    return rows


@pytest.fixture()
def fluxes():
    return np.random.default_rng(3).gamma(2.0, 5.0, size=(40, 186)).astype(np.float32)


def test_copied_project_uses_its_own_artifacts_after_the_original_is_gone(tmp_path, fluxes):
    from xpz.serving.models import load_predictor

    original = tmp_path / "original"
    reg = register_tiny_model(original, fluxes)
    expected = load_predictor(reg.champion, reg.tracking_uri).predict(fluxes)

    copy = tmp_path / "moved" / "project"
    shutil.copytree(original, copy)
    shutil.rmtree(original)
    uri = f"sqlite:///{copy / 'mlflow.db'}"
    predictor = load_predictor(reg.champion, uri)
    np.testing.assert_array_equal(predictor.predict(fluxes)["z"].to_numpy(), expected["z"].to_numpy())
    locations = recorded_locations(copy / "mlflow.db")
    assert locations and all(str(copy) in loc and str(original) not in loc for loc in locations), locations


def test_copy_with_original_present_is_pointed_at_the_copy(tmp_path, fluxes):
    """While the original exists a copy must not silently read the original's files: configure()
    rewrites the copy's store to its own mlruns/ and leaves the original's store as it was."""
    from xpz import tracking
    from xpz.config import TrackingConfig
    from xpz.serving.batch import use_tracking_uri

    original = tmp_path / "a"
    reg = register_tiny_model(original, fluxes)
    copy = tmp_path / "b"
    shutil.copytree(original, copy)
    uri = f"sqlite:///{copy / 'mlflow.db'}"
    cfg = TrackingConfig(
        experiment="xpz-predict-test", registered_model=reg.name, artifact_location=str(copy / "mlruns")
    )
    with use_tracking_uri(uri):
        tracking.configure(cfg, tracking_uri=uri)
    assert all(str(copy) in loc for loc in recorded_locations(copy / "mlflow.db"))
    assert all(str(original) in loc for loc in recorded_locations(original / "mlflow.db"))


def test_copy_without_artifacts_names_the_path_and_the_fix(tmp_path, fluxes):
    from xpz.errors import InputError
    from xpz.serving.models import load_predictor

    original = tmp_path / "orig"
    reg = register_tiny_model(original, fluxes)
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy2(original / "mlflow.db", copy / "mlflow.db")  # the store without mlruns/
    shutil.rmtree(original)
    with pytest.raises(InputError) as err:
        load_predictor(reg.champion, f"sqlite:///{copy / 'mlflow.db'}")
    message = str(err.value)
    assert (
        str(original / "mlruns") in message
        and str(copy / "mlruns") in message
        and "MLFLOW_TRACKING_URI" in message
    )
