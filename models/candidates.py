"""Issue 9 candidates: two nets under s7's rules, to be compared with `s7` at an equal short training budget.

Both keep s7's shape C1 T1 C2 T2 C3 T3 C4 O (`S7Net`; a T may be the identity), no MaxPool, downsampling only by
plain (non-residual) 3x3 stride-2 convs, a 1x1 conv to the classes before GAP and nothing with weights after it.

- `s7_cand_a` ("full convs"): a ResNet-style stack of full 3x3 convs at 32x32 (24 wide) and 16x16 (38 wide, the
  last block dilated), where full convs are affordable (9*w^2 parameters) and cheap on the CPU, then one
  depthwise-separable transition that widens to 96 at 8x8 and a depthwise-separable residual block there: a
  full 3x3 conv at 96 wide would cost 83k parameters on its own.
- `s7_cand_b` ("gated mix"): ConvNeXt-like residual blocks whose spatial mixing is a chain of depthwise kernels
  (large, then dilated: the receptive field comes almost free), whose parameters sit in a gated 1x1 expansion
  (C -> 2C, GLU gate, -> C), and whose residual branch ends in a per-channel scale that starts at zero.
- `s7_cand_c` ("early stride", issue 16): one full conv at 32x32, where every layer costs the CPU four times
  what it costs at 16x16, then a full stride-2 transition and a ResNet block of full convs at 16x16, then a
  depthwise-separable transition to two depthwise-separable residual blocks at 8x8 (the first dilated). About
  1.3x candidate A's bf16 training speed on this CPU, its parameters where the CPU runs them fastest.
- `s7_cand_d` (issue 16): candidate A at widths the CPU's bf16 tiles like (32, 32, 104 against 24, 38, 96): more
  multiply-adds (33.4M against 28.3M), fewer parameters (95,162), yet about 1.16x A's training speed here. It
  became `s7` (2026-12-05); the name stays registered, the same builder, for the runs made under it.
- `s7_cand_d_strided` (issue 16): `s7_cand_a_strided` at `s7`'s widths (32, 32, then 64 and 112 wide
  depthwise-separable stages at 8x8 and 4x4), the widths the CPU's bf16 tiles run fast. It became `s7_strided`
  (2026-12-06); the name stays registered, the same builder, for the runs made under it.
- `s7_cand_e` (issue 16): `s7` with GELU for every ReLU, as the fast CIFAR-10 recipes activate; the same
  parameters and, in one probe of the bare bf16 training step on this CPU (synthetic batches of 512), no speed
  cost that the probe could resolve (GELU 820 img/s, ReLU 837 and 891 before and after it).
- `s7_cand_a_strided`, `s7_cand_a_dilated`: candidate A's idea (full convs where the maps are large and the
  channels few, depthwise-separable where they are small and many) under `s7_strided`'s rule (three 3x3
  stride-2 transitions) and `s7_dilated`'s (no stride: unpadded dilated transitions 32 -> 28 -> 20 -> 4).

Two constraints of the checker shape these blocks. The analytic receptive field walks *every* conv in execution
order and must equal the gradient-measured one, so parallel branches with different kernels (an Inception-style
channel split) would be over-counted and fail: the kernels are chained instead. And a transition cannot carry a
residual: a strided shortcut is either a 1x1 stride-2 conv (not an allowed downsampling) or another 3x3 stride-2
conv (walked as if in series with the main branch).

Not in `models.MODEL_NAMES` yet: `import models.candidates` registers them with timm.
"""
from __future__ import annotations

import torch
from timm.layers import GELU
from timm.models import build_model_with_cfg, generate_default_cfgs
from torch import nn

from models.blocks import BasicBlock, ConvBNAct, DepthwiseSeparableConv, OutputHead, ResidualDS
from models.nets import CIFAR10_MEAN, CIFAR10_STD, STRIDED_WIDTHS, S7Net, build_dilated, build_s7, build_strided
from models.registry import register


