"""The training step fed by the training loader with 0, 1 and 2 worker processes, against the bare step on one
resident batch, in one process on the CPU: what `--workers -1` resolves to there (trainer.loader.resolve_workers).

On a CPU the step's torch threads already use every core, so a worker process augmenting beside them takes cores
from the step; augmenting in the training process (0 workers) adds the augmentation's time instead. The rounds
alternate the settings, each round between two bare-step measurements (its reference), so a drift of the
machine's speed falls on all of them. The step is time_to_accuracy.py's `bare_step` with the net's recipe
(`--model`, or `--config`); the loader is the trainer's (its augmentation, seeding and collation).

    .venv/bin/python benchmarks/loader_workers.py --data ../shared/data/cifar10-jpeg.tar.gz --data-dir data \\
        --out results/loader-workers-cpu/loader_workers.json --where "what else ran"

Without --data the loader augments 50,000 random images (the speed does not depend on the pixels).
Prints a markdown table and writes the measurements as JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed_steps(step, batches, steps: int, batch_size: int) -> float:
    """Images/s of `steps` steps over the (x, y) pairs `batches` yields."""
    t = time.perf_counter()
    done = 0
    for x, y in batches:
        step(x, y)
        done += 1
        if done == steps:
            break
    if done < steps:
        raise SystemExit(f"the loader ran out after {done} of {steps} batches: give fewer --steps")
    return steps * batch_size / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    from trainer.tools.cli import non_negative_int, positive_int

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="s7", help="net whose recipe (configs/<net>.yaml) is measured")
    p.add_argument("--config", default=None, help="recipe YAML in place of the net's own")
    p.add_argument("--data", default=None, help="dataset the loader reads; without it, 50,000 random images")
    p.add_argument("--data-dir", default="data", help="cache folder of the decoded dataset")
    p.add_argument("--workers", type=non_negative_int, nargs="+", default=[0, 1, 2], help="worker counts to compare")
    p.add_argument("--steps", type=positive_int, default=60, help="timed steps per measurement")
    p.add_argument("--rounds", type=positive_int, default=2, help="rounds, each over every setting")
    p.add_argument("--out", type=Path, default=None, help="JSON file to write (refused if it exists)")
    p.add_argument("--where", default="", help="what else ran on the machine, for the JSON")
    args = p.parse_args(argv)
    if args.out is not None and args.out.exists():
        p.error(f"--out: {args.out} exists; remove it or name another file")

    import numpy as np
    import torch

    from time_to_accuracy import bare_step  # benchmarks/ is on sys.path as this file's folder
    from trainer.augment import build_train_transform
    from trainer.config import resolve
    from trainer.dataset import channel_stats, load_data
    from trainer.loader import AugmentedDataset, make_loader
    from trainer.memory import keep_freed_memory
    from trainer.precision import resolve_precision
    from trainer.text import counted

    cfg = resolve(["--model", args.model] + (["--config", args.config] if args.config else []))
    if cfg.keep_freed_memory:
        keep_freed_memory()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if args.data:
        data = load_data(args.data, args.data_dir)
        images, labels, source = data.train_x, data.train_y, f"{args.data} ({len(data.train_y):,} training images)"
    else:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8)
        labels, source = rng.integers(0, 10, len(images)), "50,000 random 32x32 images"
    mean, std = channel_stats(images)
    precision, reason = resolve_precision(cfg.mixed_precision)
    device = torch.device("cpu")
    step = bare_step(cfg, device, mean, std, precision, 10)
    resident = (torch.from_numpy(images[:cfg.batch_size]).permute(0, 3, 1, 2).contiguous(),
                torch.from_numpy(np.asarray(labels[:cfg.batch_size], dtype=np.int64)))
    for _ in range(5):  # warm-up: first-use allocations and oneDNN primitive creation
        step(*resident)
    loaders = {w: make_loader(AugmentedDataset(images, labels, build_train_transform(mean, **cfg.augment_kwargs()),
                                               seed=cfg.seed), cfg.batch_size, shuffle=True, workers=w,
                              drop_last=True, seed=cfg.seed) for w in args.workers}
    print(f"{args.model}, recipe {cfg.recipe or 'custom'}, batch {cfg.batch_size}, {precision} ({reason}), "
          f"{torch.get_num_threads()} torch threads; {source}; {args.steps} timed steps per measurement")

    def bare() -> float:
        return timed_steps(step, iter(lambda: resident, None), args.steps, cfg.batch_size)

    def fed(workers: int) -> float:
        it = iter(loaders[workers])
        for _ in range(2):  # worker start-up and the prefetch queue's first fill stay out of the timing
            step(*next(it))
        return timed_steps(step, it, args.steps, cfg.batch_size)

    rounds = []
    for r in range(args.rounds):
        before = bare()
        loops = {w: fed(w) for w in args.workers}
        after = bare()
        reference = (before + after) / 2
        rounds.append({"bare_before": before, "bare_after": after,
                       "fed": {str(w): v for w, v in loops.items()},
                       "ratio": {str(w): v / reference for w, v in loops.items()}})
        print(f"round {r + 1}: bare step {before:,.0f} / {after:,.0f} img/s; "
              + "; ".join(f"{counted(w, 'worker')} {v:,.0f} img/s ({100 * v / reference:.1f} %)" for w, v in loops.items()),
              flush=True)
    medians = {str(w): statistics.median(rd["ratio"][str(w)] for rd in rounds) for w in args.workers}
    print("\n| loader workers | training step fed by the loader, % of the bare step (median of rounds) |\n|---|---|")
    for w in args.workers:
        print(f"| {w} | {100 * medians[str(w)]:.1f} % |")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record = {"where": args.where, "machine": platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
                  "model": args.model, "recipe": cfg.recipe, "batch_size": cfg.batch_size, "precision": precision,
                  "threads": torch.get_num_threads(), "source": source, "steps": args.steps, "rounds": rounds,
                  "median_ratio": medians}
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
