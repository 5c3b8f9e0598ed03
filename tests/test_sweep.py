"""configs/sweep.yaml and `s7 sweep`: every parameter the sweep names is a trainer flag, the command line the W&B
agent builds from the file parses into the values drawn (at the bounds of every range), and the local runner
trains its trials as normal run folders, logs the sweep's metric to W&B under the name the file optimises, and
summarises them with `s7 compare`."""
from __future__ import annotations

import json
import subprocess

import pytest
import yaml

import wandb_records
from runs import REPO, SMOKE, wandb_env
from trainer.tools import cli
from trainer.config import TrainConfig, build_parser, resolve
from trainer.tools.sweep import agent_command, load_sweep
from trainer.runfolder import read_metrics
from trainer.tracking import wandb_key

SWEEP = REPO / "configs" / "sweep.yaml"


def sweep_file() -> dict:
    return yaml.safe_load(SWEEP.read_text())


def agent_argv(sweep: dict, values: dict) -> list[str]:
    """What wandb's agent runs for `values` (wandb/wandb_agent.py, Agent._command_run): its own expansion of
    ${args}, and each other ${macro} item replaced by its list; the trainer's arguments follow ${program}."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    macros = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    macros.update(env=["/usr/bin/env"], interpreter=["python"], program=[sweep["program"]])
    command = []
    for item in map(str, sweep["command"]):
        command += (macros.get(item[2:-1]) or []) if item.startswith("${") and item.endswith("}") else [item]
    assert command[:3] == ["/usr/bin/env", "python", "trainer/main.py"]
    return command[3:]


def bound_draws(parameters: dict) -> list[dict]:
    """Every parameter at its lower bound, then at its upper bound (first / last of a list of values)."""
    def at(spec: dict, end: int):
        if "value" in spec:
            return spec["value"]
        if "values" in spec:
            return spec["values"][end]
        return spec["max" if end else "min"]
    return [{name: at(spec, end) for name, spec in parameters.items()} for end in (0, -1)]


def test_sweep_file_parses_and_searches_the_recipe_knobs():
    sweep = load_sweep(SWEEP)
    assert sweep["method"] in ("bayes", "random") and sweep["metric"]["goal"] == "maximize"
    # the validation accuracy under the name the trainer logs it to W&B (metrics.jsonl's val_acc, namespaced)
    assert sweep["metric"]["name"] == wandb_key("val_acc") == "val/acc"
    assert sweep["early_terminate"]["type"] == "hyperband"
    names = set(sweep["parameters"])
    assert {"lr", "weight-decay", "label-smoothing", "rotate-limit", "dropout-p", "ema-decay"} <= names
    assert any(item.startswith("--val-split=") and int(item.split("=")[1]) > 0 for item in sweep["command"])


def test_every_sweep_parameter_is_a_trainer_flag():
    options = build_parser()._option_string_actions
    fields = set(TrainConfig.field_names())
    for name in sweep_file()["parameters"]:
        assert f"--{name}" in options, f"sweep parameter {name!r} is not a trainer flag"
        assert options[f"--{name}"].dest in fields


@pytest.mark.parametrize("end", [0, 1], ids=["lower-bounds", "upper-bounds"])
def test_the_command_line_the_agent_builds_parses_into_the_drawn_values(end):
    sweep = sweep_file()
    values = bound_draws(sweep["parameters"])[end]
    argv = agent_argv(sweep, values)
    assert all(a.startswith("--") and "=" in a for a in argv)  # --name=value, as ${args} writes them
    cfg = resolve(argv)  # the trainer's own parser and its checks
    for name, value in values.items():
        assert getattr(cfg, options_dest(name)) == pytest.approx(value), name
    assert cfg.val_split > 0
    # the local runner builds the same line (with this Python in place of the agent's `python` on the PATH)
    local = agent_command(sweep, values, interpreter="python", program=sweep["program"])
    assert local == ["python", "trainer/main.py", *argv]


def options_dest(name: str) -> str:
    return build_parser()._option_string_actions[f"--{name}"].dest


@pytest.mark.parametrize("text, message", [
    ("program: p.py\nparameters: {lr: {distribution: q_normal, mu: 1}}\ncommand: ['${args}']",
     "parameter lr: distribution 'q_normal' is not one the local runner draws"),
    ("program: p.py\nparameters: {lr: {min: 0.5, max: 0.1}}\ncommand: ['${args}']", "parameter lr: min 0.5 is above"),
    ("program: p.py\nparameters: {lr: {value: 1}}\ncommand: [python, p.py]", "must contain ${args}"),
    ("program: p.py\nparameters: [lr]\ncommand: ['${args}']", "`parameters` must be a dict"),
])
def test_a_bad_sweep_file_is_one_line_naming_it(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert cli.main(["sweep", str(path), "--trials", "1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: ") and message in err and "\n" not in err


def test_the_runner_names_each_trial_itself(tmp_path, capsys):
    assert cli.main(["sweep", str(SWEEP), "--out", str(tmp_path / "o"), "--", "--name", "x"]) == 2
    assert "--name: the sweep names each trial's folder itself" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--epoch", "3"], "unrecognized arguments: --epoch 3"),
    (["--epochs", "0"], "--epochs must be at least 1, not 0"),
    (["--config", "nowhere.yaml"], "config file not found: nowhere.yaml"),
])
def test_a_bad_trainer_flag_is_refused_before_the_first_trial(tmp_path, capsys, monkeypatch, flags, message):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("a trial was started"))
    out = tmp_path / "o"
    assert cli.main(["sweep", str(SWEEP), "--trials", "2", "--out", str(out), "--", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: trainer flags: ") and message in err and "\n" not in err
    assert not out.exists()


@pytest.mark.slow
def test_local_sweep_runs_each_trial_as_a_run_folder_and_compares_them(data, tmp_path, capsys, monkeypatch):
    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {**wandb_env(data.base), "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true",
                       "WANDB_DISABLE_CODE": "true", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                       "NO_ALBUMENTATIONS_UPDATE": "1"}.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "sweep"
    # the smoke recipe on the synthetic tree, 2 short epochs; --lr fixed so that no draw diverges on 98 images
    extra = ["--config", SMOKE, "--data", str(data.tree), "--data-dir", str(data.cache), "--epochs", "2",
             "--workers", "0", "--wandb-mode", "offline", "--train-subset", "128", "--val-split", "30", "--lr", "0.1"]
    code = cli.main(["sweep", str(SWEEP), "--trials", "2", "--seed", "3", "--out", str(out), "--", *extra])
    printed = capsys.readouterr().out
    assert code == 0, printed
    sweep = sweep_file()
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert [t["trial"] for t in trials] == ["trial-01", "trial-02"] and all(t["returncode"] == 0 for t in trials)
    assert trials[0]["values"] != trials[1]["values"]
    for t in trials:
        run = out / t["trial"]
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        for name, value in t["drawn"].items():
            spec = sweep["parameters"][name]
            if "values" in spec:
                assert value in spec["values"]
            elif "min" in spec:
                assert spec["min"] <= value <= spec["max"]
        # "values" is what the trial ran with: the trainer flags after `--` win over the drawn ones
        for name, value in t["values"].items():
            assert cfg[options_dest(name)] == pytest.approx(value), (t["trial"], name)
        assert (t["values"]["epochs"], t["values"]["lr"]) == (2, 0.1) != (t["drawn"]["epochs"], t["drawn"]["lr"])
        assert (cfg["epochs"], cfg["lr"], cfg["val_split"]) == (2, 0.1, 30)
        shown = next(line for line in printed.splitlines() if line.startswith(f"[{t['trial']}] "))
        assert "epochs=2 (from the flags)" in shown and "lr=0.1 (from the flags)" in shown
        rows = read_metrics(run)
        # the W&B run logs the sweep's metric under the name the sweep optimises, once per epoch (what
        # hyperband counts)
        history = wandb_records.history(wandb_records.records(wandb_records.run_file(run)))
        metric = sweep["metric"]["name"]
        assert [h[metric] for h in history if metric in h] == pytest.approx([r["val_acc"] for r in rows])
        # the summary table: one row per trial, its final test accuracy from its own metrics
        line = next(line for line in printed.splitlines() if line.startswith(f"| {t['trial']} |"))
        assert f"| {rows[-1]['test_acc']:.2f}% |" in line
    assert (out / "compare.png").stat().st_size > 0


def test_categorical_and_constant_parameters_draw_only_their_values():
    from numpy.random import default_rng

    from trainer.tools.sweep import sample

    params = {"a": {"values": [0.0, 0.99]}, "b": {"value": 7}, "c": {"min": 1, "max": 3},
              "d": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}}
    draws = [sample(params, default_rng(s)) for s in range(40)]
    assert {d["a"] for d in draws} == {0.0, 0.99} and {d["b"] for d in draws} == {7}
    assert {d["c"] for d in draws} == {1, 2, 3} and all(isinstance(d["c"], int) for d in draws)
    assert all(1e-4 <= d["d"] <= 1e-2 for d in draws)
    below_1e3 = sum(d["d"] < 1e-3 for d in draws)  # log-uniform: half the draws in the lower decade
    assert 10 <= below_1e3 <= 30
