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
import statistics
import sys
from dataclasses import dataclass
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
    from trainer.tools.check import check_command

    parts = []
    for name in models.MODEL_NAMES:
        parts.append(f"### `s7 check {name}`\n\n" + _capture(check_command, name).replace(f"## {name}: ", "#### "))
    return "\n\n".join(parts)


def block_summary() -> str:
    from trainer.tools.check import summary_command

    return "```\n$ s7 summary s7\n" + _capture(summary_command, "s7") + "\n```"


def block_augment() -> str:
    from trainer import augment

    return "```python\n" + inspect.getsource(augment.build_train_transform).rstrip() + "\n```"


def _shared_relative(text: str) -> str:
    """Commands print the data source resolved; the README names the shared folder as ../shared."""
    return text.replace(str(SHARED_DATA.resolve().parents[1]), "../shared")


def block_stats() -> str:
    from trainer.tools.data import stats_command

    if not SHARED_DATA.is_file():
        return "(the shared JPEG copy was not found when this was generated)"
    out = _capture(stats_command, str(SHARED_DATA), str(ROOT / "data"))
    out = re.sub(r"^loaded in .*$", "", out, flags=re.M).rstrip()  # timing varies run to run
    return "```\n$ s7 stats --data ../shared/data/cifar10-jpeg.tar.gz\n" + _shared_relative(out) + "\n```"


ARCHIVE = RESULTS / "archive"  # runs whose weights no longer ship (older trainers, GPU runs), kept with their label


def _runs() -> list[Path]:
    """The committed top-level runs, then the archived ones."""
    return [p for folder in (RESULTS, ARCHIVE) for p in sorted(folder.glob("*")) if (p / "metrics.jsonl").is_file()]


def _name(run: Path) -> str:
    return run.relative_to(RESULTS).as_posix()  # "make-train-cpu", "archive/s7-long"


def _info(run: Path) -> dict:
    from trainer.runfolder import RUN_INFO, read_json

    return read_json(run / RUN_INFO)


TTA_ONLY_NOTE = ("Runs from before issue 8 measured test accuracy with flip TTA only (mean logits of the image and "
                 "its mirror); their figure without TTA was not measured.")


def block_results() -> str:
    from trainer.tools.report import pct_cell, reached_text, rules_label, target_label
    from trainer.tools.results import run_results

    results = {_name(run): run_results(run) for run in _runs()}
    if not results:
        return "(no committed results yet)"
    target = target_label(list(results.values()))
    lines = [f"| run | model | where | epochs | rules | test acc, no TTA | test acc, flip TTA | shipped weights | "
             f"{target} reached, no TTA | {target} reached, flip TTA | params | RF |", "|---" * 12 + "|"]
    for name, res in results.items():
        lines.append(f"| [{name}](results/{name}/report.md) | {res['config'].get('model', '?')} | "
                     f"{_info(RESULTS / name).get('where', '?')} | {res['epochs']} | "
                     f"{rules_label(res['rules_failed'])} | {pct_cell(res['final_test_acc'])} | "
                     f"{pct_cell(res['final_test_acc_tta'])} | epoch {res['selected_epoch']}, {res['selected_by']} | "
                     f"{reached_text(res, '')} | {reached_text(res, '_tta')} | "
                     f"{res['parameters']:,} | {res['receptive_field']} |")
    lines += ["", "Test accuracy is the final epoch's, on the full test split, without and with flip TTA; "
              "\"shipped weights\" is the epoch whose weights the run folder ships and how it was picked; "
              "– = not measured."]
    if any(res["final_test_acc"] is None for res in results.values()):
        lines[-1] += " " + TTA_ONLY_NOTE
    return "\n".join(lines)


