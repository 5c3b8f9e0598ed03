"""Training end to end on a separable synthetic task (CPU, in process): it learns, a resumed run equals an
uninterrupted one, NaN stops it, the OneCycle schedule ends where it should, the run folder and report agree
with metrics.jsonl, the config resolves defaults < YAML < flags, weight decay skips BatchNorm and biases.

The first part holds helpers and session fixtures that the other trainer test files import: the synthetic
tree and the cached runs live under pytest's session temp folder, so each is written or trained once.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import synthetic
from trainer import main as trainer_main
from trainer.config import TrainConfig, resolve
from trainer.tracking import read_metrics

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TORCHRUN = str(Path(sys.executable).parent / "torchrun")
N_TRAIN, N_TEST = 200, 51  # per class: 600 train, 153 test images (odd, so two ranks pad the last test batch)
EPOCHS = 4
SMOKE = str(REPO / "configs" / "smoke.yaml")
COMPARED = ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "test_images")


# ---------------------------------------------------------------- shared helpers (imported by the other files)

@dataclass
class Data:
    tree: Path   # image-folder tree
    cache: Path  # --data-dir (decoded .npz cache)
    base: Path   # session folder for shared runs

    @property
    def test_labels(self) -> np.ndarray:
        """Labels of the test split in dataset order (sorted class folders), counted from the files."""
        return np.concatenate([np.full(len(list((self.tree / "test" / c).glob("*.png"))), i)
                               for i, c in enumerate(sorted(synthetic.CLASSES))])


def shared_data(tmp_path_factory) -> Data:
    base = tmp_path_factory.getbasetemp() / "s7-trainer"
    tree, cache = base / "synthetic", base / "cache"
    if not (base / "tree.done").is_file():
        shutil.rmtree(tree, ignore_errors=True)
        synthetic.write_tree(tree, n_train=N_TRAIN, n_test=N_TEST, seed=0)
        (base / "tree.done").write_text("ok")
    return Data(tree, cache, base)


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Data:
    return shared_data(tmp_path_factory)


def flags(data: Data, out: Path, name: str, *extra: str, epochs: int = EPOCHS, wandb: str = "disabled") -> list[str]:
    return ["--config", SMOKE, "--data", str(data.tree), "--data-dir", str(data.cache), "--out", str(out),
            "--name", name, "--epochs", str(epochs), "--workers", "0", "--wandb-mode", wandb, *extra]


def train_in_process(argv: list[str]) -> int:
    """trainer.main.main(argv), leaving the process's SIGTERM handler as it was."""
    old = signal.getsignal(signal.SIGTERM)
    try:
        return trainer_main.main(argv)
    finally:
        signal.signal(signal.SIGTERM, old)


def cached_run(data: Data, name: str, *extra: str, epochs: int = EPOCHS) -> Path:
    """A finished in-process run under the session folder, trained on first use."""
    out = data.base / "runs"
    run = out / name
    if not (run / "report.md").is_file():
        shutil.rmtree(run, ignore_errors=True)
        assert train_in_process(flags(data, out, name, *extra, epochs=epochs)) == 0
    return run


@pytest.fixture(scope="session")
def baseline(data) -> Path:
    """4 epochs, seed 0, one process: the reference run."""
    return cached_run(data, "baseline")


WEAK = ("--train-subset", "96")  # a few seconds' run for checks that need no accuracy


