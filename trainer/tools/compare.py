"""`s7 compare RUN_DIR...`: runs side by side, from their run folders alone (offline, no W&B server).

Each run's figures come from `trainer.tools.results.run_results` (the same reading `s7 report` makes: final epoch,
time to the target, rules, parameters, receptive field); this module adds only what a comparison needs:
the best epoch's test accuracy (picked on the test split, so shown for reference only), the mean training
throughput, the device, and one figure with every run's test curves overlaid.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.runfolder import RUN_INFO, read_json
from trainer.tools.plots import series
from trainer.tools.report import FIGURE_KEYS, measured_note, pct_cell, reached_text, rules_label, target_label
from trainer.tools.results import run_results

BEST_LABEL = "best (picked on test, for reference only)"
LEGEND = ("final = the last epoch's test accuracy (the headline); best = the highest test accuracy of any epoch, "
          "which picks the epoch on the test split: for reference only, never a result. No TTA / flip TTA: "
          "plain forward pass / mean logits of the image and its mirror. Target reached: the first epoch at or "
          "above the run's target_acc, and its wall-clock seconds from process start. img/s: training images per "
          "second (all processes), averaged over the epochs. – = not measured.")
SOME_EPOCHS_LEGEND = (" A figure marked \"(measured at the final epoch only)\" (flip TTA with tta_every_epoch false) "
                      "or \"(measured at N of M epochs only)\" was measured at those epochs alone: its best is the "
                      "best of them (at the final epoch alone, the final figure again, picked from nothing) and its "
                      "target reached the first of them at or above the target; an epoch it skipped may have "
                      "reached the target earlier.")


def find_run_dir(path: Path) -> Path:
    """The run folder `path` names: the folder itself, or for a W&B offline run folder inside a run folder
    (RUN/wandb/offline-run-*), the run folder that holds it. A W&B folder on its own is refused (see
    `compare --help`)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder")
    for folder in (path, *path.parents):
        if (folder / "metrics.jsonl").is_file():
            if folder != path and "wandb" not in path.relative_to(folder).parts:
                break  # a subfolder of a run folder that is not its W&B folder (checkpoints/, model/)
            return folder
    if list(path.glob("*.wandb")) or list(path.glob("*/*.wandb")):
        raise ValueError(f"{path}: a W&B offline run outside its run folder; pass the run folder that holds it "
                         "(wandb ships no reader for .wandb files)")
    raise FileNotFoundError(f"{path}: not a run folder (no metrics.jsonl)")


