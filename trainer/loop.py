"""One training epoch and one evaluation pass, both distributed through Accelerate."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from trainer.augment import normalize


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss."""


@dataclass
class EpochResult:
    loss: float
    accuracy: float  # percent
    images: int
    seconds: float
    data_seconds: float = 0.0  # time spent waiting for the loader (train only)
    lr: float = float("nan")  # learning rate of the epoch's last optimizer step (train only)


@dataclass
class EvalResult:
    loss: float
    accuracy: float  # percent
    images: int
    seconds: float
    predictions: torch.Tensor  # every test image exactly once, in dataset order (main process)
    labels: torch.Tensor
    probabilities: torch.Tensor


def _prepare_batch(x: torch.Tensor, mean, std, channels_last: bool) -> torch.Tensor:
    x = normalize(x, mean, std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_one_epoch(accelerator, model: nn.Module, loader, optimizer, scheduler, criterion, mean, std, *,
                    epoch: int, channels_last: bool = True, ema=None, progress: bool = False,
                    nan_check_every: int = 50) -> EpochResult:
    """Train over the sharded loader; loss/accuracy are summed over all processes' augmented batches."""
    model.train()
    start = time.perf_counter()
    totals = torch.zeros(3, device=accelerator.device, dtype=torch.float64)  # loss sum, correct, count
    first_bad = torch.full((), -1, device=accelerator.device, dtype=torch.long)
    step_t = torch.zeros((), device=accelerator.device, dtype=torch.long)  # the step, counted on the device
    bar = tqdm(loader, desc=f"epoch {epoch} train", leave=False, disable=not progress, dynamic_ncols=True)
    lr = optimizer.param_groups[0]["lr"]
    data_seconds, fetch_start = 0.0, time.perf_counter()
    for step, (x, y) in enumerate(bar):
        data_seconds += time.perf_counter() - fetch_start
        x = _prepare_batch(x, mean, std, channels_last)
        with accelerator.autocast():
            logits = model(x)
            loss = criterion(logits, y)
        accelerator.backward(loss)
        lr = optimizer.param_groups[0]["lr"]  # the rate this step uses (scheduler.step() moves past it)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update_parameters(accelerator.unwrap_model(model))
        detached = loss.detach().float()
        # Track the first bad step on the device: no host sync and no host-to-device copy per step.
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(detached), step_t, first_bad)
        step_t += 1
        totals[0] += detached.double() * y.numel()
        totals[1] += (logits.detach().argmax(1) == y).sum()
        totals[2] += y.numel()
        if (step + 1) % nan_check_every == 0 or step + 1 == len(loader):
            bad_step = int(accelerator.reduce(first_bad.clone(), "max"))  # any rank's bad step
            if bad_step >= 0:
                raise NonFiniteLoss(f"non-finite loss at epoch {epoch}, step {bad_step} "
                                    f"(lr {scheduler.get_last_lr()[0]:.4g}); training stopped, best checkpoint kept")
        fetch_start = time.perf_counter()
    totals = accelerator.reduce(totals, "sum")
    loss_sum, correct, count = totals.tolist()
    return EpochResult(loss_sum / max(count, 1), 100.0 * correct / max(count, 1), int(count),
                       time.perf_counter() - start, data_seconds, lr)


def tta_logits(model: nn.Module, x: torch.Tensor, tta_flip: bool) -> torch.Tensor:
    """Logits of a normalised batch; with flip TTA, the mean of the image's and its mirror's."""
    logits = model(x)
    return (logits + model(x.flip(3))) / 2 if tta_flip else logits


@torch.no_grad()
def validate(accelerator, model: nn.Module, loader, mean, std, *, channels_last: bool = True,
             tta_flip: bool = False, progress: bool = False) -> EvalResult:
    """Plain cross-entropy and accuracy on the whole test split; `gather_for_metrics` counts each image once."""
    model.eval()
    start = time.perf_counter()
    preds, labels, probs, losses = [], [], [], []
    for x, y in tqdm(loader, desc="test", leave=False, disable=not progress, dynamic_ncols=True):
        x = _prepare_batch(x, mean, std, channels_last)
        with accelerator.autocast():
            logits = tta_logits(model, x, tta_flip).float()
        loss = nn.functional.cross_entropy(logits, y, reduction="none")
        logits, y, loss = accelerator.gather_for_metrics((logits, y, loss))
        p = logits.softmax(1)
        preds.append(p.argmax(1).cpu())
        probs.append(p.max(1).values.cpu())
        labels.append(y.cpu())
        losses.append(loss.cpu())
    pred, lab, prob, loss = (torch.cat(t) for t in (preds, labels, probs, losses))
    correct = (pred == lab).sum().item()
    return EvalResult(loss.mean().item(), 100.0 * correct / len(lab), len(lab), time.perf_counter() - start,
                      pred, lab, prob)
