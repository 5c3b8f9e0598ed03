"""Registration of the s7 nets in timm's registry, with the transition style each is built for, so that the rule
check (`s7 check`, the trainer) applies a net's transition rule from where the net is declared."""
from __future__ import annotations

from typing import Callable

from timm.models import register_model

TRANSITION_STYLES = ("strided", "dilated")
_TRANSITIONS: dict[str, str | None] = {}
_SHIPPED: list[str] = []


def register(transitions: str | None, shipped: bool = False) -> Callable[[Callable], Callable]:
    """`@register("strided")` over a timm entry point: timm's `register_model`, plus the net's transition style
    ("strided": 3x3 stride-2 convs, "dilated": no stride anywhere, None: only the general downsampling rule)
    and whether the project ships trained weights for it (`models.MODEL_NAMES`)."""
    if transitions not in (None, *TRANSITION_STYLES):
        raise ValueError(f"transitions {transitions!r}: one of {', '.join(TRANSITION_STYLES)} or None")

    def wrap(fn: Callable) -> Callable:
        _TRANSITIONS[fn.__name__] = transitions
        if shipped:
            _SHIPPED.append(fn.__name__)
        return register_model(fn)
    return wrap


def transitions_of(name: str) -> str | None:
    """The transition style the registered s7 net `name` declares; None for any other net."""
    return _TRANSITIONS.get(name)


def registered() -> tuple[str, ...]:
    """Every net registered through `register`, in registration order."""
    return tuple(_TRANSITIONS)


def shipped() -> tuple[str, ...]:
    """The nets registered with `shipped=True`, in registration order."""
    return tuple(_SHIPPED)
