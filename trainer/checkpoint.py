"""Checkpoints: Accelerate's save_state per epoch, a JSON state beside it, atomic `latest` pointer, and the
shipped weights in `model/` (the final epoch's, or the best validation epoch's with a validation split).

Safety: model weights are safetensors; everything else Accelerate loads with `weights_only=True`
(numpy's RNG arrays allow-listed), so a planted pickle is refused, never executed. Our own state
(epoch, best accuracy) is plain JSON, not `register_for_checkpointing` (which unpickles freely).
A crash mid-write leaves a half-written `epoch-N/` that no pointer names: the last good one stands.
Integrity: each checkpoint's last file, written atomically, is manifest.json with the sha256 of every other file;
a resume verifies it first and falls back to the previous checkpoint (the last KEEP are kept) when it does not
match. The manifest catches damage, not tampering: whoever can rewrite a file can rewrite the manifest too.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from trainer.runfolder import write_atomic

STATE_FILE = "state.json"
MANIFEST = "manifest.json"  # {"sha256": {file name: hex digest}}, written last
POINTER = "latest"
KEEP = 2  # checkpoints kept: the newest, and the one a damaged newest falls back to


class CheckpointError(ValueError):
    """A checkpoint that cannot or must not be loaded (missing, other model, unsafe pickle)."""


def _numpy_safe_globals() -> list:
    core = getattr(np, "_core", None) or np.core
    return [np.ndarray, np.dtype, core.multiarray._reconstruct, type(np.dtype(np.uint32))]


def save_checkpoint(accelerator, ckpt_root: Path, epoch: int, state: dict[str, Any],
                    ema: torch.nn.Module | None = None) -> Path:
    """Save everything after `epoch` completed epochs into ckpt_root/epoch-NNNN and point `latest` at it.
    `ema` is timm's ModelEmaV3: its inner module's weights go to ema.safetensors."""
    target = ckpt_root / f"epoch-{epoch:04d}"
    if accelerator.is_main_process:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        if target.exists():  # a half-written attempt from a crash
            shutil.rmtree(target)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(target), safe_serialization=True)
    if accelerator.is_main_process:
        if ema is not None:
            save_file(_plain_state(ema.module), str(target / "ema.safetensors"))
        state = {**state, "epoch": epoch, "num_processes": accelerator.num_processes}
        write_atomic(target / STATE_FILE, json.dumps(state, indent=1))
        seal(target)
        write_atomic(ckpt_root / POINTER, target.name)
        # keep the KEEP newest up to this one; any later folder is from an abandoned (damaged) timeline
        folders = sorted(ckpt_root.glob("epoch-*"))
        kept = [f for f in folders if f.name <= target.name][-KEEP:]
        for old in set(folders) - set(kept):
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return target


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def seal(ckpt_dir: Path) -> None:
    """Write ckpt_dir/manifest.json (atomically, last): the sha256 of every other file in the folder."""
    ckpt_dir = Path(ckpt_dir)
    digests = {p.name: _sha256(p) for p in sorted(ckpt_dir.iterdir()) if p.is_file() and p.name != MANIFEST}
    write_atomic(ckpt_dir / MANIFEST, json.dumps({"sha256": digests}, indent=1))


def damage(ckpt_dir: Path) -> str | None:
    """What is wrong with a checkpoint folder, in a few words, or None when every file its manifest lists is
    there with the checksum it was written with."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return "the folder is missing"
    try:
        digests = json.loads((ckpt_dir / MANIFEST).read_text())["sha256"]
    except FileNotFoundError:
        return f"no {MANIFEST} (cut short while saving, or saved before checkpoints carried checksums)"
    except (ValueError, KeyError, TypeError):
        return f"{MANIFEST} is unreadable"
    if STATE_FILE not in digests:
        return f"{MANIFEST} does not list {STATE_FILE}"
    for name, digest in digests.items():
        if not (ckpt_dir / name).is_file():
            return f"{name} is missing"
        if _sha256(ckpt_dir / name) != digest:
            return f"{name} does not match its checksum"
    return None


