"""Every `s7` tool refuses bad input before any work: one `error:` line on stderr naming the flag, file or value,
exit status 2 (as argparse's), nothing written. In process (trainer.tools.cli.main), on inputs made here in
milliseconds: no dataset, no training."""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

import synthetic
from runs import REPO
from trainer.tools import cli
from trainer.checkpoint import save_weights

CLASSES = list(synthetic.CLASSES)
TRAINED = {"classes": CLASSES, "mean": [60.0] * 3, "std": [50.0] * 3}
N_TEST = 4  # test images per class of the tiny tree

# Every count flag of every tool and the least value it takes (0: "none" or "all" means something).
COUNT_FLAGS = {
    ("show-augment", "--n"): 1, ("show-augment", "--draws"): 1, ("show-augment", "--seed"): 0,
    ("evaluate", "--batch-size"): 1, ("evaluate", "--tta-shift"): 0, ("explain", "--top"): 1,
    ("robustness", "--limit"): 0, ("robustness", "--seed"): 0,
    ("sweep", "--trials"): 1, ("sweep", "--seed"): 0,
}


def error_line(argv: list, capsys) -> str:
    """The one stderr line of a refused command line, after checking exit status 2 and nothing on stdout."""
    rc = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert rc == 2, (rc, captured.err)
    assert captured.out == "" and "Traceback" not in captured.err, captured
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    return captured.err.rstrip("\n")


