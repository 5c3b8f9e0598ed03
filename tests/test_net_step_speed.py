"""benchmarks/net_step_speed.py: the speed ratio is paired within a round, so a host that swings between rounds
does not move it; the command measures every net in every round and writes what it printed."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from runs import PYTHON, REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import net_step_speed  # noqa: E402


def test_the_ratio_is_paired_within_rounds_not_a_ratio_of_medians():
    # the host runs at 1000, 2000, 600 img/s in three rounds; the second net is at 0.8x in each
    rows = [{"round": r, "net": n, "images_per_s": base * (0.8 if n == "b" else 1.0)}
            for r, base in enumerate((1000.0, 2000.0, 600.0)) for n in ("a", "b")]
    med = net_step_speed.summary(rows, ["a", "b"])
    assert med["b"]["median_ratio_to_first"] == pytest.approx(0.8)
    assert med["a"]["median_ratio_to_first"] == 1.0
    assert (med["a"]["median_images_per_s"], med["b"]["median_images_per_s"]) == (1000.0, 800.0)


def test_the_command_measures_each_net_each_round_in_alternating_order(tmp_path):
    out = tmp_path / "speed.json"
    p = subprocess.run([PYTHON, "benchmarks/net_step_speed.py", "--nets", "s7", "s7_cand_e", "--rounds", "2",
                        "--steps", "1", "--out", str(out), "--where", "test"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    saved = json.loads(out.read_text())
    assert [(r["round"], r["net"]) for r in saved["rows"]] == [(0, "s7"), (0, "s7_cand_e"), (1, "s7_cand_e"),
                                                                 (1, "s7")]
    assert saved["where"] == "test" and saved["medians"]["s7"]["median_ratio_to_first"] == 1.0
    assert "| s7_cand_e |" in p.stdout


def test_one_net_is_refused_in_one_line(tmp_path):
    p = subprocess.run([PYTHON, "benchmarks/net_step_speed.py", "--nets", "s7", "--out", str(tmp_path / "x.json")],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--nets needs two nets or more" in p.stderr
    assert not (tmp_path / "x.json").exists()
