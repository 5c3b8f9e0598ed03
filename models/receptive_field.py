"""Receptive field of a fully convolutional net, worked out two independent ways.

Analytic: forward hooks record every conv/pool in execution order; the classic recursion
    n_out = floor((n_in + 2p - k_eff) / s) + 1,  j_out = j_in * s,
    r_out = r_in + (k_eff - 1) * j_in,           start_out = start_in + ((k_eff - 1) / 2 - p) * j_in
with k_eff = d * (k - 1) + 1 for a dilated conv. Along a residual block the longest path (the conv
branch) is walked, which is the one that sets the field.
Empirical: back-propagate from the centre unit of the map that enters global average pooling to the
input and measure how far the nonzero gradient reaches.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode


@dataclass
class RFRow:
    layer: str
    kind: str
    kernel: int
    stride: int
    dilation: int
    padding: int
    n_in: int
    n_out: int
    jump: int
    rf: int
    start: float


def _pair0(v) -> int:
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


def _spatial_layers(model: nn.Module, input_size: int) -> list[tuple[str, nn.Module, int, int]]:
    """(name, module, n_in, n_out) for each conv/pool with a spatial kernel, in forward order."""
    seen: list[tuple[str, nn.Module, int, int]] = []
    names = {m: n for n, m in model.named_modules()}
    kinds = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)

    def hook(mod, inp, out):
        seen.append((names[mod], mod, inp[0].shape[-1], out.shape[-1]))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            p = next(model.parameters())
            model(torch.zeros(1, _in_channels(model), input_size, input_size, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return seen


def _in_channels(model: nn.Module) -> int:
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    return first.in_channels


def rf_table(model: nn.Module, input_size: int = 32) -> list[RFRow]:
    """The per-layer receptive-field table, from the first conv to the map that enters GAP."""
    rows: list[RFRow] = []
    jump, rf, start = 1, 1, 0.5
    for name, mod, n_in, n_out in _spatial_layers(model, input_size):
        k = _pair0(mod.kernel_size)
        s = _pair0(mod.stride) if mod.stride is not None else k
        d = _pair0(getattr(mod, "dilation", 1))
        p = _pair0(mod.padding)
        k_eff = d * (k - 1) + 1
        rf = rf + (k_eff - 1) * jump
        start = start + ((k_eff - 1) / 2 - p) * jump
        jump = jump * s
        kind = type(mod).__name__
        if isinstance(mod, nn.Conv2d) and mod.groups > 1:
            kind += f"(dw, g={mod.groups})"
        rows.append(RFRow(name, kind, k, s, d, p, n_in, n_out, jump, rf, start))
    return rows


def receptive_field(model: nn.Module, input_size: int = 32) -> int:
    """Analytic receptive field of the map entering global average pooling."""
    rows = rf_table(model, input_size)
    return rows[-1].rf if rows else 1


def is_global_pool(name: str, x: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether a torch function call pooled a 4-D map down to one value per channel."""
    if x.dim() != 4 or not isinstance(out, torch.Tensor) or x.shape[-2:] == (1, 1):
        return False
    if name in ("adaptive_avg_pool2d", "avg_pool2d"):
        return tuple(out.shape[-2:]) == (1, 1)
    if name == "mean":  # x.mean((2, 3)) or x.mean((-2, -1))
        return out.dim() in (2, 4) and out.numel() == x.shape[0] * x.shape[1]
    return False


class _GapInput(TorchFunctionMode):
    """Keeps the first tensor that enters global average pooling, module or functional."""

    def __init__(self) -> None:
        super().__init__()
        self.x: torch.Tensor | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if self.x is None and x is not None and is_global_pool(getattr(func, "__name__", ""), x, out):
            self.x = x
        return out


def empirical_receptive_field(model: nn.Module, max_size: int = 1024) -> int:
    """RF measured by gradient: positive weights and inputs keep every ReLU open, so the gradient is
    nonzero exactly where the centre unit of the GAP input looks. The input grows until the field no
    longer touches the image edge."""
    probe = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for m in probe.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.fill_(1.0 / (m.weight[0].numel()))
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
                m.reset_running_stats()
    # max-pool's gradient reaches only the arg-max; its field is its whole window, as for avg-pool
    for parent in list(probe.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(parent, child_name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                         ceil_mode=child.ceil_mode))
    size = 64
    while size <= max_size:
        x = torch.ones(1, _in_channels(model), size, size, dtype=torch.float64, requires_grad=True)
        with _GapInput() as spy:
            try:
                probe(x)
            except RuntimeError as e:  # e.g. a Linear layer that fixes the input size
                raise ValueError(f"not fully convolutional, no gradient RF at {size}px ({e})") from None
        if spy.x is None:
            raise ValueError("no global average pooling found in the model")
        fmap = spy.x
        h, w = fmap.shape[-2:]
        fmap[0, :, h // 2, w // 2].sum().backward()
        rows = (x.grad[0].abs().sum(0).sum(1) > 0).nonzero().flatten()
        cols = (x.grad[0].abs().sum(0).sum(0) > 0).nonzero().flatten()
        lo, hi = int(min(rows.min(), cols.min())), int(max(rows.max(), cols.max()))
        if lo > 0 and hi < size - 1:
            return max(int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1))
        size *= 2
    raise ValueError(f"receptive field reaches past a {max_size}px input")


def format_rf_table(rows: list[RFRow]) -> str:
    """Markdown table of the RF walk."""
    out = ["| # | layer | kind | k | s | d | p | n_in | n_out | jump | RF | start |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        out.append(f"| {i} | {r.layer} | {r.kind} | {r.kernel} | {r.stride} | {r.dilation} | {r.padding} "
                   f"| {r.n_in} | {r.n_out} | {r.jump} | {r.rf} | {r.start:g} |")
    return "\n".join(out)