def block_speed() -> str:
    """Time to accuracy and where the time went, from each run's time_to_accuracy.json and metrics."""
    from trainer.tools.report import reached_text, target_label
    from trainer.tools.results import run_results

    timed = {_name(run): (json.loads((run / "time_to_accuracy.json").read_text()), run_results(run))
             for run in _runs() if (run / "time_to_accuracy.json").is_file()}
    target = target_label([res for _, res in timed.values()])
    lines = [f"| run | where | start-up s | training s (waiting for data) | evaluation s | {target} reached, no TTA | "
             f"{target} reached, flip TTA | loader img/s (workers) | training step img/s |", "|---" * 9 + "|"]
    for name, (t, res) in timed.items():
        loader = (f"{t['loader_images_per_s']:,.0f} ({t['loader_workers']})" if "loader_images_per_s" in t else "–")
        step = (f"{t['step_images_per_s']:,.0f} ({t['precision']}, batch {t['batch_size']})"
                if "step_images_per_s" in t else "–")
        lines.append(f"| {name} | {_info(RESULTS / name).get('where', '?')} | {t['startup_seconds']:.1f} | "
                     f"{t['train_seconds']:.1f} ({t['data_wait_seconds']:.1f}) | {t['test_seconds']:.1f} | "
                     f"{reached_text(res, '')} | {reached_text(res, '_tta')} | {loader} | {step} |")
    for name, (t, res) in timed.items():
        if "step_images_per_s" not in t:
            continue
        later = res["rows"][1:] or res["rows"]
        loop = statistics.median(r["images_per_second"] for r in later)
        whole = statistics.median(r["images_per_second"] * r["train_seconds"] / r["epoch_seconds"] for r in later)
        from trainer.runfolder import measured_at_some_epochs_only, step_share

        passes = ("flip TTA after the final epoch only" if measured_at_some_epochs_only(res["rows"])
                  else "with and without flip TTA")
        lines += ["", f"In `{name}` the training loop ran at {loop:,.0f} img/s, "
                  f"{100 * loop / t['step_images_per_s']:.1f} % of the bare step; the whole epoch, the test pass "
                  f"({passes}) included, at {whole:,.0f} img/s, "
                  f"{100 * whole / t['step_images_per_s']:.1f} % (medians of the epochs after the first)."]
        shares = [s for s in map(step_share, later) if s is not None]
        if shares:
            lines[-1] += (f" Within the epochs, the training steps took {100 * statistics.median(shares):.1f} % of "
                          f"the seconds (median; waiting for data and the test pass the rest), a share the host's "
                          f"speed does not move: the bare step was measured after the run.")
    if "archive/s7-default" in timed:
        t, default = timed["archive/s7-default"][0], timed["archive/s7-default"][1]["rows"]
        later = sorted(r["epoch_seconds"] for r in default[1:])
        lines += ["", f"In `archive/s7-default` (GPU) the loader ({t['loader_images_per_s']:,.0f} img/s) outruns the "
                  f"bare training step ({t['step_images_per_s']:,.0f} img/s) and the loop waited "
                  f"{t['data_wait_seconds']:.1f} s for data in {t['train_seconds']:.1f} s of training: at this model "
                  f"size the GPU step (kernel launches), not the albumentations workers, sets the pace. The first "
                  f"epoch took "
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
    from trainer.runfolder import first_row_reaching

    hits = [("without TTA", first_row_reaching(rows, target, "test_acc")),
            ("with flip TTA", first_row_reaching(rows, target, "test_acc_tta"))]
    return [(how, row) for how, row in hits if row is not None]


def block_targets() -> str:
    """Issue 5's GPU targets against its runs (all now archived): final-epoch test accuracy, without and with
    flip TTA."""
    from trainer.tools.results import run_results

    names = ("archive/s7-long", "archive/s7-default", "archive/s7_dilated", "archive/s7_strided")
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
        f"- **≥ 90 % (long recipe): {verdict(long_[-1], 90)}.** `s7` with the long recipe of then (its run's "
        f"`config.yaml`) reached "
        f"{_accuracy_words(long_[-1])} at its final epoch ({long_[-1]['epoch']}).",
        f"- **≥ 87 % by epoch 15 (default recipe): {verdict(e15, 87)}.** The default recipe of then gave "
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


@dataclass(frozen=True)
class CpuTarget:
    """One of issue 16's targets (JPEG copy, this 2-core CPU, final epoch). Its thresholds, stated here once, make
    both the table's label and the verdict. `measure`: "final" (the final epoch), "first" (the first epoch reaching
    `acc`, timed from process start) or "make" (the final epoch, timed from make to exit)."""

    key: str
    subject: str
    run: str  # the committed run under results/ that is judged
    measure: str
    acc: float  # test accuracy without TTA
    tta: float | None = None  # test accuracy with flip TTA
    max_epoch: int | None = None
    seconds: float | None = None  # time budget; None: none (the dilated run may be split over resumed runs)

    @property
    def label(self) -> str:
        minutes = f"{self.seconds / 60:g} min" if self.seconds is not None else ""
        if self.measure == "first":
            return f"{self.subject} to {self.acc:g} % without TTA: ≤ {minutes}"
        if self.measure == "make":
            return f"{self.subject}: ≥ {self.acc:g} % without TTA, make to exit ≤ {minutes}"
        return (f"{self.subject}{f', ≤ {minutes}' if minutes else ''}: ≥ {self.acc:g} % without TTA"
                + (f", ≥ {self.tta:g} % with flip TTA" if self.tta is not None else "")
                + (f" at an epoch ≤ {self.max_epoch}" if self.max_epoch is not None else ""))


CPU_TARGETS = {t.key: t for t in (
    CpuTarget("short", "`s7` short recipe", "ablations/a12-d-lightaug", "final", 87, max_epoch=12),
    CpuTarget("time_to_87", "process start", "make-train-cpu", "first", 87, seconds=30 * 60),
    CpuTarget("make_train", "`make train`", "make-train-cpu", "make", 87, seconds=30 * 60),
    # the same launch (seed 0) repeated on the 2-core AMD EPYC host of 2026-12-07: judged alike, shown beside it
    CpuTarget("time_to_87_repeat", "process start (repeat)", "make-train-cpu-repeat", "first", 87, seconds=30 * 60),
    CpuTarget("make_train_repeat", "`make train` (repeat)", "make-train-cpu-repeat", "make", 87, seconds=30 * 60),
    CpuTarget("long", "`s7` long", "s7-long-cpu", "final", 91, tta=92, seconds=150 * 60),
    CpuTarget("strided", "`s7_strided`", "s7_strided-long-cpu", "final", 90, seconds=150 * 60),
    CpuTarget("dilated", "`s7_dilated`", "s7_dilated-long-cpu", "final", 89),
)}


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _within(seconds: float | None, budget: float | None) -> bool:
    return budget is None or (seconds is not None and seconds <= budget)


def cpu_target_verdict(key: str, rows: list[dict], info: dict) -> tuple[str, bool]:
    """(what the run measured, whether it meets issue 16's target `key`), from its metrics rows and run_info.json;
    time is the trainer's wall clock from process start (`make_seconds` for make)."""
    from trainer.runfolder import first_row_reaching

    t = CPU_TARGETS[key]
    last = rows[-1]
    plain, tta, wall = last.get("test_acc"), last.get("test_acc_tta"), last.get("wall_seconds")
    final = (f"{plain:.2f} % / {tta:.2f} % at epoch {last['epoch']}" if plain is not None and tta is not None
             else "not measured without TTA")
    if plain is None:
        return final, False
    if t.measure == "first":
        hit = first_row_reaching(rows, t.acc, "test_acc")
        if hit is None:
            return f"{t.acc:g} % not reached in {last['epoch']} epochs", False
        return f"epoch {hit['epoch']}, {_minutes(hit['wall_seconds'])}", _within(hit["wall_seconds"], t.seconds)
    met = (plain >= t.acc and (t.tta is None or _at_least(last, "test_acc_tta", t.tta))
           and (t.max_epoch is None or last["epoch"] <= t.max_epoch))
    if t.measure == "make":
        make = info.get("make_seconds")
        return (f"{final}, make to exit {_minutes(make)}" if make is not None else f"{final}, make time not stored",
                met and make is not None and _within(make, t.seconds))
    return (f"{final}, {_minutes(wall)}" if wall is not None else final,
            met and _within(wall, t.seconds))


CPU_TARGETS_PNG = RESULTS / "compare" / "cpu_targets.png"


def _cpu_target_runs() -> list[tuple[CpuTarget, list[dict], str, bool]]:
    """(target, its committed run's metrics rows, what they measured, met) for each of issue 16's targets; rows are
    empty for a run not committed (then never met)."""
    from trainer.runfolder import read_metrics

    out = []
    for t in CPU_TARGETS.values():
        run = RESULTS / t.run
        rows = read_metrics(run) if (run / "metrics.jsonl").is_file() else []
        out.append((t, rows, *(cpu_target_verdict(t.key, rows, _info(run)) if rows else ("not run", False))))
    return out


def _missed(judged: list[tuple[CpuTarget, list[dict], str, bool]]) -> list[tuple[CpuTarget, list[dict]]]:
    """The targets whose committed run falls short, with its rows: the figure's panels, one per run (a run short
    of two targets is drawn once, under the first)."""
    short = [(t, rows) for t, rows, _, met in judged if rows and not met]
    return [(t, rows) for i, (t, rows) in enumerate(short) if t.run not in {u.run for u, _ in short[:i]}]


def block_cpu_targets() -> str:
    """Issue 16's table against the committed CPU runs, each verdict computed from the run's files; below it the
    curves of the runs that fall short (`draw_cpu_targets_figure`)."""
    lines = ["| target | run | measured: test accuracy without / with flip TTA, final epoch | met |",
             "|---|---|---|---|"]
    judged = _cpu_target_runs()
    for t, rows, measured, met in judged:
        run = f"[{t.run}](results/{t.run}/report.md)" if rows else t.run
        lines.append(f"| {t.label} | {run} | {measured} | {'**yes**' if met else 'no'} |")
    lines += ["", "One seed each (seed 0). Time is the trainer's wall clock from process start to the end of the "
                  "epoch named, on a host whose speed swings (see each run's where)."]
    if _missed(judged):
        lines += ["", f"![the curves of the runs short of their targets]({CPU_TARGETS_PNG.relative_to(ROOT)})"]
    return "\n".join(lines)


def draw_cpu_targets_figure(path: Path = CPU_TARGETS_PNG) -> int:
    """One panel per target whose committed run falls short: the run's accuracy curves as in its report's
    accuracy.png, the target's thresholds as horizontal lines. Returns the panels drawn; with none, a figure left
    from before is removed (the README no longer links it). Written by `make readme`, never by --check."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from trainer.tools.plots import ACC_LINES, draw_lines, epoch_axis

    short = _missed(_cpu_target_runs())
    if not short:
        path.unlink(missing_ok=True)
        return 0
    cols = min(len(short), 2)
    nrows = (len(short) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(6 * cols, 3.8 * nrows), dpi=100, squeeze=False)
    for ax in axes.flat[len(short):]:
        ax.axis("off")
    for ax, (t, rows) in zip(axes.flat, short):
        draw_lines(ax, rows, ACC_LINES, markersize=2)
        ax.axhline(t.acc, color="black", linewidth=0.8, label=f"target {t.acc:g} %, no TTA")
        if t.tta is not None:
            ax.axhline(t.tta, color="gray", linewidth=0.8, linestyle="--", label=f"target {t.tta:g} %, flip TTA")
        epoch_axis(ax, [r["epoch"] for r in rows])
        ax.set_ylim(top=max(ax.get_ylim()[1], max(t.acc, t.tta or 0) + 2))
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{t.label.replace('`', '')}\nrun: {t.run}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return len(short)


def block_evaluate() -> str:
    """`s7 evaluate` of the shipped weights on this machine."""
    import platform

    import models
    from trainer.tools.evaluate import evaluate_command

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
    """The shipped s7's training log and plots, from the committed run its weights name."""
    from trainer.tools.report import log_table
    from trainer.tools.results import run_results, shipped_run

    run = shipped_run(ROOT / "models/weights/s7.safetensors", ROOT)
    if run is None or not (run / "metrics.jsonl").is_file():
        return "(no headline run committed)"
    rel = run.relative_to(ROOT).as_posix()
    rows = run_results(run)["rows"]
    every = 5 if len(rows) > 30 else 1
    return (f"![loss]({rel}/loss.png) ![accuracy]({rel}/accuracy.png)\n\n"
            f"Training log ({'every 5th epoch' if every > 1 else 'every epoch'}; the full log is in "
            f"[{rel}/train.log]({rel}/train.log)):\n\n" + log_table(rows, every=every) +
            f"\n\n![misclassified]({rel}/misclassified.png)")


def block_explain() -> str:
    """`s7 explain` of the shipped s7, from the transcript and grid benchmarks/shipped_nets.py committed."""
    folder = RESULTS / "explain"
    if not (folder / "s7.txt").is_file():
        return "(not generated yet: `make shipped-results`)"
    return ("```\n" + (folder / "s7.txt").read_text().rstrip() + "\n```\n\n"
            "![class activation maps of the shipped s7](results/explain/s7.png)")


def block_export() -> str:
    """The lines a user needs, and the fp32/int8 figures `s7 export --data` measured (results/export/s7.json)."""
    from trainer.tools.export import USAGE, measurement_markdown

    path = RESULTS / "export" / "s7.json"
    usage = "```python\n" + USAGE.rstrip() + "\n```"
    if not path.is_file():
        return usage + "\n\n(not measured yet: `make shipped-results`)"
    m = json.loads(path.read_text())
    command = (RESULTS / "export" / "s7.txt").read_text().splitlines()[0].removeprefix("$ ")
    load = m["load_average_1min"]
    return (f"{usage}\n\nMeasured by `{command}` on {m['measured']}, on the {m['test_images']:,} test images of "
            f"{m['data']}; {m['machine']}; 1-minute load average {load[0]} before, {load[1]} after (other "
            "jobs shared the CPU, so the timings are upper bounds):\n\n" + measurement_markdown(m, path.parent))


def block_robustness() -> str:
    """Per net: clean accuracy, each corruption's mean over its severities, the mean of all 18 corrupted
    settings and the worst, from results/robustness/<net>.json (`s7 robustness`)."""
    from trainer.tools.robustness import CORRUPTIONS, robustness_markdown

    runs = {p.stem: json.loads(p.read_text()) for p in sorted((RESULTS / "robustness").glob("*.json"))}
    if not runs:
        return "(not measured yet: `make shipped-results`)"
    lines = ["| net | test images | clean | " + " | ".join(CORRUPTIONS) + " | mean corruption | worst | measured |",
             "|---" * 12 + "|"]
    for name, r in runs.items():
        per = [f"{sum(r['corruptions'][c]['accuracy']) / 3:.2f}%" for c in CORRUPTIONS]
        w = r["worst"]
        lines.append(f"| [{name}](results/robustness/{name}.md) | {r['test_images']:,} | {r['clean']:.2f}% | "
                     + " | ".join(per) + f" | {r['mean_corruption']:.2f}% | {w['accuracy']:.2f}% ({w['corruption']} "
                     f"{w['severity']}) | {r['measured']}, seed {r['seed']} |")
    lines += ["", f"Test accuracy without TTA on the test split of {next(iter(runs.values()))['data']} (all of it, "
              "or the fixed random subset of `--limit`); each corruption's column is the mean of its three "
              "severities, \"mean corruption\" the mean of all 18 corrupted settings, \"worst\" the lowest of "
              "them (corruption, severity).", ""]
    lines += [" ".join(f"![{name}](results/robustness/{name}.png)" for name in runs)]
    for name, r in runs.items():
        lines += ["", f"<details><summary>{name}: every corruption and severity</summary>", "",
                  robustness_markdown(r), "", "</details>"]
    return "\n".join(lines)


def _speed_lines() -> list[dict]:
    return [json.loads(text) for path in sorted((RESULTS / "speed").glob("*.jsonl"))
            for text in path.read_text().splitlines() if text.strip()]


def _num(value, fmt: str = ",.0f") -> str:
    return "–" if value is None else format(value, fmt)


def block_speed_options() -> str:
    """Issue 10: every JSON line committed in results/speed/*.jsonl (benchmarks/gpu_speed.py through the harness
    benchmarks/time_to_accuracy.py) as tables: runs to the target, the bare training step, the loader."""
    from trainer.tools.report import pct_cell, reached_text

    lines = _speed_lines()
    if not lines:
        return ("No speed measurement is committed yet: `benchmarks/gpu_speed.py` (one GPU run of at most 9 minutes, "
                "see benchmarks/README.md) writes the JSON lines this section is generated from to results/speed/.")
    out = [f"Measured on {e['device']} ({e['cores']} CPU cores), torch {e['torch']}, recipe `{Path(e['config']).name}`."
           for e in lines if e["kind"] == "env"]
    runs = [r for r in lines if r["kind"] == "run"]
    if runs:
        out += ["", "| run | precision | batch, peak lr | compile | channels_last | cudnn.benchmark | non_blocking | "
                "workers | start-up s | loop img/s | target reached, no TTA | final test acc |", "|---" * 12 + "|"]
        for r in runs:
            out.append(f"| {Path(r['run']).name} | {r['precision']} | {r['batch_size']}, {_num(r['peak_lr'], '.3g')} | "
                       f"{r['compile']} | {r['channels_last']} | {r['cudnn_benchmark']} | {r['non_blocking']} | "
                       f"{_num(r['workers'], 'd')} | {_num(r['startup_seconds'], '.1f')} | "
                       f"{_num(r['loop_images_per_s'])} | {reached_text(r)} (target {r['target']:g}%) | "
                       f"{pct_cell(r['final_test_acc'])} |")
        out += ["", "Start-up: process start to the end of the first training step; seconds to the target count from "
                "process start too; loop img/s: the median epoch after the first."]
    steps = [r for r in lines if r["kind"] == "step"]
    if steps:
        out += ["", "| bare step: precision | batch | channels_last | cudnn.benchmark | compile | img/s | "
                "first step s |", "|---" * 7 + "|"]
        out += [f"| {r['precision']} | {r['batch_size']} | {r['channels_last']} | {r['cudnn_benchmark']} | "
                f"{r['compile']} | {r.get('error') or _num(r['step_images_per_s'])} | "
                f"{_num(r.get('first_step_seconds'), '.1f')} |" for r in steps]
    loaders = [r for r in lines if r["kind"] == "loader"]
    if loaders:
        out += ["", "| loader: workers | batch | img/s |", "|---|---|---|"]
        out += [f"| {r['workers']} | {r['batch_size']} | {_num(r['loader_images_per_s'])} |" for r in loaders]
    skipped = [r["what"] for r in lines if r["kind"] == "skipped"]
    if skipped:
        out += ["", "Not measured (the run's time was up): " + "; ".join(skipped) + "."]
    return "\n".join(out)


COMPARE_PNG = RESULTS / "compare" / "committed.png"


def _compared_runs() -> list[Path]:
    """Every run folder committed under results/, at any depth (results/*, results/ablations/*, ...)."""
    runs = {p.parent for p in RESULTS.rglob("metrics.jsonl")}
    return sorted(runs, key=lambda p: (len(p.relative_to(RESULTS).parts), str(p)))


def block_compare() -> str:
    """`s7 compare`'s table of every committed run folder (trainer/tools/compare.py), each linked to its report."""
    from trainer.tools.compare import compare_table, summarize

    runs = _compared_runs()
    if not runs:
        return "(no committed runs)"
    labels = [f"[{p.relative_to(RESULTS)}]({p.relative_to(ROOT)}/report.md)" for p in runs]
    return (compare_table([summarize(p) for p in runs], labels)
            + f"\n\n![test accuracy and loss of the committed runs]({COMPARE_PNG.relative_to(ROOT)})")


def draw_compare_figure() -> None:
    """results/compare/committed.png: `s7 compare`'s curves of the same runs (written by `make readme`, never
    by --check)."""
    from trainer.tools.compare import plot_curves, summarize

    runs = _compared_runs()
    if runs:
        plot_curves([summarize(p) for p in runs], COMPARE_PNG, [str(p.relative_to(RESULTS)) for p in runs])


def block_allocator() -> str:
    """`--keep-freed-memory` against glibc's default, from benchmarks/allocator_speed.py's committed JSON."""
    path = RESULTS / "allocator-cpu" / "allocator.json"
    if not path.is_file():
        return "(not measured: run benchmarks/allocator_speed.py)"
    res = json.loads(path.read_text())
    med = res["medians"]
    nets = list(dict.fromkeys(key.split("/")[0] for key in med))
    lines = [f"{res['where']}; the bare training step of each net's recipe (benchmarks/allocator_speed.py, "
             f"[allocator.json](results/allocator-cpu/allocator.json)):", "",
             "| net | allocator | step img/s | page faults / step | kernel s / step | peak RSS MiB |", "|---" * 6 + "|"]
    for net in nets:
        for mode, label in (("default", "glibc's default"), ("keep", "`--keep-freed-memory true`")):
            m = med[f"{net}/{mode}"]
            lines.append(f"| {net} | {label} | {m['images_per_s']:,.0f} | {m['page_faults_per_step']:,.0f} | "
                         f"{m['kernel_seconds_per_step']:.3f} | {m['peak_rss_mib']:,.0f} |")
    ratios = ", ".join(f"{net} {med[f'{net}/keep']['images_per_s'] / med[f'{net}/default']['images_per_s']:.2f}x"
                       for net in nets)
    return "\n".join(lines + ["", f"Step speed with the setting against without: {ratios}."])


def block_loader_workers() -> str:
    """The step fed by 0, 1 and 2 loader workers against the bare step, from benchmarks/loader_workers.py's JSON."""
    path = RESULTS / "loader-workers-cpu" / "loader_workers.json"
    if not path.is_file():
        return "(not measured: run benchmarks/loader_workers.py)"
    from trainer.text import counted

    res = json.loads(path.read_text())
    counts = list(res["median_ratio"])
    lines = [f"{res['where']}; `{res['model']}` on the `{res['recipe']}` recipe, batch {res['batch_size']}, "
             f"{res['precision']}, {res['threads']} torch threads, {res['steps']} steps per measurement, "
             f"{len(res['rounds'])} rounds "
             f"(benchmarks/loader_workers.py, [loader_workers.json](results/loader-workers-cpu/loader_workers.json)):",
             "", "| round | bare step img/s (before / after) | "
             + " | ".join(f"{counted(int(w), 'loader worker')}: img/s (% of the bare step)" for w in counts) + " |",
             "|---" * (2 + len(counts)) + "|"]
    for i, rd in enumerate(res["rounds"], 1):
        lines.append(f"| {i} | {rd['bare_before']:,.0f} / {rd['bare_after']:,.0f} | "
                     + " | ".join(f"{rd['fed'][w]:,.0f} ({100 * rd['ratio'][w]:.1f} %)" for w in counts) + " |")
    lines.append("| median | | " + " | ".join(f"{100 * res['median_ratio'][w]:.1f} %" for w in counts) + " |")
    return "\n".join(lines)


BLOCKS = {"rules": block_rules, "summary": block_summary, "augment": block_augment, "stats": block_stats,
          "results": block_results, "speed": block_speed, "headline": block_headline,
          "targets": block_targets, "evaluate": block_evaluate, "explain": block_explain, "export": block_export,
          "robustness": block_robustness, "speed_options": block_speed_options,
          "compare": block_compare, "allocator": block_allocator, "loader_workers": block_loader_workers,
          "cpu_targets": block_cpu_targets}
REPO_ONLY = ("rules", "summary", "augment", "results", "speed", "headline", "targets", "explain", "export",
             "robustness", "speed_options", "compare", "allocator", "loader_workers", "cpu_targets")


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
    draw_compare_figure()
    draw_cpu_targets_figure()
    return 0


if __name__ == "__main__":
    sys.exit(main())
