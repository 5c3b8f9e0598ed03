"""`s7 compare`: three run folders faked by hand (current, validation-split and legacy rows), their table checked
against figures recomputed here from the rows written, their curves against the rows, a committed run folder,
and a W&B offline run folder read through the run folder that holds it."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml

from trainer import runfolder
from trainer.tools import cli
from trainer.tools.compare import compare_table, curves_figure, find_run_dir, run_device, summarize

ROOT = Path(__file__).resolve().parents[1]
BEST = "best (picked on test, for reference only)"


def row(epoch: int, acc: float | None, acc_tta: float | None, ips: float, val: float | None = None) -> dict:
    r = {"epoch": epoch, "train_loss": 2.0 / epoch, "train_acc": 40.0 + epoch, "lr": 0.1, "momentum": 0.9,
         "test_loss": 3.0 / epoch, "test_acc": acc, "test_loss_tta": 2.5 / epoch, "test_acc_tta": acc_tta,
         "test_images": 30, "epoch_seconds": 4.0, "images_per_second": ips, "wall_seconds": 10.0 + 7.5 * epoch}
    if val is not None:
        r.update(val_loss=1.0, val_acc=val, val_acc_tta=val + 1.0, val_images=20)
    return r


def fake_run(root: Path, name: str, rows: list[dict], config: dict, *, rules: str | None = None,
             params: int | None = None, rf: int | None = None, device: tuple | None = None,
             run_info: dict | None = None, state: dict | None = None) -> Path:
    """A run folder; `rules` ("ALL PASS" or "FAIL: a, b"), `params`, `rf` and `device` ((name, precision,
    processes)) go into facts.json as numbers and names, the verdict also into rules.md (shown, never read)."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if rules is not None:
        (run / "rules.md").write_text(f"| rule | result |\n|---|---|\n| parameters | PASS |\n\n{rules}\n")
    if rules is not None or params is not None:
        failed = [] if rules == "ALL PASS" else rules.removeprefix("FAIL: ").split(", ")
        name, precision, processes = device or (None, None, None)
        record = runfolder.facts(config["model"], params, rf, [{"name": n, "required": "", "actual": "",
                                                                "passed": False} for n in failed],
                                 name, precision, processes)
        runfolder.write_facts(run, record)
    if run_info is not None:
        (run / "run_info.json").write_text(json.dumps(run_info))
    if state is not None:
        (run / "checkpoints" / "epoch-0003").mkdir(parents=True)
        (run / "checkpoints" / "epoch-0003" / "state.json").write_text(json.dumps(state))
        (run / "checkpoints" / "latest").write_text("epoch-0003\n")
    return run


# alpha: best test epoch (2) is not the final one (4); 87% first reached at epoch 2 with flip TTA, 3 without
ALPHA = [row(1, 60.0, 61.0, 100.0), row(2, 86.0, 88.0, 300.0), row(3, 89.5, 89.0, 260.0), row(4, 88.0, 88.5, 340.0)]
# beta: a validation split, target 90% never reached, a run_info.json saying where it ran
BETA = [row(1, 70.0, 71.0, 1000.0, val=65.0), row(2, 80.0, 82.5, 3000.0, val=75.0),
        row(3, 79.0, 81.0, 2000.0, val=74.0)]
# gamma: a legacy run (one test figure, measured with flip TTA), no rules.md, no log, a checkpoint's state.json
GAMMA = [{k: v for k, v in row(e, a, None, 50.0).items() if k not in ("test_acc_tta", "test_loss_tta")}
         for e, a in ((1, 84.0), (2, 87.25), (3, 86.0))]


@pytest.fixture
def three_runs(tmp_path) -> list[Path]:
    return [
        fake_run(tmp_path, "alpha", ALPHA, {"model": "s7", "recipe": "s7", "target_acc": 87.0}, rules="ALL PASS",
                 params=95146, rf=77, device=("CPU", "no", 2)),
        fake_run(tmp_path, "beta", BETA, {"model": "s7_dilated", "recipe": "", "target_acc": 90.0},
                 rules="FAIL: MaxPool, parameters", params=120000, rf=57, run_info={"where": "GPU: test box"},
                 device=("NVIDIA H200", "bf16", 1)),
        fake_run(tmp_path, "gamma", GAMMA, {"model": "s7_strided", "recipe": "s7_strided", "target_acc": 87.0,
                                            "tta_flip": True}, state={"epoch": 3, "num_processes": 1}),
    ]


def parse_table(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    return [dict(zip(cells[0], c)) for c in cells[2:]]


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}%"


def first_reaching(rows: list[dict], key: str, target: float) -> dict | None:
    for r in rows:
        if r.get(key) is not None and r[key] >= target:
            return r
    return None


