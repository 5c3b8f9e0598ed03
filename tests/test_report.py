"""The report side of honest numbers (issue 8): the shipped epoch is picked on the validation split (or is the
final epoch), never on the test split; every test accuracy is shown with and without flip TTA; the rules
verdict heads the report; legacy runs (one flip-TTA figure) are shown for what they measured."""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from trainer import runfolder
from trainer.runfolder import (LEGACY_SELECTION, first_row_reaching, model_meta, read_facts, save_predictions,
                               selected_row, step_share, upgrade_legacy_rows)
from trainer.tools.report import build_report, rules_label
from trainer.tools.results import results_achieved, run_results

RULES_TABLE = """## s7: rules

| rule | required | actual | result |
|---|---|---|---|
| parameters | < 100,000 | 95,146 | PASS |
| MaxPool | none | 1 | FAIL |
"""


def row(epoch: int, test_acc: float | None, test_acc_tta: float | None, val_acc: float | None = None) -> dict:
    """A metrics.jsonl row in the current form; with `val_acc`, a run with a validation split."""
    r = {"epoch": epoch, "train_loss": 2.0 - 0.1 * epoch, "train_acc": 30.0 + epoch, "lr": 0.1, "momentum": 0.9,
         "test_loss": 1.5 - 0.1 * epoch, "test_acc": test_acc, "test_loss_tta": 1.4 - 0.1 * epoch,
         "test_acc_tta": test_acc_tta, "test_images": 4, "epoch_seconds": 2.0, "train_seconds": 1.5,
         "data_wait_seconds": 0.1, "test_seconds": 0.5, "images_per_second": 100.0, "wall_seconds": 5.0 + 2 * epoch}
    if val_acc is not None:
        r.update(val_loss=1.6 - 0.1 * epoch, val_acc=val_acc, val_acc_tta=val_acc + 0.5, val_images=2)
    return r


# best val at epoch 2; best test (plain and TTA) at epoch 3; final epoch 4
VAL_RUN = [row(1, 50.0, 51.0, val_acc=40.0), row(2, 60.0, 61.0, val_acc=70.0),
           row(3, 90.0, 91.0, val_acc=65.0), row(4, 75.0, 76.5, val_acc=68.0)]
# no validation split: best test at epoch 2, final epoch 3
PLAIN_RUN = [row(1, 50.0, 52.0), row(2, 88.0, 89.0), row(3, 80.0, 87.5)]


