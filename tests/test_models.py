"""The three s7 nets: registered in timm, shaped as specified, under budget."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import models
from models.receptive_field import rf_table

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize("name", ["s7_dilated", "s7_dilated_v1"])
def test_dilated_net_has_no_stride_and_shrinks_by_unpadded_dilation(name):
    net = timm.create_model(name)
    assert _map_sizes(net) == [32, 28, 20, 4]
    assert all(r.stride == 1 for r in rf_table(net))


def test_headline_net_keeps_c3_at_16x16_and_c4_at_8x8():
    assert _map_sizes(timm.create_model("s7")) == [32, 16, 16, 8]
    assert _map_sizes(timm.create_model("s7_v1")) == [32, 16, 8, 8]


@pytest.mark.parametrize("net,candidate", [("s7", "s7_cand_d"), ("s7_strided", "s7_cand_d_strided"),
                                           ("s7_dilated", "s7_cand_a_dilated")])
def test_a_promoted_candidate_builds_its_nets_weights_seed_for_seed(net, candidate):
    """The runs made under a candidate's name are runs of the net it became: same layers, same initial weights."""
    built = []
    for name in (net, candidate):
        torch.manual_seed(3)
        built.append(timm.create_model(name).state_dict())
    assert built[0].keys() == built[1].keys()
    assert all(torch.equal(built[0][k], built[1][k]) for k in built[0])


def test_candidate_e_is_s7_with_each_of_its_14_relus_a_gelu():
    """Counted by hand from build_s7: C1's conv and BasicBlock (2), T1 (1), C2 and C3's BasicBlocks (2 each), T3's
    depthwise-separable conv (2), C4's residual DS block (2 + 1 + the one after the sum): 14 activations."""
    from timm.layers import GELU

    nets = []
    for name in ("s7", "s7_cand_e"):
        torch.manual_seed(5)
        nets.append(timm.create_model(name))
    s7, cand_e = nets
    assert sum(isinstance(m, nn.ReLU) for m in s7.modules()) == 14
    assert sum(isinstance(m, GELU) for m in cand_e.modules()) == 14
    assert not any(isinstance(m, nn.ReLU) for m in cand_e.modules())
    assert all(torch.equal(a, b) for a, b in zip(s7.state_dict().values(), cand_e.state_dict().values()))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(s7.eval()(x), cand_e.eval()(x))


@pytest.mark.parametrize("old,run", [("s7_v1", "archive/make-train-cpu-s7v1"),
                                     ("s7_strided_v1", "archive/s7_strided-cpu-v1"),
                                     ("s7_dilated_v1", "archive/s7_dilated-cpu-v1")])
def test_a_replaced_layout_still_builds_the_net_of_its_archived_run(old, run):
    from trainer.runfolder import read_facts

    facts = read_facts(ROOT / "results" / run)
    net = timm.create_model(old)
    assert sum(p.numel() for p in net.parameters()) == facts["parameters"]
    assert rf_table(net)[-1].rf == facts["receptive_field"]


def test_num_classes_changes_only_the_head():
    net = timm.create_model("s7", num_classes=7)
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 7)
    shapes7 = {k: v.shape for k, v in net.state_dict().items()}
    shapes10 = {k: v.shape for k, v in timm.create_model("s7", num_classes=10).state_dict().items()}
    assert shapes7.keys() == shapes10.keys()
    assert {k for k in shapes7 if shapes7[k] != shapes10[k]} == {"head.classifier.weight", "head.classifier.bias"}

@pytest.mark.parametrize("name,transitions", [
    ("s7_cand_a", None), ("s7_cand_b", None), ("s7_cand_c", None), ("s7_cand_d", None), ("s7_cand_e", None),
    ("s7_cand_d_strided", "strided"), ("s7_cand_a_strided", "strided"), ("s7_cand_a_dilated", "dilated")])
def test_issue9_candidates_pass_every_rule_and_stay_under_100k(name, transitions):
    from models.rules import check_model

    net = timm.create_model(name, num_classes=10)
    failed = [r.name for r in check_model(net, transitions=transitions) if not r.passed]
    assert failed == [] and sum(p.numel() for p in net.parameters()) < 100_000
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_nets_behave_like_timm_classifiers(name):
    from models.rules import check_model, required_transitions

    net = timm.create_model(name, num_classes=100).eval()
    assert net.num_classes == 100 and net.get_classifier().out_channels == 100
    # The 100,000 budget is the assignment's for ten classes; a 100-class head adds 90 x (features + bias).
    failed = [r.name for r in check_model(net, num_classes=100, transitions=required_transitions(name))
              if not r.passed]
    assert failed in ([], ["parameters"])
    ten = sum(p.numel() for p in timm.create_model(name, num_classes=10).parameters())
    assert sum(p.numel() for p in net.parameters()) == ten + 90 * (net.num_features + 1)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = net.forward_features(x)
        pooled = net.forward_head(feats, pre_logits=True)
        logits = net(x)
    assert feats.dim() == 4 and pooled.shape == (2, net.num_features)
    # the 1x1 conv before GAP equals a linear layer after it: logits computed a second way from the pooled features
    w = net.get_classifier().weight.flatten(1)
    assert torch.allclose(logits, pooled @ w.T + net.get_classifier().bias, atol=1e-5)
    net.reset_classifier(7)
    assert net.num_classes == 7 and net(x).shape == (2, 7)
    net.reset_classifier(0)
    assert net.num_classes == 0 and net(x).shape == (2, net.num_features)
    with pytest.raises(ValueError, match="average"):
        net.reset_classifier(10, global_pool="max")
    assert timm.data.resolve_data_config({}, model=net)["input_size"] == (3, 32, 32)
    opt = timm.optim.create_optimizer_v2(net, "sgd", lr=0.1, weight_decay=5e-4)
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(p.numel() for p in net.parameters())


def test_importing_models_opens_no_weights_file_and_building_a_net_reads_its_statistics():
    # a fresh interpreter, so `models` is really imported; safetensors' opener is wrapped to record each file
    code = ("import safetensors, json; seen = []; real = safetensors.safe_open\n"
            "safetensors.safe_open = lambda f, *a, **k: seen.append(str(f)) or real(f, *a, **k)\n"
            "import models; at_import = list(seen); import timm\n"
            "cfg = timm.create_model('s7_strided').pretrained_cfg\n"
            "print(json.dumps([at_import, seen, list(cfg['mean'])]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    at_import, seen, mean = json.loads(out.stdout.splitlines()[-1])
    assert at_import == [] and [Path(f).name for f in seen] == ["s7_strided.safetensors"]
    assert mean != pytest.approx(list(models.nets.CIFAR10_MEAN))  # the JPEG copy's own, from the file
