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

import timm
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from timm.utils import ModelEmaV3

import models
from models.receptive_field import format_rf_table, receptive_field, rf_table
from models.rules import check_model, format_rules, required_transitions, summary_text
from trainer import checkpoint, tracking
from trainer.augment import describe_pipeline
from trainer.config import RunError, TrainConfig, resolve, resume_hint
from trainer.dataset import DataError
from trainer.loader import Inputs, build_inputs, resolve_workers
from trainer.loop import EpochResult, EvalResult, NonFiniteLoss, train_one_epoch, validate
from trainer.optim import compile_model, make_optimizer, make_scheduler
from trainer.precision import accelerator_and_precision
from trainer.startup import StartupClock, cpu_epoch_estimate, process_start, record_startup
from trainer.text import counted
from trainer.tools import report
from trainer.whiten import whiten_first_conv

IMPORTED = time.time()  # the end of the imports phase of the start-up


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM."""


def _raise_interrupt(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def check_model_name(name: str) -> None:
    """Fail before any data work when timm does not know the net."""
    if not timm.is_model(name):
        raise RunError(f"--model {name}: not a registered net; the s7 nets are {', '.join(models.MODEL_NAMES)} "
                       "(any timm model name also works, with --allow-rule-violations)")


def run_name(cfg: TrainConfig) -> str:
    return cfg.name or f"{cfg.model}-{cfg.recipe or 'custom'}-{time.strftime('%Y%m%d-%H%M%S')}"


def claim_run_dir(cfg: TrainConfig, accelerator: Accelerator) -> Path:
    """The run folder, named on the main process. A folder that exists is someone's run: refused unless
    --resume names it, so a reused --name never appends to or deletes another run's files."""
    decided = [run_name(cfg), None]
    if accelerator.is_main_process and not cfg.resume:
        path = Path(cfg.out) / decided[0]
        if path.exists():
            decided[1] = (f"{path} already exists; pick another --name, or continue that run with "
                          f"--resume {path}")
    broadcast_object_list(decided)  # every rank writes to, or refuses, the same folder
    if decided[1]:
        raise RunError(decided[1])
    return Path(cfg.out) / decided[0]


def build_model(cfg: TrainConfig, num_classes: int) -> tuple[torch.nn.Module, list]:
    """The net and its rule check; a net that breaks a rule is refused unless --allow-rule-violations."""
    model = timm.create_model(cfg.model, num_classes=num_classes)
    rules = check_model(model, num_classes=num_classes, transitions=required_transitions(cfg.model))
    failed = [r.name for r in rules if not r.passed]
    if failed and not cfg.allow_rule_violations:
        raise RunError(f"--model {cfg.model} breaks the rules ({', '.join(failed)}; see `s7 check {cfg.model}`); "
                       "train it anyway with --allow-rule-violations")
    return model, rules


def write_run_files(run_dir: Path, cfg: TrainConfig, model: torch.nn.Module, rules: list, rf_rows: list,
                    transform) -> None:
    """config.yaml, rules, the torchinfo summary, the RF table and the augmentation pipeline, once per run."""
    cfg.save(run_dir / "config.yaml")
    (run_dir / "rules.md").write_text(report.rules_markdown(rules))
    (run_dir / "summary.txt").write_text(summary_text(model) + "\n")
    (run_dir / "receptive_field.md").write_text(format_rf_table(rf_rows) + "\n")
    (run_dir / "augmentation.txt").write_text(describe_pipeline(transform) + "\n")


def epoch_row(epoch: int, tr: EpochResult, te: EvalResult, va: EvalResult | None, wall: float) -> dict:
    """One metrics.jsonl row (and W&B step). `lr`/`momentum` are the last values used in the epoch."""
    row = {"epoch": epoch, "train_loss": tr.loss, "train_acc": tr.accuracy, "lr": tr.lr, "momentum": tr.momentum,
           "test_loss": te.loss, "test_acc": te.accuracy, "test_loss_tta": te.loss_tta,
           "test_acc_tta": te.accuracy_tta, "test_images": te.images}
    if va is not None:
        row.update(val_loss=va.loss, val_acc=va.accuracy, val_acc_tta=va.accuracy_tta, val_images=va.images,
                   val_seconds=va.seconds)
    row.update(epoch_seconds=tr.seconds + te.seconds + (va.seconds if va else 0.0), train_seconds=tr.seconds,
               data_wait_seconds=tr.data_seconds, test_seconds=te.seconds,
               images_per_second=tr.images / max(tr.seconds, 1e-9), wall_seconds=wall)
    return row


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
    started: float  # wall-clock origin of this process's share of `wall_seconds`
    startup: StartupClock | None = None  # until the first training step of this launch is timed
    precision_reason: str = ""  # why the run computes in cfg.mixed_precision (resolve_precision)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are validated, selected and shipped: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.accelerator.unwrap_model(self.model)


