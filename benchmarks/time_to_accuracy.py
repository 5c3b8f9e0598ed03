"""Time to accuracy: run trainer/main.py (one process, W&B disabled), then print per-epoch test accuracy
(without and with flip TTA) with cumulative wall time, the time to the target, the final epoch's accuracy, and
where the time went.

    python3 benchmarks/time_to_accuracy.py --model s7 --data cifar10-jpeg.tar.gz [--config configs/s7.yaml]
        [--throughput] [-- extra trainer flags]

On a GPU machine without albumentations/torchinfo, install the wheels first (see benchmarks/README.md).
--throughput also measures, in this process, the bare training loader (images/s with the run's workers)
and the bare GPU training step on a device-resident batch, so loader and step speeds sit side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_training(args: argparse.Namespace, extra: list[str]) -> tuple[Path, float, int]:
    name = args.name or f"{args.model}-{Path(args.config).stem if args.config else args.model}-tta"
    cmd = [sys.executable, str(ROOT / "trainer/main.py"), "--model", args.model, "--wandb-mode", "disabled",
           "--out", args.out, "--name", name, "--data-dir", args.data_dir, "--target-acc", str(args.target)]
    if args.data:
        cmd += ["--data", args.data]
    if args.config:
        cmd += ["--config", args.config]
    cmd += extra
    print("$", " ".join(cmd), flush=True)
    start = time.time()
    rc = subprocess.call(cmd)
    return Path(args.out) / name, time.time() - start, rc


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def print_table(run_dir: Path, target: float) -> dict:
    """Per-epoch table, time to `target` test accuracy (without and with flip TTA), final-epoch accuracy and
    where the time went; returns the time_to_accuracy.json fields."""
    from trainer.report import pct, run_results

    res = run_results(run_dir)  # the report's reading of the run folder (legacy rows upgraded)
    rows = res["rows"]
    val = any(r.get("val_acc") is not None for r in rows)
    print("\n| epoch | test acc % | test acc %, flip TTA |" + (" val acc % |" if val else "")
          + " train acc % (augmented) | epoch s | data wait s | test s | wall s |")
    print("|---" * (8 + val) + "|")
    for r in rows:
        print(f"| {r['epoch']} | {_pct(r['test_acc'])} | {_pct(r['test_acc_tta'])} |"
              + (f" {_pct(r.get('val_acc'))} |" if val else "")
              + f" {r['train_acc']:.2f} | {r['epoch_seconds']:.2f} | {r.get('data_wait_seconds', float('nan')):.2f} | "
              f"{r['test_seconds']:.2f} | {r['wall_seconds']:.1f} |")
    out = {
        "run": str(run_dir), "epochs": len(rows),
        "final_test_acc": res["final_test_acc"],
        "final_test_acc_tta": res["final_test_acc_tta"],
        "target": res["target_acc"],  # the run's own --target-acc, which run_training sets to `target`
        **{k: res[k] for k in ("epoch_to_target", "seconds_to_target", "epoch_to_target_tta", "seconds_to_target_tta")},
        "train_seconds": sum(r["train_seconds"] for r in rows),
        "data_wait_seconds": sum(r.get("data_wait_seconds", 0.0) for r in rows),
        "test_seconds": sum(r["test_seconds"] + r.get("val_seconds", 0.0) for r in rows),  # all evaluation
        "startup_seconds": rows[0]["wall_seconds"] - rows[0]["epoch_seconds"],
    }
    print()
    for how, suffix in (("no TTA", ""), ("flip TTA", "_tta")):
        epoch, seconds = out["epoch_to_target" + suffix], out["seconds_to_target" + suffix]
        print(f"time to {target:g}% ({how}): " + (f"{seconds:.1f} s (epoch {epoch})" if epoch else "not reached"))
    print(f"final test accuracy (epoch {res['epochs']}): {pct(out['final_test_acc'])} without TTA, "
          f"{pct(out['final_test_acc_tta'])} with flip TTA")
    print(f"time: start-up {out['startup_seconds']:.1f} s, training {out['train_seconds']:.1f} s "
          f"(of which waiting for data {out['data_wait_seconds']:.1f} s), evaluation {out['test_seconds']:.1f} s")
    return out


def measure_throughput(run_dir: Path, batches: int = 60) -> dict:
    """Bare loader images/s (the run's recipe and workers) and bare training-step images/s on the device."""
    import timm
    import torch

    from trainer.loop import normalize
    from trainer.config import TrainConfig
    from trainer.loader import resolve_workers
    from trainer.main import build_inputs, make_accelerator, make_optimizer, pick_precision

    cfg = TrainConfig.load(run_dir / "config.yaml")
    inp = build_inputs(cfg, make_accelerator(cfg))  # the run's own data, statistics, augmentation and loader
    data, mean, std, loader = inp.data, inp.mean, inp.std, inp.train_loader
    cuda = torch.cuda.is_available()
    it = iter(loader)
    next(it)  # workers started
    t = time.perf_counter()
    n = 0
    for _ in range(min(batches, len(loader) - 1)):
        n += len(next(it)[1])
    loader_ips = n / (time.perf_counter() - t)
    del it, loader

    device = torch.device("cuda" if cuda else "cpu")
    model = timm.create_model(cfg.model).to(device).to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model)
    x8 = torch.from_numpy(data.train_x[:cfg.batch_size]).permute(0, 3, 1, 2).contiguous().to(device)
    y = torch.from_numpy(data.train_y[:cfg.batch_size]).to(device)
    prec = pick_precision(cfg.mixed_precision)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(prec)
    crit = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def step():
        x = normalize(x8, mean, std).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = crit(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(10):
        step()
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(batches):
        step()
    if cuda:
        torch.cuda.synchronize()
    step_ips = batches * cfg.batch_size / (time.perf_counter() - t)
    out = {"loader_workers": resolve_workers(cfg.workers), "loader_images_per_s": loader_ips,
           "step_images_per_s": step_ips, "precision": prec, "batch_size": cfg.batch_size,
           "device": torch.cuda.get_device_name() if cuda else "CPU"}
    print(f"\nthroughput: loader {loader_ips:,.0f} img/s ({out['loader_workers']} workers) | "
          f"training step {step_ips:,.0f} img/s ({prec}, batch {cfg.batch_size}, {out['device']})")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="s7")
    p.add_argument("--config", default=None, help="recipe YAML (default configs/<model>.yaml)")
    p.add_argument("--data", default=None, help="image-folder tree or .tar.gz (default: torchvision download)")
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--out", default="runs")
    p.add_argument("--name", default=None)
    p.add_argument("--target", type=float, default=87.0)
    p.add_argument("--throughput", action="store_true", help="also measure bare loader and step speed")
    args, extra = p.parse_known_args()
    extra = [a for a in extra if a != "--"]
    run_dir, wall, rc = run_training(args, extra)
    if not (run_dir / "metrics.jsonl").is_file():
        print(f"error: training wrote no metrics (exit {rc})", file=sys.stderr)
        return rc or 1
    out = print_table(run_dir, args.target)
    out["process_wall_seconds"] = wall
    out["exit_code"] = rc
    if args.throughput:
        out.update(measure_throughput(run_dir))
    (run_dir / "time_to_accuracy.json").write_text(json.dumps(out, indent=1) + "\n")
    return rc


if __name__ == "__main__":
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    sys.exit(main())
