"""Optimizer, OneCycle schedule and torch.compile for a run, from its config."""
from __future__ import annotations

import torch
from timm.optim import create_optimizer_v2, param_groups_weight_decay

from trainer.config import RunError, TrainConfig


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Nesterov SGD or AdamW; --momentum is SGD's momentum or AdamW's beta1."""
    # timm's groups: no weight decay on BatchNorm or biases (1-d parameters), frozen ones (--whiten) left out;
    # decayed group first, the order checkpoints written before timm's groups hold, so they still resume
    groups = sorted(param_groups_weight_decay(model, cfg.weight_decay), key=lambda g: -g["weight_decay"])
    if cfg.bn_bias_lr != 1.0:  # a third group, last, so runs at 1 keep the two groups their checkpoints hold
        shifts = [m.bias for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                  and m.bias is not None and m.bias.requires_grad]
        taken = {id(p) for p in shifts}
        groups = [{**g, "params": [p for p in g["params"] if id(p) not in taken]} for g in groups]
        groups.append({"params": shifts, "weight_decay": 0.0, "lr_scale": cfg.bn_bias_lr})
    if cfg.optimizer == "sgd":  # timm's "sgd" is Nesterov
        return create_optimizer_v2(groups, "sgd", lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    return create_optimizer_v2(groups, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(cfg.momentum, 0.999))


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, train_images: int,
                   peak_lr: float | None = None):
    """OneCycle over every step of the run, peaking at `peak_lr` (default --lr) times each parameter group's
    "lr_scale" (--bn-bias-lr); momentum cycles only when the config says so. A run too short for the schedule's
    phases stops here with a one-line reason."""
    if steps_per_epoch < 1:
        raise RunError(f"--batch-size {cfg.batch_size} is larger than the {train_images} training images per "
                       "process: not one full batch to train on; use a smaller --batch-size")
    total = cfg.epochs * steps_per_epoch
    warm = cfg.pct_start * total
    if warm <= 1 or total - warm < 1:
        raise RunError(f"{total} optimizer steps ({cfg.epochs} epochs x {steps_per_epoch}) are too few for OneCycle "
                       f"with --pct-start {cfg.pct_start} ({warm:g} warm-up steps; it needs more than 1 and at least "
                       "one step after); use more --epochs, a smaller --batch-size or another --pct-start")
    peak = cfg.lr if peak_lr is None else peak_lr
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[peak * g.get("lr_scale", 1.0) for g in optimizer.param_groups], total_steps=total,
        pct_start=cfg.pct_start, div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor,
        cycle_momentum=cfg.cycle_momentum, base_momentum=cfg.base_momentum, max_momentum=cfg.max_momentum)


def compile_model(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """The module the training step calls: `model` itself, or torch.compile's wrapper around it (compiled at its
    first call). The wrapper shares the parameters; `model` stays the one that is checkpointed and shipped, so
    state dicts keep their plain keys (no `_orig_mod.`)."""
    if mode == "none":
        return model
    return torch.compile(model, mode=None if mode == "default" else mode)
