"""The one training configuration: a dataclass read from a YAML recipe, overridden by flags, saved beside the run."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class TrainConfig:
    """Every knob of a run. Defaults are the `s7` default recipe; configs/*.yaml override them."""

    model: str = "s7"
    recipe: str = ""  # name of the YAML recipe this config came from (for run names)
    # data
    data: str | None = None  # image-folder tree or .tar(.gz) of one; None = torchvision download
    data_dir: str = "./data"
    train_subset: int = 0  # >0: use only the first N training images (smoke runs)
    test_subset: int = 0
    # optimisation
    epochs: int = 20
    batch_size: int = 256  # per process
    optimizer: str = "sgd"  # sgd (Nesterov) | adamw
    lr: float = 0.2  # OneCycle peak
    momentum: float = 0.9
    weight_decay: float = 5e-4  # applied to conv weights only, never BatchNorm or biases
    label_smoothing: float = 0.1
    pct_start: float = 0.25
    div_factor: float = 10.0
    final_div_factor: float = 100.0
    ema_decay: float = 0.0  # >0: evaluate an exponential moving average of the weights
    tta_flip: bool = False  # average logits of the image and its mirror at test time
    # augmentation (probabilities and ranges; see trainer/augment.py)
    flip_p: float = 0.5
    ssr_p: float = 0.5
    shift_limit: float = 0.0625
    scale_limit: float = 0.1
    rotate_limit: float = 15.0
    dropout_p: float = 0.25
    gray_p: float = 0.05
    # machinery
    seed: int = 0
    workers: int = -1  # -1 = CPU cores - 1 (per process)
    mixed_precision: str = "auto"  # auto | no | fp16 | bf16
    channels_last: bool = True
    out: str = "runs"
    name: str = ""  # run folder name; default <model>-<recipe>-<timestamp>
    resume: str | None = None
    wandb_mode: str = "auto"  # auto (online if an API key is configured, else offline) | online | offline | disabled
    wandb_project: str = "s7-cifar10"
    target_acc: float = 87.0
    log_misclassified: int = 25

    def augment_kwargs(self) -> dict[str, float]:
        """The augmentation probabilities and ranges, as `build_train_transform` takes them."""
        names = ("flip_p", "ssr_p", "shift_limit", "scale_limit", "rotate_limit", "dropout_p", "gray_p")
        return {n: getattr(self, n) for n in names}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        return cls(**_checked(yaml.safe_load(Path(path).read_text()) or {}, str(path)))


def _checked(values: dict[str, Any], origin: str) -> dict[str, Any]:
    unknown = sorted(set(values) - set(TrainConfig.field_names()))
    if unknown:
        raise SystemExit(f"error: {origin}: unknown config key(s) {', '.join(unknown)}")
    return values


def _flag_type(f: dataclasses.Field) -> Any:
    t = str(f.type)
    if "bool" in t:
        return lambda s: s.lower() in ("1", "true", "yes", "on")
    if "int" in t:
        return int
    if "float" in t:
        return float
    return str


def build_parser() -> argparse.ArgumentParser:
    """Flags for every config field (`--batch-size` for batch_size), plus --config."""
    p = argparse.ArgumentParser(
        prog="trainer/main.py",
        description="Train an s7 network on CIFAR-10 with Hugging Face Accelerate. "
        "Values come from the dataclass defaults, then the model's recipe configs/<model>.yaml "
        "(or --config FILE), then these flags.",
    )
    p.add_argument("--config", help="YAML recipe (default: configs/<model>.yaml when it exists)")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default_txt = f.default if f.default is not dataclasses.MISSING else None
        p.add_argument(flag, dest=f.name, type=_flag_type(f), default=None,
                       help=f"(default {default_txt!r})")
    return p


def resolve(argv: list[str] | None = None) -> TrainConfig:
    """Defaults < recipe YAML < flags."""
    args = build_parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if v is not None and k != "config"}
    model = flags.get("model", TrainConfig.model)
    recipe_path = Path(args.config) if args.config else CONFIG_DIR / f"{model}.yaml"
    values: dict[str, Any] = {}
    if args.config and not recipe_path.is_file():
        raise SystemExit(f"error: config file not found: {recipe_path}")
    if recipe_path.is_file():
        values = _checked(yaml.safe_load(recipe_path.read_text()) or {}, str(recipe_path))
        values.setdefault("recipe", recipe_path.stem)
    values.update(flags)
    return TrainConfig(**values)
