"""Regenerate the README's generated blocks from commands and committed results (never typed by hand).

Blocks are delimited by `<!-- generated:NAME -->` ... `<!-- /generated:NAME -->`. Run `make readme`.
`--check` exits 1 if a block that needs only the repository (rules, summary, augmentation, results) is stale.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
RESULTS = ROOT / "results"


def _capture(fn, *args) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        fn(*args)
    return buf.getvalue().rstrip()


def block_rules() -> str:
    import models
    from models.rules import check_command

    parts = []
    for name in models.MODEL_NAMES:
        parts.append(f"### `s7 check {name}`\n\n" + _capture(check_command, name).replace(f"## {name}: ", "#### "))
    return "\n\n".join(parts)


def block_summary() -> str:
    from models.rules import summary_command

    return "```\n$ s7 summary s7\n" + _capture(summary_command, "s7") + "\n```"


def block_augment() -> str:
    from trainer import augment

    return "```python\n" + inspect.getsource(augment.build_train_transform).rstrip() + "\n```"


def _shared_relative(text: str) -> str:
    """Commands print the data source resolved; the README names the shared folder as ../shared."""
    return text.replace(str(SHARED_DATA.resolve().parents[1]), "../shared")


def block_stats() -> str:
    from trainer.cli import stats_command

    if not SHARED_DATA.is_file():
        return "(the shared JPEG copy was not found when this was generated)"
    out = _capture(stats_command, str(SHARED_DATA), str(ROOT / "data"))
    out = re.sub(r"^loaded in .*$", "", out, flags=re.M).rstrip()  # timing varies run to run
    return "```\n$ s7 stats --data ../shared/data/cifar10-jpeg.tar.gz\n" + _shared_relative(out) + "\n```"


def _runs() -> list[Path]:
    return sorted(p for p in RESULTS.glob("*") if (p / "metrics.jsonl").is_file())


def _info(run: Path) -> dict:
    return json.loads((run / "run_info.json").read_text()) if (run / "run_info.json").is_file() else {}


TTA_ONLY_NOTE = ("Runs from before issue 8 measured test accuracy with flip TTA only (mean logits of the image and "
                 "its mirror); their figure without TTA was not measured.")


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}%"


def _reached(res: dict, suffix: str) -> str:
    """When a run first reached its target on one test figure ("" no TTA, "_tta" flip TTA):
    "epoch 69, 250.6 s", "not in 20 epochs", or "–" where that figure was not measured."""
    if res["final_test_acc" + suffix] is None:
        return "–"
    epoch = res["epoch_to_target" + suffix]
    return f"epoch {epoch}, {res['seconds_to_target' + suffix]:.1f} s" if epoch else f"not in {res['epochs']} epochs"


def _target_label(results: list[dict]) -> str:
    targets = {res["target_acc"] for res in results}
    return f"{targets.pop():g}%" if len(targets) == 1 else "target"


def block_results() -> str:
    from trainer.report import rules_label, run_results

    results = {run.name: run_results(run) for run in _runs()}
    if not results:
        return "(no committed results yet)"
    target = _target_label(list(results.values()))
    lines = [f"| run | model | where | epochs | rules | test acc, no TTA | test acc, flip TTA | shipped weights | "
             f"{target} reached, no TTA | {target} reached, flip TTA | params | RF |", "|---" * 12 + "|"]
    for name, res in results.items():
        lines.append(f"| [{name}](results/{name}/report.md) | {res['config'].get('model', '?')} | "
                     f"{_info(RESULTS / name).get('where', '?')} | {res['epochs']} | "
                     f"{rules_label(res['rules_failed'])} | {_cell(res['final_test_acc'])} | "
                     f"{_cell(res['final_test_acc_tta'])} | epoch {res['selected_epoch']}, {res['selected_by']} | "
                     f"{_reached(res, '')} | {_reached(res, '_tta')} | "
                     f"{res['parameters']:,} | {res['receptive_field']} |")
    lines += ["", "Test accuracy is the final epoch's, on the full test split, without and with flip TTA; "
              "\"shipped weights\" is the epoch whose weights the run folder ships and how it was picked; "
              "– = not measured."]
    if any(res["final_test_acc"] is None for res in results.values()):
        lines[-1] += " " + TTA_ONLY_NOTE
    return "\n".join(lines)


def block_speed() -> str:
    """Time to accuracy and where the time went, from each run's time_to_accuracy.json and metrics."""
    from trainer.report import run_results

    timed = {run.name: (json.loads((run / "time_to_accuracy.json").read_text()), run_results(run))
             for run in _runs() if (run / "time_to_accuracy.json").is_file()}
    target = _target_label([res for _, res in timed.values()])
    lines = [f"| run | where | start-up s | training s (waiting for data) | evaluation s | {target} reached, no TTA | "
             f"{target} reached, flip TTA | loader img/s (workers) | training step img/s |", "|---" * 9 + "|"]
    for name, (t, res) in timed.items():
        loader = (f"{t['loader_images_per_s']:,.0f} ({t['loader_workers']})" if "loader_images_per_s" in t else "–")
        step = (f"{t['step_images_per_s']:,.0f} ({t['precision']}, batch {t['batch_size']})"
                if "step_images_per_s" in t else "–")
        lines.append(f"| {name} | {_info(RESULTS / name).get('where', '?')} | {t['startup_seconds']:.1f} | "
                     f"{t['train_seconds']:.1f} ({t['data_wait_seconds']:.1f}) | {t['test_seconds']:.1f} | "
                     f"{_reached(res, '')} | {_reached(res, '_tta')} | {loader} | {step} |")
    if "s7-default" in timed:
        t, default = timed["s7-default"][0], timed["s7-default"][1]["rows"]
        later = sorted(r["epoch_seconds"] for r in default[1:])
        lines += ["", f"In `s7-default` the loader ({t['loader_images_per_s']:,.0f} img/s) outruns the bare training "
                  f"step ({t['step_images_per_s']:,.0f} img/s) and the loop waited {t['data_wait_seconds']:.1f} s "
                  f"for data in {t['train_seconds']:.1f} s of training: at this model size the GPU step (kernel "
                  f"launches), not the albumentations workers, sets the pace. The first epoch took "
                  f"{default[0]['epoch_seconds']:.1f} s (cuDNN autotuning, worker start-up), later ones a median "
                  f"{later[len(later) // 2]:.1f} s."]
    return "\n".join(lines)


