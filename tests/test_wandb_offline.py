"""Weights & Biases: an offline run's own log file holds every epoch, the resolved config and the summary
(read back with tests/wandb_records.py); each run folder has its own W&B id, which its resume continues; the
weights are `best` only when a validation split chose them; steps never go back; `--wandb-mode disabled` never
imports wandb."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import wandb_records
from runs import PYTHON, REPO, flags, sub_env, unfinished_copy, wandb_env
from trainer.config import TrainConfig
from trainer.runfolder import read_metrics
from trainer.tracking import RUN_ID_FILE

# metrics.jsonl column -> its W&B name (trainer/tracking.py, wandb_key), written out here as the contract
NAMESPACED = {"train_loss": "train/loss", "train_acc": "train/acc", "test_loss": "test/loss", "test_acc": "test/acc",
              "test_acc_tta": "test/acc_tta", "test_images": "test/images", "lr": "train/lr",
              "momentum": "train/momentum", "epoch_seconds": "time/epoch_seconds",
              "train_seconds": "time/train_seconds", "test_seconds": "time/test_seconds",
              "images_per_second": "speed/images_per_second", "wall_seconds": "time/wall_seconds"}


OUTPUT = "output.txt"  # beside the run folder: what the run printed


def offline(data, out: Path, *argv: str) -> Path:
    """`python trainer/main.py ARGV` with W&B offline and not silenced (its warnings print as a user sees them);
    stdout and stderr are kept in OUT/output.txt."""
    p = subprocess.run([PYTHON, "trainer/main.py", *argv], cwd=REPO,
                       env=sub_env(**wandb_env(data.base), WANDB_SILENT="false"),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    (out / OUTPUT).write_text(p.stdout + p.stderr)
    return out


@pytest.fixture(scope="module")
def offline_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("wandb-runs")
    offline(data, out, *flags(data, out, "wb", "--train-subset", "96", epochs=2, wandb="offline"))
    return out / "wb"


@pytest.fixture(scope="module")
def val_run(data, tmp_path_factory):
    """The same --name in another --out folder, with a validation split choosing the shipped epoch."""
    out = tmp_path_factory.mktemp("wandb-runs-val")
    offline(data, out, *flags(data, out, "wb", "--train-subset", "192", "--val-split", "48", epochs=2,
                              wandb="offline"))
    return out / "wb"


def run_record(path: Path):
    return next(r.run for r in wandb_records.records(path) if r.WhichOneof("record_type") == "run")


def test_offline_run_writes_exactly_one_wandb_log_with_valid_framing(offline_run):
    assert len(list((offline_run / "wandb").glob("offline-run-*"))) == 1
    path = wandb_records.run_file(offline_run)
    assert path.read_bytes()[:4] == b":W&B"
    kinds = [r.WhichOneof("record_type") for r in wandb_records.records(path)]
    assert kinds[0] == "header" and "run" in kinds and "exit" in kinds


def epoch_history(offline_run) -> list[dict]:
    return [h for h in wandb_records.history(wandb_records.records(wandb_records.run_file(offline_run)))
            if "test/acc" in h]


def test_wandb_history_holds_every_epoch_namespaced_with_the_metrics_jsonl_values(offline_run):
    rows = read_metrics(offline_run)
    assert [r["epoch"] for r in rows] == [1, 2]
    history = epoch_history(offline_run)
    assert [h["epoch"] for h in history] == [r["epoch"] for r in rows]  # one epoch row per epoch
    assert rows[0]["test_acc_tta"] is None and rows[1]["test_acc_tta"] is not None  # flip TTA: final epoch only
    for row, h in zip(rows, history):
        for key, name in NAMESPACED.items():
            if row[key] is None:
                assert name not in h, (row["epoch"], key)  # not measured: left out, not logged as a value
            else:
                assert h[name] == pytest.approx(row[key], rel=1e-12), (row["epoch"], key)
        assert not set(row) & set(h) - {"epoch"}  # no flat metrics.jsonl names left


def test_epoch_metrics_are_defined_against_epoch_and_keep_best_and_last_accuracy(offline_run):
    recs = wandb_records.records(wandb_records.run_file(offline_run))
    metrics = {m.name or m.glob_name: m for m in (r.metric for r in recs if r.WhichOneof("record_type") == "metric")}
    for ns in ("train/*", "val/*", "test/*", "time/*", "speed/*"):
        assert metrics[ns].step_metric == "epoch", ns
    assert metrics["step/*"].step_metric == "step"
    for name in ("test/acc", "test/acc_tta", "val/acc", "train/acc"):
        assert metrics[name].step_metric == "epoch" and metrics[name].summary.max and metrics[name].summary.last
    summary = wandb_records.summary(recs)
    rows = read_metrics(offline_run)
    for key in ("test_acc", "test_acc_tta", "train_acc"):
        name = NAMESPACED[key]
        assert summary[name]["max"] == pytest.approx(max(r[key] for r in rows if r[key] is not None)), key
        assert summary[name]["last"] == pytest.approx(rows[-1][key]), key
    assert summary["train/loss"]["last"] == pytest.approx(rows[-1]["train_loss"])
    assert summary["speed/images_per_second"]["last"] == pytest.approx(rows[-1]["images_per_second"])


def test_learning_rate_and_loss_go_to_wandb_per_step_and_draw_the_one_cycle(offline_run):
    """A run this short logs every step (tracking.step_cadence); the lr rises to its peak, then falls."""
    history = wandb_records.history(wandb_records.records(wandb_records.run_file(offline_run)))
    steps = [h for h in history if "step/lr" in h]
    cfg = TrainConfig.load(offline_run / "config.yaml")
    n = len(steps)
    assert [h["step"] for h in steps] == list(range(1, n + 1)) and n >= 4 and n % cfg.epochs == 0
    lrs = [h["step/lr"] for h in steps]
    peak = lrs.index(max(lrs))
    assert 0 < peak < n - 1 and max(lrs) > 2 * lrs[0] and max(lrs) > 2 * lrs[-1]
    assert lrs[:peak + 1] == sorted(lrs[:peak + 1]) and lrs[peak:] == sorted(lrs[peak:], reverse=True)
    rows = read_metrics(offline_run)
    assert lrs[-1] == pytest.approx(rows[-1]["lr"])  # the epoch row's lr is its last step's
    assert all(h["step/loss"] > 0 and "epoch" not in h for h in steps)
    # the epoch's training loss is the mean over its batches (equal-sized here: 96 images)
    per_epoch = n // cfg.epochs
    for e, row in enumerate(rows):
        losses = [h["step/loss"] for h in steps[e * per_epoch:(e + 1) * per_epoch]]
        assert sum(losses) / per_epoch == pytest.approx(row["train_loss"], rel=1e-5)


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
    assert (config["mixed_precision"], config["precision_reason"]) == ("no", "--mixed-precision no")  # smoke's


def test_wandb_run_identity_names_commit_device_data_and_recipe(offline_run):
    import subprocess as sp

    recs = wandb_records.records(wandb_records.run_file(offline_run))
    config = wandb_records.config(recs)
    head = sp.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    assert config["git_commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert config["device"] == "cpu" and config["processes"] == 1
    meta = json.loads((offline_run / "model" / "meta.json").read_text())  # what the trainer normalised with
    assert config["data_source"] == meta["data"]
    assert config["data_mean"] == pytest.approx(meta["mean"]) and config["data_std"] == pytest.approx(meta["std"])
    saved = TrainConfig.load(offline_run / "config.yaml")
    run = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
    assert run.run_group == saved.model and run.job_type == saved.recipe
    assert list(run.tags) == [saved.model, saved.optimizer, "cpu"]


def model_artifacts(run: Path) -> list:
    recs = wandb_records.records(wandb_records.run_file(run))
    return [r.artifact for r in recs if r.WhichOneof("record_type") == "artifact" and r.artifact.type == "model"]


def test_final_epoch_weights_go_up_as_a_model_artifact_aliased_latest_and_final_not_best(offline_run):
    """No validation split: nothing chose these weights over another epoch's, so they are not called best."""
    import base64
    import hashlib

    recs = wandb_records.records(wandb_records.run_file(offline_run))
    models = model_artifacts(offline_run)
    assert len(models) == 1
    art = models[0]
    assert art.name == "s7-wb" and sorted(art.aliases) == ["final", "latest"]
    files = {c.path: c for c in art.manifest.contents}
    assert set(files) == {"model.safetensors", "meta.json"}
    for name, entry in files.items():
        data = (offline_run / "model" / name).read_bytes()
        assert entry.size == len(data) and entry.digest == base64.b64encode(hashlib.md5(data).digest()).decode()
    meta = json.loads((offline_run / "model" / "meta.json").read_text())
    assert json.loads(art.metadata) == meta and meta["epoch"] == wandb_records.summary(recs)["selected_epoch"]


