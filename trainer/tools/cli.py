"""`s7`: the project's command-line tools (check, summary, stats, show-augment, evaluate, predict, report, explain,
export, robustness, compare, sweep)."""
from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from trainer.memory import keep_freed_memory

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

OUTPUTS = Path("outputs")  # default home of the tools' outputs, git-ignored


class UsageError(ValueError):
    """A command line argparse refused, as the one line `main` prints (exit status 2)."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one `error:` line, as every other input error is, naming the
    subcommand or the flag and value, instead of exiting with the usage."""

    subcommands: dict[str, argparse.ArgumentParser]  # name -> its parser (set by build_parser)

    def error(self, message: str) -> NoReturn:
        m = re.fullmatch(r"argument (\S+): (.*)", message, flags=re.S)
        if m is None:
            raise UsageError(f"{self.prog}: {message}")
        flag, rest = m.groups()
        # the types below say "VALUE: what is wrong", read as "--flag VALUE: what is wrong"
        raise UsageError(f"{flag} {rest}" if re.match(r"\S+: ", rest) else f"{flag}: {rest}")


@dataclass(frozen=True)
class Count:
    """The argparse type of every count flag: a whole number of at least `least` (and at most `most`, if set);
    `zero` says what 0 means where 0 is allowed."""

    least: int = 1
    zero: str | None = None
    most: int | None = None

    def __call__(self, text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text}: not a whole number") from None
        if n < self.least:
            meaning = f" ({self.zero})" if self.zero else ""
            raise argparse.ArgumentTypeError(f"{text}: must be {self.least}{meaning} or more")
        if self.most is not None and n > self.most:
            raise argparse.ArgumentTypeError(f"{text}: must be {self.most} or less")
        return n


positive_int = Count(1)
non_negative_int = Count(0)


