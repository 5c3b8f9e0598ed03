"""The three s7 nets: registered in timm, shaped as specified, under budget."""
import pytest
import timm
import torch
from torch import nn

import models
from models.receptive_field import rf_table


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_registered_net_gives_logits_for_ten_classes_under_100k_params(name):
    net = timm.create_model(name, num_classes=10)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    n = sum(p.numel() for p in net.parameters())
    assert 90_000 < n < 100_000  # close to the budget: capacity is accuracy
    assert not any(isinstance(m, (nn.MaxPool2d, nn.Linear)) for m in net.modules())


def _map_sizes(net: nn.Module) -> list[int]:
    sizes = []
    for block in (net.c1, net.c2, net.c3, net.c4):
        block.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    net(torch.zeros(1, 3, 32, 32))
    return sizes


def test_strided_net_halves_the_map_three_times():
    assert _map_sizes(timm.create_model("s7_strided")) == [32, 16, 8, 4]


def test_dilated_net_has_no_stride_and_shrinks_by_unpadded_dilation():
    net = timm.create_model("s7_dilated")
    assert _map_sizes(net) == [32, 28, 20, 4]
    assert all(r.stride == 1 for r in rf_table(net))


def test_headline_net_keeps_c4_at_8x8():
    assert _map_sizes(timm.create_model("s7")) == [32, 16, 8, 8]


def test_num_classes_changes_only_the_head():
    net = timm.create_model("s7", num_classes=7)
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 7)
    shapes7 = {k: v.shape for k, v in net.state_dict().items()}
    shapes10 = {k: v.shape for k, v in timm.create_model("s7", num_classes=10).state_dict().items()}
    assert shapes7.keys() == shapes10.keys()
    assert {k for k in shapes7 if shapes7[k] != shapes10[k]} == {"head.classifier.weight", "head.classifier.bias"}

@pytest.mark.parametrize("name,transitions", [("s7_cand_a", None), ("s7_cand_b", None),
                                              ("s7_cand_a_strided", "strided"), ("s7_cand_a_dilated", "dilated")])
def test_issue9_candidates_pass_every_rule_and_stay_under_100k(name, transitions):
    from models.rules import check_model

    net = timm.create_model(name, num_classes=10)
    failed = [r.name for r in check_model(net, transitions=transitions) if not r.passed]
    assert failed == [] and sum(p.numel() for p in net.parameters()) < 100_000
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
