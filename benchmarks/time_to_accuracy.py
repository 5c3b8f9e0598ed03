"""Time to accuracy, the one speed harness: run trainer/main.py (one process, W&B disabled), print per-epoch test
accuracy (without and with flip TTA) with the wall time since the trainer process started, the time to the target,
the final epoch's accuracy and where the time went, then ONE JSON line with the run's speed figures.

    python3 benchmarks/time_to_accuracy.py --model s7 --data cifar10-jpeg.tar.gz [--config configs/s7.yaml]
        [--throughput] [--device cpu] [--out-jsonl FILE] [-- extra trainer flags]

The JSON line (also appended to --out-jsonl, and written indented to RUN/time_to_accuracy.json) holds:
seconds_to_target / epoch_to_target (first epoch whose test accuracy without TTA reaches --target, counted from
the trainer's process start; null if never), epochs, loop_images_per_s (training images per second of the
training loop, median of the epochs after the first), startup_seconds and startup_phases (process start to the
end of the first training step, from RUN/startup.json), device, precision, batch_size, compile, channels_last
and the other speed options as the run used them. --throughput adds, measured in this process after the run:
step_images_per_s (the bare training step on a device-resident batch, with the run's layout, precision, batch
size, compile mode and host allocator) and loader_images_per_s (the run's training loader, with its workers).
--device cpu hides any GPU from the run and from these measurements (CUDA_VISIBLE_DEVICES="").

On a GPU machine without albumentations/torchinfo, install the wheels first (see benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Every line has these keys (null when that line did not measure them), so one table reads them all.
LINE_KEYS = ("kind", "run", "model", "recipe", "device", "processes", "precision", "batch_size", "peak_lr",
             "lr_scaling", "compile", "channels_last", "cudnn_benchmark", "non_blocking", "workers", "threads",
             "target", "epochs", "epoch_to_target", "seconds_to_target", "epoch_to_target_tta",
             "seconds_to_target_tta", "final_test_acc", "final_test_acc_tta", "startup_seconds", "startup_phases",
             "first_step_excess_seconds", "step_images_per_s", "loop_images_per_s", "loader_images_per_s",
             "train_seconds", "data_wait_seconds", "test_seconds", "process_wall_seconds", "exit_code")


def line(**values) -> dict:
    """One JSON line: LINE_KEYS in order, null where not measured, then any extra keys."""
    return {**{k: values.pop(k, None) for k in LINE_KEYS}, **values}


def emit(record: dict, out_jsonl: str | None) -> None:
    """Print the record as one JSON line and append it to `out_jsonl`."""
    text = json.dumps(record)
    print(text, flush=True)
    if out_jsonl:
        Path(out_jsonl).parent.mkdir(parents=True, exist_ok=True)
        with open(out_jsonl, "a") as f:
            f.write(text + "\n")


def device_env(device: str) -> dict[str, str]:
    """The environment of this process and its children: --device cpu hides every GPU."""
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", PYTHONUNBUFFERED="1")
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


# Trainer flags that run_training sets from the harness's own arguments and the harness relies on afterwards
# (where the run is, which net, which target); given after '--' they would win in the trainer alone.
HARNESS_FLAGS = frozenset({"--model", "--out", "--name", "--target-acc"})


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
    rc = subprocess.call(cmd, env=device_env(args.device))
    return Path(args.out) / name, time.time() - start, rc


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def loop_images_per_s(rows: list[dict]) -> float:
    """Training images per second of the loop: the median epoch after the first (which pays the warm-up), or the
    only epoch."""
    return statistics.median(r["images_per_second"] for r in (rows[1:] or rows))


def print_table(run_dir: Path, target: float) -> dict:
    """Per-epoch table, time to `target` test accuracy (without and with flip TTA), final-epoch accuracy and
    where the time went; returns the time_to_accuracy.json fields."""
    from trainer.tools.report import pct, reached_text
    from trainer.tools.results import run_results

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
        "startup_seconds": rows[0]["wall_seconds"] - rows[0]["epoch_seconds"],  # runs without startup.json
        "loop_images_per_s": loop_images_per_s(rows),
    }
    print()
    for how, suffix in (("no TTA", ""), ("flip TTA", "_tta")):  # in the report's words, with its measured_note
        print(f"time to {target:g}% ({how}): {reached_text(res, suffix, cell=False)}")
    print(f"final test accuracy (epoch {res['epochs']}): {pct(out['final_test_acc'])} without TTA, "
          f"{pct(out['final_test_acc_tta'])} with flip TTA")
    print(f"time: start-up {out['startup_seconds']:.1f} s, training {out['train_seconds']:.1f} s "
          f"(of which waiting for data {out['data_wait_seconds']:.1f} s), evaluation {out['test_seconds']:.1f} s")
    return out


def run_facts(run_dir: Path) -> dict:
    """What the run used (RUN/config.yaml, RUN/startup.json): speed options, device, precision, peak lr, and
    its start-up to the end of the first training step."""
    from trainer.config import TrainConfig
    from trainer.runfolder import STARTUP

    cfg = TrainConfig.load(run_dir / "config.yaml")
    facts = {"model": cfg.model, "recipe": cfg.recipe, "batch_size": cfg.batch_size, "compile": cfg.compile,
             "channels_last": cfg.channels_last, "cudnn_benchmark": cfg.cudnn_benchmark,
             "non_blocking": cfg.non_blocking, "lr_scaling": cfg.lr_scaling}
    path = run_dir / STARTUP
    if path.is_file():
        s = json.loads(path.read_text())
        facts.update({k: s[k] for k in ("device", "processes", "precision", "peak_lr", "workers", "threads")},
                     startup_seconds=s["seconds"], startup_phases=s["phases"],
                     first_step_excess_seconds=s["first_step_excess_seconds"])
    return facts


# ---------------------------------------------------------------- bare speeds, measured in this process

def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def autocast_dtype(precision: str):
    """The autocast dtype of a resolved precision ("no", "fp16", "bf16"); None for fp32."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def bare_step(cfg, device, mean, std, precision: str, num_classes: int):
    """The bare training step of cfg's net as the loop runs it, as a function of a uint8 NCHW batch and its labels
    on `device` (normalise, layout, autocast forward and loss, backward, optimizer step; fp16 with a grad scaler),
    with cfg's --channels-last, --compile and --cudnn-benchmark; the net is left in training mode."""
    import timm
    import torch

    import models  # noqa: F401  (registers the nets)
    from trainer.loop import pixel_stats, prepare_batch
    from trainer.optim import compile_model, make_optimizer

    torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    torch.manual_seed(cfg.seed)
    model = timm.create_model(cfg.model, num_classes=num_classes).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model)
    step_model = compile_model(model, cfg.compile)
    dtype = autocast_dtype(precision)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    crit = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    mean_t, std_t = pixel_stats(mean, std, device)

    def step(x8, y) -> None:
        x = prepare_batch(x8, mean_t, std_t, cfg.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = crit(step_model(x), y)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        opt.zero_grad(set_to_none=True)

    model.train()
    return step


def step_speed(cfg, x8, y, mean, std, precision: str, num_classes: int, *, steps: int = 50,
               warmup: int = 10) -> dict:
    """Images/s of `bare_step` on a device-resident uint8 batch; the first warm-up step's seconds include the
    compile."""
    from trainer.loop import synchronize

    device = x8.device
    step = bare_step(cfg, device, mean, std, precision, num_classes)
    t = time.perf_counter()
    step(x8, y)
    synchronize(device)
    first = time.perf_counter() - t
    for _ in range(max(warmup - 1, 0)):
        step(x8, y)
    synchronize(device)
    t = time.perf_counter()
    for _ in range(steps):
        step(x8, y)
    synchronize(device)
    return {"step_images_per_s": steps * len(y) / (time.perf_counter() - t), "first_step_seconds": first}


def loader_speed(loader, batches: int = 60) -> float:
    """Images/s of a loader after its first batch (worker start-up excluded)."""
    it = iter(loader)
    next(it)
    t = time.perf_counter()
    n = 0
    for _ in range(min(batches, len(loader) - 1)):
        n += len(next(it)[1])
    return n / (time.perf_counter() - t)


def measure_throughput(run_dir: Path, batches: int = 60, warmup: int = 10) -> dict:
    """Bare loader images/s (the run's recipe and workers) and bare training-step images/s on this device, with
    the run's speed options."""
    import torch

    from trainer.config import TrainConfig
    from trainer.loader import build_inputs
    from trainer.memory import keep_freed_memory
    from trainer.precision import make_accelerator, resolve_precision

    cfg = TrainConfig.load(run_dir / "config.yaml")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.keep_freed_memory:  # the allocator as the run had it: the bare step is measured on equal terms
        keep_freed_memory()
    inp = build_inputs(cfg, make_accelerator(cfg))  # the run's own data, statistics, augmentation and loader
    loader_ips, workers = loader_speed(inp.train_loader, batches), inp.train_loader.num_workers
    del inp.train_loader
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x8 = torch.from_numpy(inp.data.train_x[:cfg.batch_size]).permute(0, 3, 1, 2).contiguous().to(device)
    y = torch.from_numpy(inp.data.train_y[:cfg.batch_size]).to(device)
    prec, _ = resolve_precision(cfg.mixed_precision)  # the run's config.yaml holds the precision it ran
    step = step_speed(cfg, x8, y, inp.mean, inp.std, prec, len(inp.data.classes), steps=batches,
                      warmup=warmup)
    out = {"loader_workers": workers, "loader_images_per_s": loader_ips,
           "step_images_per_s": step["step_images_per_s"], "precision": prec, "batch_size": cfg.batch_size,
           "device": device_name(device)}
    print(f"\nthroughput: loader {loader_ips:,.0f} img/s ({out['loader_workers']} workers) | "
          f"training step {out['step_images_per_s']:,.0f} img/s ({prec}, batch {cfg.batch_size}, "
          f"compile {cfg.compile}, channels_last {cfg.channels_last}, {out['device']})")
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
    p.add_argument("--device", choices=("auto", "cpu"), default="auto",
                   help="auto: the GPU when there is one; cpu: hide every GPU from the run and the measurements")
    p.add_argument("--throughput", action="store_true", help="also measure bare loader and step speed")
    p.add_argument("--batches", type=int, default=60, help="timed batches of each --throughput measurement")
    p.add_argument("--warmup", type=int, default=10, help="untimed training steps before the timed ones")
    p.add_argument("--out-jsonl", default=None, help="append the JSON line to this file")
    args, extra = p.parse_known_args()
    extra = [a for a in extra if a != "--"]
    owned = [flag for flag in (a.split("=")[0] for a in extra) if flag in HARNESS_FLAGS]
    if owned:  # the trainer would take the last one and the harness would look for the run elsewhere
        p.error(f"{owned[0]} after '--' is the harness's own flag: give it before '--' "
                f"({', '.join(sorted(HARNESS_FLAGS))} are set by the harness)")
    os.environ.update(device_env(args.device))  # before torch is imported, for --throughput
    run_dir, wall, rc = run_training(args, extra)
    if not (run_dir / "metrics.jsonl").is_file():
        print(f"error: training wrote no metrics (exit {rc})", file=sys.stderr)
        return rc or 1
    out = print_table(run_dir, args.target)
    out.update(run_facts(run_dir), process_wall_seconds=wall, exit_code=rc)
    if args.throughput:
        out.update(measure_throughput(run_dir, args.batches, args.warmup))
    (run_dir / "time_to_accuracy.json").write_text(json.dumps(out, indent=1) + "\n")
    emit(line(kind="run", **out), args.out_jsonl)
    return rc


if __name__ == "__main__":
    sys.exit(main())
