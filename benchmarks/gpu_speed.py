"""Issue 10's GPU measurements in one run of at most 9 minutes: every speed option's bare training step and loader
images/second, then the time from process start to 87 % with the short recipe (the trainer through
benchmarks/time_to_accuracy.py, which also gives each run's loop images/second and start-up breakdown). Every
figure is one JSON line (the harness's keys, `kind` step / loader / run / env / skipped) appended to
OUT/speed.jsonl; each run's small files are copied to OUT/runs/<name>/. Commit OUT as results/speed/.

    OUT=/tmp/s7-speed python3 benchmarks/gpu_speed.py                      # on the GPU machine, repo root
    python3 benchmarks/gpu_speed.py --device cpu --quick --out /tmp/s7-speed-cpu \\
        --data ../shared/data/cifar10-jpeg.tar.gz --data-dir data          # rehearsal on a CPU, tiny budgets

Order, most wanted first; a part that would not fit in what is left of --budget is skipped with a `skipped` line:
1. bare step, eager: channels_last on/off x bf16/fp16 x batch 256/512/1024 x cudnn.benchmark off/on;
2. loader: 4, 8 and all-but-one workers at batch 256 and 1024;
3. time to 87 % (short recipe, all cores loading): as the recipe is, then with non_blocking copies, cudnn.benchmark
   and compile (mode default; its compile is part of the start-up);
4. bare step, torch.compile: default, reduce-overhead, max-autotune-no-cudagraphs (the first precision, NHWC,
   batch 512, cuDNN autotuning on), then default at batch 256 and 1024;
5. time to 87 %: with non_blocking copies alone; the fast options at batch 512 and 1024 (those of 256/512/1024
   above the recipe's), the learning rate scaled linearly from the recipe's batch size.
The short recipe is --config (default configs/s7_short.yaml when it exists, else configs/s7.yaml).
Without albumentations/torchinfo, the wheels in .gpu/wheels are installed into /tmp/site first (no network).
"""
from __future__ import annotations

import argparse
import glob
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
RUN_FILES = ("config.yaml", "metrics.jsonl", "startup.json", "train.log", "time_to_accuracy.json", "report.md")


def ensure_wheels(wheels: str, site: str = "/tmp/site") -> None:
    """The checkout (not pip-installed on the GPU machine), albumentations and torchinfo importable here and in
    child processes, the last two from local wheels if need be."""
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    probe = [sys.executable, "-c", "import albumentations, torchinfo"]
    if subprocess.call(probe, stderr=subprocess.DEVNULL) == 0:
        return
    files = sorted(glob.glob(os.path.join(wheels, "*.whl")))
    if not files:
        raise SystemExit(f"error: albumentations/torchinfo missing and no wheels in {wheels} "
                         "(see benchmarks/README.md)")
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                           "--target", site, *files])
    sys.path.insert(0, site)
    os.environ["PYTHONPATH"] = os.pathsep.join([site, os.environ["PYTHONPATH"]])


class Budget:
    """Seconds left of the whole run; a part that needs more than is left is skipped, and says so."""

    def __init__(self, seconds: float, out_jsonl: str) -> None:
        self.end, self.out_jsonl = time.time() + seconds, out_jsonl

    def left(self) -> float:
        return self.end - time.time()

    def allows(self, needs: float, what: str) -> bool:
        from time_to_accuracy import emit, line

        if self.left() >= needs:
            return True
        emit(line(kind="skipped", what=what, needs_seconds=needs, left_seconds=round(self.left(), 1)),
             self.out_jsonl)
        return False