def setup(cfg: TrainConfig) -> Job:
    """Accelerator, run folder, data, model (rule-checked), optimizer, schedule, EMA, compile, and the resumed
    state; each phase timed on the start-up clock."""
    clock = StartupClock(process_start())
    clock.mark("imports", at=IMPORTED)  # the interpreter and the imports
    clock.mark("config")  # reading the flags and the recipe (in process, also whatever ran there before)
    check_model_name(cfg.model)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    accelerator, cfg, precision_reason = accelerator_and_precision(cfg)
    run_dir = claim_run_dir(cfg, accelerator)
    set_seed(cfg.seed)
    clock.mark("accelerator")
    inp = build_inputs(cfg, accelerator, clock)
    model, rules = build_model(cfg, len(inp.data.classes))
    if cfg.whiten:  # before prepare and the optimizer: the frozen filters get no gradient and no weight decay
        whiten_first_conv(model, inp.train_ds.images, inp.mean, inp.std, seed=cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    rf_rows = rf_table(model)  # once: the header's RF and receptive_field.md
    rf = rf_rows[-1].rf if rf_rows else receptive_field(model)
    clock.mark("model")
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model)
    model, optimizer, train_loader, test_loader = accelerator.prepare(model, optimizer, inp.train_loader,
                                                                      inp.test_loader)
    inp.train_loader, inp.test_loader = train_loader, test_loader
    if inp.val_loader is not None:
        inp.val_loader = accelerator.prepare(inp.val_loader)
    peak_lr = cfg.peak_lr(accelerator.num_processes)
    scheduler = accelerator.prepare(make_scheduler(cfg, optimizer, len(train_loader), len(inp.train_ds), peak_lr))
    ema = (ModelEmaV3(accelerator.unwrap_model(model), decay=cfg.ema_decay, use_warmup=cfg.ema_warmup)
           if cfg.ema_decay > 0 else None)
    train_model = compile_model(model, cfg.compile)
    log = tracking.RunLog(run_dir, enabled=accelerator.is_main_process)  # the folder appears only now
    clock.mark("prepare")

    state = {"model": cfg.model, "elapsed_before": 0.0}
    if cfg.resume:
        ckpt, damaged = checkpoint.resume_checkpoint(run_dir)
        for line in damaged:
            log.line(f"warning: {line}")
        state = checkpoint.load_checkpoint(accelerator, ckpt, cfg.model, ema)
        if accelerator.is_main_process:
            tracking.truncate_metrics(run_dir, state["epoch"])
    elif accelerator.is_main_process:
        write_run_files(run_dir, cfg, accelerator.unwrap_model(model), rules, rf_rows, inp.transform)
    state.update(peak_lr=peak_lr, global_batch_size=cfg.batch_size * accelerator.num_processes)
    rule_summary = {r.name: "PASS" if r.passed else "FAIL" for r in rules}
    tracking.init_wandb(accelerator, cfg, run_dir, run_dir.name,
                        {"parameters": n_params, "receptive_field": rf, "rules": rule_summary,
                         "peak_lr": peak_lr, "global_batch_size": state["global_batch_size"],
                         "data_source": inp.data.source, "data_mean": [float(v) for v in inp.mean],
                         "data_std": [float(v) for v in inp.std], "precision_reason": precision_reason})
    clock.mark("run_files")

    job = Job(cfg, accelerator, run_dir, log, inp, model, train_model, optimizer, scheduler, ema,
              torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), state,
              start_epoch=state.get("epoch", 0) + 1, started=time.time() if cfg.resume else process_start(),
              startup=clock, precision_reason=precision_reason)
    _log_header(job, n_params, rf, rules)
    if not cfg.resume:
        checkpoint.save_checkpoint(accelerator, run_dir / "checkpoints", 0, state, ema)
    clock.mark("checkpoint")
    return job


