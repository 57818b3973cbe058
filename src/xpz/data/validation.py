"""Great Expectations (GX Core 1.x) suite over a raw spectra dataset.

Two batches are validated, one checkpoint each:
- the dataset itself: columns and their order, row count, `source_id` unique and present,
  `z` present and inside [z_min, z_max], and the z distribution (mean, median, 99th percentile)
  as *warnings* that never stop the pipeline;
- a per-galaxy summary (min, max and count of non-finite values over the 186 fluxes), because
  186 per-column expectations cost ~50 s at 520k rows while three on the summary cost ~1 s.

A failure yields a `ValidationReport` whose `summary()` says which expectation failed, on which
column, for how many rows, with example source_ids; Data Docs (HTML) are written under
`report_dir` when one is given.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xpz.config import ValidateConfig
from xpz.errors import describe_rows
from xpz.spectra import DATASET_COLUMNS, FAMILIES, FAMILY_COLUMN, FLUX_COLUMNS, ID_COLUMN, TARGET_COLUMN

EXAMPLES = 5
ROW_SUMMARY_COLUMNS = ("flux_min", "flux_max", "n_nonfinite")


@dataclass(frozen=True)
class Finding:
    """One failed expectation, in words a user can act on."""

    expectation: str
    column: str | None
    severity: str
    unexpected_count: int | None
    examples: tuple[object, ...] = ()
    detail: str = ""

    def line(self) -> str:
        where = f" on {self.column!r}" if self.column else ""
        count = f": {self.unexpected_count} rows" if self.unexpected_count else ""
        ids = f" (e.g. source_id {describe_rows(list(self.examples), EXAMPLES)})" if self.examples else ""
        detail = f" [{self.detail}]" if self.detail else ""
        return f"{self.expectation}{where}{count}{ids}{detail}"


@dataclass(frozen=True)
class ValidationReport:
    """Outcome of the suite: critical failures stop the pipeline, warnings are only reported."""

    source: str
    n_rows: int
    n_expectations: int
    failures: tuple[Finding, ...] = ()
    warnings: tuple[Finding, ...] = ()
    docs_path: Path | None = None
    statistics: dict[str, float] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        status = "PASSED" if self.success else "FAILED"
        lines = [
            f"validation {status}: {self.source} ({self.n_rows} rows, {self.n_expectations} expectations, "
            f"{len(self.failures)} failed, {len(self.warnings)} warnings)"
        ]
        lines += [f"  FAIL {f.line()}" for f in self.failures]
        lines += [f"  WARN {w.line()}" for w in self.warnings]
        if self.docs_path:
            lines.append(f"  report: {self.docs_path}")
        return "\n".join(lines)


def row_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per-galaxy flux statistics: the cheap way to validate 186 columns at once."""
    flux = df.loc[:, list(FLUX_COLUMNS)].to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(flux)
    masked = np.where(finite, flux, np.nan)
    with np.errstate(all="ignore"), _quiet_nan_warnings():
        fmin = np.nanmin(masked, axis=1)
        fmax = np.nanmax(masked, axis=1)
    return pd.DataFrame(
        {
            ID_COLUMN: df[ID_COLUMN].to_numpy(),
            "flux_min": np.nan_to_num(fmin, nan=0.0),
            "flux_max": np.nan_to_num(fmax, nan=0.0),
            "n_nonfinite": (~finite).sum(axis=1),
        }
    )


class _quiet_nan_warnings:
    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


def dataset_expectations(cfg: ValidateConfig, with_family: bool = False) -> list:
    """Expectations on the dataset frame (schema, ids, redshift range and distribution); with
    `with_family`, the `family` column too (present and one of the generator's families)."""
    import great_expectations.expectations as gxe

    warn: dict[str, Any] = {"severity": "warning"}
    columns = list(DATASET_COLUMNS)
    family: list = []
    if with_family:
        columns.insert(2, FAMILY_COLUMN)
        family = [
            gxe.ExpectColumnValuesToNotBeNull(column=FAMILY_COLUMN),
            gxe.ExpectColumnValuesToBeInSet(column=FAMILY_COLUMN, value_set=list(FAMILIES)),
        ]
    return [
        gxe.ExpectTableColumnsToMatchOrderedList(column_list=columns),
        *family,
        gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows),
        gxe.ExpectColumnValuesToNotBeNull(column=ID_COLUMN),
        gxe.ExpectColumnValuesToBeUnique(column=ID_COLUMN),
        gxe.ExpectColumnValuesToBeOfType(column=ID_COLUMN, type_="int64"),
        gxe.ExpectColumnValuesToNotBeNull(column=TARGET_COLUMN),
        gxe.ExpectColumnValuesToBeOfType(column=TARGET_COLUMN, type_="float64"),
        gxe.ExpectColumnValuesToBeBetween(column=TARGET_COLUMN, min_value=cfg.z_min, max_value=cfg.z_max),
        gxe.ExpectColumnMeanToBeBetween(
            column=TARGET_COLUMN, min_value=cfg.warn_z_mean[0], max_value=cfg.warn_z_mean[1], **warn
        ),
        gxe.ExpectColumnMedianToBeBetween(
            column=TARGET_COLUMN, min_value=cfg.warn_z_median[0], max_value=cfg.warn_z_median[1], **warn
        ),
        # the 99th percentile as two `mostly` checks: q99 <= hi  <=>  >= 99% of z <= hi, and
        # q99 >= lo  <=>  >= 1% of z >= lo (GX's quantile expectation fails to serialise numpy 2 bools)
        gxe.ExpectColumnValuesToBeBetween(
            column=TARGET_COLUMN, max_value=cfg.warn_z_q99[1], mostly=0.99, **warn
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column=TARGET_COLUMN, min_value=cfg.warn_z_q99[0], mostly=0.01, **warn
        ),
    ]


