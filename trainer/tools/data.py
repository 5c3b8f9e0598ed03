"""`s7 stats` and `s7 show-augment`: what the training data and its augmentation look like."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np


def _fmt(v: np.ndarray, digits: int) -> str:
    return "(" + ", ".join(f"{c:.{digits}f}" for c in v) + ")"


def _counts(y: np.ndarray, n_classes: int) -> str:
    c = np.bincount(y, minlength=n_classes)
    return f"{c[0]:,} per class" if c.min() == c.max() else f"{c.min():,}-{c.max():,} per class"


def stats_command(data: str | None, data_dir: str) -> int:
    """`s7 stats`: print the source, image counts, classes and per-channel mean/std of the training split."""
    from trainer.dataset import channel_stats, load_data

    start = time.perf_counter()
    d = load_data(data, data_dir)
    seconds = time.perf_counter() - start
    mean, std = channel_stats(d.train_x)
    k = len(d.classes)
    print(f"source:   {d.source}")
    print(f"train:    {len(d.train_x):,} images ({_counts(d.train_y, k)})")
    print(f"test:     {len(d.test_x):,} images ({_counts(d.test_y, k)})")
    print(f"classes:  {k} ({', '.join(d.classes)})")
    print(f"mean:     {_fmt(mean, 2)} pixels = {_fmt(mean / 255, 4)} on 0-1 scale (train split)")
    print(f"std:      {_fmt(std, 2)} pixels = {_fmt(std / 255, 4)} on 0-1 scale (train split)")
    if data is None:
        how = "torchvision's CIFAR-10 files"
    else:
        how = f"{'from the decoded cache' if d.from_cache else 'decoded, cache written'} in {os.path.abspath(data_dir)}"
    print(f"loaded in {seconds:.1f} s ({how})")
    return 0


def show_augment_command(data: str | None, data_dir: str, out: str, n: int, draws: int, seed: int) -> int:
    """`s7 show-augment`: PNG grid with n training images per row, the original and `draws` augmented copies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainer.augment import build_train_transform, reseed
    from trainer.dataset import channel_stats, load_data

    d = load_data(data, data_dir)
    mean, _ = channel_stats(d.train_x)
    transform = build_train_transform(mean)
    reseed(transform, seed)
    picks = np.random.default_rng(seed).choice(len(d.train_x), size=min(n, len(d.train_x)), replace=False)
    fig, axes = plt.subplots(len(picks), draws + 1, figsize=(1.3 * (draws + 1), 1.4 * len(picks) + 0.8),
                             squeeze=False)
    for row, idx in enumerate(picks):
        image = d.train_x[idx]
        panels = [image] + [transform(image=image)["image"] for _ in range(draws)]
        for col, panel in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title("original" if col == 0 else f"draw {col}", fontsize=8)
        axes[row][0].set_ylabel(f"{d.classes[d.train_y[idx]]}\n#{idx}", fontsize=7)
    fig.suptitle("Training augmentation: flip, shift-scale-rotate, 16x16 mean-colour hole, gray", fontsize=9)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(out)
    return 0
