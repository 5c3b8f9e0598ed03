"""Checkpoints: SIGINT/SIGTERM leave a resumable state, a planted pickle is refused without running,
another model's checkpoint is named as such, and RNG states come back exactly as saved."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

import synthetic
from runs import (PYTHON, REPO, assert_same_metrics, copy_run, flags, sub_env, train_in_process,
                  train_until_interrupted, unfinished_copy)
from trainer import checkpoint, tracking
from trainer import main as trainer_main
from trainer.config import TrainConfig, resume_hint
from trainer.optim import make_optimizer
from trainer.runfolder import read_metrics


def run_and_signal(argv: list[str], sig: int, after: str, timeout: float = 240,
                   when: Callable[[], bool] = lambda: True, sigint_ignored: bool = False) -> tuple[int, str]:
    """Run trainer/main.py, send `sig` after the first stdout line starting with `after`, as soon as `when()`;
    with `sigint_ignored` the trainer starts as a background job of a shell without job control does."""
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
    proc = subprocess.Popen([PYTHON, "trainer/main.py", *argv], cwd=REPO, env=sub_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=ignore)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    lines, sent = [], False
    try:
        for line in proc.stdout:
            lines.append(line)
            if not sent and line.startswith(after):
                deadline = time.monotonic() + 60
                while not when() and time.monotonic() < deadline:
                    time.sleep(0.01)
                proc.send_signal(sig)
                sent = True
        rc = proc.wait()
    finally:
        watchdog.cancel()
    out = "".join(lines)
    assert sent, f"never saw {after!r}:\n{out}"
    return rc, out


def saved_epoch(run: Path) -> int:
    """Epoch of the checkpoint `latest` names, checked to be a complete folder."""
    target = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    state = json.loads((target / "state.json").read_text())
    assert target.name == f"epoch-{state['epoch']:04d}"
    return state["epoch"]


# ---------------------------------------------------------------- 4. SIGINT / SIGTERM, then resume

def test_sigint_exits_130_with_resume_hint_and_resume_matches_uninterrupted_run(baseline, data, tmp_path, capsys):
    rc, out = run_and_signal(flags(data, tmp_path, "int"), signal.SIGINT, "epoch   2/4")
    run = tmp_path / "int"
    assert rc == 130, out
    assert "interrupted (SIGINT) during epoch" in out
    assert resume_hint(str(run)) in out
    done = saved_epoch(run)
    assert 1 <= done < 4  # the signal came after epoch 2's line: epoch 1 at least is on disk

    capsys.readouterr()
    assert train_in_process(["--resume", str(run), "--workers", "0", "--wandb-mode", "disabled"]) == 0
    assert f"resumed from epoch {done} of 4" in capsys.readouterr().out
    assert_same_metrics(read_metrics(run), read_metrics(baseline))
    assert (run / "train.log").read_text().count("s7 train:") == 2  # one header per launch, in one log


def test_sigterm_mid_run_exits_130_and_resumes_from_the_last_saved_epoch(data, tmp_path, capsys):
    """SIGTERM once epoch 1 is on disk. The trainer may have finished another short epoch before the signal
    lands (the test process can wait for a core), so the epoch it names is read back, not assumed."""
    run = tmp_path / "term"
    pointer = run / "checkpoints" / "latest"
    rc, out = run_and_signal(flags(data, tmp_path, "term", "--train-subset", "300", epochs=4), signal.SIGTERM,
                             "epoch   1/4", when=lambda: pointer.is_file() and pointer.read_text() == "epoch-0001")
    assert rc == 130, out
    done = saved_epoch(run)
    assert 1 <= done < 4
    assert f"interrupted (SIGTERM) during epoch {done + 1}; the state after epoch {done} is saved" in out
    assert "--resume" in out

    capsys.readouterr()
    assert train_in_process(["--resume", str(run), "--workers", "0", "--wandb-mode", "disabled"]) == 0
    assert f"resumed from epoch {done} of 4" in capsys.readouterr().out
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2, 3, 4]  # no epoch repeated or skipped
    assert saved_epoch(run) == 4


def test_a_signal_right_after_an_epochs_checkpoint_names_that_epoch_as_saved(data, tmp_path, capsys, monkeypatch):
    """The window the SIGTERM test can hit by chance, made certain: the interrupt lands once epoch 1's
    checkpoint is written, before its loop iteration ends."""
    real = checkpoint.save_checkpoint

    def save_then_interrupt(accelerator, ckpt_root, epoch, *args, **kwargs):
        target = real(accelerator, ckpt_root, epoch, *args, **kwargs)
        if epoch == 1:
            raise KeyboardInterrupt
        return target

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_interrupt)
    assert train_in_process(flags(data, tmp_path, "window", "--train-subset", "300", epochs=3)) == 130
    out = capsys.readouterr().out
    assert "interrupted (SIGINT) during epoch 2; the state after epoch 1 is saved" in out
    assert saved_epoch(tmp_path / "window") == 1


def test_resume_of_a_folder_without_checkpoint_is_a_clear_error(baseline, tmp_path, capsys):
    run = copy_run(baseline, tmp_path / "nockpt")
    import shutil
    shutil.rmtree(run / "checkpoints")
    assert train_in_process(["--resume", str(run), "--workers", "0", "--wandb-mode", "disabled"]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err


# ---------------------------------------------------------------- 6. planted pickle

class Payload:
    """Unpickling this runs `touch marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def plant(path: Path, marker: Path, fmt: str) -> None:
    if fmt == "torch":
        torch.save({"state": Payload(marker)}, path)
    else:  # torch's legacy (pre-zip) format: a plain pickle stream
        torch.save({"state": Payload(marker)}, path, _use_new_zipfile_serialization=False)


def test_planted_pickle_would_run_code_if_unpickled_freely(tmp_path):
    """The payload is live: loading it the unsafe way does create the marker (so the refusal tests can fail)."""
    for fmt in ("torch", "legacy"):
        marker = tmp_path / f"pwned-{fmt}"
        plant(tmp_path / f"evil-{fmt}.bin", marker, fmt)
        torch.load(tmp_path / f"evil-{fmt}.bin", weights_only=False)
        assert marker.exists()


@pytest.mark.parametrize("name,fmt", [("optimizer.bin", "torch"), ("optimizer.bin", "legacy"),
                                      ("scheduler.bin", "torch"), ("random_states_0.pkl", "torch")])
def test_resume_refuses_planted_pickle_without_running_it(baseline, tmp_path, capsys, name, fmt):
    run = unfinished_copy(baseline, tmp_path / "evil")
    ckpt = checkpoint.latest_checkpoint(run)
    marker = tmp_path / "pwned"
    plant(ckpt / name, marker, fmt)
    checkpoint.seal(ckpt)  # whoever plants a file can rewrite the manifest too: the loader itself must refuse
    assert train_in_process(["--resume", str(run), "--workers", "0", "--wandb-mode", "disabled"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "refused to unpickle" in err and str(ckpt) in err
    assert not marker.exists()


# ---------------------------------------------------------------- 7. another model's checkpoint

def test_resume_of_another_models_checkpoint_names_both_models(baseline, tmp_path, capsys):
    run = unfinished_copy(baseline, tmp_path / "other")
    state_file = checkpoint.latest_checkpoint(run) / "state.json"
    state = json.loads(state_file.read_text())
    state["model"] = "s7_dilated"  # same tensor shapes as s7: only the recorded name can tell
    state_file.write_text(json.dumps(state))
    checkpoint.seal(state_file.parent)  # a consistent checkpoint of another net, not a damaged one
    assert train_in_process(["--resume", str(run), "--workers", "0", "--wandb-mode", "disabled"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint is for model 's7_dilated', not 's7'" in err


def test_evaluate_with_another_model_name_on_s7_weights_is_a_clear_error(baseline, data, capsys):
    from trainer.tools import cli

    rc = cli.main(["evaluate", str(baseline), "--data", str(data.tree), "--data-dir", str(data.cache),
                   "--model", "s7_dilated"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error:") and "'s7'" in err and "--model s7_dilated" in err and err.count("\n") == 1


def test_evaluate_of_weights_that_do_not_fit_is_a_clear_error(baseline, data, tmp_path, capsys):
    from safetensors.torch import save_file

    from trainer.tools import cli

    state = load_file(str(baseline / "model/model.safetensors"))
    key = next(k for k in state if k.endswith("weight") and state[k].ndim == 4)
    state[key] = torch.zeros(1, 1, 1, 1)
    save_file(state, str(tmp_path / "bad.safetensors"), metadata={"model": "s7"})
    rc = cli.main(["evaluate", str(tmp_path / "bad.safetensors"), "--data", str(data.tree),
                   "--data-dir", str(data.cache)])
    assert rc == 2 and "weights do not fit model 's7'" in capsys.readouterr().err


# ---------------------------------------------------------------- 8. RNG states

def accelerator_like_run(run: Path):
    """An Accelerator holding a model, optimizer and scheduler shaped like the run's (what load_state fills)."""
    import timm

    cfg = TrainConfig.load(run / "config.yaml")
    accelerator = Accelerator(cpu=True)
    model = timm.create_model(cfg.model, num_classes=3)
    optimizer = make_optimizer(cfg, model)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = accelerator.prepare(torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=1000, pct_start=cfg.pct_start, div_factor=cfg.div_factor,
        final_div_factor=cfg.final_div_factor))
    return accelerator, model, optimizer, scheduler


def test_load_checkpoint_restores_weights_and_the_saved_rng_states(baseline):
    ckpt = checkpoint.latest_checkpoint(baseline)
    saved = torch.load(ckpt / "random_states_0.pkl", weights_only=False)  # our own file: a trusted read
    accelerator, model, optimizer, scheduler = accelerator_like_run(baseline)
    torch.manual_seed(987)
    random.seed(987)
    np.random.seed(987)
    assert not torch.equal(torch.get_rng_state(), saved["torch_manual_seed"])  # precondition
    state = checkpoint.load_checkpoint(accelerator, ckpt, "s7")
    assert state["epoch"] == 4 and state["model"] == "s7"
    assert torch.equal(torch.get_rng_state(), saved["torch_manual_seed"])
    assert random.getstate() == saved["random_state"]
    np_state = np.random.get_state()
    assert np_state[0] == saved["numpy_random_seed"][0]
    np.testing.assert_array_equal(np_state[1], saved["numpy_random_seed"][1])
    weights = load_file(str(ckpt / "model.safetensors"))
    current = accelerator.unwrap_model(model).state_dict()
    assert all(torch.equal(current[k], v) for k, v in weights.items())
    assert scheduler.scheduler.last_epoch == 4 * 18  # 4 epochs of 600 // 32 steps, as saved


def test_rng_states_silently_not_restored_are_detected(baseline, monkeypatch):
    """Accelerate swallows a failed RNG restore (INFO log only); load_checkpoint must notice."""
    import accelerate.checkpointing as acc_ckpt

    real_load = acc_ckpt.load

    def load_but_fail_rng(f, *args, **kwargs):
        if "random_states" in str(f):
            raise RuntimeError("simulated: unreadable random states")
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(acc_ckpt, "load", load_but_fail_rng)
    accelerator, *_ = accelerator_like_run(baseline)
    torch.manual_seed(987)
    with pytest.raises(checkpoint.CheckpointError, match="random number generator states were not restored"):
        checkpoint.load_checkpoint(accelerator, checkpoint.latest_checkpoint(baseline), "s7")


def test_incomplete_checkpoint_is_refused(baseline, tmp_path):
    run = copy_run(baseline, tmp_path / "half")
    (checkpoint.latest_checkpoint(run) / "state.json").unlink()
    with pytest.raises(checkpoint.CheckpointError, match="incomplete"):
        checkpoint.latest_checkpoint(run)


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_truncated_checkpoint_is_named_and_the_previous_intact_one_is_resumed(baseline, tmp_path, capsys):
    run = copy_run(baseline, tmp_path / "torn")
    newest = checkpoint.latest_checkpoint(run)
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a disk that filled up mid-write
    capsys.readouterr()
    assert train_in_process(["--resume", str(run), "--workers", "0", "--wandb-mode", "disabled"]) == 0
    out = capsys.readouterr()
    said = [line for line in (out.out + out.err).splitlines() if "is damaged" in line]
    assert len(said) == 1 and str(newest) in said[0], out
    assert f"resumed from epoch {saved_epoch(baseline) - 1} of 4" in out.out
    assert_same_metrics(read_metrics(run), read_metrics(baseline))  # the lost epoch retrained to the same figures


def test_with_every_checkpoint_damaged_resume_stops_in_one_line_and_writes_nothing(baseline, tmp_path, capsys):
    run = copy_run(baseline, tmp_path / "all-torn")
    for ckpt in sorted((run / "checkpoints").glob("epoch-*")):
        weights = ckpt / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    before = _files(run)
    capsys.readouterr()
    assert train_in_process(["--resume", str(run), "--workers", "0", "--wandb-mode", "disabled"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no intact checkpoint" in err and "\n" not in err, err
    assert _files(run) == before


def test_resuming_a_finished_run_says_it_is_complete_and_changes_nothing(baseline, tmp_path, capsys):
    run = copy_run(baseline, tmp_path / "done")
    before = _files(run)
    capsys.readouterr()
    assert train_in_process(["--resume", str(run), "--workers", "0", "--wandb-mode", "disabled"]) == 0
    out = capsys.readouterr().out
    assert "the run is complete (epoch 4 of 4)" in out and "epoch   1/4" not in out
    assert _files(run) == before


def test_make_train_with_a_bad_flag_prints_the_trainers_one_line():
    r = subprocess.run(["make", "-s", "train", "ARGS=--epochs 0"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    lines = [line for line in r.stderr.splitlines() if not line.startswith("make")]
    assert lines == ["error: --epochs must be at least 1, not 0"], r.stderr
    assert "Traceback" not in r.stderr + r.stdout and r.returncode != 0


def test_sigint_interrupts_a_run_started_with_sigint_ignored(data, tmp_path):
    # `python trainer/main.py ... &` from a script: the child inherits SIG_IGN for SIGINT
    rc, out = run_and_signal(flags(data, tmp_path, "bg"), signal.SIGINT, "epoch   1/4", sigint_ignored=True)
    assert rc == 130, out
    assert "interrupted (SIGINT) during epoch" in out


# ---------------------------------------------------------------- 9. a start-up or a finish cut short

def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def _launch(argv: list[str]) -> int:
    """train_in_process, with an interrupt that escapes the trainer (a traceback, no line) failing the test
    instead of stopping the session."""
    try:
        return train_in_process(argv)
    except KeyboardInterrupt:
        pytest.fail("the interrupt escaped trainer/main.py's main()")


def test_an_interrupt_in_the_start_up_says_how_to_resume_and_the_resume_starts_at_epoch_0(data, tmp_path, capsys,
                                                                                         monkeypatch):
    """Ctrl-C once the run folder and its config.yaml exist, before epoch 0's checkpoint (here: as W&B starts):
    one line saying how to go on, and --resume starts the run from epoch 0 with its saved config."""
    run = tmp_path / "early"
    with monkeypatch.context() as m:
        m.setattr(tracking, "init_wandb", _interrupt)
        assert _launch(flags(data, tmp_path, "early", "--train-subset", "300", epochs=2)) == 130
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "interrupted" in line]
    assert said == [err.strip().splitlines()[-1]] and "Traceback" not in err, err
    assert said[0].startswith("interrupted (SIGINT) in the start-up") and resume_hint(str(run)) in said[0]
    assert (run / "config.yaml").is_file() and not (run / "checkpoints").exists()

    resume = ["--resume", str(run), "--workers", "0", "--wandb-mode", "disabled"]
    assert train_until_interrupted(resume, at_epoch=1) == 130  # stopped before any training step
    assert "restarted from epoch 0 of 2 with the saved config" in capsys.readouterr().out
    assert saved_epoch(run) == 0  # from here an ordinary resume


def test_a_folder_with_its_config_but_no_checkpoint_or_row_is_resumable_not_complete_or_an_error(tmp_path):
    """What a start-up cut short leaves: --resume takes it (from epoch 0), with no data or model loaded to say so."""
    from trainer.config import resolve
    from trainer.runstart import stopped_in_startup

    run = tmp_path / "cut"
    run.mkdir()
    TrainConfig(epochs=2, wandb_mode="disabled").save(run / "config.yaml")
    assert stopped_in_startup(run) and trainer_main.completed(resolve(["--resume", str(run)])) is None
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')  # an epoch ran, then its checkpoints were lost
    assert not stopped_in_startup(run)


def test_a_resumed_segment_counts_its_wall_clock_from_its_own_process_start(baseline, tmp_path, monkeypatch):
    """wall_seconds = the time saved with the checkpoint + this launch's time since its process start, its
    start-up included: a process made to look 1000 s old shows up whole in the resumed epoch's figure."""
    run = unfinished_copy(baseline, tmp_path / "segment")
    before = checkpoint.read_state(checkpoint.latest_checkpoint(run))["elapsed_before"]
    monkeypatch.setattr(trainer_main, "process_start", lambda: time.time() - 1000.0)
    assert train_in_process(["--resume", str(run), "--workers", "0", "--wandb-mode", "disabled"]) == 0
    wall = read_metrics(run)[-1]["wall_seconds"]
    assert before + 1000.0 < wall < before + 1000.0 + 300.0


def test_resume_on_other_data_is_refused_in_one_line_and_writes_nothing(baseline, tmp_path, capsys):
    other = synthetic.write_tree(tmp_path / "other", n_train=20, n_test=5, seed=1)  # same classes, fewer images
    run = unfinished_copy(baseline, tmp_path / "moved")
    before = _files(run)
    capsys.readouterr()
    assert train_in_process(["--resume", str(run), "--data", str(other), "--data-dir", str(tmp_path / "cache"),
                             "--workers", "0", "--wandb-mode", "disabled"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --data {other}: not the data this run trained on (images per class")
    assert err.count("\n") == 1 and _files(run) == before


def test_resume_takes_the_runs_data_named_again_from_another_folder(baseline, data, tmp_path, capsys, monkeypatch):
    """The run's config.yaml names its data by a path that may not hold from here: --data names it again."""
    run = unfinished_copy(baseline, tmp_path / "elsewhere")
    done = saved_epoch(run)
    monkeypatch.chdir(data.tree.parent)
    argv = ["--resume", str(run), "--data", data.tree.name, "--data-dir", str(data.cache), "--workers", "0",
            "--wandb-mode", "disabled"]
    assert train_until_interrupted(argv, at_epoch=done + 1) == 130  # past the data check, before a training step
    assert f"resumed from epoch {done} of 4" in capsys.readouterr().out


def test_an_interrupt_in_the_final_upload_leaves_the_run_for_resume_to_finish(baseline, tmp_path, capsys,
                                                                             monkeypatch):
    """The last epoch is saved but the report and W&B upload were cut short: --resume must finish them, not call
    the run complete. (The copy lacks report.md, as a run does between its last epoch and its finish.)"""
    run = copy_run(baseline, tmp_path / "upload")
    (run / "report.md").unlink()
    resume = ["--resume", str(run), "--workers", "0", "--wandb-mode", "disabled"]
    with monkeypatch.context() as m:
        m.setattr(tracking, "wandb_files_and_summary", _interrupt)
        assert _launch(resume) == 130
    out = capsys.readouterr().out
    assert "during the report and W&B upload after the last epoch" in out and resume_hint(str(run)) in out
    assert not (run / "report.md").exists()
    assert train_in_process(resume) == 0
    assert "done: final test accuracy" in capsys.readouterr().out and (run / "report.md").is_file()
