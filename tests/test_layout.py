"""The package layout: subpackage boundaries hold, modules stay small, and old registered models still load."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "xpz"
FIXTURE = Path(__file__).parent / "fixtures" / "old_layout_model"

# What each subpackage may import from xpz (docs/DEVELOPING.md). Core modules import only core.
CORE = {
    "xpz.config", "xpz.errors", "xpz.env", "xpz.files", "xpz.hostinfo", "xpz.spectra", "xpz._gaiaxpy",
    "xpz.servers", "xpz.interrupts",
}  # fmt: skip
ALLOWED = {
    "data": {"xpz.data"},
    "model": {"xpz.data", "xpz.model"},
    "tracking": {"xpz.tracking", "xpz.model"},
    "serving": {"xpz.serving", "xpz.data", "xpz.model", "xpz.tracking"},
    "pipeline": {"xpz.pipeline", "xpz.data", "xpz.model", "xpz.tracking"},
    "cli": {"xpz"},
}


def _xpz_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("xpz"):
            out.update({node.module} if node.module != "xpz" else {f"xpz.{a.name}" for a in node.names})
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("xpz"))
    return out


def _allowed(imported: str, prefixes: set[str]) -> bool:
    if imported in CORE or "xpz" in prefixes:
        return True
    return any(imported == p or imported.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_subpackage_imports_stay_inside_their_layer(package):
    bad = []
    for path in sorted((SRC / package).rglob("*.py")):
        bad += [
            f"{path.relative_to(SRC)} imports {m}"
            for m in sorted(_xpz_imports(path))
            if not _allowed(m, ALLOWED[package])
        ]
    assert not bad, "layer violations:\n" + "\n".join(bad)


def test_core_modules_import_only_core():
    for path in SRC.glob("*.py"):
        imported = _xpz_imports(path) - {"xpz"}
        assert imported <= CORE, f"{path.name} imports {sorted(imported - CORE)}"


def test_no_library_module_imports_prefect_or_the_cli():
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).parts
        if rel[0] == "cli":
            continue
        text = path.read_text()
        assert "import prefect" not in text and "from prefect" not in text, path
        assert "xpz.cli" not in _xpz_imports(path) or rel[0] == "cli", path


def test_modules_stay_small():
    """No module over ~400 lines; the Prefect flow is wiring only."""
    sizes = {p.relative_to(REPO): len(p.read_text().splitlines()) for p in SRC.rglob("*.py")}
    assert max(sizes.values()) <= 420, {str(k): v for k, v in sizes.items() if v > 420}
    assert len((REPO / "flows" / "train_pipeline.py").read_text().splitlines()) <= 270


def test_every_subpackage_says_what_lives_there_and_what_it_may_import():
    for package in ALLOWED:
        doc = ast.get_docstring(ast.parse((SRC / package / "__init__.py").read_text()))
        assert doc and "import" in doc, package


def test_model_logged_by_the_old_layout_loads_and_predicts_the_same_z():
    """A pyfunc model pickled as `xpz.tracking.XpzRedshiftModel` by the flat layout (commit a8ccd0b)."""
    import mlflow

    from xpz.spectra import flux_matrix
    from xpz.tracking import XpzRedshiftModel

    model = mlflow.pyfunc.load_model(str(FIXTURE / "model"))
    assert isinstance(model.unwrap_python_model(), XpzRedshiftModel)
    spectra = pd.read_parquet(FIXTURE / "spectra.parquet")
    expected = pd.DataFrame(json.loads((FIXTURE / "expected.json").read_text()))
    got = model.predict(flux_matrix(spectra))
    assert list(got.columns[:3]) == ["z", "z_lower", "z_upper"]
    np.testing.assert_allclose(got[["z", "z_lower", "z_upper"]].to_numpy(), expected.to_numpy(), atol=1e-6)
