"""Bad config values stop with one line naming the flag; every flag explains itself in --help; old saved
configs still load; a resumed run keeps its config and refuses flags that would change it."""
import dataclasses
from pathlib import Path

import pytest

from trainer.config import RETIRED_KEYS, TrainConfig, build_parser, resolve

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv, message", [
    (["--wandb-mode", "nope"], "--wandb-mode must be one of auto, online, offline, disabled"),
    (["--optimizer", "lamb"], "--optimizer must be one of sgd, adamw"),
    (["--mixed-precision", "fp8"], "--mixed-precision must be one of"),
    (["--flip-p", "2"], "--flip-p must be between 0 and 1"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--lr", "-1"], "--lr must be positive"),
    (["--div-factor", "0"], "--div-factor must be positive"),
    (["--final-div-factor", "-2"], "--final-div-factor must be positive"),
    (["--log-misclassified", "-1"], "--log-misclassified must be 0 or more"),
    (["--val-split", "-5"], "--val-split must be 0 or more"),
    (["--workers", "-3"], "--workers must be -1"),
    (["--momentum", "1.5"], "--momentum must be between 0 and 1"),
    (["--target-acc", "120"], "--target-acc must be a percentage"),
    (["--tta-flip", "true"], "unrecognized arguments: --tta-flip"),
    (["--channels-last", "ture"], "argument --channels-last: expected true/false"),
    (["--cycle-momentum", "maybe"], "argument --cycle-momentum: expected true/false"),
    (["--allow-rule-violations", "2"], "argument --allow-rule-violations: expected true/false"),
    (["--epochs", "x"], "argument --epochs: invalid int value"),
    (["--ema-every", "0"], "--ema-every must be at least 1"),
    (["--aug-ramp-epochs", "-1"], "--aug-ramp-epochs must be 0 or more"),
    (["--tta-shift", "9"], "--tta-shift must be between 0 and 8 pixels"),
    (["--identity-init", "maybe"], "argument --identity-init: expected true/false"),
    (["--bn-bias-lr", "0"], "--bn-bias-lr must be positive"),
    (["--alternate-flip", "true", "--flip-p", "0.3"], "--alternate-flip flips half the images each epoch, so it "
                                                      "needs --flip-p 0.5, not 0.3"),
])
def test_bad_value_is_a_one_line_error_naming_the_flag(argv, message):
    with pytest.raises(SystemExit) as e:
        resolve(argv)
    assert str(e.value).startswith("error: ") and message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text, value", [("true", True), ("Yes", True), ("1", True), ("false", False),
                                         ("NO", False), ("0", False)])
def test_boolean_flags_accept_only_the_six_spellings(text, value):
    assert resolve(["--channels-last", text]).channels_last is value


def test_a_recipe_with_a_misspelt_boolean_is_refused_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: s7\nchannels_last: ture\n")
    with pytest.raises(SystemExit, match=r"--channels-last must be true or false, not 'ture'"):
        resolve(["--config", str(bad)])


