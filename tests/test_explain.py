"""Class activation maps (trainer/tools/explain.py): the map entering GAP averages to the logit, a net whose evidence is
local puts the map's peak where the evidence is, `s7 explain` draws and labels what it says, and each run's report
gains a grid of its most confident mistakes with their maps."""
from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image
from torch import nn

import models
from trainer.tools import cli
from trainer.checkpoint import save_weights
from trainer.tools.evaluate import logits_batches
from trainer.tools.explain import class_maps, image_maps, upsample
from trainer.runfolder import save_predictions
from trainer.tools.report import _mistake_maps_section, build_report

MEAN, STD = [100.0] * 3, [60.0] * 3  # pixel units, as a run's meta stores them
CLASSES = ["red", "blue"]
COLOURS = np.array([[230, 40, 40], [40, 40, 230]], dtype=np.uint8)
CORNERS = [(0, 0), (0, 24), (24, 0), (24, 24)]  # top-left pixel of an 8x8 blob


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_the_class_map_averages_to_the_logit_gap_produces(name):
    model = timm.create_model(name, pretrained=True).eval()  # the shipped weights (a local file)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x)  # the net's own forward pass, through GAP, no hook
    _, maps = class_maps(model, x)
    assert maps.shape[:2] == logits.shape and maps.shape[2] > 1 and maps.shape[3] > 1
    assert maps.std(dim=(2, 3)).min() > 1e-3  # a real map, not the logit broadcast over the cells
    torch.testing.assert_close(maps.mean(dim=(2, 3)), logits, rtol=1e-5, atol=1e-5)


@functools.cache
@torch.no_grad()
def colour_detector(name: str) -> nn.Module:
    """The registered net, with weights set by hand so that the red logit's map is the image's redness and the
    blue logit's its blueness, place by place: the first conv computes R - (G + B) / 2 and B - (R + G) / 2
    (centre tap), every later conv passes channels through (centre tap, identity 1x1), BN is the identity, and
    the head maps channel 0 to red, 1 to blue. Evidence is local by construction."""
    model = timm.create_model(name, num_classes=2)
    first = True
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.fill_(1.0), m.bias.zero_(), m.running_mean.zero_(), m.running_var.fill_(1.0)
        elif isinstance(m, nn.Conv2d):
            m.weight.zero_()
            if m.bias is not None:
                m.bias.zero_()
            k = m.kernel_size[0] // 2
            if first:
                m.weight[0, :, k, k] = torch.tensor([1.0, -0.5, -0.5])
                m.weight[1, :, k, k] = torch.tensor([-0.5, -0.5, 1.0])
                first = False
            elif m.groups == m.in_channels > 1:
                m.weight[:, 0, k, k] = 1.0
            else:
                for i in range(min(m.in_channels, m.out_channels)):
                    m.weight[i, i, k, k] = 1.0
    return model.eval()


def blob_images(n: int, corner: tuple[int, int], cls: int, seed: int = 0) -> np.ndarray:
    """Gray noise (no colour: no evidence for either class) with an 8x8 blob of the class's colour at `corner`."""
    x = np.random.default_rng(seed).integers(60, 140, (n, 32, 32, 1)).repeat(3, axis=3).astype(np.uint8)
    x[:, corner[0]:corner[0] + 8, corner[1]:corner[1] + 8] = COLOURS[cls]
    return x


# s7_dilated is left out: its unpadded transitions leave 4x4 cells that lie 1 px apart at the image centre,
# so no map of it can point at a corner (trainer/tools/explain.py says so).
@pytest.mark.parametrize("name", ["s7", "s7_strided"])
@pytest.mark.parametrize("corner", CORNERS)
@pytest.mark.parametrize("cls", [0, 1])
def test_evidence_planted_in_a_corner_puts_the_maps_peak_there(name, corner, cls):
    _, idx, maps = image_maps(colour_detector(name), blob_images(3, corner, cls), MEAN, STD, top=1)
    assert (idx[:, 0] == cls).all()  # the blob's colour wins
    for m in maps[:, 0]:
        r, c = np.unravel_index(m.argmax(), m.shape)
        assert corner[0] <= r < corner[0] + 8 and corner[1] <= c < corner[1] + 8, (r, c)


