"""The precision a run computes in and the Accelerator that runs it: what `accelerate launch` was given is
honoured; otherwise the trainer's --mixed-precision (auto: bf16 where the hardware has it, fp16 on older GPUs,
fp32 on CPUs that would only emulate bf16)."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import psutil
import torch
from accelerate import Accelerator, DataLoaderConfiguration

from trainer.config import RunError, TrainConfig


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX). `mkldnn._is_mkldnn_bf16_supported()` is
    true on any AVX-512 CPU, where oneDNN emulates bf16 and a bf16 step runs slower than fp32."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def pick_precision(requested: str) -> tuple[str, str]:
    """The autocast dtype a run uses and why: `requested` as given, or for auto bf16 on GPUs and CPUs that have it
    in hardware, fp16 on older GPUs, full precision on CPUs that would only emulate bf16."""
    if requested != "auto":
        return requested, f"--mixed-precision {requested}"
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: the GPU has bf16"
        return "fp16", "auto: the GPU lacks bf16"
    if native_cpu_bf16():
        return "bf16", "auto: the CPU has native bf16 (AVX512-BF16/AMX)"
    return "no", "auto: the CPU has no native bf16 (emulated bf16 runs slower than fp32)"


# `accelerate launch` (accelerate 1.16: commands/launch.py `_validate_launch_command`, utils/launch.py
# `prepare_simple_launcher_cmd_env` and the multi-GPU/CPU ones) ALWAYS exports ACCELERATE_MIXED_PRECISION to the
# processes it starts: its --mixed_precision, else the config file's `mixed_precision` key (the --config_file, or
# the default file `accelerate config` writes, not read with --cpu), else "no"; a config file without the key
# loads as None and is exported as "no" too. So "no" in the environment cannot tell "fp32 asked for" from "nothing
# asked": then the launcher's own command line (and config file) is read, from the launching process. A value the
# launcher did not choose (set by hand, or no launcher found) is taken as given.
LAUNCH_PRECISION_ENV = "ACCELERATE_MIXED_PRECISION"


PRECISIONS = ("no", "fp16", "bf16")


def launcher_args(cmdline: list[str]) -> list[str] | None:
    """The arguments after `accelerate launch` (or `accelerate-launch`, `python -m accelerate.commands.launch`) in
    a process's command line; None when that process is not this launcher."""
    for i, part in enumerate(cmdline):
        name = Path(part).name
        if name == "accelerate" and cmdline[i + 1:i + 2] == ["launch"]:
            return cmdline[i + 2:]
        if name == "accelerate-launch" or part == "accelerate.commands.launch" and cmdline[i - 1:i] == ["-m"]:
            return cmdline[i + 1:]
    return None


def launcher_precision(args: list[str], cwd: Path) -> tuple[str, str] | None:
    """The precision this `accelerate launch` command line chose and where, as accelerate resolves it (its own
    parser and config loader): --mixed_precision, else the config file's key; None when neither names one."""
    from accelerate.commands.config.config_args import default_config_file, load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    parsed = launch_command_parser().parse_args(args)
    if parsed.mixed_precision:
        return str(parsed.mixed_precision), f"accelerate launch --mixed_precision {parsed.mixed_precision}"
    if parsed.config_file is None and (parsed.cpu or not os.path.isfile(default_config_file)):
        return None
    chosen = load_config_from_file(default_config_file if parsed.config_file is None
                                   else str(cwd / parsed.config_file)).mixed_precision
    where = parsed.config_file or default_config_file
    return None if chosen is None else (str(chosen), f"mixed_precision {chosen} in {where} (accelerate launch)")


def launch_precision() -> tuple[str, str] | None:
    """The precision Accelerate's launch gave this process and where it came from; None when it gave none (not
    launched by `accelerate launch`, or launched with no precision on its command line or in its config file)."""
    value = os.environ.get(LAUNCH_PRECISION_ENV, "").strip().lower()
    if not value:
        return None
    given = (value, f"{LAUNCH_PRECISION_ENV}={value}")
    if value != "no":
        return given
    for proc in psutil.Process().parents():
        try:
            args = launcher_args(proc.cmdline())
            cwd = Path(proc.cwd()) if args is not None else None
        except psutil.Error:  # an ancestor we may not read (another user's): not our launcher
            continue
        if args is not None:
            try:
                return launcher_precision(args, cwd)
            except (OSError, ValueError, SystemExit):  # a launch we cannot re-read: its exported value stands
                return given
    return given


def resolve_precision(requested: str) -> tuple[str, str]:
    """The precision a run uses and why: the one `accelerate launch` was given, else the trainer's own choice
    (`pick_precision`: --mixed-precision, auto by default). An explicit --mixed-precision (flag or recipe) that
    contradicts the launch's is refused, naming both."""
    launched = launch_precision()
    if launched is None:
        return pick_precision(requested)
    value, source = launched
    if value not in PRECISIONS:
        raise RunError(f"{source}: the trainer runs {', '.join(PRECISIONS)}, not {value}")
    if requested not in ("auto", value):
        raise RunError(f"--mixed-precision {requested} (flag or recipe) contradicts {source}; give the same "
                       "precision in both, or drop one")
    return value, source


def device_name(accelerator: Accelerator) -> str:
    """The run's device in the words facts.json, startup.json and the log use: the GPU's name, or "CPU"."""
    return torch.cuda.get_device_name() if accelerator.device.type == "cuda" else "CPU"


def make_accelerator(cfg: TrainConfig, precision: str | None = None) -> Accelerator:
    """An Accelerator that really runs data-parallel on CPUs too (plain Accelerator() under torchrun
    without GPUs would leave every rank alone), with a seedable sampler and unrepeated scheduler steps.
    `precision`: as `resolve_precision` gives it (resolved here when None)."""
    precision = precision or resolve_precision(cfg.mixed_precision)[0]
    if precision == "fp16" and not torch.cuda.is_available():  # Accelerate would silently train in fp32
        raise RunError("--mixed-precision fp16 needs a GPU (Accelerate autocasts to fp16 only there); "
                       "on the CPU use bf16 or no")
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=precision,
        log_with="wandb" if cfg.wandb_mode != "disabled" else None,
        step_scheduler_with_optimizer=False,  # we step OneCycle once per batch ourselves, sized to the shard
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, even_batches=True,
                                                  non_blocking=cfg.non_blocking),
    )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != accelerator.num_processes:
        raise SystemExit(f"error: launched {world} processes but Accelerate runs {accelerator.num_processes} "
                         f"({accelerator.distributed_type}); on CPUs launch with torchrun or --multi_cpu")
    return accelerator


def accelerator_and_precision(cfg: TrainConfig) -> tuple[Accelerator, TrainConfig, str]:
    """The run's Accelerator, its config with the precision that runs in place of `auto` (what config.yaml, W&B
    and the report then show) and why that precision (for the log and W&B)."""
    precision, why = resolve_precision(cfg.mixed_precision)
    accelerator = make_accelerator(cfg, precision)
    return accelerator, dataclasses.replace(cfg, mixed_precision=accelerator.mixed_precision), why
