"""A run's start, before its first epoch: the net built and rule-checked, the run folder claimed, the files
written once (config.yaml, facts.json and, for people, rules.md, summary.txt, receptive_field.md,
augmentation.txt) and the header lines of train.log."""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

import models
from models.receptive_field import format_rf_table, receptive_field
from models.rules import check_model, format_rules, required_transitions, summary_text
from trainer import runfolder
from trainer.augment import describe_pipeline
from trainer.checkpoint import POINTER
from trainer.config import RunError, TrainConfig
from trainer.dataset import CifarData
from trainer.precision import device_name
from trainer.startup import cpu_epoch_estimate
from trainer.text import counted


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


def create_run_folder(run_dir: Path, cfg: TrainConfig) -> None:
    """The run folder with its config.yaml, written atomically: from here on a launch cut short leaves a folder
    that --resume continues (see `stopped_in_startup`). A cut between the two removes the folder it just made, so
    no half-made folder blocks the next launch's --name."""
    try:
        run_dir.mkdir(parents=True)
    except FileExistsError:  # another launch took the name since claim_run_dir looked
        raise RunError(f"{run_dir} already exists; pick another --name, or continue that run with "
                       f"--resume {run_dir}") from None
    try:
        runfolder.write_atomic(run_dir / runfolder.CONFIG, cfg.to_yaml())
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise


def stopped_in_startup(run_dir: Path) -> bool:
    """A run folder with its config.yaml but neither a checkpoint nor an epoch's row: its launch stopped during the
    start-up (interrupted, or W&B failed to start) before epoch 0's checkpoint. --resume starts it again from epoch
    0 with its saved config; a folder that has rows but lost its checkpoints stays a "no checkpoint" error."""
    metrics = run_dir / runfolder.METRICS
    return ((run_dir / runfolder.CONFIG).is_file()
            and not (run_dir / runfolder.CHECKPOINTS_DIR / POINTER).is_file()
            and not (metrics.is_file() and metrics.read_text().strip()))


def data_identity(data: CifarData) -> dict[str, list]:
    """What a checkpoint records of the data (class names, images per class in each split), so a resume given
    another --data can tell the same data moved from other data."""
    n = len(data.classes)
    return {"classes": list(data.classes), "train": np.bincount(data.train_y, minlength=n).tolist(),
            "test": np.bincount(data.test_y, minlength=n).tolist()}


def check_same_data(saved: dict[str, list] | None, now: dict[str, list], data: str | None) -> None:
    """Refuse to resume on data other than the run's; checkpoints from before the record (None) pass."""
    if saved is None or saved == now:
        return
    if saved["classes"] != now["classes"]:
        what = f"classes {', '.join(now['classes'])}; the run's: {', '.join(saved['classes'])}"
    else:
        what = (f"images per class {now['train']} train, {now['test']} test; "
                f"the run's: {saved['train']}, {saved['test']}")
    given = data if data is not None else "unset (torchvision's CIFAR-10)"
    raise RunError(f"--data {given}: not the data this run trained on ({what}); give --data where the run's data is")


def build_model(cfg: TrainConfig, num_classes: int) -> tuple[torch.nn.Module, list]:
    """The net with the run's BatchNorm settings, and its rule check; a net that breaks a rule is refused unless
    --allow-rule-violations."""
    model = timm.create_model(cfg.model, num_classes=num_classes)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = cfg.bn_momentum
            if cfg.bn_frozen_scales and m.weight is not None:
                m.weight.requires_grad_(False)  # before the optimizer: no update and no weight-decay group
    if cfg.identity_init:
        identity_init(model)
    rules = check_model(model, num_classes=num_classes, transitions=required_transitions(cfg.model))
    failed = failed_rules(rules)
    if failed and not cfg.allow_rule_violations:
        raise RunError(f"--model {cfg.model} breaks the rules ({', '.join(failed)}; see `s7 check {cfg.model}`); "
                       "train it anyway with --allow-rule-violations")
    return model, rules


