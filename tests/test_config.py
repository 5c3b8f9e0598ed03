"""Bad config values stop with one line naming the flag; every flag explains itself in --help."""
import dataclasses

import pytest

from trainer.config import TrainConfig, build_parser, resolve


@pytest.mark.parametrize("argv, message", [
    (["--wandb-mode", "nope"], "--wandb-mode must be one of auto, online, offline, disabled"),
    (["--optimizer", "lamb"], "--optimizer must be one of sgd, adamw"),
    (["--mixed-precision", "fp8"], "--mixed-precision must be one of"),
    (["--flip-p", "2"], "--flip-p must be between 0 and 1"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--lr", "-1"], "--lr must be positive"),
])
def test_bad_value_is_a_one_line_error_naming_the_flag(argv, message):
    with pytest.raises(SystemExit) as e:
        resolve(argv)
    assert str(e.value).startswith("error: ") and message in str(e.value) and "\n" not in str(e.value)


def test_every_field_has_help_text():
    missing = [f.name for f in dataclasses.fields(TrainConfig) if not f.metadata.get("help")]
    assert missing == []
    text = build_parser().format_help()
    assert "OneCycle peak learning rate" in text and "--label-smoothing" in text


def test_resume_keeps_the_saved_config_except_harmless_flags_given(tmp_path):
    from trainer.main import resumed_config

    run = tmp_path / "run1"
    run.mkdir()
    TrainConfig(model="s7_dilated", epochs=3, lr=0.05, workers=0, wandb_mode="disabled").save(run / "config.yaml")
    argv = ["--resume", str(run), "--workers", "2", "--lr", "9"]
    given = {k for k, v in vars(build_parser().parse_args(argv)).items() if v is not None}
    cfg = resumed_config(resolve(argv), given)
    assert (cfg.model, cfg.epochs, cfg.lr) == ("s7_dilated", 3, 0.05)   # the run's own recipe, not the flags
    assert cfg.workers == 2 and cfg.wandb_mode == "disabled"             # given harmless flag wins; others saved
    assert (cfg.name, cfg.out, cfg.resume) == ("run1", str(tmp_path), str(run))
