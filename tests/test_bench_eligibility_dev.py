"""benchmarks/bench_eligibility_dev.py, the eligibility's dev protocol (docs/method.md): it scores dev
stars that neither the layers it fits nor the reported held-out figures use, applies --set, and stops
a bad override with one message."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import benchmark_module, run_benchmark

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_benchmark("bench_eligibility_dev", *args, cwd=cwd, timeout=600)


def test_dev_stars_are_neither_held_out_nor_in_the_dev_layers_fit_part():
    from xpz.data.stars import HELD_OUT, held_out_mask, read_library

    bench = benchmark_module("bench_eligibility_dev")
    library = read_library()
    dev = bench.dev_stars(library)
    ids = set(dev.source_id.tolist())
    held_out = set(library.source_id[held_out_mask(library.source_id, HELD_OUT)].tolist())
    fit = set(library.source_id[~held_out_mask(library.source_id, bench.DEV_STARS[1])].tolist())
    assert HELD_OUT == bench.DEV_STARS[0]  # the dev range starts where the reported held-out part ends
    assert ids and not ids & held_out and not ids & fit
    assert len(ids) + len(held_out) + len(fit) == len(set(library.source_id.tolist()))
    # a fifth of the fit part, by star: 16% of the library, give or take the hash's sampling noise
    assert abs(len(ids) / len(np.unique(library.source_id)) - 0.16) < 0.01


def test_a_bad_override_a_disabled_star_term_or_an_unwritable_json_is_one_message_and_exit_2(tmp_path):
    params = str(REPO / "params.yaml")
    done = _run("--params", params, "--set", "eligibility.keep", cwd=tmp_path)
    assert done.returncode == 2 and "KEY=VALUE" in done.stderr and "Traceback" not in done.stderr
    done = _run("--params", params, "--set", "eligibility.stars=false", cwd=tmp_path)
    assert done.returncode == 2 and "eligibility.stars" in done.stderr and "Traceback" not in done.stderr
    # a JSON path that cannot be written is refused before minutes of work, not after them
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    done = _run("--params", params, "--json", str(blocker / "dev.json"), cwd=tmp_path)
    assert done.returncode == 2 and "--json" in done.stderr and "Traceback" not in done.stderr
    assert "host:" not in done.stdout  # stopped before any work


@pytest.mark.slow
def test_the_protocol_fits_each_regime_and_scores_every_family_and_the_dev_stars(tmp_path):
    out = tmp_path / "dev.json"
    done = _run("--params", str(REPO / "params.yaml"), "--profile", "smoke", "--n", "3000",
                "--impostors", "40", "--set", "eligibility.star_bright_share=0.05", "--json", str(out), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["seed"] == 11 and result["overrides"] == ["eligibility.star_bright_share=0.05"]
    regimes = result["regimes"]
    assert set(regimes) == {"all but bagpipes", "all but cosmos", "all but kcorrect", "all"}
    for name, row in regimes.items():
        assert set(row["galaxies"]) == {"bagpipes", "cosmos", "kcorrect"}  # never the held-out cww family
        for family, scored in row["galaxies"].items():
            assert scored["seen"] == (name == "all" or family not in name)
            assert 0.0 <= scored["flagged"] <= 1.0
            # why: every test galaxy is usable, so each flag is the star term's alone or a galaxy term's ...
            assert scored["flagged"] == pytest.approx(scored["star_only"] + scored["galaxy_terms"], abs=1e-12)
            # ... and the bright and faint sides add up to the whole
            assert 0.0 < scored["bright"] < 0.5
            assert scored["flagged"] == pytest.approx(scored["bright"] * scored["flagged_bright"]
                                                      + (1 - scored["bright"]) * scored["flagged_faint"], abs=1e-12)  # fmt: skip
        # the star term knows stars even at this scale: most dev stars at archive magnitudes are flagged
        assert 0.5 < row["stars_archive_g"] <= 1.0 and 0.0 <= row["stars_archive_counts"] <= 1.0
        assert 0 <= row["real_stars_flagged"] <= result["n_real_stars"] == 2
        # pure noise is nothing like a galaxy: the galaxy terms flag it whatever the setting
        assert row["impostors"]["noise"] > 0.9 and len(row["impostors"]) == 6
    # a family left out is scored on all its galaxies (every split; its regime fits on none of them),
    # the families fitted on on their test split: the three left-out rows hold the whole dataset
    n_unseen = [regimes["all but " + f]["galaxies"][f]["n"] for f in ("bagpipes", "cosmos", "kcorrect")]
    assert sum(n_unseen) == 3000
    assert all(
        regimes["all"]["galaxies"][f]["n"] < 0.2 * n
        for f, n in zip(("bagpipes", "cosmos", "kcorrect"), n_unseen)
    )
    summary = result["summary"]
    assert summary["unseen_flagged"] == {
        f: regimes["all but " + f]["galaxies"][f]["flagged"] for f in summary["unseen_flagged"]
    }
    assert "unseen flagged" in done.stdout and "host:" in done.stdout
    assert "cosmos: flagged" in done.stdout and "star term alone" in done.stdout
    assert "brighter than G 17.8" in done.stdout
