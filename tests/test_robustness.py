"""`s7 robustness` (trainer/tools/robustness.py): severity 0 is the clean image, every corruption's accuracy falls as its
severity rises on a task built to show it, the noise is seeded (two runs, one result), and the command writes the
table, JSON and plot."""
from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import synthetic
from trainer.tools import cli
from trainer.checkpoint import save_weights
from trainer.tools.evaluate import logits_batches, predict_batches
from trainer.tools.robustness import CORRUPTIONS, SEVERITIES, corrupt, robustness

PIXELS = [0.0] * 3, [255.0] * 3  # mean, std: the detector sees 0-1 pixels


class TextureDetector(nn.Module):
    """Says "textured" when the mean absolute difference between the gray image and its 3x3 local mean (fine
    detail) is above a threshold: what noise adds and blur, pixelation, JPEG, low contrast and clipping take."""

    def __init__(self, threshold: float = 0.02) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = x.mean(1, keepdim=True)
        detail = (g - F.avg_pool2d(g, 3, 1, 1, count_include_pad=False)).abs().mean((1, 2, 3))
        return torch.stack([self.threshold - detail, detail - self.threshold], 1)


def texture_task(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth gray gradients (class 0), and the same with a checkerboard of 1-3 px cells and random amplitude
    on top (class 1): fine texture of varied size and strength, so corruptions take it away by degrees."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    ramp, idx = np.linspace(-1, 1, 32), np.arange(32)
    x = np.empty((n, 32, 32, 3), np.uint8)
    for i in range(n):
        img = rng.uniform(140, 190) + rng.uniform(-20, 20) * ramp[None, :] + rng.uniform(-20, 20) * ramp[:, None]
        if y[i]:
            cell = rng.choice([1, 2, 3])
            img = img + rng.uniform(15, 45) * np.where((idx[:, None] // cell + idx // cell) % 2 == 0, 1.0, -1.0)
        x[i] = np.clip(img, 0, 255).round().astype(np.uint8)[..., None]
    return x, y


@pytest.fixture(scope="module")
def task():
    return texture_task()


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severity_0_is_the_clean_image_and_gives_the_clean_accuracy(name, task):
    x, y = task
    model = TextureDetector()
    zero = corrupt(x, name, 0, seed=0)
    np.testing.assert_array_equal(zero, x)
    clean = 100.0 * float((predict_batches(model, x, *PIXELS)[0].argmax(1) == y).mean())  # `s7 evaluate`'s path
    assert 100.0 * float((logits_batches(model, zero, *PIXELS).argmax(1) == y).mean()) == clean
    assert robustness(model, *PIXELS, x[:20], y[:20])["clean"] == 100.0 * float(
        (predict_batches(model, x[:20], *PIXELS)[0].argmax(1) == y[:20]).mean())


def test_accuracy_falls_as_severity_rises_on_a_texture_task(task):
    x, y = task
    r = robustness(TextureDetector(), *PIXELS, x, y, seed=0)
    assert r["clean"] == 100.0  # precondition: the detector solves the clean task
    for name, row in r["corruptions"].items():
        ladder = [r["clean"], *row["accuracy"]]
        assert all(a >= b for a, b in zip(ladder, ladder[1:])), (name, ladder)
        # JPEG keeps the coarser checkers well (and its block edges add detail of their own): a smaller fall
        assert ladder[-1] <= ladder[0] - (1 if name == "jpeg" else 20), (name, ladder)
    cells = [(a, n, s) for n, row in r["corruptions"].items() for s, a in zip(SEVERITIES, row["accuracy"])]
    assert r["mean_corruption"] == pytest.approx(np.mean([c[0] for c in cells]))
    assert (r["worst"]["accuracy"], r["worst"]["corruption"], r["worst"]["severity"]) == min(cells)


def test_two_runs_give_the_same_numbers_and_the_seed_drives_the_noise(task):
    x, y = task
    assert robustness(TextureDetector(0.03), *PIXELS, x, y, seed=5) == robustness(TextureDetector(0.03), *PIXELS,
                                                                                   x, y, seed=5)
    first = corrupt(x[:8], "gaussian_noise", 2, seed=5)
    corrupt(x[:8], "gaussian_noise", 3, seed=5)  # another draw in between changes nothing
    np.testing.assert_array_equal(corrupt(x[:8], "gaussian_noise", 2, seed=5), first)
    assert not np.array_equal(corrupt(x[:8], "gaussian_noise", 2, seed=6), first)
    for name in CORRUPTIONS:  # and every severity really changes the image
        for s in SEVERITIES:
            assert not np.array_equal(corrupt(x[:8], name, s, seed=5), x[:8]), (name, s)


def test_robustness_command_writes_table_json_and_plot(tmp_path, capsys):
    tree = synthetic.write_tree(tmp_path / "tree", n_train=2, n_test=8, seed=1)
    torch.manual_seed(0)
    model = timm.create_model("s7", num_classes=3).eval()
    meta = {"model": "s7", "classes": list(synthetic.CLASSES), "mean": [60.0] * 3, "std": [50.0] * 3}
    save_weights(model, tmp_path / "w", meta)
    argv = ["robustness", str(tmp_path / "w" / "model.safetensors"), "--data", str(tree), "--data-dir",
            str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--limit", "12"]
    assert cli.main(argv) == 0
    r = json.loads((tmp_path / "out" / "s7.json").read_text())
    assert r["test_images"] == 12 and r["data"].startswith(str(tree)) and set(r["corruptions"]) == set(CORRUPTIONS)
    from trainer.dataset import load_data, subset

    d = load_data(str(tree), str(tmp_path / "cache"))
    x, y = subset(d.test_x, d.test_y, 12)
    assert r["clean"] == 100.0 * float((logits_batches(model, x, meta["mean"], meta["std"]).argmax(1) == y).mean())
    md = (tmp_path / "out" / "s7.md").read_text()
    assert "| gaussian_noise | std / 255 |" in md and f"Clean {r['clean']:.2f}%" in md
    assert (tmp_path / "out" / "s7.png").stat().st_size > 1000
    assert "wrote" in capsys.readouterr().out
    assert cli.main([*argv[:-2], "--limit", "-1"]) == 2
    assert capsys.readouterr().err == "error: --limit -1: must be 0 (all) or more\n"