@pytest.fixture(scope="session")
def weak_run(data) -> Path:
    """Two epochs: a model that gets most, but not all, test images right (some misclassified to show)."""
    run = cached_run(data, "weak", epochs=2)
    best = max(r["test_acc"] for r in read_metrics(run))
    assert 100.0 / 3 + 1 < best < 100.0, f"precondition: the short run should be partly right, got {best}"
    return run


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def sub_env(**extra: str) -> dict[str, str]:
    """Environment for subprocess runs: unbuffered, W&B quiet and writing only under the run folder."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WANDB_", "MASTER_", "LOCAL_RANK", "RANK", "WORLD_SIZE"))}
    env.update(PYTHONUNBUFFERED="1", NO_ALBUMENTATIONS_UPDATE="1", WANDB_SILENT="true", WANDB_DISABLE_GIT="true",
               WANDB_DISABLE_CODE="true", PYTHONPATH=str(REPO))
    env.update(extra)
    return env


def wandb_env(base: Path) -> dict[str, str]:
    d = base / "wandb-home"
    return {"WANDB_CONFIG_DIR": str(d / "config"), "WANDB_CACHE_DIR": str(d / "cache"),
            "WANDB_DATA_DIR": str(d / "data"), "WANDB_ARTIFACT_DIR": str(d / "artifacts")}


def assert_same_metrics(a: list[dict], b: list[dict], keys=COMPARED, rel: float = 1e-6) -> None:
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for ra, rb in zip(a, b):
        for k in keys:
            assert ra[k] == pytest.approx(rb[k], rel=rel, abs=1e-9), (ra["epoch"], k, ra[k], rb[k])


def final_lr(cfg: TrainConfig) -> float:
    return cfg.lr / (cfg.div_factor * cfg.final_div_factor)


def results_table(report_md: str) -> dict[str, str]:
    """The 'Results achieved' table of report.md as {row label: value}."""
    section = report_md.split("## Results achieved", 1)[1].split("##", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] and not set(cells[0]) <= {"-"}:
            rows[cells[0]] = cells[1]
    return rows


def recount_accuracy(run: Path, labels: np.ndarray) -> float:
    """Test accuracy recomputed from predictions.npz against labels counted from the image files."""
    p = np.load(run / "predictions.npz")
    np.testing.assert_array_equal(p["labels"], labels)
    return 100.0 * float((p["preds"] == labels).mean())


# ---------------------------------------------------------------- 1. it learns

def test_synthetic_task_is_learned_above_90_percent_in_four_epochs(baseline, data):
    rows = read_metrics(baseline)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["test_acc"] > 90.0 and max(r["test_acc"] for r in rows) > 90.0
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert all(r["test_images"] == 3 * N_TEST for r in rows)
    # the logged accuracy is a real count: the best epoch's saved predictions give the same number
    best = max(rows, key=lambda r: r["test_acc"])
    assert recount_accuracy(baseline, data.test_labels) == pytest.approx(best["test_acc"], abs=1e-9)


# ---------------------------------------------------------------- 3. resume == uninterrupted (one process)

def test_resume_after_interrupt_at_epoch_3_equals_uninterrupted_run(baseline, data, tmp_path, monkeypatch, capsys):
    original = trainer_main.train_one_epoch

    def stop_at_3(*args, epoch, **kwargs):
        if epoch == 3:
            raise KeyboardInterrupt
        return original(*args, epoch=epoch, **kwargs)

    monkeypatch.setattr(trainer_main, "train_one_epoch", stop_at_3)
    assert train_in_process(flags(data, tmp_path, "b")) == 130
    run = tmp_path / "b"
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]
    assert (run / "checkpoints" / "latest").read_text().strip() == "epoch-0002"
    monkeypatch.setattr(trainer_main, "train_one_epoch", original)

    capsys.readouterr()
    assert train_in_process(["--resume", str(run), "--workers", "0", "--wandb-mode", "disabled"]) == 0
    assert "resumed from epoch 2 of 4" in capsys.readouterr().out
    assert_same_metrics(read_metrics(run), read_metrics(baseline))
    # the best weights of both runs are the same tensors
    from safetensors.torch import load_file
    a, b = load_file(str(run / "best/model.safetensors")), load_file(str(baseline / "best/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


# ---------------------------------------------------------------- 5. NaN is caught

def test_nan_loss_stops_with_exit_3_naming_epoch_and_step_and_keeps_best(data, tmp_path, monkeypatch):
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
    meta = json.loads((run / "best/meta.json").read_text())
    assert meta["epoch"] == 1
    from safetensors.torch import load_file
    assert all(torch.isfinite(t.float()).all() for t in load_file(str(run / "best/model.safetensors")).values())
    assert (run / "checkpoints/latest").read_text().strip() == "epoch-0001"


def test_huge_learning_rate_diverges_to_exit_3_without_best_weights(data, tmp_path):
    rc = train_in_process(flags(data, tmp_path, "lr", "--lr", "1e6", "--train-subset", "300", epochs=1))
    assert rc == 3
    run = tmp_path / "lr"
    assert re.search(r"error: non-finite loss at epoch 1, step \d+", (run / "train.log").read_text())
    assert not (run / "best").exists() and not (run / "metrics.jsonl").exists()
    assert (run / "checkpoints/latest").read_text().strip() == "epoch-0000"  # the untrained start stays loadable


# ---------------------------------------------------------------- 9. OneCycle ends at its end (one process)

def test_one_cycle_schedule_ends_at_its_floor_in_one_process(baseline):
    cfg = TrainConfig.load(baseline / "config.yaml")
    rows = read_metrics(baseline)
    assert rows[-1]["lr"] == pytest.approx(final_lr(cfg), rel=1e-6)
    assert all(r["lr"] > final_lr(cfg) * 1.5 for r in rows[:-1])  # earlier epochs are above the floor


# ---------------------------------------------------------------- 10. run folder and report

RUN_FILES = ("config.yaml", "metrics.jsonl", "train.log", "summary.txt", "receptive_field.md", "loss.png",
             "accuracy.png", "misclassified.png", "per_class.md", "report.md", "best/model.safetensors",
             "best/meta.json", "predictions.npz", "augmentation.txt")


def test_run_folder_holds_every_file_and_report_numbers_equal_metrics(weak_run, data):
    for name in RUN_FILES:
        assert (weak_run / name).is_file(), name
    rows = read_metrics(weak_run)
    best = max(rows, key=lambda r: r["test_acc"])
    table = results_table((weak_run / "report.md").read_text())
    assert table["best train accuracy (augmented batches)"] == f"{max(r['train_acc'] for r in rows):.2f}%"
    assert table["best test accuracy"] == f"{best['test_acc']:.2f}% (epoch {best['epoch']})"
    assert table["final test accuracy"] == f"{rows[-1]['test_acc']:.2f}%"
    assert table["epochs"] == str(rows[-1]["epoch"])
    assert recount_accuracy(weak_run, data.test_labels) == pytest.approx(best["test_acc"], abs=1e-9)
    # per_class.md counts agree with the predictions
    p = np.load(weak_run / "predictions.npz")
    per_class = (weak_run / "per_class.md").read_text()
    for i, c in enumerate(sorted(synthetic.CLASSES)):
        mask = p["labels"] == i
        assert f"| {c} | {mask.sum()} | {int((p['preds'][mask] == i).sum())} |" in per_class
    assert len(p["wrong_index"]) == min(int((p["preds"] != p["labels"]).sum()), 25)


def test_s7_report_rebuilds_the_same_report_from_the_run_folder(weak_run, tmp_path, capsys):
    from trainer import cli

    run = copy_run(weak_run, tmp_path / "r")
    before = {n: (run / n).read_text() for n in ("report.md", "per_class.md")}
    for name in ("loss.png", "accuracy.png", "misclassified.png", "report.md", "per_class.md"):
        (run / name).unlink()
    assert cli.main(["report", str(run)]) == 0
    assert "best test accuracy" in capsys.readouterr().out
    for name in ("loss.png", "accuracy.png", "misclassified.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    after = {n: (run / n).read_text() for n in before}
    assert after["per_class.md"] == before["per_class.md"]
    # identical up to the embedded train.log, which gained the "done:" line after the first build
    head = before["report.md"].split("## train.log")[0].replace(f"# Report: {weak_run.name}", "# Report: r")
    assert after["report.md"].split("## train.log")[0] == head
    assert (run / "train.log").read_text().rstrip() in after["report.md"].split("## train.log")[1]


def test_report_of_a_folder_without_metrics_is_a_one_line_error(tmp_path, capsys):
    from trainer import cli

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
    groups = trainer_main.param_groups(model, 5e-4)
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 5e-4 and groups[1]["weight_decay"] == 0.0
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
    opt = trainer_main.make_optimizer(TrainConfig(weight_decay=5e-4), model)
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0]
