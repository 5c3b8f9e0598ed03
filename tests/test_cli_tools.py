"""`s7 evaluate` and `s7 predict` on a trained run folder: the numbers agree with the run, and bad inputs
give one-line `error:` messages with exit status 2."""
from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

import synthetic
from runs import PYTHON, REPO, sub_env
from trainer.tools import cli
from trainer.runfolder import read_metrics


def evaluate(run, data, capsys) -> tuple[int, str]:
    rc = cli.main(["evaluate", str(run), "--data", str(data.tree), "--data-dir", str(data.cache)])
    return rc, capsys.readouterr().out


@pytest.mark.parametrize("which", ["weak_run", "baseline"])
def test_evaluate_prints_the_shipped_epochs_test_accuracy_with_and_without_tta(which, data, capsys, request):
    run = request.getfixturevalue(which)
    rc, out = evaluate(run, data, capsys)
    assert rc == 0
    m = re.search(r"test accuracy (\d+\.\d\d)% \((\d+)/(\d+)\), with flip TTA (\d+\.\d\d)%", out)
    assert m, out
    final = read_metrics(run)[-1]
    assert m.group(1) == f"{final['test_acc']:.2f}" and m.group(4) == f"{final['test_acc_tta']:.2f}"
    preds = np.load(run / "predictions.npz")
    assert int(m.group(2)) == int((preds["preds"] == preds["labels"]).sum())  # the same images right
    assert int(m.group(3)) == final["test_images"] == 3 * len(list((data.tree / "test" / "square").glob("*.png")))
    # the per-class table is printed too, one row per class
    for c in sorted(synthetic.CLASSES):
        assert f"| {c} |" in out


def test_predict_prints_class_and_probability(baseline, data, capsys):
    images = [sorted((data.tree / "test" / c).glob("*.png"))[0] for c in sorted(synthetic.CLASSES)]
    assert cli.main(["predict", str(baseline), *map(str, images)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(images)
    for line, image in zip(lines, images):
        m = re.fullmatch(r"(.+): (\w+) \((\d\.\d{3})\)", line)
        assert m and m.group(1) == str(image), line
        assert m.group(2) == image.parent.name  # the baseline gets the synthetic test images right
        assert 1 / 3 < float(m.group(3)) <= 1.0


def test_predict_resizes_any_image_size(baseline, tmp_path, capsys):
    from PIL import Image

    img = synthetic.pattern(0, np.random.default_rng(5))
    Image.fromarray(img).resize((64, 48)).convert("L").save(tmp_path / "big_gray.jpg")
    assert cli.main(["predict", str(baseline), str(tmp_path / "big_gray.jpg")]) == 0
    assert re.fullmatch(r".+big_gray\.jpg: (hstripes|square|vstripes) \(\d\.\d{3}\)\n", capsys.readouterr().out)


def one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err
    return captured.err


def test_predict_of_a_non_image_file_is_a_one_line_error(baseline, tmp_path, capsys):
    notes = tmp_path / "notes.png"
    notes.write_text("not an image at all\n")
    assert cli.main(["predict", str(baseline), str(notes)]) == 2
    assert f"{notes}: not a readable image" in one_line_error(capsys)


def test_predict_of_a_missing_file_is_a_one_line_error(baseline, tmp_path, capsys):
    assert cli.main(["predict", str(baseline), str(tmp_path / "missing.png")]) == 2
    assert "missing.png: no such file" in one_line_error(capsys)


def test_evaluate_of_a_folder_without_weights_is_a_one_line_error(data, tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path), "--data", str(data.tree), "--data-dir", str(data.cache)]) == 2
    assert "no weights found" in one_line_error(capsys)


def test_s7_command_exits_2_with_one_line_error_and_no_traceback(baseline, tmp_path):
    """The real entry point, in its own process: exit status and stderr as a user sees them."""
    p = subprocess.run([PYTHON, "-m", "trainer.tools.cli", "predict", str(baseline), str(tmp_path / "missing.png")],
                       cwd=REPO, env=sub_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stdout == "" and p.stderr.startswith("error: ") and p.stderr.count("\n") == 1, p.stderr
