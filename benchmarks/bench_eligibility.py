"""Eligibility benchmark: which non-galaxies the `eligible` flag catches, and where the spectrum alone
cannot tell. Prints figures.

1. Flag rates on the test galaxies (a fresh generator seed) and on each kind of generated
   non-galaxy (`xpz.data.impostors`: blackbodies with and without dust, quasar-like spectra, noise,
   a band zeroed or scaled), at the threshold stored in the model.
2. A map of the flag rate over blackbody temperature x dust E(B-V), at the galaxies' noise and
   noise-free (the same G range). A cell that stays unflagged when noise-free is a spectrum the
   galaxy set itself contains within the noise: cool stars look like the reddest low-z galaxies,
   whose light is theirs. Gaia's own galaxy sample (DSC/UGC) uses parallax and proper motion too.
3. The flag rate of the non-galaxies against G (brightness).

    python benchmarks/bench_eligibility.py                         # models:/xpz-redshift@champion
    python benchmarks/bench_eligibility.py --model path/to/model.keras --n 1000
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from _cli import count, run_main  # noqa: E402
from xpz.env import quiet_telemetry  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _registered_model import add_model_arguments, load_model  # noqa: E402

SEED = 2027  # not the training seed
TEMPERATURES = (3000, 4000, 5000, 6500, 9000, 15000, 30000)
EBV = (0.0, 0.1, 0.3, 0.6, 1.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(ap)
    ap.add_argument("--n", type=count(10), default=500, help="non-galaxies per kind, and per map cell / 2")
    ap.add_argument("--galaxies", type=count(1000), default=20_000, help="fresh test galaxies")
    args = ap.parse_args(argv)
    from xpz.hostinfo import print_host

    print_host()  # CPU model, numpy sgemm GFLOP/s, reference network samples/s: compare hosts as ratios
    quiet_telemetry()

    from xpz.data.impostors import blackbody_fluxes, generate_impostors
    from xpz.data.synthetic import generate
    from xpz.model.ood import ood_layer
    from xpz.spectra import flux_matrix

    cfg, model, predictor = load_model(args)
    layer = None if predictor.keras_model is None else ood_layer(predictor.keras_model)
    if layer is None:
        print(f"model {model}: no eligibility layer (a model saved before it existed)", file=sys.stderr)
        return 2
    flagged = lambda x: float(np.mean(~layer.eligible(layer.score(x))))  # noqa: E731
    galaxies = flux_matrix(generate(cfg.data.model_copy(update={"n_galaxies": args.galaxies, "seed": SEED})))
    imp = generate_impostors(args.n, cfg.data, seed=SEED)
    x, kinds = flux_matrix(imp), imp["kind"].to_numpy()
    print(f"model {model} ({predictor.uri}); legacy two-term score: {layer.legacy}\n")
    print("| set | flagged |\n|---|---|")
    print(f"| galaxies (new seed, {len(galaxies):,}) | {flagged(galaxies):.3f} |")
    for kind in dict.fromkeys(kinds):
        print(f"| {kind} ({np.sum(kinds == kind)}) | {flagged(x[kinds == kind]):.3f} |")
    print(f"| all non-galaxies | {flagged(x):.3f} |\n")
    n = max(args.n // 2, 20)
    for noise in (cfg.data.noise, 0.0):
        data = cfg.data.model_copy(update={"noise": noise})
        print(
            f"blackbodies flagged, T (rows, K) x E(B-V) (columns), noise x{noise:g}, G {data.g_min}-{data.g_max}"
        )
        print("| T \\ E(B-V) | " + " | ".join(f"{e:g}" for e in EBV) + " |\n" + "|---" * (len(EBV) + 1) + "|")
        for t in TEMPERATURES:
            row = [
                flagged(blackbody_fluxes(np.full(n, float(t)), np.full(n, e), data, seed=SEED)) for e in EBV
            ]
            print(f"| {t} | " + " | ".join(f"{v:.2f}" for v in row) + " |", flush=True)
        print()
    g = -2.5 * np.log10(np.clip(x.sum(axis=1), 1e-9, None))
    print("non-galaxies (noise and zeroed bands aside) flagged by total-flux quartile (bright -> faint)")
    keep = np.isin(kinds, ["blackbody", "blackbody_dust", "quasar", "band_scaled"])
    edges = np.quantile(g[keep], [0, 0.25, 0.5, 0.75, 1.0])
    parts = [flagged(x[keep & (g >= lo) & (g <= hi)]) for lo, hi in zip(edges[:-1], edges[1:])]
    print("  " + " | ".join(f"{v:.2f}" for v in parts))
    return 0


if __name__ == "__main__":
    run_main(main)
