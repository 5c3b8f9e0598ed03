"""Each training option does what its flag says, on the CPU: momentum held or cycled, EMA weights that load
everywhere, a validation split that picks the shipped epoch, test accuracy with and without flip TTA, and
the defaults the smoke recipe turns off (channels_last, forked persistent workers through a resume, bf16)."""
from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

from runs import (PYTHON, REPO, WEAK, assert_same_metrics, flags, results_table, sub_env, train_in_process,
                  train_until_interrupted)
from trainer.tools import cli
from trainer.dataset import split_validation
from trainer.loop import train_one_epoch
from trainer.runfolder import read_metrics

QUICK = ("--train-subset", "96")


def quick_run(data, tmp_path, name: str, *extra: str, epochs: int = 2):
    assert train_in_process(flags(data, tmp_path, name, *QUICK, *extra, epochs=epochs)) == 0
    return tmp_path / name


def evaluated(capsys, run, data) -> tuple[float, float]:
    """(plain, flip TTA) test accuracy that `s7 evaluate` counts from the shipped weights."""
    capsys.readouterr()
    assert cli.main(["evaluate", str(run), "--data", str(data.tree), "--data-dir", str(data.cache)]) == 0
    out = capsys.readouterr().out
    plain, tta = re.search(r"test accuracy ([\d.]+)% .*with flip TTA ([\d.]+)%", out).groups()
    return float(plain), float(tta)


# ---------------------------------------------------------------- momentum

def test_momentum_flag_is_the_momentum_every_step_uses(data, tmp_path):
    rows = read_metrics(quick_run(data, tmp_path, "m", "--momentum", "0.7"))
    assert [r["momentum"] for r in rows] == [0.7, 0.7]


def test_cycled_momentum_moves_between_its_bounds(data, tmp_path):
    rows = read_metrics(quick_run(data, tmp_path, "c", "--cycle-momentum", "true", "--base-momentum", "0.8",
                                  "--max-momentum", "0.96", epochs=3))
    values = [r["momentum"] for r in rows]
    assert all(0.8 <= v <= 0.96 for v in values) and len(set(values)) > 1
    assert values[-1] == pytest.approx(0.96, abs=0.01)  # back at the top as the learning rate ends


def test_adamw_beta1_is_the_momentum_flag(data, tmp_path):
    rows = read_metrics(quick_run(data, tmp_path, "a", "--optimizer", "adamw", "--lr", "0.003",
                                  "--momentum", "0.8"))
    assert [r["momentum"] for r in rows] == [0.8, 0.8]


# ---------------------------------------------------------------- BatchNorm settings

def test_batchnorm_flags_reach_every_batchnorm_of_the_trained_net(data, tmp_path):
    # momentum 0 keeps the running statistics at their initial 0 and 1; frozen scales stay at their initial 1
    shipped = load_file(str(quick_run(data, tmp_path, "bn", "--bn-momentum", "0", "--bn-frozen-scales", "true")
                       / "model/model.safetensors"))
    bns = [k.removesuffix(".running_mean") for k in shipped if k.endswith(".running_mean")]
    assert len(bns) > 5
    for bn in bns:
        assert torch.equal(shipped[bn + ".running_mean"], torch.zeros_like(shipped[bn + ".running_mean"]))
        assert torch.equal(shipped[bn + ".running_var"], torch.ones_like(shipped[bn + ".running_var"]))
        assert torch.equal(shipped[bn + ".weight"], torch.ones_like(shipped[bn + ".weight"]))
    assert any(shipped[bn + ".bias"].abs().max() > 0 for bn in bns)  # the shifts did learn
    default = load_file(str(quick_run(data, tmp_path, "d") / "model/model.safetensors"))
    assert all(not torch.equal(default[bn + ".weight"], shipped[bn + ".weight"]) for bn in bns[:3])


# ---------------------------------------------------------------- EMA

