"""Model benchmark: the default pipeline (tune + train) vs the seed recipe at equal wall time vs baselines.

    python benchmarks/bench_model.py                       # the default synthetic galaxies (data section)
    python benchmarks/bench_model.py --data data/galaxies.parquet --extra /tmp/big.parquet
    python benchmarks/bench_model.py --throughput-only      # samples/s, x reference network, % of sgemm
    python benchmarks/bench_model.py --profile-step --n 30000   # where a training step goes

Prints training throughput (samples/s) of the seed model and the default model on this machine,
then one Markdown table: test MAE, sigma_NMAD, outlier fraction, worst per-bin bias (bins up to
z = 0.5 with >= evaluate.min_bin_count test objects) and 68%-interval coverage of
  - the default pipeline (keras-tuner search + training with the params' defaults),
  - the seed recipe (Table 2 architecture, Adamax 1e-3, Huber, batch 16) given the same wall time,
  - the training-mean and kNN baselines on the same split,
and the per-bin table of the default model. `--extra PATH` also evaluates both models on a larger
independent set (e.g. another generator seed) to judge the sparse high-z bins.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from _cli import count, run_main  # noqa: E402
from xpz.config import load_config  # noqa: E402
from xpz.env import quiet_telemetry  # noqa: E402

KEYS = ("mae", "sigma_nmad", "outlier_fraction", "worst_bin_bias", "worst_bin_bias_z", "coverage_68")


def _fit_rate(model, ds_or_x, z=None, n: int = 0, batch: int = 256, repeats: int = 2) -> float:
    """Best-of-`repeats` training samples/s of one epoch over `ds_or_x` (a tf.data.Dataset, or arrays)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        if z is None:
            model.fit(ds_or_x, epochs=1, verbose=0)
        else:
            model.fit(ds_or_x, z, batch_size=batch, epochs=1, verbose=0)
        best = min(best, time.perf_counter() - t0)
    return n / best


def throughput(cfg, fluxes: np.ndarray, z: np.ndarray) -> dict[str, float]:
    """Steady-state training samples/s of the seed model (batch 16 and 256) and the default model,
    each beside the reference network's rate measured in the same run (ratio), its FLOP per
    training sample and the share of the host's numpy sgemm rate it reaches."""
    from xpz.hostinfo import print_host, reference_samples_per_s, training_flops_per_sample
    from xpz.model.architectures import build_model, build_seed_model, flat_hyperparameters, z_bin_edges
    from xpz.model.scaling import fit_model_scaler, fit_scaler
    from xpz.model.train import balance_weights, make_dataset

    host = print_host()
    out = {"reference": host["reference_samples_per_s"]}
    tcfg = cfg.train
    weights = balance_weights(z, z_bin_edges(cfg.model), tcfg.balance, tcfg.balance_max_weight)
    runs = [
        ("seed CNN, batch 16", lambda: build_seed_model(fit_scaler(fluxes)), 16, 2048),
        ("seed CNN, batch 256", lambda: build_seed_model(fit_scaler(fluxes)), 256, 4096),
        (
            f"default CNN, batch {tcfg.batch_size}",
            lambda: build_model(
                flat_hyperparameters(cfg.model.default),
                cfg.model,
                fit_model_scaler(fluxes, cfg.model),
            ),
            tcfg.batch_size,
            16384,
        ),
    ]
    for name, build, batch, n in runs:
        model = build()
        n = min(n, len(fluxes))
        w = None if weights is None else weights[:n]
        model.fit(make_dataset(fluxes[: batch * 3], z[: batch * 3], None if w is None else w[: batch * 3], batch),
                  epochs=1, verbose=0)  # trace  # fmt: skip
        # the training pipeline itself: shuffled, weighted tf.data batches (xpz.model.train.make_dataset)
        rate = _fit_rate(model, make_dataset(fluxes[:n], z[:n], w, batch, shuffle=True), n=n)
        flops = training_flops_per_sample(model)
        out[name] = rate
        print(
            f"throughput  {name:28s} {rate:8.0f} samples/s = {rate / out['reference']:.3f} x reference  "
            f"({model.count_params():,} params, {flops / 1e6:.1f} MFLOP/sample -> {rate * flops / 1e9:.1f} GFLOP/s "
            f"= {100 * rate * flops / 1e9 / host['sgemm_gflops']:.0f}% of sgemm)",
            flush=True,
        )
    again = reference_samples_per_s()
    print(
        f"throughput  reference network again      {again:8.0f} samples/s (drift {again / out['reference'] - 1:+.0%})"
    )
    return out


