"""The rule checker passes the s7 nets and fails each purpose-built violation on exactly its rule."""
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import models
from models.blocks import DepthwiseSeparableConv
from models.rules import check_model, count_depthwise_separable, is_gap, is_max_pool, required_transitions
from models.trace import trace
from trainer.tools.check import load_model
from trainer.tools.cli import main as s7_main


WIDTH = 8  # the Toy's channels: narrow, so that the gradient RF check stays quick


class Toy(nn.Module):
    """A small compliant net (RF 57, 2 separable convs, one dilated, three 3x3 stride-2 transitions) with one
    switch per violation; subclasses below override `late` (the map before the class conv) or `pool_classes`."""

    def __init__(self, maxpool=False, fc_after_gap=False, small_rf=False, one_ds=False, wide=False,
                 functional=False):
        super().__init__()
        c = 128 if wide else WIDTH
        k = 1 if small_rf else 3
        self.functional = functional
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU())
        self.pool = nn.MaxPool2d(2) if maxpool else nn.Identity()
        self.ds1 = DepthwiseSeparableConv(c, c, stride=2)                       # RF 5, jump 2
        self.ds2 = (nn.Sequential(nn.Conv2d(c, c, 3, padding=2, dilation=2), nn.ReLU()) if one_ds
                    else DepthwiseSeparableConv(c, c, dilation=2))              # RF 13
        self.t2 = nn.Sequential(nn.Conv2d(c, c, 3, stride=2, padding=1), nn.ReLU())  # RF 17, jump 4
        self.c3 = nn.Sequential(nn.Conv2d(c, c, k, padding=k // 2), nn.ReLU())  # RF 25
        self.c4 = nn.Sequential(nn.Conv2d(c, c, k, padding=k // 2), nn.ReLU())  # RF 33
        self.t3 = nn.Sequential(nn.Conv2d(c, c, 3, stride=2, padding=1), nn.ReLU())  # RF 41, jump 8
        self.c5 = nn.Sequential(nn.Conv2d(c, c, k, padding=k // 2), nn.ReLU())  # RF 57: the gradient check's
        # first 64px probe then holds the whole field
        self.head = nn.Conv2d(c, 10, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(10, 10) if fc_after_gap else nn.Identity()

    def forward(self, x):
        x = self.stem(x)
        x = F.max_pool2d(x, 1, 1) if self.functional else self.pool(x)
        x = self.c5(self.t3(self.c4(self.c3(self.t2(self.ds2(self.ds1(x)))))))
        x = self.head(self.late(x))
        return self.fc(self.pool_classes(x))

    def late(self, x):
        return x

    def pool_classes(self, x):
        return x.mean((2, 3)) if self.functional else self.gap(x).flatten(1)


def _failed(model: nn.Module, transitions: str | None = None) -> set[str]:
    return {r.name for r in check_model(model, transitions=transitions) if not r.passed}


def _failed_and_actual(model: nn.Module, name: str) -> tuple[set[str], str]:
    """The failed rules, and the actual value of rule `name`, from one check."""
    rules = check_model(model)
    return {r.name for r in rules if not r.passed}, next(r.actual for r in rules if r.name == name)


def test_the_compliant_toy_passes_every_rule():
    assert _failed(Toy()) == set()
    assert _failed(Toy(), transitions="strided") == set()  # its three transitions are 3x3 stride-2 convs


@pytest.mark.parametrize("switch, rule", [
    ("maxpool", "MaxPool"),
    ("fc_after_gap", "layers with weights after GAP"),
    ("small_rf", "receptive field"),
    ("one_ds", "depthwise-separable convs"),
    ("wide", "parameters"),
])
def test_each_violation_fails_exactly_its_rule(switch, rule):
    assert _failed(Toy(**{switch: True})) == {rule}


def test_small_rf_toy_really_has_rf_25():
    assert _failed_and_actual(Toy(small_rf=True), "receptive field")[1].startswith("25 ")


def test_functional_maxpool_and_mean_gap_are_seen():
    ops = trace(Toy(functional=True)).ops
    assert [op.fn for op in ops if is_max_pool(op) or is_gap(op)] == ["max_pool2d", "mean"]
    assert _failed(Toy(functional=True)) == {"MaxPool"}


class GlobalMaxToy(Toy):
    """Adds a global max over the spatial dims to the GAP, written in one of many ways."""

    def __init__(self, global_max):
        super().__init__()
        self.global_max = global_max

    def pool_classes(self, x):
        return super().pool_classes(x) + self.global_max(x)


GLOBAL_MAXES = {
    "torch.amax": lambda x: torch.amax(x, (2, 3)),
    "Tensor.amax": lambda x: x.amax(dim=(-2, -1)),
    "max(dim) chain": lambda x: x.max(dim=3)[0].max(dim=2)[0],
    "torch.max(x, 2)": lambda x: torch.max(torch.max(x, 2)[0], 2)[0],
    "flatten max": lambda x: x.flatten(2).max(-1).values,
    "whole-tensor max": lambda x: x.max(),
    "F.adaptive_max_pool2d": lambda x: F.adaptive_max_pool2d(x, 1).flatten(1),
    "nn.AdaptiveMaxPool2d": nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten()),
}


@pytest.mark.parametrize("form", GLOBAL_MAXES)
def test_a_global_max_is_max_pooling_however_written(form):
    assert _failed(GlobalMaxToy(GLOBAL_MAXES[form])) == {"MaxPool"}


def test_a_max_over_channels_is_not_max_pooling():
    class ChannelMaxToy(Toy):  # spatial attention from the channel max, as in CBAM
        def late(self, x):
            return x * torch.sigmoid(x.amax(dim=1, keepdim=True))

    assert _failed(ChannelMaxToy()) == set()


class MatmulAfterGap(Toy):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.eye(10))

    def pool_classes(self, x):
        return super().pool_classes(x) @ self.w


class ScaleAfterGap(Toy):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(10))
        self.bias = nn.Parameter(torch.zeros(10))

    def pool_classes(self, x):
        return super().pool_classes(x) * self.scale + self.bias


class DerivedWeightAfterGap(MatmulAfterGap):
    def pool_classes(self, x):
        return Toy.pool_classes(self, x) @ (2 * self.w)  # the weight reaches the logits through an op of its own


@pytest.mark.parametrize("net, names", [
    (MatmulAfterGap, "w"),
    (ScaleAfterGap, "scale, bias"),
    (DerivedWeightAfterGap, "w"),
    (lambda: Toy(fc_after_gap=True), "fc (Linear)"),
], ids=["matmul", "scale and bias", "derived weight", "Linear"])
def test_a_bare_parameter_after_gap_is_a_weight_after_gap(net, names):
    assert _failed_and_actual(net(), "layers with weights after GAP") == ({"layers with weights after GAP"}, names)


class LateToy(Toy):
    """Applies `late` (a module or function) to the last map, before the class conv."""

    def __init__(self, late):
        super().__init__()
        self.extra = late

    def late(self, x):
        return self.extra(x)


def _t3(conv: nn.Conv2d) -> Toy:
    net = Toy()
    net.t3 = nn.Sequential(conv, nn.ReLU())
    return net


DOWNSAMPLERS = {
    "strided slice": lambda: LateToy(lambda x: x[:, :, ::2, ::2]),
    "nn.AvgPool2d(2)": lambda: LateToy(nn.AvgPool2d(2)),
    "F.avg_pool2d(x, 1, 2)": lambda: LateToy(lambda x: F.avg_pool2d(x, 1, 2)),
    "F.interpolate down": lambda: LateToy(lambda x: F.interpolate(x, scale_factor=0.5)),
    "pixel_unshuffle": lambda: LateToy(lambda x: F.pixel_unshuffle(x, 2)[:, ::4]),
    "1x1 stride-2 conv": lambda: LateToy(nn.Conv2d(WIDTH, WIDTH, 1, stride=2)),
    "5x5 stride-2 conv": lambda: _t3(nn.Conv2d(WIDTH, WIDTH, 5, stride=2, padding=2)),
    "3x3 stride-4 conv": lambda: _t3(nn.Conv2d(WIDTH, WIDTH, 3, stride=4, padding=1)),
}


@pytest.mark.parametrize("case", DOWNSAMPLERS)
def test_downsampling_other_than_the_allowed_convs_fails(case):
    failed, actual = _failed_and_actual(DOWNSAMPLERS[case](), "downsampling")
    assert failed == {"downsampling"} and ", 1 other: " in actual


def test_under_padded_stride1_convs_are_allowed_downsampling():
    net = _t3(nn.Conv2d(WIDTH, WIDTH, 3, dilation=2))  # unpadded: 8x8 -> 4x4, as s7_dilated's transitions
    assert _failed_and_actual(net, "downsampling") == (set(), "2 stride-2 3x3, 1 under-padded stride-1, 0 other")


def test_strided_requirement_needs_three_stride2_convs():
    two_strides = _t3(nn.Conv2d(WIDTH, WIDTH, 3, padding=2, dilation=2))  # T3 keeps 8x8, as in s7
    assert _failed(two_strides) == set()
    assert _failed(two_strides, transitions="strided") == {"transitions (strided)"}


def test_dilated_requirement_rejects_any_stride():
    assert _failed(Toy(), transitions="dilated") == {"transitions (dilated)"}


def test_fc_straight_after_flatten_has_no_gap():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 30 * 30, 10))
    failed = _failed(net)
    assert "GAP input channels" in failed and "layers with weights after GAP" in failed


def test_separable_count_needs_pointwise_right_after_depthwise():
    dw_only = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1))
    real = nn.Sequential(nn.Conv2d(3, 8, 1), DepthwiseSeparableConv(8, 8), DepthwiseSeparableConv(8, 16),
                         nn.AdaptiveAvgPool2d(1))
    assert count_depthwise_separable(trace(dw_only, input_size=16).ops) == 0
    assert count_depthwise_separable(trace(real, input_size=16).ops) == 2