def test_ema_weights_are_shipped_plain_and_load_by_evaluate_predict_and_timm(data, tmp_path, capsys):
    run = quick_run(data, tmp_path, "ema", "--ema-decay", "0.9")
    meta = json.loads((run / "model/meta.json").read_text())
    assert meta["ema"] is True and meta["epoch"] == 2
    shipped = load_file(str(run / "model/model.safetensors"))
    assert not any(k.startswith("module.") or k == "n_averaged" for k in shipped)
    # the shipped tensors are the average, not the raw weights of the last step
    ckpt = run / "checkpoints" / (run / "checkpoints/latest").read_text().strip()
    raw = load_file(str(ckpt / "model.safetensors"))
    ema = load_file(str(ckpt / "ema.safetensors"))
    assert all(torch.equal(shipped[k], ema[k]) for k in shipped)
    assert any(not torch.equal(shipped[k], raw[k]) for k in shipped if shipped[k].is_floating_point())
    # s7 evaluate counts the figures the run logged for that epoch
    final = read_metrics(run)[-1]
    plain, tta = evaluated(capsys, run, data)
    assert plain == pytest.approx(final["test_acc"], abs=0.01)
    assert tta == pytest.approx(final["test_acc_tta"], abs=0.01)
    model = timm.create_model("s7", pretrained=True, num_classes=3,
                              pretrained_cfg_overlay={"file": str(run / "model/model.safetensors"),
                                                      "num_classes": 3})
    assert all(torch.equal(model.state_dict()[k], shipped[k]) for k in shipped)
    assert cli.main(["predict", str(run), str(next((data.tree / "test").rglob("*.png")))]) == 0


def test_ema_run_resumes_to_the_same_figures(data, tmp_path):
    full = quick_run(data, tmp_path, "full", "--ema-decay", "0.9", epochs=3)
    assert train_until_interrupted(flags(data, tmp_path, "cut", *QUICK, "--ema-decay", "0.9", epochs=3), at_epoch=3) == 130
    assert train_in_process(["--resume", str(tmp_path / "cut"), "--wandb-mode", "disabled"]) == 0
    assert_same_metrics(read_metrics(tmp_path / "cut"), read_metrics(full), keys=("train_loss", "test_acc",
                                                                                  "test_loss", "test_acc_tta"))


# ---------------------------------------------------------------- validation split and TTA

def test_validation_split_is_stratified_disjoint_and_the_same_for_every_seed():
    y = np.repeat(np.arange(3), [300, 200, 100])
    x = np.arange(600)[:, None, None, None].repeat(2, 1)  # image i holds the number i
    tx, ty, vx, vy = split_validation(x, y, 60)
    assert np.bincount(vy).tolist() == [30, 20, 10] and len(ty) == 540
    assert not set(tx[:, 0, 0, 0]) & set(vx[:, 0, 0, 0])
    assert set(tx[:, 0, 0, 0]) | set(vx[:, 0, 0, 0]) == set(range(600))
    again = split_validation(x, y, 60)
    assert np.array_equal(again[2], vx)


def test_validation_split_picks_the_shipped_epoch_and_test_only_reports(data, tmp_path):
    run = quick_run(data, tmp_path, "val", "--val-split", "60", "--train-subset", "300", epochs=3)
    rows = read_metrics(run)
    assert all(r["val_images"] == 60 for r in rows)
    best_val = max(rows, key=lambda r: r["val_acc"])  # first of the best: max() keeps the earliest
    meta = json.loads((run / "model/meta.json").read_text())
    assert meta["selected_by"] == "best val_acc" and meta["epoch"] == best_val["epoch"]
    assert meta["test_acc"] == best_val["test_acc"]
    assert "240 train / 60 validation / 153 test images" in (run / "train.log").read_text()


def test_without_validation_the_final_epoch_ships_with_both_test_figures(weak_run, data, capsys):
    rows = read_metrics(weak_run)
    meta = json.loads((weak_run / "model/meta.json").read_text())
    assert meta["selected_by"] == "final epoch" and meta["epoch"] == rows[-1]["epoch"]
    assert all("test_acc_tta" in r for r in rows)
    plain, tta = evaluated(capsys, weak_run, data)  # a second code path counts both figures again
    assert plain == pytest.approx(rows[-1]["test_acc"], abs=0.01)
    assert tta == pytest.approx(rows[-1]["test_acc_tta"], abs=0.01)


