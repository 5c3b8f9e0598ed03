"""Each speed option is applied, not only parsed (issue 10): the memory format the net and the batch really have,
the batch size and the scaled learning rate the first step uses, threads, cuDNN autotuning and asynchronous
copies; fp16 on the CPU is refused rather than silently run in fp32; the start-up is timed phase by phase; and
`--compile` trains like eager, keeps plain checkpoint keys and resumes to the same figures (slow: inductor
compiles the net with a C++ compiler)."""
from __future__ import annotations

import json
import platform
import resource
import subprocess
from pathlib import Path
from unittest import mock

import pytest
import timm
import torch
from safetensors.torch import load_file

from probe import probe
from runs import (PYTHON, REPO, assert_same_metrics, final_lr, flags, sub_env, train_in_process,
                  train_until_interrupted)
from trainer import checkpoint
from trainer import main as trainer_main
from trainer.config import RunError, TrainConfig, resolve
from trainer.precision import make_accelerator, pick_precision
from trainer.runfolder import STARTUP, read_metrics


def cpu_flags() -> set[str]:
    """The CPU's feature flags as the Linux kernel reports them: a source independent of torch's own checks."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return {flag for line in lines if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


QUICK = ("--train-subset", "300")  # 9 steps of 32 per epoch


@pytest.fixture
def torch_globals():
    """Threads and cudnn.benchmark are process-wide: put them back after the test."""
    threads, bench = torch.get_num_threads(), torch.backends.cudnn.benchmark
    yield
    torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = bench


def probed(data, tmp_path, name: str, *extra: str, epochs: int = 2) -> dict:
    rc, seen = probe(flags(data, tmp_path, name, *QUICK, *extra, epochs=epochs))
    assert rc == 0
    return seen


@pytest.mark.parametrize("on", [True, False])
def test_channels_last_is_the_memory_format_of_the_net_and_of_every_batch(data, tmp_path, on):
    seen = probed(data, tmp_path, "cl", "--channels-last", str(on).lower())
    assert seen["input_channels_last"] is on and seen["weight_channels_last"] is on
    assert seen["input_dtype"] == "torch.float32"  # normalised on the device from the uint8 batch


@pytest.mark.parametrize("rule, factor", [("linear", 2.0), ("sqrt", 2.0 ** 0.5), ("none", 1.0)])
def test_batch_size_and_the_scaled_peak_lr_are_what_the_steps_use(data, tmp_path, rule, factor):
    seen = probed(data, tmp_path, "lr", "--batch-size", "64", "--lr", "0.1", "--lr-scaling", rule,
                  "--base-batch-size", "32")
    peak = 0.1 * factor  # the stated rule, computed here: global batch 64 = 2 x the base batch 32
    run = tmp_path / "lr"
    assert seen["batch"] == 64 and seen["max_lr"] == pytest.approx(peak, rel=1e-12)
    state = checkpoint.read_state(checkpoint.latest_checkpoint(run))
    assert state["peak_lr"] == pytest.approx(peak, rel=1e-12) and state["global_batch_size"] == 64
    cfg = TrainConfig.load(run / "config.yaml")  # the recipe as given; the schedule ends at the scaled floor
    assert cfg.lr == 0.1 and read_metrics(run)[-1]["lr"] == pytest.approx(final_lr(cfg) * factor, rel=1e-6)
    assert f"lr: peak {peak:.6g} for a global batch of 64" in (run / "train.log").read_text()


def test_threads_cudnn_benchmark_and_asynchronous_copies_are_set_for_the_steps(data, tmp_path, torch_globals):
    seen = probed(data, tmp_path, "on", "--threads", "1", "--cudnn-benchmark", "true", "--non-blocking", "true",
                  "--keep-freed-memory", "false")
    assert (seen["threads"], seen["cudnn_benchmark"], seen["non_blocking"]) == (1, True, True)
    assert "host memory: allocator left as it is (--keep-freed-memory false)" in (tmp_path / "on/train.log").read_text()
    torch.set_num_threads(2)
    seen = probed(data, tmp_path, "off")
    assert (seen["threads"], seen["cudnn_benchmark"], seen["non_blocking"]) == (2, False, False)  # as before
    if platform.libc_ver()[0] == "glibc":
        assert "host memory: glibc malloc keeps freed memory" in (tmp_path / "off/train.log").read_text()
    assert seen["compiled"] is False and seen["autocast"] is False  # eager, and fp32 as the smoke recipe says
    assert seen["conv_output_dtype"] == "torch.float32"


FAULTS = """
import resource, sys
import torch
if sys.argv[1] == "keep":
    from trainer.memory import keep_freed_memory
    keep_freed_memory()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for step in range(30):
    if step == 20:  # by now the heap has grown to hold the block wherever the aligned request falls: count
        before = faults()
    block = torch.ones(16_000_000)  # 64 MB: above glibc's largest mmap threshold, as a step's activations are
    del block