class Untraceable(Toy):
    """Data-dependent control flow: torch.fx cannot trace it. `extra` adds a violation after the branch."""

    def __init__(self, extra=None):
        super().__init__()
        self.extra = extra

    def pool_classes(self, x):
        if x.sum() > 0:
            x = x + 1
        x = self.extra(x) if self.extra else x
        return super().pool_classes(x)


@pytest.mark.parametrize("extra, rule", [
    (None, None),
    (lambda x: x + torch.amax(x, (2, 3), keepdim=True), "MaxPool"),
    (lambda x: x[:, :, ::2, ::2], "downsampling"),
], ids=["compliant", "amax", "strided slice"])
def test_an_untraceable_model_is_never_all_pass(extra, rule):
    rules = check_model(Untraceable(extra))
    assert {r.name for r in rules if not r.passed} == {"traceable"} | ({rule} if rule else set())
    assert next(r for r in rules if r.name == "traceable").actual.startswith("no (TraceError: ")


def test_the_eager_fallback_still_sees_weights_after_gap():
    class UntraceableScale(ScaleAfterGap):
        def late(self, x):
            return x + 1 if x.sum() > 0 else x

    assert _failed(UntraceableScale()) == {"traceable", "layers with weights after GAP"}


@pytest.mark.parametrize("name", models.ALL_NAMES)
def test_every_registered_net_passes_every_rule_its_transition_rule_included(name):
    rules = {r.name: r.passed for r in check_model(timm.create_model(name), transitions=required_transitions(name))}
    assert [n for n, ok in rules.items() if not ok] == []
    style = required_transitions(name)
    assert (f"transitions ({style})" in rules) if style else not any(n.startswith("transitions") for n in rules)


