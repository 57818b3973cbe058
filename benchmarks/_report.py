"""Benchmark tables in the docs come from the benchmarks' JSON output, never from hand edits.

A results file is JSON: {"name": "coverage", "columns": ["model", "MAE", ...], "rows": [[...], ...],
"stamp": {"commit": "abc1234", "host": "..."}}. `render` turns it into a markdown table followed by
a line with the commit and host; `write` replaces what lies between the markers

    <!-- bench:NAME -->
    ...
    <!-- /bench:NAME -->

in a markdown file (README.md, docs/benchmarks.md) with it. A marker pair that is missing is an
error (exit 2), so a renamed table fails loudly instead of going stale.

    python benchmarks/_report.py results.json --doc docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def stamp() -> dict[str, str]:
    """{"commit": short hash (+ "-dirty" with uncommitted changes), "host": CPU model x cores}."""
    from xpz.hostinfo import cpu_count, cpu_model

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    from xpz.hostinfo import sgemm_gflops

    return {
        "commit": commit,
        "host": f"{cpu_model()} x {cpu_count()} cores, numpy sgemm {sgemm_gflops():.0f} GFLOP/s",
    }


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def render(results: dict[str, Any]) -> str:
    """Markdown table of `results` ("columns", "rows") and its stamp line."""
    columns: Sequence[str] = results["columns"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in results["rows"]]
    s = results.get("stamp") or {}
    if s:
        lines += ["", f"commit `{s.get('commit', 'unknown')}`, host: {s.get('host', 'unknown')}"]
    return "\n".join(lines)


def write(results: dict[str, Any], doc: Path | str) -> Path:
    """Replace the block between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in `doc`.
    Raises ValueError when the markers are missing."""
    doc = Path(doc)
    name = results["name"]
    text = doc.read_text()
    pattern = re.compile(rf"(<!-- bench:{re.escape(name)} -->\n).*?(<!-- /bench:{re.escape(name)} -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"{doc}: no <!-- bench:{name} --> ... <!-- /bench:{name} --> markers")
    doc.write_text(pattern.sub(lambda m: m.group(1) + render(results) + "\n" + m.group(2), text))
    return doc


def save(results: dict[str, Any], json_path: Path | str | None, doc: Path | str | None) -> None:
    """What a benchmark script calls at its end: stamp, write the JSON, update the doc's table."""
    results = {**results, "stamp": results.get("stamp") or stamp()}
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
        print(f"results: {json_path}")
    if doc:
        print(f"table {results['name']!r} written to {write(results, doc)}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="a results JSON file written by a benchmark (--json)")
    ap.add_argument("--doc", default=str(REPO / "docs" / "benchmarks.md"), help="the markdown file to update")
    args = ap.parse_args(argv)
    try:
        write(json.loads(Path(args.results).read_text()), args.doc)
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
