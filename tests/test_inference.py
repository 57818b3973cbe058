"""The compiled inference function gives `model.predict`'s output: arrays, redshifts, every path.

The CLI, pyfunc, serving and Dask paths all reach the model through `predict_redshift` ->
`xpz.model.inference.predict_array`; here each is compared with plain `model.predict` to 1e-6
(test_predict, test_serving and test_scaleout compare the paths with each other).
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pandas as pd
import pytest

from xpz.spectra import FLUX_COLUMNS, flux_matrix
from xpz_models import model_predict_redshifts, tiny_keras_model


@pytest.fixture(scope="module")
def fluxes(dataset) -> np.ndarray:
    return flux_matrix(dataset)


@pytest.mark.parametrize("batch_size", [1, 7, 256, 5000])
def test_predict_array_equals_model_predict(fluxes, batch_size):
    from xpz.model.inference import predict_array

    model = tiny_keras_model(fluxes)
    x = fluxes[:300]
    ours = predict_array(model, x, batch_size=batch_size)
    theirs = model.predict(x, batch_size=batch_size, verbose=0)
    assert ours.shape == theirs.shape and ours.shape[0] == 300 and ours.shape[1] > 1
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="batch_size"):
        predict_array(model, x, batch_size=0)


def test_redshifts_of_a_single_model_an_ensemble_and_a_regression_head(fluxes):
    import keras

    from xpz.model.posterior import predict_redshift
    from xpz.model.train import ensemble_model

    single = tiny_keras_model(fluxes, seed=1)
    ensemble = ensemble_model([tiny_keras_model(fluxes, seed=2), tiny_keras_model(fluxes, seed=3)])
    inputs = keras.Input(shape=(fluxes.shape[1],))
    regression = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Rescaling(1e-3)(inputs)))
    for model in (single, ensemble, regression):
        ours, theirs = predict_redshift(model, fluxes), model_predict_redshifts(model, fluxes)
        assert len(ours) == len(fluxes)
        for column in ("z", "z_lower", "z_upper"):
            np.testing.assert_allclose(ours[column], theirs[column], rtol=0, atol=1e-6, equal_nan=True)
    assert predict_redshift(single, fluxes)["z"].nunique() > 100  # not a constant model


def test_one_compiled_function_per_model_released_with_the_model(fluxes):
    from xpz.model import inference

    a, b = tiny_keras_model(fluxes, seed=4), tiny_keras_model(fluxes, seed=5)
    fa = inference.compiled_function(a)
    assert inference.compiled_function(a) is fa and inference.compiled_function(b) is not fa
    inference.predict_array(a, fluxes[:10])
    inference.predict_array(a, fluxes[:33])  # another batch length: no new trace
    assert fa.experimental_get_tracing_count() == 1
    alive = weakref.ref(a)
    del a, fa
    gc.collect()
    assert alive() is None  # the cache never keeps a model alive
    assert inference.compiled_function(b) is not None and b in inference._CACHE


def test_cli_pyfunc_and_batch_paths_equal_model_predict(registered, dataset, small_dataset_path, tmp_path):
    import mlflow

    from xpz.serving.batch import load_predictor, predict_file, use_tracking_uri
    from xpz.tracking import load_keras_model

    x = flux_matrix(dataset)
    with use_tracking_uri(registered.tracking_uri):
        reference = model_predict_redshifts(load_keras_model(registered.champion), x)
        pyfunc = mlflow.pyfunc.load_model(registered.champion).predict(
            pd.DataFrame(x, columns=list(FLUX_COLUMNS))
        )
    served_like = load_predictor(registered.champion, registered.tracking_uri).predict(
        x
    )  # what `xpz serve` calls
    cli = pd.read_parquet(
        predict_file(
            small_dataset_path,
            tmp_path / "p.parquet",
            registered.champion,
            progress=False,
            tracking_uri=registered.tracking_uri,
        ).out  # fmt: skip
    )
    for got in (pyfunc, served_like, cli):
        for column in ("z", "z_lower", "z_upper"):
            np.testing.assert_allclose(np.asarray(got[column]), reference[column], rtol=0, atol=1e-6)


def test_cdf_is_the_float64_cumulative_sum_of_the_clipped_output():
    """`posterior._cdf` (in place, float32 output summed in float64) equals its definition bit for bit."""
    from xpz.model.posterior import _cdf

    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.full(120, 0.3), 500).astype(np.float32)
    p[0], p[1, 3], p[2, 5] = 0.0, -1e-9, np.nan
    for probs in (p, p.astype(np.float64)):
        q = np.clip(probs.astype(np.float64), 0.0, None)
        cdf = np.concatenate([np.zeros((len(q), 1)), np.cumsum(q, axis=1)], axis=1)
        expected = cdf / np.maximum(cdf[:, -1:], 1e-300)
        got = _cdf(probs)
        assert got.dtype == np.float64 and got.shape == (500, 121)
        np.testing.assert_array_equal(got, expected)
    assert (_cdf(p)[3:, -1] == 1.0).all() and (_cdf(p)[0] == 0.0).all()
