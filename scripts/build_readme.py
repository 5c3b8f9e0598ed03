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


def block_stats() -> str:
    from trainer.dataset import stats_command

    if not SHARED_DATA.is_file():
        return "(the shared JPEG copy was not found when this was generated)"
    out = _capture(stats_command, str(SHARED_DATA), str(ROOT / "data"))
    out = re.sub(r"^loaded in .*$", "", out, flags=re.M).rstrip()  # timing varies run to run
    return "```\n$ s7 stats --data ../shared/data/cifar10-jpeg.tar.gz\n" + out.replace(str(ROOT.parent), "..") + "\n```"


def _runs() -> list[Path]:
    return sorted(p for p in RESULTS.glob("*") if (p / "metrics.jsonl").is_file())


def block_results() -> str:
    from trainer.report import run_results

    runs = _runs()
    if not runs:
        return "(no committed results yet)"
    lines = ["| run | model | where | epochs | best train acc | best test acc (epoch) | 87% reached | params | RF |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        res = run_results(run)
        info = json.loads((run / "run_info.json").read_text()) if (run / "run_info.json").is_file() else {}
        hit = (f"epoch {res['epoch_to_target']}, {res['seconds_to_target']:.0f} s" if res["epoch_to_target"]
               else "no")
        lines.append(f"| [{run.name}](results/{run.name}/report.md) | {res['config'].get('model', '?')} | "
                     f"{info.get('where', '?')} | {res['epochs']} | {res['best_train_acc']:.2f}% | "
                     f"{res['best_test_acc']:.2f}% ({res['best_epoch']}) | {hit} | {res['parameters']:,} | "
                     f"{res['receptive_field']} |")
    return "\n".join(lines)


def block_speed() -> str:
    """Time to accuracy and where the time went, from each run's time_to_accuracy.json."""
    lines = ["| run | where | start-up s | training s (waiting for data) | evaluation s | 87% reached | "
             "loader img/s (workers) | training step img/s |", "|---|---|---|---|---|---|---|---|"]
    for run in _runs():
        f = run / "time_to_accuracy.json"
        if not f.is_file():
            continue
        t = json.loads(f.read_text())
        info = json.loads((run / "run_info.json").read_text()) if (run / "run_info.json").is_file() else {}
        hit = (f"{t['seconds_to_target']:.1f} s (epoch {t['epoch_to_target']})" if t.get("epoch_to_target")
               else f"not in {t['epochs']} epochs")
        loader = (f"{t['loader_images_per_s']:,.0f} ({t['loader_workers']})" if "loader_images_per_s" in t else "–")
        step = f"{t['step_images_per_s']:,.0f} ({t['precision']}, batch {t['batch_size']})" if "step_images_per_s" in t else "–"
        lines.append(f"| {run.name} | {info.get('where', '?')} | {t['startup_seconds']:.1f} | "
                     f"{t['train_seconds']:.1f} ({t['data_wait_seconds']:.1f}) | {t['test_seconds']:.1f} | {hit} | "
                     f"{loader} | {step} |")
    default = _metrics("s7-default")
    t = RESULTS / "s7-default" / "time_to_accuracy.json"
    if default and t.is_file():
        t = json.loads(t.read_text())
        later = sorted(r["epoch_seconds"] for r in default[1:])
        lines += ["", f"In `s7-default` the loader ({t['loader_images_per_s']:,.0f} img/s) outruns the bare training "
                  f"step ({t['step_images_per_s']:,.0f} img/s) and the loop waited {t['data_wait_seconds']:.1f} s "
                  f"for data in {t['train_seconds']:.1f} s of training: at this model size the GPU step (kernel "
                  f"launches), not the albumentations workers, sets the pace. The first epoch took "
                  f"{default[0]['epoch_seconds']:.1f} s (cuDNN autotuning, worker start-up), later ones a median "
                  f"{later[len(later) // 2]:.1f} s."]
    return "\n".join(lines)


def _metrics(name: str) -> list[dict]:
    from trainer.tracking import read_metrics

    return read_metrics(RESULTS / name)


def block_targets() -> str:
    """Issue 5's targets against the committed runs."""
    def best(name):
        rows = _metrics(name)
        return max(rows, key=lambda r: r["test_acc"]) if rows else None

    def at(name, epoch):
        return next((r for r in _metrics(name) if r["epoch"] == epoch), None)

    def first(name, acc=87.0):
        return next((r for r in _metrics(name) if r["test_acc"] >= acc), None)

    long_, default, dil, stri = best("s7-long"), best("s7-default"), best("s7_dilated"), best("s7_strided")
    if not all((long_, default, dil, stri)):
        return "(runs missing)"
    last_long = _metrics("s7-long")[-1]
    e15, hit_long, hit_default = at("s7-default", 15), first("s7-long"), first("s7-default")
    verdict = lambda ok: "reached" if ok else "not reached"  # noqa: E731
    return "\n".join([
        f"- **≥ 90 % (long recipe): {verdict(long_['test_acc'] >= 90)}.** `s7` with `configs/s7_long.yaml` "
        f"({last_long['epoch']} epochs) reached {long_['test_acc']:.2f} %; its best train accuracy on augmented "
        f"batches was {max(r['train_acc'] for r in _metrics('s7-long')):.2f} %: the net underfits.",
        f"- **≥ 87 % by epoch 15 (default recipe): {verdict(e15 and e15['test_acc'] >= 87)}.** `configs/s7.yaml` "
        f"gave {e15['test_acc']:.2f} % at epoch 15 and {default['test_acc']:.2f} % at best (epoch {default['epoch']})"
        + (f"; the long recipe first passed 87 % at epoch {hit_long['epoch']}." if hit_long else "."),
        f"- **`s7_dilated` ≥ 87 %: {verdict(dil['test_acc'] >= 87)}** ({dil['test_acc']:.2f} % at epoch "
        f"{dil['epoch']}); `s7_strided` {stri['test_acc']:.2f} % at epoch {stri['epoch']}.",
        f"- **87 % in ≤ 60 s on one GPU: {verdict(hit_default and hit_default['wall_seconds'] <= 60)}**"
        + (f" (the default recipe: {hit_default['wall_seconds']:.1f} s)." if hit_default else
           " (the default recipe never reached 87 %)."),
    ])


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
                     + out.splitlines()[0].replace(str(ROOT.parent), ".."))
    return (f"On {platform.machine()} CPU, fp32 ({os.cpu_count()} cores):\n\n```\n" + "\n".join(lines) + "\n```")


def block_headline() -> str:
    """The headline run's training log, plots and summary, from results/s7-long."""
    from trainer.tracking import read_metrics

    run = RESULTS / "s7-long"
    if not (run / "metrics.jsonl").is_file():
        return "(no headline run committed)"
    rows = read_metrics(run)
    log = ["| epoch | train loss | train acc % | test loss | test acc % | lr | s | wall s |",
           "|---|---|---|---|---|---|---|---|"]
    log += [f"| {r['epoch']} | {r['train_loss']:.4f} | {r['train_acc']:.2f} | {r['test_loss']:.4f} | "
            f"{r['test_acc']:.2f} | {r['lr']:.4f} | {r['epoch_seconds']:.1f} | {r['wall_seconds']:.1f} |"
            for r in rows if r["epoch"] % 5 == 0 or r["epoch"] == 1]
    return ("![loss](results/s7-long/loss.png) ![accuracy](results/s7-long/accuracy.png)\n\n"
            "Training log (every 5th epoch; the full log is in [results/s7-long/train.log]"
            "(results/s7-long/train.log)):\n\n" + "\n".join(log) +
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
