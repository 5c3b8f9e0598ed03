"""Images/second of the training loader (full augmentation) for 0..N workers, and of the bare pipeline on one core.

    python benchmarks/loader.py [--data ../shared/data/cifar10-jpeg.tar.gz] [--images 50000] [--max-workers N]

Prints a markdown table. Without --data it uses random uint8 images of CIFAR's shape.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, default_collate  # noqa: E402

from trainer.augment import build_train_transform, reseed  # noqa: E402
from trainer.dataset import channel_stats, load_data  # noqa: E402
from trainer.loader import AugmentedDataset, make_loader  # noqa: E402


def bare_pipeline(x: np.ndarray, mean: np.ndarray) -> float:
    """Images/s of the albumentations pipeline alone, in this process."""
    transform = build_train_transform(mean)
    reseed(transform, 0)
    start = time.perf_counter()
    for image in x:
        transform(image=image)
    return len(x) / (time.perf_counter() - start)


def loader_pass(loader: DataLoader) -> tuple[float, float]:
    """(seconds to the first batch, images/s after it) of one epoch."""
    start = time.perf_counter()
    it = iter(loader)
    first = next(it)
    t_first = time.perf_counter() - start
    count, t0 = 0, time.perf_counter()
    for images, _ in it:
        count += len(images)
    del first
    return t_first, count / (time.perf_counter() - t0)


def stack_collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The hand-written alternative: plain torch.stack (no shared-memory output in workers)."""
    return torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch], dtype=torch.int64)


def collate_speed(fn, items: list, repeats: int = 50) -> float:
    """Batches/s of a collate function on one batch of items, in this process."""
    fn(items)
    start = time.perf_counter()
    for _ in range(repeats):
        fn(items)
    return repeats / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="image-folder tree or .tar.gz (default: synthetic images)")
    p.add_argument("--data-dir", default="./data", help="decoded cache folder for --data")
    p.add_argument("--images", type=int, default=50_000, help="images per pass (default 50000)")
    p.add_argument("--max-workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2, help="passes per configuration; the best is shown (default 2)")
    args = p.parse_args()

    if args.data:
        d = load_data(args.data, args.data_dir)
        x, y = d.train_x[: args.images], d.train_y[: args.images]
        source = f"{d.source}, first {len(x):,} training images"
    else:
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 10, args.images)
        source = f"{len(x):,} synthetic random 32x32 images"
    mean, _ = channel_stats(x)
    print(f"source: {source}; batch size {args.batch_size}; best of {args.repeats} passes; "
          f"torch {torch.__version__}; {os.cpu_count()} CPUs")
    print(f"1-min load average before: {os.getloadavg()[0]:.2f} (other busy processes lower the numbers)\n")

    bare = max(bare_pipeline(x, mean) for _ in range(args.repeats))
    rows = [("bare pipeline, 1 core (no DataLoader)", "-", f"{bare:,.0f}")]
    dataset = AugmentedDataset(x, y, build_train_transform(mean), seed=0)
    for workers in range(args.max_workers + 1):
        loader = make_loader(dataset, args.batch_size, shuffle=True, workers=workers, drop_last=True)
        passes = []
        for epoch in range(args.repeats):  # persistent workers: later passes reuse them
            dataset.set_epoch(epoch)
            passes.append(loader_pass(loader))
        first, rate = passes[0][0], max(rate for _, rate in passes)
        rows.append((f"training loader, {workers} worker{'s' if workers != 1 else ''}", f"{first:.2f}", f"{rate:,.0f}"))
        del loader

    print("| configuration | s to first batch (1st pass) | images/s |\n| --- | ---: | ---: |")
    for row in rows:
        print(f"| {' | '.join(row)} |")

    items = [dataset[i] for i in range(args.batch_size)]
    workers = min(max(args.max_workers, 1), 2)
    print(f"\n| collate ({args.batch_size} uint8 3x32x32 items) | main process, batches/s "
          f"| loader with {workers} workers, images/s |\n| --- | ---: | ---: |")
    for name, fn in (("torch default_collate", default_collate), ("torch.stack + torch.tensor", stack_collate)):
        loader = make_loader(dataset, args.batch_size, shuffle=True, workers=workers, drop_last=True)
        loader.collate_fn = fn  # allowed before the first iteration
        rate = max(loader_pass(loader)[1] for _ in range(args.repeats))
        print(f"| {name} | {collate_speed(fn, items):,.0f} | {rate:,.0f} |")
        del loader
    print(f"\n1-min load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