def test_weights_chosen_by_a_validation_split_are_aliased_best(val_run):
    models = model_artifacts(val_run)
    assert len(models) == 1 and sorted(models[0].aliases) == ["best", "latest"]
    assert json.loads((val_run / "model" / "meta.json").read_text())["selected_by"] == "best val_acc"


def test_runs_of_one_name_in_two_out_folders_get_different_wandb_ids_kept_in_the_run_folder(offline_run, val_run):
    ids = [run_record(wandb_records.run_file(r)).run_id for r in (offline_run, val_run)]
    assert offline_run.name == val_run.name and ids[0] != ids[1]  # the folder's name is not the id
    assert ids == [(r / RUN_ID_FILE).read_text().strip() for r in (offline_run, val_run)]


def test_a_resumed_run_continues_the_wandb_run_of_its_first_launch(data, offline_run, tmp_path):
    first = run_record(wandb_records.run_file(offline_run)).run_id
    copy = unfinished_copy(offline_run, tmp_path / "moved")  # another folder name: the id follows the run
    offline(data, tmp_path, "--resume", str(copy), "--wandb-mode", "offline")
    logs = sorted(copy.glob("wandb/offline-run-*/*.wandb"))
    assert len(logs) == 2  # the first launch's, copied, and the resumed one's
    resumed = next(p for p in logs if p.parent.name not in {q.parent.name for q in
                                                             (offline_run / "wandb").glob("offline-run-*/*.wandb")})
    assert run_record(resumed).run_id == first
    assert [h["epoch"] for h in wandb_records.history(wandb_records.records(resumed)) if "test/acc" in h] == [2]


