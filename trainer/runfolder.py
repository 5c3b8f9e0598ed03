"""The run folder's format, the bottom layer: file names, metrics rows, the selection rule ("which epoch ships"),
the shipped epoch's predictions and the model facts (facts.json: parameters, receptive field, rule results,
device, precision) stored as numbers. Training writes these; every tool reads them; this module imports
nothing of either, so both can use it.
"""
from __future__ import annotations

import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
FACTS = "facts.json"
PREDICTIONS = "predictions.npz"
TRAIN_LOG = "train.log"
STARTUP = "startup.json"
RULES_MD = "rules.md"
SUMMARY = "summary.txt"
RF_MD = "receptive_field.md"
AUGMENTATION = "augmentation.txt"
REPORT_MD = "report.md"
PER_CLASS_MD = "per_class.md"
RUN_INFO = "run_info.json"  # committed runs: where they ran, what shared the machine
WEIGHTS_DIR = "model"  # the shipped weights: model.safetensors + meta.json
LEGACY_WEIGHTS_DIR = "best"  # runs before issue 8
CHECKPOINTS_DIR = "checkpoints"

LEGACY_SELECTION = "best test_acc (old trainer: picked on the test split)"


def write_atomic(path: Path, text: str) -> None:
    """Write a text file so readers see the old or the new content, never half of it."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------- metrics rows

def append_row(run_dir: Path, row: dict[str, Any]) -> None:
    """One epoch's row at the end of metrics.jsonl."""
    with open(Path(run_dir) / METRICS, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Rows of metrics.jsonl; the last row for an epoch wins (a resumed run may repeat one). A line that is not
    a JSON row with an "epoch" is a ValueError naming the file and the line, except an unparseable last line
    without its newline: `append_row` writes a row and its newline at once, so that is a write cut short by a
    crash, dropped (the resume rewrites the file without it)."""
    rows: dict[int, dict[str, Any]] = {}
    path = Path(run_dir) / METRICS
    if path.is_file():
        text = path.read_text()
        lines = text.splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                if number == len(lines) and not text.endswith("\n"):
                    break
                raise ValueError(f"{path}: line {number} is not JSON ({e.msg}, column {e.colno})") from None
            if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
                raise ValueError(f"{path}: line {number} is not a row of an epoch (no whole-number \"epoch\")")
            rows[row["epoch"]] = row
    return [rows[k] for k in sorted(rows)]


def truncate_metrics(run_dir: Path, last_epoch: int) -> list[dict[str, Any]]:
    """Drop rows after `last_epoch` (an interrupted epoch's row, if any) before resuming; return the rows kept."""
    rows = [r for r in read_metrics(run_dir) if r["epoch"] <= last_epoch]
    write_atomic(Path(run_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


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


# ---------------------------------------------------------------- the selection rule

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


def measured_at_some_epochs_only(rows: list[dict], key: str = "test_acc_tta") -> bool:
    """True when `key` was measured at some epochs but not all (flip TTA with --tta-every-epoch false: the final
    one only): anything read from it over the epochs (a first epoch at a target, a best) skipped epochs."""
    return {r.get(key) is not None for r in rows} == {True, False}


def step_share(row: dict) -> float | None:
    """The share of an epoch's seconds spent in training steps: not waiting for data, not in the test pass. Both
    parts are timed within the same seconds, so a host whose speed swings does not move it, unlike a ratio to a
    bare step measured minutes apart; None for rows that did not time the data wait."""
    if row.get("data_wait_seconds") is None or not row.get("epoch_seconds"):
        return None
    return (row["train_seconds"] - row["data_wait_seconds"]) / row["epoch_seconds"]


def first_row_reaching(rows: list[dict], target: float, key: str = "test_acc_tta") -> dict | None:
    """The first epoch whose `key` is at least `target` (rows where it was not measured never count)."""
    return next((r for r in rows if r.get(key) is not None and r[key] >= target), None)


def read_json(path: Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A run folder's JSON file (facts.json, meta.json, run_info.json, ...) as a dict, or {} when there is no such
    file. Not JSON, not an object, or without one of the `required` keys: a ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        found = json.loads(path.read_bytes())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e.msg}, line {e.lineno})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not JSON (not UTF-8 text)") from None
    if not isinstance(found, dict):
        raise ValueError(f"{path}: not a JSON object but a {type(found).__name__}")
    missing = [key for key in required if key not in found]
    if missing:
        raise ValueError(f"{path}: no {', '.join(map(json.dumps, missing))}")
    return found


def model_meta(run_dir: Path) -> dict[str, Any]:
    """The shipped weights' meta.json: model/ (current runs) or best/ (runs before issue 8); {} if neither.
    Every one names the epoch it shipped."""
    for sub in (WEIGHTS_DIR, LEGACY_WEIGHTS_DIR):
        path = Path(run_dir) / sub / "meta.json"
        if path.is_file():
            return read_json(path, required=("epoch",))
    return {}


# ---------------------------------------------------------------- facts as numbers

def write_facts(run_dir: Path, facts: dict[str, Any]) -> None:
    """facts.json: what the run measured of its net and machine, as numbers and names (see `facts`)."""
    write_atomic(Path(run_dir) / FACTS, json.dumps(facts, indent=1) + "\n")


def facts(model: str, parameters: int, receptive_field: int, rules: list[dict[str, Any]], device: str | None,
          precision: str | None, processes: int | None) -> dict[str, Any]:
    """The facts.json record. `rules`: one {"name", "required", "actual", "passed"} per rule checked."""
    return {"model": model, "parameters": int(parameters), "receptive_field": int(receptive_field),
            "rules": rules, "rules_failed": [r["name"] for r in rules if not r["passed"]],
            "device": device, "precision": precision, "processes": processes}


def read_facts(run_dir: Path) -> dict[str, Any]:
    """facts.json, or {} for a folder without one (a run that ended before its first epoch)."""
    return read_json(Path(run_dir) / FACTS)


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
    tmp = Path(run_dir) / "predictions.tmp.npz"
    np.savez_compressed(tmp, preds=preds, labels=labels, probs=probs, wrong_index=wrong,
                        wrong_images=images[wrong], classes=np.array(classes))
    tmp.replace(Path(run_dir) / PREDICTIONS)


PREDICTION_ARRAYS = ("preds", "labels", "probs", "wrong_index", "wrong_images", "classes")  # save_predictions'


def read_predictions(run_dir: Path) -> dict[str, np.ndarray] | None:
    """predictions.npz as arrays, every one `save_predictions` writes read in full, or None when the run has none.
    A file that is no readable .npz (cut short, say) or lacks an array: a ValueError naming the file."""
    path = Path(run_dir) / PREDICTIONS
    if not path.is_file():
        return None
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not an .npz archive (cut short, or another kind of file)")
    try:
        with np.load(path) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"{path}: an array in it is unreadable ({' '.join(str(e).split())[:120]})") from None
    missing = [key for key in PREDICTION_ARRAYS if key not in arrays]
    if missing:
        raise ValueError(f"{path}: no {', '.join(map(repr, missing))} array (it holds {', '.join(arrays) or 'none'})")
    return arrays


def confusion_matrix(preds: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """rows = true class, columns = predicted class."""
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (labels, preds), 1)
    return m


def per_class_rows(preds: np.ndarray, labels: np.ndarray, classes: list[str]) -> list[list]:
    """[class, test images, correct, accuracy %] per class (per_class.md, `s7 evaluate`, the W&B table)."""
    m = confusion_matrix(preds, labels, len(classes))
    return [[c, int(m[i].sum()), int(m[i, i]), 100.0 * m[i, i] / max(int(m[i].sum()), 1)]
            for i, c in enumerate(classes)]