def files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def subparsers() -> dict[str, argparse.ArgumentParser]:
    return cli.build_parser().subcommands


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A 3-class image tree with N_TEST test images per class, and untrained s7 weights for its classes."""
    root = tmp_path_factory.mktemp("tiny")
    tree = synthetic.write_tree(root / "tree", n_train=2, n_test=N_TEST, seed=1)
    torch.manual_seed(0)
    save_weights(timm.create_model("s7", num_classes=3), root / "w", {"model": "s7", **TRAINED})
    return {"tree": tree, "cache": root / "cache", "weights": root / "w" / "model.safetensors"}


# ---------------------------------------------------------------- counts: one shared type

def test_every_whole_number_flag_of_every_tool_uses_the_shared_count_type():
    found, other = set(), []
    for name, sub in subparsers().items():
        for a in sub._actions:
            if isinstance(a.type, cli.Count):
                found.add((name, a.option_strings[-1]))
            elif a.type in (int, float) or type(a.default) is int:
                other.append((name, a.dest))
    assert found == set(COUNT_FLAGS) and other == []


@pytest.mark.parametrize("command, flag", sorted(COUNT_FLAGS))
def test_a_count_below_its_least_or_not_whole_is_one_line_naming_flag_and_value(command, flag, tmp_path,
                                                                                monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    least = COUNT_FLAGS[command, flag]
    for bad in (least - 1, least - 5):
        assert error_line([command, flag, bad], capsys).startswith(f"error: {flag} {bad}: must be {least}")
    assert error_line([command, flag, "2.5"], capsys) == f"error: {flag} 2.5: not a whole number"
    assert not list(tmp_path.iterdir())


def test_a_count_above_its_most_is_one_line_naming_flag_value_and_bound(capsys):
    line = error_line(["evaluate", "W.safetensors", "--tta-shift", 9], capsys)
    assert line == "error: --tta-shift 9: must be 8 or less"


def test_robustness_limit_above_the_test_split_is_refused_before_any_work(tiny, tmp_path, capsys):
    n = len(CLASSES) * N_TEST
    line = error_line(["robustness", tiny["weights"], "--data", tiny["tree"], "--data-dir", tiny["cache"],
                       "--out", tmp_path / "out", "--limit", n + 1], capsys)
    assert line.startswith(f"error: --limit {n + 1}: the test split of ") and f"has {n} images" in line
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- outputs: checked before the work

@pytest.mark.parametrize("argv, flag, suffix", [
    (["show-augment"], "--out", ".png"),
    (["compare", "RUN"], "--out", ".png"),
    (["explain", "W.safetensors", "IMG.png"], "--out", ".png"),
    (["export", "W.safetensors"], "--onnx", ".onnx"),
])
def test_an_output_file_that_is_a_folder_or_has_another_suffix_is_refused(argv, flag, suffix, tmp_path, capsys):
    folder = tmp_path / "figs"
    folder.mkdir()
    assert error_line([*argv, flag, folder], capsys) == f"error: {flag} {folder}: is a folder; name a {suffix} file"
    other = tmp_path / "x.txt"
    assert error_line([*argv, flag, other], capsys) == f"error: {flag} {other}: must end in {suffix}"
    assert [p.name for p in tmp_path.iterdir()] == ["figs"] and not list(folder.iterdir())  # no figs.png beside it


@pytest.mark.parametrize("argv", [["robustness", "W.safetensors"], ["sweep", "SWEEP.yaml"]])
def test_an_output_folder_that_is_a_file_is_refused_before_any_work(argv, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("keep me\n")
    assert error_line([*argv, "--out", taken], capsys) == f"error: --out {taken}: exists and is not a folder"
    assert files(tmp_path) == {taken: b"keep me\n"}


def test_export_with_missing_data_writes_no_onnx_file(tiny, tmp_path, capsys):
    missing = tmp_path / "nonexistent"
    line = error_line(["export", tiny["weights"], "--onnx", tmp_path / "x.onnx", "--data", missing], capsys)
    assert line == f"error: {missing}: no such file or directory"
    assert not list(tmp_path.iterdir())


def test_default_outputs_go_to_a_git_ignored_folder():
    subs = subparsers()
    defaults = [subs[name].get_default("out") for name in ("show-augment", "compare", "robustness")]
    assert all(Path(d).parts[0] == "outputs" for d in defaults), defaults
    p = subprocess.run(["git", "check-ignore", *defaults, "outputs/robustness/s7.json"], cwd=REPO,
                       capture_output=True, text=True)
    assert p.returncode == 0 and len(p.stdout.splitlines()) == len(defaults) + 1, p


# ---------------------------------------------------------------- which net the weights belong to

def checkpoint_run(root: Path, net: str, named_in: str | None) -> Path:
    """A run folder whose checkpoint holds `net`'s weights as Accelerate saves them (no model in the file's
    metadata); only `named_in` (config.yaml, state.json or nothing) says which net. The run's meta.json
    gives the classes, mean and std, but no net."""
    run = root / "run"
    ckpt = run / "checkpoints" / "epoch-0002"
    ckpt.mkdir(parents=True)
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in timm.create_model(net, num_classes=3).state_dict().items()}
    save_file(state, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    if named_in == "config.yaml":
        (run / "config.yaml").write_text(f"model: {net}\nepochs: 2\n")
    if named_in == "state.json":
        (ckpt / "state.json").write_text(json.dumps({"model": net, "epoch": 2, "num_processes": 1}))
    (run / "model").mkdir()
    (run / "model" / "meta.json").write_text(json.dumps({"epoch": 2, **TRAINED}))
    return ckpt


@pytest.mark.parametrize("named_in", ["config.yaml", "state.json"])
def test_evaluate_of_a_checkpoint_takes_the_net_its_run_names(named_in, tiny, tmp_path, capsys):
    ckpt = checkpoint_run(tmp_path, "s7_dilated", named_in)  # same tensor shapes as s7: only the name tells
    assert cli.main(["evaluate", str(ckpt), "--data", str(tiny["tree"]), "--data-dir", str(tiny["cache"])]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("s7_dilated on ") and f"/{len(CLASSES) * N_TEST}), with flip TTA" in first


@pytest.mark.parametrize("named_in", ["config.yaml", "state.json"])
def test_a_model_flag_contradicting_the_run_is_one_line_and_loads_nothing(named_in, tiny, tmp_path, capsys):
    ckpt = checkpoint_run(tmp_path, "s7_dilated", named_in)
    before = files(tmp_path)
    line = error_line(["evaluate", ckpt, "--model", "s7", "--data", tiny["tree"], "--data-dir", tiny["cache"]],
                      capsys)
    assert line.startswith(f"error: --model s7: {ckpt / 'model.safetensors'} holds model 's7_dilated'")
    assert named_in in line and line.endswith("drop --model")
    assert files(tmp_path) == before


def test_a_checkpoint_nothing_names_asks_for_the_model(tmp_path, capsys):
    ckpt = checkpoint_run(tmp_path, "s7", None)
    assert error_line(["evaluate", ckpt], capsys).endswith("says which model it holds; pass --model")


# ---------------------------------------------------------------- metrics.jsonl

@pytest.mark.parametrize("bad", ['{"epoch": 2, "train_loss": ', "[2]", '{"train_loss": 1.0}'])
@pytest.mark.parametrize("command", ["report", "compare"])
def test_a_bad_metrics_line_is_named_by_file_and_line(command, bad, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    good = {"epoch": 1, "train_loss": 1.0, "train_acc": 50.0, "test_loss": 1.0, "test_acc": 50.0, "lr": 0.1}
    (run / "metrics.jsonl").write_text(json.dumps(good) + "\n\n" + bad + "\n")  # line 2 is blank
    before = files(tmp_path)
    argv = [command, run] + (["--out", tmp_path / "c.png"] if command == "compare" else [])
    assert error_line(argv, capsys).startswith(f"error: {run / 'metrics.jsonl'}: line 3 is not ")
    assert files(tmp_path) == before


# ---------------------------------------------------------------- module:Class targets and the rules table

class BrokenForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 10, 3)

    def forward(self, x):
        return self.conv(x).view(7, -1)  # 1x10x30x30 does not split into 7 rows


class ParallelConvs(nn.Module):
    """Two 3x3 convs read the image side by side: the true receptive field is 3; a walk that chains every conv
    in call order makes it 5."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 10, 3, padding=1), nn.Conv2d(3, 10, 3, padding=1)

    def forward(self, x):
        return (self.a(x) + self.b(x)).mean((2, 3))