def resume_checkpoint(run_dir: Path) -> tuple[Path, list[str]]:
    """The newest intact checkpoint of a run, from the one `latest` names back, and one line for each newer one
    passed over as damaged. Raises CheckpointError, naming each one tried, when none is intact."""
    target = latest_checkpoint(run_dir, complete=False)
    candidates = [target] + sorted((p for p in target.parent.glob("epoch-*") if p.name < target.name),
                                   reverse=True)
    tried: list[tuple[Path, str]] = []
    for ckpt in candidates:
        why = damage(ckpt)
        if why is None:
            return ckpt, [f"checkpoint {c} is damaged ({w}); resuming from {ckpt.name}" for c, w in tried]
        tried.append((ckpt, why))
    raise CheckpointError(f"{run_dir}: no intact checkpoint to resume from ("
                          + "; ".join(f"{c.name}: {w}" for c, w in tried) + ")")


def _plain_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def latest_checkpoint(run_dir: Path, complete: bool = True) -> Path:
    """The checkpoint folder `latest` names (the last one saved); with `complete`, refused without its state.
    Resuming takes `resume_checkpoint`, which also verifies the files."""
    pointer = Path(run_dir) / "checkpoints" / POINTER
    if not pointer.is_file():
        raise CheckpointError(f"{run_dir}: no checkpoint to resume from (missing {pointer})")
    target = pointer.parent / pointer.read_text().strip()
    if complete and not (target / STATE_FILE).is_file():
        raise CheckpointError(f"{target}: checkpoint is incomplete ({STATE_FILE} missing)")
    return target


def read_state(ckpt_dir: Path) -> dict[str, Any]:
    return json.loads((Path(ckpt_dir) / STATE_FILE).read_text())


def load_checkpoint(accelerator, ckpt_dir: Path, model_name: str,
                    ema: torch.nn.Module | None = None) -> dict[str, Any]:
    """Restore model, optimizer, scheduler, scaler and RNG states; return our JSON state.

    Refuses another model's checkpoint, another number of processes (the OneCycle schedule and the RNG
    files are per shard) and any file that needs arbitrary unpickling.
    """
    state = read_state(ckpt_dir)
    if state.get("model") != model_name:
        raise CheckpointError(f"{ckpt_dir}: checkpoint is for model {state.get('model')!r}, not {model_name!r}")
    saved_world = state.get("num_processes") or len(list(Path(ckpt_dir).glob("random_states_*.pkl")))
    if saved_world != accelerator.num_processes:
        raise CheckpointError(f"{ckpt_dir}: the run was trained with {saved_world} process(es); resume it with "
                              f"{saved_world}, not {accelerator.num_processes}")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            accelerator.load_state(str(ckpt_dir))
            rng = torch.load(Path(ckpt_dir) / f"random_states_{accelerator.process_index}.pkl", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{ckpt_dir}: refused to unpickle an unsafe object "
                              f"({str(e).splitlines()[0][:200]})") from None
    except RuntimeError as e:  # shape/key mismatch in the weights
        raise CheckpointError(f"{ckpt_dir}: weights do not fit model {model_name!r} ({str(e).splitlines()[0]})") from None
    # Accelerate restores RNG states inside a try/except that only logs at INFO level: verify it did.
    if not torch.equal(torch.get_rng_state(), rng["torch_manual_seed"]) or random.getstate() != rng["random_state"]:
        raise CheckpointError(f"{ckpt_dir}: random number generator states were not restored")
    if ema is not None:
        path = Path(ckpt_dir) / "ema.safetensors"
        if not path.is_file():
            raise CheckpointError(f"{ckpt_dir}: the run averages its weights (--ema-decay), but ema.safetensors "
                                  "is missing")
        ema.module.load_state_dict(load_file(str(path)))
    return state


def save_weights(model: torch.nn.Module, folder: Path, meta: dict[str, Any]) -> None:
    """Plain-keyed weights as safetensors (+ meta.json), each written to a temp name and moved into place:
    `timm.create_model(name, pretrained=True)`, `s7 evaluate` and `s7 predict` load them as they are."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "model.safetensors.tmp"
    save_file(_plain_state(model), str(tmp), metadata={"model": str(meta.get("model", "")), "s7": json.dumps(meta)})
    os.replace(tmp, folder / "model.safetensors")
    write_atomic(folder / "meta.json", json.dumps(meta, indent=1))


def load_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """State dict and the run's meta (model, classes, mean, std, ...) from a .safetensors file, no pickle."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        info = json.loads(meta["s7"]) if "s7" in meta else {}
        if meta.get("model"):
            info.setdefault("model", meta["model"])
        return load_file(str(path)), info
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
