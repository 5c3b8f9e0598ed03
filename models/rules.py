"""The assignment's rules as data, checked on any model from a trace of one forward pass on a zero image.

The trace (models/trace.py) shows every op; this module holds the rules read from it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models.receptive_field import empirical_receptive_field, is_global_pool, receptive_field
from models.registry import TRANSITION_STYLES, transitions_of
from models.trace import Op, Trace, trace

MAX_PARAMS = 100_000
MIN_RF = 53  # "RF > 52"



@dataclass
class Rule:
    name: str
    required: str
    actual: str
    passed: bool


def _arg(op: Op, pos: int, key: str, default: Any = None) -> Any:
    return op.args[pos] if len(op.args) > pos else op.kwargs.get(key, default)


def _pair(v: int | tuple | list) -> tuple[int, ...]:
    return (v, v) if isinstance(v, int) else tuple(v)


@dataclass
class Conv:
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    c_in: int
    c_out: int


def conv_of(op: Op) -> Conv | None:
    """The op's 2-D convolution, from an nn.Conv2d or an F.conv2d call; None for any other op."""
    if isinstance(op.module, nn.Conv2d):
        m = op.module
        return Conv(m.kernel_size, m.stride, m.dilation, m.groups, m.in_channels, m.out_channels)
    if op.module is None and op.fn == "conv2d":
        w, groups = _arg(op, 1, "weight"), _arg(op, 6, "groups", 1)
        return Conv(tuple(w.shape[2:]), _pair(_arg(op, 3, "stride", 1)), _pair(_arg(op, 5, "dilation", 1)),
                    groups, w.shape[1] * groups, w.shape[0])
    return None


def count_depthwise_separable(ops: list[Op]) -> int:
    """Depthwise kxk conv (groups = in_channels > 1) whose output is next taken by a 1x1 pointwise conv."""
    convs = [c for c in map(conv_of, ops) if c]
    count = 0
    for a, b in zip(convs, convs[1:]):
        depthwise = a.groups == a.c_in > 1 and a.c_out % a.c_in == 0 and a.kernel[0] > 1
        pointwise = b.kernel == (1, 1) and b.groups == 1 and b.c_in == a.c_out
        count += depthwise and pointwise
    return count


def _max_reduced_dims(op: Op) -> set[int] | None:
    """The dims a max or amax call reduces; None if the op is none (an elementwise max of two tensors is none)."""
    x = _arg(op, 0, "input")
    if op.module is not None or op.fn not in ("max", "amax") or not isinstance(x, torch.Tensor) or x.dim() == 0:
        return None
    dim = _arg(op, 1, "dim")
    if isinstance(dim, torch.Tensor) or "other" in op.kwargs:
        return None
    if dim is None or dim == () or dim == []:
        return set(range(x.dim()))
    return {d % x.dim() for d in (dim if isinstance(dim, (tuple, list)) else (dim,))}


def is_max_pool(op: Op) -> bool:
    """A max-pooling module or function, or a max/amax over spatial dims: the dims whose size follows the image
    size or, where that is unknown (eager trace, fixed-size model), dims 2 and on (N, C, H, W or N, C, H*W)."""
    if "maxpool" in op.fn.lower().replace("_", ""):
        return True
    dims = _max_reduced_dims(op)
    if not dims:
        return False
    x = op.inputs[0]
    spatial = op.vary_in[0] if op.vary_in else set(range(2, x.dim()))
    return any(x.shape[d] > 1 for d in dims & spatial)


_POOL_FUNCTIONS = {nn.AdaptiveAvgPool2d: "adaptive_avg_pool2d", nn.AvgPool2d: "avg_pool2d"}


def is_gap(op: Op) -> bool:
    """Global average pooling, as a module or a function (receptive_field.is_global_pool says which calls count)."""
    fn = next((f for cls, f in _POOL_FUNCTIONS.items() if isinstance(op.module, cls)), op.fn)
    return bool(op.inputs) and len(op.outputs) == 1 and is_global_pool(fn, op.inputs[0], op.outputs[0])


