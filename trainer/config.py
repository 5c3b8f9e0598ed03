"""The one training configuration: a dataclass read from a YAML recipe, overridden by flags, saved beside the run."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class RunError(ValueError):
    """A run that cannot start as asked (unknown model, broken rule, schedule too short, folder taken)."""


def _opt(default: Any, help: str) -> Any:
    """A config field with its --help text (dataclass metadata, as in timm's train.py args)."""
    return field(default=default, metadata={"help": help})


# Fractions that must stay below 1, and why: at 1 a running average keeps only its past (SGD's velocity would never
# decay, AdamW's beta1 must be below 1; the weights' EMA would never leave the random init).
_AVERAGE = "the weight of the past in a running average"
BELOW_ONE = {"momentum": _AVERAGE, "base_momentum": _AVERAGE, "max_momentum": _AVERAGE,
             "ema_decay": "0 = no weight average; at 1 the average never leaves the random init"}


# size: every hyperparameter is a field of TrainConfig, with its --help text, in one place (as airbench keeps them)
@dataclass
class TrainConfig:
    """Every knob of a run. Defaults are the first `s7` recipe (the assignment's augmentation, SGD lr 0.2 at batch
    256); configs/*.yaml override them, configs/<model>.yaml for each net."""

    model: str = _opt("s7", "timm-registered net: s7, s7_strided, s7_dilated or another that models/ registers "
                            "(--help lists them all)")
    recipe: str = _opt("", "name of the YAML recipe this config came from (used in run names)")
    # data
    data: str | None = _opt(None, "image-folder tree DIR/{train,test}/<class>/* or a .tar(.gz) of one; "
                                  "unset = download the original CIFAR-10 with torchvision")
    data_dir: str = _opt("./data", "where downloads and the decoded-image cache go")
    train_subset: int = _opt(0, ">0: train on a fixed random subset of N images (smoke runs)")
    test_subset: int = _opt(0, ">0: test on a fixed random subset of N images")
    # optimisation
    epochs: int = _opt(20, "epochs (the OneCycle schedule spans all of them)")
    batch_size: int = _opt(256, "images per batch, per process; the global batch is this x the processes")
    optimizer: str = _opt("sgd", "sgd (Nesterov) or adamw")
    lr: float = _opt(0.2, "OneCycle peak learning rate, for a global batch of --base-batch-size when "
                          "--lr-scaling is linear or sqrt; as given with none")
    lr_scaling: str = _opt("none", "how the peak lr follows the global batch (--batch-size x processes): none "
                                   "(--lr as given, at any batch and world size), linear (x global / base) or "
                                   "sqrt (x sqrt(global / base)); the lr used is logged and kept in state.json")
    base_batch_size: int = _opt(256, "the global batch --lr is meant for, with --lr-scaling linear or sqrt")
    momentum: float = _opt(0.9, "SGD momentum (AdamW: beta1); held fixed unless --cycle-momentum is true")
    cycle_momentum: bool = _opt(False, "true: OneCycle moves momentum (AdamW: beta1) from --max-momentum down to "
                                       "--base-momentum at the peak lr and back, ignoring --momentum")
    base_momentum: float = _opt(0.85, "lowest momentum of the cycle, at the peak lr (only with --cycle-momentum)")
    max_momentum: float = _opt(0.95, "highest momentum of the cycle, at start and end (only with --cycle-momentum)")
    weight_decay: float = _opt(5e-4, "on conv weights only, never on BatchNorm or biases")
    label_smoothing: float = _opt(0.1, "cross-entropy label smoothing (training loss only)")
    pct_start: float = _opt(0.25, "fraction of the steps spent warming up to the peak")
    div_factor: float = _opt(10.0, "starting lr = peak / div_factor")
    final_div_factor: float = _opt(100.0, "final lr = starting lr / final_div_factor")
    ema_decay: float = _opt(0.0, ">0: keep an exponential moving average of the weights (timm's ModelEmaV3); "
                                 "validation, selection and the shipped weights then use the average")
    ema_warmup: bool = _opt(True, "ramp the EMA decay up from 0 over the first steps (ModelEmaV3 warm-up), so the "
                                  "average does not remember the random init")
    whiten: bool = _opt(False, "start the net's first conv as the whitening transform of the training images' "
                               "patches (covariance eigenvectors / sqrt(eigenvalue), both signs) and freeze it "
                               "(trainer/whiten.py); needs an even number of first-conv filters")
    bn_momentum: float = _opt(0.1, "BatchNorm running-statistics momentum, in PyTorch's sense (the weight of each "
                                   "new batch); fast CIFAR-10 recipes use about 0.4")
    bn_frozen_scales: bool = _opt(False, "freeze every BatchNorm scale at its initial 1, so only the shifts learn "
                                         "(a fast-training trick; the scales still count as parameters)")
    bn_bias_lr: float = _opt(1.0, "multiply the learning rate (the whole OneCycle curve) of every BatchNorm shift "
                                  "(bias) by this; fast CIFAR-10 recipes use 64, with frozen scales. 1 = one lr "
                                  "for all parameters")
    identity_init: bool = _opt(False, "start every conv but the classifier as the identity (dirac): a full conv on as "
                                      "many filters as it has inputs (the rest as drawn), a depthwise conv on all; "
                                      "--whiten then replaces the first conv")
    ema_every: int = _opt(1, "update the weight average (--ema-decay) every N optimizer steps, each update with "
                             "decay --ema-decay: with N of about 5 a slow, lookahead-like average; 1 = every step")
    tta_shift: int = _opt(0, ">0: after the final epoch, also measure test accuracy over the flip pair of the image "
                             "(half the weight) and of copies shifted by +N and -N px on both axes (a quarter "
                             "each; reflected border): six passes, logged beside the plain and flip-TTA figures")
    tta_every_epoch: bool = _opt(False, "true: measure flip TTA on the test (and validation) split after every epoch; "
                                        "false: after the final epoch only, where the headline figures come from, "
                                        "which spares every other epoch a second pass over the split")
    aug_ramp_epochs: int = _opt(0, ">0: the shift-scale-rotate, hole and grayscale probabilities rise linearly "
                                   "from 0 in epoch 1 to their set values in epoch N+1 (the flip stays as set); "
                                   "0 = the set values throughout")
    val_split: int = _opt(0, ">0: hold N training images out (stratified, fixed seed) as a validation split that "
                             "picks the shipped epoch; 0 = ship the final epoch. The test split is only reported")
    # augmentation (probabilities and ranges; see trainer/augment.py)
    flip_p: float = _opt(0.5, "probability of a horizontal flip")
    alternate_flip: bool = _opt(False, "true: each training image is flipped in every other epoch (which half "
                                       "starts flipped is drawn once from --seed) instead of by a fresh coin each "
                                       "epoch, so consecutive epochs see both sides; needs --flip-p 0.5")
    ssr_p: float = _opt(0.5, "probability of shift-scale-rotate")
    shift_limit: float = _opt(0.0625, "largest shift, as a fraction of the side (0.0625 = 2 px)")
    scale_limit: float = _opt(0.1, "largest zoom in or out (0.1 = 0.9-1.1)")
    rotate_limit: float = _opt(15.0, "largest rotation in degrees")
    dropout_p: float = _opt(0.25, "probability of one 16x16 hole filled with the dataset mean")
    gray_p: float = _opt(0.05, "probability of grayscale (three equal channels)")
    # machinery
    seed: int = _opt(0, "seeds init, shuffle order and augmentation streams")
    workers: int = _opt(-1, "loader worker processes per process; -1 = automatic: none when training on the CPU "
                            "(its threads use every core; batches are augmented between steps), else the usable "
                            "CPU cores shared among this machine's processes, one core each kept for training")
    mixed_precision: str = _opt("auto", "autocast dtype: auto (bf16 on GPUs that have it, else fp16; on the CPU "
                                        "bf16 where it is native (AVX512-BF16 or AMX), else fp32), no (fp32), fp16 "
                                        "(GPU only, with a grad scaler) or bf16")
    channels_last: bool = _opt(True, "NHWC memory layout of the net and every batch: oneDNN's fast layout on "
                                     "CPUs (s7's bare step in fp32 on a 2-core Xeon: 337 img/s against 209 NCHW, "
                                     "issue 16), and cuDNN takes bf16 and dilated depthwise convs only in NHWC")
    compile: str = _opt("none", "torch.compile the training step's forward and backward: none, default, "
                                "max-autotune-no-cudagraphs or reduce-overhead (CUDA graphs); evaluation stays "
                                "eager. The first step pays the compile (minutes on a 2-core CPU, cached after)")
    cudnn_benchmark: bool = _opt(False, "let cuDNN time its algorithms for each new input shape (GPU only); off "
                                        "(as before) until benchmarks/gpu_speed.py has measured it")
    non_blocking: bool = _opt(False, "copy batches to the GPU asynchronously from pinned memory, so the host never "
                                     "waits for a copy (GPU only); off (as before) until measured")
    keep_freed_memory: bool = _opt(True, "Linux (glibc): malloc keeps freed memory for reuse instead of an mmap and "
                                         "a page-fault storm per large tensor per step (trainer/memory.py); the "
                                         "process then holds its peak memory until it ends. false = glibc's default")
    threads: int = _opt(0, "torch intra-op threads of each training process; 0 = torch's default (the cores)")
    out: str = _opt("runs", "folder that holds run folders")
    name: str = _opt("", "run folder name; default <model>-<recipe>-<timestamp>")
    resume: str | None = _opt(None, "run folder to continue from its last completed epoch")
    wandb_mode: str = _opt("auto", "auto (online with an API key, else offline), online, offline or disabled")
    wandb_project: str = _opt("s7-cifar10", "W&B project")
    target_acc: float = _opt(87.0, "test accuracy (%%) whose first epoch and wall time are reported")
    log_misclassified: int = _opt(25, "misclassified test images kept for the report and W&B")
    allow_rule_violations: bool = _opt(False, "train a net that breaks a rule of `s7 check` (its report then says "
                                              "FAIL in its first line); without it such a net is refused")

    def check(self) -> "TrainConfig":
        """Refuse values that cannot work, with a one-line message naming the flag."""
        for f in fields(self):
            setattr(self, f.name, _check_type(f.name, getattr(self, f.name), str(f.type)))
        choices = {"optimizer": ("sgd", "adamw"), "mixed_precision": ("auto", "no", "fp16", "bf16"),
                   "wandb_mode": ("auto", "online", "offline", "disabled"), "compile": COMPILE_MODES,
                   "lr_scaling": ("none", "linear", "sqrt")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                _fail(name, f"must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "base_batch_size", "ema_every"):
            if getattr(self, name) < 1:
                _fail(name, f"must be at least 1, not {getattr(self, name)}")
        for name in ("train_subset", "test_subset", "val_split", "log_misclassified", "threads", "aug_ramp_epochs"):
            if getattr(self, name) < 0:
                _fail(name, f"must be 0 or more, not {getattr(self, name)}")
        if self.workers < -1:
            _fail("workers", f"must be -1 (automatic) or 0 or more, not {self.workers}")
        for name in ("flip_p", "ssr_p", "dropout_p", "gray_p", "pct_start", "label_smoothing", "ema_decay",
                     "bn_momentum", "momentum", "base_momentum", "max_momentum"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                _fail(name, f"must be between 0 and 1, not {getattr(self, name)}")
            if name in BELOW_ONE and getattr(self, name) == 1.0:
                _fail(name, f"must be below 1 ({BELOW_ONE[name]}), not {getattr(self, name)}")
        self._check_optimizer()
        self._check_augmentation()
        for name in ("lr", "div_factor", "final_div_factor", "bn_bias_lr"):
            if not getattr(self, name) > 0:
                _fail(name, f"must be positive, not {getattr(self, name)}")
        if not 0 <= self.tta_shift <= 8:
            _fail("tta_shift", f"must be between 0 and 8 pixels, not {self.tta_shift}")
        if not 0.0 <= self.target_acc <= 100.0:
            _fail("target_acc", f"must be a percentage between 0 and 100, not {self.target_acc}")
        if self.alternate_flip and self.flip_p != 0.5:
            _fail("alternate_flip", f"flips half the images each epoch, so it needs --flip-p 0.5, not {self.flip_p}")
        if self.cycle_momentum and self.base_momentum > self.max_momentum:
            _fail("base_momentum", f"({self.base_momentum}) must not exceed --max-momentum ({self.max_momentum})")
        return self

    def _check_optimizer(self) -> None:
        """What torch's SGD and AdamW would refuse, or silently train nothing with, said before any data work."""
        if self.optimizer == "sgd" and self.momentum == 0.0:
            _fail("momentum", f"must be above 0 with --optimizer sgd (Nesterov needs momentum), not {self.momentum}")
        if self.weight_decay < 0:
            _fail("weight_decay", f"must be 0 or more, not {self.weight_decay}")

    def _check_augmentation(self) -> None:
        """Ranges that make an image that cannot be meant: a shift past the middle, a zoom to nothing or less."""
        if not 0.0 <= self.shift_limit <= 0.5:
            _fail("shift_limit", f"must be between 0 and 0.5 (a fraction of the side), not {self.shift_limit}")
        if not 0.0 <= self.scale_limit < 1.0:
            _fail("scale_limit", f"must be at least 0 and below 1 (zoom 1 - s to 1 + s), not {self.scale_limit}")
        if not 0.0 <= self.rotate_limit <= 180.0:
            _fail("rotate_limit", f"must be between 0 and 180 degrees, not {self.rotate_limit}")

    def peak_lr(self, num_processes: int = 1) -> float:
        """The OneCycle peak learning rate a run uses: --lr scaled by --lr-scaling from --base-batch-size to the
        global batch (--batch-size x num_processes); with none, --lr itself at any batch and world size."""
        ratio = self.batch_size * num_processes / self.base_batch_size
        return self.lr * {"none": 1.0, "linear": ratio, "sqrt": ratio ** 0.5}[self.lr_scaling]

    def augment_kwargs(self) -> dict[str, float]:
        """The augmentation probabilities and ranges, as `build_train_transform` takes them."""
        names = ("flip_p", "ssr_p", "shift_limit", "scale_limit", "rotate_limit", "dropout_p", "gray_p")
        return {n: getattr(self, n) for n in names}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """config.yaml's text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: Path) -> None:
        path.write_text(self.to_yaml())

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        """A saved config.yaml or a recipe; keys of older versions are migrated (see RETIRED_KEYS)."""
        return cls(**_checked(_read_yaml(Path(path)), str(path))).check()


COMPILE_MODES = ("none", "default", "max-autotune-no-cudagraphs", "reduce-overhead")

# Keys older versions wrote into config.yaml. Each maps a value to None (dropped: today's behaviour is the same)
# or to the reason it cannot be honoured.
RETIRED_KEYS: dict[str, Any] = {
    # test accuracy is now always measured both with and without flip TTA, so the switch has nothing left to do.
    "tta_flip": lambda v: None,
}

# Values older versions wrote, and what they mean now: `compile` was a boolean (never wired in, so every
# committed run has `compile: false`); it is now the torch.compile mode.
LEGACY_VALUES: dict[str, dict[bool, Any]] = {"compile": {False: "none", True: "default"}}

# Given with --resume, these may differ from the saved run: they change nothing the run computes. --data names
# where the same data lives now (a relative path saved by a launch from another folder); the trainer refuses a
# source whose class names or per-class image counts differ from those the run's checkpoint recorded.
RESUME_OVERRIDABLE = ("workers", "wandb_mode", "data", "data_dir", "non_blocking")

# Fields a recipe must not set: they say which run folder a launch continues, which only --resume may.
LAUNCH_ONLY = ("resume",)


def resume_hint(run: str = "runs/<name>", processes: int = 1) -> str:
    """How to continue a run and which flags may change on the way: the one text the interrupt message, --help,
    the refusal of a changed flag and the README give (tests/test_training_edges.py holds the README to it)."""
    launch = ("python trainer/main.py" if processes == 1
              else f"the run's launcher ({processes} processes, as before) with trainer/main.py")
    changeable = ", ".join("--" + n.replace("_", "-") for n in RESUME_OVERRIDABLE)
    return f"resume with: {launch} --resume {run}; only {changeable} may differ from its saved config.yaml"


def _fail(name: str, message: str) -> None:
    raise SystemExit(f"error: --{name.replace('_', '-')} {message}")


def _check_type(name: str, value: Any, type_name: str) -> Any:
    """The value, if it has the field's type. YAML can carry any type: a recipe's `channels_last: ture` must not
    pass as a string; `lr: 1e-3` (a string to YAML 1.1) is read as the number it means."""
    if value is None and "None" in type_name:
        return value
    if "float" in type_name and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    ok = {"bool": isinstance(value, bool), "int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "str": isinstance(value, str)}
    kind = next(k for k in ("bool", "int", "float", "str") if k in type_name)
    if not ok[kind]:
        _fail(name, f"must be {'true or false' if kind == 'bool' else 'a ' + kind}, not {value!r}")
    return float(value) if kind == "float" else value


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SystemExit(f"error: {path}: not valid YAML ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(values, dict):
        raise SystemExit(f"error: {path}: expected a mapping of config keys, got {type(values).__name__}")
    return values


def _checked(values: dict[str, Any], origin: str) -> dict[str, Any]:
    """Known keys only; retired keys are dropped when harmless and refused, with the reason, when not;
    legacy values are read as what they mean now."""
    values = dict(values)
    for key, meaning in LEGACY_VALUES.items():
        if isinstance(values.get(key), bool):
            values[key] = meaning[values[key]]
    for key in sorted(set(values) & set(RETIRED_KEYS)):
        reason = RETIRED_KEYS[key](values.pop(key))
        if reason:
            raise SystemExit(f"error: {origin}: {key}: {reason}")
    unknown = sorted(set(values) - set(TrainConfig.field_names()))
    if unknown:
        raise SystemExit(f"error: {origin}: unknown config key(s) {', '.join(unknown)}")
    return values


BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def parse_bool(text: str) -> bool:
    """true/false, yes/no, 1/0 (any case); anything else is an error, never a silent False."""
    try:
        return BOOLEANS[text.strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"expected true/false, yes/no or 1/0, not {text!r}") from None


def _flag_type(f: dataclasses.Field) -> Any:
    t = str(f.type)
    if "bool" in t:
        return parse_bool
    if "int" in t:
        return int
    if "float" in t:
        return float
    return str


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line naming it (no usage block)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise SystemExit(f"error: {message}")


def default_recipe() -> Path:
    """The recipe a launch without --config or --model reads: configs/<the default --model>.yaml."""
    return CONFIG_DIR / f"{TrainConfig.model}.yaml"


def _default_text(f: dataclasses.Field, recipe: dict[str, Any], recipe_name: str) -> str:
    """What runs when the flag is not given, and from where: the default recipe's value where it sets one."""
    if f.name in recipe:
        return f"default {recipe[f.name]!r}, from {recipe_name}".replace("%", "%%")
    return f"default {f.default!r}".replace("%", "%%")


def _model_help() -> str:
    """--model's help, naming every net models/ registers (the import costs nothing in the trainer, which has
    imported models already)."""
    import models

    others = [n for n in models.ALL_NAMES if n not in models.MODEL_NAMES]
    return (f"timm-registered net: shipped {', '.join(models.MODEL_NAMES)}; also registered in models/ "
            f"{', '.join(others)}; any other timm model with --allow-rule-violations")


def build_parser() -> argparse.ArgumentParser:
    """Flags for every config field (`--batch-size` for batch_size), plus --config. Each flag's help shows the
    value a plain launch uses: the default recipe's (read now), else the dataclass default."""
    recipe_path = default_recipe()
    recipe_name = f"{CONFIG_DIR.name}/{recipe_path.name}"
    types = {f.name: str(f.type) for f in fields(TrainConfig)}
    try:
        values = {"recipe": recipe_path.stem, **_checked(_read_yaml(recipe_path), recipe_name)}
        recipe = {k: _check_type(k, v, types[k]) for k, v in values.items()}  # `lr: 1e-3` shown as 0.001
    except (OSError, SystemExit):  # missing or broken: a launch says so; --help shows the dataclass defaults
        recipe = {}
    p = _OneLineParser(
        prog="trainer/main.py",
        allow_abbrev=False,  # `--epoch 3` is a typo to name, not --epochs
        description="Train an s7 network on CIFAR-10 with Hugging Face Accelerate. "
        "Values come from the dataclass defaults, then the model's recipe configs/<model>.yaml "
        f"(or --config FILE), then these flags. The defaults below are those of a plain launch: {recipe_name} "
        "(the recipe of the default --model) where it sets a value, else the dataclass's; with another --model "
        "or --config, that recipe's values apply instead. A run continues from its last completed epoch with its "
        f"saved config ({resume_hint()}).",
    )
    p.add_argument("--config", help="YAML recipe (default: configs/<model>.yaml when it exists)")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        text = _model_help() if f.name == "model" else f.metadata.get("help", "")
        p.add_argument(flag, dest=f.name, type=_flag_type(f), default=None, metavar=f.name.upper(),
                       help=f"{text} ({_default_text(f, recipe, recipe_name)})")
    return p


def resolve(argv: list[str] | None = None) -> TrainConfig:
    """Defaults < recipe YAML < flags; with --resume, the run's saved config (see `resumed`)."""
    args = build_parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if v is not None and k != "config"}
    if "resume" in flags:
        if args.config:
            raise SystemExit("error: --config cannot be given with --resume: the run keeps its saved config.yaml")
        return resumed(flags)
    model = flags.get("model", TrainConfig.model)
    recipe_path = Path(args.config) if args.config else CONFIG_DIR / f"{model}.yaml"
    values: dict[str, Any] = {}
    if args.config and not recipe_path.is_file():
        raise SystemExit(f"error: config file not found: {recipe_path}")
    if recipe_path.is_file():
        values = _checked(_read_yaml(recipe_path), str(recipe_path))
        for key in LAUNCH_ONLY:
            if values.get(key) is not None:  # `resume: null`, as every saved config.yaml has it, starts a new run
                raise SystemExit(f"error: {recipe_path}: `{key}` cannot be set in a recipe; continue a run with "
                                 f"--{key.replace('_', '-')} RUN, which keeps and checks its saved config")
        values.setdefault("recipe", recipe_path.stem)
    values.update(flags)
    return TrainConfig(**values).check()


def resumed(flags: dict[str, Any]) -> TrainConfig:
    """The saved config of the run named by flags["resume"]. Other flags given must equal the saved values (--name
    and --out: the folder --resume names), except RESUME_OVERRIDABLE ones, which replace them; a differing flag is
    refused, never dropped silently."""
    run = Path(flags["resume"])
    path = run / "config.yaml"
    if not path.is_file():
        raise SystemExit(f"error: --resume {run}: not a run folder (no config.yaml)")
    saved = TrainConfig.load(path)
    kept = {**saved.to_dict(), "name": run.name, "out": str(run.parent)}  # the folder is the run's name and place
    changed = [k for k, v in flags.items() if k not in RESUME_OVERRIDABLE and k != "resume"
               and (Path(v).resolve() != run.parent.resolve() if k == "out" else kept[k] != v)]
    if changed:
        given = ", ".join(f"--{k.replace('_', '-')} {flags[k]} (saved: {kept[k]})" for k in changed)
        raise SystemExit(f"error: --resume keeps the run's saved config; refused: {given} ({resume_hint(str(run))})")
    for name in set(RESUME_OVERRIDABLE) & set(flags):
        setattr(saved, name, flags[name])
    return dataclasses.replace(saved, resume=str(run), name=run.name, out=str(run.parent)).check()
