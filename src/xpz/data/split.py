"""Deterministic, redshift-stratified train/validation/test split (the seed's 63/27/10).

The split is computed once (DVC stage `split`) and stored as `source_id -> split`; every later
stage reads it through `load_splits`, so tuning, training and evaluation always see the same
galaxies. Each split is identified by the sha256 of its sorted source_ids (`split_digest`), which
MLflow records as lineage.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from xpz.config import SplitConfig
from xpz.data.io import read_dataset
from xpz.errors import InputError, describe_rows
from xpz.files import atomic_path
from xpz.spectra import FAMILY_COLUMN, ID_COLUMN, TARGET_COLUMN

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
SPLIT_COLUMN = "split"
MIN_PER_STRATUM = 20  # sparser high-z bins are merged into one tail stratum


@dataclass(frozen=True)
class Splits:
    """The three splits of one dataset, in the dataset schema, plus their digests."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    digests: dict[str, str]

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in SPLIT_NAMES:
            raise KeyError(f"unknown split {name!r}; expected one of {SPLIT_NAMES}")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        return {name: len(self[name]) for name in SPLIT_NAMES}


def split_digest(source_ids: np.ndarray | pd.Series) -> str:
    """sha256 of the sorted int64 source_ids: the identity of a split, independent of row order."""
    ids = np.sort(np.asarray(source_ids, dtype=np.int64))
    return hashlib.sha256(ids.tobytes()).hexdigest()


def redshift_strata(z: np.ndarray, width: float, min_count: int = MIN_PER_STRATUM) -> np.ndarray:
    """Stratum label per galaxy: z bins of `width`, the sparse high-z tail merged into one stratum."""
    bins = np.floor(np.asarray(z, dtype=float) / width).astype(np.int64)
    if bins.size == 0:
        return bins
    counts = np.bincount(bins)
    tail = np.cumsum(counts[::-1])[::-1]  # galaxies at or above each bin
    dense = np.nonzero(tail >= min_count)[0]
    last = int(dense.max()) if dense.size else 0
    return np.minimum(bins, last)


def assign_splits(df: pd.DataFrame, cfg: SplitConfig) -> pd.DataFrame:
    """Pure function: a frame `source_id, split` for every row of `df`, stratified on z and, when
    the dataset has one, on the galaxy `family` (each family's z strata are split separately, so
    every split holds each family in the same share at every redshift).

    Rows are ordered by source_id first, so the result depends on the data and the seed only,
    not on the order of the file.
    """
    if df.empty:
        raise InputError("cannot split an empty dataset")
    columns = [ID_COLUMN, TARGET_COLUMN] + ([FAMILY_COLUMN] if FAMILY_COLUMN in df.columns else [])
    ordered = df[columns].sort_values(ID_COLUMN, kind="stable")
    ids = ordered[ID_COLUMN].to_numpy(dtype=np.int64)
    z = ordered[TARGET_COLUMN].to_numpy()
    strata = np.zeros(len(ids), dtype=np.int64)
    groups = ordered[FAMILY_COLUMN].astype(str).to_numpy() if FAMILY_COLUMN in columns else np.zeros(len(ids))
    offset = 0
    for group in np.unique(groups):
        members = groups == group
        strata[members] = redshift_strata(z[members], cfg.z_bin_width) + offset
        offset = int(strata[members].max()) + 1
    rng = np.random.default_rng(cfg.seed)
    fractions = np.array([cfg.train, cfg.val, cfg.test])
    labels = np.empty(len(ids), dtype=object)
    carry = np.zeros(3)  # fractional remainders carried across strata keep global shares exact
    for stratum in np.unique(strata):
        members = np.nonzero(strata == stratum)[0]
        members = members[rng.permutation(len(members))]
        want = fractions * len(members) + carry
        counts = np.floor(want).astype(int)
        short = len(members) - counts.sum()
        for k in np.argsort(-(want - counts))[:short]:
            counts[k] += 1
        carry = want - counts
        bounds = np.cumsum(counts)
        labels[members[: bounds[0]]] = "train"
        labels[members[bounds[0] : bounds[1]]] = "val"
        labels[members[bounds[1] :]] = "test"
    return pd.DataFrame({ID_COLUMN: ids, SPLIT_COLUMN: pd.Categorical(labels, categories=SPLIT_NAMES)})


def digests_of(assignment: pd.DataFrame) -> dict[str, str]:
    """Digest of each split in an assignment frame."""
    return {
        name: split_digest(assignment.loc[assignment[SPLIT_COLUMN] == name, ID_COLUMN])
        for name in SPLIT_NAMES
    }


def write_split(assignment: pd.DataFrame, path: Path, digests_path: Path) -> dict[str, object]:
    """Store the assignment and a JSON summary (digests and counts), atomically."""
    counts = assignment[SPLIT_COLUMN].value_counts().reindex(SPLIT_NAMES).astype(int).to_dict()
    summary: dict[str, object] = {"digests": digests_of(assignment), "counts": counts}
    with atomic_path(path) as tmp:
        assignment.to_parquet(tmp, index=False)
    with atomic_path(digests_path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def load_splits(data_path: Path | str, split_path: Path | str) -> Splits:
    """Join the raw dataset with the stored assignment. A stale split (ids that do not match the
    dataset) is an error: re-run the `split` stage rather than silently training on a subset."""
    data = read_dataset(Path(data_path))
    split_path = Path(split_path)
    if not split_path.exists():
        raise InputError(f"{split_path}: no split found; run `xpz data split` (or `dvc repro split`)")
    assignment = pd.read_parquet(split_path)
    merged = data.merge(assignment, on=ID_COLUMN, how="left", validate="one_to_one")
    missing = merged.loc[merged[SPLIT_COLUMN].isna(), ID_COLUMN]
    if len(missing) or len(assignment) != len(data):
        raise InputError(
            f"{split_path}: the split does not match {data_path} ({len(assignment)} assigned ids, "
            f"{len(data)} rows; unassigned source_id {describe_rows(missing.tolist())}); "
            "re-run `xpz data split`"
        )
    return partition(merged)


def partition(labelled: pd.DataFrame) -> Splits:
    """Cut a dataset carrying a `split` column into `Splits` (the column dropped, digests computed)."""
    parts = {
        name: labelled.loc[labelled[SPLIT_COLUMN] == name].drop(columns=SPLIT_COLUMN).reset_index(drop=True)
        for name in SPLIT_NAMES
    }
    digests = {name: split_digest(frame[ID_COLUMN]) for name, frame in parts.items()}
    return Splits(**parts, digests=digests)


def split_dataset(data: pd.DataFrame, cfg: SplitConfig) -> Splits:
    """Assign and cut in memory (benchmarks, experiments): the same splits `xpz data split` stores."""
    return partition(data.merge(assign_splits(data, cfg), on=ID_COLUMN, how="left", validate="one_to_one"))