def expected(rows: list[dict], target: float, key: str) -> str:
    """The "reached" cell recomputed from the rows, with the target named (the runs' targets differ)."""
    measured = [r.get(key) for r in rows]
    if all(v is None for v in measured):
        return "–"
    hit = first_reaching(rows, key, target)
    text = f"epoch {hit['epoch']}, {hit['wall_seconds']:.1f} s" if hit else f"not in {rows[-1]['epoch']} epochs"
    return f"{target:g}%: {text}"


def test_table_figures_match_the_metrics_of_each_run(three_runs, capsys):
    assert cli.main(["compare", *map(str, three_runs), "--out", str(three_runs[0].parent / "c.png")]) == 0
    table = {r["run"]: r for r in parse_table(capsys.readouterr().out)}
    assert list(table) == ["alpha", "beta", "gamma"]
    # legacy gamma: its one figure was flip TTA, so the plain columns are not measured
    plain = {"alpha": ALPHA, "beta": BETA, "gamma": [{**r, "test_acc": None} for r in GAMMA]}
    tta = {"alpha": ALPHA, "beta": BETA, "gamma": [{**r, "test_acc_tta": r["test_acc"]} for r in GAMMA]}
    targets = {"alpha": 87.0, "beta": 90.0, "gamma": 87.0}
    for name, cells in table.items():
        p_rows, t_rows = plain[name], tta[name]
        assert cells["epochs"] == str(len(p_rows))
        assert cells["final test acc, no TTA"] == pct(p_rows[-1]["test_acc"])
        assert cells["final test acc, flip TTA"] == pct(t_rows[-1]["test_acc_tta"])
        best_plain = [r["test_acc"] for r in p_rows if r["test_acc"] is not None]
        assert cells[f"{BEST}, no TTA"] == pct(max(best_plain) if best_plain else None)
        assert cells[f"{BEST}, flip TTA"] == pct(max(r["test_acc_tta"] for r in t_rows))
        assert cells["target reached, no TTA"] == expected(p_rows, targets[name], "test_acc")
        assert cells["target reached, flip TTA"] == expected(t_rows, targets[name], "test_acc_tta")
        assert cells["img/s"] == f"{statistics.mean(r['images_per_second'] for r in p_rows):,.0f}"
    # spot values, so the recomputation above cannot agree with the table by sharing a mistake
    assert table["alpha"][f"{BEST}, no TTA"] == "89.50%" and table["alpha"]["final test acc, no TTA"] == "88.00%"
    assert table["alpha"]["target reached, no TTA"] == "87%: epoch 3, 32.5 s"
    assert table["alpha"]["target reached, flip TTA"] == "87%: epoch 2, 25.0 s"
    assert table["beta"]["target reached, flip TTA"] == "90%: not in 3 epochs"
    assert table["gamma"]["target reached, flip TTA"] == "87%: epoch 2, 25.0 s"
    assert table["beta"]["img/s"] == "2,000"
    assert [table[n]["final val acc, no TTA"] for n in table] == ["–", "74.00%", "–"]
    assert [(table[n]["model"], table[n]["recipe"]) for n in table] == [
        ("s7", "s7"), ("s7_dilated", "custom"), ("s7_strided", "s7_strided")]
    assert [(table[n]["params"], table[n]["RF"]) for n in table] == [("95,146", "77"), ("120,000", "57"), ("?", "?")]
    assert [table[n]["rules"] for n in table] == ["ALL PASS", "FAIL (MaxPool, parameters)", "not checked"]
    # where: facts.json's device, precision and processes; run_info.json over them; "?" without either
    assert [table[n]["device"] for n in table] == ["2 x CPU, fp32", "GPU: test box", "?"]
    assert (three_runs[0].parent / "c.png").stat().st_size > 0


def test_one_target_for_all_runs_is_named_in_the_header(three_runs):
    runs = [summarize(three_runs[0]), summarize(three_runs[2])]
    rows = parse_table(compare_table(runs))
    assert rows[0]["87% reached, no TTA"] == "epoch 3, 32.5 s"
    assert "final val acc, no TTA" not in rows[0]  # no run holds out a validation split


