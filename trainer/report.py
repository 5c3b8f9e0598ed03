"""The run report, rebuilt from the run folder's files alone (`s7 report RUN_DIR`).

Inputs: config.yaml, metrics.jsonl, train.log, summary.txt, receptive_field.md, augmentation.txt,
best/meta.json and predictions.npz (the best epoch's test predictions and misclassified images).
Outputs: loss.png, accuracy.png, per_class.md, misclassified.png, report.md.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from trainer.tracking import read_metrics


def save_predictions(run_dir: Path, preds: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                     images: np.ndarray, classes: list[str], n_wrong: int) -> None:
    """The best epoch's test predictions, plus `n_wrong` misclassified images' pixels: the most confident
    mistakes of each true class in turn, so every class shows up (the test split is sorted by class)."""
    wrong = np.flatnonzero(preds != labels)
    per_class = [wrong[labels[wrong] == c][np.argsort(-probs[wrong[labels[wrong] == c]], kind="stable")]
                 for c in range(len(classes))]
    rounds = max((len(w) for w in per_class), default=0)
    wrong = np.array([w[i] for i in range(rounds) for w in per_class if i < len(w)], dtype=np.int64)[:n_wrong]
    tmp = run_dir / "predictions.tmp.npz"
    np.savez_compressed(tmp, preds=preds, labels=labels, probs=probs, wrong_index=wrong,
                        wrong_images=images[wrong], classes=np.array(classes))
    tmp.replace(run_dir / "predictions.npz")


def confusion_matrix(preds: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """rows = true class, columns = predicted class."""
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (labels, preds), 1)
    return m


def per_class_markdown(preds: np.ndarray, labels: np.ndarray, classes: list[str]) -> str:
    m = confusion_matrix(preds, labels, len(classes))
    lines = ["| class | test images | correct | accuracy |", "|---|---|---|---|"]
    for i, c in enumerate(classes):
        total = int(m[i].sum())
        lines.append(f"| {c} | {total} | {int(m[i, i])} | {100 * m[i, i] / max(total, 1):.2f}% |")
    lines += ["", "Confusion matrix (rows: true class, columns: predicted):", "",
              "| | " + " | ".join(c[:5] for c in classes) + " |", "|---" * (len(classes) + 1) + "|"]
    lines += [f"| {c} | " + " | ".join(str(int(v)) for v in m[i]) + " |" for i, c in enumerate(classes)]
    return "\n".join(lines)


def _plot(rows: list[dict], keys: tuple[str, str], ylabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for key, label in zip(keys, ("train (augmented)", "test")):
        ax.plot(epochs, [r[key] for r in rows], marker="o", markersize=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _misclassified_png(pred: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = [str(c) for c in pred["classes"]]
    idx, imgs = pred["wrong_index"], pred["wrong_images"]
    n = len(idx)
    if n == 0:  # report.md links the figure: say so rather than leave a broken link
        fig, ax = plt.subplots(figsize=(4, 1), dpi=100)
        ax.axis("off")
        ax.text(0.5, 0.5, "no misclassified test images", ha="center", va="center")
        fig.savefig(path)
        plt.close(fig)
        return
    cols = min(n, 5)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.8, rows * 2.0), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i, img in zip(axes.flat, idx, imgs):
        ax.imshow(img)
        ax.set_title(f"{classes[pred['labels'][i]]}\n-> {classes[pred['preds'][i]]} {pred['probs'][i]:.2f}",
                     fontsize=7)
    fig.suptitle("misclassified test images (true -> predicted, probability)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def results_achieved(rows: list[dict], meta: dict[str, Any]) -> dict[str, Any]:
    """The assignment's "Results Achieved", computed from metrics.jsonl rows."""
    best = max(rows, key=lambda r: r["test_acc"])
    target = meta.get("target_acc", 87.0)
    hit = next((r for r in rows if r["test_acc"] >= target), None)
    return {
        "best_train_acc": max(r["train_acc"] for r in rows),
        "best_test_acc": best["test_acc"],
        "best_epoch": best["epoch"],
        "final_test_acc": rows[-1]["test_acc"],
        "epochs": rows[-1]["epoch"],
        "target_acc": target,
        "epoch_to_target": hit["epoch"] if hit else None,
        "seconds_to_target": hit["wall_seconds"] if hit else None,
        "parameters": meta.get("parameters"),
        "receptive_field": meta.get("receptive_field"),
    }


def _read(run_dir: Path, name: str) -> str:
    path = run_dir / name
    return path.read_text().rstrip() if path.is_file() else f"({name} missing)"


