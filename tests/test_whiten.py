"""--whiten: the first conv starts as the whitening transform of the training patches and stays frozen."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

import models  # noqa: F401  (registers the nets)
from runs import flags, train_in_process
from trainer.dataset import channel_stats, load_data
from trainer.whiten import first_conv, whiten_first_conv


def correlated_images(n: int = 200, seed: int = 0) -> np.ndarray:
    """uint8 NHWC images whose neighbouring pixels and channels are strongly correlated, as in photographs."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 8, 8, 1)).repeat(4, axis=1).repeat(4, axis=2)  # 4x4 blocks: neighbours agree
    x = base + 0.3 * rng.normal(size=(n, 32, 32, 3)) + np.array([0.0, 0.5, -0.5])
    return np.clip(128 + 40 * x, 0, 255).astype(np.uint8)


def patches_by_hand(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Every 3x3 patch of the normalised images, flattened as (channel, row, column), by plain slicing."""
    x = ((images.astype(np.float64) - mean) / std).transpose(0, 3, 1, 2)  # N C H W
    rows = [x[:, :, i:i + 3, j:j + 3].reshape(len(x), -1) for i in range(30) for j in range(30)]
    return np.concatenate(rows)


def test_the_whitened_first_conv_gives_uncorrelated_unit_variance_responses_and_is_frozen():
    images = correlated_images()
    mean, std = channel_stats(images)
    net = timm.create_model("s7")
    conv = whiten_first_conv(net, images, mean, std)
    assert conv is first_conv(net) and not conv.weight.requires_grad
    half = conv.out_channels // 2
    w = conv.weight.detach().double().reshape(conv.out_channels, -1).numpy()
    responses = patches_by_hand(images, mean, std) @ w[:half].T
    cov = np.cov(responses, rowvar=False)
    assert np.abs(cov - np.eye(half)).max() < 0.02  # white: each component unit variance, none correlated
    np.testing.assert_allclose(w[half:], -w[:half])  # each filter with both signs
    raw = np.cov(patches_by_hand(images, mean, std), rowvar=False)
    assert np.abs(raw - np.diag(np.diag(raw))).max() > 0.5  # precondition: the raw patches were correlated
    variances = np.diag(np.cov(patches_by_hand(images, mean, std) @ (w[:half] / np.linalg.norm(w[:half], axis=1,
                                                                                              keepdims=True)).T,
                               rowvar=False))
    assert np.all(np.diff(variances) <= 1e-9)  # the strongest directions of the data come first


@pytest.mark.slow
def test_a_whitened_run_trains_with_the_first_conv_left_as_the_training_patches_whitening(data, tmp_path):
    assert train_in_process(flags(data, tmp_path, "w", "--whiten", "true", epochs=2)) == 0
    shipped = load_file(str(tmp_path / "w" / "model" / "model.safetensors"))
    train = load_data(str(data.tree), str(data.cache))
    expected = timm.create_model("s7")
    whiten_first_conv(expected, train.train_x, *channel_stats(train.train_x), seed=0)
    # after every optimizer step and weight decay the filters are still exactly those of the training images
    torch.testing.assert_close(shipped["c1.0.0.weight"], first_conv(expected).weight.detach())
    untouched = timm.create_model("s7")
    assert not torch.allclose(shipped["c1.0.0.weight"], first_conv(untouched).weight)  # precondition: not the init
    assert "whiten: true" in (tmp_path / "w" / "config.yaml").read_text()
