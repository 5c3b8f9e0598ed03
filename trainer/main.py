"""Training entry: `accelerate launch trainer/main.py --model s7_dilated` (one or more GPUs, or the CPU),
or plain `python trainer/main.py ...` in one process. Flags: `--help`.

Flow: config -> Accelerator -> data (dataset, validation split, statistics, augmentation, loaders) -> model and
its rule check -> optimizer, OneCycle, EMA, torch.compile -> epochs (train, validate, test, log, checkpoint) ->
report. The start-up, from process start to the end of the first training step, is timed phase by phase into
RUN/startup.json.
"""
from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from timm.utils import ModelEmaV3

from models.receptive_field import receptive_field, rf_table
from trainer import checkpoint, runfolder, tracking
from trainer.config import RunError, TrainConfig, resolve, resume_hint
from trainer.dataset import DataError
from trainer.loader import Inputs, build_inputs
from trainer.loop import EvalResult, NonFiniteLoss, epoch_row, train_one_epoch, validate
from trainer.memory import keep_freed_memory
from trainer.optim import compile_model, make_optimizer, make_scheduler
from trainer.precision import accelerator_and_precision
from trainer.runstart import (build_model, check_model_name, check_same_data, claim_run_dir, create_run_folder,
                              data_identity, log_header, stopped_in_startup, write_run_files)
from trainer.startup import StartupClock, process_start, record_startup
from trainer.tools import report
from trainer.whiten import whiten_first_conv

IMPORTED = time.time()  # the end of the imports phase of the start-up

# size: the run's whole flow, start-up to finish, with its answer to an interrupt in each stage (start-up, epochs,
# report and upload), read top to bottom in one file


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM."""


class StartupInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM before a launch's first epoch, with the run folder it concerns."""

    def __init__(self, why: str, run_dir: Path, processes: int) -> None:
        super().__init__(why)
        self.why, self.run_dir, self.processes = why, run_dir, processes


def _raise_interrupt(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def _signal_name(e: KeyboardInterrupt) -> str:
    return str(e) if isinstance(e, Interrupted) else "SIGINT"  # a bare KeyboardInterrupt: Python's own Ctrl-C


@dataclass
class Job:
    """Everything one run's epochs need, built once by `setup`."""

    cfg: TrainConfig
    accelerator: Accelerator
    run_dir: Path
    log: tracking.RunLog
    inp: Inputs
    model: torch.nn.Module  # as prepared (DDP on several processes): what is checkpointed
    train_model: torch.nn.Module  # what the training step calls: `model`, or its torch.compile wrapper
    optimizer: torch.optim.Optimizer
    scheduler: object
    ema: ModelEmaV3 | None
    criterion: torch.nn.Module
    state: dict
    start_epoch: int
    rows: list[dict]  # metrics.jsonl's rows so far (main process): the selection rule reads these, not the file
    started: float  # this launch's process start (the OS's record): its share of `wall_seconds` counts from there
    startup: StartupClock | None = None  # until the first training step of this launch is timed
    restarted: bool = False  # a --resume of a run whose first launch stopped in its start-up: begun again at epoch 0
    precision_reason: str = ""  # why the run computes in cfg.mixed_precision (resolve_precision)
    allocator: str = ""  # what trainer.memory did to the host allocator, for train.log

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are validated, selected and shipped: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.accelerator.unwrap_model(self.model)


def prepare(cfg: TrainConfig, accelerator: Accelerator, model: torch.nn.Module, inp: Inputs) -> tuple:
    """Model, optimizer, loaders and OneCycle through `accelerator.prepare`, and the EMA copy: returns the
    prepared model, optimizer, scheduler, EMA (or None) and the peak lr; `inp`'s loaders are replaced."""
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model)
    model, optimizer, inp.train_loader, inp.test_loader = accelerator.prepare(model, optimizer, inp.train_loader,
                                                                              inp.test_loader)
    if inp.val_loader is not None:
        inp.val_loader = accelerator.prepare(inp.val_loader)
    peak_lr = cfg.peak_lr(accelerator.num_processes)
    scheduler = accelerator.prepare(make_scheduler(cfg, optimizer, len(inp.train_loader), len(inp.train_ds),
                                                   peak_lr))
    ema = (ModelEmaV3(accelerator.unwrap_model(model), decay=cfg.ema_decay, use_warmup=cfg.ema_warmup)
           if cfg.ema_decay > 0 else None)
    return model, optimizer, scheduler, ema, peak_lr


