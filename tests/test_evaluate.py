"""Metric definitions against hand-computed values; the per-bin table; baselines; evaluate()."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from xpz.config import EvaluateConfig, config_from_dict
from xpz.model.evaluate import (
    bin_edges,
    bin_metrics,
    bin_table,
    coverage,
    evaluate,
    knn_baseline,
    mean_baseline,
    outlier_fraction,
    point_metrics,
    sigma_nmad,
    summary_metrics,
    table_markdown,
    worst_bin_bias,
    write_table,
)
from xpz.spectra import DATASET_COLUMNS, FLUX_COLUMNS, N_FLUX

EDGES = bin_edges(0.05, 0.6)  # params evaluate.bin_width, evaluate.z_max
Z_TRUE = np.array([0.1, 0.2, 0.3, 0.4])
Z_PRED = np.array([0.12, 0.18, 0.33, 0.15])  # dz = 0.02, -0.02, 0.03, -0.25


def test_point_metrics_hand_computed():
    m = point_metrics(Z_TRUE, Z_PRED, 0.15)
    assert m["mae"] == pytest.approx((0.02 + 0.02 + 0.03 + 0.25) / 4)
    assert m["rmse"] == pytest.approx(np.sqrt((0.0004 + 0.0004 + 0.0009 + 0.0625) / 4))
    assert m["bias"] == pytest.approx((0.02 - 0.02 + 0.03 - 0.25) / 4)
    # median(dz) = 0; |dz| / (1 + z) = .02/1.1, .02/1.2, .03/1.3, .25/1.4 -> median of middle two
    assert m["sigma_nmad"] == pytest.approx(1.4826 * (0.02 / 1.1 + 0.03 / 1.3) / 2)
    # only 0.25 / 1.4 = 0.179 exceeds 0.15
    assert m["outlier_fraction"] == pytest.approx(0.25)


def test_sigma_nmad_is_shift_invariant_and_outlier_threshold():
    z = np.array([0.0, 0.0, 0.0])
    assert sigma_nmad(z, z + 0.3) == pytest.approx(0.0)
    assert outlier_fraction(np.array([0.0, 1.0]), np.array([0.149, 1.29]), 0.15) == pytest.approx(0.0)
    assert outlier_fraction(np.array([0.0, 1.0]), np.array([0.151, 1.31]), 0.15) == pytest.approx(1.0)


def test_coverage():
    assert coverage([0.1, 0.2, 0.3, 0.4], [0.0, 0.25, 0.3, 0.5], [0.2, 0.3, 0.35, 0.6]) == pytest.approx(0.5)
    assert np.isnan(coverage([0.1], [np.nan], [np.nan]))


def test_bin_edges_are_the_seed_bins():
    e = bin_edges(0.05, 0.6)
    assert len(e) == 13 and e[0] == 0 and e[-1] == pytest.approx(0.6)
    assert np.allclose(np.diff(e), 0.05)


def test_bin_table_hand_computed_and_shares_sum_to_100():
    z_true = np.array([0.01, 0.02, 0.07, 0.6, 0.58])
    z_pred = np.array([0.03, 0.00, 0.07, 0.5, 0.60])
    lo, hi = z_pred - 0.015, z_pred + 0.015
    t = bin_table(z_true, z_pred, lo, hi, edges=EDGES)
    assert list(t["bin"][:2]) == ["0.00-0.05", "0.05-0.10"] and len(t) == 12
    first = t.iloc[0]
    assert first["count"] == 2 and first["mean_error"] == pytest.approx(0.0)
    assert first["std"] == pytest.approx(0.02) and first["mae"] == pytest.approx(0.02)
    assert first["mean_error_se"] == pytest.approx(np.std([0.02, -0.02], ddof=1) / np.sqrt(2))
    assert np.isnan(t.iloc[1]["mean_error_se"])  # one object: no standard error
    assert first["coverage_68"] == pytest.approx(0.0)  # both off by 0.02 > 0.015
    assert t.iloc[1]["coverage_68"] == pytest.approx(1.0)
    last = t.iloc[-1]  # z = 0.6 belongs to the last bin (closed on the right)
    assert last["count"] == 2 and last["mean_error"] == pytest.approx((-0.1 + 0.02) / 2)
    assert t["share"].sum() == pytest.approx(100.0)
    assert t.iloc[0]["share"] == pytest.approx(40.0)
    assert t["count"].sum() == 5 and t.iloc[3]["count"] == 0 and np.isnan(t.iloc[3]["mean_error"])


def test_worst_bin_bias_respects_range_and_min_count():
    z_true = np.r_[np.full(30, 0.12), np.full(30, 0.42), np.full(5, 0.47), np.full(30, 0.52)]
    z_pred = z_true + np.r_[np.full(30, 0.01), np.full(30, -0.04), np.full(5, -0.2), np.full(30, -0.3)]
    t = bin_table(z_true, z_pred, edges=EDGES)
    assert worst_bin_bias(t, 0.5, 20) == pytest.approx((-0.04, 0.40))
    assert worst_bin_bias(t, 0.5, 1) == pytest.approx((-0.2, 0.45))
    assert worst_bin_bias(t, 0.6, 20) == pytest.approx((-0.3, 0.50))


def test_summary_and_bin_metric_names():
    metrics, table = summary_metrics("test_", Z_TRUE, Z_PRED, Z_PRED - 0.05, Z_PRED + 0.05)
    for key in ("test_mae", "test_rmse", "test_bias", "test_sigma_nmad", "test_outlier_fraction",
                "test_coverage_68", "test_worst_bin_bias"):  # fmt: skip
        assert key in metrics
    assert metrics["test_coverage_68"] == pytest.approx(0.75)
    flat = bin_metrics(table)
    assert flat["bin_0.10-0.15/count"] == 1 and "bin_0.10-0.15/mean_error" in flat
    assert "bin_0.55-0.60/mean_error" not in flat  # empty bins are left out


def test_tables_write_csv_and_markdown(tmp_path):
    t = bin_table(Z_TRUE, Z_PRED, edges=EDGES)
    md = table_markdown(t)
    assert md.startswith("| bin | z_lo |") and "0.10-0.15" in md
    write_table(t, tmp_path / "t.csv")
    write_table(t, tmp_path / "t.md")
    back = pd.read_csv(tmp_path / "t.csv")
    assert len(back) == 12 and (tmp_path / "t.md").read_text() == md


def test_baselines():
    assert mean_baseline([0.1, 0.3], 3) == pytest.approx([0.2, 0.2, 0.2])
    rng = np.random.default_rng(0)
    x = rng.random((30, N_FLUX)) + 0.1
    z = rng.random(30)
    # unit normalisation: a scaled copy of a training spectrum is its nearest neighbour
    assert knn_baseline(x, z, 7.0 * x[:5], k=1) == pytest.approx(z[:5])


def _frame(n, seed):
    rng = np.random.default_rng(seed)
    z = np.clip(rng.gamma(3.3, 0.043, n), 0.005, 0.6)
    pix = np.arange(N_FLUX)
    flux = 20 + 80 * np.exp(-0.5 * ((pix[None, :] - 40 - 200 * z[:, None]) / 8) ** 2)
    flux = flux + rng.normal(0, 1, flux.shape)
    df = pd.DataFrame(flux.astype(np.float32), columns=list(FLUX_COLUMNS))
    df.insert(0, "z", z)
    df.insert(0, "source_id", np.arange(n, dtype=np.int64) + seed * 10_000)
    return df[list(DATASET_COLUMNS)]


def test_evaluate_end_to_end_on_a_tiny_model(tmp_path):
    from xpz.model.architectures import build_model
    from xpz.model.scaling import fit_scaler
    from xpz.spectra import flux_matrix

    cfg = config_from_dict({"evaluate": {"knn_k": 3}})
    splits = SimpleNamespace(train=_frame(120, 1), val=_frame(40, 2), test=_frame(60, 3))
    hp = {"conv_layers": 1, "filters_0": 4, "kernel_0": 3, "dense_layers": 1, "units_0": 8,
          "activation": "relu", "loss": "crossentropy", "optimizer": "adam", "learning_rate": 1e-3}  # fmt: skip
    model = build_model(hp, cfg.model, fit_scaler(flux_matrix(splits.train)))
    ev = evaluate(model, splits, cfg, history={"loss": [2, 1], "val_loss": [2.5, 1.5], "mae": [0.1, 0.05],
                                               "val_mae": [0.1, 0.06]})  # fmt: skip
    for key in ("test_mae", "test_coverage_68", "test_worst_bin_bias", "baseline_mean/test_mae",
                "baseline_knn/test_mae", "bin_0.10-0.15/share"):  # fmt: skip
        assert key in ev.metrics
    assert ev.metrics["baseline_knn/test_mae"] < ev.metrics["baseline_mean/test_mae"]
    assert set(ev.figures) == {"loss_curves", "bin_bias", "z_histogram", "pred_vs_true", "pit"}
    for key in (
        "test_pit_ks",
        "test_crps",
        "test_ez_sigma_nmad",
        "test_ez_outlier_rate_3sigma_iqr",
        "bin_0.10-0.15/crps",
    ):
        assert np.isfinite(ev.metrics[key])
    assert ev.pdfs.npdf == 60
    assert list(ev.predictions.columns[:5]) == ["source_id", "z_true", "z", "z_lower", "z_upper"]
    assert ev.bin_table["share"].sum() == pytest.approx(100.0)
    assert "0.05-0.10" in ev.table_markdown()
    # coverage per S/N quartile (xpz.model.coverage_report), logged like the per-bin coverage
    assert list(ev.snr_table["count"]) == [15, 15, 15, 15]
    inside = (ev.predictions["z_true"] >= ev.predictions["z_lower"]) & (
        ev.predictions["z_true"] <= ev.predictions["z_upper"]
    )
    assert (ev.snr_table["coverage_68"] * 15).sum() == pytest.approx(inside.sum())
    assert ev.metrics["snr_q1/coverage_68"] == pytest.approx(ev.snr_table["coverage_68"].iloc[0])
    assert ev.metrics["test_coverage_68_snr_min"] == pytest.approx(ev.snr_table["coverage_68"].min())
    paths = ev.write_tables(tmp_path)
    assert pd.read_csv(paths["snr_csv"])["count"].sum() == 60 and paths["snr_md"].exists()


def test_evaluate_config_rejects_bad_bins():
    with pytest.raises(ValueError, match="bias_z_max"):
        EvaluateConfig(bias_z_max=0.7)


def test_loss_curves_show_every_ensemble_member():
    from xpz.model.evaluate import loss_curves_figure

    single = {"loss": [2, 1], "val_loss": [2.5, 1.5], "mae": [0.1, 0.05], "val_mae": [0.1, 0.06]}
    members = {f"member_1/{k}": [v * 1.1 for v in values] for k, values in single.items()}
    loss_ax, mae_ax = loss_curves_figure(single).axes
    assert len(loss_ax.lines) == 2 and "members" not in loss_ax.get_title()
    loss_ax, mae_ax = loss_curves_figure({**single, **members}).axes
    assert len(loss_ax.lines) == len(mae_ax.lines) == 4 and "(2 members)" in mae_ax.get_title()
    assert list(mae_ax.lines[1].get_ydata()) == pytest.approx([0.11, 0.055])  # member 1's training MAE
