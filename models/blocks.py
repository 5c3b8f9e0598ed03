"""Building blocks of the s7 networks: conv-BN-activation (ReLU unless a block is given timm's `act_layer`), the
depthwise-separable conv, residual blocks (full-conv and depthwise-separable), the GAP head."""
from __future__ import annotations

import torch
from torch import nn

ActLayer = type[nn.Module]  # an activation class, built as act_layer(inplace=True) as timm's blocks build theirs


def _same_padding(kernel: int, dilation: int) -> int:
    return dilation * (kernel - 1) // 2


class ConvBNAct(nn.Sequential):
    """A full 3x3 (or kxk) convolution, BatchNorm and the activation (ReLU unless `act_layer`). `padding=None` keeps
    the size at stride 1."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, dilation: int = 1,
                 padding: int | None = None, act_layer: ActLayer = nn.ReLU) -> None:
        pad = _same_padding(kernel, dilation) if padding is None else padding
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=pad, dilation=dilation, bias=False),
            nn.BatchNorm2d(c_out),
            act_layer(inplace=True),
        )


class DepthwiseSeparableConv(nn.Module):
    """Depthwise 3x3 (groups = in_channels, optional stride or dilation) then pointwise 1x1, each with BN.

    `act_out=False` leaves the pointwise output un-activated so a residual sum can be taken first.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dilation: int = 1,
                 padding: int | None = None, act_out: bool = True, act_layer: ActLayer = nn.ReLU) -> None:
        super().__init__()
        pad = _same_padding(3, dilation) if padding is None else padding
        self.depthwise = nn.Conv2d(c_in, c_in, 3, stride=stride, padding=pad, dilation=dilation,
                                   groups=c_in, bias=False)
        self.bn_dw = nn.BatchNorm2d(c_in)
        self.act_dw = act_layer(inplace=True)
        self.pointwise = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(c_out)
        self.act = act_layer(inplace=True) if act_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_dw(self.bn_dw(self.depthwise(x)))
        return self.act(self.bn_pw(self.pointwise(x)))


class ResidualDS(nn.Module):
    """Two depthwise-separable convs at constant width with an identity shortcut (size kept)."""

    def __init__(self, channels: int, dilation: int = 1, act_layer: ActLayer = nn.ReLU) -> None:
        super().__init__()
        self.conv1 = DepthwiseSeparableConv(channels, channels, act_layer=act_layer)
        self.conv2 = DepthwiseSeparableConv(channels, channels, dilation=dilation, act_out=False, act_layer=act_layer)
        self.act = act_layer(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.conv2(self.conv1(x)))


class BasicBlock(nn.Module):
    """ResNet basic block: two full 3x3 conv-BN (the activation between, both with `dilation`), identity shortcut,
    the activation after."""

    def __init__(self, channels: int, dilation: int = 1, act_layer: ActLayer = nn.ReLU) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(channels, channels, dilation=dilation, act_layer=act_layer)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.act = act_layer(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.bn2(self.conv2(self.conv1(x))))


class OutputHead(nn.Module):
    """O: a 1x1 conv maps channels to classes *before* global average pooling; nothing with weights follows GAP."""

    def __init__(self, c_in: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(c_in, num_classes, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gap(self.classifier(x)).flatten(1)
