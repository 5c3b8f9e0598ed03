"""The run report, rebuilt from the run folder's files alone (`s7 report RUN_DIR`).

Inputs: config.yaml, metrics.jsonl, rules.md, train.log, summary.txt, receptive_field.md, augmentation.txt,
model/meta.json (best/meta.json in older runs) and predictions.npz (the shipped epoch's test predictions and
misclassified images), with model/model.safetensors for the class maps of the most confident mistakes
(kept in mistake_maps.npz). Outputs: loss.png, accuracy.png, per_class.md, misclassified.png,
mistake_maps.png, report.md.

Honest numbers (issue 8): the headline is the final epoch's test accuracy, with and without flip TTA; the
shipped weights are the final epoch's, or the best validation epoch's when the run holds out a validation
split. The test split is reported, never used to pick anything.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from trainer.text import counted  # noqa: F401  (the report's lines and its callers)
from trainer.tracking import read_metrics

LEGACY_SELECTION = "best test_acc (old trainer: picked on the test split)"
NOT_MEASURED = "not measured"


# ---------------------------------------------------------------- the rules a run is read by

def selected_row(rows: list[dict]) -> dict:
    """The epoch whose weights a run ships: the highest val_acc (the earliest on a tie) when the run holds out a
    validation split, else the final epoch. Test accuracy is never looked at."""
    if not rows:
        raise ValueError("no epochs to select from")
    with_val = [r for r in rows if r.get("val_acc") is not None]
    return max(with_val, key=lambda r: r["val_acc"]) if with_val else rows[-1]  # max keeps the first maximum


def selection_rule(row: dict) -> str:
    """How `selected_row` picked `row`, in the words model/meta.json uses ("selected_by")."""
    return "best val_acc" if row.get("val_acc") is not None else "final epoch"


def first_row_reaching(rows: list[dict], target: float, key: str = "test_acc_tta") -> dict | None:
    """The first epoch whose `key` is at least `target` (rows where it was not measured never count)."""
    return next((r for r in rows if r.get(key) is not None and r[key] >= target), None)


def upgrade_legacy_rows(rows: list[dict], config: dict[str, Any]) -> list[dict]:
    """Rows logged before issue 8 in the current form. Those runs measured one test figure; with
    `tta_flip: true` it was the flip-TTA one, so it moves to test_acc_tta / test_loss_tta and the plain
    figures become None (not measured). Current rows (they have test_acc_tta) pass unchanged."""
    tta = bool(config.get("tta_flip"))
    out = []
    for row in rows:
        row = dict(row)
        if "test_acc_tta" not in row:
            if tta:
                row["test_acc_tta"], row["test_loss_tta"] = row.get("test_acc"), row.get("test_loss")
                row["test_acc"] = row["test_loss"] = None
            else:
                row["test_acc_tta"] = row["test_loss_tta"] = None
        out.append(row)
    return out


def rules_markdown(rules: list) -> str:
    """rules.md: `s7 check`'s table and a last line `ALL PASS` or `FAIL: <rule>, <rule>`, which `rules_verdict`
    reads back."""
    from models.rules import format_rules

    failed = [r.name for r in rules if not r.passed]
    return f"{format_rules(rules)}\n\n{'FAIL: ' + ', '.join(failed) if failed else 'ALL PASS'}\n"


def rules_verdict(run_dir: Path) -> list[str] | None:
    """The rules the net breaks, from the last line of rules.md: "ALL PASS" -> [], "FAIL: a, b" -> ["a", "b"];
    None when the run predates rules.md. Any other last line is an error, never read as a pass."""
    path = Path(run_dir) / "rules.md"
    if not path.is_file():
        return None
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if last == "ALL PASS":
        return []
    failed = [r.strip() for r in last.removeprefix("FAIL:").split(",") if r.strip()] if last.startswith("FAIL:") else []
    if not failed:
        raise ValueError(f"{path}: the last line must be 'ALL PASS' or 'FAIL: <rule>, <rule>', not {last!r}")
    return failed


def rules_label(failed: list[str] | None) -> str:
    """"ALL PASS", "FAIL (a, b)" or "not checked" (a run without rules.md)."""
    if failed is None:
        return "not checked"
    return "ALL PASS" if not failed else f"FAIL ({', '.join(failed)})"


# ---------------------------------------------------------------- predictions and per-class accuracy

def save_predictions(run_dir: Path, preds: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                     images: np.ndarray, classes: list[str], n_wrong: int) -> None:
    """The shipped epoch's test predictions, plus `n_wrong` misclassified images' pixels: the most confident
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


