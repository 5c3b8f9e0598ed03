"""A run that cannot start as asked stops with one line, before doing harm: a taken run folder, an unknown net
(before any data work), a schedule too short for OneCycle, a net that breaks a rule, a resume with another
number of processes."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from timm.models import register_model
from torch import nn

from runs import WEAK, flags, train_in_process, unfinished_copy
from trainer import checkpoint
from trainer.runfolder import read_metrics


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_a_reused_name_is_refused_and_leaves_the_old_run_untouched(weak_run, data, capsys):
    before = {p.name: p.read_bytes() for p in weak_run.iterdir() if p.is_file()}
    checkpoints = sorted(p.name for p in (weak_run / "checkpoints").iterdir())
    argv = flags(data, weak_run.parent, weak_run.name, *WEAK, epochs=1)
    assert train_in_process(argv) == 2
    err = one_line_error(capsys)
    assert "already exists" in err and f"--resume {weak_run}" in err
    after = {p.name: p.read_bytes() for p in weak_run.iterdir() if p.is_file()}
    assert after == before
    assert sorted(p.name for p in (weak_run / "checkpoints").iterdir()) == checkpoints


def test_an_unknown_model_is_named_before_any_data_is_read(tmp_path, capsys):
    argv = ["--model", "s8", "--data", str(tmp_path / "no-such-data"), "--out", str(tmp_path),
            "--wandb-mode", "disabled"]
    assert train_in_process(argv) == 2
    err = one_line_error(capsys)
    assert "--model s8: not a registered net" in err and "s7, s7_strided, s7_dilated" in err
    assert not (tmp_path / "no-such-data").exists() and not any(tmp_path.iterdir())


@pytest.mark.parametrize("extra, message", [
    (("--train-subset", "300", "--batch-size", "64"), "4 optimizer steps (1 epochs x 4) are too few for OneCycle"),
    (("--train-subset", "300", "--batch-size", "512"), "--batch-size 512 is larger than the 300 training images"),
])
def test_a_run_too_short_for_its_schedule_stops_with_one_line(data, tmp_path, capsys, extra, message):
    assert train_in_process(flags(data, tmp_path, "short", *extra, epochs=1)) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "short").exists()  # nothing half-made to trip over the next try


class FcAfterGap(nn.Module):
    """Compliant but for a Linear after global average pooling."""

    def __init__(self, num_classes: int = 10, **kwargs):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 1))
        self.fc = nn.Linear(num_classes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean((2, 3)))


@register_model
def toy_fc_after_gap(pretrained: bool = False, **kwargs) -> nn.Module:
    return FcAfterGap(**kwargs)


def test_a_net_that_breaks_a_rule_is_refused_naming_the_rule(data, tmp_path, capsys):
    assert train_in_process(flags(data, tmp_path, "toy", "--model", "toy_fc_after_gap", epochs=1)) == 2
    err = one_line_error(capsys)
    assert "--model toy_fc_after_gap breaks the rules" in err and "layers with weights after GAP" in err
    assert "--allow-rule-violations" in err


def test_with_allow_rule_violations_it_trains_and_its_report_says_fail_first(data, tmp_path):
    argv = flags(data, tmp_path, "toy", "--model", "toy_fc_after_gap", "--allow-rule-violations", "true",
                 "--train-subset", "96", epochs=2)
    assert train_in_process(argv) == 0
    run = tmp_path / "toy"
    rules = (run / "rules.md").read_text()
    assert rules.rstrip().splitlines()[-1].startswith("FAIL: ") and "layers with weights after GAP" in rules
    assert "FAIL" in (run / "report.md").read_text().splitlines()[0]
    assert "rules: FAIL: " in (run / "train.log").read_text()


def test_an_s7_run_records_its_rule_check(weak_run):
    assert (weak_run / "rules.md").read_text().rstrip().splitlines()[-1] == "ALL PASS"
    assert "rules: ALL PASS" in (weak_run / "train.log").read_text()
    assert "ALL PASS" in (weak_run / "report.md").read_text().splitlines()[0]


@pytest.mark.parametrize("legacy", [False, True])
def test_resuming_with_another_number_of_processes_is_refused(baseline, tmp_path, capsys, legacy):
    run = unfinished_copy(baseline, tmp_path / "r")
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    state = json.loads((ckpt / "state.json").read_text())
    assert state["num_processes"] == 1
    if legacy:  # a checkpoint from before the count was saved: the per-rank RNG files tell
        del state["num_processes"]
        shutil.copy(ckpt / "random_states_0.pkl", ckpt / "random_states_1.pkl")
    else:
        state["num_processes"] = 2
    (ckpt / "state.json").write_text(json.dumps(state))
    checkpoint.seal(ckpt)  # consistent, as such a run would have written it
    rows = read_metrics(run)
    assert train_in_process(["--resume", str(run), "--wandb-mode", "disabled"]) == 2
    assert "trained with 2 process(es); resume it with 2, not 1" in one_line_error(capsys)
    assert read_metrics(run) == rows