def _positions(t: torch.Tensor, dims: set[int]) -> int:
    return math.prod(t.shape[d] for d in dims)


def shrinks(op: Op) -> bool:
    """Whether the op leaves fewer image positions than it took: a smaller product of the dims that follow the
    image size or, where those are unknown, fewer rows or columns of a 4-D map."""
    if not op.inputs or not op.outputs:
        return False
    if op.vary_in is not None:
        return (max(map(_positions, op.outputs, op.vary_out), default=1)
                < max(map(_positions, op.inputs, op.vary_in), default=1))
    x = op.inputs[0]
    return x.dim() == 4 and any(y.dim() == 4 and (y.shape[-2] < x.shape[-2] or y.shape[-1] < x.shape[-1])
                                for y in op.outputs)


def downsampling(ops: list[Op]) -> tuple[list[Op], list[Op], list[Op]]:
    """The ops that shrink the map: 3x3 stride-2 convs, stride-1 convs with less than 'same' padding, and the rest
    (which break the rules). Max pools and the GAP are left to their own rules."""
    strided, unpadded, other = [], [], []
    for op in ops:
        if not shrinks(op) or is_max_pool(op) or is_gap(op):
            continue
        c = conv_of(op)
        if c and c.kernel == (3, 3) and c.stride == (2, 2):
            strided.append(op)
        elif c and c.stride == (1, 1):
            unpadded.append(op)
        else:
            other.append(op)
    return strided, unpadded, other


def _describe(op: Op) -> str:
    """The op's name and what it did to the map, e.g. `t3 (Conv2d): 1x1 stride 2, 8x8 -> 4x4`."""
    parts = []
    if c := conv_of(op):
        parts.append(f"{'x'.join(map(str, c.kernel))} stride {c.stride[0]}")
    x, ys = op.inputs[0], [y for y in op.outputs if y.dim() == op.inputs[0].dim()]
    if x.dim() > 2 and ys:
        parts.append(f"{'x'.join(map(str, x.shape[2:]))} -> {'x'.join(map(str, ys[0].shape[2:]))}")
    return f"{op.name}: {', '.join(parts)}" if parts else op.name


def _weights(op: Op, names: dict[int, str]) -> list[str]:
    """What in the op has learned weights: its module, if that has parameters, and any nn.Parameter it reads."""
    own = [op.name] if op.module is not None and any(True for _ in op.module.parameters()) else []
    return own + [names.get(id(t), "an unnamed nn.Parameter") for t in op.inputs if isinstance(t, nn.Parameter)]


def _rf_rule(model: nn.Module) -> Rule:
    """Passes only when the layer walk and the gradient check agree on an RF above 52; the row says why not."""
    rf = receptive_field(model)
    try:
        rf_emp: int | str = empirical_receptive_field(model)
    except ValueError as e:
        rf_emp = f"n/a: {e}"
    actual = f"{rf} (gradient check: {rf_emp})"
    if isinstance(rf_emp, str):
        actual += ": the gradient check could not confirm the layer walk's figure"
    elif rf_emp != rf:
        actual += ": the layer walk and the gradient check disagree, so the RF is unknown"
    return Rule("receptive field", f"> {MIN_RF - 1}", actual, rf >= MIN_RF and rf == rf_emp)


def _downsampling_rule(ops: list[Op]) -> Rule:
    strided, unpadded, other = downsampling(ops)
    actual = f"{len(strided)} stride-2 3x3, {len(unpadded)} under-padded stride-1, {len(other)} other"
    if other:
        actual += ": " + ", ".join(map(_describe, other))
    return Rule("downsampling", "3x3 stride-2 or under-padded stride-1 convs, GAP", actual, not other)


