"""Helpers for the trainer tests: the synthetic image tree, trainer flags, in-process and cached runs, and
independent recounts of what a run wrote. The fixtures built on them live in conftest.py."""
from __future__ import annotations

import os
import shutil
import signal
import sys
from dataclasses import dataclass
from unittest import mock
from pathlib import Path

import numpy as np
import pytest

import synthetic
from trainer import main as trainer_main
from trainer.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TORCHRUN = str(Path(sys.executable).parent / "torchrun")
N_TRAIN, N_TEST = 200, 51  # per class: 600 train, 153 test images (odd, so two ranks pad the last test batch)
EPOCHS = 4
SMOKE = str(REPO / "configs" / "smoke.yaml")
COMPARED = ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "test_images")


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


def train_until_interrupted(argv: list[str], at_epoch: int) -> int:
    """trainer.main.main(argv) in process, with a Ctrl-C (KeyboardInterrupt) as epoch `at_epoch` starts."""
    original = trainer_main.train_one_epoch

    def stop(*args, epoch: int, **kwargs):
        if epoch == at_epoch:
            raise KeyboardInterrupt
        return original(*args, epoch=epoch, **kwargs)

    with mock.patch.object(trainer_main, "train_one_epoch", stop):
        return train_in_process(argv)


# The weak run's flags (conftest.weak_run): two epochs of these leave s7 partly right on the synthetic tree.
WEAK = ("--lr", "0.05", "--train-subset", "256")


def cached_run(data: Data, name: str, *extra: str, epochs: int = EPOCHS) -> Path:
    """A finished in-process run under the session folder, trained on first use."""
    out = data.base / "runs"
    run = out / name
    if not (run / "report.md").is_file():
        shutil.rmtree(run, ignore_errors=True)
        assert train_in_process(flags(data, out, name, *extra, epochs=epochs)) == 0
    return run




def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def unfinished_copy(run: Path, dest: Path) -> Path:
    """A copy of a finished run as if it had stopped one epoch short: `latest` names the checkpoint before the last
    (the older of the two kept), so a resume has an epoch left to train and does not stop as complete."""
    copy = copy_run(run, dest)
    kept = sorted((copy / "checkpoints").glob("epoch-*"))
    assert len(kept) >= 2, f"precondition: {run} keeps two checkpoints"
    (copy / "checkpoints" / "latest").write_text(kept[-2].name)
    return copy


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
            if rb[k] is None:  # not measured in the reference: not measured here either
                assert ra[k] is None, (ra["epoch"], k, ra[k])
            else:
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