def setup(cfg: TrainConfig) -> Job:
    """Accelerator, run folder, data, model (rule-checked), optimizer, schedule, EMA, compile, and the resumed
    state; each phase timed on the start-up clock. An interrupt after the run folder is named comes out as
    StartupInterrupted, naming it."""
    clock = StartupClock(process_start())
    clock.mark("imports", at=IMPORTED)  # the interpreter and the imports
    clock.mark("config")  # reading the flags and the recipe (in process, also whatever ran there before)
    check_model_name(cfg.model)
    allocator = keep_freed_memory() if cfg.keep_freed_memory else "allocator left as it is (--keep-freed-memory false)"
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    accelerator, cfg, precision_reason = accelerator_and_precision(cfg)
    run_dir = claim_run_dir(cfg, accelerator)
    try:
        return build_job(cfg, accelerator, run_dir, clock, precision_reason, allocator)
    except KeyboardInterrupt as e:
        raise StartupInterrupted(_signal_name(e), run_dir, accelerator.num_processes) from None


def build_job(cfg: TrainConfig, accelerator: Accelerator, run_dir: Path, clock: StartupClock,
              precision_reason: str, allocator: str) -> Job:
    """`setup` once the run folder is named: the folder appears (with its config.yaml) only once data and model
    are ready, and a launch cut short before epoch 0's checkpoint leaves a folder that --resume starts again."""
    restart = bool(cfg.resume) and stopped_in_startup(run_dir)  # before this launch writes anything
    set_seed(cfg.seed)
    clock.mark("accelerator")
    inp = build_inputs(cfg, accelerator, clock)
    identity = data_identity(inp.data)
    resume_from = checkpoint.resume_checkpoint(run_dir) if cfg.resume and not restart else None
    if resume_from:  # before anything else can refuse: the data first
        check_same_data(checkpoint.read_state(resume_from[0]).get("data"), identity, cfg.data)
    model, rules = build_model(cfg, len(inp.data.classes))
    if cfg.whiten:  # before prepare and the optimizer: the frozen filters get no gradient and no weight decay
        whiten_first_conv(model, inp.train_ds.images, inp.mean, inp.std, seed=cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    rf_rows = rf_table(model)  # once: the header's RF and receptive_field.md
    rf = rf_rows[-1].rf if rf_rows else receptive_field(model)
    clock.mark("model")
    model, optimizer, scheduler, ema, peak_lr = prepare(cfg, accelerator, model, inp)
    train_model = compile_model(model, cfg.compile)
    if accelerator.is_main_process and not cfg.resume:
        create_run_folder(run_dir, cfg)  # the folder appears only now, with its config.yaml
    log = tracking.RunLog(run_dir, enabled=accelerator.is_main_process)
    clock.mark("prepare")

    state, rows = {"model": cfg.model, "elapsed_before": 0.0}, []
    if resume_from:
        ckpt, damaged = resume_from
        for line in damaged:
            log.line(f"warning: {line}")
        state = checkpoint.load_checkpoint(accelerator, ckpt, cfg.model, ema)
        if accelerator.is_main_process:
            rows = runfolder.truncate_metrics(run_dir, state["epoch"])
    elif accelerator.is_main_process:
        write_run_files(run_dir, cfg, accelerator.unwrap_model(model), rules, rf_rows, inp.transform, accelerator)
    state.update(peak_lr=peak_lr, global_batch_size=cfg.batch_size * accelerator.num_processes, data=identity)
    rule_summary = {r.name: "PASS" if r.passed else "FAIL" for r in rules}
    tracking.init_wandb(accelerator, cfg, run_dir, run_dir.name,
                        {"parameters": n_params, "receptive_field": rf, "rules": rule_summary,
                         "peak_lr": peak_lr, "global_batch_size": state["global_batch_size"],
                         "data_source": inp.data.source, "data_mean": [float(v) for v in inp.mean],
                         "data_std": [float(v) for v in inp.std], "precision_reason": precision_reason})
    clock.mark("run_files")

    job = Job(cfg, accelerator, run_dir, log, inp, model, train_model, optimizer, scheduler, ema,
              torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), state,
              start_epoch=state.get("epoch", 0) + 1, rows=rows,
              started=clock.origin, startup=clock, precision_reason=precision_reason, allocator=allocator,
              restarted=restart)
    log_header(job, n_params, rf, rules)
    if not cfg.resume or restart:
        checkpoint.save_checkpoint(accelerator, run_dir / "checkpoints", 0, state, ema)
    clock.mark("checkpoint")
    return job