def _depthwise(channels: int, kernel: int, dilation: int) -> nn.Sequential:
    """A 'same'-padded depthwise kxk conv (optionally dilated) and BatchNorm, no activation."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation,
                  groups=channels, bias=False),
        nn.BatchNorm2d(channels),
    )


class GatedMixBlock(nn.Module):
    """Chained depthwise kernels, then a gated 1x1 expansion (C -> 2C, value * sigmoid(gate), -> C), residual.

    `kernels` is a list of (kernel, dilation), applied one after the other (no activation between: together they
    are one large, sparse depthwise filter); the last one is directly followed by the expanding 1x1 conv, so each
    block holds one depthwise-separable conv. The branch ends in a BatchNorm whose affine weight, initialised to
    `scale_init` (0: each block starts as the identity), is the learned per-channel residual scale.
    """

    def __init__(self, channels: int, kernels: tuple[tuple[int, int], ...] = ((3, 1),),
                 scale_init: float = 0.0) -> None:
        super().__init__()
        self.mix = nn.Sequential(*(_depthwise(channels, k, d) for k, d in kernels))
        self.expand = nn.Conv2d(channels, 2 * channels, 1, bias=False)
        self.bn_expand = nn.BatchNorm2d(2 * channels)
        self.project = nn.Conv2d(channels, channels, 1, bias=False)
        self.scale = nn.BatchNorm2d(channels)
        nn.init.constant_(self.scale.weight, scale_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.bn_expand(self.expand(self.mix(x))).chunk(2, dim=1)
        return x + self.scale(self.project(value * torch.sigmoid(gate)))


def build_a(num_classes: int = 10, in_chans: int = 3, widths: tuple[int, int, int] = (24, 38, 96)) -> S7Net:
    """`s7`'s layout (models.nets.build_s7) at candidate A's widths."""
    return build_s7(num_classes, in_chans, widths)


def build_b(num_classes: int = 10, in_chans: int = 3, widths: tuple[int, int, int] = (32, 64, 86)) -> S7Net:
    """Full-conv stem at 32x32, gated mixed-kernel blocks at 16x16 and 8x8 (large then dilated depthwise kernels)."""
    w1, w2, w3 = widths
    return S7Net(
        c1=nn.Sequential(ConvBNAct(in_chans, 24), ConvBNAct(24, w1)),       # 32x32, full convs
        t1=DepthwiseSeparableConv(w1, w2, stride=2),                        # -> 16x16, DS
        c2=nn.Sequential(GatedMixBlock(w2, ((5, 1),)), GatedMixBlock(w2, ((5, 1),))),
        t2=DepthwiseSeparableConv(w2, w3, stride=2),                        # -> 8x8, DS
        c3=GatedMixBlock(w3, ((5, 1), (3, 2))),                             # 5x5 then 3x3 dilation 2
        t3=nn.Identity(),                                                   # 8x8 kept
        c4=GatedMixBlock(w3, ((5, 1), (3, 3))),                             # 5x5 then 3x3 dilation 3
        head=OutputHead(w3, num_classes),
    )


def build_c(num_classes: int = 10, in_chans: int = 3, widths: tuple[int, int, int] = (32, 40, 104)) -> S7Net:
    """One full conv at 32x32 (w1), a full stride-2 transition and a full-conv ResNet block at 16x16 (w2), a DS
    transition to two DS residual blocks at 8x8 (w3, the first one's second conv dilated)."""
    w1, w2, w3 = widths
    return S7Net(
        c1=nn.Sequential(ConvBNAct(in_chans, w1)),                          # 32x32: 1 full conv (c1.0.0 the first conv)
        t1=ConvBNAct(w1, w2, stride=2),                                     # -> 16x16, full conv
        c2=BasicBlock(w2),                                                  # 16x16: 2 full convs
        t2=DepthwiseSeparableConv(w2, w3, stride=2),                        # -> 8x8, DS (widening)
        c3=ResidualDS(w3, dilation=2),                                      # 8x8: DS, DS (dilated)
        t3=nn.Identity(),                                                   # 8x8 kept
        c4=ResidualDS(w3),                                                  # 8x8: DS, DS
        head=OutputHead(w3, num_classes),
    )


def build_e(num_classes: int = 10, in_chans: int = 3) -> S7Net:
    """`s7` with GELU activations (timm's GELU: nn.GELU taking the `inplace` flag the blocks pass)."""
    return build_s7(num_classes, in_chans, act_layer=GELU)


def build_a_strided(num_classes: int = 10, in_chans: int = 3, widths: tuple[int, ...] = (24, 36, 80, 108)) -> S7Net:
    """`s7_strided`'s layout (models.nets.build_strided) at candidate A's widths."""
    return build_strided(num_classes, in_chans, widths)


def _cfg() -> dict:
    return dict(num_classes=10, input_size=(3, 32, 32), pool_size=None, crop_pct=1.0, interpolation="bilinear",
                mean=CIFAR10_MEAN, std=CIFAR10_STD, first_conv="c1.0.0",
                classifier="head.classifier", license="mit")


# Must exist before register_model runs: timm reads the module's default_cfgs at registration.
default_cfgs = generate_default_cfgs({f"{name}.untrained": _cfg() for name in
                                      ("s7_cand_a", "s7_cand_b", "s7_cand_c", "s7_cand_d", "s7_cand_d_strided",
                                       "s7_cand_e", "s7_cand_a_strided", "s7_cand_a_dilated")})


@register(None)
def s7_cand_a(pretrained: bool = False, **kwargs) -> S7Net:
    """Candidate A: full-conv ResNet front at 32x32 and 16x16, depthwise-separable back at 8x8."""
    return build_model_with_cfg(build_a, "s7_cand_a", pretrained, **kwargs)


@register(None)
def s7_cand_b(pretrained: bool = False, **kwargs) -> S7Net:
    """Candidate B: gated mixed-kernel blocks (chained large and dilated depthwise kernels, GLU 1x1 expansion)."""
    return build_model_with_cfg(build_b, "s7_cand_b", pretrained, **kwargs)


@register(None)
def s7_cand_c(pretrained: bool = False, **kwargs) -> S7Net:
    """Candidate C: one full conv at 32x32, full convs at 16x16, depthwise-separable residual blocks at 8x8."""
    return build_model_with_cfg(build_c, "s7_cand_c", pretrained, **kwargs)


@register(None)
def s7_cand_d(pretrained: bool = False, **kwargs) -> S7Net:
    """Candidate D: candidate A at widths 32, 32, 104 (fast bf16 tiles on the CPU); `s7` since 2026-12-05."""
    return build_model_with_cfg(build_s7, "s7_cand_d", pretrained, **kwargs)


@register(None)
def s7_cand_e(pretrained: bool = False, **kwargs) -> S7Net:
    """Candidate E: `s7` with GELU for every ReLU."""
    return build_model_with_cfg(build_e, "s7_cand_e", pretrained, **kwargs)


@register("strided")
def s7_cand_d_strided(pretrained: bool = False, **kwargs) -> S7Net:
    """`s7`'s full-conv front under s7_strided's rule; `s7_strided` since 2026-12-06."""
    return build_model_with_cfg(build_strided, "s7_cand_d_strided", pretrained, widths=STRIDED_WIDTHS, **kwargs)


@register("strided")
def s7_cand_a_strided(pretrained: bool = False, **kwargs) -> S7Net:
    """Candidate A's full-conv front under s7_strided's rule: three 3x3 stride-2 transitions."""
    return build_model_with_cfg(build_a_strided, "s7_cand_a_strided", pretrained, **kwargs)


@register("dilated")
def s7_cand_a_dilated(pretrained: bool = False, **kwargs) -> S7Net:
    """Candidate A's full-conv front under s7_dilated's rule; `s7_dilated` since 2026-12-06."""
    return build_model_with_cfg(build_dilated, "s7_cand_a_dilated", pretrained, **kwargs)