def per_class_rows(preds: np.ndarray, labels: np.ndarray, classes: list[str]) -> list[list]:
    """[class, test images, correct, accuracy %] per class (per_class.md, the W&B per-class table)."""
    m = confusion_matrix(preds, labels, len(classes))
    return [[c, int(m[i].sum()), int(m[i, i]), 100.0 * m[i, i] / max(int(m[i].sum()), 1)]
            for i, c in enumerate(classes)]


def per_class_markdown(preds: np.ndarray, labels: np.ndarray, classes: list[str]) -> str:
    m = confusion_matrix(preds, labels, len(classes))
    lines = ["| class | test images | correct | accuracy |", "|---|---|---|---|"]
    lines += [f"| {c} | {total} | {right} | {acc:.2f}% |" for c, total, right, acc in per_class_rows(preds, labels, classes)]
    lines += ["", "Confusion matrix (rows: true class, columns: predicted):", "",
              "| | " + " | ".join(c[:5] for c in classes) + " |", "|---" * (len(classes) + 1) + "|"]
    lines += [f"| {c} | " + " | ".join(str(int(v)) for v in m[i]) + " |" for i, c in enumerate(classes)]
    return "\n".join(lines)


def _predictions_kind(pred: dict[str, np.ndarray], row: dict) -> str:
    """Which logged figure predictions.npz reproduces (the file does not say whether it holds TTA predictions)."""
    acc = 100.0 * float((pred["preds"] == pred["labels"]).mean())
    kinds = [name for key, name in (("test_acc", "no TTA"), ("test_acc_tta", "flip TTA"))
             if row.get(key) is not None and abs(row[key] - acc) < 1e-6]
    return " = ".join(kinds) if kinds else f"{acc:.2f}%, which matches neither logged test accuracy"


# ---------------------------------------------------------------- figures

LOSS_LINES = (("train_loss", "train: label-smoothed loss, augmented batches"),
              ("test_loss", "test: cross-entropy, no TTA"), ("test_loss_tta", "test: cross-entropy, flip TTA"),
              ("val_loss", "val: cross-entropy, no TTA"))
ACC_LINES = (("train_acc", "train: augmented batches"), ("test_acc", "test: no TTA"),
             ("test_acc_tta", "test: flip TTA"), ("val_acc", "val: no TTA"), ("val_acc_tta", "val: flip TTA"))


def _series(rows: list[dict], key: str) -> list[float] | None:
    """The column as floats (NaN where not measured), or None when no epoch measured it."""
    values = [r.get(key) for r in rows]
    return None if all(v is None for v in values) else [math.nan if v is None else v for v in values]