def identity_init(model: torch.nn.Module) -> int:
    """Every conv but the classifier as the identity (dirac): a full conv on its first min(out, in) filters, the
    others left as drawn; a depthwise conv on all. A fast-training trick: each block starts close to passing its
    input on. Returns how many convs were set; grouped convs that are neither are left as they are."""
    head, count = model.get_classifier(), 0
    with torch.no_grad():
        for m in model.modules():
            if not isinstance(m, torch.nn.Conv2d) or m is head:
                continue
            if m.groups == 1:
                torch.nn.init.dirac_(m.weight[:min(m.out_channels, m.in_channels)])
            elif m.groups == m.in_channels == m.out_channels:
                torch.nn.init.dirac_(m.weight, groups=m.groups)
            else:
                continue
            count += 1
    return count


def failed_rules(rules: list) -> list[str]:
    return [r.name for r in rules if not r.passed]


def rules_verdict(rules: list) -> str:
    """"ALL PASS" or "FAIL: a, b": the last line of rules.md and the header's."""
    failed = failed_rules(rules)
    return "ALL PASS" if not failed else "FAIL: " + ", ".join(failed)


def write_run_files(run_dir: Path, cfg: TrainConfig, model: torch.nn.Module, rules: list, rf_rows: list,
                    transform, accelerator: Accelerator) -> None:
    """facts.json (the numbers tools read), and for people the rules, the torchinfo summary, the RF table and the
    augmentation pipeline: once per run, beside the config.yaml `create_run_folder` wrote."""
    runfolder.write_facts(run_dir, runfolder.facts(
        cfg.model, sum(p.numel() for p in model.parameters()), rf_rows[-1].rf if rf_rows else receptive_field(model),
        [dataclasses.asdict(r) for r in rules], device_name(accelerator), str(accelerator.mixed_precision),
        accelerator.num_processes))
    (run_dir / runfolder.RULES_MD).write_text(f"{format_rules(rules)}\n\n{rules_verdict(rules)}\n")
    (run_dir / runfolder.SUMMARY).write_text(summary_text(model) + "\n")
    (run_dir / runfolder.RF_MD).write_text(format_rf_table(rf_rows) + "\n")
    notes = (f"\nAffine, CoarseDropout and ToGray: p rises linearly from 0 in epoch 1 to the p above in epoch "
             f"{cfg.aug_ramp_epochs + 1} (--aug-ramp-epochs {cfg.aug_ramp_epochs})" if cfg.aug_ramp_epochs else "")
    if cfg.alternate_flip:
        notes += ("\nHorizontalFlip alternates (--alternate-flip): each image flipped in every other epoch, half of "
                 "them from epoch 1")
    (run_dir / runfolder.AUGMENTATION).write_text(describe_pipeline(transform) + notes + "\n")


def loader_words(workers: int) -> str:
    """How the training batches are augmented, for the speed line."""
    return (f"{counted(workers, 'loader worker')} per process" if workers
            else "augmentation in the training process (no loader workers)")


def log_header(job: Any, n_params: int, rf: int, rules: list) -> None:
    """The run's first lines: net, rules, devices and precision, speed options, lr, data, run folder."""
    cfg, acc, inp, log = job.cfg, job.accelerator, job.inp, job.log
    cuda = acc.device.type == "cuda"
    log.line(f"s7 train: {cfg.model} ({n_params:,} parameters, RF {rf}) recipe {cfg.recipe or 'custom'}")
    log.line(f"rule check (as `s7 check {cfg.model}`):\n{format_rules(rules)}")
    log.line(f"rules: {rules_verdict(rules)}{' (--allow-rule-violations)' if failed_rules(rules) else ''}")
    log.line(f"devices: {acc.num_processes} x {device_name(acc)}, "
             f"{acc.distributed_type}, precision {acc.mixed_precision} ({job.precision_reason})")
    log.line(f"speed: compile {cfg.compile}, channels_last {cfg.channels_last}, cudnn.benchmark "
             f"{torch.backends.cudnn.benchmark}, non_blocking {cfg.non_blocking}, {torch.get_num_threads()} torch "
             f"threads, {loader_words(inp.train_loader.num_workers)}; host memory: "
             f"{job.allocator or 'allocator left as it is'}")
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
    if job.restarted:
        log.line(f"restarted from epoch 0 of {cfg.epochs} with the saved config: the last launch stopped in its "
                 "start-up, before epoch 0's checkpoint")
    elif cfg.resume:
        log.line(f"resumed from epoch {job.start_epoch - 1} of {cfg.epochs}")
