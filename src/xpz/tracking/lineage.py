"""Dataset lineage: the git commit, the data.dvc md5 and the split digests a run was trained on."""

from __future__ import annotations

import hashlib
import json
import subprocess
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import yaml
from mlflow.entities import DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from xpz.spectra import ID_COLUMN, TARGET_COLUMN

if TYPE_CHECKING:
    pass
from xpz.tracking.runs import set_tags
from xpz.tracking.store import DIGEST_TAG, SPLIT_CONTEXT, SPLITS, Tracking


def git_commit(repo: Path | str = ".") -> tuple[str, bool] | None:
    """(HEAD commit, working tree dirty) of the git checkout at `repo`, or None outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None


def dvc_md5(dvc_file: Path | str = "data.dvc") -> str | None:
    """The md5 of the first output recorded in a .dvc file, or None when there is none."""
    path = Path(dvc_file)
    if not path.is_file():
        return None
    try:
        doc = yaml.safe_load(path.read_text()) or {}
        outs = doc.get("outs") or []
        return str(outs[0]["md5"]) if outs and outs[0].get("md5") else None
    except (yaml.YAMLError, AttributeError, KeyError, TypeError):
        return None


def file_md5(path: Path | str, chunk: int = 1 << 22) -> str:
    """The md5 of a file's bytes (what DVC records for a file; ~1 s per 200 MB)."""
    h = hashlib.md5()  # noqa: S324  # DVC's content hash, not a security use
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def dvc_style_md5(path: Path | str, known: Mapping[Path, str] | None = None) -> str | None:
    """The md5 DVC would record for `path` now: a file's md5, or for a folder the md5 of DVC's listing
    of its files (`<md5>.dir`, as in data.dvc); None when `path` is missing. `known`: md5s already
    computed (path -> md5), not hashed again."""
    path = Path(path)
    known = known or {}

    def md5_of(file: Path) -> str:
        return known.get(file.resolve()) or file_md5(file)

    if path.is_file():
        return md5_of(path)
    if not path.is_dir():
        return None
    entries = sorted(
        (
            {"md5": md5_of(f), "relpath": f.relative_to(path).as_posix()}
            for f in path.rglob("*")
            if f.is_file()
        ),
        key=lambda e: e["relpath"],
    )
    listing = json.dumps(entries, sort_keys=True).encode("utf-8")
    return hashlib.md5(listing).hexdigest() + ".dir"  # noqa: S324


def dvc_out_path(dvc_file: Path | str = "data.dvc") -> Path | None:
    """The path of the first output of a .dvc file (relative to the file's folder), or None."""
    path = Path(dvc_file)
    try:
        outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or []
        return path.parent / str(outs[0]["path"]) if outs and outs[0].get("path") else None
    except (OSError, yaml.YAMLError, AttributeError, KeyError, TypeError):
        return None


def data_tags(dvc_file: Path | str = "data.dvc", data_path: Path | str | None = None) -> dict[str, str]:
    """What data a run was trained on, checked against data.dvc (not just read from it):

    `xpz.data_dvc_md5`: the version data.dvc records; `xpz.data_md5`: the md5 DVC would record for
    the local data now (comparable with it); `xpz.data_dvc_match`: "true" when they agree;
    `xpz.data_path` / `xpz.data_file_md5`: the dataset file itself (`data_path`, e.g. cfg.data.path).
    A dataset regenerated locally (`xpz data generate --force`) so reads as not data.dvc's version.
    """
    tags: dict[str, str] = {}
    known: dict[Path, str] = {}
    if data_path is not None and Path(data_path).is_file():
        tags["xpz.data_path"] = str(data_path)
        tags["xpz.data_file_md5"] = known[Path(data_path).resolve()] = file_md5(data_path)
    recorded = dvc_md5(dvc_file)
    out = dvc_out_path(dvc_file) if recorded is not None else None
    if recorded is not None:
        tags["xpz.data_dvc_md5"] = recorded
    actual = dvc_style_md5(out, known) if out is not None else None
    if actual is not None:
        tags["xpz.data_md5"] = actual
        inside = data_path is None or Path(data_path).resolve().is_relative_to(out.resolve())  # type: ignore[union-attr]
        tags["xpz.data_dvc_match"] = str(actual == recorded and inside).lower()
    elif "xpz.data_file_md5" in tags:
        tags["xpz.data_md5"] = tags["xpz.data_file_md5"]
        tags["xpz.data_dvc_match"] = "false"
    return tags


def lineage_tags(
    digests: Mapping[str, str] | None = None,
    repo: Path | str = ".",
    dvc_file: Path | str = "data.dvc",
    data_path: Path | str | None = None,
) -> dict[str, str]:
    """Tags that pin a run to its code and data: git commit, the data's md5 checked against data.dvc
    (`data_tags`), split digests."""
    tags: dict[str, str] = {}
    commit = git_commit(repo)
    if commit is not None:
        tags["xpz.git_commit"] = commit[0]
        tags["mlflow.source.git.commit"] = commit[0]
        tags["xpz.git_dirty"] = str(commit[1]).lower()
    tags.update(data_tags(dvc_file, data_path))
    for split, digest in (digests or {}).items():
        tags[DIGEST_TAG.format(split)] = str(digest)
    return tags


def log_lineage(
    tr: Tracking,
    run_id: str,
    splits: Any,
    source: str | Path | None = None,
) -> None:
    """Dataset lineage: each split as an `mlflow.data` dataset input with its context.

    Only `source_id` and `z` of each split are profiled (not the 186 fluxes): the dataset digest is the
    split digest (sha256 of the sorted source ids, shortened to MLflow's 36 characters), the full one is
    an input tag and a run tag.
    """
    digests = dict(getattr(splits, "digests", {}) or {})
    inputs = []
    for split in SPLITS:
        frame = getattr(splits, split)
        light = frame.loc[:, [ID_COLUMN, TARGET_COLUMN]].reset_index(drop=True)
        full = digests.get(split)
        with warnings.catch_warnings():  # int64 source_id hint; ambiguous local-path source
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(  # type: ignore[attr-defined]  # lazily loaded submodule
                light,
                source=str(source) if source is not None else None,
                targets=TARGET_COLUMN,
                name=f"xpz-{split}",
                digest=full[:36] if full else None,
            )
            entity = dataset._to_mlflow_entity()  # what mlflow.log_input logs (schema + profile)
        tags = [InputTag(MLFLOW_DATASET_CONTEXT, SPLIT_CONTEXT[split])]
        if full:
            tags.append(InputTag("xpz.split_digest", full))
        inputs.append(DatasetInput(entity, tags=tags))
    tr.client.log_inputs(run_id, datasets=inputs)
    set_tags(tr, run_id, {DIGEST_TAG.format(k): v for k, v in digests.items()})
