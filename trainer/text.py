"""Wording shared by every line a person reads, from the training log to the tools' tables."""
from __future__ import annotations


def counted(n: int, noun: str) -> str:
    """"1 epoch", "20 epochs": a count with its noun in the right number."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
