"""The XP instrument model against gaiaxpy itself (real gaiaxpy, no mocks)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xpz._gaiaxpy import gaiaxpy
from xpz.data import xp
from xpz.spectra import N_BP, N_COEFFS, N_FLUX, N_RP, kept_pwl

N_CORR = N_COEFFS * (N_COEFFS - 1) // 2


def _coefficients(n: int, seed: int, decay: float | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(n, N_COEFFS))
    if decay is not None:  # smooth, spectrum-like: low orders dominate
        c *= np.exp(-np.arange(N_COEFFS) / decay)
        c[:, 0] += 20.0
    return c


def _convert(bp: np.ndarray, rp: np.ndarray, sampling: np.ndarray) -> dict[str, np.ndarray]:
    """gaiaxpy.convert on an archive-like frame; returns band -> (n, len(sampling)) fluxes."""
    n = bp.shape[0]
    frame = pd.DataFrame(
        {
            "source_id": np.arange(1, n + 1, dtype=np.int64),
            "bp_n_parameters": N_COEFFS,
            "rp_n_parameters": N_COEFFS,
            "bp_standard_deviation": 1.0,
            "rp_standard_deviation": 1.0,
            "bp_coefficients": list(bp),
            "rp_coefficients": list(rp),
            "bp_coefficient_errors": [np.ones(N_COEFFS)] * n,
            "rp_coefficient_errors": [np.ones(N_COEFFS)] * n,
            "bp_coefficient_correlations": [np.zeros(N_CORR)] * n,
            "rp_coefficient_correlations": [np.zeros(N_CORR)] * n,
        }
    )
    out, _ = gaiaxpy.convert(frame, sampling=sampling, save_file=False)
    return {
        band: np.stack(out.loc[out["xp"].str.lower() == band, "flux"].to_numpy()).astype(float)
        for band in ("bp", "rp")
    }


def _convert_at(bp: np.ndarray, rp: np.ndarray, band: str, pwl: np.ndarray) -> np.ndarray:
    """gaiaxpy.convert of one band at arbitrary (unsorted) pseudo-wavelengths."""
    order = np.argsort(pwl)
    flux_sorted = _convert(bp, rp, pwl[order])[band]
    out = np.empty_like(flux_sorted)
    out[:, order] = flux_sorted
    return out


def test_design_matrices_shape_cached_readonly():
    bp, rp = xp.design_matrix("bp"), xp.design_matrix("rp")
    assert bp.shape == (N_COEFFS, N_BP) and rp.shape == (N_COEFFS, N_RP)
    assert xp.design_matrix("bp") is bp  # cached
    with pytest.raises(ValueError):
        bp[0, 0] = 1.0
    assert xp.combined_design_matrix().shape == (2 * N_COEFFS, N_FLUX)


def test_point_mode_equals_gaiaxpy_convert():
    bp, rp = _coefficients(4, 1), _coefficients(4, 2)
    ours = xp.coefficients_to_fluxes(bp, rp, mode="point").astype(float)
    pwl = kept_pwl()
    ref = np.concatenate([_convert_at(bp, rp, "bp", pwl["bp"]), _convert_at(bp, rp, "rp", pwl["rp"])], axis=1)
    scale = np.abs(ref).max(axis=1, keepdims=True)
    np.testing.assert_allclose(ours / scale, ref / scale, rtol=0, atol=1e-6)


def test_integrated_mode_is_the_pixel_mean_of_gaiaxpy_convert():
    """Integrated pixels = mean of gaiaxpy.convert over each 1/3-unit pixel (21-point midpoint rule)."""
    bp, rp = _coefficients(3, 3), _coefficients(3, 4)
    ours = xp.coefficients_to_fluxes(bp, rp, mode="integrated").astype(float)
    k = 21
    offsets = (np.arange(k) + 0.5) / k * xp.PIXEL_WIDTH - xp.PIXEL_WIDTH / 2
    ref = []
    for band in ("bp", "rp"):
        centres = kept_pwl()[band]
        sub = (centres[:, None] + offsets[None, :]).ravel()
        ref.append(_convert_at(bp, rp, band, sub).reshape(3, centres.size, k).mean(axis=2))
    ref = np.concatenate(ref, axis=1)
    scale = np.abs(ref).max(axis=1, keepdims=True)
    np.testing.assert_allclose(ours / scale, ref / scale, rtol=0, atol=2e-4)


def test_integrated_close_to_point_for_smooth_spectra():
    bp, rp = _coefficients(5, 5, decay=8.0), _coefficients(5, 6, decay=8.0)
    point = xp.coefficients_to_fluxes(bp, rp, mode="point")
    integ = xp.coefficients_to_fluxes(bp, rp)
    rel = np.abs(integ - point).max(axis=1) / np.abs(point).max(axis=1)
    assert (rel < 0.01).all() and (rel > 0).all()


def test_output_shape_dtype_and_single_row():
    bp, rp = _coefficients(7, 7), _coefficients(7, 8)
    out = xp.coefficients_to_fluxes(bp, rp)
    assert out.shape == (7, N_FLUX) and out.dtype == np.float32
    one = xp.coefficients_to_fluxes(bp[0], rp[0])
    np.testing.assert_array_equal(one[0], out[0])


@pytest.mark.parametrize(
    "bp_shape, rp_shape",
    [((3, 54), (3, 55)), ((3, 55), (3, 56)), ((2, 3, 55), (2, 3, 55)), ((3, 55), (4, 55)), ((110,), (3, 55))],
)
def test_bad_shapes_raise_naming_expected_shape(bp_shape, rp_shape):
    with pytest.raises(ValueError, match=r"\(n, 55\)"):
        xp.coefficients_to_fluxes(np.zeros(bp_shape), np.zeros(rp_shape))


def test_bad_mode_and_band():
    with pytest.raises(ValueError, match="mode"):
        xp.coefficients_to_fluxes(np.zeros((1, 55)), np.zeros((1, 55)), mode="sum")
    with pytest.raises(ValueError, match="band"):
        xp.design_matrix("g")


def test_external_photon_matrix_matches_gaiaxpy_calibrator():
    from gaiaxpy.spectrum.sampled_basis_functions import SampledBasisFunctions

    wl = np.arange(330.0, 1050.0, 7.0)
    for band in ("bp", "rp"):
        h, r = xp.external_photon_matrix(band, wl)
        ref = SampledBasisFunctions.from_external_instrument_model(
            wl, np.ones_like(wl), xp._external_model(band)
        ).design_matrix
        ours = np.where(r > 0, h / np.where(r > 0, r, 1.0), 0.0)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6 * np.abs(ref).max())
