"""The figures of a run folder: loss.png and accuracy.png over epochs, the grid of misclassified test images."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np


LOSS_LINES = (("train_loss", "train: label-smoothed loss, augmented batches"),
              ("test_loss", "test: cross-entropy, no TTA"), ("test_loss_tta", "test: cross-entropy, flip TTA"),
              ("val_loss", "val: cross-entropy, no TTA"))
ACC_LINES = (("train_acc", "train: augmented batches"), ("test_acc", "test: no TTA"),
             ("test_acc_tta", "test: flip TTA"), ("val_acc", "val: no TTA"), ("val_acc_tta", "val: flip TTA"))


def series(rows: list[dict], key: str) -> list[float] | None:
    """The column as floats (NaN where not measured), or None when no epoch measured it."""
    values = [r.get(key) for r in rows]
    return None if all(v is None for v in values) else [math.nan if v is None else v for v in values]


def epoch_axis(ax, epochs: list[int]) -> None:
    """Whole epochs on the x-axis, half an epoch of margin either side (one epoch is not an axis of 0.96-1.04)."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    if len(epochs) <= 12:
        ax.set_xticks(epochs)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")


def draw_lines(ax, rows: list[dict], lines: tuple[tuple[str, str], ...], markersize: float = 3) -> None:
    """Each of `lines` ((row key, legend label) pairs) over epochs on `ax`; a column no epoch measured is left out."""
    epochs = [r["epoch"] for r in rows]
    for key, label in lines:
        values = series(rows, key)
        if values is not None:
            ax.plot(epochs, values, marker="o", markersize=markersize, label=label)


def plot(rows: list[dict], lines: tuple[tuple[str, str], ...], ylabel: str, path: Path,
         title: str = "", shipped_epoch: int | None = None) -> None:
    """One figure of `lines` ((row key, legend label) pairs) over epochs; a dashed line at the shipped epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=100)
    draw_lines(ax, rows, lines)
    if shipped_epoch is not None:
        ax.axvline(shipped_epoch, color="gray", linestyle=":", label=f"shipped weights (epoch {shipped_epoch})")
    epoch_axis(ax, epochs)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def misclassified_png(pred: dict[str, np.ndarray], path: Path) -> None:
    """The misclassified test images kept in predictions.npz, each titled with its true and predicted class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = [str(c) for c in pred["classes"]]
    idx, imgs = pred["wrong_index"], pred["wrong_images"]
    n = len(idx)
    if n == 0:  # report.md links the figure: say so rather than leave a broken link
        fig, ax = plt.subplots(figsize=(4, 1), dpi=100)
        ax.axis("off")
        ax.text(0.5, 0.5, "no misclassified test images", ha="center", va="center")
        fig.savefig(path)
        plt.close(fig)
        return
    cols = min(n, 5)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.8, rows * 2.0), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i, img in zip(axes.flat, idx, imgs):
        ax.imshow(img)
        ax.set_title(f"{classes[pred['labels'][i]]}\n-> {classes[pred['preds'][i]]} {pred['probs'][i]:.2f}",
                     fontsize=7)
    fig.suptitle("misclassified test images (true -> predicted, probability)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
