"""Dataset lineage: the git commit, the data.dvc md5 and the split digests a run was trained on."""

from __future__ import annotations

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


def lineage_tags(
    digests: Mapping[str, str] | None = None,
    repo: Path | str = ".",
    dvc_file: Path | str = "data.dvc",
) -> dict[str, str]:
    """Tags that pin a run to its code and data: git commit, data.dvc md5, split digests."""
    tags: dict[str, str] = {}
    commit = git_commit(repo)
    if commit is not None:
        tags["xpz.git_commit"] = commit[0]
        tags["mlflow.source.git.commit"] = commit[0]
        tags["xpz.git_dirty"] = str(commit[1]).lower()
    md5 = dvc_md5(dvc_file)
    if md5 is not None:
        tags["xpz.data_md5"] = md5
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
