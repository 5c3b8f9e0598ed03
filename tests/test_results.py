"""Committed results: the README is generated from them, the shipped weights reproduce them."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import models
from trainer.report import results_achieved
from trainer.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
RUN_OF = {"s7": "s7-long", "s7_strided": "s7_strided", "s7_dilated": "s7_dilated"}


def test_readme_generated_blocks_match_the_committed_results():
    r = subprocess.run([sys.executable, "scripts/build_readme.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_timm_pretrained_loads_the_shipped_weights_with_no_network(name):
    net = timm.create_model(name, pretrained=True)
    stored = load_file(str(ROOT / f"models/weights/{name}.safetensors"))
    assert stored.keys() == net.state_dict().keys()
    assert all(torch.equal(net.state_dict()[k], v) for k, v in stored.items())


@pytest.mark.parametrize("run", sorted(p.name for p in (ROOT / "results").iterdir() if p.is_dir()))
def test_each_report_states_the_numbers_of_its_metrics(run):
    rows = read_metrics(ROOT / "results" / run)
    res = results_achieved(rows, {})
    # recount best test accuracy and its epoch a second way, straight from the JSON lines
    raw = [json.loads(line) for line in (ROOT / "results" / run / "metrics.jsonl").read_text().splitlines()]
    best = max(raw, key=lambda r: r["test_acc"])
    assert (res["best_test_acc"], res["best_epoch"]) == (best["test_acc"], best["epoch"])
    report = (ROOT / "results" / run / "report.md").read_text()
    assert f"| best test accuracy | {best['test_acc']:.2f}% (epoch {best['epoch']}) |" in report
    assert f"| epochs | {len(raw)} |" in report


@pytest.mark.slow
@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_shipped_weights_reproduce_the_runs_test_accuracy(name, tmp_path_factory, capsys):
    if not SHARED.is_file():
        pytest.skip(f"shared JPEG copy not found at {SHARED}")
    from trainer.evaluate import evaluate_command

    assert evaluate_command(str(ROOT / f"models/weights/{name}.safetensors"), str(SHARED), str(ROOT / "data"),
                            None, 500) == 0
    measured = float(re.search(r"test accuracy ([\d.]+)%", capsys.readouterr().out).group(1))
    best = max(r["test_acc"] for r in read_metrics(ROOT / "results" / RUN_OF[name]))
    assert abs(measured - best) <= 0.15  # the run measured in bf16 on a GPU, this in fp32 on the CPU
    readme = (ROOT / "README.md").read_text()
    assert f"{name} on ../shared/data/cifar10-jpeg.tar.gz (image-folder archive): test accuracy {measured:.2f}%" in readme