def _accuracy_words(row: dict) -> str:
    """A row's test accuracy in words: both figures, or the one measured."""
    plain, tta = row.get("test_acc"), row.get("test_acc_tta")
    if plain is None:
        return f"{tta:.2f} % with flip TTA"
    return f"{plain:.2f} % without TTA" + ("" if tta is None else f", {tta:.2f} % with flip TTA")


def _verdict(plain_ok: bool, tta_ok: bool, plain_measured: bool) -> str:
    if plain_ok:
        return "reached"
    return ("reached with flip TTA only" if plain_measured else "reached with flip TTA") if tta_ok else "not reached"


def _at_least(row: dict | None, key: str, target: float) -> bool:
    return row is not None and row.get(key) is not None and row[key] >= target


def _first_passes(rows: list[dict], target: float) -> list[tuple[str, dict]]:
    """(how measured, first row at or above the target) for each test figure that reached it."""
    from trainer.report import first_row_reaching

    hits = [("without TTA", first_row_reaching(rows, target, "test_acc")),
            ("with flip TTA", first_row_reaching(rows, target, "test_acc_tta"))]
    return [(how, row) for how, row in hits if row is not None]


def block_targets() -> str:
    """Issue 5's targets against the committed runs: final-epoch test accuracy, without and with flip TTA."""
    from trainer.report import run_results

    names = ("s7-long", "s7-default", "s7_dilated", "s7_strided")
    if not all((RESULTS / n / "metrics.jsonl").is_file() for n in names):
        return "(runs missing)"
    long_, default, dil, stri = (run_results(RESULTS / n)["rows"] for n in names)
    e15 = next((r for r in default if r["epoch"] == 15), None)

    def verdict(row, target):
        return _verdict(_at_least(row, "test_acc", target), _at_least(row, "test_acc_tta", target),
                        row is not None and row.get("test_acc") is not None)

    long_hits = " and ".join(f"at epoch {r['epoch']} {how}" for how, r in _first_passes(long_, 87))
    default_hits = _first_passes(default, 87)
    fast = {how for how, r in default_hits if r["wall_seconds"] <= 60}
    return "\n".join([
        f"- **≥ 90 % (long recipe): {verdict(long_[-1], 90)}.** `s7` with `configs/s7_long.yaml` reached "
        f"{_accuracy_words(long_[-1])} at its final epoch ({long_[-1]['epoch']}).",
        f"- **≥ 87 % by epoch 15 (default recipe): {verdict(e15, 87)}.** `configs/s7.yaml` gave "
        + (f"{_accuracy_words(e15)} at epoch 15 and " if e15 else "")
        + f"{_accuracy_words(default[-1])} at its final epoch ({default[-1]['epoch']})"
        + (f"; the long recipe first passed 87 % {long_hits}." if long_hits else "."),
        f"- **`s7_dilated` ≥ 87 %: {verdict(dil[-1], 87)}** ({_accuracy_words(dil[-1])} at its final epoch, "
        f"{dil[-1]['epoch']}); `s7_strided` {_accuracy_words(stri[-1])} at its final epoch ({stri[-1]['epoch']}).",
        f"- **87 % in ≤ 60 s on one GPU: "
        f"{_verdict('without TTA' in fast, bool(fast), default[-1].get('test_acc') is not None)}** "
        + ("(the default recipe: " + "; ".join(f"{r['wall_seconds']:.1f} s {how}" for how, r in default_hits) + ")."
           if default_hits else "(the default recipe never reached 87 %)."),
    ] + ([f"\n{TTA_ONLY_NOTE}"] if any(r.get("test_acc") is None for r in long_ + default + dil + stri) else []))