def _log_header(job: Job, n_params: int, rf: int, rules: list) -> None:
    cfg, acc, inp, log = job.cfg, job.accelerator, job.inp, job.log
    cuda = acc.device.type == "cuda"
    failed = [r.name for r in rules if not r.passed]
    log.line(f"s7 train: {cfg.model} ({n_params:,} parameters, RF {rf}) recipe {cfg.recipe or 'custom'}")
    log.line(f"rule check (as `s7 check {cfg.model}`):\n{format_rules(rules)}")
    log.line(f"rules: {'ALL PASS' if not failed else 'FAIL: ' + ', '.join(failed) + ' (--allow-rule-violations)'}")
    log.line(f"devices: {acc.num_processes} x {torch.cuda.get_device_name() if cuda else 'CPU'}, "
             f"{acc.distributed_type}, precision {acc.mixed_precision} ({job.precision_reason})")
    log.line(f"speed: compile {cfg.compile}, channels_last {cfg.channels_last}, cudnn.benchmark "
             f"{torch.backends.cudnn.benchmark}, non_blocking {cfg.non_blocking}, {torch.get_num_threads()} torch "
             f"threads, {counted(resolve_workers(cfg.workers), 'loader worker')} per process")
    log.line(f"lr: peak {job.state['peak_lr']:.6g} for a global batch of {job.state['global_batch_size']} "
             f"({cfg.batch_size} x {acc.num_processes} processes; --lr {cfg.lr:g}, --lr-scaling {cfg.lr_scaling}"
             + (f" from --base-batch-size {cfg.base_batch_size})" if cfg.lr_scaling != "none" else ")"))
    n_val = len(inp.val_loader.dataset) if inp.val_loader is not None else 0
    log.line(f"data: {inp.data.source}: {len(inp.train_ds):,} train / {n_val:,} validation / "
             f"{len(inp.test_x):,} test images, {len(inp.data.classes)} classes")
    log.line(f"run folder: {job.run_dir}  (W&B: {cfg.wandb_mode}); shipped weights: "
             f"{'best validation epoch' if n_val else 'final epoch'}")
    if not cuda and acc.is_main_process:
        cpu_epoch_estimate(job)
    if cfg.resume:
        log.line(f"resumed from epoch {job.start_epoch - 1} of {cfg.epochs}")


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
                         ema_step=(epoch - 1) * steps, progress=progress,
                         on_step=tracking.step_logger(acc, cfg, (epoch - 1) * steps, cfg.epochs * steps))
    if job.startup is not None:
        record_startup(job, tr)
    evaluate = dict(channels_last=cfg.channels_last, progress=progress)
    va = validate(acc, job.eval_model, inp.val_loader, inp.mean, inp.std, desc="val", **evaluate) \
        if inp.val_loader is not None else None
    te = validate(acc, job.eval_model, inp.test_loader, inp.mean, inp.std, **evaluate)
    if not math.isfinite(te.loss):
        raise NonFiniteLoss(f"non-finite test loss after epoch {epoch} (train loss {tr.loss:.4g}); "
                            "training stopped, last checkpoint kept")
    wall = job.state["elapsed_before"] + time.time() - job.started
    row = epoch_row(epoch, tr, te, va, wall)
    job.log.metrics(row)
    acc.log(tracking.epoch_values(row))  # namespaced, against `epoch` (tracking.init_wandb)
    val_txt = f"val acc {va.accuracy:6.2f}% | " if va else ""
    job.log.line(f"epoch {epoch:3d}/{cfg.epochs} train loss {tr.loss:.4f} acc {tr.accuracy:6.2f}% | {val_txt}"
                 f"test loss {te.loss:.4f} acc {te.accuracy:6.2f}% (flip TTA {te.accuracy_tta:6.2f}%) | "
                 f"lr {tr.lr:.4f} | {row['epoch_seconds']:.1f}s {row['images_per_second']:.0f} img/s | "
                 f"wall {wall:.1f}s")
    if acc.is_main_process and report.selected_row(tracking.read_metrics(job.run_dir))["epoch"] == epoch:
        ship(job, epoch, te)
    checkpoint.save_checkpoint(acc, job.run_dir / "checkpoints", epoch, {**job.state, "elapsed_before": wall},
                               job.ema)
    return row


