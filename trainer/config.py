"""The one training configuration: a dataclass read from a YAML recipe, overridden by flags, saved beside the run."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def _opt(default: Any, help: str) -> Any:
    """A config field with its --help text (dataclass metadata, as in timm's train.py args)."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every knob of a run. Defaults are the `s7` default recipe; configs/*.yaml override them."""

    model: str = _opt("s7", "timm-registered net: s7, s7_strided or s7_dilated")
    recipe: str = _opt("", "name of the YAML recipe this config came from (used in run names)")
    # data
    data: str | None = _opt(None, "image-folder tree DIR/{train,test}/<class>/* or a .tar(.gz) of one; "
                                  "unset = download the original CIFAR-10 with torchvision")
    data_dir: str = _opt("./data", "where downloads and the decoded-image cache go")
    train_subset: int = _opt(0, ">0: train on a fixed random subset of N images (smoke runs)")
    test_subset: int = _opt(0, ">0: test on a fixed random subset of N images")
    # optimisation
    epochs: int = _opt(20, "epochs (the OneCycle schedule spans all of them)")
    batch_size: int = _opt(256, "images per batch, per process")
    optimizer: str = _opt("sgd", "sgd (Nesterov) or adamw")
    lr: float = _opt(0.2, "OneCycle peak learning rate")
    momentum: float = _opt(0.9, "SGD momentum")
    weight_decay: float = _opt(5e-4, "on conv weights only, never on BatchNorm or biases")
    label_smoothing: float = _opt(0.1, "cross-entropy label smoothing")
    pct_start: float = _opt(0.25, "fraction of the steps spent warming up to the peak")
    div_factor: float = _opt(10.0, "starting lr = peak / div_factor")
    final_div_factor: float = _opt(100.0, "final lr = starting lr / final_div_factor")
    ema_decay: float = _opt(0.0, ">0: evaluate an exponential moving average of the weights")
    tta_flip: bool = _opt(False, "test on the mean logits of each image and its mirror")
    # augmentation (probabilities and ranges; see trainer/augment.py)
    flip_p: float = _opt(0.5, "probability of a horizontal flip")
    ssr_p: float = _opt(0.5, "probability of shift-scale-rotate")
    shift_limit: float = _opt(0.0625, "largest shift, as a fraction of the side (0.0625 = 2 px)")
    scale_limit: float = _opt(0.1, "largest zoom in or out (0.1 = 0.9-1.1)")
    rotate_limit: float = _opt(15.0, "largest rotation in degrees")
    dropout_p: float = _opt(0.25, "probability of one 16x16 hole filled with the dataset mean")
    gray_p: float = _opt(0.05, "probability of grayscale (three equal channels)")
    # machinery
    seed: int = _opt(0, "seeds init, shuffle order and augmentation streams")
    workers: int = _opt(-1, "loader worker processes per process; -1 = CPU cores - 1")
    mixed_precision: str = _opt("auto", "auto (bf16/fp16 on GPU, fp32 on CPU), no, fp16 or bf16")
    channels_last: bool = _opt(True, "NHWC memory layout (faster convs on GPUs)")
    out: str = _opt("runs", "folder that holds run folders")
    name: str = _opt("", "run folder name; default <model>-<recipe>-<timestamp>")
    resume: str | None = _opt(None, "run folder to continue from its last completed epoch")
    wandb_mode: str = _opt("auto", "auto (online with an API key, else offline), online, offline or disabled")
    wandb_project: str = _opt("s7-cifar10", "W&B project")
    target_acc: float = _opt(87.0, "test accuracy whose first epoch and wall time are reported")
    log_misclassified: int = _opt(25, "misclassified test images kept for the report and W&B")

    def check(self) -> "TrainConfig":
        """Refuse values that cannot work, with a one-line message naming the flag."""
        choices = {"optimizer": ("sgd", "adamw"), "mixed_precision": ("auto", "no", "fp16", "bf16"),
                   "wandb_mode": ("auto", "online", "offline", "disabled")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise SystemExit(f"error: --{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                                 f"not {getattr(self, name)!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise SystemExit(f"error: --{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        for name in ("flip_p", "ssr_p", "dropout_p", "gray_p", "pct_start", "label_smoothing", "ema_decay"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SystemExit(f"error: --{name.replace('_', '-')} must be between 0 and 1, not {getattr(self, name)}")
        if self.lr <= 0:
            raise SystemExit(f"error: --lr must be positive, not {self.lr}")
        return self

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
        p.add_argument(flag, dest=f.name, type=_flag_type(f), default=None, metavar=f.name.upper(),
                       help=f"{f.metadata.get('help', '')} (default {default_txt!r})")
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
    return TrainConfig(**values).check()
