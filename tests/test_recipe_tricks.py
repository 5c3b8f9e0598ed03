"""Issue 16's fast-training config fields, each shown applied: --identity-init, --ema-every, --tta-shift and
--aug-ramp-epochs (the BatchNorm ones are in test_training_options.py, --whiten in test_whiten.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from timm.utils import ModelEmaV3
from torch import nn

import models  # noqa: F401  (registers the nets)
from runs import cached_run
from trainer.augment import build_train_transform
from trainer.config import TrainConfig
from trainer.dataset import load_data
from trainer.loader import AugmentedDataset, make_loader
from trainer.loop import shifted, train_one_epoch
from trainer.runfolder import read_metrics
from trainer.runstart import build_model
from trainer.tools.evaluate import evaluate_command, load_classifier


# ---------------------------------------------------------------- --identity-init

def tap_of_centre(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """What an identity conv must output: each input channel read at the kernel centre's tap of every output
    position (stride, padding and dilation applied by hand), zero where that tap falls in the padding."""
    (ph, pw), (sh, sw), (dh, dw) = conv.padding, conv.stride, conv.dilation
    kh, kw = conv.kernel_size
    padded = nn.functional.pad(x, (pw, pw, ph, ph))
    out_h = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    top, left = dh * (kh // 2), dw * (kw // 2)
    return padded[:, :, top:top + sh * out_h:sh, left:left + sw * out_w:sw]


def test_identity_init_makes_every_conv_but_the_classifier_pass_its_input_on_and_leaves_the_rest_as_drawn():
    torch.manual_seed(0)
    drawn, _ = build_model(TrainConfig(model="s7"), 10)
    torch.manual_seed(0)
    net, _ = build_model(TrainConfig(model="s7", identity_init=True), 10)
    head = net.get_classifier()
    convs = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) > 12
    before = dict(drawn.named_modules())
    for name, conv in convs:
        w, w0 = conv.weight.detach(), before[name].weight.detach()
        if conv is head:
            assert torch.equal(w, w0), name
            continue
        x = torch.randn(2, conv.in_channels, 12, 12)
        with torch.no_grad():
            y = nn.functional.conv2d(x, w, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        k = min(conv.out_channels, conv.in_channels)
        assert torch.allclose(y[:, :k], tap_of_centre(conv, x)[:, :k], atol=1e-6), name
        assert torch.equal(w[k:], w0[k:]), name  # widening convs: the extra filters keep their random init


# ---------------------------------------------------------------- --ema-every

def test_ema_every_k_steps_averages_the_weights_of_exactly_those_steps_of_the_run():
    """decay 0.5, no warm-up, an update every 3rd step of the run: the first update takes the weights as they
    are (ModelEmaV3's update 1), so after steps 3 and 6 the average is (w3 + w6) / 2, worked out from the weights
    recorded after each step; a second epoch that starts at step 6 (as after a resume) updates at 9 and 12."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 6, 6))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    ema = ModelEmaV3(model, decay=0.5, use_warmup=False)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, 256, (4, 3, 6, 6), generator=g, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]))
               for _ in range(6)]
    weights = [model[0].weight.detach().clone()]
    record = lambda *step: weights.append(model[0].weight.detach().clone())  # noqa: E731
    accelerator = Accelerator(cpu=True)
    for epoch in (1, 2):
        train_one_epoch(accelerator, model, batches, optimizer, scheduler, nn.CrossEntropyLoss(), [128.0] * 3,
                        [64.0] * 3, epoch=epoch, channels_last=False, ema=ema, ema_step=(epoch - 1) * 6,
                        ema_every=3, on_step=record)
        if epoch == 1:
            expected = (weights[3] + weights[6]) / 2
        else:
            expected = ((expected + weights[9]) / 2 + weights[12]) / 2
        assert torch.allclose(ema.module[0].weight, expected, atol=1e-6), epoch
    assert not torch.allclose(weights[12], weights[11])  # the weights moved at every step, not only the averaged


# ---------------------------------------------------------------- --tta-shift

