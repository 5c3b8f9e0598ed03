"""Training entry: `accelerate launch trainer/main.py --model s7_dilated` (one or more GPUs, or the CPU),
or plain `python trainer/main.py ...` in one process. Flags: `--help`.

Flow: config -> Accelerator -> dataset -> augment -> loaders -> model -> epochs (train, test, log,
checkpoint) -> report.
"""
from __future__ import annotations

import time

PROCESS_START = time.time()  # wall time to the target accuracy counts from here

import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import dataclasses  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

if __package__ in (None, ""):  # `python trainer/main.py` / `accelerate launch trainer/main.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from accelerate import Accelerator, DataLoaderConfiguration  # noqa: E402
from accelerate.utils import broadcast_object_list, set_seed  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import models  # noqa: E402,F401  (registers the s7 nets with timm)
from models.receptive_field import format_rf_table, receptive_field, rf_table  # noqa: E402
from models.rules import summary_text  # noqa: E402
from trainer import checkpoint, report, tracking  # noqa: E402
from trainer.augment import build_train_transform, describe_pipeline  # noqa: E402
from trainer.config import TrainConfig, build_parser, resolve  # noqa: E402
from trainer.dataset import CifarData, DataError, channel_stats, load_data  # noqa: E402
from trainer.loader import AugmentedDataset, make_loader  # noqa: E402
from trainer.loop import NonFiniteLoss, train_one_epoch, validate  # noqa: E402

RESUME_OVERRIDABLE = ("resume", "workers", "wandb_mode")  # harmless to change mid-run


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM."""


def _raise_interrupt(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def pick_precision(requested: str) -> str:
    """bf16 on GPUs that support it, fp16 on older ones, full precision on the CPU (no emulated bf16)."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """An Accelerator that really runs data-parallel on CPUs too (plain Accelerator() under torchrun
    without GPUs would leave every rank alone), with a seedable sampler and unrepeated scheduler steps."""
    use_wandb = cfg.wandb_mode != "disabled"
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=pick_precision(cfg.mixed_precision),
        log_with="wandb" if use_wandb else None,
        step_scheduler_with_optimizer=False,  # we step OneCycle once per batch ourselves, sized to the shard
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, even_batches=True),
    )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != accelerator.num_processes:
        raise SystemExit(f"error: launched {world} processes but Accelerate runs {accelerator.num_processes} "
                         f"({accelerator.distributed_type}); on CPUs launch with torchrun or --multi_cpu")
    return accelerator


def subset(x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random subset (class folders are sorted, so a prefix would be one class)."""
    if n <= 0 or n >= len(y):
        return x, y
    idx = np.sort(np.random.default_rng(12345).permutation(len(y))[:n])
    return x[idx], y[idx]


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only, never on BatchNorm or biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise SystemExit(f"error: --optimizer must be sgd or adamw, not {cfg.optimizer!r}")


def run_name(cfg: TrainConfig) -> str:
    return cfg.name or f"{cfg.model}-{cfg.recipe or 'custom'}-{time.strftime('%Y%m%d-%H%M%S')}"


def resumed_config(flags: TrainConfig, given: set[str]) -> TrainConfig:
    """The saved config of the run being resumed (--resume); of the flags `given` on the command line, only
    harmless ones (RESUME_OVERRIDABLE) replace saved values."""
    path = Path(flags.resume) / "config.yaml"
    if not path.is_file():
        raise SystemExit(f"error: --resume {flags.resume}: not a run folder (no config.yaml)")
    saved = TrainConfig.load(path)
    for name in set(RESUME_OVERRIDABLE) & given:
        setattr(saved, name, getattr(flags, name))
    saved.resume = flags.resume
    saved.name = Path(flags.resume).name
    saved.out = str(Path(flags.resume).parent)
    return saved


