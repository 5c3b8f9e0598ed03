"""Training images/second and seconds per epoch of the three nets on this machine's CPU.

Each net trains two epochs of its default recipe on a fixed subset of the training split
(W&B disabled, default workers); the second, warm epoch gives images/second, from which a full
50,000-image epoch (plus the 10,000-image test pass, scaled the same way) is estimated.

    python benchmarks/cpu_throughput.py --data ../shared/data/cifar10-jpeg.tar.gz [--subset 5120]
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    import models
    from trainer.tracking import read_metrics

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None)
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--subset", type=int, default=5120, help="training images per epoch")
    p.add_argument("--test-subset", type=int, default=1000)
    p.add_argument("--models", nargs="+", default=list(models.MODEL_NAMES))
    args = p.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").is_file() else platform.processor()
    print(f"{time.strftime('%Y-%m-%d')}, {cpu}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; {args.subset} training images/epoch, epoch 2 of 2 measured\n")
    print("| model | train img/s | test img/s | est. s per 50k-image epoch + 10k test |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as out:
        for name in args.models:
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