@pytest.mark.parametrize("argv, message", [
    (["check", "torch.nn:Conv2d"], "torch.nn:Conv2d: cannot be built with no arguments"),
    (["summary", "models.nets:S7Net"], "models.nets:S7Net: cannot be built with no arguments"),
    (["check", "torch.nn:Identity"], "torch.nn:Identity: has no Conv2d"),
    (["check", "tests.test_tool_errors:BrokenForward"],
     "tests.test_tool_errors:BrokenForward: its forward pass fails on a 1x3x32x32 image"),
    (["check", "models.nets:NoSuchNet"], "cannot load model 'models.nets:NoSuchNet'"),
])
def test_a_target_that_is_no_buildable_module_class_is_one_line(argv, message, capsys):
    assert error_line(argv, capsys).startswith(f"error: {message}")


def test_a_function_target_is_refused_and_never_called(monkeypatch, capsys):
    from trainer import main as trainer_main

    def must_not_run(*args, **kwargs):
        raise AssertionError("s7 check called the target")

    monkeypatch.setattr(trainer_main, "main", must_not_run)
    assert error_line(["check", "trainer.main:main"], capsys).startswith(
        "error: trainer.main:main: not an nn.Module class but a function")


def test_the_rf_row_says_the_two_computations_disagree(capsys):
    assert cli.main(["check", "tests.test_tool_errors:ParallelConvs"]) == 1
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| receptive field |"))
    assert row.startswith("| receptive field | > 52 | 5 (gradient check: 3)") and row.endswith("| FAIL |")
    assert "disagree" in row


def test_summary_names_the_mult_adds_unit():
    from models.rules import summary_text

    text = summary_text(ParallelConvs())
    assert "Total mult-adds (M): " in text and "Units." not in text


# ---------------------------------------------------------------- usage and help

@pytest.mark.parametrize("command", ["evaluate", "report"])
def test_an_unknown_flag_is_named_with_its_subcommand(command, capsys):
    assert error_line([command, "RUN", "--bogus"], capsys) == f"error: s7 {command}: unrecognized arguments: --bogus"


def test_every_flag_of_every_tool_has_help_with_its_default():
    for name, sub in subparsers().items():
        text = " ".join(sub.format_help().split())  # renders every %(default)s
        for a in sub._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            assert a.help, (name, a.dest)
            if a.option_strings and not a.required:
                assert "default" in a.help, (name, a.option_strings)
            if "%(default)s" in a.help:
                assert f"(default: {a.default})" in text, (name, a.option_strings)