def run_results(run_dir: Path) -> dict[str, Any]:
    """Results achieved by a run folder, from its files: metrics.jsonl, config.yaml (model, target),
    summary.txt (parameters) and receptive_field.md (RF of the map entering GAP)."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    if not rows:
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl rows to report")
    cfg = yaml.safe_load(_read(run_dir, "config.yaml")) if (run_dir / "config.yaml").is_file() else {}
    params = next((int(line.split(":")[1].replace(",", "")) for line in _read(run_dir, "summary.txt").splitlines()
                   if line.startswith("Total params:")), None)
    rf_md = _read(run_dir, "receptive_field.md")
    rf = int(rf_md.strip().splitlines()[-1].split("|")[-3]) if rf_md.startswith("|") else None
    res = results_achieved(rows, {"target_acc": cfg.get("target_acc", 87.0), "parameters": params,
                                  "receptive_field": rf})
    return {**res, "rows": rows, "config": cfg}


def build_report(run_dir: Path) -> dict[str, Any]:
    """Write plots, per_class.md, misclassified.png and report.md; return the results dict."""
    run_dir = Path(run_dir)
    res = run_results(run_dir)
    rows, cfg, params, rf = res["rows"], res["config"], res["parameters"], res["receptive_field"]
    summary = _read(run_dir, "summary.txt")
    rf_md = _read(run_dir, "receptive_field.md")
    _plot(rows, ("train_loss", "test_loss"), "loss", run_dir / "loss.png")
    _plot(rows, ("train_acc", "test_acc"), "accuracy (%)", run_dir / "accuracy.png")
    per_class = "(no predictions.npz)"
    if (run_dir / "predictions.npz").is_file():
        pred = dict(np.load(run_dir / "predictions.npz"))
        per_class = per_class_markdown(pred["preds"], pred["labels"], [str(c) for c in pred["classes"]])
        (run_dir / "per_class.md").write_text(f"# Per-class test accuracy (best epoch)\n\n{per_class}\n")
        _misclassified_png(pred, run_dir / "misclassified.png")
    meta = json.loads(_read(run_dir, "best/meta.json")) if (run_dir / "best/meta.json").is_file() else {}
    to_target = (f"epoch {res['epoch_to_target']}, {res['seconds_to_target']:.1f} s wall from process start"
                 if res["epoch_to_target"] else "not reached")
    table = "\n".join([
        "| | |", "|---|---|",
        f"| model | {cfg.get('model', '?')} (recipe {cfg.get('recipe') or 'custom'}) |",
        f"| data | {meta.get('data', cfg.get('data') or 'CIFAR-10 (torchvision)')} |",
        f"| best train accuracy (augmented batches) | {res['best_train_acc']:.2f}% |",
        f"| best test accuracy | {res['best_test_acc']:.2f}% (epoch {res['best_epoch']}) |",
        f"| final test accuracy | {res['final_test_acc']:.2f}% |",
        f"| total parameters | {params:,} |" if params else "| total parameters | ? |",
        f"| epochs | {res['epochs']} |",
        f"| receptive field | {rf} |",
        f"| {res['target_acc']:g}% reached | {to_target} |",
    ])
    log_rows = ["| epoch | train loss | train acc | test loss | test acc | lr | s/epoch | wall s |",
                "|---|---|---|---|---|---|---|---|"]
    log_rows += [f"| {r['epoch']} | {r['train_loss']:.4f} | {r['train_acc']:.2f} | {r['test_loss']:.4f} | "
                 f"{r['test_acc']:.2f} | {r['lr']:.4f} | {r['epoch_seconds']:.1f} | {r['wall_seconds']:.1f} |"
                 for r in rows]
    text = f"""# Report: {run_dir.name}

## Results achieved

{table}

![loss](loss.png) ![accuracy](accuracy.png)

## Training log

{chr(10).join(log_rows)}

## Per-class test accuracy (best epoch)

{per_class}

![misclassified](misclassified.png)

## Model summary (torchinfo)

```
{summary}
```

## Receptive field

{rf_md}

## Augmentation pipeline

```
{_read(run_dir, "augmentation.txt")}
```

## Configuration

```yaml
{_read(run_dir, "config.yaml")}
```

## train.log

```
{_read(run_dir, "train.log")}
```
"""
    (run_dir / "report.md").write_text(text)
    return res


def misclassified_for_wandb(run_dir: Path) -> list[tuple]:
    """(image, true, predicted, probability) rows for a W&B table."""
    path = Path(run_dir) / "predictions.npz"
    if not path.is_file():
        return []
    p = dict(np.load(path))
    classes = [str(c) for c in p["classes"]]
    return [(img, classes[p["labels"][i]], classes[p["preds"][i]], float(p["probs"][i]))
            for i, img in zip(p["wrong_index"], p["wrong_images"])]


def report_command(run_dir: str) -> int:
    """`s7 report RUN_DIR`."""
    path = Path(run_dir)
    if not (path / "metrics.jsonl").is_file():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no metrics.jsonl)")
    res = build_report(path)
    print(f"wrote {path / 'report.md'}: best test accuracy {res['best_test_acc']:.2f}% at epoch {res['best_epoch']}")
    return 0
