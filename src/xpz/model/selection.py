"""Tuning that noise cannot win: a search trial replaces the default architecture only on paired
evidence at equal budget over several seeds.

A 3-epoch proxy on 20k spectra ranks architectures by noise as much as by merit (issue 14: the
search picked a model that was no better than the default once trained). So the search's best trial
is only a *challenger*: it and the default are each trained `tune.confirm_seeds` times (seeds
`tune.seed`, `tune.seed + 1`, ...; in each pair both networks get the same seed, so the same data
order and the same initialisation stream) for `tune.confirm_epochs` epochs on the same subsample,
and the challenger replaces the default only if it wins every pair and its mean relative gain is at
least `tune.min_improvement` (`decide`). Everything is seeded, and the rule leans to the default,
so two runs with the same params choose the same architecture. The paired scores are stored in
the search folder (`confirmation.json`), so a resumed search reuses them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Decision:
    """The outcome of the paired comparison (scores: the objective, best over each run's epochs)."""

    replace: bool
    reason: str
    default_scores: list[float] = field(default_factory=list)
    challenger_scores: list[float] = field(default_factory=list)
    gains: list[float] = field(default_factory=list)  # relative gain of the challenger per seed (> 0: better)
    mean_gain: float = float("nan")


def decide(
    default_scores: Sequence[float],
    challenger_scores: Sequence[float],
    min_improvement: float,
    direction: str = "min",
) -> Decision:
    """Replace the default only if the challenger is better in every seed pair and better on
    average by at least `min_improvement` (relative to the default's score).

    `default_scores[i]` and `challenger_scores[i]` come from the same seed. Any NaN or a missing
    pair keeps the default. Raises ValueError for pairs of different lengths or a bad direction.
    """
    if direction not in ("min", "max"):
        raise ValueError(f"direction must be 'min' or 'max', got {direction!r}")
    d, c = np.asarray(default_scores, float), np.asarray(challenger_scores, float)
    if d.shape != c.shape:
        raise ValueError(f"paired scores differ in length: {len(d)} default vs {len(c)} challenger")
    base = dict(default_scores=d.tolist(), challenger_scores=c.tolist())
    if len(d) == 0 or not (np.isfinite(d).all() and np.isfinite(c).all()):
        return Decision(False, "no complete pair of finite scores: default kept", **base)
    sign = 1.0 if direction == "min" else -1.0
    gains = sign * (d - c) / np.maximum(np.abs(d), 1e-12)
    mean_gain = float(gains.mean())
    base.update(gains=gains.tolist(), mean_gain=mean_gain)
    if (gains <= 0).any():
        return Decision(
            False, f"challenger lost or tied {int((gains <= 0).sum())} of {len(gains)} seed pairs", **base
        )
    if mean_gain < min_improvement:
        return Decision(False, f"mean gain {mean_gain:.2%} < min_improvement {min_improvement:.2%}", **base)
    return Decision(True, f"won all {len(gains)} seed pairs, mean gain {mean_gain:.2%}", **base)


def paired_scores(
    fit_score: Callable[[dict[str, Any], int], float],
    default: dict[str, Any],
    challenger: dict[str, Any],
    seeds: Sequence[int],
    cache: Path | None = None,
) -> tuple[list[float], list[float]]:
    """`fit_score(hyperparameters, seed)` for the default and the challenger at each seed.

    With `cache` (a JSON file), scores already stored for the same (hyperparameters, seed) are
    reused and new ones are added, so a resumed search does not train them again.
    """
    stored: dict[str, float] = {}
    if cache is not None and cache.exists():
        stored = json.loads(cache.read_text())

    def score(hp: dict[str, Any], seed: int) -> float:
        key = json.dumps({"hp": hp, "seed": seed}, sort_keys=True, default=str)
        if key not in stored:
            stored[key] = float(fit_score(hp, seed))
            if cache is not None:
                tmp = cache.with_suffix(".tmp")
                tmp.write_text(json.dumps(stored, indent=1, sort_keys=True))
                tmp.replace(cache)
        return stored[key]

    d = [score(default, s) for s in seeds]
    c = [score(challenger, s) for s in seeds]
    return d, c


def decision_dict(decision: Decision) -> dict[str, Any]:
    return asdict(decision)
