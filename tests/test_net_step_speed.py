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
    # the host runs at 1000, 2000, 600 img/s in three rounds; the second net at 0.5x, 0.9x, 0.9x of the first:
    # paired, the median ratio is 0.9; the ratio of the medians (540 / 1000) would be 0.54
    a, b = (1000.0, 2000.0, 600.0), (500.0, 1800.0, 540.0)
    rows = [{"round": r, "net": n, "images_per_s": v} for r in range(3) for n, v in (("a", a[r]), ("b", b[r]))]
    med = net_step_speed.summary(rows, ["a", "b"])
    assert med["b"]["median_ratio_to_first"] == pytest.approx(0.9)
    assert med["a"]["median_ratio_to_first"] == 1.0
    assert (med["a"]["median_images_per_s"], med["b"]["median_images_per_s"]) == (1000.0, 540.0)


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
