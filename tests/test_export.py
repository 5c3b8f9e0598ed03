"""`s7 export` (trainer/tools/export.py): one ONNX file that takes uint8 RGB NHWC pixels, normalises them with the
statistics the weights were trained with and gives PyTorch's logits (to 1e-4) for any batch size; the README's
lines classify an image with onnxruntime alone; `--int8` writes a smaller static-quantised twin."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.tools import cli
from trainer.checkpoint import load_weights
from trainer.tools.evaluate import load_classifier, logits_batches, read_image
from trainer.tools.export import USAGE, onnx_logits, quantize_int8, session

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "models" / "weights" / "s7.safetensors"
SHARED = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
TOLERANCE = 1e-4  # largest absolute logit difference allowed between onnxruntime and PyTorch


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """The shipped s7, exported once by the command."""
    path = tmp_path_factory.mktemp("onnx") / "s7.onnx"
    assert cli.main(["export", str(WEIGHTS), "--onnx", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def shipped():
    return load_classifier(str(WEIGHTS))


def test_the_file_takes_uint8_nhwc_pixels_with_a_dynamic_batch_and_carries_classes_and_statistics(exported):
    sess = session(exported)
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("image", "tensor(uint8)", [32, 32, 3])
    assert isinstance(inp.shape[0], str) and out.name == "logits" and out.shape[0] == inp.shape[0]
    _, meta = load_weights(WEIGHTS)
    info = sess.get_modelmeta().custom_metadata_map
    assert info["classes"].split(",") == meta["classes"] and info["model"] == "s7"
    assert json.loads(info["mean"]) == meta["mean"] and json.loads(info["std"]) == meta["std"]


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_onnx_logits_equal_pytorchs_on_synthetic_pixels_at_any_batch_size(exported, shipped, batch):
    model, meta = shipped
    x = np.random.default_rng(batch).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    reference = logits_batches(model, x, meta["mean"], meta["std"])
    got = onnx_logits(session(exported), x)
    assert got.shape == (batch, 10)
    assert np.abs(got - reference).max() <= TOLERANCE
    np.testing.assert_array_equal(got.argmax(1), reference.argmax(1))


def test_the_readme_lines_classify_an_image_with_onnxruntime_alone(exported, shipped, tmp_path):
    model, meta = shipped
    shutil.copy(exported, tmp_path / "s7.onnx")
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "cat.png")  # resized
    check = USAGE + "import sys\nassert 'torch' not in sys.modules and 'trainer' not in sys.modules\n"
    p = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    expected = logits_batches(model, read_image(str(tmp_path / "cat.png"))[None], meta["mean"], meta["std"])
    assert p.stdout.strip() == meta["classes"][int(expected.argmax())]


def test_int8_twin_is_quantised_smaller_and_takes_the_same_input(exported, tmp_path):
    import onnx

    calibration = np.random.default_rng(0).integers(0, 256, (200, 32, 32, 3), dtype=np.uint8)
    q = quantize_int8(exported, tmp_path / "s7.int8.onnx", calibration)
    ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert q.stat().st_size < 0.75 * exported.stat().st_size
    assert onnx_logits(session(q), calibration[:5]).shape == (5, 10)


@pytest.mark.parametrize("argv, message", [
    (["--onnx", "model.txt"], "--onnx model.txt: must end in .onnx"),
    (["--onnx", "m.onnx", "--int8"], "--int8 calibrates on training images: give --data"),
])
def test_bad_export_arguments_are_one_line_errors(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["export", str(WEIGHTS), *argv]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {message}\n"
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_onnx_matches_pytorch_on_1000_real_test_images_and_int8_stays_close(exported, shipped, tmp_path):
    if not SHARED.is_file():
        pytest.skip(f"shared JPEG copy not found at {SHARED}")
    from trainer.dataset import load_data, subset

    model, meta = shipped
    d = load_data(str(SHARED), str(ROOT / "data"))
    x, y = subset(d.test_x, d.test_y, 1000)
    reference = logits_batches(model, x, meta["mean"], meta["std"])
    got = onnx_logits(session(exported), x)
    assert np.abs(got - reference).max() <= TOLERANCE
    assert (got.argmax(1) == reference.argmax(1)).all()
    q = quantize_int8(exported, tmp_path / "s7.int8.onnx", subset(d.train_x, d.train_y, 1000)[0])
    fp32_acc, int8_acc = ((v.argmax(1) == y).mean() for v in (got, onnx_logits(session(q), x)))
    assert fp32_acc > 0.8 and abs(int8_acc - fp32_acc) <= 0.02  # within 2 points on 1,000 images
