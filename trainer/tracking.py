"""Where each epoch's figures go: the run folder (metrics.jsonl, train.log) and Weights & Biases.

W&B runs through Accelerate's trackers and only on the main process. `wandb_mode`:
auto = online when an API key is configured, else offline (a local run to `wandb sync` later);
disabled = this code never imports wandb, so a machine without it can train (timm itself tries an
optional `import wandb` at import time; that is timm's, and harmless when wandb is absent).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


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
        with open(self.run_dir / "train.log", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def metrics(self, row: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Rows of metrics.jsonl; the last row for an epoch wins (a resumed run may repeat one)."""
    rows: dict[int, dict[str, Any]] = {}
    path = Path(run_dir) / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["epoch"]] = row
    return [rows[k] for k in sorted(rows)]


def truncate_metrics(run_dir: Path, last_epoch: int) -> None:
    """Drop rows after `last_epoch` (an interrupted epoch's row, if any) before resuming."""
    rows = [r for r in read_metrics(run_dir) if r["epoch"] <= last_epoch]
    (Path(run_dir) / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def init_wandb(accelerator, cfg, run_dir: Path, run_name: str, extra: dict[str, Any]) -> None:
    """Start the W&B run through Accelerate's trackers (no-op when disabled). cfg.wandb_mode is resolved."""
    if cfg.wandb_mode == "disabled":
        return
    accelerator.init_trackers(
        cfg.wandb_project,
        config={**cfg.to_dict(), **extra},
        init_kwargs={"wandb": {"name": run_name, "group": cfg.model, "mode": cfg.wandb_mode, "dir": str(run_dir),
                               "tags": [cfg.model, cfg.recipe or "custom", "cifar10"],
                               "job_type": "train", "resume": "allow", "id": run_name.replace("/", "-")}},
    )


def wandb_files_and_summary(accelerator, cfg, run_dir: Path, summary: dict[str, Any],
                            files: list[str], misclassified: list[tuple] | None) -> None:
    """Summary fields, run-folder files and a misclassified-images table, main process only
    (other ranks hold only a stub tracker)."""
    if cfg.wandb_mode == "disabled" or not accelerator.is_main_process:
        return
    import wandb

    run = accelerator.get_tracker("wandb", unwrap=True)

    for k, v in summary.items():
        run.summary[k] = v
    for name in files:
        if (run_dir / name).is_file():
            run.save(str(run_dir / name), base_path=str(run_dir), policy="now")
    if misclassified:
        table = wandb.Table(columns=["image", "true", "predicted", "probability"])
        for image, true, pred, prob in misclassified:
            table.add_data(wandb.Image(image), true, pred, prob)
        run.log({"misclassified": table}, step=summary.get("last_epoch", 0))

