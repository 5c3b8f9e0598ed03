"""`s7 sweep SWEEP.yaml --trials N`: a W&B sweep file's search space run here, one trial after another.

For a machine that reaches no W&B server: each trial draws its parameters at random from the file's
`parameters` (seeded), builds the command line the W&B agent would build from the file's `command`
(`${args}` as `--name=value`, by wandb's own `create_sweep_command_args`), adds the extra trainer flags and
its own `--out`/`--name`, and runs it as a subprocess: each trial is a normal run folder. At the end the
trials are compared with `s7 compare`. The order of the draws is random search, not `method: bayes` (that
model lives on the W&B server); `early_terminate` is not applied (every trial runs all its epochs).

The few W&B distributions the sampler knows are drawn with numpy: the W&B engine (the `sweeps` package) was
last released in 2022 and the agent asks the server for each trial.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
RESERVED_FLAGS = ("--out", "--name", "--resume")  # the runner's own per-trial flags


def _fail(path: Path, message: str) -> None:
    raise ValueError(f"{path}: {message}")


def load_sweep(path: Path) -> dict[str, Any]:
    """The sweep file as a dict, with `program`, `parameters` and `command` present and well formed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such sweep file")
    try:
        sweep = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(sweep, dict):
        _fail(path, "expected a mapping (program, method, metric, parameters, command)")
    for key, kind in (("program", str), ("parameters", dict), ("command", list)):
        if not isinstance(sweep.get(key), kind):
            _fail(path, f"`{key}` must be a {kind.__name__}")
    if not isinstance(sweep.get("metric", {}), dict):
        _fail(path, f"`metric` must be a mapping (name, goal), not {sweep['metric']!r}")
    for name, spec in sweep["parameters"].items():
        if not isinstance(spec, dict):
            _fail(path, f"parameter {name}: expected a mapping (value, values, or distribution with min/max)")
        distribution(name, spec, path)
    if "${args}" not in sweep["command"]:
        _fail(path, "`command` must contain ${args}, where the agent puts the parameters")
    return sweep


def distribution(name: str, spec: dict[str, Any], origin: Path | str = "sweep") -> str:
    """The parameter's distribution as W&B infers it: constant (value), categorical (values), int_uniform
    (integer min/max), uniform (float min/max), or the one named; one the sampler cannot draw is an error."""
    if "distribution" in spec:
        kind = spec["distribution"]
    elif "value" in spec:
        kind = "constant"
    elif "values" in spec:
        kind = "categorical"
    elif "min" in spec and "max" in spec:
        ints = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max"))
        kind = "int_uniform" if ints else "uniform"
    else:
        raise ValueError(f"{origin}: parameter {name}: give value, values, or min and max")
    if kind not in DRAWS:
        raise ValueError(f"{origin}: parameter {name}: distribution {kind!r} is not one the local runner draws "
                         f"({', '.join(DRAWS)})")
    _check_fields(name, spec, kind, origin)
    if kind in ("uniform", "int_uniform", "log_uniform_values") and not spec["min"] <= spec["max"]:
        raise ValueError(f"{origin}: parameter {name}: min {spec['min']} is above max {spec['max']}")
    if kind == "log_uniform_values" and spec["min"] <= 0:
        raise ValueError(f"{origin}: parameter {name}: log_uniform_values needs min > 0, not {spec['min']}")
    return kind


def _check_fields(name: str, spec: dict[str, Any], kind: str, origin: Path | str) -> None:
    """The fields `kind` is drawn from are there and of the right type: a non-empty list of values, or numbers
    for min and max (whole ones for int_uniform)."""
    if kind == "constant" and "value" not in spec:
        raise ValueError(f"{origin}: parameter {name}: distribution constant needs `value`")
    if kind == "categorical" and not (isinstance(spec.get("values"), list) and spec["values"]):
        raise ValueError(f"{origin}: parameter {name}: `values` must be a non-empty list, not {spec.get('values')!r}")
    if kind not in ("uniform", "int_uniform", "log_uniform_values"):
        return
    whole = kind == "int_uniform"
    for key in ("min", "max"):
        value = spec.get(key)
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
            hint = f" (YAML reads {value} as text: write {_yaml_float(value)})" if _yaml_float(value) else ""
            raise ValueError(f"{origin}: parameter {name}: `{key}` must be a {'whole ' if whole else ''}number, "
                             f"not {value!r}{hint}")


def _yaml_float(value: Any) -> str | None:
    """For a number in exponent form that YAML 1.1 (PyYAML) reads as text, such as 1e-5 or 2.5e3, the same
    number as YAML reads it as a float (1.0e-5, 2.5e+3); else None."""
    if not isinstance(value, str) or value.lower().count("e") != 1:
        return None
    try:
        float(value)
    except ValueError:
        return None
    mantissa, exponent = value.lower().split("e")
    return f"{mantissa if '.' in mantissa else mantissa + '.0'}e{exponent if exponent[0] in '+-' else '+' + exponent}"


DRAWS = {
    "constant": lambda s, rng: s["value"],
    "categorical": lambda s, rng: s["values"][int(rng.integers(len(s["values"])))],
    "uniform": lambda s, rng: float(rng.uniform(s["min"], s["max"])),
    "int_uniform": lambda s, rng: int(rng.integers(s["min"], s["max"] + 1)),
    "log_uniform_values": lambda s, rng: float(math.exp(rng.uniform(math.log(s["min"]), math.log(s["max"])))),
}