print(faults() - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator is left alone outside glibc")
def test_kept_freed_memory_spares_the_page_faults_of_reallocating_a_large_block():
    faults = {mode: int(subprocess.run([PYTHON, "-c", FAULTS, mode], cwd=REPO, env=sub_env(), capture_output=True,
                                       text=True, timeout=120, check=True).stdout) for mode in ("default", "keep")}
    pages = 10 * 64_000_000 // resource.getpagesize()
    assert faults["default"] > 0.9 * pages, faults  # every block mapped afresh and faulted in page by page
    assert faults["keep"] < 0.05 * pages, faults  # the freed block is reused where it lies


def probed_in_own_process(data, tmp_path, name: str, precision: str) -> dict:
    """What the first step of a 2-epoch run with --mixed-precision `precision` saw, in a process of its own:
    Accelerate fixes the precision once per process."""
    out = tmp_path / f"{name}.json"
    argv = flags(data, tmp_path, name, *QUICK, "--mixed-precision", precision, epochs=2)
    p = subprocess.run([PYTHON, "tests/probe.py", str(out), *argv], cwd=REPO, env=sub_env(), capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads(out.read_text())


def test_bf16_is_the_autocast_dtype_of_the_steps(data, tmp_path):
    seen = probed_in_own_process(data, tmp_path, "bf16", "bf16")
    assert (seen["autocast"], seen["autocast_dtype"], seen["conv_output_dtype"]) == (True, "torch.bfloat16",
                                                                                     "torch.bfloat16")
    assert seen["input_dtype"] == "torch.float32"  # autocast casts inside the net, the batch stays fp32
    assert json.loads((tmp_path / "bf16" / STARTUP).read_text())["precision"] == "bf16"


@pytest.mark.slow
def test_auto_precision_autocasts_to_bf16_exactly_where_the_cpu_has_it_natively(data, tmp_path):
    seen = probed_in_own_process(data, tmp_path, "auto", "auto")
    native = bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
    assert seen["conv_output_dtype"] == ("torch.bfloat16" if native else "torch.float32")
    log = (tmp_path / "auto" / "train.log").read_text()
    assert ("precision bf16 (auto: the CPU has native bf16" if native else "precision no (auto: the CPU has no") in log
    # the run's config.yaml (and so its report and W&B config) says what auto chose, not `auto`
    assert TrainConfig.load(tmp_path / "auto" / "config.yaml").mixed_precision == ("bf16" if native else "no")


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, "bf16"), (False, True, "bf16"),
                                                         (False, False, "no")])
def test_auto_precision_on_a_cpu_follows_its_native_bf16(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    precision, why = pick_precision("auto")
    assert precision == expected and why.startswith("auto: the CPU has")
    assert pick_precision("no") == ("no", "--mixed-precision no")  # a choice given is kept


def test_fp16_on_the_cpu_is_refused_in_one_line_not_run_in_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RunError, match=r"^--mixed-precision fp16 needs a GPU .* use bf16 or no$"):
        make_accelerator(resolve(["--mixed-precision", "fp16"]))