def cpu_epoch_estimate(model, cfg: TrainConfig, n_train: int, n_test: int, num_classes: int) -> float:
    """Seconds per epoch (training + test pass) on this CPU, from timed passes on a copy of the model."""
    import copy

    probe = copy.deepcopy(model).train()
    x = torch.randn(cfg.batch_size, 3, 32, 32)
    y = torch.randint(0, num_classes, (cfg.batch_size,))
    train_t, test_t = [], []
    for _ in range(4):  # the first pass warms up the kernels; take the best of the rest
        t = time.perf_counter()
        torch.nn.functional.cross_entropy(probe(x), y).backward()
        train_t.append(time.perf_counter() - t)
        with torch.no_grad():
            t = time.perf_counter()
            probe.eval()(x)
            test_t.append(time.perf_counter() - t)
            probe.train()
    per_test_image = min(test_t[1:]) / cfg.batch_size * (2 if cfg.tta_flip else 1)
    return min(train_t[1:]) * 1.5 * n_train / cfg.batch_size + per_test_image * n_test  # +50%: optimizer, loader


@dataclass
class Inputs:
    """What the data side hands the loop: the data, its pixel statistics, datasets and loaders."""

    data: CifarData
    test_x: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    transform: object
    train_ds: AugmentedDataset
    train_loader: DataLoader
    test_loader: DataLoader


