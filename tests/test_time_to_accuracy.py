"""The speed harness end to end on the CPU with a tiny budget: its one JSON line agrees with the run's own files
(recounted here from metrics.jsonl and startup.json), it is appended to --out-jsonl, and the README's speed
table is generated from such lines, saying so plainly when none is committed."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from runs import PYTHON, REPO, SMOKE, sub_env

sys.path.insert(0, str(REPO / "scripts"))
import build_readme  # noqa: E402

TARGET = 90.0


@pytest.fixture(scope="module")
def harness(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("tta")
    jsonl = out / "speed" / "cpu.jsonl"
    cmd = [PYTHON, "benchmarks/time_to_accuracy.py", "--device", "cpu", "--data", str(data.tree), "--data-dir",
           str(data.cache), "--out", str(out), "--name", "h", "--target", str(TARGET), "--throughput",
           "--batches", "2", "--warmup", "1", "--out-jsonl", str(jsonl),
           "--", "--config", SMOKE, "--epochs", "2", "--workers", "0"]
    p = subprocess.run(cmd, cwd=REPO, env=sub_env(), capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return out, p.stdout, jsonl


def test_the_harness_prints_one_json_line_that_agrees_with_the_run(harness):
    out, stdout, jsonl = harness
    printed = [text for text in stdout.splitlines() if text.startswith("{")]
    assert len(printed) == 1 and jsonl.read_text().splitlines() == printed
    rec = json.loads(printed[0])
    run = out / "h"
    rows = [json.loads(text) for text in (run / "metrics.jsonl").read_text().splitlines()]
    hit = next((r for r in rows if r["test_acc"] >= TARGET), None)
    assert hit is not None  # precondition: the synthetic task passes 90 % within two epochs
    assert (rec["epoch_to_target"], rec["seconds_to_target"]) == (hit["epoch"], hit["wall_seconds"])
    assert rec["epochs"] == len(rows) == 2 and rec["final_test_acc"] == rows[-1]["test_acc"]
    images = 600 // 32 * 32  # the synthetic training split in full batches of the smoke recipe
    assert rec["loop_images_per_s"] == pytest.approx(images / rows[1]["train_seconds"], rel=1e-9)
    startup = json.loads((run / "startup.json").read_text())
    assert rec["startup_seconds"] == startup["seconds"] and rec["startup_phases"] == startup["phases"]
    assert startup["seconds"] < rows[0]["wall_seconds"]
    assert (rec["device"], rec["precision"], rec["batch_size"], rec["compile"], rec["channels_last"],
            rec["workers"], rec["peak_lr"]) == ("CPU", "no", 32, "none", False, 0, 0.1)
    assert rec["step_images_per_s"] > 0 and rec["loader_images_per_s"] > 0
    assert json.loads((run / "time_to_accuracy.json").read_text()).items() <= rec.items()


def test_the_readme_speed_table_is_generated_from_the_committed_lines(harness, tmp_path, monkeypatch):
    monkeypatch.setattr(build_readme, "RESULTS", tmp_path)
    assert build_readme.block_speed_options().startswith("No speed measurement is committed yet")
    out, _, jsonl = harness
    (tmp_path / "speed").mkdir()
    (tmp_path / "speed" / "cpu.jsonl").write_text(jsonl.read_text())
    rec = json.loads(jsonl.read_text())
    table = build_readme.block_speed_options()
    row = next(text for text in table.splitlines() if text.startswith("| h |"))
    assert f"| {rec['startup_seconds']:.1f} | {rec['loop_images_per_s']:,.0f} |" in row
    assert f"epoch {rec['epoch_to_target']}, {rec['seconds_to_target']:.1f} s" in row


@pytest.mark.parametrize("flag", ["--out", "--name=x"])
def test_the_harness_refuses_its_own_flags_among_the_trainer_flags(flag, tmp_path):
    # given after '--' the trainer would write the run elsewhere and the harness would report on nothing
    cmd = [PYTHON, "benchmarks/time_to_accuracy.py", "--out", str(tmp_path), "--", "--epochs", "1", flag, "y"]
    p = subprocess.run(cmd, cwd=REPO, env=sub_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and flag.split("=")[0] in p.stderr.splitlines()[-1]
    assert list(tmp_path.iterdir()) == []
