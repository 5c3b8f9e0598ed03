"""The rule checker passes the s7 nets and fails each purpose-built violation on exactly its rule."""
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import models
from models.blocks import DepthwiseSeparableConv
from models.rules import check_model, count_depthwise_separable, load_model, trace
from trainer.cli import main as s7_main


class Toy(nn.Module):
    """A small compliant net (RF 57, 2 separable convs, one dilated) with one switch per violation."""

    def __init__(self, maxpool=False, fc_after_gap=False, small_rf=False, one_ds=False, wide=False,
                 functional=False):
        super().__init__()
        c = 128 if wide else 32
        k = 1 if small_rf else 3
        self.functional = functional
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU())
        self.pool = nn.MaxPool2d(2) if maxpool else nn.Identity()
        self.ds1 = DepthwiseSeparableConv(c, c, stride=2)                       # RF 5, jump 2
        self.ds2 = (nn.Sequential(nn.Conv2d(c, c, 3, padding=2, dilation=2), nn.ReLU()) if one_ds
                    else DepthwiseSeparableConv(c, c, dilation=2))              # RF 13
        self.t2 = nn.Sequential(nn.Conv2d(c, c, 3, stride=2, padding=1), nn.ReLU())  # RF 17, jump 4
        self.c3 = nn.Sequential(nn.Conv2d(c, c, k, padding=k // 2), nn.ReLU())  # RF 25
        self.t3 = nn.Sequential(nn.Conv2d(c, c, 3, stride=2, padding=1), nn.ReLU())  # RF 33, jump 8
        self.c4 = nn.Sequential(nn.Conv2d(c, c, k, padding=k // 2), nn.ReLU())  # RF 49
        self.c5 = nn.Sequential(nn.Conv2d(c, c, k, padding=k // 2), nn.ReLU())  # RF 65
        self.head = nn.Conv2d(c, 10, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(10, 10) if fc_after_gap else nn.Identity()

    def forward(self, x):
        x = self.stem(x)
        x = F.max_pool2d(x, 1, 1) if self.functional else self.pool(x)
        x = self.c5(self.c4(self.t3(self.c3(self.t2(self.ds2(self.ds1(x)))))))
        x = self.head(x)
        x = x.mean((2, 3)) if self.functional else self.gap(x).flatten(1)
        return self.fc(x)


def _failed(model: nn.Module) -> list[str]:
    return [r.name for r in check_model(model) if not r.passed]


def test_the_compliant_toy_passes_every_rule():
    assert _failed(Toy()) == []


@pytest.mark.parametrize("switch, rule", [
    ("maxpool", "MaxPool"),
    ("fc_after_gap", "layers with weights after GAP"),
    ("small_rf", "receptive field"),
    ("one_ds", "depthwise-separable convs"),
    ("wide", "parameters"),
])
def test_each_violation_fails_exactly_its_rule(switch, rule):
    assert _failed(Toy(**{switch: True})) == [rule]


def test_small_rf_toy_really_has_rf_25():
    rf = next(r for r in check_model(Toy(small_rf=True)) if r.name == "receptive field")
    assert rf.actual.startswith("25 ")


def test_functional_maxpool_and_mean_gap_are_seen():
    events = trace(Toy(functional=True))
    assert [e.kind for e in events if e.kind != "module"] == ["maxpool", "gap"]
    assert _failed(Toy(functional=True)) == ["MaxPool"]


def test_fc_straight_after_flatten_has_no_gap():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 30 * 30, 10))
    failed = _failed(net)
    assert "GAP input channels" in failed and "layers with weights after GAP" in failed


def test_separable_count_needs_pointwise_right_after_depthwise():
    dw_only = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1))
    real = nn.Sequential(nn.Conv2d(3, 8, 1), DepthwiseSeparableConv(8, 8), DepthwiseSeparableConv(8, 16),
                         nn.AdaptiveAvgPool2d(1))
    assert count_depthwise_separable(trace(dw_only, input_size=16)) == 0
    assert count_depthwise_separable(trace(real, input_size=16)) == 2


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_s7_nets_pass_every_rule(name):
    assert _failed(timm.create_model(name)) == []


def test_strided_rule_rejects_a_dilated_net():
    failed = [r.name for r in check_model(timm.create_model("s7_dilated"), transitions="strided") if not r.passed]
    assert failed == ["transitions (strided)"]


def test_dilated_rule_rejects_a_strided_net():
    failed = [r.name for r in check_model(timm.create_model("s7_strided"), transitions="dilated") if not r.passed]
    assert failed == ["transitions (dilated)"]


def test_check_command_exit_codes(capsys):
    assert s7_main(["check", "s7_dilated"]) == 0
    assert "ALL PASS (95,146 parameters)" in capsys.readouterr().out
    assert s7_main(["check", "tests.test_rules:MaxPoolToy"]) == 1
    assert "| MaxPool | none | 1 | FAIL |" in capsys.readouterr().out


def test_unknown_model_is_a_one_line_error(capsys):
    assert s7_main(["check", "resnet9000"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: unknown model 'resnet9000'")
    with pytest.raises(ValueError, match="cannot load model"):
        load_model("no_such_module:Net")


def test_summary_command_prints_torchinfo_table(capsys):
    assert s7_main(["summary", "s7"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 95,146" in out and "[1, 10]" in out


class MaxPoolToy(Toy):
    def __init__(self):
        super().__init__(maxpool=True)