def ship(job: Job, epoch: int, te: EvalResult) -> None:
    """The selected epoch's weights to RUN/model/ and its test predictions to predictions.npz."""
    cfg, inp = job.cfg, job.inp
    checkpoint.save_weights(job.eval_model, job.run_dir / checkpoint.WEIGHTS_DIR, {
        "model": cfg.model, "epoch": epoch,
        "selected_by": "best val_acc" if inp.val_loader is not None else "final epoch",
        "test_acc": te.accuracy, "test_acc_tta": te.accuracy_tta, "ema": cfg.ema_decay > 0,
        "classes": inp.data.classes, "mean": list(map(float, inp.mean)), "std": list(map(float, inp.std)),
        "data": inp.data.source})
    report.save_predictions(job.run_dir, te.predictions.numpy(), te.labels.numpy(), te.probabilities.numpy(),
                            inp.test_x, inp.data.classes, cfg.log_misclassified)


def finish(job: Job) -> None:
    """Report, W&B summary and files, a closing line: main process only."""
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
    job.log.line(f"done: final test accuracy {final['test_acc']:.2f}% ({final['test_acc_tta']:.2f}% with flip "
                 f"TTA) after epoch {final['epoch']}; report: {job.run_dir / 'report.md'}")


def completed(cfg: TrainConfig) -> str | None:
    """With --resume: the line saying the run is complete, when its newest intact checkpoint holds the last epoch
    and the report is written; else None. Reads two small files only: no data, model or W&B run."""
    if not cfg.resume:
        return None
    run = Path(cfg.resume)
    epoch = checkpoint.read_state(checkpoint.resume_checkpoint(run)[0])["epoch"]
    if epoch < cfg.epochs or not (run / "report.md").is_file():
        return None
    return (f"{run}: the run is complete (epoch {epoch} of {cfg.epochs}); nothing to resume; "
            f"report: {run / 'report.md'}")


def train(cfg: TrainConfig) -> int:
    """Run (or resume) one training job; returns the process exit code."""
    done = completed(cfg)
    if done:
        if os.environ.get("RANK", "0") == "0":  # one line from a launch of several processes
            print(done)
        return 0
    job = setup(dataclasses.replace(cfg, wandb_mode=tracking.resolve_wandb_mode(cfg.wandb_mode)))
    signal.signal(signal.SIGTERM, _raise_interrupt)
    progress = job.accelerator.is_main_process and sys.stderr.isatty()  # tqdm bars on a terminal only
    epoch = job.start_epoch - 1
    try:
        for epoch in range(job.start_epoch, cfg.epochs + 1):
            run_epoch(job, epoch, progress)
    except NonFiniteLoss as e:
        job.log.line(f"error: {e}")
        job.accelerator.end_training()
        return 3
    except KeyboardInterrupt as e:
        return _interrupted(job, epoch, str(e) if isinstance(e, Interrupted) else "SIGINT")
    if job.accelerator.is_main_process:
        finish(job)
    job.accelerator.end_training()
    return 0


def _interrupted(job: Job, epoch: int, why: str) -> int:
    """The last completed epoch is already on disk (written atomically); say how to continue."""
    ckpts = job.run_dir / "checkpoints"
    job.log.line(f"interrupted ({why}) during epoch {epoch}; the state after epoch {epoch - 1} is saved in {ckpts}")
    job.log.line(resume_hint(str(job.run_dir), job.accelerator.num_processes))
    try:
        job.accelerator.end_training()
    except Exception:  # noqa: BLE001 - a tracker that fails to close must not hide the resume hint
        pass
    return 130


def main(argv: list[str] | None = None) -> int:
    """Train as the flags say. Exit code 0 when done (or already complete), 2 with one line on stderr for a usage
    error or a run that cannot start (as argparse's own errors), 3 for a diverged run, 130 when interrupted."""
    try:
        return train(resolve(argv))
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
