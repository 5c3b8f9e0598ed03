"""One forward pass of any model, recorded op by op, for the rule check (models/rules.py).

The trace is the model's torch.fx graph, run op by op: every leaf module, torch function and tensor method with
the real tensors it took and gave, and which op feeds which. So a max pooling is found however it is written (a
module, F.max_pool2d, a max or amax over the spatial dims), "after GAP" means computed from the GAP's output
(bare nn.Parameters included), and every op that shrinks the map is seen. The graph also runs on an image twice
the size: the dims whose size follows the image are the spatial ones, even after a flatten or a permute.
A model fx cannot trace (data-dependent control flow) fails the rule "traceable" and is checked, as far as that
goes, on an eager run seen through a TorchFunctionMode, in execution order only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.overrides import TorchFunctionMode

from models.receptive_field import _in_channels

INPUT = -1  # in Trace.feeds: the model's input image


@dataclass(eq=False)
class Op:
    """One call of the forward pass (a leaf module, a torch function or a tensor method) with the values it saw."""

    name: str  # for the report: module path and class, or function and the module that called it
    fn: str  # function or method name, or the leaf module's class name
    module: nn.Module | None
    args: tuple
    kwargs: dict
    inputs: list[torch.Tensor]  # every tensor in args and kwargs, in order
    outputs: list[torch.Tensor]
    vary_in: list[set[int]] | None = None  # per input: the dims whose size follows the image size (graph only)
    vary_out: list[set[int]] | None = None


@dataclass
class Trace:
    """The ops of one forward pass in execution order. From an fx graph, `feeds[i]` holds the ops that op i reads
    (INPUT: the image); `error` says why fx could not trace the model, and then the ops come from an eager run."""

    ops: list[Op]
    feeds: list[set[int]] | None = None
    error: str | None = None

    def downstream(self, op: Op) -> list[Op]:
        """Ops computed from `op`'s output, with the image-independent ops (weights) that feed them; in an eager
        trace, every op that ran after it."""
        i = self.ops.index(op)
        if self.feeds is None:
            return self.ops[i + 1:]
        down, live = {i}, set()
        for j, src in enumerate(self.feeds):  # graph order is a topological order
            if src & down:
                down.add(j)
            if INPUT in src or src & live:
                live.add(j)
        side, todo = set(), [k for j in down for k in self.feeds[j]]
        while todo:
            k = todo.pop()
            if k != INPUT and k not in live and k not in side:
                side.add(k)
                todo += self.feeds[k]
        return [o for j, o in enumerate(self.ops) if j in (down | side) - {i}]


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _op(name: str, fn: str, module: nn.Module | None, args: tuple, kwargs: dict, out: Any) -> Op:
    return Op(name, fn, module, tuple(args), dict(kwargs), _tensors((args, kwargs)), _tensors(out))


def zero_image(model: nn.Module, size: int) -> torch.Tensor:
    """A zero image of `size` x `size` on the model's device and dtype, as many channels as its first conv takes."""
    p = next(model.parameters(), None)
    return torch.zeros(1, _in_channels(model), size, size,
                       device=None if p is None else p.device, dtype=None if p is None else p.dtype)


def one_line(e: BaseException) -> str:
    """An exception as one line that fits a markdown table cell."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}".replace("|", "/")


class _Recorder(fx.Interpreter):
    """Runs a traced graph, keeping each call's real arguments and result."""

    def __init__(self, graph: fx.GraphModule) -> None:
        super().__init__(graph, garbage_collect_values=False)
        self.seen: dict[fx.Node, tuple[tuple, dict, Any]] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.op.startswith("call_"):
            self.seen[n] = (*self.fetch_args_kwargs_from_env(n), out)
        return out


def _run_graph(graph: fx.GraphModule, image: torch.Tensor) -> dict[fx.Node, tuple[tuple, dict, Any]]:
    recorder = _Recorder(graph)
    recorder.run(image)
    return recorder.seen


def _varying(a: torch.Tensor, b: torch.Tensor) -> set[int]:
    return {d for d in range(a.dim()) if a.dim() == b.dim() and a.shape[d] != b.shape[d]}


def _graph_op(graph: fx.GraphModule, node: fx.Node, first: tuple, second: tuple | None) -> Op:
    if node.op == "call_module":
        module = graph.get_submodule(node.target)
        fn = type(module).__name__
        name = f"{node.target} ({fn})"
    else:
        module = None
        fn = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        name = f"{fn} in {stack[-1][0]}" if stack else fn
    op = _op(name, fn, module, *first)
    if second is not None:
        op.vary_in = [_varying(a, b) for a, b in zip(op.inputs, _tensors(second[:2]))]
        op.vary_out = [_varying(a, b) for a, b in zip(op.outputs, _tensors(second[2]))]
    return op


def _graph_trace(model: nn.Module, input_size: int) -> Trace:
    graph = fx.symbolic_trace(model)
    first = _run_graph(graph, zero_image(model, input_size))
    try:
        second = _run_graph(graph, zero_image(model, 2 * input_size))
    except Exception:  # e.g. a Linear that fixes the input size: spatial dims are then judged by position
        second = None
    nodes = [n for n in graph.graph.nodes if n.op.startswith("call_")]
    index = {n: i for i, n in enumerate(nodes)}
    ops = [_graph_op(graph, n, first[n], None if second is None else second[n]) for n in nodes]
    feeds = [{index.get(m, INPUT) for m in n.all_input_nodes if m.op != "get_attr"} for n in nodes]
    return Trace(ops, feeds)


class _CallSpy(TorchFunctionMode):
    """Records every torch function and tensor method call, named with the module that made it."""

    def __init__(self, ops: list[Op], where: list[str]) -> None:
        super().__init__()
        self.ops, self.where = ops, where

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        fn = getattr(func, "__name__", str(func))
        self.ops.append(_op(f"{fn} in {self.where[-1]}" if self.where else fn, fn, None, args, kwargs, out))
        return out


def _eager_trace(model: nn.Module, input_size: int, error: str) -> Trace:
    ops: list[Op] = []
    where: list[str] = []  # the paths of the modules running now, innermost last

    def enter(path: str):
        return lambda mod, inp: where.append(path)

    def leave(mod, inp, out) -> None:
        where.pop()

    handles = [h for path, m in model.named_modules() if path
               for h in (m.register_forward_pre_hook(enter(path)), m.register_forward_hook(leave))]
    try:
        with _CallSpy(ops, where):
            model(zero_image(model, input_size))
    finally:
        for h in handles:
            h.remove()
    return Trace(ops, error=error)


def trace(model: nn.Module, input_size: int = 32) -> Trace:
    """The model's fx graph run on a zero image (eval mode, no gradients) or, if fx cannot trace the model, an
    eager run, with the reason in `error`."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                return _graph_trace(model, input_size)
            except Exception as e:  # fx's TraceError, or a graph that does not run as traced
                return _eager_trace(model, input_size, one_line(e))
    finally:
        model.train(was_training)
