"""`s7 check` and `s7 summary`: a registered net or a user's own `module:Class` against the assignment's rules."""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from models.receptive_field import format_rf_table, rf_table
from models.rules import check_model, format_rules, required_transitions, summary_text
from models.trace import one_line, zero_image


def load_model(spec: str, num_classes: int = 10) -> nn.Module:
    """A registered timm name (`s7`) or `module:Class`: a user's own nn.Module class, built with no arguments,
    with a Conv2d and a forward pass that runs on a 32x32 image. Anything else is a one-line ValueError, and a
    function (`trainer.main:main`) is never called."""
    if ":" in spec:
        return _user_model(spec)
    import timm

    import models  # noqa: F401  (registers the s7 nets)

    if not timm.is_model(spec):
        raise ValueError(f"unknown model {spec!r}; registered s7 models: {', '.join(models.MODEL_NAMES)}")
    return timm.create_model(spec, num_classes=num_classes)


def _import(name: str) -> ModuleType:
    """The module `name`, importable or a file NAME.py (a/b.py for a.b) under the current folder, which a console
    script's sys.path lacks; loaded from its file, so sys.path is left as it is."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        path = Path.cwd().joinpath(*name.split(".")).with_suffix(".py")
        if e.name != name.split(".")[0] or not path.is_file():
            raise
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _user_model(spec: str) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        obj = getattr(_import(module_name), attr)
    except Exception as e:  # ImportError, AttributeError, an empty name, or the module's own import failing
        raise ValueError(f"cannot load model {spec!r}: {one_line(e)}") from None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ValueError(f"{spec}: not an nn.Module class but a {type(obj).__name__}; name the model's class")
    try:
        model = obj()
    except Exception as e:
        raise ValueError(f"{spec}: cannot be built with no arguments ({one_line(e)})") from None
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        raise ValueError(f"{spec}: has no Conv2d, so it is no image model the rules apply to")
    image = zero_image(model, 32)
    try:
        with torch.no_grad():
            model.eval()(image)
    except Exception as e:
        raise ValueError(f"{spec}: its forward pass fails on a {'x'.join(map(str, image.shape))} image "
                         f"({one_line(e)})") from None
    return model.train()


def check_command(spec: str) -> int:
    """`s7 check MODEL`: rules table and RF table; 0 only if all pass."""
    model = load_model(spec)
    rules = check_model(model, transitions=required_transitions(spec))
    print(f"## {spec}: rules\n\n{format_rules(rules)}\n")
    print(f"## {spec}: receptive field\n\n{format_rf_table(rf_table(model))}\n")
    ok = all(r.passed for r in rules)
    n = sum(p.numel() for p in model.parameters())
    print(f"{spec}: {'ALL PASS' if ok else 'FAIL'} ({n:,} parameters)")
    return 0 if ok else 1


def summary_command(spec: str) -> int:
    """`s7 summary MODEL`."""
    print(summary_text(load_model(spec)))
    return 0
