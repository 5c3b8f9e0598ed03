"""The bare training step with glibc's default allocator and with `--keep-freed-memory` (trainer/memory.py),
each net in fresh processes, the two settings alternated: images/s, and per step the page faults and the
seconds spent in the kernel, which is what the setting removes. The step is time_to_accuracy.py's
`step_speed` with each net's own recipe (configs/<net>.yaml: layout, precision, batch size) on a random uint8
batch (the speed does not depend on the pixels).

    .venv/bin/python benchmarks/allocator_speed.py --out results/allocator-cpu/allocator.json [--rounds 2]

Prints a markdown table and writes the measurements as JSON (with the machine, and what else ran beside it
when --where says so).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
NETS = ("s7", "s7_strided", "s7_dilated")
MODES = ("default", "keep")


def child(net: str, mode: str, steps: int) -> dict:
    """One measurement in this (fresh) process."""
    import torch

    from time_to_accuracy import step_speed  # benchmarks/ is on sys.path as this file's folder
    from trainer.config import resolve
    from trainer.memory import keep_freed_memory
    from trainer.precision import resolve_precision

    if mode == "keep":
        keep_freed_memory()
    cfg = resolve(["--model", net])  # the net's recipe, as `make train MODEL=net` would run it
    g = torch.Generator().manual_seed(0)
    x8 = torch.randint(0, 256, (cfg.batch_size, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (cfg.batch_size,), generator=g)
    precision, _ = resolve_precision(cfg.mixed_precision)
    stats = [125.0] * 3, [63.0] * 3
    step_speed(cfg, x8, y, *stats, precision, 10, steps=2, warmup=3)  # the heap grows to the step's peak here
    before = resource.getrusage(resource.RUSAGE_SELF)
    speed = step_speed(cfg, x8, y, *stats, precision, 10, steps=steps, warmup=1)
    after = resource.getrusage(resource.RUSAGE_SELF)
    total = steps + 1
    return {"net": net, "mode": mode, "precision": precision, "batch_size": cfg.batch_size,
            "images_per_s": speed["step_images_per_s"],
            "page_faults_per_step": (after.ru_minflt - before.ru_minflt) / total,
            "kernel_seconds_per_step": (after.ru_stime - before.ru_stime) / total,
            "user_seconds_per_step": (after.ru_utime - before.ru_utime) / total,
            "peak_rss_mib": after.ru_maxrss / 1024}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--rounds", type=int, default=2, help="alternations of the two settings per net (default 2)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement (default 20)")
    p.add_argument("--where", default="", help="the machine and what else ran on it, stored with the figures")
    p.add_argument("--child", nargs=2, metavar=("NET", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.steps)))
        return 0
    rows = []
    for net in NETS:
        for _ in range(args.rounds):
            for mode in MODES:
                out = subprocess.run([sys.executable, __file__, "--child", net, mode, "--steps", str(args.steps),
                                      "--out", args.out], cwd=ROOT, capture_output=True, text=True, check=True)
                rows.append(json.loads(out.stdout.splitlines()[-1]))
                print(rows[-1], flush=True)
    print("\n| net | allocator | img/s (median) | page faults / step | kernel s / step | user s / step | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for net in NETS:
        for mode in MODES:
            mine = [r for r in rows if r["net"] == net and r["mode"] == mode]
            med = {k: statistics.median(r[k] for r in mine) for k in
                   ("images_per_s", "page_faults_per_step", "kernel_seconds_per_step", "user_seconds_per_step",
                    "peak_rss_mib")}
            summary[f"{net}/{mode}"] = med
            print(f"| {net} | {mode} | {med['images_per_s']:,.0f} | {med['page_faults_per_step']:,.0f} | "
                  f"{med['kernel_seconds_per_step']:.3f} | {med['user_seconds_per_step']:.3f} | "
                  f"{med['peak_rss_mib']:,.0f} |")
        ratio = summary[f"{net}/keep"]["images_per_s"] / summary[f"{net}/default"]["images_per_s"]
        print(f"{net}: keep / default = {ratio:.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"where": args.where, "machine": platform.processor() or platform.machine(),
                                          "rows": rows, "medians": summary}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
