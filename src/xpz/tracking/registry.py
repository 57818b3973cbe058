"""The registry: versions, the champion/challenger decision, manual promotion, and version listings."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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


GUARD_LOCK = "lock"  # a local store: a file lock makes read-decide-move one step
GUARD_VERIFY = "verify"  # a tracking server: the move is verified afterwards and repaired
LOCK_TIMEOUT_S = 300.0


def champion_lock_path(tracking_uri: str) -> Path | None:
    """The lock file that serialises champion moves of a local store (None for a tracking server):
    `<db>.champion.lock` next to a sqlite file, `<root>/.champion.lock` in a file store."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :].split("?", 1)[0])
        return db.with_name(db.name + ".champion.lock")
    if tracking_uri.startswith("file:"):
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        return Path(url2pathname(urlparse(tracking_uri).path)) / ".champion.lock"
    if "://" not in tracking_uri:
        return Path(tracking_uri) / ".champion.lock"
    return None


@contextlib.contextmanager
def champion_guard(tr: Tracking) -> Iterator[str]:
    """Hold what makes "read the champion, decide, move the alias, tag the version" one step.

    Local stores (sqlite, file): an exclusive file lock next to the store (`champion_lock_path`),
    shared by every process on the machine; yields `GUARD_LOCK`. A tracking server offers no
    compare-and-set, so nothing is held and `GUARD_VERIFY` is yielded: the caller checks the move
    afterwards (`verify_champion`). Raises `InputError` when the lock is not free within 5 minutes.
    """
    from filelock import FileLock, Timeout

    path = champion_lock_path(tr.registry_uri)
    if path is None:
        yield GUARD_VERIFY
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(path), timeout=LOCK_TIMEOUT_S):
            yield GUARD_LOCK
    except Timeout:
        raise InputError(
            f"{path}: another process has held the champion lock for {LOCK_TIMEOUT_S:.0f} s; "
            "if none is running, delete the file"
        ) from None


def _value(tags: Mapping[str, str]) -> float:
    try:
        value = float(tags.get("xpz.candidate_value", "nan"))
    except ValueError:
        return float("nan")
    return value


def verify_champion(tr: Tracking, version: str, previous: str | None) -> str:
    """After `version` was promoted against `previous` on a tracking server: every version promoted
    against the same `previous` raced with it; the best of them (ties: the oldest) must be the
    champion. Moves the alias back to it if a worse one holds it, retags the losers `challenger`
    (`xpz.champion_guard` = `verify-superseded`), and returns the winner's version."""
    client = tr.client
    name = tr.registered_model
    rivals = [
        mv
        for mv in client.search_model_versions(f"name = '{name}'")
        if (mv.tags or {}).get("xpz.decision") == "promoted"
        and (mv.tags or {}).get("xpz.champion_version_before", "") == (previous or "")
    ]
    scored = [(mv, _value(mv.tags or {})) for mv in rivals]
    scored = [(mv, v) for mv, v in scored if not math.isnan(v)]
    if not scored:
        return version
    best = scored[0]
    for mv, value in scored[1:]:
        if tr.better(value, best[1]) or (value == best[1] and int(mv.version) < int(best[0].version)):
            best = (mv, value)
    winner = str(best[0].version)
    current = _alias_version(client, name, CHAMPION)
    current_version = str(current.version) if current is not None else None
    if current_version in {str(mv.version) for mv, _ in scored} and current_version != winner:
        client.set_registered_model_alias(name, CHAMPION, winner)
    for mv, _ in scored:
        if str(mv.version) != winner:
            for key, tag in {
                "xpz.decision": "challenger",
                "xpz.decision_reason": f"superseded: v{winner} was promoted against the same champion "
                f"v{previous or '-'} and is better",
                "xpz.champion_guard": "verify-superseded",
            }.items():
                client.set_model_version_tag(name, str(mv.version), key, tag)
    return winner


def register(
    tr: Tracking,
    run_id: str,
    model: LoggedModel | str,
    metrics: Mapping[str, float] | None = None,
) -> Registration:
    """Register the run's model as a new version, alias it `challenger`, promote it if it wins.

    The candidate's primary metric comes from `metrics` (or the run); the champion's from the
    champion's run. Reading the champion, deciding, moving `champion` and writing the decision tags
    are one step (`champion_guard`: a file lock for a local store; on a tracking server the move is
    verified afterwards and a worse concurrent promotion repaired), so a better champion is never
    replaced by a worse candidate; `xpz.champion_guard` records which. Both runs' test-split digests are compared: when they differ the comparison is
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
    # Compare-and-set of `champion`: read, decide, move and record as one step (`champion_guard`); the
    # `challenger` move too (two concurrent first moves of an alias collide in a sqlite store).
    with champion_guard(tr) as guard:
        client.set_registered_model_alias(name, CHALLENGER, version)
        champion = _alias_version(client, name, CHAMPION)
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
            "xpz.champion_guard": guard,
            "xpz.split_comparison": comparison,
            "xpz.split_digest.test": test_digest or "",
        }
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
    champion_after = version if promote_it else str(previous)
    if promote_it and guard == GUARD_VERIFY:  # a remote store: no lock, so check the move and repair
        champion_after = verify_champion(tr, version, previous)
        if champion_after != version:
            promote_it, decision = False, "challenger"
            reason = f"superseded: v{champion_after} was promoted against the same champion and is better"
    client.set_tag(run_id, "xpz.model_version", str(version))
    return Registration(
        version=str(version),
        champion_version=champion_after,
        promoted=promote_it,
        decision=decision,
        reason=reason,
        candidate_value=candidate,
        champion_value=champ_value,
        previous_champion=previous,
        split_comparison=comparison,
    )


def promote(tr: Tracking, version: str | int, reason: str = "manual promotion") -> str | None:
    """Give `version` the `champion` alias by hand; returns the previous champion version (or None).
    When `version` already is the champion nothing changes and `version` is returned."""
    client = tr.client
    name = tr.registered_model
    version = str(version).strip()
    # MLflow's own error for a non-number is an exception, not a message (isascii: no '²' and such)
    if not (version.isascii() and version.isdigit()):
        raise InputError(
            f"model version must be a whole number such as 3 (`xpz models` lists them), got {version!r}"
        )
    try:
        client.get_model_version(name, version)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise InputError(f"registered model {name!r} has no version {version}") from None
        raise
    with champion_guard(tr) as guard:
        before = _alias_version(client, name, CHAMPION)
        previous = str(before.version) if before is not None else None
        if previous == version:  # already champion: keep its decision tags (e.g. `promoted`) as they are
            return previous
        client.set_registered_model_alias(name, CHAMPION, version)
        tags = {
            "xpz.decision": "manual_promotion",
            "xpz.decision_reason": reason,
            "xpz.champion_version_before": previous or "",
            "xpz.champion_guard": guard,
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