def build_inputs(cfg: TrainConfig, accelerator: Accelerator) -> Inputs:
    """dataset -> (subset) -> statistics -> augmentation -> loaders (not yet prepared)."""
    with accelerator.main_process_first():  # one decode, the other ranks read the cache
        data = load_data(cfg.data, cfg.data_dir)
    train_x, train_y = subset(data.train_x, data.train_y, cfg.train_subset)
    test_x, test_y = subset(data.test_x, data.test_y, cfg.test_subset)
    mean, std = channel_stats(train_x)
    transform = build_train_transform(mean, **cfg.augment_kwargs())
    rank = accelerator.process_index
    train_ds = AugmentedDataset(train_x, train_y, transform, seed=cfg.seed, rank=rank)
    test_ds = AugmentedDataset(test_x, test_y, None, seed=cfg.seed, rank=rank)
    pin = accelerator.device.type == "cuda"
    train_loader = make_loader(train_ds, cfg.batch_size, shuffle=True, workers=cfg.workers, drop_last=True,
                               pin_memory=pin, seed=cfg.seed)
    # even_batches pads every rank's last batch to full size: keep test batches no larger than a rank's share
    test_batch = max(1, min(1000, -(-len(test_y) // accelerator.num_processes)))
    test_workers = min(cfg.workers, 2) if cfg.workers >= 0 else 2  # no augmentation: two workers keep up
    test_loader = make_loader(test_ds, test_batch, shuffle=False, workers=test_workers, pin_memory=pin, seed=cfg.seed)
    return Inputs(data, test_x, mean, std, transform, train_ds, train_loader, test_loader)


def write_run_files(run_dir: Path, cfg: TrainConfig, model: torch.nn.Module, rf_markdown: str, transform) -> None:
    """config.yaml, the torchinfo summary, the RF table and the augmentation pipeline, once per run."""
    cfg.save(run_dir / "config.yaml")
    (run_dir / "summary.txt").write_text(summary_text(model) + "\n")
    (run_dir / "receptive_field.md").write_text(rf_markdown + "\n")
    (run_dir / "augmentation.txt").write_text(describe_pipeline(transform) + "\n")


def epoch_row(epoch: int, tr, te, wall: float) -> dict:
    """One metrics.jsonl row (and W&B step). `lr` is the last rate used in the epoch."""
    return {"epoch": epoch, "train_loss": tr.loss, "train_acc": tr.accuracy, "test_loss": te.loss,
            "test_acc": te.accuracy, "test_images": te.images, "lr": tr.lr, "epoch_seconds": tr.seconds + te.seconds,
            "train_seconds": tr.seconds, "data_wait_seconds": tr.data_seconds, "test_seconds": te.seconds,
            "images_per_second": tr.images / max(tr.seconds, 1e-9), "wall_seconds": wall}


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def train(cfg: TrainConfig) -> int:
    """Run (or resume) one training job; returns the process exit code."""
    cfg = dataclasses.replace(cfg, wandb_mode=tracking.resolve_wandb_mode(cfg.wandb_mode))
    accelerator = make_accelerator(cfg)
    name = [run_name(cfg)]
    broadcast_object_list(name)  # every rank writes to the main rank's folder
    run_dir = Path(cfg.out) / name[0]
    main = accelerator.is_main_process
    log = tracking.RunLog(run_dir, enabled=main)
    set_seed(cfg.seed)

    inp = build_inputs(cfg, accelerator)
    data, mean, std, train_ds = inp.data, inp.mean, inp.std, inp.train_ds
    train_loader, test_loader = inp.train_loader, inp.test_loader
    cuda = accelerator.device.type == "cuda"

    model = timm.create_model(cfg.model, num_classes=len(data.classes))
    n_params = sum(p.numel() for p in model.parameters())
    rf = receptive_field(model)
    rf_markdown = format_rf_table(rf_table(model))
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model)
    model, optimizer, train_loader, test_loader = accelerator.prepare(model, optimizer, train_loader, test_loader)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * len(train_loader), pct_start=cfg.pct_start,
        div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor)
    scheduler = accelerator.prepare(scheduler)
    ema = None
    if cfg.ema_decay > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        ema = AveragedModel(accelerator.unwrap_model(model), multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay),
                            use_buffers=True)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=accelerator.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=accelerator.device).view(1, 3, 1, 1)

    ckpt_root = run_dir / "checkpoints"
    state = {"model": cfg.model, "best_acc": 0.0, "best_epoch": 0, "best_train_acc": 0.0,
             "epoch_to_target": None, "seconds_to_target": None, "elapsed_before": 0.0}
    start_epoch = 1
    if cfg.resume:
        state = checkpoint.load_checkpoint(accelerator, checkpoint.latest_checkpoint(run_dir), cfg.model, ema)
        start_epoch = state["epoch"] + 1
        if main:
            tracking.truncate_metrics(run_dir, state["epoch"])
    elif main:
        write_run_files(run_dir, cfg, accelerator.unwrap_model(model), rf_markdown, inp.transform)
    tracking.init_wandb(accelerator, cfg, run_dir, name[0], {"parameters": n_params, "receptive_field": rf})

    devices = f"{accelerator.num_processes} x {torch.cuda.get_device_name() if cuda else 'CPU'}"
    log.line(f"s7 train: {cfg.model} ({n_params:,} parameters, RF {rf}) recipe {cfg.recipe or 'custom'}")
    log.line(f"devices: {devices}, {accelerator.distributed_type}, precision {accelerator.mixed_precision}")
    log.line(f"data: {data.source}: {len(inp.train_ds):,} train / {len(inp.test_x):,} test images, "
             f"{len(data.classes)} classes")
    log.line(f"run folder: {run_dir}  (W&B: {cfg.wandb_mode})")
    if not cuda and main:
        est = cpu_epoch_estimate(accelerator.unwrap_model(model), cfg, len(inp.train_ds) // accelerator.num_processes,
                                 len(inp.test_x) // accelerator.num_processes, len(data.classes))
        left = cfg.epochs - start_epoch + 1
        log.line(f"warning: training on the CPU; one epoch takes about {_duration(est)} "
                 f"({left} epochs to go: about {_duration(est * left)})")
    if start_epoch == 1 and not cfg.resume:
        checkpoint.save_checkpoint(accelerator, ckpt_root, 0, state, ema)
    elif cfg.resume:
        log.line(f"resumed from epoch {state['epoch']} of {cfg.epochs}")

    signal.signal(signal.SIGTERM, _raise_interrupt)
    progress = main and sys.stderr.isatty()  # tqdm bars on a terminal, plain lines otherwise
    epoch = start_epoch - 1
    resume_at = time.time()
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            train_loader.set_epoch(epoch)  # shuffle order from (seed, epoch): a resumed run replays it
            train_ds.set_epoch(epoch)       # augmentation stream from (seed, epoch, rank, worker)
            tr = train_one_epoch(accelerator, model, train_loader, optimizer, scheduler, criterion, mean_t, std_t,
                                 epoch=epoch, channels_last=cfg.channels_last, ema=ema, progress=progress)
            te = validate(accelerator, ema if ema is not None else model, test_loader, mean_t, std_t,
                          channels_last=cfg.channels_last, tta_flip=cfg.tta_flip, progress=progress)
            if not np.isfinite(te.loss):
                raise NonFiniteLoss(f"non-finite test loss after epoch {epoch} (train loss {tr.loss:.4g}); "
                                    "training stopped, best checkpoint kept")
            wall = state["elapsed_before"] + time.time() - (resume_at if cfg.resume else PROCESS_START)
            row = epoch_row(epoch, tr, te, wall)
            if te.accuracy >= cfg.target_acc and state["epoch_to_target"] is None:
                state["epoch_to_target"], state["seconds_to_target"] = epoch, wall
            state["best_train_acc"] = max(state["best_train_acc"], tr.accuracy)
            is_best = te.accuracy > state["best_acc"]
            if is_best:
                state["best_acc"], state["best_epoch"] = te.accuracy, epoch
            log.metrics(row)
            accelerator.log({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            log.line(f"epoch {epoch:3d}/{cfg.epochs} train loss {tr.loss:.4f} acc {tr.accuracy:6.2f}% | "
                     f"test loss {te.loss:.4f} acc {te.accuracy:6.2f}% | lr {tr.lr:.4f} | "
                     f"{row['epoch_seconds']:.1f}s {row['images_per_second']:.0f} img/s | wall {wall:.1f}s")
            if main and is_best:
                checkpoint.save_best(ema if ema is not None else accelerator.unwrap_model(model), run_dir / "best",
                                     {"model": cfg.model, "epoch": epoch, "test_acc": te.accuracy,
                                      "classes": data.classes, "mean": list(map(float, mean)),
                                      "std": list(map(float, std)), "data": data.source,
                                      "tta_flip": cfg.tta_flip})
                report.save_predictions(run_dir, te.predictions.numpy(), te.labels.numpy(),
                                        te.probabilities.numpy(), inp.test_x, data.classes, cfg.log_misclassified)
            checkpoint.save_checkpoint(accelerator, ckpt_root, epoch,
                                       {**state, "elapsed_before": wall}, ema)
    except NonFiniteLoss as e:
        log.line(f"error: {e}")
        accelerator.end_training()
        return 3
    except Interrupted as e:
        return _interrupted(log, accelerator, run_dir, epoch, f"{e}")
    except KeyboardInterrupt:
        return _interrupted(log, accelerator, run_dir, epoch, "SIGINT")

    if main:
        report.build_report(run_dir)
        tracking.wandb_files_and_summary(
            accelerator, cfg, run_dir,
            {"best_test_acc": state["best_acc"], "best_epoch": state["best_epoch"],
             "epochs_to_target": state["epoch_to_target"], "seconds_to_target": state["seconds_to_target"],
             "parameters": n_params, "receptive_field": rf, "last_epoch": cfg.epochs},
            ["summary.txt", "receptive_field.md", "report.md", "per_class.md", "config.yaml"],
            report.misclassified_for_wandb(run_dir))
        log.line(f"done: best test accuracy {state['best_acc']:.2f}% at epoch {state['best_epoch']}; "
                 f"report: {run_dir / 'report.md'}")
    accelerator.end_training()
    return 0


def _interrupted(log, accelerator, run_dir: Path, epoch: int, why: str) -> int:
    """The last completed epoch is already on disk (written atomically); say how to continue."""
    log.line(f"interrupted ({why}) during epoch {epoch}; the state after epoch {epoch - 1} is saved in "
             f"{run_dir / 'checkpoints'}")
    log.line(f"resume with: accelerate launch trainer/main.py --resume {run_dir}")
    try:
        accelerator.end_training()
    except Exception:  # noqa: BLE001 - a tracker that fails to close must not hide the resume hint
        pass
    return 130


def main(argv: list[str] | None = None) -> int:
    flags = resolve(argv)
    given = {k for k, v in vars(build_parser().parse_args(argv)).items() if v is not None}
    cfg = resumed_config(flags, given) if flags.resume else flags
    try:
        return train(cfg)
    except (DataError, checkpoint.CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