def test_each_net_declares_its_transition_style_where_it_is_registered():
    # the _strided/_dilated part of every registered name (s7_strided_v1 too), read independently of the registry
    by_name = {n: next((s for s in ("strided", "dilated") if f"_{s}" in n), None) for n in models.ALL_NAMES}
    assert {n: required_transitions(n) for n in models.ALL_NAMES} == by_name
    assert {"s7_strided_v1", "s7_dilated_v1"} <= set(by_name)
    assert {"s7_cand_a_strided", "s7_cand_a_dilated"} <= set(models.ALL_NAMES)  # the candidates are checked too
    assert required_transitions("tests.test_rules:Toy") is None
    assert set(models.MODEL_NAMES) == {"s7", "s7_strided", "s7_dilated"}


def test_strided_rule_rejects_a_dilated_net():
    assert _failed(timm.create_model("s7_dilated"), transitions="strided") == {"transitions (strided)"}


def test_dilated_rule_rejects_a_strided_net():
    assert _failed(timm.create_model("s7_strided"), transitions="dilated") == {"transitions (dilated)"}


def test_check_command_exit_codes(capsys):
    assert s7_main(["check", "s7_dilated"]) == 0
    out = capsys.readouterr().out
    assert "ALL PASS (97,758 parameters)" in out and "| transitions (dilated) | no stride > 1 |" in out
    assert s7_main(["check", "tests.test_rules:MaxPoolToy"]) == 1
    assert "| MaxPool | none | 1: pool (MaxPool2d) | FAIL |" in capsys.readouterr().out


def test_unknown_model_is_a_one_line_error(capsys):
    assert s7_main(["check", "resnet9000"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: unknown model 'resnet9000'")
    with pytest.raises(ValueError, match="cannot load model"):
        load_model("no_such_module:Net")


def test_summary_command_prints_torchinfo_table(capsys):
    assert s7_main(["summary", "s7"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 95,162" in out and "[1, 10]" in out


class MaxPoolToy(Toy):
    def __init__(self):
        super().__init__(maxpool=True)