def test_curves_of_every_run_are_overlaid_on_one_figure(three_runs):
    runs = [summarize(r) for r in three_runs]
    fig = curves_figure(runs)
    acc_ax, loss_ax = fig.axes
    acc = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in acc_ax.get_lines()}
    loss = {line.get_label(): list(line.get_ydata()) for line in loss_ax.get_lines()}
    # gamma measured flip TTA only: no plain curve for it
    assert sorted(acc) == ["alpha", "alpha, flip TTA", "beta", "beta, flip TTA", "gamma, flip TTA"]
    assert acc["alpha"] == ([1, 2, 3, 4], [r["test_acc"] for r in ALPHA])
    assert acc["beta, flip TTA"][1] == [r["test_acc_tta"] for r in BETA]
    assert acc["gamma, flip TTA"][1] == [r["test_acc"] for r in GAMMA]
    assert loss["alpha"] == pytest.approx([3.0 / e for e in (1, 2, 3, 4)])
    assert loss["gamma, flip TTA"] == pytest.approx([3.0 / e for e in (1, 2, 3)])
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_a_committed_run_folder_compares(capsys):
    runs = sorted(p.parent for p in (ROOT / "results" / "ablations").glob("*/metrics.jsonl"))
    if not runs:
        pytest.skip("no committed ablation runs")
    run = runs[0]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert cli.main(["compare", str(run), "--out", ""]) == 0
    (cells,) = parse_table(capsys.readouterr().out)
    assert cells["run"] == run.name and cells["epochs"] == str(rows[-1]["epoch"])
    assert cells["final test acc, no TTA"] == pct(rows[-1]["test_acc"])
    # flip TTA is measured at the final epoch only in runs since 89407bd: the best is over the measured epochs,
    # and the cell says when that is the final epoch alone
    tta = [r for r in rows if r["test_acc_tta"] is not None]
    only = " (measured at the final epoch only)" if tta == [rows[-1]] and len(rows) > 1 else ""
    assert cells[f"{BEST}, flip TTA"] == pct(max(r["test_acc_tta"] for r in tta)) + only


# delta: flip TTA measured at the final epoch only (tta_every_epoch false); 87% without TTA first at epoch 2
DELTA = [{**row(e, a, None, 500.0), "test_loss_tta": None} for e, a in ((1, 84.0), (2, 87.5), (3, 86.0))]
DELTA[-1].update(test_acc_tta=86.75, test_loss_tta=1.0)


def test_flip_tta_at_the_final_epoch_only_is_said_in_its_best_and_reached_cells_and_the_legend(tmp_path):
    run = fake_run(tmp_path, "delta", DELTA, {"model": "s7", "recipe": "s7", "target_acc": 87.0,
                                              "tta_every_epoch": False})
    text = compare_table([summarize(run)])
    (cells,) = parse_table(text)
    only = " (measured at the final epoch only)"
    assert cells[f"{BEST}, flip TTA"] == pct(DELTA[-1]["test_acc_tta"]) + only  # the final figure, picked from nothing
    assert cells["final test acc, flip TTA"] == pct(DELTA[-1]["test_acc_tta"])
    assert cells[f"{BEST}, no TTA"] == pct(max(r["test_acc"] for r in DELTA))
    hit = first_reaching(DELTA, "test_acc", 87.0)
    assert cells["87% reached, no TTA"] == f"epoch {hit['epoch']}, {hit['wall_seconds']:.1f} s" == "epoch 2, 25.0 s"
    assert cells["87% reached, flip TTA"] == f"not in {len(DELTA)} epochs" + only
    legend = text.split("\n\n", 1)[1]
    assert "(measured at the final epoch only)" in legend and "may have reached the target earlier" in legend


def test_the_legend_explains_no_marking_that_no_cell_carries(three_runs):
    text = compare_table([summarize(r) for r in three_runs])
    assert "measured at" not in text  # every figure here was measured at every epoch or at none


def test_a_wandb_offline_run_is_read_through_its_run_folder(three_runs, tmp_path):
    offline = three_runs[0] / "wandb" / "offline-run-20260101_000000-alpha"
    offline.mkdir(parents=True)
    (offline / "run-alpha.wandb").write_bytes(b":W&B")
    assert find_run_dir(offline) == three_runs[0]
    assert summarize(offline)["final_test_acc"] == ALPHA[-1]["test_acc"]
    alone = tmp_path / "copied" / "offline-run-x"
    alone.mkdir(parents=True)
    (alone / "run-x.wandb").write_bytes(b":W&B")
    with pytest.raises(ValueError, match="outside its run folder"):
        find_run_dir(alone)
    (three_runs[0] / "model").mkdir()
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        find_run_dir(three_runs[0] / "model")  # a run folder's other subfolders are not runs


def test_bad_input_is_one_line_naming_the_folder(tmp_path, capsys):
    assert cli.main(["compare", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'nope'}: no such folder"
    assert cli.main(["compare", str(tmp_path)]) == 2
    assert "not a run folder (no metrics.jsonl)" in capsys.readouterr().err


def test_device_unknown_without_any_record(tmp_path):
    run = fake_run(tmp_path, "bare", ALPHA, {"model": "s7"})
    assert run_device(run, {}) == "?"