def _best(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return max(values) if values else None


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def run_device(run_dir: Path, facts: dict[str, Any]) -> str:
    """Where the run trained: run_info.json's "where" (written for committed runs, with what shared the
    machine), else facts.json's device, precision and process count; "?" when neither says."""
    where = read_json(Path(run_dir) / RUN_INFO).get("where")
    if where:
        return where
    if not facts.get("device"):
        return "?"
    precision = {"no": "fp32", None: "precision ?"}.get(facts.get("precision"), facts.get("precision"))
    return f"{facts.get('processes') or '?'} x {facts['device']}, {precision}"


def summarize(run_dir: Path) -> dict[str, Any]:
    """`run_results` of the run folder plus best_test_acc, best_test_acc_tta (max over the epochs that measured
    it), images_per_second (mean over epochs), device and path."""
    run_dir = find_run_dir(run_dir)
    res = run_results(run_dir)
    rows = res["rows"]
    return {**res, "path": run_dir, "best_test_acc": _best(rows, "test_acc"),
            "best_test_acc_tta": _best(rows, "test_acc_tta"), "images_per_second": _mean(rows, "images_per_second"),
            "device": run_device(run_dir, res["facts"])}


def short_labels(paths: list[Path]) -> list[str]:
    """The shortest trailing parts of each path that tell the runs apart (folder names when they differ)."""
    parts = [Path(p).resolve().parts for p in paths]
    depth = 1
    while depth < max(map(len, parts)) and len({p[-depth:] for p in parts}) < len(parts):
        depth += 1
    return ["/".join(p[-depth:]) for p in parts]


def _reached(res: dict[str, Any], suffix: str, show_target: bool) -> str:
    """`reached_text`, prefixed with the run's own target where the runs' targets differ."""
    text = reached_text(res, suffix)
    return f"{res['target_acc']:g}%: {text}" if show_target and text != "–" else text


def _best_cell(res: dict[str, Any], suffix: str) -> str:
    """The best test figure ("" no TTA, "_tta" flip TTA) as a cell, saying so when it was measured at some epochs
    only (`measured_note`): then it is the best of those epochs alone."""
    best = res["best_test_acc" + suffix]
    return "–" if best is None else pct_cell(best) + measured_note(res["rows"], FIGURE_KEYS[suffix])


def compare_table(runs: list[dict[str, Any]], labels: list[str] | None = None) -> str:
    """Markdown table of `summarize` results, one row per run, with its legend below. A column of final
    validation accuracy appears when any run holds out a validation split."""
    labels = labels or short_labels([r["path"] for r in runs])
    target, several = target_label(runs), len({r["target_acc"] for r in runs}) > 1
    with_val = any(r["final_val_acc"] is not None for r in runs)
    head = ["run", "model", "recipe", "params", "RF", "epochs", "final test acc, no TTA", "final test acc, flip TTA",
            f"{BEST_LABEL}, no TTA", f"{BEST_LABEL}, flip TTA"]
    head += ["final val acc, no TTA"] if with_val else []
    head += [f"{target} reached, no TTA", f"{target} reached, flip TTA", "img/s", "device", "rules"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, r in zip(labels, runs):
        cfg = r["config"]
        cells = [label, cfg.get("model", "?"), cfg.get("recipe") or "custom",
                 f"{r['parameters']:,}" if r["parameters"] else "?", str(r["receptive_field"] or "?"),
                 str(r["epochs"]), pct_cell(r["final_test_acc"]), pct_cell(r["final_test_acc_tta"]),
                 _best_cell(r, ""), _best_cell(r, "_tta")]
        cells += [pct_cell(r["final_val_acc"])] if with_val else []
        cells += [_reached(r, "", several), _reached(r, "_tta", several),
                  "–" if r["images_per_second"] is None else f"{r['images_per_second']:,.0f}", r["device"],
                  rules_label(r["rules_failed"])]
        lines.append("| " + " | ".join(cells) + " |")
    some = any(measured_note(r["rows"], key) for r in runs for key in FIGURE_KEYS.values())
    return "\n".join(lines) + "\n\n" + LEGEND + (SOME_EPOCHS_LEGEND if some else "")


def curves_figure(runs: list[dict[str, Any]], labels: list[str] | None = None):
    """One matplotlib figure, two panels: every run's test accuracy and test loss per epoch, overlaid; solid
    without TTA, dashed with flip TTA (a run that measured only one of them draws only that one). Each line's
    label is the run's, plus ", flip TTA" for the dashed one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels or short_labels([r["path"] for r in runs])
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(12, 4.6), dpi=100)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, r) in enumerate(zip(labels, runs)):
        epochs = [row["epoch"] for row in r["rows"]]
        colour = colours[i % len(colours)]
        for ax, keys in ((acc_ax, ("test_acc", "test_acc_tta")), (loss_ax, ("test_loss", "test_loss_tta"))):
            for key, style in zip(keys, ("-", "--")):
                values = series(r["rows"], key)
                if values is not None:
                    ax.plot(epochs, values, style, color=colour, marker="o", markersize=2,
                            label=f"{label}{', flip TTA' if key.endswith('_tta') else ''}")
    for ax, ylabel in ((acc_ax, "test accuracy (%)"), (loss_ax, "test loss (cross-entropy)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    acc_ax.legend(fontsize=7)
    fig.suptitle("test curves: solid = no TTA, dashed = flip TTA", fontsize=9)
    fig.tight_layout()
    return fig


def plot_curves(runs: list[dict[str, Any]], path: Path, labels: list[str] | None = None) -> None:
    """`curves_figure` saved as a PNG."""
    fig = curves_figure(runs, labels)
    import matplotlib.pyplot as plt  # after curves_figure chose the Agg backend

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def compare_command(run_dirs: list[str], out: str | None) -> int:
    """`s7 compare`: print the table; draw the curves to `out` (a PNG) unless it is None."""
    if not run_dirs:
        raise ValueError("name at least one run folder")
    runs = [summarize(Path(d)) for d in run_dirs]
    print(compare_table(runs))
    if out:
        plot_curves(runs, Path(out))
        print(f"\nwrote {out}")
    return 0
