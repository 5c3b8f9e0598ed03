"""Weights & Biases: an offline run's own log file holds every epoch, the resolved config and the summary
(read back with tests/wandb_records.py); `--wandb-mode disabled` never imports wandb."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import wandb_records
from runs import PYTHON, REPO, flags, sub_env, wandb_env
from trainer.config import TrainConfig
from trainer.tracking import read_metrics

LOGGED = ("train_loss", "train_acc", "test_loss", "test_acc", "test_acc_tta", "test_images", "lr", "momentum",
          "epoch_seconds",
          "train_seconds", "test_seconds", "images_per_second", "wall_seconds")


@pytest.fixture(scope="module")
def offline_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("wandb-runs")
    argv = flags(data, out, "wb", "--train-subset", "96", epochs=2, wandb="offline")
    p = subprocess.run([PYTHON, "trainer/main.py", *argv], cwd=REPO, env=sub_env(**wandb_env(data.base)),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return out / "wb"


def test_offline_run_writes_exactly_one_wandb_log_with_valid_framing(offline_run):
    assert len(list((offline_run / "wandb").glob("offline-run-*"))) == 1
    path = wandb_records.run_file(offline_run)
    assert path.read_bytes()[:4] == b":W&B"
    kinds = [r.WhichOneof("record_type") for r in wandb_records.records(path)]
    assert kinds[0] == "header" and "run" in kinds and "exit" in kinds


def test_wandb_history_holds_every_epoch_with_the_metrics_jsonl_values(offline_run):
    rows = read_metrics(offline_run)
    assert [r["epoch"] for r in rows] == [1, 2]
    history = wandb_records.history(wandb_records.records(wandb_records.run_file(offline_run)))
    assert [h["_step"] for h in history] == [r["epoch"] for r in rows]  # one history row per epoch, step = epoch
    for row, h in zip(rows, history):
        for key in LOGGED:
            assert h[key] == pytest.approx(row[key], rel=1e-12), (row["epoch"], key)


def test_wandb_config_is_the_resolved_config_with_rules_and_summary_has_final_accuracy(offline_run):
    recs = wandb_records.records(wandb_records.run_file(offline_run))
    config = wandb_records.config(recs)
    saved = TrainConfig.load(offline_run / "config.yaml").to_dict()
    assert config["model"] == "s7" and config["epochs"] == 2 and config["wandb_mode"] == "offline"
    for key, value in saved.items():
        assert config[key] == value, key
    assert config["parameters"] > 0 and config["receptive_field"] > 0
    summary = wandb_records.summary(recs)
    rows = read_metrics(offline_run)
    assert summary["final_test_acc"] == pytest.approx(rows[-1]["test_acc"])
    assert summary["final_test_acc_tta"] == pytest.approx(rows[-1]["test_acc_tta"])
    assert summary["selected_epoch"] == 2 and summary["last_epoch"] == 2
    assert config["rules"] and set(config["rules"].values()) == {"PASS"}
    assert summary["test_acc"] == pytest.approx(rows[-1]["test_acc"])  # the last logged epoch


def test_reader_rejects_a_corrupted_record(offline_run, tmp_path):
    raw = bytearray(wandb_records.run_file(offline_run).read_bytes())
    raw[20] ^= 0xFF  # inside the first record's payload
    bad = tmp_path / "bad.wandb"
    bad.write_bytes(bytes(raw))
    with pytest.raises(wandb_records.WandbLogError, match="CRC"):
        list(wandb_records.payloads(bad))


DISABLED_CHECK = r"""
import importlib.abc, importlib.machinery, json, sys

attempts = []  # (module, file of the code that imported it)

def importer():
    f = sys._getframe(2)
    while f and (f.f_code.co_filename.startswith("<frozen") or f.f_code.co_filename == "<string>"):
        f = f.f_back
    return f.f_code.co_filename if f else "?"

class Refuse(importlib.abc.Loader):  # as if wandb were not installed
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        attempts.append((module.__name__, importer()))
        raise ImportError("wandb is not importable in this check")

class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "wandb" or name.startswith("wandb."):
            return importlib.machinery.ModuleSpec(name, Refuse())
        return None

sys.meta_path.insert(0, Watch())
from trainer.main import main
rc = main(json.loads(sys.argv[1]))
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "wandb" and sys.modules[m] is not None)
print("RESULT", json.dumps({"rc": rc, "attempts": attempts, "loaded": loaded}))
"""


def test_disabled_mode_trains_with_wandb_unimportable_and_never_imports_it_itself(data, tmp_path):
    """Every `import wandb` raises here (as if it were not installed); training must still succeed, and no
    import may come from the project's own code. (timm.utils.summary tries `import wandb` under
    try/except when timm loads; that guarded attempt is the only one allowed.)"""
    argv = flags(data, tmp_path, "nowb", "--train-subset", "96", epochs=2, wandb="disabled")
    p = subprocess.run([PYTHON, "-c", DISABLED_CHECK, json.dumps(argv)], cwd=REPO, env=sub_env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    result = next(json.loads(line[len("RESULT "):]) for line in p.stdout.splitlines() if line.startswith("RESULT "))
    assert result["rc"] == 0 and result["loaded"] == []
    importers = {Path(f).resolve() for _, f in result["attempts"]}
    own = (REPO / "trainer", REPO / "models")
    assert not [f for f in importers if any(d in f.parents for d in own)], importers
    assert all("site-packages/timm/" in str(f) for f in importers), importers
    assert (tmp_path / "nowb" / "report.md").is_file() and not (tmp_path / "nowb" / "wandb").exists()
