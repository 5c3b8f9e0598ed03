"""Training images/second and seconds per epoch on this machine's CPU: of the three nets, or (--options) of `s7`
under each CPU speed option.

Nets (default): each net trains two epochs of its default recipe on a fixed subset of the training split
(W&B disabled, default workers); the second, warm epoch gives images/second, from which a full 50,000-image
epoch (plus the 10,000-image test pass, scaled the same way) is estimated.

    python benchmarks/cpu_throughput.py --data ../shared/data/cifar10-jpeg.tar.gz [--subset 5120]

Options (--options): `s7`'s default recipe under every combination of channels_last on/off, torch threads 1/2 and
--compile none/default, each a run of the harness benchmarks/time_to_accuracy.py (--device cpu --throughput): the
training loop's images/second (second epoch) and the bare training step's, one JSON line per combination in
--out-jsonl, then a table. Run it on a quiet machine: other jobs on the cores make every figure lower.

    python benchmarks/cpu_throughput.py --options --data ../shared/data/cifar10-jpeg.tar.gz \\
        --out-jsonl results/speed/cpu.jsonl
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def machine_line(args) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").is_file() else platform.processor()
    return (f"{time.strftime('%Y-%m-%d')}, {cpu}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
            f"{args.subset} training images/epoch, epoch 2 of 2 measured")


def nets(args) -> None:
    """The three nets' default recipes, two epochs each."""
    import models
    from trainer.runfolder import read_metrics

    print("| model | train img/s | test img/s | est. s per 50k-image epoch + 10k test |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as out:
        for name in args.models or list(models.MODEL_NAMES):
            cmd = [sys.executable, str(ROOT / "trainer/main.py"), "--model", name, "--wandb-mode", "disabled",
                   "--epochs", "2", "--train-subset", str(args.subset), "--test-subset", str(args.test_subset),
                   "--out", out, "--name", name, "--data-dir", args.data_dir]
            if args.data:
                cmd += ["--data", args.data]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            last = read_metrics(Path(out) / name)[-1]
            train_ips = last["images_per_second"]
            test_ips = last["test_images"] / last["test_seconds"]
            est = 50_000 / train_ips + 10_000 / test_ips
            print(f"| {name} | {train_ips:,.0f} | {test_ips:,.0f} | {est:,.0f} s ({est / 60:.1f} min) |", flush=True)


OPTIONS = {"channels_last": ("true", "false"), "threads": ("2", "1"), "compile": ("none", "default")}


def options(args) -> None:
    """Every combination of OPTIONS for `s7`, through the harness; one JSON line each, then a table."""
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for cl, threads, mode in itertools.product(*OPTIONS.values()):
            name = f"s7-cl{cl}-t{threads}-{mode}"
            jsonl = Path(out) / "lines.jsonl"
            cmd = [sys.executable, str(ROOT / "benchmarks/time_to_accuracy.py"), "--device", "cpu", "--throughput",
                   "--batches", str(args.batches), "--warmup", str(args.warmup), "--out", out, "--name", name,
                   "--data-dir", args.data_dir, "--out-jsonl", str(jsonl)]
            cmd += ["--data", args.data] if args.data else []
            cmd += ["--", "--epochs", "2", "--train-subset", str(args.subset), "--test-subset",
                    str(args.test_subset), "--channels-last", cl, "--threads", threads, "--compile", mode]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            rec = json.loads(jsonl.read_text().splitlines()[-1])
            rec["load_average"] = os.getloadavg()[0]
            rows.append(rec)
            if args.out_jsonl:
                Path(args.out_jsonl).parent.mkdir(parents=True, exist_ok=True)
                with open(args.out_jsonl, "a") as f:
                    f.write(json.dumps(rec) + "\n")
    print("| channels_last | torch threads | compile | loop img/s (epoch 2) | bare step img/s | start-up s | "
          "first step s over the second | load average after |")
    print("|---" * 8 + "|")
    for r in rows:
        print(f"| {r['channels_last']} | {r['threads']} | {r['compile']} | {r['loop_images_per_s']:,.0f} | "
              f"{r['step_images_per_s']:,.0f} | {r['startup_seconds']:.1f} | "
              f"{r['first_step_excess_seconds'] or 0:.1f} | {r['load_average']:.1f} |", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None)
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--subset", type=int, default=5120, help="training images per epoch")
    p.add_argument("--test-subset", type=int, default=1000)
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--options", action="store_true", help="s7 under each CPU speed option instead of the nets")
    p.add_argument("--batches", type=int, default=20, help="--options: timed batches of the bare step")
    p.add_argument("--warmup", type=int, default=3, help="--options: untimed steps before them")
    p.add_argument("--out-jsonl", default=None, help="--options: append each JSON line to this file")
    args = p.parse_args()
    print(machine_line(args) + "\n")
    if args.options:
        options(args)
    else:
        nets(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
