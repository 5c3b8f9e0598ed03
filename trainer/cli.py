"""`s7`: the project's command-line tools (check, summary, stats, show-augment, evaluate, predict, report)."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None,
                   help="image-folder tree DIR/{train,test}/<class>/* or a .tar/.tar.gz of one "
                        "(default: download the original CIFAR-10 with torchvision)")
    p.add_argument("--data-dir", default="./data", help="where downloads and decoded caches go (default ./data)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="s7", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("check", help="check a model against the assignment's rules; exit 0 only if all pass")
    c.add_argument("model", help="registered name (s7, s7_strided, s7_dilated) or module:Class")

    s = sub.add_parser("summary", help="torchinfo summary of a model on a 1x3x32x32 input")
    s.add_argument("model", help="registered name or module:Class")

    st = sub.add_parser("stats", help="image counts and per-channel mean/std of the training split")
    _add_data_args(st)

    sa = sub.add_parser("show-augment", help="PNG grid: training images beside augmented draws")
    _add_data_args(sa)
    sa.add_argument("--out", default="augment.png", help="PNG to write (default augment.png)")
    sa.add_argument("--n", type=int, default=8, help="number of images (rows)")
    sa.add_argument("--draws", type=int, default=6, help="augmented draws per image (columns)")
    sa.add_argument("--seed", type=int, default=0)

    ev = sub.add_parser("evaluate", help="test and per-class accuracy of a run folder or checkpoint")
    ev.add_argument("checkpoint", help="run folder, checkpoint folder or .safetensors weights")
    _add_data_args(ev)
    ev.add_argument("--model", default=None, help="model name when the weights file does not say it")
    ev.add_argument("--batch-size", type=int, default=500)

    pr = sub.add_parser("predict", help="class and probability for image files (any size, resized to 32x32 RGB)")
    pr.add_argument("checkpoint", help="run folder, checkpoint folder or .safetensors weights")
    pr.add_argument("images", nargs="+", help="image files")
    pr.add_argument("--model", default=None, help="model name when the weights file does not say it")

    rp = sub.add_parser("report", help="rebuild plots and report.md of a run folder from its files alone")
    rp.add_argument("run_dir")
    return p


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

    if n < 1 or draws < 1:
        raise ValueError("--n and --draws must be at least 1")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check":
            from models.rules import check_command
            return check_command(args.model)
        if args.command == "summary":
            from models.rules import summary_command
            return summary_command(args.model)
        if args.command == "stats":
            return stats_command(args.data, args.data_dir)
        if args.command == "show-augment":
            return show_augment_command(args.data, args.data_dir, args.out, args.n, args.draws, args.seed)
        if args.command == "evaluate":
            from trainer.evaluate import evaluate_command
            return evaluate_command(args.checkpoint, args.data, args.data_dir, args.model, args.batch_size)
        if args.command == "predict":
            from trainer.evaluate import predict_command
            return predict_command(args.checkpoint, args.images, args.model)
        if args.command == "report":
            from trainer.report import report_command
            return report_command(args.run_dir)
    except (FileNotFoundError, ValueError) as e:  # user-facing input errors: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