def run_epoch(job: Job, epoch: int, progress: bool) -> dict:
    """Train one epoch, validate, test, log the row, ship the weights if selected, checkpoint."""
    cfg, acc, inp = job.cfg, job.accelerator, job.inp
    inp.train_loader.set_epoch(epoch)  # shuffle order from (seed, epoch): a resumed run replays it
    inp.train_ds.set_epoch(epoch)      # augmentation stream from (seed, epoch, rank, worker)
    steps = len(inp.train_loader)
    if job.startup is not None:
        job.startup.mark("loop")
    tr = train_one_epoch(acc, job.train_model, inp.train_loader, job.optimizer, job.scheduler, job.criterion,
                         inp.mean, inp.std, epoch=epoch, channels_last=cfg.channels_last, ema=job.ema,
                         ema_step=(epoch - 1) * steps, ema_every=cfg.ema_every, progress=progress,
                         on_step=tracking.step_logger(acc, cfg, (epoch - 1) * steps, cfg.epochs * steps))
    if job.startup is not None:
        record_startup(job, tr)
    final = epoch == cfg.epochs
    evaluate = dict(channels_last=cfg.channels_last, progress=progress, flip=final or cfg.tta_every_epoch)
    va = validate(acc, job.eval_model, inp.val_loader, inp.mean, inp.std, desc="val", **evaluate) \
        if inp.val_loader is not None else None
    shift = cfg.tta_shift if final else 0  # six passes: the final epoch's headline only
    te = validate(acc, job.eval_model, inp.test_loader, inp.mean, inp.std, tta_shift=shift, **evaluate)
    if not math.isfinite(te.loss):
        raise NonFiniteLoss(f"non-finite test loss after epoch {epoch} (train loss {tr.loss:.4g}); "
                            "training stopped, last checkpoint kept")
    wall = job.state["elapsed_before"] + time.time() - job.started
    row = epoch_row(epoch, tr, te, va, wall)
    job.log.metrics(row)
    job.rows.append(row)
    acc.log(tracking.epoch_values(row))  # namespaced, against `epoch` (tracking.init_wandb)
    val_txt = f"val acc {va.accuracy:6.2f}% | " if va else ""
    shift_txt = f", shift TTA {te.accuracy_shift:6.2f}%" if te.accuracy_shift is not None else ""
    tta_txt = f" (flip TTA {te.accuracy_tta:6.2f}%{shift_txt})" if te.accuracy_tta is not None else ""
    job.log.line(f"epoch {epoch:3d}/{cfg.epochs} train loss {tr.loss:.4f} acc {tr.accuracy:6.2f}% | {val_txt}"
                 f"test loss {te.loss:.4f} acc {te.accuracy:6.2f}%{tta_txt} | "
                 f"lr {tr.lr:.4f} | {row['epoch_seconds']:.1f}s {row['images_per_second']:.0f} img/s | "
                 f"wall {wall:.1f}s")
    if acc.is_main_process and runfolder.selected_row(job.rows)["epoch"] == epoch:
        ship(job, epoch, te)
    checkpoint.save_checkpoint(acc, job.run_dir / "checkpoints", epoch, {**job.state, "elapsed_before": wall},
                               job.ema)
    return row


def ship(job: Job, epoch: int, te: EvalResult) -> None:
    """The selected epoch's weights to RUN/model/ and its test predictions to predictions.npz."""
    cfg, inp = job.cfg, job.inp
    checkpoint.save_weights(job.eval_model, job.run_dir / runfolder.WEIGHTS_DIR, {
        "model": cfg.model, "epoch": epoch, "selected_by": runfolder.selection_rule(job.rows[-1]),
        "test_acc": te.accuracy, "test_acc_tta": te.accuracy_tta, "ema": cfg.ema_decay > 0,
        "classes": inp.data.classes, "mean": list(map(float, inp.mean)), "std": list(map(float, inp.std)),
        "data": inp.data.source})
    runfolder.save_predictions(job.run_dir, te.predictions.numpy(), te.labels.numpy(), te.probabilities.numpy(),
                               inp.test_x, inp.data.classes, cfg.log_misclassified)


def finish(job: Job) -> None:
    """Report, W&B summary and files, a closing line: main process only. report.md marks a finished run
    (`completed`), so a finish cut short (an interrupt, a W&B error) removes it again: --resume then finishes the
    run instead of calling it complete. It is rebuilt from the run's files."""
    try:
        res = report.build_report(job.run_dir)
        final = res["rows"][-1]
        tracking.wandb_files_and_summary(
            job.accelerator, job.cfg, job.run_dir,
            {"final_test_acc": final["test_acc"], "final_test_acc_tta": final["test_acc_tta"],
             "selected_epoch": res["selected_epoch"], "epoch_to_target": res["epoch_to_target"],
             "seconds_to_target": res["seconds_to_target"], "parameters": res["parameters"],
             "receptive_field": res["receptive_field"], "last_epoch": final["epoch"]},
            ["summary.txt", "receptive_field.md", "rules.md", "report.md", "per_class.md", "config.yaml"],
            report.misclassified_for_wandb(job.run_dir))
    except BaseException:
        (job.run_dir / runfolder.REPORT_MD).unlink(missing_ok=True)
        raise
    job.log.line(f"done: final test accuracy {final['test_acc']:.2f}% ({final['test_acc_tta']:.2f}% with flip "
                 f"TTA) after epoch {final['epoch']}; report: {job.run_dir / 'report.md'}")


