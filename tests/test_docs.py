"""Docs that cannot rot: every `xpz ...`, `python -m ...`, `make ...` and `python benchmarks/...` command
shown in README.md and docs/*.md exists, with the options it is shown with; the cheap ones run for
real on the smoke profile."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from conftest import benchmark_module, copy_params
from xpz.cli import app

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
ENV_ASSIGN = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")
PLACEHOLDER = re.compile(r"[A-Z]{2,}|[./:@\"'<>\[\]=]")  # FILE, INPUT, paths, URIs, [--optional]


def _code_lines(text: str) -> list[str]:
    """Lines of fenced code blocks and the contents of inline code spans."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            out.append(line)
        else:
            out += re.findall(r"`([^`]+)`", line.replace("\\|", "|"))
    return out


def _commands(prefixes: tuple[str, ...]) -> dict[str, set[str]]:
    """{command as shown: the files that show it} for code that starts with one of `prefixes`."""
    found: dict[str, set[str]] = {}
    for doc in DOCS:
        for line in _code_lines(doc.read_text()):
            for part in re.split(r"&&|;|\$\(|\|\s", line.split(" #")[0]):
                words = part.strip().split()
                while words and ENV_ASSIGN.match(words[0]):
                    words = words[1:]
                text = " ".join(words).removeprefix(".venv/bin/")
                if text.startswith(prefixes) and not text.endswith("..."):
                    found.setdefault(text, set()).add(doc.name)
    return found


def _xpz_path(command: str) -> tuple[list[list[str]], list[str]]:
    """The subcommand paths (a|b|c expanded) and the options of one shown `xpz ...` command."""
    words = command.split()[1:]
    path: list[list[str]] = [[]]
    options = [w.split("=")[0].strip("[]") for w in words if w.lstrip("[").startswith("--")]
    for word in words:
        if word.startswith("-") or word.startswith("[") or PLACEHOLDER.search(word.replace("|", "")):
            break
        path = [p + [alt] for p in path for alt in word.split("|")]
    return path, options


def _is_group(command) -> bool:
    return hasattr(command, "commands")  # typer's group class (click's, or the copy typer ships)


def _click_command(path: list[str]):
    command = typer.main.get_command(app)
    for name in path:
        if not _is_group(command):  # the rest are the command's arguments (`xpz promote 1`)
            break
        sub = command.commands.get(name)
        assert sub is not None, f"no command `xpz {' '.join(path)}` ({name!r} unknown)"
        command = sub
    return command


XPZ_COMMANDS = _commands(("xpz ",))


def test_the_docs_show_commands():
    assert len(XPZ_COMMANDS) >= 15, sorted(XPZ_COMMANDS)
    assert any(c.startswith("xpz predict") for c in XPZ_COMMANDS)


@pytest.mark.parametrize("command", sorted(XPZ_COMMANDS))
def test_every_xpz_command_in_the_docs_exists_with_its_options(command):
    paths, options = _xpz_path(command)
    for path in paths:
        cmd = _click_command(path)
        known = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
        unknown = [o for o in options if o not in known and not _is_group(cmd)]
        assert not unknown, (
            f"`{command}` ({XPZ_COMMANDS[command]}): {unknown} not options of xpz {' '.join(path)}"
        )
        result = CliRunner().invoke(app, [*path, "--help"])
        assert result.exit_code == 0, result.output


@pytest.mark.slow  # > 5 s: left out of `make check`
def test_every_python_m_module_in_the_docs_answers_help():
    modules = sorted({c.split()[2] for c in _commands(("python -m ",))})
    assert "xpz" in modules and "xpz.model.tune_distributed" in modules, modules
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for module in modules:
        done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                              timeout=300, cwd=REPO, env=env)  # fmt: skip
        assert done.returncode == 0, f"python -m {module} --help: {done.stderr[-2000:]}"
        assert "usage" in done.stdout.lower(), module


def test_every_benchmark_script_and_option_in_the_docs_exists():
    for command, docs in _commands(("python benchmarks/",)).items():
        words = shlex.split(command)
        script = REPO / words[1]
        assert script.exists(), f"{command} ({docs}): no {words[1]}"
        source = script.read_text()
        for option in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
            assert f'"{option}"' in source, f"{command} ({docs}): {words[1]} has no option {option}"


