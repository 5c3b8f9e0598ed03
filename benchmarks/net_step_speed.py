"""The bare training step of several nets under one recipe, alternated in one process, so a host whose speed
swings moves each net alike: what a change to a net (an activation, a layout) costs per image, apart from the
accuracy it buys. The step is time_to_accuracy.py's `step_speed` (the recipe's layout, precision and batch size)
on a random uint8 batch (the speed does not depend on the pixels); the order of the nets reverses every round.

    .venv/bin/python benchmarks/net_step_speed.py --nets s7 s7_cand_e --config configs/s7.yaml \\
        --out results/step-speed-cpu/gelu.json --where "CPU: ..., otherwise idle"

Prints each measurement, then a markdown table (median img/s, and each net's median ratio to the first net over
the rounds, paired within a round), and writes the measurements as JSON with --where.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(nets: list[str], config: str, rounds: int, steps: int) -> list[dict]:
    """One row per (round, net): images/s of `steps` timed bare steps after three untimed ones."""
    import torch

    from time_to_accuracy import step_speed  # benchmarks/ is on sys.path as this file's folder
    from trainer.config import resolve
    from trainer.memory import keep_freed_memory
    from trainer.precision import resolve_precision

    keep_freed_memory()  # as the trainer runs
    cfgs = {net: resolve(["--config", config, "--model", net]) for net in nets}
    g = torch.Generator().manual_seed(0)
    batch = cfgs[nets[0]].batch_size
    x8 = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    precision, _ = resolve_precision(cfgs[nets[0]].mixed_precision)
    stats = [125.0] * 3, [63.0] * 3
    rows = []
    for r in range(rounds):
        for net in (nets if r % 2 == 0 else nets[::-1]):
            speed = step_speed(cfgs[net], x8, y, *stats, precision, 10, steps=steps, warmup=3)
            rows.append({"round": r, "net": net, "precision": precision, "batch_size": batch,
                         "images_per_s": speed["step_images_per_s"]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def summary(rows: list[dict], nets: list[str]) -> dict[str, dict[str, float]]:
    """Per net: the median img/s, and the median over rounds of its img/s over the first net's in that round."""
    speed = {(r["round"], r["net"]): r["images_per_s"] for r in rows}
    rounds = sorted({r["round"] for r in rows})
    return {net: {"median_images_per_s": statistics.median(speed[k, net] for k in rounds),
                  "median_ratio_to_first": statistics.median(speed[k, net] / speed[k, nets[0]] for k in rounds)}
            for net in nets}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", nargs="+", required=True, help="registered nets; the first is the reference")
    p.add_argument("--config", default="configs/s7.yaml", help="the recipe every net runs (default configs/s7.yaml)")
    p.add_argument("--rounds", type=int, default=8, help="rounds of every net, order reversed each round (default 8)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per measurement (default 8)")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--where", default="", help="the machine and what else ran on it, stored with the figures")
    args = p.parse_args()
    if len(args.nets) < 2 or args.rounds < 1 or args.steps < 1:
        p.error("--nets needs two nets or more, --rounds and --steps at least 1")
    rows = measure(args.nets, args.config, args.rounds, args.steps)
    med = summary(rows, args.nets)
    print(f"\n| net | img/s (median of {args.rounds}) | img/s against {args.nets[0]} (median of paired rounds) |")
    print("|---|---|---|")
    for net, m in med.items():
        print(f"| {net} | {m['median_images_per_s']:,.0f} | {m['median_ratio_to_first']:.2f}x |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"where": args.where, "config": args.config, "steps": args.steps,
                                          "rows": rows, "medians": med}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
