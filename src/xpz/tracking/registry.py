"""The registry: versions, the champion/challenger decision, manual promotion, and version listings."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from xpz.errors import InputError

if TYPE_CHECKING:
    pass
from xpz.tracking.pyfunc import LoggedModel
from xpz.tracking.store import CHALLENGER, CHAMPION, DIGEST_TAG, LISTED_METRICS, Tracking

# ------------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class Registration:
    """What `register` did: the new version, the champion after the decision, and why."""

    version: str
    champion_version: str
    promoted: bool
    decision: str
    reason: str
    candidate_value: float
    champion_value: float | None
    previous_champion: str | None
    split_comparison: str


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(
            name, description="xpz: galaxy redshift from Gaia XP spectra (raw fluxes in, z out)"
        )
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _alias_version(client: MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def _run_metric(client: MlflowClient, run_id: str | None, key: str) -> float | None:
    if not run_id:
        return None
    value = client.get_run(run_id).data.metrics.get(key)
    return None if value is None or math.isnan(value) else float(value)


def _run_tag(client: MlflowClient, run_id: str | None, key: str) -> str | None:
    if not run_id:
        return None
    return client.get_run(run_id).data.tags.get(key)


def _decide(
    tr: Tracking, candidate: float, champion, client: MlflowClient, test_digest: str | None
) -> tuple[bool, str, float | None, str]:
    """(promote?, reason, champion value, split comparison) against the current champion."""
    if champion is None:
        return True, "first model: no champion yet", None, "first_model"
    champ_value = _run_metric(client, champion.run_id, tr.primary_metric)
    champ_digest = _run_tag(client, champion.run_id, DIGEST_TAG.format("test"))
    if test_digest and champ_digest:
        comparison = "same_split" if champ_digest == test_digest else "across_splits"
    else:
        comparison = "unknown_split"
    metric = tr.primary_metric
    if math.isnan(candidate):
        return False, f"candidate has no {metric}", champ_value, comparison
    if champ_value is None:
        return True, f"champion v{champion.version} has no {metric}", None, comparison
    if tr.better(candidate, champ_value):
        word = "lower" if tr.direction == "minimize" else "higher"
        return (
            True,
            f"{metric} {candidate:.6g} {word} than champion v{champion.version} ({champ_value:.6g})",
            champ_value,
            comparison,
        )
    return (
        False,
        f"{metric} {candidate:.6g} does not beat champion v{champion.version} ({champ_value:.6g})",
        champ_value,
        comparison,
    )


def register(
    tr: Tracking,
    run_id: str,
    model: LoggedModel | str,
    metrics: Mapping[str, float] | None = None,
) -> Registration:
    """Register the run's model as a new version, alias it `challenger`, promote it if it wins.

    The candidate's primary metric comes from `metrics` (or the run); the champion's from the
    champion's run. Both runs' test-split digests are compared: when they differ the comparison is
    still made but recorded as `across_splits` (re-evaluating the champion is out of scope).
    """
    client = tr.client
    name = tr.registered_model
    model_id = model.model_id if isinstance(model, LoggedModel) else str(model).removeprefix("models:/")
    metric = tr.primary_metric
    candidate = metrics.get(metric) if metrics is not None else None
    if candidate is None:
        candidate = _run_metric(client, run_id, metric)
    candidate = float("nan") if candidate is None else float(candidate)
    test_digest = _run_tag(client, run_id, DIGEST_TAG.format("test"))

    _ensure_registered_model(client, name)
    version = str(
        client.create_model_version(
            name,
            source=f"models:/{model_id}",
            run_id=run_id,
            model_id=model_id,
            tags={"xpz.primary_metric": metric, "xpz.candidate_value": repr(candidate)},
        ).version
    )
    client.set_registered_model_alias(name, CHALLENGER, version)

    # Decide against the current champion; re-read it right before moving the alias so that a
    # concurrent promotion between our read and our write is compared against, not overwritten.
    champion = _alias_version(client, name, CHAMPION)
    for _ in range(3):
        promote_it, reason, champ_value, comparison = _decide(tr, candidate, champion, client, test_digest)
        latest = _alias_version(client, name, CHAMPION)
        if (latest and str(latest.version)) == (champion and str(champion.version)):
            break
        champion = latest
    else:
        promote_it, reason, champ_value, comparison = _decide(tr, candidate, champion, client, test_digest)
    previous = str(champion.version) if champion is not None else None
    if promote_it:
        client.set_registered_model_alias(name, CHAMPION, version)
    decision = "promoted" if promote_it else "challenger"
    tags = {
        "xpz.decision": decision,
        "xpz.decision_reason": reason,
        "xpz.direction": tr.direction,
        "xpz.champion_value": "" if champ_value is None else repr(champ_value),
        "xpz.champion_version_before": previous or "",
        "xpz.split_comparison": comparison,
        "xpz.split_digest.test": test_digest or "",
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_tag(run_id, "xpz.model_version", str(version))
    return Registration(
        version=str(version),
        champion_version=str(version) if promote_it else str(previous),
        promoted=promote_it,
        decision=decision,
        reason=reason,
        candidate_value=candidate,
        champion_value=champ_value,
        previous_champion=previous,
        split_comparison=comparison,
    )


def promote(tr: Tracking, version: str | int, reason: str = "manual promotion") -> str | None:
    """Give `version` the `champion` alias by hand; returns the previous champion version (or None)."""
    client = tr.client
    name = tr.registered_model
    version = str(version)
    try:
        client.get_model_version(name, version)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise InputError(f"registered model {name!r} has no version {version}") from None
        raise
    before = _alias_version(client, name, CHAMPION)
    previous = str(before.version) if before is not None else None
    client.set_registered_model_alias(name, CHAMPION, version)
    tags = {
        "xpz.decision": "manual_promotion",
        "xpz.decision_reason": reason,
        "xpz.champion_version_before": previous or "",
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return previous


@dataclass
class VersionInfo:
    version: str
    aliases: list[str]
    run_id: str | None
    created: pd.Timestamp | None
    decision: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def list_models(tr: Tracking, metrics: Sequence[str] | None = None) -> list[VersionInfo]:
    """Every version of the registered model (newest first) with aliases, decision and test metrics."""
    client = tr.client
    name = tr.registered_model
    keys = list(dict.fromkeys([tr.primary_metric, *(metrics or LISTED_METRICS)]))
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    try:
        aliases_by_version: dict[str, list[str]] = {}
        for alias, ver in (client.get_registered_model(name).aliases or {}).items():
            aliases_by_version.setdefault(str(ver), []).append(alias)
    except MlflowException:
        aliases_by_version = {}
    out = []
    for mv in versions:
        run_metrics: dict[str, float] = {}
        if mv.run_id:
            try:
                all_metrics = client.get_run(mv.run_id).data.metrics
                run_metrics = {k: all_metrics[k] for k in keys if k in all_metrics}
            except MlflowException:
                pass
        out.append(
            VersionInfo(
                version=str(mv.version),
                aliases=sorted(aliases_by_version.get(str(mv.version), list(mv.aliases or []))),
                run_id=mv.run_id,
                created=pd.Timestamp(mv.creation_timestamp, unit="ms", tz="UTC")
                if mv.creation_timestamp
                else None,
                decision=(mv.tags or {}).get("xpz.decision"),
                metrics=run_metrics,
                tags=dict(mv.tags or {}),
            )
        )
    return sorted(out, key=lambda v: int(v.version), reverse=True)


def models_table(infos: Sequence[VersionInfo]) -> pd.DataFrame:
    """`list_models` output as a table (one row per version)."""
    rows = []
    for info in infos:
        row: dict[str, Any] = {
            "version": info.version,
            "aliases": ",".join(info.aliases),
            "decision": info.decision or "",
            "created": info.created.strftime("%Y-%m-%d %H:%M") if info.created is not None else "",
            "run_id": info.run_id or "",
        }
        row.update(info.metrics)
        rows.append(row)
    return pd.DataFrame(rows)


def load_champion(tr: Tracking, alias: str = CHAMPION):
    """The pyfunc model behind an alias (`models:/<name>@champion`)."""
    return mlflow.pyfunc.load_model(f"models:/{tr.registered_model}@{alias}")


def existing_registration(tr: Tracking, run_id: str) -> Registration | None:
    """The decided version this run already registered (a retry after a lost response), else None.

    Lets a retried registration report the first attempt's version instead of creating a second one.
    """
    client = tr.client
    name = tr.registered_model
    if not client.search_registered_models(f"name = '{name}'"):
        return None
    mine = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    decided = [mv for mv in mine if (mv.tags or {}).get("xpz.decision")]
    if not decided:
        return None
    mv, tags = decided[0], decided[0].tags
    champion = (client.get_registered_model(name).aliases or {}).get(CHAMPION)
    return Registration(
        version=str(mv.version),
        champion_version=str(champion),
        promoted=tags.get("xpz.decision") == "promoted",
        decision=tags.get("xpz.decision", ""),
        reason=tags.get("xpz.decision_reason", ""),
        candidate_value=float(tags.get("xpz.candidate_value", "nan")),
        champion_value=float(tags["xpz.champion_value"]) if tags.get("xpz.champion_value") else None,
        previous_champion=tags.get("xpz.champion_version_before") or None,
        split_comparison=tags.get("xpz.split_comparison", ""),
    )


def aliases(tr: Tracking) -> dict[str, str]:
    """{alias: version} of the registered model, read back from the registry."""
    model = tr.client.get_registered_model(tr.registered_model)
    return {k: str(v) for k, v in (model.aliases or {}).items()}
