"""Regenerate what the README shows of the shipped weights (models/weights/*.safetensors) beyond accuracy:
results/explain (class activation maps of s7 on one test image per class), results/export (s7 as ONNX, fp32 and
int8, measured) and results/robustness (all three nets under corruptions, full test split). Each step is an `s7`
command, run in this process and printed as a user would type it. `make shipped-results` runs this and then the
README builder; run it again whenever the shipped weights change.

    .venv/bin/python benchmarks/shipped_nets.py --data ../shared/data/cifar10-jpeg.tar.gz --data-dir data
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "results"
NETS = ("s7", "s7_strided", "s7_dilated")


def run(argv: list[str], transcript: Path | None = None, shown: str | None = None) -> None:
    """`s7 ARGV` in this process; with `transcript`, the command (as `shown`, e.g. with a shell glob for the
    files it expands to) and its output are also written there."""
    from trainer.tools import cli

    line = "$ s7 " + (shown or shlex.join(argv))
    print(line, flush=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(argv)
    print(out.getvalue(), end="", flush=True)
    if rc != 0:
        raise SystemExit(f"{line} failed with exit status {rc}")
    if transcript is not None:
        transcript.write_text(f"{line}\n{out.getvalue()}")


def explain_images(data: str, data_dir: str, folder: Path) -> list[str]:
    """The first test image of each class, saved losslessly as folder/<class>/<index>.png (the folder names
    give `s7 explain` the true class)."""
    import numpy as np
    from PIL import Image

    from trainer.dataset import load_data

    d = load_data(data, data_dir)
    paths = []
    for c, name in enumerate(d.classes):
        i = int(np.flatnonzero(d.test_y == c)[0])
        path = folder / name / f"test-{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(d.test_x[i]).save(path)
        paths.append(str(path.relative_to(ROOT)))
    return paths


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the CIFAR-10 copy (image-folder tree or archive)")
    p.add_argument("--data-dir", default="data", help="decoded cache folder (default data)")
    p.add_argument("--only", choices=("explain", "export", "robustness"), action="append",
                   help="run only these steps (repeatable; default all)")
    p.add_argument("--net", choices=NETS, action="append",
                   help="robustness of only these nets (repeatable; default all: after shipping new weights of some)")
    p.add_argument("--limit", type=int, default=0,
                   help="robustness on a fixed random subset of N test images (default 0: all 10,000)")
    args = p.parse_args()
    steps = args.only or ["explain", "export", "robustness"]
    data = ["--data", args.data, "--data-dir", args.data_dir]
    weights = {net: f"models/weights/{net}.safetensors" for net in NETS}
    os.chdir(ROOT)  # paths in the committed files are relative to the repository
    if "explain" in steps:
        images = explain_images(args.data, args.data_dir, RESULTS / "explain" / "images")
        assert images == sorted(images)  # what the shell's glob gives
        run(["explain", weights["s7"], *images, "--out", "results/explain/s7.png", "--top", "3"],
            transcript=RESULTS / "explain" / "s7.txt", shown=f"explain {weights['s7']} results/explain/images/*/*.png "
                                                              "--out results/explain/s7.png --top 3")
    if "export" in steps:
        run(["export", weights["s7"], "--onnx", "results/export/s7.onnx", "--int8", *data],
            transcript=RESULTS / "export" / "s7.txt")
    if "robustness" in steps:
        for net in args.net or NETS:
            run(["robustness", weights[net], *data, "--out", "results/robustness",
                 *(["--limit", str(args.limit)] if args.limit else [])])
    return 0


if __name__ == "__main__":
    sys.exit(main())