def test_a_recipe_float_written_without_a_dot_is_read_as_the_number(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: s7\nlr: 1e-3\n")  # YAML 1.1 reads 1e-3 as a string
    assert resolve(["--config", str(recipe)]).lr == 0.001


@pytest.mark.parametrize("path", sorted(REPO.glob("results/**/config.yaml")),
                         ids=lambda p: str(p.parent.relative_to(REPO / "results")))
def test_every_committed_run_config_loads(path):
    import timm

    import models  # noqa: F401  (registers the nets)

    assert timm.is_model(TrainConfig.load(path).model)


def test_a_retired_key_is_dropped_when_harmless_and_refused_when_it_cannot_be_honoured(tmp_path, monkeypatch):
    old = tmp_path / "old.yaml"
    old.write_text("model: s7\ntta_flip: true\nepochs: 3\n")
    assert TrainConfig.load(old).epochs == 3
    monkeypatch.setitem(RETIRED_KEYS, "gone", lambda v: None if v is False else "cannot be honoured")
    old.write_text("model: s7\ngone: false\n")
    assert TrainConfig.load(old).model == "s7"
    old.write_text("model: s7\ngone: true\n")
    with pytest.raises(SystemExit, match=r"old.yaml: gone: cannot be honoured$"):
        TrainConfig.load(old)


@pytest.mark.parametrize("saved, mode", [("false", "none"), ("true", "default"), ("no", "none"),
                                         ("max-autotune-no-cudagraphs", "max-autotune-no-cudagraphs")])
def test_compile_of_older_configs_reads_as_the_mode_it_meant(tmp_path, saved, mode):
    """Before issue 10 `compile` was a boolean (never wired in: every committed run says false)."""
    old = tmp_path / "old.yaml"
    old.write_text(f"model: s7\ncompile: {saved}\n")
    assert TrainConfig.load(old).compile == mode
    assert resolve(["--config", str(old)]).compile == mode


@pytest.mark.parametrize("argv, message", [
    (["--compile", "true"], "--compile must be one of none, default, max-autotune-no-cudagraphs, reduce-overhead"),
    (["--lr-scaling", "cubic"], "--lr-scaling must be one of none, linear, sqrt"),
    (["--base-batch-size", "0"], "--base-batch-size must be at least 1"),
    (["--threads", "-1"], "--threads must be 0 or more"),
    (["--non-blocking", "maybe"], "argument --non-blocking: expected true/false"),
    (["--cudnn-benchmark", "2"], "argument --cudnn-benchmark: expected true/false"),
])
def test_bad_speed_option_is_a_one_line_error_naming_the_flag(argv, message):
    with pytest.raises(SystemExit) as e:
        resolve(argv)
    assert str(e.value).startswith("error: ") and message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("rule, batch, processes, factor", [
    ("none", 1024, 4, 1.0), ("linear", 256, 1, 1.0), ("linear", 512, 1, 2.0), ("linear", 256, 4, 4.0),
    ("sqrt", 1024, 1, 2.0), ("sqrt", 128, 2, 1.0), ("linear", 128, 1, 0.5)])
def test_peak_lr_follows_the_global_batch_by_the_stated_rule(rule, batch, processes, factor):
    cfg = resolve(["--lr", "0.2", "--lr-scaling", rule, "--base-batch-size", "256", "--batch-size", str(batch)])
    assert cfg.peak_lr(processes) == pytest.approx(0.2 * factor, rel=1e-12)


def test_a_recipe_that_names_no_lr_scaling_keeps_its_learning_rate_at_any_batch_and_world_size():
    import yaml

    for recipe in sorted((REPO / "configs").glob("*.yaml")):
        values = yaml.safe_load(recipe.read_text()) or {}
        if "model" not in values or "lr_scaling" in values:  # not a training recipe (a W&B sweep), or it scales
            continue
        cfg = resolve(["--config", str(recipe)])
        assert [cfg.peak_lr(n) for n in (1, 2, 8)] == [cfg.lr] * 3, recipe.name


def test_every_field_has_help_text():
    missing = [f.name for f in dataclasses.fields(TrainConfig) if not f.metadata.get("help")]
    assert missing == []
    text = build_parser().format_help()
    assert "OneCycle peak learning rate" in text and "--label-smoothing" in text


def _saved_run(tmp_path: Path) -> Path:
    run = tmp_path / "run1"
    run.mkdir()
    TrainConfig(model="s7_dilated", epochs=3, lr=0.05, workers=0, wandb_mode="disabled").save(run / "config.yaml")
    return run


def test_resume_keeps_the_saved_config_and_takes_harmless_flags(tmp_path):
    run = _saved_run(tmp_path)
    cfg = resolve(["--resume", str(run), "--workers", "2", "--epochs", "3"])  # --epochs equal to the saved value
    assert (cfg.model, cfg.epochs, cfg.lr) == ("s7_dilated", 3, 0.05)   # the run's own recipe
    assert cfg.workers == 2 and cfg.wandb_mode == "disabled"             # given harmless flag wins; others saved
    assert (cfg.name, cfg.out, cfg.resume) == ("run1", str(tmp_path), str(run))


def test_resume_refuses_a_flag_that_would_change_the_run_naming_it(tmp_path):
    run = _saved_run(tmp_path)
    with pytest.raises(SystemExit) as e:
        resolve(["--resume", str(run), "--epochs", "40", "--lr", "0.05", "--workers", "1"])
    msg = str(e.value)
    assert msg.startswith("error: ") and "\n" not in msg
    assert "--epochs 40 (saved: 3)" in msg and "--lr" not in msg  # equal to the saved value: accepted
    with pytest.raises(SystemExit, match="--config cannot be given with --resume"):
        resolve(["--resume", str(run), "--config", "configs/s7.yaml"])


def test_momentum_help_says_when_it_is_held_and_when_it_cycles():
    text = " ".join(build_parser().format_help().split())
    assert "held fixed unless --cycle-momentum is true" in text
    assert "--cycle-momentum" in text and "--base-momentum" in text and "--max-momentum" in text


@pytest.mark.parametrize("recipe,flags,run_dir,trained_as", [
    ("s7_short", [], "ablations/a12-d-lightaug", "s7_cand_d"),
    ("s7_strided", [], "s7_strided-cpu", "s7_strided"),
    ("s7_dilated", [], "s7_dilated-cpu", "s7_dilated"),
    ("s7_long", ["--model", "s7_dilated"], "s7_dilated-long-cpu", "s7_dilated"),
])
def test_a_recipe_is_the_recipe_of_the_committed_run_it_cites(recipe, flags, run_dir, trained_as):
    """A recipe quotes its committed run's figures: every training field must be what that run trained with, given
    the flags the recipe's comment names (the run adds only where it ran: data, folders, names, the precision auto
    chose), and a net trained under a candidate's name (s7_cand_d) is the recipe's net parameter for parameter."""
    import timm

    import models  # noqa: F401  registers the nets

    run = TrainConfig.load(REPO / "results" / run_dir / "config.yaml")
    cfg = resolve(["--config", str(REPO / "configs" / f"{recipe}.yaml"), *flags])
    where = {"recipe", "data", "data_dir", "out", "name", "resume", "wandb_mode", "mixed_precision"}
    differ = {f.name: (getattr(cfg, f.name), getattr(run, f.name)) for f in dataclasses.fields(TrainConfig)
              if f.name not in where and getattr(cfg, f.name) != getattr(run, f.name)}
    assert differ == ({} if trained_as == cfg.model else {"model": (cfg.model, trained_as)})
    shapes = [{k: tuple(v.shape) for k, v in timm.create_model(n).state_dict().items()}
              for n in (cfg.model, run.model)]
    assert shapes[0] == shapes[1]
    assert (run.mixed_precision, cfg.mixed_precision) == ("bf16", "auto")  # what auto chose on that CPU


@pytest.mark.parametrize("argv, message", [
    (["--momentum", "0"], "--momentum must be above 0 with --optimizer sgd"),
    (["--optimizer", "adamw", "--momentum", "1"], "--momentum must be below 1"),
    (["--optimizer", "adamw", "--cycle-momentum", "true", "--max-momentum", "1"], "--max-momentum must be below 1"),
    (["--weight-decay", "-0.0001"], "--weight-decay must be 0 or more, not -0.0001"),
    (["--weight-decay=-1e-4"], "--weight-decay must be 0 or more"),
])
def test_an_optimizer_value_torch_would_refuse_is_a_one_line_error_naming_the_flag(argv, message):
    with pytest.raises(SystemExit) as e:
        resolve(argv)
    assert str(e.value).startswith("error: ") and message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("argv, message", [
    (["--scale-limit", "1.5"], "--scale-limit must be at least 0 and below 1"),
    (["--scale-limit", "1"], "--scale-limit must be at least 0 and below 1"),
    (["--scale-limit", "-0.1"], "--scale-limit must be at least 0 and below 1"),
    (["--shift-limit", "-0.1"], "--shift-limit must be between 0 and 0.5"),
    (["--shift-limit", "0.6"], "--shift-limit must be between 0 and 0.5"),
    (["--rotate-limit", "181"], "--rotate-limit must be between 0 and 180 degrees"),
    (["--rotate-limit", "-5"], "--rotate-limit must be between 0 and 180 degrees"),
    (["--ema-decay", "1", "--ema-warmup", "false"], "--ema-decay must be below 1"),
])
def test_an_augmentation_range_or_ema_decay_out_of_bounds_is_a_one_line_error_naming_the_flag(argv, message):
    with pytest.raises(SystemExit) as e:
        resolve(argv)
    assert str(e.value).startswith("error: ") and message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("argv", [["--ema-decay", "0"], ["--optimizer", "adamw", "--momentum", "0"],
                                  ["--shift-limit", "0.5"], ["--scale-limit", "0"], ["--rotate-limit", "180"],
                                  ["--weight-decay", "0"]])
def test_the_edges_of_the_checked_ranges_are_accepted(argv):
    resolve(argv)  # 0 = no EMA; AdamW's beta1 may be 0; the limits themselves are allowed


@pytest.mark.parametrize("recipe", sorted(p for p in (REPO / "configs").glob("*.yaml") if p.name != "sweep.yaml"),
                         ids=lambda p: p.name)
def test_every_committed_recipe_passes_the_checks(recipe):
    resolve(["--config", str(recipe)])


def test_a_recipe_that_names_a_run_to_resume_is_refused_naming_the_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: s7\nresume: runs/old\n")
    with pytest.raises(SystemExit) as e:
        resolve(["--config", str(recipe)])
    msg = str(e.value)
    assert msg.startswith(f"error: {recipe}: `resume` cannot be set in a recipe") and "\n" not in msg
    recipe.write_text("model: s7\nresume: null\nepochs: 3\n")  # as every saved config.yaml has it: a new run
    assert resolve(["--config", str(recipe)]).resume is None


@pytest.mark.parametrize("flag, value", [("--name", "other"), ("--out", "elsewhere")])
def test_resume_refuses_another_name_or_out_and_takes_the_runs_own(tmp_path, flag, value):
    run = _saved_run(tmp_path)
    with pytest.raises(SystemExit) as e:
        resolve(["--resume", str(run), flag, value])
    msg = str(e.value)
    assert msg.startswith("error: --resume keeps the run's saved config; refused: ") and "\n" not in msg
    assert f"{flag} {value} (saved: " in msg
    cfg = resolve(["--resume", str(run), "--name", "run1", "--out", str(tmp_path)])  # the folder --resume names
    assert (cfg.name, cfg.out) == ("run1", str(tmp_path))


def test_resume_takes_data_and_data_dir_given_again(tmp_path):
    """A relative --data saved by a launch from another folder: the run names where its data lives now."""
    run = _saved_run(tmp_path)
    cfg = resolve(["--resume", str(run), "--data", "/data/elsewhere.tar.gz", "--data-dir", "/tmp/cache"])
    assert (cfg.data, cfg.data_dir, cfg.lr) == ("/data/elsewhere.tar.gz", "/tmp/cache", 0.05)


def _flag_help(text: str, flag: str) -> str:
    """One flag's help in `--help`'s text, on one line."""
    return " ".join(text.split(f"\n  {flag} ", 1)[1].split("\n  --", 1)[0].split())


def test_help_shows_the_default_recipes_values_where_it_sets_them():
    """A plain launch reads configs/s7.yaml: --help's defaults are its values (read here from the file), and the
    dataclass's only for fields the recipe leaves alone."""
    import yaml

    recipe = yaml.safe_load((REPO / "configs" / "s7.yaml").read_text())
    text = build_parser().format_help()
    for name in ("epochs", "batch_size", "lr"):
        flag = "--" + name.replace("_", "-")
        assert f"(default {recipe[name]!r}, from configs/s7.yaml)" in _flag_help(text, flag), name
    unset = next(f for f in dataclasses.fields(TrainConfig) if f.name not in recipe and f.name != "recipe")
    assert _flag_help(text, "--" + unset.name.replace("_", "-")).endswith(f"(default {unset.default!r})")


def test_model_help_lists_every_registered_net():
    import models

    shown = _flag_help(build_parser().format_help(), "--model")
    assert all(name in shown for name in models.ALL_NAMES) and "s7_cand_a" in shown