def profile(cfg, fluxes: np.ndarray, z: np.ndarray, n: int = 16384) -> None:
    """Where a training step of the default CNN goes: variants at the same batch size, each as
    seconds per 1,000 samples and as a ratio to the reference network measured in the same run.
    The differences attribute the time: data pipeline (tf.data shuffle/weights vs cached batches),
    convolutions (the network without its Conv1D stack), the 120-bin softmax head and its loss (a
    1-output Huber head instead), per-batch overhead (a 1-layer model at the same batch size)."""
    import keras

    from xpz.hostinfo import print_host, reference_samples_per_s
    from xpz.model.architectures import build_model, flat_hyperparameters
    from xpz.model.scaling import fit_model_scaler
    from xpz.model.train import make_dataset

    host = print_host()
    ref = host["reference_samples_per_s"]
    batch, n = cfg.train.batch_size, min(n, len(fluxes))
    x, zz, w = fluxes[:n], z[:n], np.ones(n, np.float32)
    scaler = fit_model_scaler(fluxes, cfg.model)
    hp = flat_hyperparameters(cfg.model.default)

    def variant(**change):
        keras.utils.set_random_seed(0)
        return build_model({**hp, **change}, cfg.model, scaler)

    def tiny():
        inputs = keras.Input((fluxes.shape[1],))
        m = keras.Model(inputs, keras.layers.Dense(1)(inputs))
        m.compile(optimizer="adam", loss="mse")
        return m

    pipeline = make_dataset(x, zz, w, batch, shuffle=True)
    cached = make_dataset(x, zz, w, batch).cache()
    cases = [
        ("default CNN, training pipeline", variant, pipeline),
        ("default CNN, cached batches", variant, cached),
        ("without Conv1D layers", lambda: variant(conv_layers=0), cached),
        ("regression head (Huber, 1 output)", lambda: variant(loss="huber"), cached),
        ("1-layer model (per-batch overhead)", tiny, cached),
    ]
    print(
        f"profile of one training epoch, {n:,} samples, batch {batch} (best of 2 epochs after a tracing one)"
    )
    for name, build, ds in cases:
        model = build()
        model.fit(ds.take(3), epochs=1, verbose=0)
        rate = _fit_rate(model, ds, n=n)
        print(
            f"profile  {name:36s} {1000 / rate * 1000:7.1f} ms per 1,000 samples  ({rate:7.0f}/s, "
            f"{rate / ref:.3f} x reference)",
            flush=True,
        )
    print(f"profile  reference network again        {reference_samples_per_s():7.0f}/s")


def load_data(args, cfg) -> pd.DataFrame:
    if args.data:
        return pd.read_parquet(args.data)
    from xpz.data.synthetic import generate

    return generate(cfg.data.model_copy(update={"n_galaxies": args.n or cfg.data.n_galaxies}))


