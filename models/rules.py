"""The assignment's rules as data, checked on any model by tracing one forward pass.

Each rule has a required and an actual value and passes or fails. The trace records, in execution
order, every leaf module that runs (with its input/output sizes) and every functional max-pooling or
global-pooling call (via a TorchFunctionMode), so a MaxPool or an FC after GAP is found whether it was
written as a module or as a function call.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from models.receptive_field import (_in_channels, empirical_receptive_field, format_rf_table, is_global_pool,
                                     receptive_field, rf_table)

MAX_PARAMS = 100_000
MIN_RF = 53  # "RF > 52"


@dataclass
class Rule:
    name: str
    required: str
    actual: str
    passed: bool


@dataclass
class Event:
    kind: str  # "module" | "maxpool" | "gap"
    module: nn.Module | None
    in_shape: tuple
    out_shape: tuple


class _PoolSpy(TorchFunctionMode):
    """Records max-pooling and global-average-pooling calls, however they are written."""

    def __init__(self, events: list[Event]) -> None:
        super().__init__()
        self.events = events

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if x is not None and "max_pool" in name:
            self.events.append(Event("maxpool", None, tuple(x.shape), tuple(out.shape)))
        elif x is not None and is_global_pool(name, x, out):
            self.events.append(Event("gap", None, tuple(x.shape), tuple(out.shape)))
        return out


def trace(model: nn.Module, input_size: int = 32) -> list[Event]:
    """Events of one eval-mode forward pass on a zero image, in execution order."""
    events: list[Event] = []
    leaves = [m for m in model.modules() if not list(m.children())]

    def pre(mod, inp):
        events.append(Event("module", mod, tuple(inp[0].shape) if inp else (), ()))

    handles = [m.register_forward_pre_hook(pre) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), _PoolSpy(events):
            model(torch.zeros(1, _in_channels(model), input_size, input_size))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return events


def _convs(events: list[Event]) -> list[nn.Conv2d]:
    return [e.module for e in events if e.kind == "module" and isinstance(e.module, nn.Conv2d)]


def count_depthwise_separable(events: list[Event]) -> int:
    """Depthwise kxk conv (groups = in_channels > 1) whose output is next taken by a 1x1 pointwise conv."""
    convs = _convs(events)
    count = 0
    for a, b in zip(convs, convs[1:]):
        depthwise = a.groups == a.in_channels > 1 and a.out_channels % a.in_channels == 0 and a.kernel_size[0] > 1
        pointwise = b.kernel_size == (1, 1) and b.groups == 1 and b.in_channels == a.out_channels
        count += depthwise and pointwise
    return count


def check_model(model: nn.Module, num_classes: int = 10, transitions: str | None = None) -> list[Rule]:
    """Every rule, required vs actual. `transitions` (strided | dilated | mixed) defaults to the model's own."""
    events = trace(model)
    convs = _convs(events)
    params = sum(p.numel() for p in model.parameters())
    rf = receptive_field(model)
    try:
        rf_emp: int | str = empirical_receptive_field(model)
    except ValueError as e:
        rf_emp = f"n/a: {e}"
    ds = count_depthwise_separable(events)
    dilated = [c for c in convs if max(c.dilation) > 1]
    maxpools = [e for e in events if e.kind == "maxpool"]
    gaps = [i for i, e in enumerate(events) if e.kind == "gap"]
    stride2_3x3 = [c for c in convs if c.kernel_size == (3, 3) and max(c.stride) == 2]
    strided_any = [c for c in convs if max(c.stride) > 1]
    transitions = transitions or getattr(model, "transitions", None) or "mixed"

    rules = [
        Rule("parameters", f"< {MAX_PARAMS:,}", f"{params:,}", params < MAX_PARAMS),
        Rule("receptive field", f"> {MIN_RF - 1}", f"{rf} (gradient check: {rf_emp})",
             rf >= MIN_RF and rf == rf_emp),
        Rule("depthwise-separable convs", ">= 2", str(ds), ds >= 2),
        Rule("dilated convs", ">= 1", str(len(dilated)), len(dilated) >= 1),
        Rule("MaxPool", "none", str(len(maxpools)), not maxpools),
    ]
    if transitions == "strided":
        rules.append(Rule("transitions (strided)", "3 stride-2 3x3 convs, no other stride",
                          f"{len(stride2_3x3)} stride-2 3x3, {len(strided_any)} strided in all",
                          len(stride2_3x3) == 3 and len(strided_any) == 3))
    elif transitions == "dilated":
        rules.append(Rule("transitions (dilated)", "no stride > 1", f"{len(strided_any)} strided convs",
                          not strided_any))
    else:
        rules.append(Rule("transitions (mixed)", "stride-2 3x3 or dilated convs only",
                          f"{len(stride2_3x3)} stride-2 3x3, {len(dilated)} dilated",
                          len(strided_any) == len(stride2_3x3)))
    if gaps:
        gap_channels = events[gaps[0]].in_shape[1]
        rules.append(Rule("GAP input channels", f"= {num_classes} (classes)", str(gap_channels),
                          gap_channels == num_classes and len(gaps) == 1))
        after = [e.module for e in events[gaps[0] + 1:]
                 if e.kind == "module" and any(True for _ in e.module.parameters(recurse=False))]
        rules.append(Rule("layers with weights after GAP", "none",
                          ", ".join(type(m).__name__ for m in after) or "none", not after))
    else:
        rules.append(Rule("GAP input channels", f"= {num_classes} (classes)", "no GAP found", False))
        rules.append(Rule("layers with weights after GAP", "none", "no GAP found", False))
    return rules


def format_rules(rules: list[Rule]) -> str:
    """Markdown table of the rules with PASS/FAIL."""
    out = ["| rule | required | actual | result |", "|---|---|---|---|"]
    out += [f"| {r.name} | {r.required} | {r.actual} | {'PASS' if r.passed else 'FAIL'} |" for r in rules]
    return "\n".join(out)


def load_model(spec: str, num_classes: int = 10) -> nn.Module:
    """A registered timm name (`s7`) or `module:Class` (a user's own model, built with no arguments)."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        sys.path.insert(0, ".")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot load model {spec!r}: {e}") from None
        return obj()
    import timm

    import models  # noqa: F401  (registers the s7 nets)

    if not timm.is_model(spec):
        raise ValueError(f"unknown model {spec!r}; registered s7 models: {', '.join(models.MODEL_NAMES)}")
    return timm.create_model(spec, num_classes=num_classes)


def check_command(spec: str) -> int:
    """`s7 check MODEL`: rules table and RF table; 0 only if all pass."""
    model = load_model(spec)
    rules = check_model(model)
    print(f"## {spec}: rules\n\n{format_rules(rules)}\n")
    print(f"## {spec}: receptive field\n\n{format_rf_table(rf_table(model))}\n")
    ok = all(r.passed for r in rules)
    n = sum(p.numel() for p in model.parameters())
    print(f"{spec}: {'ALL PASS' if ok else 'FAIL'} ({n:,} parameters)")
    return 0 if ok else 1


def summary_text(model: nn.Module) -> str:
    """torchinfo summary on a 1x3x32x32 input."""
    import copy

    from torchinfo import summary

    # torchinfo moves the model it is given to `device`: hand it a CPU copy, never the live model.
    return str(summary(copy.deepcopy(model).cpu(), input_size=(1, 3, 32, 32), verbose=0, device="cpu", mode="eval",
                       col_names=("output_size", "num_params", "kernel_size")))


def summary_command(spec: str) -> int:
    """`s7 summary MODEL`."""
    print(summary_text(load_model(spec)))
    return 0
