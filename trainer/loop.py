"""One training epoch and one evaluation pass, both distributed through Accelerate, their figures as one
metrics row (`epoch_row`), and `normalize`, the device-side half of the input pipeline (the workers hand over
uint8 images)."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss."""


@dataclass
class EpochResult:
    loss: float  # the training objective (label-smoothed) on augmented batches
    accuracy: float  # percent, on augmented batches while the weights change
    images: int
    seconds: float
    data_seconds: float = 0.0  # time spent waiting for the loader
    lr: float = float("nan")  # learning rate of the epoch's last optimizer step
    momentum: float = float("nan")  # SGD momentum (AdamW beta1) of that step
    first_batch_seconds: float = 0.0  # from the start of the epoch to the first batch (worker start-up)
    first_step_seconds: float = 0.0  # the first step, from its batch to its end (compile, warm-up)
    second_step_seconds: float | None = None  # the second step likewise (None in a one-step epoch)


@dataclass
class EvalResult:
    """Plain, flip-TTA and (with --tta-shift) shift-TTA figures of one pass; tensors hold every image once, in
    dataset order."""

    loss: float  # plain cross-entropy, no label smoothing
    accuracy: float  # percent
    loss_tta: float | None  # flip TTA; None when the pass skipped the mirrors (validate(flip=False))
    accuracy_tta: float | None
    images: int
    seconds: float
    predictions: torch.Tensor  # plain (no TTA) arg-max
    labels: torch.Tensor
    probabilities: torch.Tensor  # plain soft-max probability of the prediction
    loss_shift: float | None = None  # flip and +-N px shift TTA (--tta-shift), None when not measured
    accuracy_shift: float | None = None


