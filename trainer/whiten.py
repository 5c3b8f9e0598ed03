"""A whitened, frozen first convolution (the fast-CIFAR trick: the first layer starts as the whitening transform of
the training images' patches, so the net need not learn the pixel correlations first).

The filters are the eigenvectors of the covariance of the first conv's input patches (normalised images, the
conv's kernel, no padding), each scaled by 1/sqrt(eigenvalue + eps), largest eigenvalues first, and each used
with both signs: the ReLU after the conv's BatchNorm would otherwise drop half of every component.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

PATCH_IMAGES = 2000  # images whose patches (1.8 million) estimate the covariance: a 27x27 matrix needs far fewer


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The net's input convolution, as its timm pretrained config names it (`first_conv`), else the first Conv2d."""
    name = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    conv = model.get_submodule(name) if name else next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        raise ValueError(f"first conv {name!r} is not a plain nn.Conv2d")
    return conv


def patch_covariance(images: np.ndarray, mean: np.ndarray, std: np.ndarray, kernel: tuple[int, int],
                     dilation: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """Covariance (float64) of every kxk patch of the normalised uint8 NHWC `images`, patches flattened in the
    conv weight's (channel, row, column) order."""
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).double() - torch.as_tensor(mean).view(1, -1, 1, 1)) \
        / torch.as_tensor(std).view(1, -1, 1, 1)
    patches = nn.functional.unfold(x, kernel, dilation=dilation)  # N, C*k*k, L
    patches = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    patches = patches - patches.mean(0)
    return patches.T @ patches / len(patches)


def whitening_filters(cov: torch.Tensor, out_channels: int, kernel: tuple[int, int], in_channels: int,
                      eps: float = 5e-4) -> torch.Tensor:
    """`out_channels` filters: the top out_channels/2 eigenvectors of `cov`, scaled by 1/sqrt(eigenvalue + eps),
    then the same negated. Patches projected on them have unit variance per component (eps aside)."""
    if out_channels % 2 or out_channels // 2 > cov.shape[0]:
        raise ValueError(f"whitening needs an even number of filters of at most {2 * cov.shape[0]}, "
                         f"not {out_channels}")
    values, vectors = torch.linalg.eigh(cov)  # ascending
    top = vectors[:, -(out_channels // 2):].flip(1).T / (values[-(out_channels // 2):].flip(0) + eps).sqrt()[:, None]
    return torch.cat([top, -top]).reshape(out_channels, in_channels, *kernel).float()


def whiten_first_conv(model: nn.Module, images: np.ndarray, mean: np.ndarray, std: np.ndarray,
                      seed: int = 0) -> nn.Conv2d:
    """Set the first conv's weights to the whitening filters of (up to PATCH_IMAGES of) `images` and freeze them
    (bias, if any, zeroed and frozen too). Returns the conv."""
    conv = first_conv(model)
    pick = np.random.default_rng(seed).permutation(len(images))[:PATCH_IMAGES]
    cov = patch_covariance(images[np.sort(pick)], mean, std, conv.kernel_size, conv.dilation)
    with torch.no_grad():
        conv.weight.copy_(whitening_filters(cov, conv.out_channels, conv.kernel_size, conv.in_channels))
        if conv.bias is not None:
            conv.bias.zero_()
    for p in conv.parameters():
        p.requires_grad_(False)
    return conv
