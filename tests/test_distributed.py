"""Two CPU processes under torchrun (gloo): data-parallel for real, every test image counted once despite
padding, one log / metrics row / W&B run, the OneCycle schedule sized to the shard, and a resumed run equal
to an uninterrupted one. Plus the WORLD_SIZE guard in make_accelerator."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from accelerate import Accelerator

import wandb_records
from runs import (COMPARED, EPOCHS, N_TEST, REPO, TORCHRUN, assert_same_metrics, final_lr, flags, recount_accuracy,
                  sub_env, wandb_env)
from trainer.config import TrainConfig
from trainer.precision import make_accelerator
from trainer.runfolder import read_metrics

# Two ranks of 32 images make a batch of 64: twice the one-process smoke recipe's learning rate (linear scaling),
# without which this short run's BatchNorm statistics lag the weights and the test split sits at chance.
DDP_LR = ("--lr", "0.2")

STOP_AT_EPOCH_3 = """
import sys
sys.path.insert(0, {repo!r})
import trainer.main as m

original = m.train_one_epoch

def stop(*args, epoch, **kwargs):
    if epoch == 3:  # every rank stops at the same point, before any collective of epoch 3
        raise KeyboardInterrupt
    return original(*args, epoch=epoch, **kwargs)

m.train_one_epoch = stop
sys.exit(m.main(sys.argv[1:]))
"""


def torchrun(script: str, argv: list[str], base: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", script, *argv]
    return subprocess.run(cmd, cwd=REPO, env=sub_env(OMP_NUM_THREADS="1", **wandb_env(base)),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ddp_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    p = torchrun("trainer/main.py", flags(data, out, "ddp", *DDP_LR, wandb="offline"), data.base)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return out / "ddp"


def test_two_process_run_is_multi_cpu_with_world_size_2_and_logs_once(ddp_run):
    log = (ddp_run / "train.log").read_text()
    assert log.count("s7 train:") == 1
    devices = [line for line in log.splitlines() if "devices:" in line]
    assert len(devices) == 1 and "devices: 2 x CPU, DistributedType.MULTI_CPU" in devices[0]
    for epoch in range(1, EPOCHS + 1):
        assert log.count(f"epoch {epoch:3d}/{EPOCHS} ") == 1
    assert log.count("done: final test accuracy") == 1
    lines = (ddp_run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == EPOCHS  # raw lines: no second rank writing its own rows
    assert [r["epoch"] for r in read_metrics(ddp_run)] == list(range(1, EPOCHS + 1))


def test_two_processes_count_every_test_image_exactly_once(ddp_run, data):
    n = 3 * N_TEST
    assert n % 2 == 1  # precondition: the two shards are uneven, so the last batch is padded
    rows = read_metrics(ddp_run)
    assert all(r["test_images"] == n for r in rows)
    # the final epoch's predictions are the test split in order, padding dropped, and recount to its accuracy
    assert recount_accuracy(ddp_run, data.test_labels) == pytest.approx(rows[-1]["test_acc"], abs=1e-9)
    assert rows[-1]["test_acc"] > 90.0  # data-parallel training learns the task too


def test_two_process_run_has_one_wandb_run_with_every_epoch(ddp_run):
    assert len(list((ddp_run / "wandb").glob("*run-*"))) == 1
    recs = wandb_records.records(wandb_records.run_file(ddp_run))
    history = [h for h in wandb_records.history(recs) if "test/acc" in h]  # epoch rows (per-step rows hold step/*)
    rows = read_metrics(ddp_run)
    assert [h["epoch"] for h in history] == [r["epoch"] for r in rows]
    for row, h in zip(rows, history):
        assert h["test/acc"] == pytest.approx(row["test_acc"]) and h["test/images"] == row["test_images"]
    summary = wandb_records.summary(recs)
    assert summary["final_test_acc"] == pytest.approx(rows[-1]["test_acc"])
    assert summary["final_test_acc_tta"] == pytest.approx(rows[-1]["test_acc_tta"])


def test_one_cycle_schedule_ends_at_its_floor_with_two_processes(ddp_run):
    cfg = TrainConfig.load(ddp_run / "config.yaml")
    rows = read_metrics(ddp_run)
    assert rows[-1]["lr"] == pytest.approx(final_lr(cfg), rel=1e-6)
    # steps per epoch are the shard's: 600 images / 2 ranks / batch 32 = 9; the checkpoint agrees
    import torch
    sched = torch.load(next((ddp_run / "checkpoints").glob("epoch-*")) / "scheduler.bin", weights_only=True)
    assert sched["total_steps"] == EPOCHS * (600 // 2 // 32) == sched["last_epoch"]


def test_two_process_resume_equals_uninterrupted_two_process_run(ddp_run, data, tmp_path):
    script = tmp_path / "stop_at_3.py"
    script.write_text(STOP_AT_EPOCH_3.format(repo=str(REPO)))
    p = torchrun(str(script), flags(data, tmp_path, "ddp-b", *DDP_LR), data.base)
    run = tmp_path / "ddp-b"
    assert p.returncode != 0  # ranks exit 130
    assert "interrupted (SIGINT) during epoch 3" in p.stdout
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]
    ckpt = run / "checkpoints" / (run / "checkpoints/latest").read_text().strip()
    assert ckpt.name == "epoch-0002"
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()

    p = torchrun("trainer/main.py", ["--resume", str(run), "--workers", "0", "--wandb-mode", "disabled"], data.base)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "resumed from epoch 2 of 4" in p.stdout
    assert_same_metrics(read_metrics(run), read_metrics(ddp_run), keys=COMPARED)


# ---------------------------------------------------------------- the WORLD_SIZE guard

def test_world_size_that_disagrees_with_accelerate_is_a_clear_error(monkeypatch):
    """Launched as 2 processes while Accelerate runs 1 (e.g. a plain Accelerator() under torchrun on CPUs)."""
    Accelerator(cpu=True)  # this process's Accelerate state: one process, not distributed
    cfg = TrainConfig(wandb_mode="disabled", mixed_precision="no")  # as the state above
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert make_accelerator(cfg).num_processes == 1  # agreeing: fine
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match=r"launched 2 processes but Accelerate runs 1 \(DistributedType.NO\)"):
        make_accelerator(cfg)