def test_a_shifted_batch_moves_its_content_and_reflects_the_border():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    down = shifted(x, 1)
    assert torch.equal(down[:, :, 1:, 1:], x[:, :, :-1, :-1])  # moved one down and one right
    assert torch.equal(down[:, :, 0, 1:], x[:, :, 1, :-1])      # the new top row mirrors row 1
    up = shifted(x, -2)
    assert torch.equal(up[:, :, :-2, :-2], x[:, :, 2:, 2:])
    assert torch.equal(up[:, :, -1, :-2], x[:, :, 2, 2:])       # reflected about the last row: row 4 - 2
    nhwc = shifted(x.contiguous(memory_format=torch.channels_last), 1)
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and torch.equal(nhwc, down)


def moved_by_hand(images: np.ndarray, d: int) -> np.ndarray:
    """uint8 NHWC images moved d px down and right, border mirrored (numpy's reflect: the edge not repeated)."""
    p = abs(d)
    padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
    return padded[:, p - d:p - d + images.shape[1], p - d:p - d + images.shape[2]]


@pytest.fixture(scope="module")
def tricks_run(data):
    """Two epochs with every trick of this file on."""
    return cached_run(data, "tricks", "--tta-shift", "1", "--ema-decay", "0.5", "--ema-every", "4",
                      "--identity-init", "true", "--aug-ramp-epochs", "1", "--train-subset", "300", epochs=2)


@pytest.mark.slow
def test_shift_tta_figures_are_those_of_the_six_views_counted_by_hand(tricks_run, data, capsys):
    row = read_metrics(tricks_run)[-1]
    model, meta = load_classifier(str(tricks_run))  # the shipped (final, averaged) weights
    d = load_data(str(data.tree), str(data.cache))
    mean, std = np.asarray(meta["mean"], np.float32), np.asarray(meta["std"], np.float32)
    logits = {}
    with torch.no_grad():
        for shift in (0, 1, -1):
            for flip in (False, True):
                views = moved_by_hand(d.test_x, shift)[:, :, ::-1] if flip else moved_by_hand(d.test_x, shift)
                x = torch.from_numpy(((views.astype(np.float32) - mean) / std).transpose(0, 3, 1, 2).copy())
                logits[shift, flip] = model(x).double()
    tta = sum(logits[0, f] for f in (False, True)) / 4 + sum(logits[s, f] for s in (1, -1) for f in (False, True)) / 8
    labels = torch.from_numpy(d.test_y)
    assert row["test_loss_tta_shift"] == pytest.approx(nn.functional.cross_entropy(tta, labels).item(), rel=1e-4)
    assert row["test_acc_tta_shift"] == pytest.approx(100.0 * (tta.argmax(1) == labels).double().mean().item())

    capsys.readouterr()
    assert evaluate_command(str(tricks_run), str(data.tree), str(data.cache), None, 64, tta_shift=1) == 0
    line = capsys.readouterr().out.splitlines()[0]
    right = int((tta.argmax(1) == labels).sum())
    assert f"with flip and ±1 px shift TTA {100.0 * right / len(labels):.2f}% ({right}/{len(labels)})" in line
    report = (tricks_run / "report.md").read_text()
    assert f"| final test accuracy, flip and ±1 px shift TTA | {row['test_acc_tta_shift']:.2f}% |" in report
    assert "--aug-ramp-epochs 1" in (tricks_run / "augmentation.txt").read_text()


# ---------------------------------------------------------------- --aug-ramp-epochs

def test_ramped_hole_probability_reaches_the_forked_workers_epoch_by_epoch(tmp_path):
    """Only the hole (p 1 once ramped up), ramp over 2 epochs: epoch 1 leaves every image as it is, epoch 2
    holes about half of them, epoch 3 all; counted from the images one forked worker hands over."""
    from functools import partial

    from trainer.augment import ramped_probabilities

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(200, 32, 32, 3), dtype=np.uint8)
    probabilities = dict(flip_p=0.0, ssr_p=0.0, dropout_p=1.0, gray_p=0.0)
    transform = build_train_transform([128.0] * 3, **probabilities)
    ds = AugmentedDataset(images, np.zeros(200), transform, schedule=partial(ramped_probabilities, probabilities, 2))
    loader = make_loader(ds, 50, shuffle=False, workers=1)
    changed = []
    for epoch in (1, 2, 3):
        ds.set_epoch(epoch)
        out = torch.cat([x for x, _ in loader]).permute(0, 2, 3, 1).numpy()
        changed.append(int((out != images).any(axis=(1, 2, 3)).sum()))
    assert changed[0] == 0 and changed[2] == 200
    assert 60 <= changed[1] <= 140, changed
