"""The data stages (generate/import -> validate -> split) as plain functions of paths and config.

The CLI, the DVC stages and the Prefect flows all call these, so each stage has one definition.
"""

from __future__ import annotations

import json
from pathlib import Path

from xpz.config import DataConfig, SplitConfig, ValidateConfig
from xpz.data.io import read_dataset, read_spectra, write_dataset, write_dataset_chunks
from xpz.data.split import assign_splits, write_split
from xpz.data.validation import ValidationReport, validate_frame
from xpz.errors import InputError
from xpz.files import atomic_path

VALIDATION_RESULT = "result.json"


def generate_dataset(cfg: DataConfig, path: Path, progress: bool = True) -> int:
    """Generate the synthetic dataset in chunks straight to Parquet (bounded memory); returns the rows
    written. Runs with the BLAS kernels the recorded bytes were made with (`xpz.data.kernels`: in a
    fresh process when this one's differ), so that hosts write the same bytes."""
    from xpz.data.kernels import run_with_pinned_blas

    return run_with_pinned_blas(_generate_here, cfg, path, progress)


def _generate_here(cfg: DataConfig, path: Path, progress: bool) -> int:
    from xpz.data.synthetic import generate_chunks

    return write_dataset_chunks(generate_chunks(cfg, progress=progress), path)


def rejects_path(path: Path) -> Path:
    """Where `import_dataset` reports the sources it could not use: `<dataset>.rejects.csv`."""
    return Path(path).with_name(Path(path).stem + ".rejects.csv")


def _read_xp_bundle(source: Path):  # noqa: ANN202
    """A DataLink zip or folder -> (spectra, rejects with a `file` column) of its XP continuous members."""
    import tempfile

    import pandas as pd

    from xpz.data.archive import expand
    from xpz.data.formats import NEEDED
    from xpz.data.io import read_xp_continuous

    with tempfile.TemporaryDirectory(prefix="xpz-import-") as work:
        found = expand(source, Path(work))
        members = [k.path for k in found.files if k.product == "xp_continuous"]
        if not members:
            raise InputError(f"{source}: no XP continuous file in the bundle; {NEEDED}")
        parts = [read_xp_continuous(p) for p in members]
        rejects = [r.assign(file=p.name) for p, (_, r) in zip(members, parts)]
        return pd.concat([s for s, _ in parts], ignore_index=True), pd.concat(rejects, ignore_index=True)


def import_dataset(
    source: Path, path: Path, cfg: ValidateConfig, fmt: str = "auto", redshifts: Path | None = None
) -> int:
    """Read real spectra, validate them, and only then write them in our schema.

    Gaia XP continuous sources without a usable spectrum (no band, not 55 coefficients, non-finite
    coefficients; `xpz.data.xpcont`) are left out and listed in `rejects_path(path)` (row, source_id,
    reject_reason), so the training data never shrinks silently; a stale report is removed."""
    from xpz.data.archive import is_zip
    from xpz.data.io import join_redshifts, read_redshift_table, read_xp_continuous
    from xpz.data.stream import resolve_format

    rejects = None
    bundle = Path(source).is_dir() or (
        Path(source).is_file() and Path(source).stat().st_size > 0 and is_zip(Path(source))
    )
    if bundle or resolve_format(source, fmt) == "gaia":
        if redshifts is None:
            raise InputError(
                f"{source}: Gaia XP spectra carry no redshift; pass a redshift table (--redshifts)"
            )
        spectra, rejects = _read_xp_bundle(Path(source)) if bundle else read_xp_continuous(source)
        if spectra.empty:
            raise InputError(
                f"{source}: no usable source ({len(rejects)} rejected, e.g. {rejects['reject_reason'].iloc[0]})"
            )
        df = join_redshifts(spectra, read_redshift_table(redshifts), str(source))
    else:
        df = read_spectra(source, fmt=fmt, redshifts=redshifts)
    report = validate_frame(df, cfg, source=str(source))
    if not report.success:
        raise InputError(report.summary())
    write_dataset(df, path)
    if rejects is not None and len(rejects):
        with atomic_path(rejects_path(path)) as tmp:
            rejects.to_csv(tmp, index=False)
    else:
        rejects_path(path).unlink(missing_ok=True)
    return len(df)


def other_report_dir(path: Path) -> Path:
    """Where `xpz data validate --path OTHER` reports: `reports/validation-other/<file stem>`, never the
    project dataset's `validate.report_dir`, whose result.json is a DVC output."""
    return Path("reports/validation-other") / Path(path).stem


def validate_dataset(path: Path, cfg: ValidateConfig, report_dir: Path | None = None) -> ValidationReport:
    """Validate a dataset; on success write `<report_dir>/result.json` (default `cfg.report_dir`: the DVC
    output that the split stage depends on), on failure remove it so nothing downstream can run on bad
    data. Pass another `report_dir` for any file other than the project's dataset."""
    df = read_dataset(path)
    report_dir = Path(report_dir if report_dir is not None else cfg.report_dir)
    report = validate_frame(df, cfg, source=str(path), report_dir=report_dir)
    result_path = report_dir / VALIDATION_RESULT
    if report.success:
        with atomic_path(result_path) as tmp:
            tmp.write_text(
                json.dumps(
                    {
                        "success": True,
                        "rows": report.n_rows,
                        "expectations": report.n_expectations,
                        "warnings": [w.line() for w in report.warnings],
                        **report.statistics,
                    },
                    indent=2,
                )
                + "\n"
            )
    else:
        result_path.unlink(missing_ok=True)
    return report


def split_dataset(data_path: Path, cfg: SplitConfig) -> dict[str, object]:
    """Assign every galaxy to train/val/test and store the assignment with its digests."""
    df = read_dataset(data_path)
    return write_split(assign_splits(df, cfg), cfg.path, cfg.digests)


def sync_dataset(cfg: DataConfig, dvc_file: Path | str = "data.dvc", log=print, warn=None) -> str:
    """Bring `cfg.path` to the version recorded in `dvc_file` (`dvc pull`), else generate it.

    Returns how the data got there: "dvc" (pulled), "local" (pull failed or no DVC checkout, the local
    file is used) or "generated". Raises RuntimeError when the pull fails and there is no local file.
    A failed pull is reported through `warn` (default: `log`) with DVC's reason.
    """
    import subprocess
    import sys

    path = Path(cfg.path)
    if Path(".dvc").is_dir() and Path(dvc_file).is_file():
        done = subprocess.run(
            [sys.executable, "-m", "dvc", "pull", str(dvc_file)],  # not -q: it hides the error too
            capture_output=True, text=True, timeout=3000,
        )  # fmt: skip
        if done.returncode == 0:
            log(f"dvc pull {dvc_file}: {path} is at the recorded version")
            return "dvc"
        reason = (done.stderr.strip() or done.stdout.strip())[-2000:] or f"exit status {done.returncode}"
        if not path.exists():
            raise RuntimeError(f"dvc pull {dvc_file} failed and {path} is missing:\n{reason}")
        (warn or log)(f"dvc pull {dvc_file} failed; using the local {path}:\n{reason[-1000:]}")
        return "local"
    if path.exists():
        log(f"not a DVC checkout: using the local {path}")
        return "local"
    rows = generate_dataset(cfg, path, progress=False)
    log(f"generated {rows} galaxies to {path}")
    return "generated"
