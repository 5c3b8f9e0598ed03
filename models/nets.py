"""The three s7 networks, C1 C2 C3 C4 O with no MaxPool, registered in timm's model registry.

- `s7_strided`: transitions are 3x3 stride-2 convs: 32 -> 16 -> 8 -> 4. `s7`'s idea under that rule: full 3x3
  convs at 32x32 and 16x16 (the first transition a full conv too), depthwise-separable from 8x8 on (issue 16,
  candidate `s7_cand_d_strided` until 2026-12-06: benchmarks/ablations.md, a20-dstrided-short).
- `s7_dilated`: no stride anywhere; transitions are unpadded dilated convs: 32 -> 28 -> 20 -> 4. `s7`'s idea under
  that rule: full convs at 32x32 and 28x28 (the first transition a full dilated conv), depthwise-separable after
  (candidate `s7_cand_a_dilated` until 2026-12-06).
- `s7`: the headline net, built for accuracy per CPU-second (issue 16): full 3x3 convs at 32x32 and 16x16 (cheap in
  parameters there, and fast on a CPU's bf16 tiles), a depthwise-separable transition to 8x8 and a
  depthwise-separable residual block there. It learns as much per epoch as `s7_v1` at about twice its training
  speed on a 2-core CPU (benchmarks/ablations.md, a12-d-lightaug against a12-s7-lightaug).
- `s7_strided_v1`: `s7_strided` until 2026-12-06 (depthwise-separable transitions and residual blocks throughout),
  kept so the runs archived under results/archive/ still build their net.
- `s7_dilated_v1`: `s7_dilated` until 2026-12-06 (depthwise-separable transitions and residual blocks
  throughout), kept so the runs archived under results/archive/ still build their net.
- `s7_v1`: `s7` until 2026-12-05 (two stride-2 transitions, a padded dilated third; depthwise-separable
  residual blocks throughout), kept so the runs archived under results/archive/ still build their net.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs
from torch import nn

from models.blocks import ActLayer, BasicBlock, ConvBNAct, DepthwiseSeparableConv, OutputHead, ResidualDS
from models.registry import register

# Per-channel mean and std of the original CIFAR-10 training split, 0-1 scale (pixel units / 255): the
# normalisation of weights that do not carry their own.
CIFAR10_MEAN = (125.307 / 255, 122.950 / 255, 113.865 / 255)
CIFAR10_STD = (62.993 / 255, 62.089 / 255, 66.705 / 255)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WIDTHS = (32, 64, 96, 128)  # C1..C4 of s7_dilated_v1, s7_strided_v1 and s7_v1, sized to stay under 100k parameters
S7_WIDTHS = (32, 32, 104)  # s7: the 32x32 and 16x16 full convs, then the 8x8 depthwise-separable block
STRIDED_WIDTHS = (32, 32, 64, 112)  # s7_strided: s7's full-conv widths, then DS stages at 8x8 and 4x4
DILATED_WIDTHS = (24, 36, 80, 108)  # s7_dilated: full convs at 32x32 and 28x28, then DS stages at 20x20 and 4x4


class S7Net(nn.Module):
    """C1 -> T1 -> C2 -> T2 -> C3 -> T3 -> C4 -> O, with timm's classifier API: the classifier is O's 1x1 conv
    before GAP (`get_classifier`), `forward_features` ends at C4's map, `forward_head` is O."""

    def __init__(self, c1: nn.Module, t1: nn.Module, c2: nn.Module, t2: nn.Module, c3: nn.Module,
                 t3: nn.Module, c4: nn.Module, head: OutputHead) -> None:
        super().__init__()
        self.c1, self.t1, self.c2, self.t2, self.c3, self.t3, self.c4 = c1, t1, c2, t2, c3, t3, c4
        self.head = head
        self.num_features = head.classifier.in_channels

    @property
    def num_classes(self) -> int:
        """Classes the net scores; 0 after `reset_classifier(0)` (then it returns pooled features)."""
        return self.head.classifier.out_channels if isinstance(self.head.classifier, nn.Conv2d) else 0

    def get_classifier(self) -> nn.Module:
        return self.head.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new, untrained 1x1 conv to `num_classes` before GAP (none for 0); only average pooling exists."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool {global_pool!r}: the rules allow only global average pooling ('avg')")
        self.head.classifier = nn.Conv2d(self.num_features, num_classes, 1) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c3(self.t2(self.c2(self.t1(self.c1(x)))))
        return self.c4(self.t3(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits; with `pre_logits`, the pooled features the classifier reads (a 1x1 conv commutes with GAP)."""
        return self.head.gap(x).flatten(1) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _strided_pair(num_classes: int, in_chans: int, widths: tuple[int, ...], t3: Callable[[], nn.Module]) -> S7Net:
    """s7_strided_v1's and s7_v1's shared stack: two 3x3 stride-2 transitions, then `t3()`, built in its place so a
    seed initialises the weights as it always did."""
    w1, w2, w3, w4 = widths
    return S7Net(
        c1=nn.Sequential(ConvBNAct(in_chans, w1), ResidualDS(w1)),           # 32x32
        t1=DepthwiseSeparableConv(w1, w2, stride=2),                         # -> 16x16
        c2=ResidualDS(w2),
        t2=DepthwiseSeparableConv(w2, w3, stride=2),                         # -> 8x8
        c3=ResidualDS(w3, dilation=2),
        t3=t3(),
        c4=ResidualDS(w4),
        head=OutputHead(w4, num_classes),
    )


def build_strided(num_classes: int = 10, in_chans: int = 3, widths: tuple[int, ...] = STRIDED_WIDTHS) -> S7Net:
    """Three 3x3 stride-2 transitions (32 -> 16 -> 8 -> 4): full convs at 32x32 and 16x16 (the first transition a
    full conv too), depthwise-separable from 8x8 on, where the channels are many."""
    w1, w2, w3, w4 = widths
    return S7Net(
        c1=nn.Sequential(ConvBNAct(in_chans, w1), BasicBlock(w1)),          # 32x32: 3 full convs
        t1=ConvBNAct(w1, w2, stride=2),                                     # -> 16x16, full conv
        c2=BasicBlock(w2),                                                  # 16x16: 2 full convs
        t2=DepthwiseSeparableConv(w2, w3, stride=2),                        # -> 8x8, DS
        c3=ResidualDS(w3, dilation=2),                                      # 8x8: DS, DS (dilated)
        t3=DepthwiseSeparableConv(w3, w4, stride=2),                        # -> 4x4, DS
        c4=ResidualDS(w4),
        head=OutputHead(w4, num_classes),
    )


def build_strided_v1(num_classes: int = 10, in_chans: int = 3, widths: tuple[int, ...] = WIDTHS) -> S7Net:
    """`s7_strided` until 2026-12-06: three depthwise-separable 3x3 stride-2 transitions, C4 at 4x4."""
    return _strided_pair(num_classes, in_chans, widths,
                         lambda: DepthwiseSeparableConv(widths[2], widths[3], stride=2))


def build_dilated(num_classes: int = 10, in_chans: int = 3, widths: tuple[int, ...] = DILATED_WIDTHS) -> S7Net:
    """No stride anywhere; unpadded dilated transitions 32 -> 28 -> 20 -> 4. `s7`'s idea under that rule: full
    convs at 32x32 and 28x28 (the first transition a full dilated conv), depthwise-separable after."""
    w1, w2, w3, w4 = widths
    return S7Net(
        c1=nn.Sequential(ConvBNAct(in_chans, w1), BasicBlock(w1)),          # 32x32: 3 full convs
        t1=ConvBNAct(w1, w2, dilation=2, padding=0),                        # -> 28x28, full conv, dilation 2
        c2=BasicBlock(w2, dilation=2),                                      # 28x28: 2 full convs, dilation 2
        t2=DepthwiseSeparableConv(w2, w3, dilation=4, padding=0),           # -> 20x20, DS, dilation 4
        c3=ResidualDS(w3, dilation=4),                                      # 20x20: DS, DS (dilation 4)
        t3=DepthwiseSeparableConv(w3, w4, dilation=8, padding=0),           # -> 4x4, DS, dilation 8
        c4=ResidualDS(w4),
        head=OutputHead(w4, num_classes),
    )


def build_dilated_v1(num_classes: int = 10, in_chans: int = 3, widths: tuple[int, ...] = WIDTHS) -> S7Net:
    """`s7_dilated` until 2026-12-06: depthwise-separable transitions and residual blocks throughout."""
    w1, w2, w3, w4 = widths
    return S7Net(
        c1=nn.Sequential(ConvBNAct(in_chans, w1), ResidualDS(w1)),           # 32x32
        t1=DepthwiseSeparableConv(w1, w2, dilation=2, padding=0),            # -> 28x28
        c2=ResidualDS(w2, dilation=2),
        t2=DepthwiseSeparableConv(w2, w3, dilation=4, padding=0),            # -> 20x20
        c3=ResidualDS(w3, dilation=4),
        t3=DepthwiseSeparableConv(w3, w4, dilation=8, padding=0),            # -> 4x4
        c4=ResidualDS(w4, dilation=2),
        head=OutputHead(w4, num_classes),
    )


def build_s7_v1(num_classes: int = 10, in_chans: int = 3, widths: tuple[int, ...] = WIDTHS) -> S7Net:
    """As `build_strided`, but T3 is dilated, not strided: C4 stays at 8x8 and the RF grows."""
    return _strided_pair(num_classes, in_chans, widths,
                         lambda: DepthwiseSeparableConv(widths[2], widths[3], dilation=2))


def build_s7(num_classes: int = 10, in_chans: int = 3, widths: tuple[int, ...] = S7_WIDTHS,
             act_layer: ActLayer = nn.ReLU) -> S7Net:
    """Full 3x3 convs at 32x32 (w1) and 16x16 (w2; the last two dilated), then a depthwise-separable stride-2
    transition widening to w3 at 8x8 and a depthwise-separable residual block there (its second conv dilated).
    A full 3x3 conv costs 9*w^2 parameters, affordable only where the channels are few; at 8x8, where they are
    many, the depthwise-separable convs hold the width. `act_layer` is every activation (ReLU: the shipped net)."""
    w1, w2, w3 = widths
    act = dict(act_layer=act_layer)
    return S7Net(
        c1=nn.Sequential(ConvBNAct(in_chans, w1, **act), BasicBlock(w1, **act)),  # 32x32: 3 full convs
        t1=ConvBNAct(w1, w2, stride=2, **act),                              # -> 16x16, full conv
        c2=BasicBlock(w2, **act),                                           # 16x16: 2 full convs
        t2=nn.Identity(),                                                   # 16x16 kept
        c3=BasicBlock(w2, dilation=2, **act),                               # 16x16: 2 full convs, dilation 2
        t3=DepthwiseSeparableConv(w2, w3, stride=2, **act),                 # -> 8x8, DS (widening)
        c4=ResidualDS(w3, dilation=2, **act),                               # 8x8: DS, DS (dilated)
        head=OutputHead(w3, num_classes),
    )


def trained_statistics(weights: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (0-1 scale) the weights file was trained with, from its own metadata, so
    timm's pretrained_cfg normalises exactly as training did; CIFAR-10's when the file is absent or silent."""
    from safetensors import safe_open

    cifar10 = CIFAR10_MEAN, CIFAR10_STD
    if not weights.is_file():
        return cifar10
    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("s7", "{}"))
        return tuple(m / 255 for m in meta["mean"]), tuple(s / 255 for s in meta["std"])
    except (OSError, KeyError, ValueError):
        return cifar10


def _cfg(name: str) -> dict:
    # timm loads pretrained=True from `file`, a local safetensors in the repository: no network. The mean and
    # std here are CIFAR-10's; `_create` replaces them with the file's own when a net is built, so importing
    # `models` opens no file.
    return dict(file=str(WEIGHTS_DIR / f"{name}.safetensors"), num_classes=10, input_size=(3, 32, 32),
                pool_size=None, crop_pct=1.0, interpolation="bilinear", mean=CIFAR10_MEAN, std=CIFAR10_STD,
                first_conv="c1.0.0", classifier="head.classifier", license="mit")


# Must exist before register_model runs: timm reads the module's default_cfgs at registration.
default_cfgs = generate_default_cfgs({
    "s7.cifar10": _cfg("s7"),
    "s7_strided.cifar10": _cfg("s7_strided"),
    "s7_dilated.cifar10": _cfg("s7_dilated"),
    # the replaced layouts ship no weights: no `file` to load
    **{f"{name}.untrained": {k: v for k, v in _cfg(name).items() if k != "file"}
       for name in ("s7_v1", "s7_strided_v1", "s7_dilated_v1")},
})


def _create(variant: str, builder, pretrained: bool, **kwargs) -> S7Net:
    """Build through timm, the pretrained_cfg normalising with the statistics of the weights file it names
    (an overlay's `file`, else the shipped one); an overlay's own mean/std win."""
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    mean, std = trained_statistics(Path(overlay.get("file", WEIGHTS_DIR / f"{variant}.safetensors")))
    return build_model_with_cfg(builder, variant, pretrained,
                                pretrained_cfg_overlay={"mean": mean, "std": std, **overlay}, **kwargs)


@register(None, shipped=True)
def s7(pretrained: bool = False, **kwargs) -> S7Net:
    """Headline net: full convs at 32x32 and 16x16, a depthwise-separable block at 8x8."""
    return _create("s7", build_s7, pretrained, **kwargs)


@register("strided", shipped=True)
def s7_strided(pretrained: bool = False, **kwargs) -> S7Net:
    """Three 3x3 stride-2 transitions (32 -> 16 -> 8 -> 4); full convs at 32x32 and 16x16, DS after."""
    return _create("s7_strided", build_strided, pretrained, **kwargs)


@register("dilated", shipped=True)
def s7_dilated(pretrained: bool = False, **kwargs) -> S7Net:
    """No stride anywhere: unpadded dilated transitions (32 -> 28 -> 20 -> 4); full convs at 32x32 and 28x28."""
    return _create("s7_dilated", build_dilated, pretrained, **kwargs)


@register(None)
def s7_v1(pretrained: bool = False, **kwargs) -> S7Net:
    """`s7` until 2026-12-05: strided, strided, dilated transitions, depthwise-separable blocks; C4 at 8x8."""
    return build_model_with_cfg(build_s7_v1, "s7_v1", pretrained, **kwargs)


@register("strided")
def s7_strided_v1(pretrained: bool = False, **kwargs) -> S7Net:
    """`s7_strided` until 2026-12-06: depthwise-separable transitions and residual blocks throughout."""
    return build_model_with_cfg(build_strided_v1, "s7_strided_v1", pretrained, **kwargs)


@register("dilated")
def s7_dilated_v1(pretrained: bool = False, **kwargs) -> S7Net:
    """`s7_dilated` until 2026-12-06: depthwise-separable transitions and residual blocks throughout."""
    return build_model_with_cfg(build_dilated_v1, "s7_dilated_v1", pretrained, **kwargs)