def flux_expectations(cfg: ValidateConfig) -> list:
    """Expectations on the per-galaxy flux summary."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToBeBetween(column="n_nonfinite", min_value=0, max_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="flux_min", min_value=cfg.flux_min),
        gxe.ExpectColumnValuesToBeBetween(column="flux_max", max_value=cfg.flux_max),
    ]


def _bad_flux_columns(df: pd.DataFrame, ids: list[object], column: str, cfg: ValidateConfig) -> str:
    """Which flux columns hold the offending values of the first failing galaxies."""
    rows = df[df[ID_COLUMN].isin(ids[:EXAMPLES])]
    flux = rows.loc[:, list(FLUX_COLUMNS)].to_numpy(dtype=np.float64, na_value=np.nan)
    if column == "n_nonfinite":
        mask = ~np.isfinite(flux)
    elif column == "flux_min":
        mask = flux < cfg.flux_min
    else:
        mask = flux > cfg.flux_max
    cols = sorted({FLUX_COLUMNS[j] for j in np.nonzero(mask)[1]})
    return f"flux columns {describe_rows(cols, 6)}" if cols else ""


def _exception_message(info: dict | None) -> str:
    """GX reports errors either flat or keyed by metric id; return the first message, if any."""
    if not info:
        return ""
    entries = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    for entry in entries:
        if entry.get("raised_exception"):
            return "error: " + str(entry.get("exception_message", ""))[:200]
    return ""


def _findings(results: list, df: pd.DataFrame, cfg: ValidateConfig) -> tuple[list[Finding], list[Finding]]:
    failures: list[Finding] = []
    warnings: list[Finding] = []
    for res in results:
        if res.success:
            continue
        exp = res.expectation_config
        column = exp.kwargs.get("column")
        info = res.result or {}
        ids = list(
            dict.fromkeys(
                row.get(ID_COLUMN)
                for row in info.get("partial_unexpected_index_list")
                or info.get("unexpected_index_list")
                or []
                if isinstance(row, dict)
            )
        )
        detail = ""
        if column in ROW_SUMMARY_COLUMNS:
            detail = _bad_flux_columns(df, ids, column, cfg)
        elif info.get("observed_value") is not None:
            detail = f"observed {info['observed_value']}"
        detail = _exception_message(res.exception_info) or detail
        finding = Finding(
            expectation=exp.type,
            column=column,
            severity=str(getattr(exp, "severity", "critical")),
            unexpected_count=info.get("unexpected_count"),
            examples=tuple(ids[:EXAMPLES]),
            detail=detail,
        )
        (warnings if "warning" in finding.severity.lower() else failures).append(finding)
    return failures, warnings


def _precheck(df: pd.DataFrame, source: str, cfg: ValidateConfig) -> list[Finding]:
    """Structural problems GX cannot usefully evaluate further (no rows, missing columns)."""
    missing = [c for c in DATASET_COLUMNS if c not in df.columns]
    if missing:
        return [
            Finding(
                "expect_table_columns_to_match_ordered_list",
                None,
                "critical",
                None,
                (),
                f"missing {describe_rows(missing, 8)}",
            )
        ]
    if len(df) == 0:
        return [
            Finding("expect_table_row_count_to_be_between", None, "critical", 0, (), "the dataset is empty")
        ]
    return []


def validate_frame(
    df: pd.DataFrame,
    cfg: ValidateConfig,
    source: str = "dataset",
    report_dir: Path | None = None,
) -> ValidationReport:
    """Run the suite on a dataset frame; write Data Docs under `report_dir` when given."""
    pre = _precheck(df, source, cfg)
    if pre:
        return ValidationReport(source, len(df), 0, failures=tuple(pre))

    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    if report_dir is not None:
        report_dir = Path(report_dir).resolve()
        context.add_data_docs_site(
            site_name="xpz",
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(report_dir),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
    source_gx = context.data_sources.add_pandas("xpz")
    batches = {
        "dataset": (df, dataset_expectations(cfg, with_family=FAMILY_COLUMN in df.columns)),
        "flux_per_galaxy": (row_summary(df), flux_expectations(cfg)),
    }
    actions: list[Any] = (
        [gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["xpz"])]
        if report_dir is not None
        else []
    )
    result_format = {
        "result_format": "SUMMARY",
        "unexpected_index_column_names": [ID_COLUMN],
        "partial_unexpected_count": EXAMPLES,
    }
    runs: list[Any] = []
    for name, (frame, expectations) in batches.items():
        batch_def = source_gx.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        suite = context.suites.add(gx.ExpectationSuite(name=f"xpz_{name}", expectations=expectations))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch_def, suite=suite)
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"xpz_{name}",
                validation_definitions=[definition],
                actions=actions,
                result_format=result_format,
            )
        )
        runs += checkpoint.run(batch_parameters={"dataframe": frame}).run_results.values()
    failures: list[Finding] = []
    warnings: list[Finding] = []
    n_expectations = 0
    for run in runs:
        n_expectations += len(run.results)
        f, w = _findings(run.results, df, cfg)
        failures += f
        warnings += w
    docs = (
        report_dir / "index.html" if report_dir is not None and (report_dir / "index.html").exists() else None
    )
    z = df[TARGET_COLUMN].to_numpy(dtype=float)
    stats = (
        {"z_mean": float(np.nanmean(z)), "z_median": float(np.nanmedian(z))} if np.isfinite(z).any() else {}
    )
    return ValidationReport(source, len(df), n_expectations, tuple(failures), tuple(warnings), docs, stats)