def block_evaluate() -> str:
    """`s7 evaluate` of the shipped weights on this machine."""
    import platform

    import models
    from trainer.evaluate import evaluate_command

    if not SHARED_DATA.is_file():
        return "(the shared JPEG copy was not found when this was generated)"
    lines = []
    for name in models.MODEL_NAMES:
        out = _capture(evaluate_command, str(ROOT / f"models/weights/{name}.safetensors"), str(SHARED_DATA),
                       str(ROOT / "data"), None, 500)
        lines.append(f"$ s7 evaluate models/weights/{name}.safetensors --data ../shared/data/cifar10-jpeg.tar.gz\n"
                     + _shared_relative(out.splitlines()[0]))
    return (f"On {platform.machine()} CPU, fp32 ({os.cpu_count()} cores):\n\n```\n" + "\n".join(lines) + "\n```")


def block_headline() -> str:
    """The headline run's training log and plots, from results/s7-long."""
    from trainer.report import log_table, run_results

    run = RESULTS / "s7-long"
    if not (run / "metrics.jsonl").is_file():
        return "(no headline run committed)"
    return ("![loss](results/s7-long/loss.png) ![accuracy](results/s7-long/accuracy.png)\n\n"
            "Training log (every 5th epoch; the full log is in [results/s7-long/train.log]"
            "(results/s7-long/train.log)):\n\n" + log_table(run_results(run)["rows"], every=5) +
            "\n\n![misclassified](results/s7-long/misclassified.png)")


BLOCKS = {"rules": block_rules, "summary": block_summary, "augment": block_augment, "stats": block_stats,
          "results": block_results, "speed": block_speed, "headline": block_headline,
          "targets": block_targets, "evaluate": block_evaluate}
REPO_ONLY = ("rules", "summary", "augment", "results", "speed", "headline", "targets")


def render(text: str, names) -> str:
    for name in names:
        pattern = re.compile(rf"(<!-- generated:{name} -->\n)(?:.*?\n)?(<!-- /generated:{name} -->)", re.S)
        if not pattern.search(text):
            continue
        body = BLOCKS[name]()
        text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
    return text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text()
    if args.check:
        fresh = render(text, REPO_ONLY)
        if fresh != text:
            print("README.md is stale: run `make readme`", file=sys.stderr)
            return 1
        return 0
    readme.write_text(render(text, BLOCKS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
