"""The run report, rebuilt from the run folder's files alone (`s7 report RUN_DIR`).

Inputs (trainer/runfolder.py names them): config.yaml, metrics.jsonl, facts.json, rules.md, train.log,
summary.txt, receptive_field.md, augmentation.txt, model/meta.json (best/meta.json in older runs) and
predictions.npz (the shipped epoch's test predictions and misclassified images), with model/model.safetensors
for the class maps of the most confident mistakes (kept in mistake_maps.npz). Outputs: loss.png, accuracy.png,
per_class.md, misclassified.png, mistake_maps.png, report.md.

Honest numbers (issue 8): the headline is the final epoch's test accuracy, with and without flip TTA; the
shipped weights are the final epoch's, or the best validation epoch's when the run holds out a validation
split. The test split is reported, never used to pick anything.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.runfolder import METRICS, measured_at_some_epochs_only, read_predictions
from trainer.text import counted
from trainer.tools.evaluate import per_class_markdown
from trainer.tools.plots import ACC_LINES, LOSS_LINES, misclassified_png, plot
from trainer.tools.results import run_results

# size: every table and sentence of the report, and the words `s7 compare` shares with it, in one module

NOT_MEASURED = "not measured"


def rules_label(failed: list[str] | None) -> str:
    """"ALL PASS", "FAIL (a, b)" or "not checked" (a run without facts.json)."""
    if failed is None:
        return "not checked"
    return "ALL PASS" if not failed else f"FAIL ({', '.join(failed)})"


def _predictions_kind(pred: dict[str, np.ndarray], row: dict) -> str:
    """Which logged figure predictions.npz reproduces (the file does not say whether it holds TTA predictions)."""
    acc = 100.0 * float((pred["preds"] == pred["labels"]).mean())
    kinds = [name for key, name in (("test_acc", "no TTA"), ("test_acc_tta", "flip TTA"))
             if row.get(key) is not None and abs(row[key] - acc) < 1e-6]
    return " = ".join(kinds) if kinds else f"{acc:.2f}%, which matches neither logged test accuracy"


# ---------------------------------------------------------------- report.md

LOG_LEGEND = ("train: label-smoothed loss and running accuracy on augmented batches; test and val: plain "
              "cross-entropy and accuracy, without TTA and with flip TTA (mean logits of the image and its "
              "mirror){tta_when}; – = not measured.")


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def pct(value: float | None) -> str:
    """An accuracy as "88.80%", or "not measured" for None."""
    return NOT_MEASURED if value is None else f"{value:.2f}%"


def pct_cell(value: float | None) -> str:
    """An accuracy as a table cell: "88.80%", or "–" where it was not measured."""
    return "–" if value is None else f"{value:.2f}%"


# ---------------------------------------------------------------- the target reached

FIGURE_KEYS = {"": "test_acc", "_tta": "test_acc_tta"}  # the test figure of each suffix of run_results' keys


def measured_note(rows: list[dict], key: str) -> str:
    """What anything read from `key` over the epochs must add when `key` was measured at some epochs only:
    " (measured at the final epoch only)", " (measured at 3 of 32 epochs only)"; "" at every epoch or none."""
    if not measured_at_some_epochs_only(rows, key):
        return ""
    measured = [r for r in rows if r.get(key) is not None]
    if measured == [rows[-1]]:
        return " (measured at the final epoch only)"
    return f" (measured at {len(measured)} of {counted(len(rows), 'epoch')} only)"


@dataclass(frozen=True)
class Reached:
    """When a run first reached its target on one test figure, and whether that figure was measured at every epoch."""

    epoch: int | None  # the first measured epoch at or above the target; None: not reached, or not measured
    seconds: float | None  # that epoch's wall-clock seconds from process start
    last_epoch: int  # the run's final epoch
    measured: bool  # the figure was measured at any epoch
    note: str  # `measured_note`: "" when measured at every epoch, else an epoch it skipped may have reached first


def reached_of(res: dict[str, Any], suffix: str = "") -> Reached:
    """When one test figure ("" no TTA, "_tta" flip TTA) first reached the target, as `results_achieved` found it
    (`epoch_to_target`...), with whether and at which epochs the figure was measured: from the rows of
    `run_results`, or for a line of benchmarks/time_to_accuracy.py, which has no rows, its no-TTA figure, measured
    at every epoch (the trainer tests every epoch); it cannot say at which epochs flip TTA was, so "_tta" of a line
    is refused."""
    rows = res.get("rows")
    if rows is None:  # a line of benchmarks/time_to_accuracy.py
        if suffix:
            raise ValueError("a line without metrics rows cannot say at which epochs flip TTA was measured")
        return Reached(res["epoch_to_target"], res["seconds_to_target"], res["epochs"],
                       res["final_test_acc"] is not None, "")
    key = FIGURE_KEYS[suffix]
    return Reached(res["epoch_to_target" + suffix], res["seconds_to_target" + suffix], res["epochs"],
                   any(r.get(key) is not None for r in rows), measured_note(rows, key))


def reached_text(res: dict[str, Any], suffix: str = "", *, cell: bool = True) -> str:
    """`reached_of` in words, the same in every table: "epoch 69, 250.6 s" ("... s wall from process start"
    outside a cell), "not in 20 epochs", each followed by the `measured_note`; "–" ("not measured") unmeasured.
    `res`: `run_results` of a run folder, or a line of benchmarks/time_to_accuracy.py (the same keys, no rows)."""
    r = reached_of(res, suffix)
    if not r.measured:
        return "–" if cell else NOT_MEASURED
    if r.epoch is None:
        return f"not in {counted(r.last_epoch, 'epoch')}{r.note}"
    return f"epoch {r.epoch}, {r.seconds:.1f} s{'' if cell else ' wall from process start'}{r.note}"


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
    some = measured_at_some_epochs_only(rows)
    legend = LOG_LEGEND.format(tta_when=", flip TTA after the final epoch only" if some else "")
    return legend + "\n\n" + "\n".join(lines)


def results_table(res: dict[str, Any], data: str) -> str:
    """The "Results achieved" table: every accuracy with and without flip TTA, the final epoch first."""
    cfg, has_val = res["config"], res["final_val_acc"] is not None
    rows = [("model", f"{cfg.get('model', '?')} (recipe {cfg.get('recipe') or 'custom'})"), ("data", data),
            ("rules", rules_label(res["rules_failed"])), ("epochs", str(res["epochs"])),
            ("final test accuracy, no TTA", pct(res["final_test_acc"])),
            ("final test accuracy, flip TTA", pct(res["final_test_acc_tta"]))]
    if res["final_test_acc_tta_shift"] is not None:
        rows.append((f"final test accuracy, flip and ±{cfg.get('tta_shift', '?')} px shift TTA",
                     pct(res["final_test_acc_tta_shift"])))
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
    rows += [(f"{target}, no TTA", reached_text(res, "", cell=False)),
             (f"{target}, flip TTA", reached_text(res, "_tta", cell=False)),
             ("total parameters", f"{res['parameters']:,}" if res["parameters"] else "?"),
             ("receptive field", str(res["receptive_field"]))]
    return "\n".join(["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


def _read(run_dir: Path, name: str) -> str:
    path = run_dir / name
    return path.read_text().rstrip() if path.is_file() else f"({name} missing)"


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
    rows = res["rows"]
    shipped = next(r for r in rows if r["epoch"] == res["selected_epoch"])
    pred = read_predictions(run_dir)  # before anything is written: a damaged file leaves the folder as it was
    plot(rows, LOSS_LINES, "loss", run_dir / "loss.png",
         title="train and test losses are different objectives: compare their trends, not their levels")
    plot(rows, ACC_LINES, "accuracy (%)", run_dir / "accuracy.png", shipped_epoch=res["selected_epoch"])
    per_class, per_class_title = "(no predictions.npz)", f"shipped weights, epoch {res['selected_epoch']}"
    if pred is not None:
        per_class_title += f", {_predictions_kind(pred, shipped)}"
        per_class = per_class_markdown(pred["preds"], pred["labels"], [str(c) for c in pred["classes"]])
        (run_dir / "per_class.md").write_text(f"# Per-class test accuracy ({per_class_title})\n\n{per_class}\n")
        misclassified_png(pred, run_dir / "misclassified.png")
    (run_dir / "report.md").write_text(report_text(run_dir, res, per_class_title, per_class,
                                                   _mistake_maps_section(run_dir)))
    return res


def report_text(run_dir: Path, res: dict[str, Any], per_class_title: str, per_class: str, mistake_maps: str) -> str:
    """report.md's text: `run_results`'s figures and tables, the sections given, and the run's own files."""
    data = res["meta"].get("data", res["config"].get("data") or "CIFAR-10 (torchvision)")
    return f"""# Report: {run_dir.name} — rules: {rules_label(res["rules_failed"])}

## Results achieved

{results_table(res, data)}

![loss](loss.png) ![accuracy](accuracy.png)

## Rules (rules.md)

{_rules_section(res["rules_md"])}

## Training log

{log_table(res["rows"])}

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


def misclassified_for_wandb(run_dir: Path) -> list[tuple]:
    """(image, true, predicted, probability) rows for a W&B table."""
    p = read_predictions(run_dir)
    if p is None:
        return []
    classes = [str(c) for c in p["classes"]]
    return [(img, classes[p["labels"][i]], classes[p["preds"][i]], float(p["probs"][i]))
            for i, img in zip(p["wrong_index"], p["wrong_images"])]


def report_command(run_dir: str) -> int:
    """`s7 report RUN_DIR`."""
    path = Path(run_dir)
    if not (path / METRICS).is_file():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no {METRICS})")
    res = build_report(path)
    print(f"wrote {path / 'report.md'}: final test accuracy (epoch {res['epochs']}) "
          f"{pct(res['final_test_acc'])} without TTA, {pct(res['final_test_acc_tta'])} with flip TTA; "
          f"shipped weights: epoch {res['selected_epoch']} ({res['selected_by']}); "
          f"rules: {rules_label(res['rules_failed'])}")
    return 0