def make_run(root: Path, rows: list[dict], *, name: str = "run", tta_flip: bool = True, rules: str | None = None,
             failed: list[str] | None = None, meta: dict | None = None, meta_dir: str = "model") -> Path:
    """A run folder with a tiny config.yaml, metrics.jsonl and, if given, rules.md (shown), facts.json with the
    rules `failed` (read) and <meta_dir>/meta.json."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": "s7", "recipe": "s7", "target_acc": 87.0,
                                                     "tta_flip": tta_flip}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if rules is not None:
        (run / "rules.md").write_text(rules)
    if failed is not None:
        runfolder.write_facts(run, runfolder.facts("s7", 95146, 77, [{"name": n, "required": "", "actual": "",
                                                                      "passed": n not in failed}
                                                                     for n in ["parameters", *failed]],
                                                   "CPU", "bf16", 1))
    if meta is not None:
        (run / meta_dir).mkdir()
        (run / meta_dir / "meta.json").write_text(json.dumps(meta))
    return run


def results_table(report_md: str) -> dict[str, str]:
    """The 'Results achieved' table of report.md as {row label: value}."""
    section = report_md.split("## Results achieved", 1)[1].split("##", 1)[0]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()]
    return {c[0]: c[1] for c in cells if len(c) == 2 and c[0] and not set(c[0]) <= {"-"}}


# ---------------------------------------------------------------- selection and target

def test_selection_picks_the_best_val_epoch_where_the_best_test_epoch_differs():
    assert selected_row(VAL_RUN)["epoch"] == 2
    assert max(VAL_RUN, key=lambda r: r["test_acc"])["epoch"] == 3  # the test split would have picked another


def test_selection_never_looks_at_test_accuracy():
    for test in ((None, None), (99.0, 99.0), (0.0, 0.0)):
        blinded = [{**r, "test_acc": test[0], "test_acc_tta": test[1]} for r in VAL_RUN]
        assert selected_row(blinded)["epoch"] == 2
    no_test = [{k: v for k, v in r.items() if not k.startswith("test_")} for r in VAL_RUN]
    assert selected_row(no_test)["epoch"] == 2


def test_selection_takes_the_earliest_of_tied_val_epochs():
    rows = [row(1, 10.0, 10.0, val_acc=70.0), row(2, 90.0, 90.0, val_acc=70.0), row(3, 50.0, 50.0, val_acc=60.0)]
    assert selected_row(rows)["epoch"] == 1


def test_without_a_validation_split_the_final_epoch_is_selected():
    assert selected_row(PLAIN_RUN)["epoch"] == 3
    res = results_achieved(PLAIN_RUN)
    assert (res["selected_epoch"], res["selected_by"]) == (3, "final epoch")
    assert (res["final_test_acc"], res["final_test_acc_tta"]) == (80.0, 87.5)


def test_first_row_reaching_the_target_on_each_test_figure():
    assert first_row_reaching(PLAIN_RUN, 87.0)["epoch"] == 2  # flip TTA by default
    assert first_row_reaching(PLAIN_RUN, 87.0, key="test_acc")["epoch"] == 2
    assert first_row_reaching(PLAIN_RUN, 89.0)["epoch"] == 2
    assert first_row_reaching(PLAIN_RUN, 88.5, key="test_acc") is None
    assert first_row_reaching([row(1, None, 90.0)], 87.0, key="test_acc") is None  # not measured never counts
    res = results_achieved(PLAIN_RUN)
    assert (res["epoch_to_target"], res["seconds_to_target"]) == (2, 9.0)
    assert (res["epoch_to_target_tta"], res["seconds_to_target_tta"]) == (2, 9.0)


def tta_at(rows: list[dict], epochs: set[int]) -> list[dict]:
    """`rows` with flip TTA measured at `epochs` alone (tta_every_epoch false measures it at the final one)."""
    return [r if r["epoch"] in epochs else {**r, "test_acc_tta": None, "test_loss_tta": None} for r in rows]


def first_at_or_above(rows: list[dict], key: str, target: float) -> dict | None:
    """The first row whose `key` was measured and is at least `target`, counted by a plain loop."""
    for r in rows:
        if r[key] is not None and r[key] >= target:
            return r
    return None


# flip TTA at the final epoch only: 87% without TTA at epoch 2; with flip TTA measured at epoch 3 alone
FINAL_ONLY = tta_at([row(1, 80.0, 86.0), row(2, 88.0, 89.0), row(3, 86.0, 88.5)], {3})


def test_target_reached_with_flip_tta_at_the_final_epoch_only_says_so_alike_in_report_and_compare(tmp_path):
    from trainer.tools.compare import compare_table, summarize

    run = make_run(tmp_path, FINAL_ONLY)
    build_report(run)
    report = results_table((run / "report.md").read_text())
    cells = dict(zip(*_table(compare_table([summarize(run)]))))
    only = " (measured at the final epoch only)"
    assert report["87% test accuracy first reached, flip TTA"] == "epoch 3, 11.0 s wall from process start" + only
    assert cells["87% reached, flip TTA"] == "epoch 3, 11.0 s" + only
    assert report["87% test accuracy first reached, no TTA"] == "epoch 2, 9.0 s wall from process start"
    assert cells["87% reached, no TTA"] == "epoch 2, 9.0 s"
    # not reached: the one epoch measured was below the target, which an earlier epoch might have passed
    run = make_run(tmp_path, tta_at([row(1, 80.0, 86.0), row(2, 82.0, 89.0), row(3, 84.0, 86.5)], {3}), name="low")
    build_report(run)
    cells = dict(zip(*_table(compare_table([summarize(run)]))))
    assert results_table((run / "report.md").read_text())["87% test accuracy first reached, flip TTA"] == (
        "not in 3 epochs" + only)
    assert cells["87% reached, flip TTA"] == "not in 3 epochs" + only


def test_with_flip_tta_every_epoch_the_target_is_reached_at_the_first_epoch_at_or_above_it(tmp_path):
    from trainer.tools.compare import compare_table, summarize

    rows = [row(1, 80.0, 85.0), row(2, 86.0, 87.0), row(3, 85.0, 86.5), row(4, 88.0, 89.0)]  # 87.0 is "at"
    run = make_run(tmp_path, rows)
    build_report(run)
    report = results_table((run / "report.md").read_text())
    cells = dict(zip(*_table(compare_table([summarize(run)]))))
    for suffix, key in ((", no TTA", "test_acc"), (", flip TTA", "test_acc_tta")):
        hit = first_at_or_above(rows, key, 87.0)
        assert report[f"87% test accuracy first reached{suffix}"] == (
            f"epoch {hit['epoch']}, {hit['wall_seconds']:.1f} s wall from process start")
        assert cells[f"87% reached{suffix}"] == f"epoch {hit['epoch']}, {hit['wall_seconds']:.1f} s"
    assert report["87% test accuracy first reached, flip TTA"].startswith("epoch 2,")  # spot value
    assert report["87% test accuracy first reached, no TTA"].startswith("epoch 4,")
    assert "measured at" not in (run / "report.md").read_text() + compare_table([summarize(run)])


def test_target_reached_names_how_many_epochs_measured_a_figure_skipped_at_some():
    from trainer.tools.report import reached_of
    from trainer.tools.results import results_achieved

    rows = tta_at([row(e, 80.0, 80.0 + e) for e in range(1, 7)], {2, 4, 6})
    measured = sum(1 for r in rows if r["test_acc_tta"] is not None)
    res = {**results_achieved(rows, target_acc=84.0), "rows": rows}
    reached = reached_of(res, "_tta")
    assert (reached.epoch, reached.seconds) == (4, 13.0)
    assert reached.note == f" (measured at {measured} of {len(rows)} epochs only)"
    every = reached_of(res, "")
    assert (every.epoch, every.measured, every.note) == (None, True, "")


def _table(text: str) -> tuple[list[str], list[str]]:
    """The header and the one row of a one-run markdown table."""
    lines = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
             if line.startswith("|")]
    return lines[0], lines[2]


def test_step_share_is_the_epoch_less_its_data_wait_and_test_pass():
    # a 50 s epoch: 46 s of training, 2 s of it waiting for data, then a 4 s test pass: 44 s of steps
    assert step_share({"epoch": 1, "epoch_seconds": 50.0, "train_seconds": 46.0, "data_wait_seconds": 2.0,
                       "test_seconds": 4.0}) == pytest.approx(0.88)
    assert step_share({"epoch": 1, "epoch_seconds": 50.0, "train_seconds": 46.0}) is None  # wait not timed


def test_results_are_final_epoch_figures_and_the_selected_epoch(tmp_path):
    run = make_run(tmp_path, VAL_RUN, rules=RULES_TABLE + "\nALL PASS\n", failed=[],
                   meta={"epoch": 2, "selected_by": "best val_acc", "test_acc": 60.0, "test_acc_tta": 61.0})
    res = run_results(run)
    assert (res["final_test_acc"], res["final_test_acc_tta"], res["final_train_acc"]) == (75.0, 76.5, 34.0)
    assert (res["final_val_acc"], res["final_val_acc_tta"]) == (68.0, 68.5)
    assert (res["selected_epoch"], res["selected_by"]) == (2, "best val_acc")
    assert (res["selected_test_acc"], res["selected_test_acc_tta"], res["selected_val_acc"]) == (60.0, 61.0, 70.0)
    assert (res["epoch_to_target"], res["epoch_to_target_tta"]) == (3, 3)
    assert res["rules_failed"] == []
    assert not any(k.startswith("best") for k in res)


def test_shipped_weights_that_disagree_with_the_selection_rule_are_an_error(tmp_path):
    run = make_run(tmp_path, VAL_RUN, meta={"epoch": 3, "selected_by": "best val_acc"})
    with pytest.raises(ValueError, match="epoch 3.*epoch 2"):
        run_results(run)


def test_model_meta_reads_model_or_the_old_best_folder(tmp_path):
    assert model_meta(make_run(tmp_path, PLAIN_RUN, name="a", meta={"epoch": 3}))["epoch"] == 3
    assert model_meta(make_run(tmp_path, PLAIN_RUN, name="b", meta={"epoch": 2}, meta_dir="best"))["epoch"] == 2
    assert model_meta(make_run(tmp_path, PLAIN_RUN, name="c")) == {}


# ---------------------------------------------------------------- rules.md

def test_the_verdict_is_read_from_facts_json_never_from_rules_md(tmp_path):
    run = make_run(tmp_path, PLAIN_RUN, rules=RULES_TABLE + "\nALL PASS\n", failed=["MaxPool"])
    assert run_results(run)["rules_failed"] == ["MaxPool"]
    assert read_facts(run)["parameters"] == 95146
    run = make_run(tmp_path, PLAIN_RUN, name="unchecked", rules=RULES_TABLE + "\nALL PASS\n")
    assert run_results(run)["rules_failed"] is None  # no facts.json: not checked, whatever a text says


def test_rules_label():
    assert [rules_label(v) for v in (None, [], ["MaxPool", "parameters"])] == [
        "not checked", "ALL PASS", "FAIL (MaxPool, parameters)"]


# ---------------------------------------------------------------- report.md

def test_report_first_line_says_fail_when_rules_md_fails(tmp_path):
    run = make_run(tmp_path, PLAIN_RUN, rules=RULES_TABLE + "\nFAIL: MaxPool\n", failed=["MaxPool"])
    build_report(run)
    report = (run / "report.md").read_text()
    assert report.splitlines()[0] == "# Report: run — rules: FAIL (MaxPool)"
    assert results_table(report)["rules"] == "FAIL (MaxPool)"
    assert "| MaxPool | none | 1 | FAIL |" in report.split("## Rules (rules.md)", 1)[1]


def test_report_first_line_says_all_pass_or_not_checked(tmp_path):
    build_report(make_run(tmp_path, PLAIN_RUN, name="ok", rules=RULES_TABLE + "\nALL PASS\n", failed=[]))
    build_report(make_run(tmp_path, PLAIN_RUN, name="old"))
    assert (tmp_path / "ok/report.md").read_text().startswith("# Report: ok — rules: ALL PASS\n")
    assert (tmp_path / "old/report.md").read_text().startswith("# Report: old — rules: not checked\n")


def test_results_table_shows_every_test_accuracy_with_and_without_tta(tmp_path):
    run = make_run(tmp_path, VAL_RUN, rules=RULES_TABLE + "\nALL PASS\n", failed=[],
                   meta={"epoch": 2, "selected_by": "best val_acc"})
    build_report(run)
    report = (run / "report.md").read_text()
    table = results_table(report)
    assert table["final test accuracy, no TTA"] == "75.00%"
    assert table["final test accuracy, flip TTA"] == "76.50%"
    assert table["final val accuracy, no TTA"] == "68.00%"
    assert table["final train accuracy (augmented batches)"] == "34.00%"
    assert table["shipped weights"] == "epoch 2, best val_acc"
    assert table["shipped weights' test accuracy, no TTA"] == "60.00%"
    assert table["shipped weights' test accuracy, flip TTA"] == "61.00%"
    assert table["shipped weights' val accuracy, no TTA"] == "70.00%"
    assert table["87% test accuracy first reached, no TTA"] == "epoch 3, 11.0 s wall from process start"
    assert table["87% test accuracy first reached, flip TTA"] == "epoch 3, 11.0 s wall from process start"
    assert "best test" not in report.lower()
    # the training log shows both test accuracies and the validation columns
    log = report.split("## Training log", 1)[1].split("##", 1)[0]
    assert "| test acc % | test acc %, TTA | val loss | val acc % | val acc %, TTA |" in log
    assert "| 3 | 1.7000 | 33.00 | 1.2000 | 1.1000 | 90.00 | 91.00 | 1.3000 | 65.00 | 65.50 |" in log
    for name in ("loss.png", "accuracy.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_per_class_section_names_the_shipped_epoch_and_which_test_figure(tmp_path):
    rows = [row(1, 25.0, 50.0), row(2, 75.0, 100.0)]  # 4 test images: 3 right without TTA
    run = make_run(tmp_path, rows, meta={"epoch": 2, "selected_by": "final epoch"})
    labels = np.array([0, 0, 1, 1])
    save_predictions(run, np.array([0, 0, 1, 0]), labels, np.full(4, 0.9, np.float32),
                     np.zeros((4, 32, 32, 3), np.uint8), ["cat", "dog"], 25)
    build_report(run)
    assert "## Per-class test accuracy (shipped weights, epoch 2, no TTA)" in (run / "report.md").read_text()
    assert (run / "per_class.md").read_text().startswith("# Per-class test accuracy (shipped weights, epoch 2, no TTA)")


# ---------------------------------------------------------------- legacy runs

LEGACY = [{"epoch": e, "train_loss": 1.0, "train_acc": a - 2, "test_loss": 0.5, "test_acc": a, "test_images": 4,
           "lr": 0.1, "epoch_seconds": 2.0, "train_seconds": 1.5, "data_wait_seconds": 0.1, "test_seconds": 0.5,
           "images_per_second": 100.0, "wall_seconds": 5.0 + 2 * e} for e, a in ((1, 80.0), (2, 88.0), (3, 86.0))]


def test_legacy_rows_with_tta_flip_become_tta_figures_and_unmeasured_plain_ones():
    new = upgrade_legacy_rows(LEGACY, {"tta_flip": True})
    assert [(r["test_acc"], r["test_acc_tta"], r["test_loss"], r["test_loss_tta"]) for r in new] == [
        (None, 80.0, None, 0.5), (None, 88.0, None, 0.5), (None, 86.0, None, 0.5)]
    plain = upgrade_legacy_rows(LEGACY, {"tta_flip": False})
    assert [(r["test_acc"], r["test_acc_tta"]) for r in plain] == [(80.0, None), (88.0, None), (86.0, None)]
    assert upgrade_legacy_rows(PLAIN_RUN, {"tta_flip": True}) == PLAIN_RUN  # current rows pass unchanged
    assert "test_acc_tta" not in LEGACY[0]  # the input is not modified


def test_legacy_run_shows_its_figure_as_tta_and_the_plain_one_as_unmeasured(tmp_path):
    # the old trainer shipped the best *test* epoch in best/: the report says so
    run = make_run(tmp_path, LEGACY, tta_flip=True, meta={"epoch": 2, "test_acc": 88.0, "tta_flip": True},
                   meta_dir="best")
    res = build_report(run)
    assert (res["final_test_acc"], res["final_test_acc_tta"]) == (None, 86.0)
    assert (res["epoch_to_target"], res["epoch_to_target_tta"]) == (None, 2)
    assert (res["selected_epoch"], res["selected_by"]) == (2, LEGACY_SELECTION)
    report = (run / "report.md").read_text()
    assert report.splitlines()[0] == "# Report: run — rules: not checked"
    table = results_table(report)
    assert table["final test accuracy, no TTA"] == "not measured"
    assert table["final test accuracy, flip TTA"] == "86.00%"
    assert table["shipped weights"] == "epoch 2, best test_acc (old trainer: picked on the test split)"
    assert table["shipped weights' test accuracy, flip TTA"] == "88.00%"
    assert table["87% test accuracy first reached, no TTA"] == "not measured"
    assert table["87% test accuracy first reached, flip TTA"] == "epoch 2, 9.0 s wall from process start"
    assert "| 2 | 1.0000 | 86.00 | – | 0.5000 | – | 88.00 |" in report


@pytest.mark.parametrize("epochs", [[1], [1, 2], list(range(1, 61))])
def test_the_epoch_axis_shows_whole_epochs_with_room_either_side(epochs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainer.tools.plots import epoch_axis

    fig, ax = plt.subplots()
    ax.plot(epochs, [50.0] * len(epochs))
    epoch_axis(ax, epochs)
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    plt.close(fig)
    assert (lo, hi) == (min(epochs) - 0.5, max(epochs) + 0.5)
    assert ticks and all(float(t).is_integer() for t in ticks)
    if len(epochs) <= 12:
        assert ticks == epochs
