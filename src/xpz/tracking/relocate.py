"""A project that moves: the sqlite store records absolute artifact paths; keep them inside the checkout.

MLflow writes absolute `file://` locations into `mlflow.db` (experiments, runs, logged models, model
versions). A copied checkout would silently load the ORIGINAL's model files, and a moved one would fail
with "No such artifact". `localize_artifacts` (called by `configure` and by the serving loader for a
local sqlite store) detects a recorded artifact root outside the store's folder whose recorded runs
exist under the same relative path beside `mlflow.db` (the copy carried its `mlruns/`), and rewrites
the recorded prefix to this checkout's folder. A recorded root that exists nowhere raises `InputError`
naming the path it looked for and how to fix it. An artifact root outside the project that exists and
has no copy beside the store (a deliberate external location) is left alone.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from urllib.parse import unquote, urlparse

from xpz.errors import InputError

log = logging.getLogger(__name__)

# Where MLflow 3's SQL store keeps artifact locations (table, column).
LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
    ("model_versions", "source"),
)


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///path` URI (None for any other store)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :])


def _local_path(location: str | None) -> Path | None:
    if not location:
        return None
    if location.startswith("file:"):
        return Path(unquote(urlparse(location).path))
    if "://" in location or location.startswith(("models:", "runs:")):
        return None
    return Path(location) if Path(location).is_absolute() else None


def _recorded(con: sqlite3.Connection) -> tuple[list[Path], list[Path]]:
    """(experiment artifact roots, run and logged-model artifact folders) recorded, local paths only."""

    def paths(sql: str) -> list[Path]:
        try:
            return [p for (loc,) in con.execute(sql) if (p := _local_path(loc)) is not None]
        except sqlite3.OperationalError:  # not an MLflow store (yet)
            return []

    roots = paths("SELECT artifact_location FROM experiments WHERE lifecycle_stage = 'active'")
    runs = paths("SELECT artifact_uri FROM runs") + paths("SELECT artifact_location FROM logged_models")
    return roots, runs


def _copy_beside(root: Path, home: Path, runs: list[Path]) -> Path | None:
    """The folder under `home` that holds `root`'s artifacts with the same relative layout, if any."""
    mine = [r.relative_to(root) for r in runs if r.is_relative_to(root)]
    for k in range(len(root.parts) - 1):
        candidate = home.joinpath(*root.parts[len(root.parts) - 1 - k :])
        if candidate.is_dir() and (not mine or any((candidate / rel).exists() for rel in mine)):
            return candidate
    return None


def relocate(db: Path, old: Path, new: Path) -> int:
    """Rewrite every recorded location under `old` (file URI or path) to the same place under `new`.
    Returns the number of rows changed."""
    changed = 0
    with sqlite3.connect(db) as con:
        for prefix_old, prefix_new in ((old.as_uri(), new.as_uri()), (str(old), str(new))):
            for table, column in LOCATION_COLUMNS:
                try:
                    cur = con.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                        f"WHERE {column} = ? OR {column} LIKE ? ESCAPE '\\'",
                        (prefix_new, len(prefix_old) + 1, prefix_old,
                         prefix_old.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"),
                    )  # fmt: skip
                    changed += cur.rowcount
                except sqlite3.OperationalError:  # a table this MLflow version lacks
                    continue
    return changed


def localize_artifacts(tracking_uri: str) -> list[tuple[Path, Path]]:
    """Make a local sqlite store's artifact locations point into its own checkout (see module doc).

    Returns the (old, new) roots rewritten. Raises `InputError` when a recorded artifact root exists
    neither where recorded nor beside the store.
    """
    db = sqlite_file(tracking_uri)
    if db is None or not db.is_file():
        return []
    home = db.resolve().parent
    with sqlite3.connect(db) as con:
        roots, runs = _recorded(con)
    moves: list[tuple[Path, Path]] = []
    for root in sorted(set(roots)):
        if root.is_relative_to(home):
            continue
        copy = _copy_beside(root, home, runs)
        if copy is not None:
            moves.append((root, copy))
        elif not root.exists() and any(r.is_relative_to(root) for r in runs):
            raise InputError(
                f"MLflow store {db}: its artifacts are recorded at {root}, which does not exist, and no copy "
                f"was found beside the store (looked for {home / root.name}); the project was moved or copied "
                f"without them: copy that folder to {home / root.name}, or point MLFLOW_TRACKING_URI at the "
                "store that owns them"
            )
    for old, new in moves:
        n = relocate(db, old, new)
        log.warning("MLflow store %s: artifact locations moved from %s to %s (%d records; project moved or copied)",
                    db, old, new, n)  # fmt: skip
    return moves