def row(name: str, wall, m: dict, prefix: str) -> str:
    def f(key, fmt="{:.4f}"):
        v = m.get(prefix + key, np.nan)
        return "-" if v is None or np.isnan(v) else fmt.format(v)

    bias = f("worst_bin_bias")
    if bias != "-":
        bias += f" ({f('worst_bin_bias_z', '{:.2f}')})"
    wall_s = "-" if wall is None else f"{wall:.0f} s"
    return f"| {name} | {wall_s} | {f('mae')} | {f('sigma_nmad')} | {f('outlier_fraction')} | {bias} | {f('coverage_68', '{:.3f}')} |"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--data", help="dataset Parquet (default: generate --n galaxies)")
    ap.add_argument(
        "--n", type=count(1000), default=None, help="galaxies to generate (default: data.n_galaxies)"
    )
    ap.add_argument("--extra", help="a larger independent dataset to judge per-bin bias")
    ap.add_argument("--skip-seed", action="store_true")
    ap.add_argument("--skip-default", action="store_true", help="only the seed recipe (needs --budget)")
    ap.add_argument("--budget", type=float, help="seed recipe wall time (default: the default pipeline's)")
    ap.add_argument("--throughput-only", action="store_true")
    ap.add_argument(
        "--profile-step", action="store_true", help="where the default CNN's training step goes, then exit"
    )
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--save", help="save the default model here (.keras)")
    args = ap.parse_args(argv)
    quiet_telemetry()

    from xpz.data.split import split_dataset
    from xpz.model.evaluate import evaluate, summary_metrics, table_markdown
    from xpz.model.posterior import predict_redshift
    from xpz.model.train import train_model
    from xpz.model.tune import tune
    from xpz.spectra import flux_matrix

    cfg = load_config(args.params, profile=args.profile, overrides={"train.verbose": 0, "tune.enabled": True})
    df = load_data(args, cfg)
    splits = split_dataset(df, cfg.split)
    x_train, z_train = flux_matrix(splits.train), splits.train["z"].to_numpy(np.float32)
    print(
        f"data: {len(df)} galaxies; train {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)}"
    )
    if args.profile_step:
        profile(cfg, x_train, z_train)
        return 0
    if not args.skip_throughput:
        throughput(cfg, x_train, z_train)
    if args.throughput_only:
        return 0

    results = []
    wall = args.budget
    if not args.skip_default:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            tuned = tune(splits, cfg, Path(tmp) / "tuning") if cfg.tune.enabled else None
        t_tune = time.perf_counter() - t0
        res = train_model(splits, cfg, tuned.best_hyperparameters if tuned else None)
        wall = time.perf_counter() - t0
        print(f"default: tune {t_tune:.0f} s, train {res.seconds:.0f} s ({res.epochs} epochs, "
              f"{res.samples_per_s:.0f} samples/s), calibration {res.calibration}; "
              f"hyperparameters {res.hyperparameters}", flush=True)  # fmt: skip
        print("val_mae per epoch:", [round(v, 4) for v in res.history.get("val_mae", [])],
              "best epoch", res.best_epoch, flush=True)  # fmt: skip
        ev = evaluate(res.model, splits, cfg, res.history)
        results.append(("default pipeline (tune + train)", wall, ev.metrics, "test_", res.model))
        if args.save:
            res.model.save(args.save)

    if not args.skip_seed:
        seed_cfg = load_config(
            args.params,
            profile=args.profile,
            overrides={
                "model.architecture": "seed", "model.normalize_flux": False, "train.batch_size": 16,
                "train.epochs": 20, "train.patience": 20, "train.max_seconds": wall, "train.verbose": 0,
                "train.lr_schedule": "constant", "train.learning_rate": None, "train.balance": 0.0,
                "train.members": 1,
            },
        )  # fmt: skip
        t1 = time.perf_counter()
        seed_res = train_model(splits, seed_cfg)
        seed_wall = time.perf_counter() - t1
        print(
            f"seed recipe: {seed_res.epochs} epochs in {seed_res.seconds:.0f} s, {seed_res.samples_per_s:.0f} samples/s"
        )
        seed_ev = evaluate(seed_res.model, splits, seed_cfg)
        if args.skip_default:
            ev = seed_ev
        results.append(("seed recipe (Table 2, batch 16), equal wall time", seed_wall, seed_ev.metrics, "test_",
                        seed_res.model))  # fmt: skip
    results.append(("predict the training mean", None, ev.metrics, "baseline_mean/test_", None))
    results.append(
        (
            f"kNN (k={cfg.evaluate.knn_k}) on unit-normalised fluxes",
            None,
            ev.metrics,
            "baseline_knn/test_",
            None,
        )
    )

    print("\n| model | wall | test MAE | sigma_NMAD | outliers | worst bias z<=0.5 | coverage 68 |")
    print("|---|---|---|---|---|---|---|")
    for name, w, m, prefix, _ in results:
        print(row(name, w, m, prefix))
    print(f"\n{results[0][0]}, per-bin table (test):\n")
    print(table_markdown(ev.bin_table))

    if args.extra:
        extra = pd.read_parquet(args.extra)
        print(f"\nIndependent set {args.extra} ({len(extra)} galaxies):\n")
        print("| model | MAE | sigma_NMAD | outliers | worst bias z<=0.5 | coverage 68 |")
        print("|---|---|---|---|---|---|")
        tables = {}
        for name, _, _, _, model in results:
            if model is None:
                continue
            p = predict_redshift(model, flux_matrix(extra))
            m, t = summary_metrics(
                "", extra["z"].to_numpy(), p["z"], p["z_lower"], p["z_upper"], cfg.evaluate
            )
            tables[name] = t
            print(row(name, None, m, "").replace("| - |", "|", 1))
        print(f"\n{results[0][0]}, per-bin table (independent set):\n")
        print(table_markdown(tables[results[0][0]]))
    return 0


if __name__ == "__main__":
    run_main(main)
