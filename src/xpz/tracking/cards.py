"""What people read in the MLflow UI: the run's description and each registered version's model card.

The run's description is the tag `mlflow.note.content` (the run page's "Description"): the headline
metrics and the per-bin table of the test split. A registered version's description is its model
card: what the model is, the data version it was trained on, its test metrics (per galaxy family
when the evaluation has them: `test_<metric>_<family>`), intended use and limits. Both are plain
Markdown built from values already logged, so they never disagree with the run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from xpz.spectra import FAMILIES  # an evaluation with a `family` column logs `test_<metric>_<family>`
from xpz.tracking.store import Tracking

NOTE_TAG = "mlflow.note.content"
HEADLINE = (
    ("test MAE", "test_mae"), ("sigma_NMAD", "test_sigma_nmad"), ("outlier fraction", "test_outlier_fraction"),
    ("bias", "test_bias"), ("worst per-bin bias (z <= 0.5)", "test_worst_bin_bias"),
    ("68% interval coverage", "test_coverage_68"),
)  # fmt: skip


def _fmt(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "n/a" if math.isnan(v) else f"{v:.4f}"


def metrics_table(metrics: Mapping[str, Any]) -> str:
    """The headline test metrics as a Markdown table (absent ones left out)."""
    rows = [f"| {label} | {_fmt(metrics[key])} |" for label, key in HEADLINE if key in metrics]
    return "\n".join(["| metric | value |", "|---|---|", *rows])


def family_metrics(metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{family: {metric: value}} from `test_<metric>_<family>` keys (empty without families)."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in metrics.items():
        for family in FAMILIES:
            if key.startswith("test_") and key.endswith(f"_{family}"):
                out.setdefault(family, {})[key.removeprefix("test_").removesuffix(f"_{family}")] = value
    return out


def family_table(metrics: Mapping[str, Any]) -> str:
    """Markdown table, one row per family and one column per metric; '' without families."""
    per = family_metrics(metrics)
    if not per:
        return ""
    names = sorted({m for values in per.values() for m in values})
    lines = ["| family | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [
        f"| {f} | " + " | ".join(_fmt(per[f].get(m, float("nan"))) for m in names) + " |" for f in sorted(per)
    ]
    return "\n".join(lines)


def run_description(metrics: Mapping[str, Any], bin_table_markdown: str, baselines: Mapping[str, Any]) -> str:
    """The run's description: headline metrics, per-family metrics when present, baselines, per-bin table."""
    parts = ["## xpz run: test split", "", metrics_table(metrics)]
    families = family_table(metrics)
    if families:
        parts += ["", "### Per galaxy family", "", families]
    if baselines:
        base = ", ".join(f"{name} {_fmt(v)}" for name, v in baselines.items())
        parts += ["", f"Baselines (test MAE; nested runs): {base}."]
    parts += ["", "### Per bin of true z", "", bin_table_markdown]
    return "\n".join(parts)


def data_version(tags: Mapping[str, str]) -> str:
    """The card's data version: the md5 of the data the run was trained on, and whether it is the
    version data.dvc records (`xpz.tracking.lineage.data_tags`)."""
    actual, recorded = tags.get("xpz.data_md5"), tags.get("xpz.data_dvc_md5")
    match = tags.get("xpz.data_dvc_match")
    if actual is None:
        return f"unknown (data.dvc records `{recorded}`)" if recorded else "dataset md5 unknown"
    if match is None:  # a run logged before the check existed: the tag was data.dvc's md5
        return f"dataset md5 `{actual}` (as recorded in data.dvc, not checked against the file)"
    if match == "true":
        return f"dataset md5 `{actual}` (data.dvc's version)"
    where = tags.get("xpz.data_path", "the local dataset")
    file_md5 = tags.get("xpz.data_file_md5")
    file_part = f"; {where} md5 `{file_md5}`" if file_md5 else ""
    dvc_part = f"data.dvc records `{recorded}`" if recorded else "no data.dvc"
    return f"dataset md5 `{actual}`{file_part} (local data, NOT data.dvc's version: {dvc_part})"


def model_card(
    name: str,
    version: str,
    run_id: str,
    metrics: Mapping[str, Any],
    tags: Mapping[str, str],
    decision: str = "",
) -> str:
    """The model card of registered version `version` of `name`, from its run's metrics and tags."""
    data = data_version(tags)
    splits = ", ".join(
        f"{s} {tags[k][:12]}" for s in ("train", "val", "test") if (k := f"xpz.split_digest.{s}") in tags
    )
    lines = [
        f"# {name} version {version}",
        "",
        "A 1-D CNN that predicts a galaxy's redshift z, a 68% interval [z_lower, z_upper] (a conformal",
        "set) and an `eligible` flag from its 186 Gaia DR3 BP/RP (XP) fluxes (`flux_000..flux_185`).",
        "",
        f"- MLflow run: `{run_id}`; profile `{tags.get('xpz.profile', 'unknown')}`; "
        f"git commit `{tags.get('xpz.git_commit', 'unknown')[:12]}`",
        f"- data version: {data}; split digests: {splits or 'unknown'}",
    ]
    if decision:
        lines.append(f"- registry decision: {decision}")
    lines += ["", "## Test metrics", "", metrics_table(metrics)]
    families = family_table(metrics)
    if families:
        lines += ["", "### Per galaxy family", "", families]
    lines += [
        "",
        "## Intended use",
        "",
        "Photometric-style redshifts of galaxies with 0 < z <= 0.6 and Gaia G ~ 17-19.75 from Gaia DR3 XP",
        "continuous spectra (`xpz predict`, or this model's pyfunc with the 186 raw fluxes). Use `z` with its",
        "interval; drop rows with `eligible` false (not like the training galaxies).",
        "",
        "## Limits",
        "",
        "- Trained and tested on **synthetic** spectra (the gaiaxpy instrument model and galaxy templates),",
        "  not on observed Gaia galaxies: accuracy on real spectra is unmeasured.",
        "- Outside 0 < z <= 0.6, for stars, quasars or spectra unlike the training set the output is not",
        "  meaningful; the eligibility flag catches most such inputs, not all.",
        "- The 68% interval covers 68% per bin of true z and quartile of p(z) width on validation data drawn like",
        "  the training data; under a different population the coverage can differ.",
    ]
    return "\n".join(lines)


def describe_run(tr: Tracking, run_id: str, text: str) -> None:
    """Set the run's description (the MLflow tag `mlflow.note.content`)."""
    tr.client.set_tag(run_id, NOTE_TAG, text)


def describe_version(tr: Tracking, version: str, text: str) -> None:
    """Set registered version `version`'s description (its model card)."""
    tr.client.update_model_version(tr.registered_model, version, description=text)


def describe_registration(tr: Tracking, run_id: str, version: str, decision: str = "") -> str:
    """Write the model card of `version` (registered from `run_id`) from the run's logged metrics and
    tags; returns the card."""
    run = tr.client.get_run(run_id)
    card = model_card(tr.registered_model, version, run_id, run.data.metrics, run.data.tags, decision)
    describe_version(tr, version, card)
    return card
