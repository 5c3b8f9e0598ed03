"""A run's figures, read from its run folder's files (metrics.jsonl, config.yaml, model/meta.json, facts.json):
the one reading that `s7 report`, `s7 compare`, the benchmarks and the README builder share."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from trainer.runfolder import (CONFIG, LEGACY_SELECTION, METRICS, RULES_MD, first_row_reaching, model_meta,
                               read_facts, read_metrics, selected_row, selection_rule, upgrade_legacy_rows)


def _field(row: dict, key: str, source: Path | str) -> Any:
    """row[key], or a ValueError naming `source` (the rows' file), the epoch and the key it lacks."""
    if key not in row:
        raise ValueError(f"{source}: the row of epoch {row.get('epoch', '?')} has no {key!r}")
    return row[key]


def results_achieved(rows: list[dict], *, target_acc: float = 87.0, parameters: int | None = None,
                     receptive_field: int | None = None, rules_failed: list[str] | None = None,
                     selected: dict | None = None, selected_by: str | None = None,
                     source: Path | str = "metrics rows") -> dict[str, Any]:
    """A run's figures from its metrics rows (current form: see `upgrade_legacy_rows`). The headline is the
    final epoch; `selected` (default `selected_row(rows)`) is the shipped epoch. None = not measured. A row
    lacking a figure read here is a ValueError naming `source` (the rows' file)."""
    final = rows[-1]
    selected = selected or selected_row(rows)
    hit, hit_tta = first_row_reaching(rows, target_acc, "test_acc"), first_row_reaching(rows, target_acc)
    return {
        "epochs": final["epoch"],
        "final_test_acc": final.get("test_acc"),
        "final_test_acc_tta": final.get("test_acc_tta"),
        "final_test_acc_tta_shift": final.get("test_acc_tta_shift"),  # only runs with --tta-shift measure it
        "final_val_acc": final.get("val_acc"),
        "final_val_acc_tta": final.get("val_acc_tta"),
        "final_train_acc": _field(final, "train_acc", source),  # running accuracy on augmented batches
        "selected_epoch": selected["epoch"],
        "selected_by": selected_by or selection_rule(selected),
        "selected_test_acc": selected.get("test_acc"),
        "selected_test_acc_tta": selected.get("test_acc_tta"),
        "selected_val_acc": selected.get("val_acc"),
        "selected_val_acc_tta": selected.get("val_acc_tta"),
        "target_acc": target_acc,
        "epoch_to_target": hit["epoch"] if hit else None,
        "seconds_to_target": _field(hit, "wall_seconds", source) if hit else None,
        "epoch_to_target_tta": hit_tta["epoch"] if hit_tta else None,
        "seconds_to_target_tta": _field(hit_tta, "wall_seconds", source) if hit_tta else None,
        "parameters": parameters,
        "receptive_field": receptive_field,
        "rules_failed": rules_failed,
    }


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


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's config.yaml as a dict ({} when it has none or it is empty); a file that is not valid YAML or
    not a mapping is a ValueError naming it."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return {}
    try:
        cfg = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid YAML ({' '.join(str(e).split())[:200]})") from None
    if cfg is not None and not isinstance(cfg, dict):
        raise ValueError(f"{path}: not a mapping of settings but a {type(cfg).__name__}")
    return cfg or {}


def run_results(run_dir: Path) -> dict[str, Any]:
    """A run folder's figures (`results_achieved`) plus "rows" (legacy rows upgraded), "config", "meta"
    (of the shipped weights), "facts" and "rules_md", from metrics.jsonl, config.yaml, model/meta.json,
    facts.json (parameters, RF of the map entering GAP, the rules failed) and rules.md (shown, never read)."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    rows = upgrade_legacy_rows(read_metrics(run_dir), cfg)
    if not rows:
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl rows to report")
    facts = read_facts(run_dir)
    meta = model_meta(run_dir)
    selected, selected_by = _shipped(rows, meta)
    res = results_achieved(rows, target_acc=cfg.get("target_acc", 87.0), parameters=facts.get("parameters"),
                           receptive_field=facts.get("receptive_field"), rules_failed=facts.get("rules_failed"),
                           selected=selected, selected_by=selected_by, source=run_dir / METRICS)
    rules_md = (run_dir / RULES_MD).read_text().rstrip() if (run_dir / RULES_MD).is_file() else None
    return {**res, "rows": rows, "config": cfg, "meta": meta, "facts": facts, "rules_md": rules_md}


def shipped_run(weights: Path, root: Path) -> Path | None:
    """The committed run folder shipped weights came from: their metadata's "run", relative to the repository
    `root` (written by scripts/ship_weights.py); None when the file names none."""
    from trainer.checkpoint import load_weights

    run = load_weights(Path(weights))[1].get("run")
    return Path(root) / run if run else None
