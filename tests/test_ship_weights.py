"""scripts/ship_weights.py: a run's shipped weights become models/weights/<model>.safetensors, stamped with the
committed copy of the run, and only when that copy is the run's."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from runs import REPO
from trainer.checkpoint import load_weights

spec = importlib.util.spec_from_file_location("ship_weights", REPO / "scripts" / "ship_weights.py")
ship_weights = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ship_weights)
LABEL = "synthetic 3-class tree of the tests"


def committed_copy(run: Path, results: Path, name: str) -> Path:
    """The run folder as results/ holds it: everything but the weights and checkpoints."""
    return Path(shutil.copytree(run, results / name, ignore=shutil.ignore_patterns("checkpoints", "*.safetensors")))


@pytest.mark.slow
def test_shipped_weights_are_the_runs_own_and_name_its_committed_copy(baseline, tmp_path):
    results, weights = tmp_path / "results", tmp_path / "weights"
    weights.mkdir()
    copy = committed_copy(baseline, results, "base-cpu")
    target = ship_weights.ship(baseline, copy, LABEL, weights, results)
    assert target == weights / "s7.safetensors"
    state, meta = load_weights(target)
    original = load_file(str(baseline / "model" / "model.safetensors"))
    assert state.keys() == original.keys() and all(torch.equal(state[k], original[k]) for k in state)
    assert (meta["run"], meta["data"], meta["model"]) == ("results/base-cpu", LABEL, "s7")


@pytest.mark.slow
def test_a_copy_that_is_not_the_runs_or_lies_outside_results_is_refused(baseline, tmp_path):
    results, weights = tmp_path / "results", tmp_path / "weights"
    weights.mkdir()
    copy = committed_copy(baseline, results, "short")
    lines = (copy / "metrics.jsonl").read_text().splitlines(keepends=True)
    (copy / "metrics.jsonl").write_text("".join(lines[:-1]))  # one epoch short: another run's figures
    (copy / "model" / "meta.json").write_text((copy / "model" / "meta.json").read_text().replace(
        f'"epoch": {len(lines)}', f'"epoch": {len(lines) - 1}'))
    with pytest.raises(SystemExit, match="is not a copy of"):
        ship_weights.ship(baseline, copy, LABEL, weights, results)
    with pytest.raises(SystemExit, match="not a run folder under"):
        ship_weights.ship(baseline, committed_copy(baseline, tmp_path / "elsewhere", "x"), LABEL, weights, results)
    assert not list(weights.iterdir())


@pytest.mark.slow
def test_a_run_ships_as_another_name_only_when_that_net_has_the_same_layout(baseline, tmp_path):
    results, weights = tmp_path / "results", tmp_path / "weights"
    weights.mkdir()
    copy = committed_copy(baseline, results, "base-cpu")
    with pytest.raises(SystemExit, match="--as s7_strided: its layout is not s7's"):
        ship_weights.ship(baseline, copy, LABEL, weights, results, as_name="s7_strided")
    with pytest.raises(SystemExit, match="--as s8: not a registered net"):
        ship_weights.ship(baseline, copy, LABEL, weights, results, as_name="s8")
    assert not list(weights.iterdir())
    target = ship_weights.ship(baseline, copy, LABEL, weights, results, as_name="s7_cand_d")  # s7's layout
    assert target == weights / "s7_cand_d.safetensors"
    state, meta = load_weights(target)
    assert (meta["model"], meta["trained_as"]) == ("s7_cand_d", "s7")
    timm.create_model("s7_cand_d", num_classes=len(meta["classes"])).load_state_dict(state)  # strict: every tensor