def normalize(batch: torch.Tensor, mean_pixels: Sequence[float] | torch.Tensor,
              std_pixels: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """uint8 NCHW batch (any device) -> float32 (x - mean) / std, mean and std in pixel units.
    Pass mean and std as float32 tensors on the batch's device (`pixel_stats`) to copy nothing per batch."""
    mean = torch.as_tensor(mean_pixels, dtype=torch.float32, device=batch.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std_pixels, dtype=torch.float32, device=batch.device).view(1, -1, 1, 1)
    return (batch.float() - mean) / std


def pixel_stats(mean, std, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as float32 tensors on `device`, made once per pass: a host-to-device copy per batch is a
    blocking copy, which on a GPU waits for every queued kernel."""
    return (torch.as_tensor(mean, dtype=torch.float32).to(device), torch.as_tensor(std, dtype=torch.float32).to(device))


def prepare_batch(x: torch.Tensor, mean, std, channels_last: bool) -> torch.Tensor:
    """What the net gets from a uint8 batch: normalised float32, in NHWC memory layout with `channels_last`."""
    x = normalize(x, mean, std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, to time a step (CPU work is done when the call returns)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def current_momentum(optimizer: torch.optim.Optimizer) -> float:
    """SGD's momentum or Adam's beta1 of the first parameter group."""
    group = optimizer.param_groups[0]
    return float(group["momentum"]) if "momentum" in group else float(group["betas"][0])


def _step(accelerator, model: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion, optimizer,
          scheduler) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """One optimizer step; returns the logits, the loss (detached, fp32) and the lr and momentum it used."""
    with accelerator.autocast():
        logits = model(x)
        loss = criterion(logits, y)
    accelerator.backward(loss)
    # the values this step uses (scheduler.step() moves past them)
    lr, momentum = optimizer.param_groups[0]["lr"], current_momentum(optimizer)
    optimizer.step()
    if not accelerator.optimizer_step_was_skipped:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return logits, loss.detach().float(), lr, momentum


def train_one_epoch(accelerator, model: nn.Module, loader, optimizer, scheduler, criterion, mean, std, *,
                    epoch: int, channels_last: bool = True, ema=None, ema_step: int = 0, ema_every: int = 1,
                    progress: bool = False,
                    on_step: Callable[[int, float, float, torch.Tensor], None] | None = None) -> EpochResult:
    """Train over the sharded loader; loss/accuracy are summed over all processes' augmented batches.

    Off the host: loss sum, correct count, image count and the first non-finite step are kept on the device
    and read once, at the end of the epoch (a NaN stops the run there, naming its step); the only other waits
    are after the first two steps, to time them. `model` may be torch.compile's wrapper.
    The scheduler steps only when the optimizer did (Accelerate's guidance: an fp16 step the grad scaler
    skipped must not move the learning rate; that check reads the scaler on the host at every step, as
    GradScaler itself does). `ema` (timm's ModelEmaV3) is updated after every `ema_every`-th step of the run;
    `ema_step` counts the optimizer steps before this epoch, so the updates fall on the same steps after a resume,
    and the warm-up counts updates.
    """
    model.train()
    start = time.perf_counter()
    device = accelerator.device
    mean, std = pixel_stats(mean, std, device)
    totals = torch.zeros(3, device=device, dtype=torch.float64)  # loss sum, correct, count
    first_bad = torch.full((), -1, device=device, dtype=torch.long)
    step_t = torch.zeros((), device=device, dtype=torch.long)  # the step, counted on the device
    bar = tqdm(loader, desc=f"epoch {epoch} train", leave=False, disable=not progress, dynamic_ncols=True)
    lr, momentum = optimizer.param_groups[0]["lr"], current_momentum(optimizer)
    plain = accelerator.unwrap_model(model, keep_torch_compile=False) if ema is not None else None
    data_seconds, fetch_start = 0.0, time.perf_counter()
    timed: list[float] = []  # batch in hand and step done, for the first two steps
    for step, (x, y) in enumerate(bar):
        data_seconds += time.perf_counter() - fetch_start
        if step < 2:
            timed.append(time.perf_counter())
        logits, detached, lr, momentum = _step(accelerator, model, prepare_batch(x, mean, std, channels_last), y,
                                               criterion, optimizer, scheduler)
        if ema is not None and (ema_step + step + 1) % ema_every == 0:
            ema.update(plain, step=(ema_step + step + 1) // ema_every)
        if on_step is not None:  # (step, lr, momentum, loss tensor): reads the loss only on the steps it logs
            on_step(step, lr, momentum, detached)
        # Track the first bad step on the device: no host sync and no host-to-device copy per step.
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(detached), step_t, first_bad)
        step_t += 1
        totals[0] += detached.double() * y.numel()
        totals[1] += (logits.detach().argmax(1) == y).sum()
        totals[2] += y.numel()
        if step < 2:
            synchronize(device)
            timed.append(time.perf_counter())
        fetch_start = time.perf_counter()
    bad_step = int(accelerator.reduce(first_bad, "max"))  # any rank's first bad step
    if bad_step >= 0:
        raise NonFiniteLoss(f"non-finite loss at epoch {epoch}, step {bad_step} "
                            f"(lr {scheduler.get_last_lr()[0]:.4g}); training stopped, last checkpoint kept")
    totals = accelerator.reduce(totals, "sum")
    loss_sum, correct, count = totals.tolist()
    first_batch = timed[0] - start if timed else 0.0
    first_step = timed[1] - timed[0] if len(timed) > 1 else 0.0
    second_step = timed[3] - timed[2] if len(timed) > 3 else None
    return EpochResult(loss_sum / max(count, 1), 100.0 * correct / max(count, 1), int(count),
                       time.perf_counter() - start, data_seconds, lr, momentum, first_batch, first_step,
                       second_step)


def shifted(x: torch.Tensor, pixels: int) -> torch.Tensor:
    """The batch moved by `pixels` down and right (up and left when negative), the border filled by reflection,
    in the batch's memory layout."""
    pad = abs(pixels)
    side_h, side_w = x.shape[-2:]
    start = pad - pixels
    moved = nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")[:, :, start:start + side_h, start:start + side_w]
    return moved.contiguous(memory_format=torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
                            else torch.contiguous_format)


def tta_logits(model: nn.Module, x: torch.Tensor, shift: int = 0) -> tuple[torch.Tensor, ...]:
    """fp32 logits of the batch and of its mirror, and with `shift` > 0 a third tensor: the mean logits of the
    mirror pairs of the batch shifted by +shift and by -shift px. Flip TTA is the mean of the first two;
    shift TTA is half that plus half the third."""
    def pair(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return model(batch).float(), model(batch.flip(3)).float()

    plain, mirrored = pair(x)
    if not shift:
        return plain, mirrored
    moved = [sum(pair(shifted(x, d))) / 2 for d in (shift, -shift)]
    return plain, mirrored, (moved[0] + moved[1]) / 2


def shift_tta(plain: torch.Tensor, mirrored: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
    """Shift-TTA logits from `tta_logits`' three tensors: the flip pair half, the shifted pairs a quarter each."""
    return (plain + mirrored) / 4 + moved / 2


@torch.no_grad()
def validate(accelerator, model: nn.Module, loader, mean, std, *, channels_last: bool = True,
             progress: bool = False, desc: str = "test", flip: bool = True, tta_shift: int = 0) -> EvalResult:
    """Plain cross-entropy and accuracy of a whole split, with `flip` also with flip TTA (the image's and its
    mirror's mean logits: a second pass) and, with `tta_shift`, with shift TTA; `gather_for_metrics` counts each
    image once."""
    if tta_shift and not flip:
        raise ValueError("shift TTA is built on the flip pairs: tta_shift needs flip=True")
    model.eval()
    start = time.perf_counter()
    mean, std = pixel_stats(mean, std, accelerator.device)
    views: list[list[torch.Tensor]] = []
    labels = []
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        x = prepare_batch(x, mean, std, channels_last)
        with accelerator.autocast():
            logits = tta_logits(model, x, tta_shift) if flip else (model(x).float(),)
        *logits, y = accelerator.gather_for_metrics((*logits, y))
        views.append([t.cpu() for t in logits])
        labels.append(y.cpu())
    logits, *others = (torch.cat(v) for v in zip(*views))
    mirrored, moved = (others + [None, None])[:2]
    lab = torch.cat(labels)
    p = logits.softmax(1)
    pred = p.argmax(1)

    def figures(view: torch.Tensor | None) -> tuple[float | None, float | None]:
        if view is None:
            return None, None
        return (nn.functional.cross_entropy(view, lab).item(),
                100.0 * (view.argmax(1) == lab).double().mean().item())

    tta = (logits + mirrored) / 2 if mirrored is not None else None
    (loss, accuracy), (loss_tta, accuracy_tta) = figures(logits), figures(tta)
    loss_shift, accuracy_shift = figures(shift_tta(logits, mirrored, moved) if moved is not None else None)
    return EvalResult(loss=loss, accuracy=accuracy, loss_tta=loss_tta, accuracy_tta=accuracy_tta, images=len(lab),
                      seconds=time.perf_counter() - start, predictions=pred, labels=lab,
                      probabilities=p.max(1).values, loss_shift=loss_shift, accuracy_shift=accuracy_shift)


def epoch_row(epoch: int, tr: EpochResult, te: EvalResult, va: EvalResult | None, wall: float) -> dict:
    """One metrics.jsonl row (and W&B step). `lr`/`momentum` are the last values used in the epoch."""
    row = {"epoch": epoch, "train_loss": tr.loss, "train_acc": tr.accuracy, "lr": tr.lr, "momentum": tr.momentum,
           "test_loss": te.loss, "test_acc": te.accuracy, "test_loss_tta": te.loss_tta,
           "test_acc_tta": te.accuracy_tta, "test_images": te.images}
    if te.accuracy_shift is not None:
        row.update(test_loss_tta_shift=te.loss_shift, test_acc_tta_shift=te.accuracy_shift)
    if va is not None:
        row.update(val_loss=va.loss, val_acc=va.accuracy, val_acc_tta=va.accuracy_tta, val_images=va.images,
                   val_seconds=va.seconds)
    row.update(epoch_seconds=tr.seconds + te.seconds + (va.seconds if va else 0.0), train_seconds=tr.seconds,
               data_wait_seconds=tr.data_seconds, test_seconds=te.seconds,
               images_per_second=tr.images / max(tr.seconds, 1e-9), wall_seconds=wall)
    return row