def epoch_axis(ax, epochs: list[int]) -> None:
    """Whole epochs on the x-axis, half an epoch of margin either side (one epoch is not an axis of 0.96-1.04)."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    if len(epochs) <= 12:
        ax.set_xticks(epochs)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")


def _plot(rows: list[dict], lines: tuple[tuple[str, str], ...], ylabel: str, path: Path,
          title: str = "", shipped_epoch: int | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=100)
    for key, label in lines:
        values = _series(rows, key)
        if values is not None:
            ax.plot(epochs, values, marker="o", markersize=3, label=label)
    if shipped_epoch is not None:
        ax.axvline(shipped_epoch, color="gray", linestyle=":", label=f"shipped weights (epoch {shipped_epoch})")
    epoch_axis(ax, epochs)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
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


# ---------------------------------------------------------------- the figures of a run

def results_achieved(rows: list[dict], *, target_acc: float = 87.0, parameters: int | None = None,
                     receptive_field: int | None = None, rules_failed: list[str] | None = None,
                     selected: dict | None = None, selected_by: str | None = None) -> dict[str, Any]:
    """A run's figures from its metrics rows (current form: see `upgrade_legacy_rows`). The headline is the
    final epoch; `selected` (default `selected_row(rows)`) is the shipped epoch. None = not measured."""
    final = rows[-1]
    selected = selected or selected_row(rows)
    hit, hit_tta = first_row_reaching(rows, target_acc, "test_acc"), first_row_reaching(rows, target_acc)
    return {
        "epochs": final["epoch"],
        "final_test_acc": final.get("test_acc"),
        "final_test_acc_tta": final.get("test_acc_tta"),
        "final_val_acc": final.get("val_acc"),
        "final_val_acc_tta": final.get("val_acc_tta"),
        "final_train_acc": final["train_acc"],  # running accuracy on augmented batches
        "selected_epoch": selected["epoch"],
        "selected_by": selected_by or selection_rule(selected),
        "selected_test_acc": selected.get("test_acc"),
        "selected_test_acc_tta": selected.get("test_acc_tta"),
        "selected_val_acc": selected.get("val_acc"),
        "selected_val_acc_tta": selected.get("val_acc_tta"),
        "target_acc": target_acc,
        "epoch_to_target": hit["epoch"] if hit else None,
        "seconds_to_target": hit["wall_seconds"] if hit else None,
        "epoch_to_target_tta": hit_tta["epoch"] if hit_tta else None,
        "seconds_to_target_tta": hit_tta["wall_seconds"] if hit_tta else None,
        "parameters": parameters,
        "receptive_field": receptive_field,
        "rules_failed": rules_failed,
    }


def _read(run_dir: Path, name: str) -> str:
    path = run_dir / name
    return path.read_text().rstrip() if path.is_file() else f"({name} missing)"


def model_meta(run_dir: Path) -> dict[str, Any]:
    """The shipped weights' meta.json: model/ (current runs) or best/ (runs before issue 8); {} if neither."""
    for sub in ("model", "best"):
        path = Path(run_dir) / sub / "meta.json"
        if path.is_file():
            return json.loads(path.read_text())
    return {}


def _shipped(rows: list[dict], meta: dict[str, Any]) -> tuple[dict, str]:
    """The shipped epoch's row and how it was picked. The old trainer's best/ (a meta.json without
    "selected_by") holds the best *test* epoch: say so rather than pretend the selection rule chose it."""
    if meta and "selected_by" not in meta:
        row = next((r for r in rows if r["epoch"] == meta["epoch"]), None)
        if row is None:
            raise ValueError(f"best/meta.json names epoch {meta['epoch']}, which metrics.jsonl lacks")
        return row, LEGACY_SELECTION
    row = selected_row(rows)
    if meta and meta["epoch"] != row["epoch"]:
        raise ValueError(f"model/meta.json ships epoch {meta['epoch']}, the selection rule "
                         f"({selection_rule(row)}) gives epoch {row['epoch']}")
    return row, selection_rule(row)


def run_results(run_dir: Path) -> dict[str, Any]:
    """A run folder's figures (`results_achieved`) plus "rows" (legacy rows upgraded), "config", "meta"
    (of the shipped weights) and "rules_md", from metrics.jsonl, config.yaml, model/meta.json, rules.md,
    summary.txt (parameters) and receptive_field.md (RF of the map entering GAP)."""
    run_dir = Path(run_dir)
    cfg = (yaml.safe_load(_read(run_dir, "config.yaml")) if (run_dir / "config.yaml").is_file() else None) or {}
    rows = upgrade_legacy_rows(read_metrics(run_dir), cfg)
    if not rows:
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl rows to report")
    params = next((int(line.split(":")[1].replace(",", "")) for line in _read(run_dir, "summary.txt").splitlines()
                   if line.startswith("Total params:")), None)
    rf_md = _read(run_dir, "receptive_field.md")
    rf = int(rf_md.strip().splitlines()[-1].split("|")[-3]) if rf_md.startswith("|") else None
    meta = model_meta(run_dir)
    selected, selected_by = _shipped(rows, meta)
    res = results_achieved(rows, target_acc=cfg.get("target_acc", 87.0), parameters=params, receptive_field=rf,
                           rules_failed=rules_verdict(run_dir), selected=selected, selected_by=selected_by)
    rules_md = (run_dir / "rules.md").read_text().rstrip() if (run_dir / "rules.md").is_file() else None
    return {**res, "rows": rows, "config": cfg, "meta": meta, "rules_md": rules_md}


# ---------------------------------------------------------------- report.md

