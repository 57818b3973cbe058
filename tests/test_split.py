"""Split: disjoint, complete, stratified, deterministic, order-independent, stored with digests."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import random_frame
from xpz.config import SplitConfig
from xpz.data.io import write_dataset
from xpz.data.split import SPLIT_NAMES, assign_splits, load_splits, redshift_strata, split_digest, write_split
from xpz.errors import InputError


@pytest.fixture()
def frame():
    return random_frame(5000, seed=1)


def test_disjoint_complete_and_proportional(frame):
    a = assign_splits(frame, SplitConfig())
    assert len(a) == len(frame) and a["source_id"].is_unique
    assert set(a["source_id"]) == set(frame["source_id"])
    counts = a["split"].value_counts()
    assert (
        abs(counts["train"] - 3150) <= 2 and abs(counts["val"] - 1350) <= 2 and abs(counts["test"] - 500) <= 2
    )


def test_stratified_on_redshift(frame):
    a = assign_splits(frame, SplitConfig()).merge(frame[["source_id", "z"]])
    overall = np.quantile(frame["z"], [0.1, 0.5, 0.9])
    for name in SPLIT_NAMES:
        q = np.quantile(a.loc[a["split"] == name, "z"], [0.1, 0.5, 0.9])
        assert np.allclose(q, overall, atol=0.006), name
    # every 0.05 bin with >= 50 galaxies has ~10% of them in test
    bins = np.floor(a["z"] / 0.05)
    for b, group in a.groupby(bins):
        if len(group) >= 50:
            assert abs((group["split"] == "test").mean() - 0.10) < 0.03, b


def test_deterministic_and_independent_of_row_order(frame):
    cfg = SplitConfig(seed=7)
    a = assign_splits(frame, cfg)
    b = assign_splits(frame.sample(frac=1.0, random_state=3), cfg)
    assert a.equals(b)
    c = assign_splits(frame, SplitConfig(seed=8))
    assert not a["split"].equals(c["split"])


def test_sparse_high_z_merged_into_one_stratum():
    z = np.array([0.01] * 100 + [0.45, 0.52, 0.58])
    strata = redshift_strata(z, 0.01, min_count=20)
    assert len(set(strata[-3:])) == 1


def test_digest_ignores_order_and_detects_change():
    ids = np.array([5, 3, 9])
    assert split_digest(ids) == split_digest(ids[::-1])
    assert split_digest(ids) != split_digest(np.array([5, 3, 10]))


def test_write_and_load_roundtrip(tmp_path, frame):
    data = write_dataset(frame, tmp_path / "data.parquet")
    summary = write_split(
        assign_splits(frame, SplitConfig()), tmp_path / "s/split.parquet", tmp_path / "s/digests.json"
    )
    splits = load_splits(data, tmp_path / "s/split.parquet")
    assert sum(splits.sizes().values()) == len(frame)
    assert (
        splits.digests
        == summary["digests"]
        == json.loads((tmp_path / "s/digests.json").read_text())["digests"]
    )
    assert list(splits.train.columns) == list(frame.columns)
    assert not set(splits.train.source_id) & set(splits.test.source_id)


def test_stale_split_is_an_error(tmp_path, frame):
    write_split(assign_splits(frame, SplitConfig()), tmp_path / "split.parquet", tmp_path / "d.json")
    data = write_dataset(frame.iloc[:-10], tmp_path / "data.parquet")
    with pytest.raises(InputError, match="does not match"):
        load_splits(data, tmp_path / "split.parquet")


def test_empty_dataset_cannot_be_split(frame):
    with pytest.raises(InputError, match="empty"):
        assign_splits(frame.iloc[:0], SplitConfig())