@dataclass(frozen=True)
class Output:
    """The argparse type of every path a tool writes to, checked before any work: a `suffix` file (never an
    existing folder, which savefig would turn into FOLDER.png beside it) or, with suffix None, a folder (never
    an existing file). `none_ok`: "" means write nothing."""

    suffix: str | None
    none_ok: bool = False

    def __call__(self, text: str) -> str:
        if text == "" and self.none_ok:
            return text
        path = Path(text)
        if self.suffix is None and path.exists() and not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text}: exists and is not a folder")
        if self.suffix is not None and path.is_dir():
            raise argparse.ArgumentTypeError(f"{text}: is a folder; name a {self.suffix} file")
        if self.suffix is not None and path.suffix.lower() != self.suffix:
            raise argparse.ArgumentTypeError(f"{text}: must end in {self.suffix}")
        above = next((p for p in path.absolute().parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise argparse.ArgumentTypeError(f"{text}: {above} is a file, not a folder")
        return text


png_file = Output(".png")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None,
                   help="image-folder tree DIR/{train,test}/<class>/* or a .tar/.tar.gz of one "
                        "(default: download the original CIFAR-10 with torchvision)")
    p.add_argument("--data-dir", default="./data", help="where downloads and decoded caches go (default: %(default)s)")


def _add_weights_args(p: argparse.ArgumentParser) -> None:
    """The weights a command reads (trainer.tools.evaluate.load_classifier), and the net when nothing names it."""
    p.add_argument("checkpoint", help="run folder, checkpoint folder or .safetensors weights, or (W&B online) a "
                                      "model artifact: ENTITY/PROJECT/NAME:ALIAS or wandb-artifact://...")
    p.add_argument("--model", default=None,
                   help="the net the weights belong to, where nothing names it (default: the one the weights' "
                        "metadata, the checkpoint's state.json or the run's config.yaml names; another is refused)")


# size: the parsers of all twelve subcommands, each flag with its help and type, in one module
def build_parser() -> Parser:
    """Every subcommand and flag; counts and output paths are checked here, before any work."""
    p = Parser(prog="s7", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p.subcommands = sub.choices

    _model_and_data_commands(sub)
    _weights_commands(sub)
    _run_folder_commands(sub)
    return p


def _model_and_data_commands(sub) -> None:
    """check, summary, stats, show-augment."""
    c = sub.add_parser("check", help="check a model against the assignment's rules; exit 0 only if all pass")
    c.add_argument("model", help="registered name (s7, s7_strided, s7_dilated) or module:Class, an nn.Module "
                                 "class built with no arguments")

    s = sub.add_parser("summary", help="torchinfo summary of a model on a 1x3x32x32 input")
    s.add_argument("model", help="registered name or module:Class, an nn.Module class built with no arguments")

    st = sub.add_parser("stats", help="image counts and per-channel mean/std of the training split")
    _add_data_args(st)

    sa = sub.add_parser("show-augment", help="PNG grid: training images beside augmented draws")
    _add_data_args(sa)
    sa.add_argument("--out", type=png_file, default=str(OUTPUTS / "augment.png"),
                    help="PNG to write (default: %(default)s)")
    sa.add_argument("--n", type=positive_int, default=8,
                    help="training images shown, one per row (default: %(default)s)")
    sa.add_argument("--draws", type=positive_int, default=6,
                    help="augmented draws per image, one per column (default: %(default)s)")
    sa.add_argument("--seed", type=non_negative_int, default=0,
                    help="seed of the images picked and of the draws (default: %(default)s)")



def _weights_commands(sub) -> None:
    """The commands that read a net's weights: evaluate, predict, explain, export, robustness."""
    ev = sub.add_parser("evaluate", help="test and per-class accuracy of a run folder or checkpoint")
    _add_weights_args(ev)
    _add_data_args(ev)
    ev.add_argument("--batch-size", type=positive_int, default=500,
                    help="test images per forward pass (default: %(default)s)")
    ev.add_argument("--tta-shift", type=Count(0, "no shift TTA", 8), default=0, metavar="PX",
                    help="also report shift TTA (flip pairs of the image and of copies moved by +-PX px; "
                         "six passes); default: 0, none")

    pr = sub.add_parser("predict", help="class and probability for image files (any size, resized to 32x32 RGB)",
                        description="Per image: its class and that class's probability with flip TTA (softmax of "
                                    "the mean logits of the image and its mirror); `s7 explain` shows the plain pass.")
    _add_weights_args(pr)
    pr.add_argument("images", nargs="+", help="image files")

    ex = sub.add_parser("explain", help="PNG: images with the class activation maps of their top classes",
                        description="Per image: the image, its true class when known, and the class activation "
                                    "maps of its top classes (the class map entering global average pooling, "
                                    "upsampled to 32x32 and overlaid; its mean is the logit). Plain forward pass, "
                                    "no TTA.")
    _add_weights_args(ex)
    ex.add_argument("images", nargs="+", help="image files (any size, resized to 32x32 RGB as `s7 predict` does)")
    ex.add_argument("--out", type=png_file, required=True, help="PNG to write (required)")
    ex.add_argument("--top", type=positive_int, default=3, help="classes shown per image, 1-3 (default: %(default)s)")
    ex.add_argument("--labels", default=None,
                    help="true classes, comma-separated, one per image ('-' = unknown); default: the image's folder "
                         "name when it is a class name (as in DATA/test/<class>/), else unknown")

    xp = sub.add_parser("export", help="ONNX file with normalisation inside and a dynamic batch axis",
                        description="Input 'image': uint8 RGB pixels, NHWC (N, 32, 32, 3), 0-255, any batch size; "
                                    "the mean/std the weights were trained with are applied inside the graph. "
                                    "Output 'logits': (N, classes), no TTA. Class names, mean and std are in the "
                                    "model's metadata (custom_metadata_map). Exported with torch's dynamo exporter. "
                                    "Needs the optional 'onnx' extra (onnx, onnxscript, onnxruntime): "
                                    "pip install 's7[onnx]'.")
    _add_weights_args(xp)
    xp.add_argument("--onnx", type=Output(".onnx"), required=True, help="ONNX file to write, FILE.onnx (required)")
    xp.add_argument("--int8", action="store_true",
                    help="also write FILE.int8.onnx, static int8 (onnxruntime.quantization, calibrated on 1,000 "
                         "training images: needs --data) (default: off)")
    xp.add_argument("--data", default=None,
                    help="image-folder tree or archive (as for evaluate): measure each file on its test split "
                         "(accuracy, largest logit difference to PyTorch, CPU latency) into FILE.json, and "
                         "calibrate --int8 on its training split (default: export only)")
    xp.add_argument("--data-dir", default="./data", help="where downloads and decoded caches go (default: %(default)s)")

    rb = sub.add_parser("robustness", help="test accuracy under 6 corruptions at 3 severities (table, JSON, plot)",
                        description="Accuracy (no TTA) on the test split under Gaussian noise, Gaussian blur, JPEG, "
                                    "brightness, contrast and pixelation at 3 fixed severities each, built from "
                                    "albumentations and seeded; writes OUT/<model>.json, .md and .png.")
    _add_weights_args(rb)
    _add_data_args(rb)
    rb.add_argument("--out", type=Output(None), default=str(OUTPUTS / "robustness"),
                    help="folder for <model>.json/.md/.png (default: %(default)s)")
    rb.add_argument("--limit", type=Count(0, zero="all"), default=0,
                    help="a fixed random subset of N test images, at most the split's size; 0 = all "
                         "(default: %(default)s)")
    rb.add_argument("--seed", type=non_negative_int, default=0, help="seed of the noise draws (default: %(default)s)")



def _run_folder_commands(sub) -> None:
    """The commands that read or make run folders: report, compare, sweep."""
    rp = sub.add_parser("report", help="rebuild plots and report.md of a run folder from its files alone")
    rp.add_argument("run_dir", help="run folder (with metrics.jsonl); report.md and the plots are rewritten in it")

    cp = sub.add_parser("compare", help="table and overlaid test curves of run folders, offline",
                        description="From the run folders alone (metrics.jsonl, config.yaml, facts.json, "
                                    "model/meta.json, run_info.json), no W&B server: model, recipe, "
                                    "params, RF, epochs, final and best test accuracy without and with flip TTA "
                                    "(best = the epoch with the highest test accuracy, picked on the test split: "
                                    "for reference only), epoch and seconds to the run's target accuracy, img/s, "
                                    "device, rule check; "
                                    "and one figure with every run's test accuracy and loss per epoch. A W&B "
                                    "offline run folder (RUN/wandb/offline-run-*) is read through the run folder "
                                    "that holds it, which has the same epochs: wandb ships no reader for its "
                                    ".wandb log, so one copied away from its run folder is refused.")
    cp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (or W&B offline run folders in them)")
    cp.add_argument("--out", type=Output(".png", none_ok=True), default=str(OUTPUTS / "compare.png"),
                    help="PNG of the overlaid curves, '' for none (default: %(default)s)")

    sw = sub.add_parser("sweep", help="run a W&B sweep file's search space here, trial after trial",
                        usage="s7 sweep SWEEP.yaml [--trials N] [--out DIR] [--seed S] [-- TRAINER FLAGS...]",
                        description="For a machine without a W&B server: each trial draws the sweep file's "
                                    "parameters at random (seeded; not bayes, no early termination), runs the "
                                    "command line the W&B agent would build from the file's `command`, plus the "
                                    "trainer flags after `--`, as a normal run folder OUT/trial-NN; then prints "
                                    "`s7 compare` of the trials and draws OUT/compare.png. Each trial's values and "
                                    "command go to OUT/trials.jsonl.")
    sw.add_argument("sweep_file", help="W&B sweep YAML (program, parameters, command), e.g. configs/sweep.yaml")
    sw.add_argument("--trials", type=positive_int, default=4, help="number of trials (default: %(default)s)")
    sw.add_argument("--out", type=Output(None), default=None,
                    help="folder of the trial run folders (default: runs/sweep-<file>-<time>)")
    sw.add_argument("--seed", type=non_negative_int, default=0,
                    help="seed of the parameter draws (default: %(default)s)")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line, or UsageError; a flag the subcommand lacks is named with the subcommand, not the
    top-level usage (argparse hands a subcommand's leftovers up to the top-level parser)."""
    p = build_parser()
    args, extra = p.parse_known_args(argv)
    if extra:
        p.subcommands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """`s7 COMMAND ...`: the exit status; a bad command line or input is one `error:` line on stderr and 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    trainer_flags: list[str] = []
    if argv[:1] == ["sweep"] and "--" in argv:  # `s7 sweep ... -- FLAGS`: FLAGS go to every trial, unparsed
        argv, trainer_flags = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    try:
        args = parse_args(argv)
        keep_freed_memory()  # the tools' inference over 10,000 images frees and reallocates large blocks too
        if args.command == "check":
            from trainer.tools.check import check_command
            return check_command(args.model)
        if args.command == "summary":
            from trainer.tools.check import summary_command
            return summary_command(args.model)
        if args.command == "stats":
            from trainer.tools.data import stats_command
            return stats_command(args.data, args.data_dir)
        if args.command == "show-augment":
            from trainer.tools.data import show_augment_command
            return show_augment_command(args.data, args.data_dir, args.out, args.n, args.draws, args.seed)
        if args.command == "evaluate":
            from trainer.tools.evaluate import evaluate_command
            return evaluate_command(args.checkpoint, args.data, args.data_dir, args.model, args.batch_size,
                                    args.tta_shift)
        if args.command == "predict":
            from trainer.tools.evaluate import predict_command
            return predict_command(args.checkpoint, args.images, args.model)
        if args.command == "report":
            from trainer.tools.report import report_command
            return report_command(args.run_dir)
        if args.command == "explain":
            from trainer.tools.explain import explain_command
            return explain_command(args.checkpoint, args.images, args.out, args.top, args.labels, args.model)
        if args.command == "export":
            from trainer.tools.export import export_command
            return export_command(args.checkpoint, args.onnx, args.int8, args.model, args.data, args.data_dir)
        if args.command == "robustness":
            from trainer.tools.robustness import robustness_command
            return robustness_command(args.checkpoint, args.data, args.data_dir, args.out, args.limit, args.seed,
                                      args.model)
        if args.command == "compare":
            from trainer.tools.compare import compare_command
            return compare_command(args.run_dirs, args.out)
        if args.command == "sweep":
            from trainer.tools.sweep import run_sweep
            return run_sweep(args.sweep_file, args.trials, args.out, args.seed, trainer_flags)
    except (FileNotFoundError, ValueError) as e:  # user-facing input errors, UsageError too: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