def test_flip_tta_is_measured_after_the_final_epoch_only_unless_every_epoch_is_asked(weak_run, data, tmp_path):
    rows = read_metrics(weak_run)
    assert [(r["test_acc_tta"], r["test_loss_tta"]) for r in rows[:-1]] == [(None, None)]
    assert rows[-1]["test_acc_tta"] is not None and rows[-1]["test_loss_tta"] is not None
    log = (weak_run / "train.log").read_text()
    assert "epoch   1/2" in log and "flip TTA" not in log.split("epoch   1/2", 1)[1].split("\n", 1)[0]
    report = (weak_run / "report.md").read_text()
    assert reached_row(report).endswith("(measured at the final epoch only)")
    assert "flip TTA after the final epoch only; – = not measured" in report  # the log table's legend
    every = tmp_path / "every"
    assert train_in_process(flags(data, tmp_path, "every", *WEAK, "--tta-every-epoch", "true", epochs=2)) == 0
    again = read_metrics(every)
    assert all(r["test_acc_tta"] is not None and r["test_loss_tta"] is not None for r in again)
    assert_same_metrics(rows, again)  # the extra pass measures; it changes nothing the run learns or reports
    assert again[-1]["test_acc_tta"] == pytest.approx(rows[-1]["test_acc_tta"])
    report = (every / "report.md").read_text()
    assert "final epoch only" not in reached_row(report) and "final epoch only" not in report


def reached_row(report_md: str) -> str:
    return results_table(report_md)["87% test accuracy first reached, flip TTA"]


# ---------------------------------------------------------------- defaults the smoke recipe turns off

def test_channels_last_run_learns_like_the_contiguous_one(baseline, data, tmp_path):
    """The smoke recipe (the baseline's) trains in NCHW; the same run in channels_last must learn as well."""
    assert train_in_process(flags(data, tmp_path, "cl", "--channels-last", "true")) == 0
    a, b = read_metrics(tmp_path / "cl"), read_metrics(baseline)
    assert a[-1]["test_acc"] > 90.0 and b[-1]["test_acc"] > 90.0
    assert a[0]["train_loss"] == pytest.approx(b[0]["train_loss"], rel=0.05)  # same maths, other memory layout


def test_forked_persistent_workers_resume_to_the_same_figures(data, tmp_path):
    full = quick_run(data, tmp_path, "w-full", "--workers", "2", epochs=3)
    assert train_until_interrupted(flags(data, tmp_path, "w-cut", *QUICK, "--workers", "2", epochs=3), at_epoch=3) == 130
    assert train_in_process(["--resume", str(tmp_path / "w-cut"), "--wandb-mode", "disabled"]) == 0
    assert_same_metrics(read_metrics(tmp_path / "w-cut"), read_metrics(full))


def test_augmenting_in_the_training_process_trains_as_one_worker_does(data, tmp_path):
    """What makes 0 the safe automatic count on the CPU: the same shuffle orders (Accelerate's seedable sampler,
    from seed and epoch) and augmentation streams (worker id 0 either way), so runs that had the old automatic
    single worker on a 2-core machine are reproduced."""
    one = quick_run(data, tmp_path, "w-one", "--workers", "1", epochs=3)
    none = quick_run(data, tmp_path, "w-none", "--workers", "0", epochs=3)
    assert_same_metrics(read_metrics(none), read_metrics(one))


def test_bf16_autocast_trains_on_the_cpu(data, tmp_path):
    # its own process: Accelerate's precision is fixed once per process
    argv = flags(data, tmp_path, "bf16", *QUICK, "--mixed-precision", "bf16", epochs=3)
    p = subprocess.run([PYTHON, "trainer/main.py", *argv], cwd=REPO, env=sub_env(), capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    run = tmp_path / "bf16"
    rows = read_metrics(run)
    assert "precision bf16" in (run / "train.log").read_text()
    assert all(np.isfinite(r["train_loss"]) for r in rows) and rows[-1]["train_loss"] < rows[0]["train_loss"]


# ---------------------------------------------------------------- fp16: the scheduler follows the optimizer

def test_scheduler_does_not_step_when_the_grad_scaler_skipped_the_optimizer(monkeypatch):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=100)
    loader = [(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))] * 6
    skipped = iter([True, True, False, True, False, False])  # as a scaler backing off after overflows
    monkeypatch.setattr(Accelerator, "optimizer_step_was_skipped", property(lambda self: next(skipped)))
    train_one_epoch(accelerator, model, loader, opt, sched, torch.nn.CrossEntropyLoss(), [0.0] * 3, [1.0] * 3,
                    epoch=1, channels_last=False)
    assert sched.last_epoch == 3  # three real optimizer steps, three scheduler steps
