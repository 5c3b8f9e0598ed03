"""`s7`: the project's command-line tools (check, summary, stats, show-augment, evaluate, predict, report)."""
from __future__ import annotations

import argparse
import os
import sys

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
            from trainer.dataset import stats_command
            return stats_command(args.data, args.data_dir)
        if args.command == "show-augment":
            from trainer.augment import show_augment_command
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
