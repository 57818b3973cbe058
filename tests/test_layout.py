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
    "xpz.config", "xpz.config_sections", "xpz.errors", "xpz.env", "xpz.files", "xpz.hostinfo", "xpz.spectra", "xpz._gaiaxpy",
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
        if path.name == "__init__.py":  # `import xpz` registers the custom Keras objects
            imported -= {"xpz.model.saving", "xpz.model"}
        if path.name == "__main__.py":  # `python -m xpz`
            imported -= {"xpz.cli"}
        assert imported <= CORE, f"{path.name} imports {sorted(imported - CORE)}"


def test_no_library_module_imports_prefect_or_the_cli():
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).parts
        if rel[0] in ("cli", "__main__.py"):  # the command line, and `python -m xpz` which runs it
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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """xpz modules `path` imports when it runs: module level and inside functions alike (only
    `if TYPE_CHECKING:` blocks, which never run, are left out). `from pkg import name` counts as an
    import of `pkg.name` when that is a module, else of `pkg`."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("xpz"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("xpz"))
    return out & modules


def _import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in SRC.rglob("*.py")}
    modules = set(paths)
    return {name: _runtime_imports(path, modules) - {name} for name, path in paths.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    mod = tmp_path / "m.py"
    mod.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import xpz.x\ndef f():\n    import xpz.y\n"
    )
    assert _runtime_imports(mod, {"xpz.x", "xpz.y"}) == {"xpz.y"}


def test_no_import_cycles_function_level_imports_included():
    """No xpz module reaches itself through imports, whether at module level or inside functions."""
    cycles = _cycles(_import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_one_module_registers_every_custom_keras_object():
    """`@register_keras_serializable` classes are all listed in xpz.model.saving, which `import xpz` imports."""
    registered = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                "register_keras_serializable" in ast.unparse(d) for d in node.decorator_list
            ):
                registered.add(node.name)
    from xpz.model.saving import CUSTOM_OBJECTS

    assert registered == set(CUSTOM_OBJECTS)
    assert "xpz.model.saving" in _runtime_imports(SRC / "__init__.py", set(_import_graph()))


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