@pytest.mark.parametrize("which", ["offline_run", "val_run"])
def test_wandb_steps_and_epochs_never_go_back_in_the_history(which, request):
    history = wandb_records.history(wandb_records.records(wandb_records.run_file(request.getfixturevalue(which))))
    assert any("per_class/_type" in h for h in history)  # the media are in it
    for key in ("_step", "epoch", "step"):
        values = [h[key] for h in history if key in h]
        assert values and values == sorted(values), key


def test_media_are_logged_at_the_last_epoch_when_the_shipped_epoch_is_an_earlier_one(tmp_path):
    """A validation split may ship epoch 1 of 3: the media (of the shipped epoch) still go after epoch 3's row."""
    import types

    import numpy as np

    from trainer.tracking import wandb_files_and_summary

    logged: list[dict] = []
    run = types.SimpleNamespace(dir=str(tmp_path), summary={}, log=logged.append,
                                save=lambda *a, **k: None, log_artifact=lambda *a, **k: None)
    accelerator = types.SimpleNamespace(is_main_process=True, get_tracker=lambda name, unwrap: run)
    cfg = types.SimpleNamespace(wandb_mode="offline", model="s7", val_split=48)
    wrong = [(np.zeros((8, 8, 3), np.uint8), "cat", "dog", 0.9)]
    wandb_files_and_summary(accelerator, cfg, tmp_path, {"selected_epoch": 1, "last_epoch": 3}, [], wrong)
    assert len(logged) == 1 and logged[0]["epoch"] == 3 and "misclassified" in logged[0]


def test_run_files_go_to_wandb_without_symlinked_warnings(offline_run):
    """wandb warns "Symlinked 1 file into the W&B run directory ..." for each run.save of a file outside the
    run's files folder: six lines a run, before. The files are still saved, as they are in the run folder."""
    printed = (offline_run.parent / OUTPUT).read_text()
    assert "wandb:" in printed  # W&B was not silenced: its warnings would show here
    assert "Symlinked" not in printed and "into the W&B run directory" not in printed
    recs = wandb_records.records(wandb_records.run_file(offline_run))
    saved = {f.path: f.policy for r in recs if r.WhichOneof("record_type") == "files" for f in r.files.files}
    names = ["summary.txt", "receptive_field.md", "rules.md", "report.md", "per_class.md", "config.yaml"]
    files = wandb_records.run_file(offline_run).parent / "files"
    for name in names:
        assert name in saved and (files / name).read_bytes() == (offline_run / name).read_bytes(), name


