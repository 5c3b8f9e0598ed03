"""The equal-budget comparison table of benchmarks/ablations.md, read from the committed run folders under
results/ablations/ (metrics.jsonl, config.yaml, facts.json), so no figure in it is typed by hand.

    .venv/bin/python benchmarks/ablations.py
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RECIPE_KEYS = ("optimizer", "lr", "batch_size", "momentum", "weight_decay", "label_smoothing", "div_factor",
               "ema_decay", "ema_every", "whiten", "identity_init", "bn_momentum", "bn_frozen_scales", "shift_limit",
               "scale_limit", "rotate_limit", "dropout_p", "gray_p", "aug_ramp_epochs", "tta_shift", "bn_bias_lr",
               "alternate_flip")


def table(folder: Path = ROOT / "results" / "ablations") -> str:
    """One row per run: net, parameters, recipe (differences from the trainer's defaults), final-epoch figures,
    and the machine (run_info.json's "where": img/s compare only within one machine)."""
    from trainer.config import TrainConfig
    from trainer.runfolder import RUN_INFO, read_json
    from trainer.tools.results import run_results

    default = TrainConfig()
    lines = ["| run | net | params | recipe (differences from the trainer defaults) | epochs | val acc | "
             "test acc, no TTA | test acc, flip TTA | test acc, flip and shift TTA | train img/s (mean) | where | "
             "source |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in sorted(p for p in folder.iterdir() if (p / "metrics.jsonl").is_file()):
        res = run_results(run)
        cfg, final = res["config"], res["rows"][-1]
        recipe = ", ".join(f"{k} {cfg[k]}" for k in RECIPE_KEYS if k in cfg and getattr(default, k) != cfg[k])
        speed = sum(r["images_per_second"] for r in res["rows"]) / len(res["rows"])
        val = "– (no split)" if final.get("val_acc") is None else f"{final['val_acc']:.2f}%"
        shift = "–" if final.get("test_acc_tta_shift") is None else f"{final['test_acc_tta_shift']:.2f}%"
        where = read_json(run / RUN_INFO).get("where", "?")
        lines.append(f"| {run.name} | `{cfg['model']}` | {res['parameters']:,} | {recipe or 'defaults'} | "
                     f"{final['epoch']} | {val} | {final['test_acc']:.2f}% | "
                     f"{final['test_acc_tta']:.2f}% | {shift} | {speed:.0f} | {where} | "
                     f"[metrics.jsonl](../results/ablations/{run.name}/metrics.jsonl) |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