LOG_LEGEND = ("train: label-smoothed loss and running accuracy on augmented batches; test and val: plain "
              "cross-entropy and accuracy, without TTA and with flip TTA (mean logits of the image and its "
              "mirror); – = not measured.")


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def pct(value: float | None) -> str:
    """An accuracy as "88.80%", or "not measured" for None."""
    return NOT_MEASURED if value is None else f"{value:.2f}%"


def pct_cell(value: float | None) -> str:
    """An accuracy as a table cell: "88.80%", or "–" where it was not measured."""
    return "–" if value is None else f"{value:.2f}%"


def reached_cell(res: dict[str, Any], suffix: str = "") -> str:
    """When a run first reached its target on one test figure ("" no TTA, "_tta" flip TTA), as a table cell:
    "epoch 69, 250.6 s", "not in 20 epochs", or "–" where that figure was not measured. `res`: `run_results`
    of a run folder, or a line of benchmarks/time_to_accuracy.py (the same keys)."""
    if res["final_test_acc" + suffix] is None:
        return "–"
    epoch = res["epoch_to_target" + suffix]
    return f"epoch {epoch}, {res['seconds_to_target' + suffix]:.1f} s" if epoch else f"not in {counted(res['epochs'], 'epoch')}"


def target_label(results: list[dict[str, Any]]) -> str:
    """The runs' common target as a column label ("87%"), or "target" when they differ."""
    targets = {res["target_acc"] for res in results}
    return f"{targets.pop():g}%" if len(targets) == 1 else "target"


def log_table(rows: list[dict], every: int = 1) -> str:
    """The training log as markdown, legend first: every epoch, or every `every`-th plus the first and last.
    Validation columns only when the run has a validation split."""
    cols = [("epoch", "epoch", "d"), ("train loss", "train_loss", ".4f"), ("train acc %", "train_acc", ".2f"),
            ("test loss", "test_loss", ".4f"), ("test loss, TTA", "test_loss_tta", ".4f"),
            ("test acc %", "test_acc", ".2f"), ("test acc %, TTA", "test_acc_tta", ".2f")]
    if any(r.get("val_acc") is not None for r in rows):
        cols += [("val loss", "val_loss", ".4f"), ("val acc %", "val_acc", ".2f"),
                 ("val acc %, TTA", "val_acc_tta", ".2f")]
    cols += [("lr", "lr", ".4f"), ("s/epoch", "epoch_seconds", ".1f"), ("wall s", "wall_seconds", ".1f")]
    kept = [r for r in rows if every == 1 or r["epoch"] % every == 0 or r["epoch"] == 1 or r is rows[-1]]
    lines = ["| " + " | ".join(c[0] for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_num(r.get(key), fmt) for _, key, fmt in cols) + " |" for r in kept]
    return LOG_LEGEND + "\n\n" + "\n".join(lines)


def _reached(res: dict[str, Any], suffix: str, measured: bool) -> str:
    epoch = res["epoch_to_target" + suffix]
    if not measured:
        return NOT_MEASURED
    if not epoch:
        return "not reached"
    return f"epoch {epoch}, {res['seconds_to_target' + suffix]:.1f} s wall from process start"


