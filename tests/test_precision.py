"""The precision a run computes in (issue 17): one given to `accelerate launch` (its --mixed_precision or its config
file, exported as ACCELERATE_MIXED_PRECISION) is honoured; the trainer's --mixed-precision auto applies only when
the launch gives none (the shipped accelerate_config.yaml gives none); an explicit --mixed-precision that
contradicts the launch is refused in one line; config.yaml, the log and W&B show the precision that ran."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runs import REPO, flags, sub_env
from trainer import main as trainer_main
from trainer import precision
from trainer.config import TrainConfig
from trainer.runfolder import STARTUP

ACCELERATE = str(Path(sys.executable).parent / "accelerate")
SHIPPED = str(REPO / "accelerate_config.yaml")
TINY = ("--train-subset", "96", "--test-subset", "60", "--mixed-precision", "auto")  # 3 steps per epoch


def auto_pick() -> str:
    return precision.pick_precision("auto")[0]


def other_than_auto() -> str:
    """A precision that auto would not choose on this machine, so honouring it is visible."""
    return "no" if auto_pick() == "bf16" else "bf16"


def dtype(precision: str) -> str:
    return "torch.bfloat16" if precision == "bf16" else "torch.float32"


def launch(data, tmp_path, name: str, *launch_args: str) -> tuple[subprocess.Popen, Path]:
    """Start `accelerate launch --config_file accelerate_config.yaml LAUNCH... tests/probe.py` of a 2-epoch run
    with --mixed-precision auto; its output goes to NAME.log."""
    argv = flags(data, tmp_path, name, *TINY, epochs=2)
    with open(tmp_path / f"{name}.log", "w") as log:  # a file, not a pipe: the launcher cannot block on it
        p = subprocess.Popen([ACCELERATE, "launch", "--config_file", SHIPPED, *launch_args, "tests/probe.py",
                              str(tmp_path / f"{name}.json"), *argv], cwd=REPO, env=sub_env(OMP_NUM_THREADS="1"),
                             stdout=log, stderr=subprocess.STDOUT)
    return p, tmp_path / name


@pytest.fixture(scope="module")
def launched(data, tmp_path_factory) -> dict[str, tuple[dict, Path]]:
    """Both launches, side by side (each is mostly start-up, one core's work): name -> (what its first step saw,
    its run folder)."""
    tmp = tmp_path_factory.mktemp("launches")
    procs = {"given": launch(data, tmp, "given", "--mixed_precision", other_than_auto()),
             "shipped": launch(data, tmp, "shipped")}  # accelerate exports ACCELERATE_MIXED_PRECISION=no here
    try:
        for name, (p, _) in procs.items():
            assert p.wait(timeout=300) == 0, (tmp / f"{name}.log").read_text()[-3000:]
    finally:  # a failed or stuck launch leaves nothing running behind it
        for p, _ in procs.values():
            if p.poll() is None:
                p.kill()
    return {name: (json.loads((tmp / f"{name}.json").read_text()), run) for name, (_, run) in procs.items()}


def test_a_precision_given_to_accelerate_launch_is_what_the_steps_compute_in_and_what_the_run_saves(launched):
    wanted = other_than_auto()
    seen, run = launched["given"]
    assert seen["conv_output_dtype"] == dtype(wanted) and seen["autocast"] is (wanted != "no")
    assert TrainConfig.load(run / "config.yaml").mixed_precision == wanted  # not `auto`
    assert f"precision {wanted} (accelerate launch --mixed_precision {wanted})" in (run / "train.log").read_text()
    assert json.loads((run / STARTUP).read_text())["precision"] == wanted


def test_the_shipped_launch_config_leaves_the_precision_to_auto_and_the_run_saves_what_auto_chose(launched):
    seen, run = launched["shipped"]
    assert seen["conv_output_dtype"] == dtype(auto_pick())
    assert TrainConfig.load(run / "config.yaml").mixed_precision == auto_pick()
    assert f"precision {auto_pick()} (auto: " in (run / "train.log").read_text()


def test_a_launch_config_files_no_is_a_choice_and_a_missing_key_is_none(tmp_path):
    base = Path(SHIPPED).read_text()
    assert "mixed_precision" not in yaml.safe_load(base)  # the shipped file names no precision
    (tmp_path / "fp32.yaml").write_text(base + "mixed_precision: 'no'\n")
    assert precision.launcher_precision(["--config_file", SHIPPED, "t.py"], REPO) is None
    assert precision.launcher_precision(["--config_file", "fp32.yaml", "t.py"], tmp_path) == (
        "no", "mixed_precision no in fp32.yaml (accelerate launch)")  # relative to the launcher's folder
    flag = precision.launcher_precision(["--config_file", "fp32.yaml", "--mixed_precision=bf16", "t.py",
                                            "--mixed-precision", "no"], tmp_path)
    assert flag == ("bf16", "accelerate launch --mixed_precision bf16")  # the launch's flag beats its file


@pytest.mark.parametrize("cmdline, args", [
    (["/v/bin/python", "/v/bin/accelerate", "launch", "--cpu", "t.py"], ["--cpu", "t.py"]),
    (["accelerate-launch", "t.py", "-x"], ["t.py", "-x"]),
    (["python", "-m", "accelerate.commands.launch", "t.py"], ["t.py"]),
    (["python", "trainer/main.py", "launch"], None), (["accelerate", "config"], None)])
def test_the_launcher_is_recognised_by_its_command_line(cmdline, args):
    assert precision.launcher_args(cmdline) == args


def test_an_exported_precision_without_a_launcher_is_honoured_over_auto(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", other_than_auto())
    assert precision.resolve_precision("auto") == (other_than_auto(),
                                                      f"ACCELERATE_MIXED_PRECISION={other_than_auto()}")
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    assert precision.resolve_precision("auto") == precision.pick_precision("auto")


def test_a_mixed_precision_that_contradicts_the_launch_is_refused_in_one_line_naming_both(data, tmp_path,
                                                                                          monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    rc = trainer_main.main(flags(data, tmp_path, "clash", "--mixed-precision", "no"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["error: --mixed-precision no (flag or recipe) contradicts "
                               "ACCELERATE_MIXED_PRECISION=bf16; give the same precision in both, or drop one"]
    assert not (tmp_path / "clash").exists()
    assert precision.resolve_precision("bf16")[0] == "bf16"  # the same in both: fine
