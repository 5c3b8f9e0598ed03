"""The start-up clock (process start to the end of the first training step, phase by phase, into
RUN/startup.json) and the CPU's epoch estimate, timed on the run's own first steps."""
from __future__ import annotations

import json
import time
from typing import Any

import psutil
import torch

from trainer import runfolder
from trainer.precision import device_name
from trainer.loop import EpochResult
from trainer.text import counted




def process_start() -> float:
    """Wall-clock time this process started (the OS's record): time to accuracy counts from here."""
    return psutil.Process().create_time()


class StartupClock:
    """Wall-clock seconds of each start-up phase, from process start (the OS's record) on: each `mark` books
    the time since the previous one to a phase, so the phases add up to the whole start-up."""

    def __init__(self, origin: float) -> None:
        self.origin, self.last = origin, origin
        self.phases: dict[str, float] = {}

    def mark(self, phase: str, at: float | None = None) -> None:
        now = time.time() if at is None else at
        self.phases[phase] = self.phases.get(phase, 0.0) + now - self.last
        self.last = now


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


ESTIMATE_STEPS = 5  # training steps timed for the CPU estimate, after the first (which pays the warm-up)


def cpu_epoch_estimate(job: Any) -> None:
    """`job`: the run's trainer.main.Job. Log how long an epoch and the rest of the run take on this CPU, from the time of the first training steps
    of this launch (steps 2 to ESTIMATE_STEPS + 1): no probe before training, a clock read per step until then.
    Evaluation is counted as two forward passes per image (flip TTA), a third of a training step's cost each."""
    cfg, acc, inp = job.cfg, job.accelerator, job.inp
    steps = len(inp.train_loader)
    last = min(ESTIMATE_STEPS + 1, steps)
    n_eval = (len(inp.test_x) + (len(inp.val_loader.dataset) if inp.val_loader is not None else 0)) \
        // acc.num_processes
    ends: list[float] = []
    installed = time.perf_counter()

    def after_step(*_) -> None:
        ends.append(time.perf_counter())
        if len(ends) < last:
            return
        handle.remove()
        per_step = (ends[-1] - ends[0]) / (last - 1) if last > 1 else ends[0] - installed
        est = per_step * steps + per_step / cfg.batch_size * 2 / 3 * n_eval
        left = cfg.epochs - job.start_epoch + 1
        job.log.line(f"warning: training on the CPU; one epoch takes about {duration(est)} ({counted(left, 'epoch')} "
                     f"to go: about {duration(est * left)}; timed over the first "
                     f"{last} steps)")

    torch_optimizer = getattr(job.optimizer, "optimizer", job.optimizer)  # inside Accelerate's wrapper
    handle = torch_optimizer.register_step_post_hook(after_step)


def record_startup(job: Any, tr: EpochResult) -> None:
    """`job`: the run's trainer.main.Job. RUN/startup.json and a log line: each start-up phase of this launch (they add up to `seconds`), to the end
    of its first training step. `first_step_excess_seconds` is what the first step took beyond the second: the
    compile with --compile, else the warm-up of kernels (and cuDNN's autotuning)."""
    clock = job.startup
    clock.mark("workers", at=clock.last + tr.first_batch_seconds)  # worker start and the first batch
    clock.mark("first_step", at=clock.last + tr.first_step_seconds)
    excess = (max(tr.first_step_seconds - tr.second_step_seconds, 0.0)
              if tr.second_step_seconds is not None else None)
    cfg, acc = job.cfg, job.accelerator
    out = {"seconds": clock.last - clock.origin, "phases": clock.phases, "first_step_excess_seconds": excess,
           "compile": cfg.compile, "data_from_cache": job.inp.data.from_cache, "resumed": bool(cfg.resume),
           "epoch": job.start_epoch,
           # what the run used, as resolved on this machine
           "device": device_name(acc),
           "processes": acc.num_processes, "precision": acc.mixed_precision, "peak_lr": job.state["peak_lr"],
           "workers": job.inp.train_loader.num_workers, "threads": torch.get_num_threads()}
    if acc.is_main_process:
        runfolder.write_atomic(job.run_dir / runfolder.STARTUP, json.dumps(out, indent=1) + "\n")
    job.log.line(f"start-up: {out['seconds']:.1f} s from process start to the end of the first step ("
                 + ", ".join(f"{k} {v:.2f}" for k, v in clock.phases.items()) + " s)")
    job.startup = None
