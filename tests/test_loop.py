"""The device side of the input pipeline: normalisation of uint8 batches."""
import numpy as np
import torch

from trainer.loop import normalize


def test_normalize_matches_numpy_on_a_uint8_nchw_batch():
    x = np.random.default_rng(1).integers(0, 256, (4, 3, 5, 6), dtype=np.uint8)
    mean, std = (125.3, 123.0, 113.9), (63.0, 62.1, 66.7)
    got = normalize(torch.from_numpy(x), mean, std)
    want = (x.astype(np.float64) - np.array(mean)[None, :, None, None]) / np.array(std)[None, :, None, None]
    assert got.dtype == torch.float32 and got.device == torch.device("cpu")
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-5)


# ---------------------------------------------------------------- the training epoch stays off the host

import pytest  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from torch import nn  # noqa: E402

from trainer.loop import NonFiniteLoss, train_one_epoch  # noqa: E402

HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy")


def tiny_epoch(steps: int, criterion=None, seed: int = 0):
    """One epoch of a small conv net on `steps` random uint8 batches of 8 (batch sizes vary: 8 and 5)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    g = torch.Generator().manual_seed(seed)
    loader = [(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g),
               torch.randint(0, 3, (n,), generator=g)) for n in [8] * (steps - 1) + [5]]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps + 1)
    criterion = criterion or nn.CrossEntropyLoss(label_smoothing=0.1)
    return train_one_epoch(Accelerator(cpu=True), model, loader, opt, sched, criterion, [120.0] * 3, [60.0] * 3,
                           epoch=1, channels_last=False)


def test_epoch_loss_and_accuracy_equal_a_per_step_recount_on_the_host():
    seen = []
    inner = nn.CrossEntropyLoss(label_smoothing=0.1)

    def counted(logits, y):
        loss = inner(logits, y)
        seen.append((loss.item(), int((logits.argmax(1) == y).sum()), len(y)))  # the old per-step host reads
        return loss

    result = tiny_epoch(6, counted)
    n = sum(k for _, _, k in seen)
    assert result.images == n == 5 * 8 + 5
    assert result.loss == pytest.approx(sum(loss * k for loss, _, k in seen) / n, rel=1e-12)
    assert result.accuracy == pytest.approx(100.0 * sum(c for _, c, _ in seen) / n, rel=1e-12)


def counting_host_reads(monkeypatch) -> list[str]:
    """Every read of a tensor's value by the host (the calls that wait for a GPU), recorded by name."""
    calls: list[str] = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    return calls


def test_an_epoch_reads_the_device_the_same_few_times_however_many_steps_it_has(monkeypatch):
    calls = counting_host_reads(monkeypatch)
    tiny_epoch(3)
    short = list(calls)
    calls.clear()
    tiny_epoch(60)
    assert calls == short and 0 < len(short) <= 4, (short, len(calls))  # once per epoch: NaN flag, totals


def test_a_nan_step_is_caught_on_the_device_and_named_after_the_epoch(monkeypatch):
    inner = nn.CrossEntropyLoss()
    steps = []

    def poisoned(logits, y):
        steps.append(1)
        return inner(logits, y) * (float("nan") if len(steps) in (3, 5) else 1.0)

    with pytest.raises(NonFiniteLoss, match="non-finite loss at epoch 1, step 2 "):
        tiny_epoch(6, poisoned)
    assert len(steps) == 6  # found at the end of the epoch, from the flag kept on the device


# ---------------------------------------------------------------- the test pass: one forward per image unless TTA

from trainer.loop import validate  # noqa: E402


def counted_net_and_split(seed: int = 0):
    """A small eval-mode net that counts the images it is fed, and a split of 3 uint8 batches of 7."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    fed = []
    net.register_forward_pre_hook(lambda module, args: fed.append(len(args[0])))
    g = torch.Generator().manual_seed(seed)
    split = [(torch.randint(0, 256, (7, 3, 8, 8), dtype=torch.uint8, generator=g),
              torch.randint(0, 3, (7,), generator=g)) for _ in range(3)]
    return net, split, fed


def test_without_flip_the_pass_feeds_each_image_once_and_its_figures_match_a_recount():
    net, split, fed = counted_net_and_split()
    mean, std = [120.0] * 3, [60.0] * 3
    plain = validate(Accelerator(cpu=True), net, split, mean, std, channels_last=False, flip=False)
    assert sum(fed) == 21 and plain.loss_tta is None and plain.accuracy_tta is None
    fed.clear()
    both = validate(Accelerator(cpu=True), net, split, mean, std, channels_last=False)
    assert sum(fed) == 42  # the mirror is the second pass that flip=False spares
    with torch.no_grad():
        x = torch.cat([normalize(b, mean, std) for b, _ in split])
        y = torch.cat([t for _, t in split])
        logits = net(x)
        tta = (logits + net(x.flip(3))) / 2
    for result in (plain, both):  # the plain figures do not depend on whether the mirrors were measured
        assert result.accuracy == pytest.approx(100.0 * (logits.argmax(1) == y).double().mean().item())
        assert result.loss == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    assert both.accuracy_tta == pytest.approx(100.0 * (tta.argmax(1) == y).double().mean().item())