def test_report_help_describes_its_argument(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["report", "-h"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: s7 report") and "metrics.jsonl" in out


# ---------------------------------------------------------------- a run folder's files

COMMITTED_RUN = REPO / "results" / "s7_strided-cpu"  # a finished run with predictions.npz and model/meta.json


def result_row(epoch: int, test_acc: float) -> dict:
    return {"epoch": epoch, "train_loss": 1.0, "train_acc": 40.0 + epoch, "test_loss": 1.0, "test_acc": test_acc,
            "test_loss_tta": 1.0, "test_acc_tta": test_acc, "lr": 0.1, "wall_seconds": 10.0 * epoch}


def small_run(root: Path, rows: list[dict] | None = None) -> Path:
    """A run folder of two epochs, the second reaching the 60% target, and the shipped weights' meta.json."""
    run = root / "run"
    (run / "model").mkdir(parents=True)
    (run / "config.yaml").write_text("model: s7\ntarget_acc: 60\n")
    rows = rows or [result_row(1, 55.0), result_row(2, 65.0)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "model" / "meta.json").write_text(json.dumps({"epoch": 2, "selected_by": "final epoch"}))
    return run


def run_tool_line(command: str, run: Path, tmp_path: Path, capsys) -> str:
    """`s7 report RUN` or `s7 compare RUN`'s one error line, after checking that nothing was written."""
    before = files(tmp_path)
    line = error_line([command, run] + (["--out", tmp_path / "c.png"] if command == "compare" else []), capsys)
    assert files(tmp_path) == before
    return line


@pytest.mark.parametrize("command", ["report", "compare"])
@pytest.mark.parametrize("text, message", [("model: [s7\n", "not valid YAML ("),
                                           ("a line of plain text\n", "not a mapping of settings but a str")])
def test_a_config_yaml_that_is_no_yaml_mapping_is_one_line_naming_it(command, text, message, tmp_path, capsys):
    run = small_run(tmp_path)
    (run / "config.yaml").write_text(text)
    assert run_tool_line(command, run, tmp_path, capsys).startswith(f"error: {run / 'config.yaml'}: {message}")


@pytest.mark.parametrize("command", ["report", "compare"])
@pytest.mark.parametrize("name, text, message", [
    ("model/meta.json", '{"selected_by": "final epoch"}', 'no "epoch"'),
    ("model/meta.json", "[2]", "not a JSON object but a list"),
    ("model/meta.json", '{"epoch": 2,', "not JSON ("),
    ("facts.json", '["parameters"]', "not a JSON object but a list"),
    ("facts.json", b'{"parameters": \xff}', "not JSON (not UTF-8 text)"),
])
def test_a_json_run_file_that_is_no_object_or_lacks_its_epoch_is_one_line_naming_it(command, name, text, message,
                                                                                      tmp_path, capsys):
    run = small_run(tmp_path)
    (run / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    assert run_tool_line(command, run, tmp_path, capsys).startswith(f"error: {run / name}: {message}")


@pytest.mark.parametrize("command", ["report", "compare"])
@pytest.mark.parametrize("key", ["train_acc", "wall_seconds"])
def test_a_metrics_row_lacking_a_figure_the_results_read_is_one_line_naming_file_and_key(command, key, tmp_path,
                                                                                          capsys):
    rows = [result_row(1, 55.0), result_row(2, 65.0)]  # epoch 2: the final one, and the first at the 60% target
    del rows[1][key]
    run = small_run(tmp_path, rows)
    line = run_tool_line(command, run, tmp_path, capsys)
    assert line == f"error: {run / 'metrics.jsonl'}: the row of epoch 2 has no '{key}'"


def test_a_metrics_file_cut_short_in_its_last_row_reads_without_it_but_a_bad_middle_row_is_refused(tmp_path):
    from trainer.runfolder import read_metrics, truncate_metrics

    rows = [result_row(1, 55.0), result_row(2, 65.0), result_row(3, 70.0)]
    lines = [json.dumps(r) for r in rows]
    run = small_run(tmp_path, rows)
    metrics = run / "metrics.jsonl"
    metrics.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:25])  # a crash while appending epoch 3
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]
    assert truncate_metrics(run, 3) == rows[:2]  # the resume's rewrite drops the torn row
    assert metrics.read_text() == lines[0] + "\n" + lines[1] + "\n" and not (run / "metrics.jsonl.tmp").exists()
    for text in (lines[0] + "\n" + lines[1][:25] + "\n" + lines[2] + "\n",  # the torn row is not the last
                 lines[0] + "\n" + lines[1] + "\n" + lines[2][:25] + "\n"):  # a whole line, newline included
        metrics.write_text(text)
        with pytest.raises(ValueError, match=r"metrics\.jsonl: line [23] is not JSON"):
            read_metrics(run)


