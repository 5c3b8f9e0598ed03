"""Every `s7` tool refuses bad input before any work: one `error:` line on stderr naming the flag, file or value,
exit status 2 (as argparse's), nothing written. In process (trainer.tools.cli.main), on inputs made here in
milliseconds: no dataset, no training."""
from __future__ import annotations

import argparse
import json
import subprocess
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
    assert error_line(["evaluate", "W.safetensors", "--tta-shift", 9], capsys) == "error: --tta-shift 9: must be 8 or less"


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
