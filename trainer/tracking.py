"""Where each epoch's figures go: the run folder (metrics.jsonl, train.log) and Weights & Biases.

W&B runs through Accelerate's trackers and only on the main process. `wandb_mode`:
auto = online when an API key is configured, else offline (a local run to `wandb sync` later);
disabled = this code never imports wandb, so a machine without it can train (timm itself tries an
optional `import wandb` at import time; that is timm's, and harmless when wandb is absent).

In W&B: epoch metrics as train/..., val/..., test/..., time/..., speed/... against `epoch`; step/lr,
step/momentum and step/loss against `step`; the shipped weights as a model artifact; the report's media
(misclassified grid and table, per-class table, class maps) as images and tables, at the run's last epoch.
Each run folder has its own W&B id (RUN/wandb_run_id.txt), which a resumed run continues.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from trainer import runfolder


def resolve_wandb_mode(mode: str) -> str:
    """auto -> online with a configured API key, else offline; other modes (checked by the config) as given.
    The trainer resolves it once, so the saved config says what the run really did."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "online"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY") or Path("~/.netrc").expanduser().is_file() and \
            "api.wandb.ai" in Path("~/.netrc").expanduser().read_text():
        return "online"
    return "offline"


class RunLog:
    """train.log (every line printed) and metrics.jsonl (one row per epoch), main process only."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        print(text, flush=True)
        with open(self.run_dir / runfolder.TRAIN_LOG, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def metrics(self, row: dict[str, Any]) -> None:
        if self.enabled:
            runfolder.append_row(self.run_dir, row)


# Optimizer steps between two per-step W&B rows (step/lr, step/loss): a hundred or more points over a run draw
# the OneCycle shape; only those steps read the loss on the host (one sync each), the others never do. A run
# shorter than STEP_LOG_POINTS x STEP_LOG_EVERY steps logs more often, to still have about STEP_LOG_POINTS.
STEP_LOG_EVERY = 20
STEP_LOG_POINTS = 100
EPOCH_NAMESPACES = ("train", "val", "test", "time", "speed")
ACCURACIES = ("train/acc", "val/acc", "val/acc_tta", "test/acc", "test/acc_tta")  # summary: best and final
ARTIFACT_REF = re.compile(r"^(wandb-artifact://)?/*[\w.-]+/[\w.-]+/[\w.-]+:[\w.-]+$")


def wandb_key(column: str) -> str:
    """metrics.jsonl column -> namespaced W&B key: train_loss -> train/loss, test_acc_tta -> test/acc_tta,
    lr/momentum -> train/lr, train/momentum, *_seconds -> time/*, images_per_second -> speed/*."""
    if column == "images_per_second":
        return "speed/images_per_second"
    if column.endswith("_seconds"):
        return f"time/{column}"
    if column in ("lr", "momentum"):
        return f"train/{column}"
    split, _, rest = column.partition("_")
    return f"{split}/{rest}" if split in ("train", "val", "test") and rest else column


def epoch_values(row: dict[str, Any]) -> dict[str, Any]:
    """One metrics.jsonl row as a W&B row: `epoch` (the x-axis of every epoch metric) and namespaced keys; a
    figure the epoch did not measure (None) is left out rather than logged as a gap."""
    return {("epoch" if k == "epoch" else wandb_key(k)): v for k, v in row.items() if v is not None}


def git_commit(repo: Path = Path(__file__).resolve().parents[1]) -> str | None:
    """The commit checked out where the trainer's code lives; None outside a git work tree (or without git)."""
    import subprocess

    try:
        p = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() if p.returncode == 0 and p.stdout.strip() else None


RUN_ID_FILE = "wandb_run_id.txt"


def wandb_run_id(run_dir: Path) -> str:
    """The run's W&B id, made once and kept in RUN/wandb_run_id.txt, so a resumed run continues its W&B run.
    Random: a folder's name is not unique (every local sweep has a trial-01, and --name repeats across --out
    folders). A run from before the file, which already has a W&B run, keeps the id it had: its folder's name."""
    path = Path(run_dir) / RUN_ID_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    run_id = Path(run_dir).name.replace("/", "-") if (Path(run_dir) / "wandb").is_dir() else uuid.uuid4().hex[:16]
    path.write_text(run_id + "\n")
    return run_id


def init_wandb(accelerator, cfg, run_dir: Path, run_name: str, extra: dict[str, Any]) -> None:
    """Start the W&B run through Accelerate's trackers (no-op when disabled). cfg.wandb_mode is resolved.

    Identity: the resolved config plus `extra` (rule check, parameters, RF, data statistics), git commit and
    device; id = `wandb_run_id` (kept in the run folder), name = the folder's; group = model, job type = recipe,
    tags = model, optimizer, device type. Metrics: every epoch metric is plotted against `epoch`, the per-step
    ones against `step`; accuracies keep their max and last value in the summary (test/acc -> {"max": ..,
    "last": ..}), other metrics their last."""
    if cfg.wandb_mode == "disabled":
        return
    device = accelerator.device.type
    accelerator.init_trackers(
        cfg.wandb_project,
        config={**cfg.to_dict(), **extra, "git_commit": git_commit(), "device": device,
                "processes": accelerator.num_processes},
        init_kwargs={"wandb": {"name": run_name, "group": cfg.model, "mode": cfg.wandb_mode, "dir": str(run_dir),
                               "tags": [cfg.model, cfg.optimizer, device],
                               "job_type": cfg.recipe or "custom", "resume": "allow",
                               "id": wandb_run_id(run_dir) if accelerator.is_main_process else None}},
    )
    if not accelerator.is_main_process:
        return
    run = accelerator.get_tracker("wandb", unwrap=True)
    run.define_metric("epoch", hidden=True)
    run.define_metric("step", hidden=True)
    for name in ACCURACIES:  # before the globs: the first matching definition wins
        run.define_metric(name, step_metric="epoch", summary="max,last")
    for ns in EPOCH_NAMESPACES:
        run.define_metric(f"{ns}/*", step_metric="epoch", summary="last")
    run.define_metric("step/*", step_metric="step", summary="last")


def step_cadence(total_steps: int, every: int = STEP_LOG_EVERY, points: int = STEP_LOG_POINTS) -> int:
    """Steps between two per-step rows: `every`, or fewer in a run too short to get `points` rows that way."""
    return max(1, min(every, total_steps // points))


def step_logger(accelerator, cfg, first_step: int, total_steps: int) -> Callable[..., None] | None:
    """A `train_one_epoch` hook: the first step and every `step_cadence(total_steps)`-th global step (counted
    from `first_step`, the optimizer steps before this epoch) log step/lr, step/momentum and step/loss (this
    process's batch, label-smoothed) against `step`. None when W&B is off or on other ranks: nothing called."""
    if cfg.wandb_mode == "disabled" or not accelerator.is_main_process:
        return None
    every = step_cadence(total_steps)

    def on_step(step: int, lr: float, momentum: float, loss) -> None:
        global_step = first_step + step + 1
        if global_step % every == 0 or global_step == 1:
            accelerator.log({"step": global_step, "step/lr": lr, "step/momentum": momentum,
                             "step/loss": float(loss)})  # float(): the one host read, on logged steps only
    return on_step


def is_artifact_ref(ref: str) -> bool:
    """`entity/project/name:alias` or `wandb-artifact://entity/project/name:alias` (not an existing path)."""
    return not Path(ref).exists() and bool(ARTIFACT_REF.match(ref))


def weights_path(ref: str) -> Path:
    """A local path as given, or a W&B model artifact downloaded (online) to a folder holding
    model.safetensors + meta.json, which `s7 evaluate` reads like RUN/model/."""
    if not is_artifact_ref(ref):
        return Path(ref)
    if resolve_wandb_mode("auto") != "online":
        raise FileNotFoundError(f"{ref}: a W&B artifact reference needs W&B online (an API key; WANDB_MODE is "
                                f"{os.environ.get('WANDB_MODE', 'unset')}); download it elsewhere and pass the folder")
    import wandb

    return Path(wandb.Api().artifact(ref.removeprefix("wandb-artifact://").lstrip("/"), type="model").download())


def artifact_name(model: str, run_name: str) -> str:
    """W&B artifact names allow letters, digits, '-', '_' and '.'."""
    return re.sub(r"[^\w.-]", "-", f"{model}-{run_name}")


def wandb_files_and_summary(accelerator, cfg, run_dir: Path, summary: dict[str, Any],
                            files: list[str], misclassified: list[tuple] | None) -> None:
    """Summary fields, run-folder files, the shipped weights as a model artifact, and media: a misclassified-
    images table, the report's misclassified.png grid and mistake_maps.png (class maps), and the per-class
    table of the shipped epoch; main process only (other ranks hold only a stub tracker)."""
    if cfg.wandb_mode == "disabled" or not accelerator.is_main_process:
        return
    import wandb

    run = accelerator.get_tracker("wandb", unwrap=True)

    for k, v in summary.items():
        run.summary[k] = v
    save_run_files(run, run_dir, files)
    log_model_artifact(run, cfg, run_dir)
    media: dict[str, Any] = {}
    if misclassified:
        table = wandb.Table(columns=["image", "true", "predicted", "probability"])
        for image, true, pred, prob in misclassified:
            table.add_data(wandb.Image(image), true, pred, prob)
        media["misclassified"] = table
    per_class = per_class_table(run_dir)
    if per_class is not None:
        media["per_class"] = wandb.Table(columns=["class", "test images", "correct", "accuracy"], data=per_class)
    captions = {"misclassified_grid": ("misclassified.png", "misclassified test images of the shipped epoch "
                                                            "(true -> predicted, probability)"),
                # the report's most confident mistakes with their class maps
                "mistake_maps": ("mistake_maps.png", "most confident mistakes: class activation maps of the "
                                                     "predicted and the true class")}
    for key, (name, caption) in captions.items():
        if (run_dir / name).is_file():
            media[key] = wandb.Image(str(run_dir / name), caption=caption)
    if media:  # at the last epoch logged: the shipped epoch (summary selected_epoch) may be an earlier one
        run.log({"epoch": summary.get("last_epoch", summary.get("selected_epoch", 0)), **media})


def save_run_files(run, run_dir: Path, names: list[str]) -> None:
    """Run-folder files to the W&B run's files, copied into its files folder and saved from there. `run.save` of a
    file outside that folder links it in and warns "Symlinked 1 file into the W&B run directory; call wandb.save
    again to sync new files." once per call (wandb/sdk/lib/filesystem.py, LinkStats); a file already in the folder
    is only published. A copy, uploaded once (policy now): these files are final when the run ends."""
    files_dir = Path(run.dir)
    for name in names:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, files_dir / name)
            run.save(str(files_dir / name), base_path=str(files_dir), policy="now", glob=False)


def per_class_table(run_dir: Path) -> list[list] | None:
    """[class, test images, correct, accuracy %] of the shipped epoch's predictions.npz (as per_class.md)."""
    p = runfolder.read_predictions(run_dir)
    if p is None:
        return None
    return runfolder.per_class_rows(p["preds"], p["labels"], [str(c) for c in p["classes"]])


def log_model_artifact(run, cfg, run_dir: Path) -> None:
    """RUN/model/ (model.safetensors + meta.json) as a W&B model artifact, aliased `latest` and `best` when a
    validation split (--val-split) chose the epoch, else `latest` and `final` (the final epoch's weights: no
    split picked them, so nothing is "best"); meta.json's `selected_by` says which, and is the metadata."""
    import wandb

    folder = run_dir / runfolder.WEIGHTS_DIR
    if not (folder / "model.safetensors").is_file():
        return
    meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").is_file() else {}
    art = wandb.Artifact(artifact_name(cfg.model, run_dir.name), type="model",
                         description=f"{cfg.model} weights shipped by run {run_dir.name} "
                                     f"(epoch {meta.get('epoch')}, {meta.get('selected_by', 'final epoch')})",
                         metadata=meta)
    for name in ("model.safetensors", "meta.json"):
        if (folder / name).is_file():
            art.add_file(str(folder / name), name=name)
    run.log_artifact(art, aliases=["latest", "best" if cfg.val_split > 0 else "final"])
