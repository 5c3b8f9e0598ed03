"""Receptive field: hand-worked cases, and analytic == gradient-measured on the real nets."""
import pytest
import timm
from torch import nn

import models
from models.blocks import DepthwiseSeparableConv
from models.receptive_field import empirical_receptive_field, receptive_field, rf_table


def _net(*layers: nn.Module) -> nn.Module:
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1))


HAND_WORKED = {
    # two 3x3: 1 + 2 + 2
    "two 3x3": (_net(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)), 5),
    # 3x3 stride 2 (rf 3, jump 2) then 3x3: 3 + 2*2
    "3x3 s2 then 3x3": (_net(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)), 7),
    # dilation 2: effective kernel 2*(3-1)+1 = 5
    "3x3 dilation 2": (_net(nn.Conv2d(3, 4, 3, dilation=2, padding=2)), 5),
    # depthwise 3x3 then pointwise 1x1: the 1x1 adds nothing
    "depthwise-separable pair": (_net(DepthwiseSeparableConv(3, 8)), 3),
    # 3x3 s2, 3x3 s2, 3x3 d2: 3, +2*2=7, +4*4=23
    "strides then dilation": (_net(nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 4, 3, 2, 1), nn.Conv2d(4, 4, 3, 1, 2, 2)), 23),
}


@pytest.mark.parametrize("case", HAND_WORKED)
def test_analytic_and_gradient_rf_match_hand_worked_value(case):
    net, expected = HAND_WORKED[case]
    assert receptive_field(net) == expected
    assert empirical_receptive_field(net) == expected


def test_table_rows_follow_the_recursion_for_a_strided_pair():
    rows = rf_table(HAND_WORKED["3x3 s2 then 3x3"][0], input_size=32)
    assert [(r.n_in, r.n_out, r.jump, r.rf) for r in rows] == [(32, 16, 2, 3), (16, 16, 2, 7)]
    assert rows[0].start == 0.5 and rows[1].start == 0.5


def test_unpadded_dilated_conv_shrinks_map_by_effective_kernel_minus_one():
    rows = rf_table(_net(nn.Conv2d(3, 4, 3, dilation=8)), input_size=20)
    assert (rows[0].n_in, rows[0].n_out, rows[0].rf) == (20, 4, 17)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_every_net_has_rf_over_52_by_both_methods(name):
    net = timm.create_model(name)
    rf = receptive_field(net)
    assert rf > 52
    assert empirical_receptive_field(net) == rf