def test_every_make_target_in_the_docs_exists():
    targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), flags=re.M))
    for command, docs in _commands(("make ",)).items():
        target = command.split()[1]
        if "=" not in target:
            assert target in targets, f"`{command}` ({docs}): no target {target!r} in the Makefile"


@pytest.mark.slow
def test_the_cheap_documented_commands_run_for_real_on_the_smoke_profile(workdir):
    """The data commands and `xpz schedule show` exactly as the README's table shows them, plus
    --params/--profile smoke: each exits 0 (and writes what the next one reads)."""
    params = str(copy_params(workdir))
    runner = CliRunner()
    shown = [
        ["data", "generate"],
        ["data", "validate"],
        ["data", "split"],
        ["data", "show"],
        ["schedule", "show"],
    ]
    for words in shown:
        assert any(c.startswith("xpz " + " ".join(words)) for c in XPZ_COMMANDS), words
        result = runner.invoke(app, [*words, "--params", params, "--profile", "smoke"])
        assert result.exit_code == 0, f"xpz {' '.join(words)}: {result.output[-2000:]}"


def test_benchmark_tables_are_rendered_from_their_json(tmp_path):
    """The README's headline table and docs/families.md's three tables are exactly what
    benchmarks/_report.py renders from their committed JSON; `write` replaces only what lies
    between the markers and refuses a doc without them."""
    import json

    report = benchmark_module("_report")
    for name, page in (
        ("headline", "README.md"),
        ("families", "docs/families.md"),
        ("heldout", "docs/families.md"),
        ("oracle_cww", "docs/families.md"),
    ):
        results = json.loads((REPO / "benchmarks" / "results" / f"{name}.json").read_text())
        text = (REPO / page).read_text()
        assert f"<!-- bench:{name} -->\n{report.render(results)}\n<!-- /bench:{name} -->" in text, (
            name,
            page,
        )
    doc = tmp_path / "doc.md"
    doc.write_text("before\n<!-- bench:t -->\nold\n<!-- /bench:t -->\nafter\n")
    results = {
        "name": "t",
        "columns": ["a", "b"],
        "rows": [[1, 0.5]],
        "stamp": {"commit": "abc", "host": "h"},
    }
    report.write(results, doc)
    assert doc.read_text() == (
        "before\n<!-- bench:t -->\n| a | b |\n|---|---|\n| 1 | 0.5 |\n\ncommit `abc`, host: h\n<!-- /bench:t -->\nafter\n"
    )
    with pytest.raises(ValueError, match="markers"):
        report.write({**results, "name": "other"}, doc)


def test_bench_data_help_gives_the_sizes_params_yaml_and_make_run_use():
    """`bench_data.py --help` called 50,000 galaxies "the `make run` default"; `make run` generates
    params.yaml's data.n_galaxies (its `default` profile, 200,000), and the benchmark's own default
    is the seed's size (profile `full`)."""
    from xpz.config import load_config

    default = load_config(REPO / "params.yaml", profile="default").data
    full = load_config(REPO / "params.yaml", profile="full").data
    assert "xpz data generate --force" in (REPO / "Makefile").read_text()  # `make run`: no profile, no -S
    done = subprocess.run([sys.executable, "benchmarks/bench_data.py", "--help"], capture_output=True,
                          text=True, timeout=300, cwd=REPO)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    make_run = [ln for ln in lines if "make run" in ln and "--n " in ln]
    assert make_run and all(f"--n {default.n_galaxies} " in ln for ln in make_run), make_run
    assert f"(default: {full.n_galaxies})" in done.stdout
    assert any(f"{full.n_galaxies:,} galaxies" in ln for ln in lines if "seed's size" in ln)
    source = (REPO / "benchmarks" / "bench_data.py").read_text()
    assert f"data.chunk_size={full.chunk_size}" in source and f"{full.chunk_size:,} rows" in done.stdout
    assert f"chunks of {default.chunk_size:,}" in done.stdout
