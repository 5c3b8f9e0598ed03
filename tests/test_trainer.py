"""Training end to end on a separable synthetic task (CPU, in process): it learns, a resumed run equals an
uninterrupted one, NaN stops it, the OneCycle schedule ends where it should, the run folder and report agree
with metrics.jsonl, the config resolves defaults < YAML < flags, weight decay skips BatchNorm and biases."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import synthetic
from runs import (N_TEST, PYTHON, REPO, SMOKE, assert_same_metrics, copy_run, final_lr, flags, recount_accuracy,
                  results_table, sub_env, train_in_process,
                  train_until_interrupted)
from trainer import main as trainer_main
from trainer.config import TrainConfig, resolve
from trainer.optim import make_optimizer, make_scheduler
from trainer.runfolder import read_metrics

# ---------------------------------------------------------------- 1. it learns

def test_synthetic_task_is_learned_above_90_percent_in_four_epochs(baseline, data):
    rows = read_metrics(baseline)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["test_acc"] > 90.0 and max(r["test_acc"] for r in rows) > 90.0
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert all(r["test_images"] == 3 * N_TEST for r in rows)
    # the logged accuracy is a real count: the shipped (final) epoch's saved predictions give the same number
    assert recount_accuracy(baseline, data.test_labels) == pytest.approx(rows[-1]["test_acc"], abs=1e-9)


# ---------------------------------------------------------------- 3. resume == uninterrupted (one process)

def test_resume_after_interrupt_at_epoch_3_equals_uninterrupted_run(baseline, data, tmp_path, capsys):
    assert train_until_interrupted(flags(data, tmp_path, "b"), at_epoch=3) == 130
    run = tmp_path / "b"
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]
    assert (run / "checkpoints" / "latest").read_text().strip() == "epoch-0002"

    capsys.readouterr()
    assert train_in_process(["--resume", str(run), "--workers", "0", "--wandb-mode", "disabled"]) == 0
    assert "resumed from epoch 2 of 4" in capsys.readouterr().out
    assert_same_metrics(read_metrics(run), read_metrics(baseline))
    # the shipped weights of both runs are the same tensors
    from safetensors.torch import load_file
    a, b = load_file(str(run / "model/model.safetensors")), load_file(str(baseline / "model/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


# ---------------------------------------------------------------- 5. NaN is caught

def test_nan_loss_stops_with_exit_3_naming_epoch_and_step_and_keeps_the_last_good_epoch(data, tmp_path, monkeypatch):
    original = trainer_main.train_one_epoch

    def nan_at_epoch2_step3(accelerator, model, loader, optimizer, scheduler, criterion, *args, epoch, **kwargs):
        calls = []

        def poisoned(logits, y):
            calls.append(1)
            loss = criterion(logits, y)
            return loss * float("nan") if len(calls) == 4 else loss  # step index 3

        crit = poisoned if epoch == 2 else criterion
        return original(accelerator, model, loader, optimizer, scheduler, crit, *args, epoch=epoch, **kwargs)

    monkeypatch.setattr(trainer_main, "train_one_epoch", nan_at_epoch2_step3)
    assert train_in_process(flags(data, tmp_path, "nan", "--train-subset", "256", epochs=3)) == 3
    run = tmp_path / "nan"
    log = (run / "train.log").read_text()
    assert "non-finite loss at epoch 2, step 3" in log
    assert [r["epoch"] for r in read_metrics(run)] == [1]
    meta = json.loads((run / "model/meta.json").read_text())
    assert meta["epoch"] == 1
    from safetensors.torch import load_file
    assert all(torch.isfinite(t.float()).all() for t in load_file(str(run / "model/model.safetensors")).values())
    assert (run / "checkpoints/latest").read_text().strip() == "epoch-0001"


def test_huge_learning_rate_diverges_to_exit_3_without_shipped_weights(data, tmp_path):
    rc = train_in_process(flags(data, tmp_path, "lr", "--lr", "1e6", "--train-subset", "300", epochs=1))
    assert rc == 3
    run = tmp_path / "lr"
    assert re.search(r"error: non-finite loss at epoch 1, step \d+", (run / "train.log").read_text())
    assert not (run / "model").exists() and not (run / "metrics.jsonl").exists()
    assert (run / "checkpoints/latest").read_text().strip() == "epoch-0000"  # the untrained start stays loadable


# ---------------------------------------------------------------- 9. OneCycle ends at its end (one process)

def test_one_cycle_schedule_ends_at_its_floor_in_one_process(baseline):
    cfg = TrainConfig.load(baseline / "config.yaml")
    rows = read_metrics(baseline)
    assert rows[-1]["lr"] == pytest.approx(final_lr(cfg), rel=1e-6)
    assert all(r["lr"] > final_lr(cfg) * 1.5 for r in rows[:-1])  # earlier epochs are above the floor


# ---------------------------------------------------------------- 10. run folder and report

RUN_FILES = ("config.yaml", "metrics.jsonl", "train.log", "summary.txt", "receptive_field.md", "loss.png",
             "accuracy.png", "misclassified.png", "per_class.md", "report.md", "model/model.safetensors",
             "model/meta.json", "predictions.npz", "augmentation.txt", "rules.md")


def test_run_folder_holds_every_file_and_report_numbers_equal_metrics(weak_run, data):
    for name in RUN_FILES:
        assert (weak_run / name).is_file(), name
    rows = read_metrics(weak_run)
    final = rows[-1]
    table = results_table((weak_run / "report.md").read_text())
    assert table["final train accuracy (augmented batches)"] == f"{final['train_acc']:.2f}%"
    assert table["final test accuracy, no TTA"] == f"{final['test_acc']:.2f}%"
    assert table["final test accuracy, flip TTA"] == f"{final['test_acc_tta']:.2f}%"
    assert table["shipped weights"] == f"epoch {final['epoch']}, final epoch"
    assert table["epochs"] == str(final["epoch"])
    assert not any("best" in label for label in table)  # nothing is picked on the test split
    assert recount_accuracy(weak_run, data.test_labels) == pytest.approx(final["test_acc"], abs=1e-9)
    # per_class.md counts agree with the predictions
    p = np.load(weak_run / "predictions.npz")
    per_class = (weak_run / "per_class.md").read_text()
    for i, c in enumerate(sorted(synthetic.CLASSES)):
        mask = p["labels"] == i
        assert f"| {c} | {mask.sum()} | {int((p['preds'][mask] == i).sum())} |" in per_class
    assert len(p["wrong_index"]) == min(int((p["preds"] != p["labels"]).sum()), 25)


def test_s7_report_rebuilds_the_same_report_from_the_run_folder(weak_run, tmp_path, capsys):
    from trainer.tools import cli

    run = copy_run(weak_run, tmp_path / "r")
    before = {n: (run / n).read_text() for n in ("report.md", "per_class.md")}
    for name in ("loss.png", "accuracy.png", "misclassified.png", "report.md", "per_class.md"):
        (run / name).unlink()
    assert cli.main(["report", str(run)]) == 0
    assert "final test accuracy" in capsys.readouterr().out
    for name in ("loss.png", "accuracy.png", "misclassified.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    after = {n: (run / n).read_text() for n in before}
    assert after["per_class.md"] == before["per_class.md"]
    # identical up to the embedded train.log, which gained the "done:" line after the first build
    head = before["report.md"].split("## train.log")[0].replace(f"# Report: {weak_run.name}", "# Report: r")
    assert after["report.md"].split("## train.log")[0] == head
    assert (run / "train.log").read_text().rstrip() in after["report.md"].split("## train.log")[1]


def test_report_of_a_folder_without_metrics_is_a_one_line_error(tmp_path, capsys):
    from trainer.tools import cli

    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "no metrics.jsonl" in err and err.count("\n") == 1


# ---------------------------------------------------------------- 14. configuration

def test_flags_override_yaml_which_overrides_defaults():
    cfg = resolve(["--config", SMOKE, "--lr", "0.3", "--epochs", "7"])
    recipe = yaml.safe_load(Path(SMOKE).read_text())
    assert cfg.lr == 0.3 and cfg.epochs == 7                                # flags beat the recipe
    assert cfg.batch_size == recipe["batch_size"] != TrainConfig.batch_size  # the recipe beats the defaults
    assert cfg.label_smoothing == recipe["label_smoothing"]
    assert cfg.momentum == TrainConfig.momentum and cfg.seed == TrainConfig.seed  # untouched: defaults
    assert cfg.recipe == "smoke"


def test_model_flag_picks_that_models_recipe():
    cfg = resolve(["--model", "s7_dilated"])
    recipe = yaml.safe_load((REPO / "configs" / "s7_dilated.yaml").read_text())
    assert cfg.model == "s7_dilated" and cfg.recipe == "s7_dilated"
    for key, value in recipe.items():
        assert getattr(cfg, key) == value, key


def test_saved_config_round_trips_into_the_same_train_config(baseline, data):
    saved = TrainConfig.load(baseline / "config.yaml")
    assert saved == resolve(flags(data, data.base / "runs", "baseline"))


def test_unknown_yaml_key_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: s7\nlearning_rate: 0.1\n")
    with pytest.raises(SystemExit, match=r"unknown config key\(s\) learning_rate"):
        resolve(["--config", str(bad)])
    with pytest.raises(SystemExit, match="unknown config key"):
        TrainConfig.load(bad)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="config file not found"):
        resolve(["--config", str(tmp_path / "nope.yaml")])


def test_help_exits_0_and_lists_batch_size():
    p = subprocess.run([PYTHON, "trainer/main.py", "--help"], cwd=REPO, env=sub_env(), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "--batch-size" in p.stdout and "--resume" in p.stdout


# ---------------------------------------------------------------- 15. weight decay groups

@pytest.mark.parametrize("name", ["s7", "s7_strided", "s7_dilated"])
def test_weight_decay_skips_batchnorm_and_biases(name):
    import timm

    import models  # noqa: F401

    model = timm.create_model(name, num_classes=10)
    opt = make_optimizer(TrainConfig(weight_decay=5e-4), model)
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 5e-4]
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 5e-4 for p in g["params"]}
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert not decay & no_decay and decay | no_decay == {id(p) for p in model.parameters()}
    norm_types = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)
    n_norm = n_bias = 0
    for mod_name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if isinstance(module, norm_types) or pname == "bias":
                assert id(p) in no_decay, f"{mod_name}.{pname}"
                n_norm += isinstance(module, norm_types)
                n_bias += pname == "bias"
            if p.ndim > 1:
                assert id(p) in decay, f"{mod_name}.{pname}"
    assert n_norm > 0 and n_bias > 0  # the model has BatchNorm and biases to exclude


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_bn_bias_lr_moves_only_the_batchnorm_shifts_faster(optimizer):
    """--bn-bias-lr 64: after one step from the same weights on the same batch, every BatchNorm shift moved 64 times
    as far as at 1 (SGD; AdamW's first step is lr x sign, also 64x), every other parameter exactly as far."""
    import timm

    import models  # noqa: F401

    x, y = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.arange(8) % 10
    moved = []
    for scale in (1.0, 64.0):
        torch.manual_seed(0)
        model = timm.create_model("s7", num_classes=10)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        cfg = TrainConfig(optimizer=optimizer, lr=0.01, weight_decay=5e-4, bn_bias_lr=scale, epochs=2)
        opt = make_optimizer(cfg, model)
        make_scheduler(cfg, opt, steps_per_epoch=10, train_images=80)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        moved.append({n: p.detach() - before[n] for n, p in model.named_parameters()})
    shifts = {f"{m}.bias" for m, mod in model.named_modules() if isinstance(mod, torch.nn.BatchNorm2d)}
    assert len(shifts) >= 8
    for name, delta in moved[1].items():
        expected = moved[0][name] * (64.0 if name in shifts else 1.0)
        torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-7, msg=name)