def completed(cfg: TrainConfig) -> str | None:
    """With --resume: the line saying the run is complete, when its newest intact checkpoint holds the last epoch
    and the report is written; else None (also for a run stopped in its start-up, which has no checkpoint yet).
    Reads a few small files only: no data, model or W&B run."""
    if not cfg.resume or stopped_in_startup(Path(cfg.resume)):
        return None
    run = Path(cfg.resume)
    epoch = checkpoint.read_state(checkpoint.resume_checkpoint(run)[0])["epoch"]
    if epoch < cfg.epochs or not (run / "report.md").is_file():
        return None
    return (f"{run}: the run is complete (epoch {epoch} of {cfg.epochs}); nothing to resume; "
            f"report: {run / 'report.md'}")


def train(cfg: TrainConfig) -> int:
    """Run (or resume) one training job; returns the process exit code. An interrupt in the start-up propagates
    (`main` says how to go on); from the first epoch on it is answered here."""
    # before the start-up: SIGTERM's default would end it without a word; SIGINT too, as a script's background
    # job starts with it ignored
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _raise_interrupt)
    if done := completed(cfg):
        if os.environ.get("RANK", "0") == "0":  # one line from a launch of several processes
            print(done)
        return 0
    job = setup(dataclasses.replace(cfg, wandb_mode=tracking.resolve_wandb_mode(cfg.wandb_mode)))
    try:
        progress = job.accelerator.is_main_process and sys.stderr.isatty()  # tqdm bars on a terminal only
        for epoch in range(job.start_epoch, cfg.epochs + 1):
            run_epoch(job, epoch, progress)
        if job.accelerator.is_main_process:
            finish(job)
    except NonFiniteLoss as e:
        job.log.line(f"error: {e}")
        job.accelerator.end_training()
        return 3
    except KeyboardInterrupt as e:
        return _interrupted(job, _signal_name(e))
    job.accelerator.end_training()
    return 0


def _interrupted(job: Job, why: str) -> int:
    """The last completed epoch is already on disk (written atomically); say which, and how to continue. The
    epoch is read back from the checkpoint: a signal landing after an epoch's checkpoint but before its loop
    iteration ends would otherwise be reported one epoch short."""
    ckpts = job.run_dir / "checkpoints"
    try:
        saved = int(checkpoint.read_state(checkpoint.latest_checkpoint(job.run_dir))["epoch"])
    except (checkpoint.CheckpointError, OSError, ValueError, KeyError):
        saved = 0
    kept = f"the state after epoch {saved} is saved in {ckpts}" if saved else "no epoch has been saved yet"
    during = (f"epoch {saved + 1}" if saved < job.cfg.epochs
              else "the report and W&B upload after the last epoch, which a resume does again")
    job.log.line(f"interrupted ({why}) during {during}; {kept}")
    job.log.line(resume_hint(str(job.run_dir), job.accelerator.num_processes))
    try:
        job.accelerator.end_training()
    except Exception:  # noqa: BLE001 - a tracker that fails to close must not hide the resume hint
        pass
    return 130


def startup_interrupt_line(e: KeyboardInterrupt, cfg: TrainConfig | None) -> str:
    """The one line for an interrupt before a launch's first epoch (`cfg`: None while the flags are read): how to
    go on from what it left."""
    if isinstance(e, StartupInterrupted):
        why, run, processes = e.why, e.run_dir, e.processes
    else:  # before the run folder was named
        why, processes = _signal_name(e), int(os.environ.get("WORLD_SIZE", "1"))
        run = Path(cfg.resume) if cfg is not None and cfg.resume else None
    if run is not None and (run / runfolder.CONFIG).is_file():
        return (f"interrupted ({why}) in the start-up, before this launch trained an epoch; "
                f"{resume_hint(str(run), processes)}")
    return f"interrupted ({why}) in the start-up, before a run folder was made: nothing to resume; launch it again"


def main(argv: list[str] | None = None) -> int:
    """Train as the flags say. Exit code 0 when done (or already complete), 2 with one line on stderr for a usage
    error or a run that cannot start (as argparse's own errors), 3 for a diverged run, 130 when interrupted."""
    cfg = None
    try:
        cfg = resolve(argv)
        return train(cfg)
    except KeyboardInterrupt as e:  # in the start-up: one from the epochs on is answered in `train`
        if os.environ.get("RANK", "0") == "0":
            print(startup_interrupt_line(e, cfg), file=sys.stderr)
        return 130
    except SystemExit as e:
        if not isinstance(e.code, str):  # --help (0), or a code already chosen
            raise
        print(e.code, file=sys.stderr)  # the config's one-line refusals: SystemExit("error: ...")
        return 2
    except (RunError, DataError, checkpoint.CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