def sample(parameters: dict[str, dict], rng: np.random.Generator) -> dict[str, Any]:
    """One draw of every parameter (in the file's order)."""
    return {name: DRAWS[distribution(name, spec)](spec, rng) for name, spec in parameters.items()}


def agent_command(sweep: dict[str, Any], values: dict[str, Any], interpreter: str = sys.executable,
                  program: str | None = None) -> list[str]:
    """The command line the W&B agent builds for `values` (wandb_agent.Agent._command_run): each `${macro}`
    item replaced by its list, `${args}` by wandb's own `--name=value` flags; `${env}` is dropped (the agent
    puts /usr/bin/env there) and `${interpreter}` is this Python (the agent's is `python` on the PATH)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    macros = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    macros.update(env=[], interpreter=[interpreter], program=[program or sweep["program"]])
    out: list[str] = []
    for item in map(str, sweep["command"]):
        out += macros.get(item[2:-1], []) if item.startswith("${") and item.endswith("}") else [item]
    return out


def _program(program: str) -> str:
    """The trainer script: as the file names it from here (the agent runs it from the working directory),
    else from the repository that holds this package."""
    return program if Path(program).is_file() else str(REPO / program)


def trainer_values(cmd: list[str], program: str, values: dict[str, Any]) -> dict[str, Any]:
    """What the trial's trainer will run with, for each drawn parameter: the trainer's parser applied to the
    whole command line, so a flag given after `--` (later on the line) wins over the draw, as it does in the run.
    A bad flag or value is a ValueError naming it. Another program than trainer/main.py: the draws as they are."""
    if Path(program).resolve() != (REPO / "trainer" / "main.py").resolve():
        return dict(values)
    from trainer.config import resolve

    try:  # the trainer's own parse and checks (a typo, --epochs 0, a missing --config file, ...)
        cfg = resolve(cmd[cmd.index(program) + 1:])
    except SystemExit as e:
        raise ValueError(f"trainer flags: {str(e).removeprefix('error: ')}") from None
    return {k: getattr(cfg, k.replace("-", "_"), v) for k, v in values.items()}


def _show(values: dict[str, Any], drawn: dict[str, Any]) -> str:
    return " ".join((f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}") +
                    ("" if v == drawn[k] else " (from the flags)") for k, v in values.items())


def run_sweep(sweep_file: str, trials: int, out: str | None, seed: int, trainer_flags: list[str]) -> int:
    """Run `trials` trials one after another under `out` (trial-01, trial-02, ...), log each one's values and
    command to OUT/trials.jsonl, then print `s7 compare` of the finished ones and draw OUT/compare.png.
    Returns 0 when every trial finished, else 1."""
    from trainer.tools.compare import compare_table, plot_curves, summarize

    path = Path(sweep_file)
    sweep = load_sweep(path)
    if trials < 1:
        raise ValueError(f"--trials must be at least 1, not {trials}")
    taken = [f for f in trainer_flags if f.split("=")[0] in RESERVED_FLAGS]
    if taken:
        raise ValueError(f"{', '.join(taken)}: the sweep names each trial's folder itself (use `s7 sweep --out`)")
    out_dir = Path(out or f"runs/sweep-{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"{out_dir}: already exists and is not empty; pick another --out")
    rng = np.random.default_rng(seed)
    program = _program(sweep["program"])
    draws = [sample(sweep["parameters"], rng) for _ in range(trials)]
    commands = [agent_command(sweep, d, program=program) + list(trainer_flags) +
                [f"--out={out_dir}", f"--name=trial-{i:02d}"] for i, d in enumerate(draws, 1)]
    ran_with = [trainer_values(c, program, d) for c, d in zip(commands, draws)]  # every trial checked first
    out_dir.mkdir(parents=True, exist_ok=True)
    finished, failed = [], []
    for i, (drawn, values, cmd) in enumerate(zip(draws, ran_with, commands), 1):
        name = f"trial-{i:02d}"
        print(f"[{name}] {_show(values, drawn)}", flush=True)
        start = time.time()
        code = subprocess.run(cmd).returncode
        record = {"trial": name, "values": values, "drawn": drawn, "command": cmd, "returncode": code,
                  "seconds": round(time.time() - start, 1)}
        with open(out_dir / "trials.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        (finished if code == 0 else failed).append(name)
        if code != 0:
            print(f"[{name}] failed with exit code {code}; the sweep goes on", flush=True)
    if finished:
        runs = [summarize(out_dir / name) for name in finished]
        print(f"\n{len(finished)} of {trials} trials finished in {out_dir}:\n")
        print(compare_table(runs, labels=finished))
        plot_curves(runs, out_dir / "compare.png", labels=finished)
        metric = sweep.get("metric", {})
        scored = [(r["final_val_acc"], n) for r, n in zip(runs, finished) if r["final_val_acc"] is not None]
        if scored:
            best = max(scored)
            print(f"\nhighest final val accuracy: {best[1]} ({best[0]:.2f}%); the W&B sweep optimises "
                  f"{metric.get('name', '?')} ({metric.get('goal', 'minimize')})")
        print(f"wrote {out_dir / 'compare.png'} and {out_dir / 'trials.jsonl'}")
    if failed:
        print(f"failed trials: {', '.join(failed)}", file=sys.stderr)
    return 0 if not failed else 1