def test_startup_is_timed_phase_by_phase_to_the_end_of_the_first_step(data, tmp_path):
    assert train_in_process(flags(data, tmp_path, "s", *QUICK)) == 0
    run = tmp_path / "s"
    t = json.loads((run / STARTUP).read_text())
    first = read_metrics(run)[0]
    assert list(t["phases"])[:9] == ["imports", "config", "accelerator", "data", "statistics", "loaders", "model",
                                     "prepare", "run_files"]
    assert list(t["phases"])[-2:] == ["workers", "first_step"]
    assert all(v >= 0 for v in t["phases"].values())
    assert sum(t["phases"].values()) == pytest.approx(t["seconds"], abs=1e-6)
    # both clocks start at process start: the first step ends after the epoch's training began, before it ended
    started_training = first["wall_seconds"] - first["epoch_seconds"]
    assert started_training < t["seconds"] < started_training + first["train_seconds"]
    assert (t["compile"], t["resumed"], t["epoch"]) == ("none", False, 1)
    assert f"start-up: {t['seconds']:.1f} s from process start" in (run / "train.log").read_text()


# ---------------------------------------------------------------- torch.compile (inductor: slow on 2 cores)

COMPILED = ("--train-subset", "96", "--compile", "default")  # 3 steps of 32 per epoch


def train_recording_losses(argv: list[str]) -> list[float]:
    """trainer.main.main(argv) in process; returns every training step's loss, read on the host here."""
    losses: list[float] = []
    original = trainer_main.train_one_epoch

    def epoch(accelerator, model, loader, optimizer, scheduler, criterion, *args, **kwargs):
        def recorded(logits, y):
            loss = criterion(logits, y)
            losses.append(loss.item())
            return loss

        return original(accelerator, model, loader, optimizer, scheduler, recorded, *args, **kwargs)

    with mock.patch.object(trainer_main, "train_one_epoch", epoch):
        assert train_in_process(argv) == 0
    return losses


@pytest.fixture(scope="module")
def compiled_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("compiled")
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    losses = train_recording_losses(flags(data, out, "c", *COMPILED, epochs=3))
    assert counters["stats"]["unique_graphs"] > graphs  # dynamo really compiled the step
    return out / "c", losses


@pytest.mark.slow
def test_compiled_training_gives_the_eager_losses_and_plain_weights(compiled_run, data, tmp_path):
    run, compiled = compiled_run
    eager = train_recording_losses(flags(data, tmp_path, "e", *COMPILED[:2], epochs=3))
    assert len(compiled) == len(eager) == 9
    # the first step sees the same weights: only the forward's rounding differs
    assert compiled[0] == pytest.approx(eager[0], rel=1e-5)
    # then the fp32 gradients differ by their rounding (this net's fp32 gradients at init are ~1 % off float64
    # even in eager), so the losses drift apart by about 1e-4 per step
    assert compiled[:3] == pytest.approx(eager[:3], rel=2e-3)
    a, b = read_metrics(run), read_metrics(tmp_path / "e")
    assert a[0]["train_loss"] == pytest.approx(b[0]["train_loss"], rel=2e-3)
    assert [r["lr"] for r in a] == pytest.approx([r["lr"] for r in b], rel=1e-12)
    assert abs(a[-1]["test_acc"] - b[-1]["test_acc"]) <= 100.0 / a[-1]["test_images"] + 1e-9  # one image at most
    plain = timm.create_model("s7", num_classes=3).state_dict().keys()
    ckpt = checkpoint.latest_checkpoint(run)
    for path in (run / "model/model.safetensors", ckpt / "model.safetensors"):
        assert load_file(str(path)).keys() == plain, path  # no `_orig_mod.`: evaluate, predict and timm load it


@pytest.mark.slow
def test_a_compiled_run_resumes_to_the_same_figures(compiled_run, data, tmp_path):
    run, _ = compiled_run
    assert train_until_interrupted(flags(data, tmp_path, "cut", *COMPILED, epochs=3), at_epoch=3) == 130
    assert train_in_process(["--resume", str(tmp_path / "cut"), "--wandb-mode", "disabled"]) == 0
    assert_same_metrics(read_metrics(tmp_path / "cut"), read_metrics(run))
    assert json.loads((tmp_path / "cut" / STARTUP).read_text())["resumed"] is True