def predictions_without_wrong_index(path: Path) -> None:
    import numpy as np

    with np.load(path) as npz:
        kept = {k: npz[k] for k in npz.files if k != "wrong_index"}
    np.savez_compressed(path, **kept)


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:2000]), "not an .npz archive (cut short, or another kind of file)"),
    (predictions_without_wrong_index, "no 'wrong_index' array (it holds "),
])
def test_a_cut_short_or_incomplete_predictions_file_is_one_line_naming_it(damage, message, tmp_path, capsys):
    from trainer.tools.explain import save_mistake_maps

    run = shutil.copytree(COMMITTED_RUN, tmp_path / "run")
    damage(run / "predictions.npz")
    assert error_line(["report", run], capsys).startswith(f"error: {run / 'predictions.npz'}: {message}")
    with pytest.raises(ValueError, match=re.escape(f"{run / 'predictions.npz'}: {message}")):
        save_mistake_maps(run)  # the run report's class maps read it through the same reader


# ---------------------------------------------------------------- sweep files

@pytest.mark.parametrize("text, message", [
    ("parameters: {lr: {distribution: log_uniform_values, min: 1e-5, max: 0.1}}",
     "parameter lr: `min` must be a number, not '1e-5' (YAML reads 1e-5 as text: write 1.0e-5)"),
    ("parameters: {lr: {values: 0.1}}", "parameter lr: `values` must be a non-empty list, not 0.1"),
    ("parameters: {lr: {value: 0.1}}\nmetric: val/acc", "`metric` must be a mapping (name, goal), not 'val/acc'"),
])
def test_a_sweep_value_of_the_wrong_type_is_one_line_naming_file_and_key_before_any_trial(text, message, tmp_path,
                                                                                         monkeypatch, capsys):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("a trial was started"))
    path = tmp_path / "sweep.yaml"
    path.write_text("program: p.py\ncommand: ['${args}']\n" + text)
    assert error_line(["sweep", path, "--trials", 1, "--out", tmp_path / "o"], capsys) == f"error: {path}: {message}"
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- the optional onnx extra

def test_export_without_the_onnx_extra_is_one_line_naming_it_and_writes_nothing(tiny, tmp_path, monkeypatch,
                                                                                  capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # as on an install without it: `import onnx` fails
    line = error_line(["export", tiny["weights"], "--onnx", tmp_path / "m.onnx"], capsys)
    assert line == ("error: s7 export needs onnx, which is not installed: install the 'onnx' extra "
                    "(pip install 's7[onnx]')")
    assert not list(tmp_path.iterdir())
    assert "pip install 's7[onnx]'" in " ".join(subparsers()["export"].format_help().split())


# ---------------------------------------------------------------- what the help says

def test_predict_help_says_it_answers_with_flip_tta_and_explain_without():
    text = {name: " ".join(subparsers()[name].format_help().split()) for name in ("predict", "explain")}
    assert "with flip TTA" in text["predict"] and "mirror" in text["predict"]
    assert "no TTA" in text["explain"]


def test_compare_help_names_every_file_of_the_run_folder_it_reads():
    text = " ".join(subparsers()["compare"].format_help().split())
    for name in ("metrics.jsonl", "config.yaml", "facts.json", "model/meta.json", "run_info.json"):
        assert name in text, name