def step_matrix(args, budget: Budget, device, data, mean, std, compiled: bool) -> None:
    """Part 1 (eager) or 4 (`compiled`): the bare training step of each option, in this process."""
    import torch

    from time_to_accuracy import device_name, emit, line, step_speed
    from trainer.config import resolve

    precisions = ("bf16", "fp16") if device.type == "cuda" else ("no", "bf16")
    batches = args.batches_list
    eager = [dict(channels_last=cl, precision=p, batch=b, cudnn=cu, compile="none")
             for cl in (True, False) for p in precisions for b in batches for cu in (False, True)]
    if args.quick:  # one option at a time from the first configuration, not every combination
        eager = [o for o in eager if sum(o[k] != eager[0][k] for k in o) <= 1]
    mid = batches[len(batches) // 2]
    modes = [dict(channels_last=True, precision=precisions[0], batch=mid, cudnn=True, compile=m)
             for m in args.compile_modes]
    if "default" in args.compile_modes:
        modes += [dict(channels_last=True, precision=precisions[0], batch=b, cudnn=True, compile="default")
                  for b in batches if b != mid]
    for o in modes if compiled else eager:
        what = f"step {o}"
        if not budget.allows(args.compile_seconds if o["compile"] != "none" else args.step_seconds, what):
            continue
        cfg = resolve(["--config", args.config, "--batch-size", str(o["batch"]), "--channels-last",
                       str(o["channels_last"]), "--cudnn-benchmark", str(o["cudnn"]), "--compile", o["compile"]])
        x8 = torch.from_numpy(data.train_x[:o["batch"]]).permute(0, 3, 1, 2).contiguous().to(device)
        y = torch.from_numpy(data.train_y[:o["batch"]]).to(device)
        rec = line(kind="step", device=device_name(device), precision=o["precision"], batch_size=o["batch"],
                   compile=o["compile"], channels_last=o["channels_last"], cudnn_benchmark=o["cudnn"])
        try:
            torch._dynamo.reset()  # each compiled configuration compiles afresh, for its own shapes
            rec.update(step_speed(cfg, x8, y, mean, std, o["precision"], len(data.classes), steps=args.steps,
                                  warmup=args.warmup))
        except Exception as e:  # noqa: BLE001 - one configuration failing must not end the run
            rec["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        emit(rec, budget.out_jsonl)


def loader_matrix(args, budget: Budget, device, data, mean) -> None:
    """Part 2: the albumentations training loader's images/second for several worker counts and batch sizes."""
    from time_to_accuracy import device_name, emit, line, loader_speed
    from trainer.augment import build_train_transform
    from trainer.config import resolve
    from trainer.loader import AugmentedDataset, make_loader, usable_cores

    cfg = resolve(["--config", args.config])
    cores = usable_cores()
    workers = sorted({w for w in (4, 8, cores - 1) if 0 < w < cores} or {0})
    for w in workers:
        for b in (args.batches_list[0], args.batches_list[-1]):
            if not budget.allows(args.loader_seconds, f"loader {w} workers, batch {b}"):
                continue
            ds = AugmentedDataset(data.train_x, data.train_y, build_train_transform(mean, **cfg.augment_kwargs()),
                                  seed=cfg.seed)
            loader = make_loader(ds, b, shuffle=True, workers=w, drop_last=True, seed=cfg.seed)
            t = time.perf_counter()
            ips = loader_speed(loader, args.loader_batches)
            emit(line(kind="loader", device=device_name(device), batch_size=b, workers=w,
                      loader_images_per_s=ips, seconds=time.perf_counter() - t), budget.out_jsonl)
            del loader


def run_plans(args) -> tuple[list, list]:
    """(part 3, part 5): (name, trainer flags) of each time-to-target run. The larger batches scale the recipe's
    learning rate linearly from the recipe's batch size."""
    from trainer.config import resolve

    base = resolve(["--config", args.config, *args.trainer_flags]).batch_size
    fast = ["--non-blocking", "true", "--cudnn-benchmark", "true"]
    fast += ["--compile", "default"] if "default" in args.compile_modes else []
    scaled = ["--lr-scaling", "linear", "--base-batch-size", str(base)]
    return ([("recipe", []), ("fast", fast)],
            [("non-blocking", ["--non-blocking", "true"])]
            + [(f"fast-b{b}", fast + scaled + ["--batch-size", str(b)]) for b in args.batches_list if b > base])


def time_to_target_runs(args, budget: Budget, out: Path, plans: list) -> None:
    """Parts 3 and 5: the trainer from process start to the target, through the harness, one JSON line each."""
    runs = out / "runs"
    for name, flags in plans:
        if not budget.allows(args.run_seconds, f"run {name}"):
            continue
        cmd = [sys.executable, str(ROOT / "benchmarks/time_to_accuracy.py"), "--config", args.config,
               "--model", args.model, "--data-dir", args.data_dir, "--out", str(args.runs), "--name", name,
               "--target", str(args.target), "--device", args.device, "--out-jsonl", budget.out_jsonl]
        cmd += ["--data", args.data] if args.data else []
        cmd += ["--", *args.trainer_flags, *flags]  # the plan's flags win
        timeout = max(budget.left() - 5, 10)
        with open(out / f"run-{name}.log", "w") as log:
            try:
                subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
            except subprocess.TimeoutExpired:
                log.write(f"\nkilled after {timeout:.0f} s: out of budget\n")
        src = Path(args.runs) / name
        for f in RUN_FILES:
            if (src / f).is_file():
                (runs / name).mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / f, runs / name / f)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    short = ROOT / "configs/s7_short.yaml"
    p.add_argument("--config", default=str(short if short.is_file() else ROOT / "configs/s7.yaml"))
    p.add_argument("--model", default="s7")
    p.add_argument("--data", default=".gpu/cifar10-jpeg.tar.gz")
    p.add_argument("--data-dir", default="/tmp/s7-data")
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/s7-speed"), help="output folder (default $OUT)")
    p.add_argument("--runs", default="/tmp/s7-speed-runs", help="where the trainer's run folders go")
    p.add_argument("--wheels", default=".gpu/wheels")
    p.add_argument("--device", choices=("auto", "cpu"), default="auto")
    p.add_argument("--budget", type=float, default=540.0, help="seconds for the whole run (default 9 minutes)")
    p.add_argument("--target", type=float, default=87.0)
    p.add_argument("--quick", action="store_true",
                   help="tiny budgets to rehearse on a CPU: batches 16/32/64, one step option changed at a time, "
                        "3 timed steps, 2-epoch runs on 192 training images in batches of 16, no compile unless "
                        "--compile-modes names one (cold, it takes minutes on 2 cores)")
    p.add_argument("--compile-modes", nargs="*", default=None,
                   help="compile modes of part 4 (default: default reduce-overhead max-autotune-no-cudagraphs)")
    args, rest = p.parse_known_args()
    args.trainer_flags = [a for a in rest if a != "--"]
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    if args.quick:
        args.batches_list, args.steps, args.warmup, args.loader_batches = [16, 32, 64], 3, 1, 3
        args.step_seconds, args.compile_seconds, args.loader_seconds, args.run_seconds = 5, 60, 5, 30
        args.trainer_flags = ["--epochs", "2", "--train-subset", "192", "--test-subset", "100", "--batch-size",
                              "16", *args.trainer_flags]
        args.compile_modes = args.compile_modes if args.compile_modes is not None else []
    else:
        args.batches_list, args.steps, args.warmup, args.loader_batches = [256, 512, 1024], 50, 10, 40
        args.step_seconds, args.compile_seconds, args.loader_seconds, args.run_seconds = 5, 90, 10, 45
        if args.compile_modes is None:
            args.compile_modes = ["default", "reduce-overhead", "max-autotune-no-cudagraphs"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.budget, str(out / "speed.jsonl"))
    ensure_wheels(args.wheels)

    import torch

    from time_to_accuracy import device_name, emit, line
    from trainer.dataset import channel_stats, load_data

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t = time.perf_counter()
    data = load_data(args.data, args.data_dir)
    mean, std = channel_stats(data.train_x)
    emit(line(kind="env", device=device_name(device), python=platform.python_version(), torch=torch.__version__,
              cores=os.cpu_count(), config=args.config, data=data.source, data_seconds=time.perf_counter() - t,
              budget_seconds=args.budget), budget.out_jsonl)
    first_runs, later_runs = run_plans(args)
    step_matrix(args, budget, device, data, mean, std, compiled=False)
    loader_matrix(args, budget, device, data, mean)
    time_to_target_runs(args, budget, out, first_runs)
    step_matrix(args, budget, device, data, mean, std, compiled=True)
    time_to_target_runs(args, budget, out, later_runs)
    print(f"done in {args.budget - budget.left():.0f} s of {args.budget:.0f}; lines in {budget.out_jsonl}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