def _transition_rule(style: str, convs: list[Conv]) -> Rule:
    strided = [c for c in convs if max(c.stride) > 1]
    if style == "strided":
        s2 = [c for c in strided if c.kernel == (3, 3) and c.stride == (2, 2)]
        return Rule("transitions (strided)", "3 stride-2 3x3 convs, no other stride",
                    f"{len(s2)} stride-2 3x3, {len(strided)} strided in all", len(s2) == len(strided) == 3)
    return Rule("transitions (dilated)", "no stride > 1", f"{len(strided)} strided convs", not strided)


def _gap_rules(model: nn.Module, tr: Trace, num_classes: int) -> list[Rule]:
    gaps = [op for op in tr.ops if is_gap(op)]
    required = f"= {num_classes} (classes)"
    if not gaps:
        return [Rule("GAP input channels", required, "no GAP found", False),
                Rule("layers with weights after GAP", "none", "no GAP found", False)]
    channels = gaps[0].inputs[0].shape[1]
    names = {id(p): n for n, p in model.named_parameters()}
    after = list(dict.fromkeys(w for op in tr.downstream(gaps[0]) for w in _weights(op, names)))
    return [Rule("GAP input channels", required, str(channels) if len(gaps) == 1 else f"{channels} ({len(gaps)} GAPs)",
                 channels == num_classes and len(gaps) == 1),
            Rule("layers with weights after GAP", "none", ", ".join(after) or "none", not after)]


def required_transitions(name: str) -> str | None:
    """The transition style the registered net `name` is built for; None: only the general downsampling rule."""
    return transitions_of(name)


def check_model(model: nn.Module, num_classes: int = 10, transitions: str | None = None) -> list[Rule]:
    """Every rule, required vs actual. `transitions` ("strided" or "dilated", see `required_transitions`) adds
    that style's rule to the general downsampling rule; None checks the general rule only."""
    if transitions is not None and transitions not in TRANSITION_STYLES:
        raise ValueError(f"unknown transition style {transitions!r}; one of {', '.join(TRANSITION_STYLES)}")
    tr = trace(model)
    convs = [c for c in map(conv_of, tr.ops) if c]
    params = sum(p.numel() for p in model.parameters())
    ds = count_depthwise_separable(tr.ops)
    dilated = [c for c in convs if max(c.dilation) > 1]
    pools = [op.name for op in tr.ops if is_max_pool(op)]
    rules = [
        Rule("traceable", "torch.fx graph", "yes" if tr.error is None else
             f"no ({tr.error}); rules below from an eager run", tr.error is None),
        Rule("parameters", f"< {MAX_PARAMS:,}", f"{params:,}", params < MAX_PARAMS),
        _rf_rule(model),
        Rule("depthwise-separable convs", ">= 2", str(ds), ds >= 2),
        Rule("dilated convs", ">= 1", str(len(dilated)), len(dilated) >= 1),
        Rule("MaxPool", "none", f"{len(pools)}: {', '.join(pools)}" if pools else "0", not pools),
        _downsampling_rule(tr.ops),
    ]
    if transitions is not None:
        rules.append(_transition_rule(transitions, convs))
    return rules + _gap_rules(model, tr, num_classes)


def format_rules(rules: list[Rule]) -> str:
    """Markdown table of the rules with PASS/FAIL."""
    out = ["| rule | required | actual | result |", "|---|---|---|---|"]
    out += [f"| {r.name} | {r.required} | {r.actual} | {'PASS' if r.passed else 'FAIL'} |" for r in rules]
    return "\n".join(out)


def summary_text(model: nn.Module) -> str:
    """torchinfo summary on a 1x3x32x32 input."""
    import copy

    from torchinfo import Units, summary

    # torchinfo moves the model it is given to `device`: hand it a CPU copy, never the live model.
    text = str(summary(copy.deepcopy(model).cpu(), input_size=(1, 3, 32, 32), verbose=0, device="cpu", mode="eval",
                       col_names=("output_size", "num_params", "kernel_size")))
    for unit in Units:  # torchinfo formats its unit enum, which Python 3.11+ prints as "Units.MEGABYTES"
        text = text.replace(f"(Units.{unit.name})", f"({unit.value})")
    return text