def results_table(res: dict[str, Any], data: str) -> str:
    """The "Results achieved" table: every accuracy with and without flip TTA, the final epoch first."""
    cfg, has_val = res["config"], res["final_val_acc"] is not None
    rows = [("model", f"{cfg.get('model', '?')} (recipe {cfg.get('recipe') or 'custom'})"), ("data", data),
            ("rules", rules_label(res["rules_failed"])), ("epochs", str(res["epochs"])),
            ("final test accuracy, no TTA", pct(res["final_test_acc"])),
            ("final test accuracy, flip TTA", pct(res["final_test_acc_tta"]))]
    if has_val:
        rows += [("final val accuracy, no TTA", pct(res["final_val_acc"])),
                 ("final val accuracy, flip TTA", pct(res["final_val_acc_tta"]))]
    rows += [("final train accuracy (augmented batches)", pct(res["final_train_acc"])),
             ("shipped weights", f"epoch {res['selected_epoch']}, {res['selected_by']}"),
             ("shipped weights' test accuracy, no TTA", pct(res["selected_test_acc"])),
             ("shipped weights' test accuracy, flip TTA", pct(res["selected_test_acc_tta"]))]
    if has_val:
        rows += [("shipped weights' val accuracy, no TTA", pct(res["selected_val_acc"])),
                 ("shipped weights' val accuracy, flip TTA", pct(res["selected_val_acc_tta"]))]
    target = f"{res['target_acc']:g}% test accuracy first reached"
    rows += [(f"{target}, no TTA", _reached(res, "", res["final_test_acc"] is not None)),
             (f"{target}, flip TTA", _reached(res, "_tta", res["final_test_acc_tta"] is not None)),
             ("total parameters", f"{res['parameters']:,}" if res["parameters"] else "?"),
             ("receptive field", str(res["receptive_field"]))]
    return "\n".join(["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


def _rules_section(rules_md: str | None) -> str:
    if rules_md is None:
        return "(no rules.md: this run predates the rule check in the run folder; `s7 check MODEL` checks the net)"
    return re.sub(r"^(#+ )", r"##\1", rules_md, flags=re.M)  # its headings sit under this section's


def _mistake_maps_section(run_dir: Path) -> str:
    """The grid of the most confident mistakes with their class activation maps (trainer/tools/explain.py): the
    maps are computed from the run's shipped weights and predictions.npz into mistake_maps.npz, which a
    folder without weights still draws from."""
    from trainer.tools.explain import MISTAKE_MAPS_NPZ, mistake_maps_png, save_mistake_maps

    save_mistake_maps(run_dir)
    if mistake_maps_png(run_dir) is not None:
        return ("Most confident mistakes, with the class activation map (the class map entering GAP, "
                "upsampled) of the class each was taken for and of its true class:\n\n"
                "![most confident mistakes with their class maps](mistake_maps.png)")
    if (run_dir / MISTAKE_MAPS_NPZ).is_file():
        return "(no misclassified test images: no class maps to show)"
    return "(no class maps: the run folder has no predictions.npz or no shipped weights with a class map)"


def build_report(run_dir: Path) -> dict[str, Any]:
    """Write loss.png, accuracy.png, per_class.md, misclassified.png, mistake_maps.png and report.md;
    return `run_results`."""
    run_dir = Path(run_dir)
    res = run_results(run_dir)
    rows, cfg, meta = res["rows"], res["config"], res["meta"]
    shipped = next(r for r in rows if r["epoch"] == res["selected_epoch"])
    _plot(rows, LOSS_LINES, "loss", run_dir / "loss.png",
          title="train and test losses are different objectives: compare their trends, not their levels")
    _plot(rows, ACC_LINES, "accuracy (%)", run_dir / "accuracy.png", shipped_epoch=res["selected_epoch"])
    per_class, per_class_title = "(no predictions.npz)", f"shipped weights, epoch {res['selected_epoch']}"
    if (run_dir / "predictions.npz").is_file():
        pred = dict(np.load(run_dir / "predictions.npz"))
        per_class_title += f", {_predictions_kind(pred, shipped)}"
        per_class = per_class_markdown(pred["preds"], pred["labels"], [str(c) for c in pred["classes"]])
        (run_dir / "per_class.md").write_text(f"# Per-class test accuracy ({per_class_title})\n\n{per_class}\n")
        _misclassified_png(pred, run_dir / "misclassified.png")
    mistake_maps = _mistake_maps_section(run_dir)
    data = meta.get("data", cfg.get("data") or "CIFAR-10 (torchvision)")
    text = f"""# Report: {run_dir.name} — rules: {rules_label(res["rules_failed"])}

## Results achieved

{results_table(res, data)}

![loss](loss.png) ![accuracy](accuracy.png)

## Rules (rules.md)

{_rules_section(res["rules_md"])}

## Training log

{log_table(rows)}

## Per-class test accuracy ({per_class_title})

{per_class}

![misclassified](misclassified.png)

{mistake_maps}

## Model summary (torchinfo)

```
{_read(run_dir, "summary.txt")}
```

## Receptive field

{_read(run_dir, "receptive_field.md")}

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
    print(f"wrote {path / 'report.md'}: final test accuracy (epoch {res['epochs']}) "
          f"{pct(res['final_test_acc'])} without TTA, {pct(res['final_test_acc_tta'])} with flip TTA; "
          f"shipped weights: epoch {res['selected_epoch']} ({res['selected_by']}); "
          f"rules: {rules_label(res['rules_failed'])}")
    return 0