def logged_media(offline_run, key: str) -> tuple[dict, Path]:
    """The one history row that logs `key`, and the file the offline run keeps for it."""
    history = wandb_records.history(wandb_records.records(wandb_records.run_file(offline_run)))
    rows = [h for h in history if f"{key}/_type" in h]
    assert len(rows) == 1, rows
    return rows[0], wandb_records.run_file(offline_run).parent / "files" / rows[0][f"{key}/path"]


def test_per_class_table_and_misclassified_grid_go_to_wandb_as_table_and_image(offline_run):
    import numpy as np

    row, path = logged_media(offline_run, "per_class")
    assert row["per_class/_type"] == "table-file" and row["epoch"] == read_metrics(offline_run)[-1]["epoch"]
    table = json.loads(path.read_text())
    assert table["columns"] == ["class", "test images", "correct", "accuracy"]
    p = np.load(offline_run / "predictions.npz")
    classes = [str(c) for c in p["classes"]]
    assert [r[0] for r in table["data"]] == classes
    for name, total, correct, accuracy in table["data"]:
        mine = p["labels"] == classes.index(name)
        assert total == int(mine.sum()) and correct == int((p["preds"][mine] == p["labels"][mine]).sum())
        assert accuracy == pytest.approx(100.0 * correct / total)
    row, path = logged_media(offline_run, "misclassified_grid")
    assert row["misclassified_grid/_type"] == "image-file"
    assert path.read_bytes() == (offline_run / "misclassified.png").read_bytes()
    row, path = logged_media(offline_run, "misclassified")
    assert row["misclassified/_type"] == "table-file"
    assert row["misclassified/nrows"] == len(p["wrong_index"]) > 0


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


def test_the_reports_grid_of_mistakes_with_class_maps_goes_to_wandb_as_an_image(offline_run):
    """The report's mistake_maps.png (trainer/tools/explain.py) is logged once, as a W&B image of that very file."""
    import hashlib

    history = wandb_records.history(wandb_records.records(wandb_records.run_file(offline_run)))
    logged = [h for h in history if "mistake_maps/_type" in h]
    assert len(logged) == 1 and logged[0]["mistake_maps/_type"] == "image-file", logged
    png = (offline_run / "mistake_maps.png").read_bytes()
    assert logged[0]["mistake_maps/sha256"] == hashlib.sha256(png).hexdigest()
    media = wandb_records.run_file(offline_run).parent / "files" / logged[0]["mistake_maps/path"]
    assert media.read_bytes() == png



@pytest.mark.parametrize("ref, is_ref", [("me/s7-cifar10/s7-run1:best", True), ("wandb-artifact://me/p/s7-x:v3", True),
                                         ("runs/s7-run1", False), ("models/weights/s7.safetensors", False),
                                         ("me/p/name", False), ("a:b", False)])
def test_an_artifact_reference_is_told_from_a_path(ref, is_ref):
    from trainer.tracking import is_artifact_ref

    assert is_artifact_ref(ref) is is_ref


def test_evaluate_downloads_an_artifact_reference_online_and_refuses_it_offline(offline_run, monkeypatch):
    """No network: wandb.Api is replaced by one whose artifact download is the run's own model/ folder."""
    import types

    import wandb

    from trainer.tools.evaluate import load_classifier

    asked = []

    class Api:
        def artifact(self, name, type=None):
            asked.append((name, type))
            return types.SimpleNamespace(download=lambda: str(offline_run / "model"))

    monkeypatch.setattr(wandb, "Api", Api)
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(FileNotFoundError, match="W&B online"):
        load_classifier("me/s7-cifar10/s7-wb:best")
    assert asked == []
    monkeypatch.setenv("WANDB_MODE", "online")
    _, meta = load_classifier("wandb-artifact://me/s7-cifar10/s7-wb:best")
    assert asked == [("me/s7-cifar10/s7-wb:best", "model")]
    assert meta == json.loads((offline_run / "model" / "meta.json").read_text())  # the downloaded folder's


def test_git_commit_is_none_outside_a_git_work_tree(tmp_path):
    from trainer.tracking import git_commit

    assert git_commit(tmp_path) is None