def test_bn_bias_lr_scales_the_whole_onecycle_curve_of_the_shifts():
    import timm

    import models  # noqa: F401

    model = timm.create_model("s7", num_classes=10)
    cfg = TrainConfig(lr=0.4, bn_bias_lr=8.0, epochs=3)
    opt = make_optimizer(cfg, model)
    sched = make_scheduler(cfg, opt, steps_per_epoch=20, train_images=160)
    n_bn = sum(m.bias.numel() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert sum(p.numel() for p in opt.param_groups[-1]["params"]) == n_bn
    lrs = []
    for _ in range(60):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert max(row[0] for row in lrs) == pytest.approx(0.4)
    assert all(row[-1] == pytest.approx(8.0 * row[0]) and row[1] == row[0] for row in lrs)


def test_optimizer_state_saved_before_timms_groups_still_loads_onto_the_same_parameters():
    import timm

    import models  # noqa: F401

    model = timm.create_model("s7", num_classes=10)
    # the grouping checkpoints were written with before timm's: decayed weights first, then 1-d parameters
    decay = [p for p in model.parameters() if p.ndim > 1]
    old = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4},
                           {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0}],
                          lr=0.1, momentum=0.9, nesterov=True)
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    old.step()
    new = make_optimizer(TrainConfig(weight_decay=5e-4), model)
    new.load_state_dict(old.state_dict())
    assert [g["weight_decay"] for g in new.param_groups] == [5e-4, 0.0]
    assert [id(p) for p in new.param_groups[0]["params"]] == [id(p) for p in decay]
    assert all(torch.equal(new.state[p]["momentum_buffer"], old.state[p]["momentum_buffer"]) for p in decay)