def test_upsampling_keeps_a_cell_at_its_place():
    """One hot cell of an 8x8 map lands on its 4x4 patch of the 32x32 image (bilinear, centres aligned)."""
    maps = torch.zeros(1, 1, 8, 8)
    maps[0, 0, 6, 1] = 1.0
    up = upsample(maps)[0, 0]
    r, c = divmod(int(up.argmax()), 32)
    assert 24 <= r < 28 and 4 <= c < 8


# ---------------------------------------------------------------- s7 explain

@pytest.fixture(scope="module")
def detector_weights(tmp_path_factory):
    """The s7 colour detector saved as a run's shipped weights would be."""
    folder = tmp_path_factory.mktemp("detector") / "model"
    save_weights(colour_detector("s7"), folder, {"model": "s7", "epoch": 1, "classes": CLASSES, "mean": MEAN,
                                                 "std": STD})
    return folder / "model.safetensors"


def test_explain_prints_the_class_and_draws_the_grid_with_true_class_from_the_folder(detector_weights, tmp_path,
                                                                                     capsys):
    paths = []
    for folder, cls, corner in (("red", 0, (0, 0)), ("blue", 1, (24, 24)), ("unsorted", 0, (0, 24))):
        (tmp_path / folder).mkdir()
        paths.append(tmp_path / folder / f"{cls}.png")
        Image.fromarray(blob_images(1, corner, cls)[0]).save(paths[-1])
    out = tmp_path / "cam.png"
    assert cli.main(["explain", str(detector_weights), *map(str, paths), "--out", str(out), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{paths[0]}: red (") and lines[0].endswith(", true red")
    assert lines[1].startswith(f"{paths[1]}: blue (") and lines[1].endswith(", true blue")
    assert lines[2].startswith(f"{paths[2]}: red (") and "true" not in lines[2]  # folder is not a class name
    assert lines[3] == str(out)
    with Image.open(out) as img:  # two images a row, each with 1 + 2 panels
        assert img.width > img.height > 200


def test_explain_takes_labels_and_refuses_bad_ones_in_one_line(detector_weights, tmp_path, capsys):
    img = tmp_path / "x.png"
    Image.fromarray(blob_images(1, (0, 0), 1)[0]).save(img)
    assert cli.main(["explain", str(detector_weights), str(img), "--out", str(tmp_path / "a.png"),
                     "--labels", "red"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith(f"{img}: blue (") and line.endswith(", true red")  # --labels, not the folder
    for argv, message in (([str(img), "--labels", "red,blue"], "--labels: 2 labels for 1 images"),
                          ([str(img), "--labels", "green"], "--labels: 'green' is not a class"),
                          ([str(img), "--top", "4"], "--top 4: must be 1, 2 or 3")):
        assert cli.main(["explain", str(detector_weights), *argv, "--out", str(tmp_path / "b.png")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "b.png").exists()


# ---------------------------------------------------------------- the run report

def make_detector_run(root, detector_weights, mistakes: bool = True) -> tuple:
    """A finished run folder: config, one epoch of metrics, the detector as shipped weights, and test
    predictions in which three red-blob images are labelled blue (mistakes of different confidence), or,
    without `mistakes`, all labelled right."""
    run = root / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "model.safetensors").write_bytes(detector_weights.read_bytes())
    (run / "model" / "meta.json").write_text(json.dumps({"model": "s7", "epoch": 1, "selected_by": "final epoch",
                                                         "classes": CLASSES, "mean": MEAN, "std": STD}))
    (run / "config.yaml").write_text(yaml.safe_dump({"model": "s7", "recipe": "s7", "target_acc": 87.0}))
    images = np.concatenate([blob_images(3, c, k, seed=i) for i, (c, k) in enumerate(
        [((0, 0), 0), ((24, 24), 1), ((0, 24), 0), ((24, 0), 1)])])
    images[2, :, :, 1] = 120  # dull the third red image: a less confident mistake
    labels = np.array([1 if mistakes else 0] * 3 + [1, 1, 1, 0, 0, 0, 1, 1, 1])  # 0-2: red blobs
    probs = torch.from_numpy(logits_batches(colour_detector("s7"), images, MEAN, STD)).softmax(1).numpy()
    preds = probs.argmax(1)
    acc = 100.0 * float((preds == labels).mean())
    row = {"epoch": 1, "train_loss": 0.1, "train_acc": 99.0, "lr": 0.1, "test_loss": 0.5, "test_acc": acc,
           "test_loss_tta": 0.5, "test_acc_tta": acc, "test_images": len(labels), "epoch_seconds": 1.0,
           "wall_seconds": 2.0}
    (run / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    save_predictions(run, preds, labels, probs.max(1), images, CLASSES, n_wrong=25)
    return run, images, labels, preds, probs.max(1)


def test_report_draws_the_most_confident_mistakes_with_maps_of_predicted_and_true_class(detector_weights,
                                                                                        tmp_path):
    run, images, labels, preds, probs = make_detector_run(tmp_path, detector_weights)
    wrong = np.flatnonzero(preds != labels)
    assert set(wrong) == {0, 1, 2}  # precondition: the detector calls the red blobs red
    build_report(run)
    report = (run / "report.md").read_text()
    assert "![most confident mistakes with their class maps](mistake_maps.png)" in report
    assert (run / "mistake_maps.png").is_file()
    m = np.load(run / "mistake_maps.npz")
    expected = wrong[np.argsort(-probs[wrong], kind="stable")]
    np.testing.assert_array_equal(m["index"], expected)  # most confident first
    np.testing.assert_array_equal(m["images"], images[expected])
    np.testing.assert_array_equal(m["predicted"], [0, 0, 0])
    np.testing.assert_array_equal(m["true"], [1, 1, 1])
    x = (torch.from_numpy(images[expected]).permute(0, 3, 1, 2).float() - MEAN[0]) / STD[0]
    maps = upsample(class_maps(colour_detector("s7"), x)[1]).numpy()  # computed here, independently
    np.testing.assert_allclose(m["predicted_map"], maps[:, 0], atol=1e-5)
    np.testing.assert_allclose(m["true_map"], maps[:, 1], atol=1e-5)


def test_a_folder_without_weights_draws_from_the_saved_maps_or_says_why_not(detector_weights, tmp_path):
    run = make_detector_run(tmp_path, detector_weights)[0]
    section = _mistake_maps_section(run)  # what build_report puts in report.md
    assert "mistake_maps.png" in section
    kept = np.load(run / "mistake_maps.npz")["predicted_map"]
    (run / "model" / "model.safetensors").unlink()
    (run / "mistake_maps.png").unlink()
    assert _mistake_maps_section(run) == section  # drawn again from mistake_maps.npz alone
    assert (run / "mistake_maps.png").is_file()
    np.testing.assert_array_equal(np.load(run / "mistake_maps.npz")["predicted_map"], kept)
    (run / "mistake_maps.npz").unlink()
    (run / "mistake_maps.png").unlink()
    assert _mistake_maps_section(run).startswith("(no class maps: the run folder has no predictions.npz or no "
                                                 "shipped weights")
    assert not (run / "mistake_maps.png").exists()


def test_a_run_without_mistakes_says_so_instead_of_a_grid(detector_weights, tmp_path):
    run = make_detector_run(tmp_path, detector_weights, mistakes=False)[0]
    (run / "mistake_maps.png").write_bytes(b"left from an earlier build")
    assert _mistake_maps_section(run) == "(no misclassified test images: no class maps to show)"
    assert len(np.load(run / "mistake_maps.npz")["index"]) == 0 and not (run / "mistake_maps.png").exists()
