"""`s7 evaluate` and `s7 predict`: load best weights (safetensors only) and test or classify."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch
import yaml

import models  # noqa: F401  (registers the s7 nets)
from models.nets import CIFAR10_MEAN, CIFAR10_STD
from trainer.checkpoint import STATE_FILE, CheckpointError, load_weights
from trainer.dataset import load_data
from trainer.loop import normalize, shift_tta, tta_logits
from trainer.runfolder import LEGACY_WEIGHTS_DIR, WEIGHTS_DIR, confusion_matrix, model_meta, per_class_rows
from trainer.tracking import weights_path

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def per_class_markdown(preds: np.ndarray, labels: np.ndarray, classes: list[str]) -> str:
    """The per-class accuracy table and the confusion matrix (`s7 evaluate`, per_class.md)."""
    m = confusion_matrix(preds, labels, len(classes))
    lines = ["| class | test images | correct | accuracy |", "|---|---|---|---|"]
    lines += [f"| {c} | {total} | {right} | {acc:.2f}% |"
              for c, total, right, acc in per_class_rows(preds, labels, classes)]
    lines += ["", "Confusion matrix (rows: true class, columns: predicted):", "",
              "| | " + " | ".join(c[:5] for c in classes) + " |", "|---" * (len(classes) + 1) + "|"]
    lines += [f"| {c} | " + " | ".join(str(int(v)) for v in m[i]) + " |" for i, c in enumerate(classes)]
    return "\n".join(lines)


def _weights_file(path: Path) -> Path:
    """A run folder (its model/, or best/ in runs made before model selection moved off the test split), a
    weights folder, or a .safetensors file."""
    for candidate in (path, path / WEIGHTS_DIR / "model.safetensors", path / LEGACY_WEIGHTS_DIR / "model.safetensors",
                      path / "model.safetensors"):
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"{path}: no weights found (expected a .safetensors file, a run folder or {WEIGHTS_DIR}/)")


def _named_in(path: Path) -> str | None:
    """The "model" a checkpoint's state.json or a run's config.yaml names; None if absent or unreadable."""
    try:
        found = yaml.safe_load(path.read_text()) if path.is_file() else None  # JSON is YAML
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return found.get("model") if isinstance(found, dict) and isinstance(found.get("model"), str) else None


def weights_meta(weights: Path, meta: dict) -> tuple[dict, str]:
    """Which net the weights file `weights` belongs to, and where that is said: the one place that answers it.
    The file's own metadata (the shipped RUN/model/ weights, `save_weights`) comes first. Accelerate writes
    none into a checkpoint's weights (RUN/checkpoints/epoch-N/), so there the checkpoint's state.json, else
    the run folder's config.yaml, names the net, and the run's shipped meta.json gives the classes, mean and
    std the checkpoint was trained with. Returns `meta` so completed, and the source, for messages."""
    if meta.get("model"):
        return meta, f"{weights}'s metadata"
    folder = weights.parent
    run = folder.parent.parent if folder.parent.name == "checkpoints" else None
    for source in (folder / STATE_FILE, run / "config.yaml" if run else None):
        name = _named_in(source) if source else None
        if name:
            trained = {k: v for k, v in model_meta(run).items() if k in ("classes", "mean", "std")} if run else {}
            return {**trained, **meta, "model": name}, str(source)
    return meta, ""


def load_classifier(path: str, model_name: str | None = None) -> tuple[torch.nn.Module, dict]:
    """The model with its weights and its meta (classes, mean, std), all without unpickling. `path`: a run
    folder, checkpoint folder, weights folder or .safetensors file, or a W&B model artifact
    (`entity/project/name:alias`). The net is the one `weights_meta` finds; `model_name` only where none is
    found, and refused where it names another (s7_v1, s7_strided_v1 and s7_dilated_v1 share every tensor shape,
    so the weights would load into the wrong net without complaint)."""
    weights = _weights_file(weights_path(path))  # a W&B artifact reference is downloaded first (online)
    state, meta = load_weights(weights)
    meta, source = weights_meta(weights, meta)
    stored = meta.get("model")
    if model_name and stored and model_name != stored:
        raise CheckpointError(f"--model {model_name}: {weights} holds model {stored!r} (named in {source}); "
                              "drop --model")
    name = model_name or stored
    if not name:
        raise CheckpointError(f"{weights}: neither the file nor a run folder around it says which model it holds; "
                              "pass --model")
    if not timm.is_model(name):
        raise CheckpointError(f"{name}: not a registered model (the s7 nets: {', '.join(models.MODEL_NAMES)})")
    classes = meta.get("classes") or CIFAR10_CLASSES
    model = timm.create_model(name, num_classes=len(classes))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{weights}: weights do not fit model {name!r} ({str(e).splitlines()[0]})") from None
    model = model.to(memory_format=torch.channels_last)  # CPU inference runs about 1.6x faster in NHWC
    cifar10 = {"mean": [255 * m for m in CIFAR10_MEAN], "std": [255 * s for s in CIFAR10_STD]}  # pixel units
    return model.eval(), {**cifar10, **meta, "model": name, "classes": classes}


def normalized_batches(images: np.ndarray, mean, std, batch_size: int = 500):
    """uint8 NHWC images as normalised float NCHW (channels-last) batches, in order."""
    for i in range(0, len(images), batch_size):
        x = normalize(torch.from_numpy(images[i:i + batch_size]).permute(0, 3, 1, 2), mean, std)
        yield x.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def logits_batches(model: torch.nn.Module, images: np.ndarray, mean, std, batch_size: int = 500) -> np.ndarray:
    """Plain (no TTA) logits of uint8 NHWC images: what the class maps, the ONNX export and the robustness
    report are checked against."""
    return np.concatenate([model(x).numpy() for x in normalized_batches(images, mean, std, batch_size)])


@torch.no_grad()
def predict_batches(model: torch.nn.Module, images: np.ndarray, mean, std, batch_size: int = 500,
                    tta_shift: int = 0) -> tuple[np.ndarray, ...]:
    """Softmax probabilities of uint8 NHWC images, without and with flip TTA (one pass over each image and
    one over its mirror serve both), and with `tta_shift` > 0 a third array: with shift TTA (`tta_logits`)."""
    parts = []
    for x in normalized_batches(images, mean, std, batch_size):
        views = tta_logits(model, x, tta_shift)
        logits = [views[0], (views[0] + views[1]) / 2] + ([shift_tta(*views)] if tta_shift else [])
        parts.append([t.softmax(1).numpy() for t in logits])
    return tuple(np.concatenate(kind) for kind in zip(*parts))


def data_source(source: str, data: str | None) -> str:
    """A CifarData source with the path as the user named it (the loader resolves it), for committed files."""
    return source.replace(str(Path(data).expanduser().resolve()), data) if data else source


def load_matching_data(path: str, meta: dict, data: str | None, data_dir: str):
    """The dataset at `data`, refused in one line unless its classes are those the weights at `path` learned."""
    d = load_data(data, data_dir)
    if list(d.classes) != list(meta["classes"]):
        raise CheckpointError(f"{path}: trained on classes {meta['classes']}, but {d.source} has {d.classes}")
    return d


def evaluate_command(path: str, data: str | None, data_dir: str, model_name: str | None, batch_size: int,
                     tta_shift: int = 0) -> int:
    """`s7 evaluate`: test accuracy without and with flip TTA (and with shift TTA, given `tta_shift`), and
    per-class accuracy, of saved weights."""
    model, meta = load_classifier(path, model_name)
    d = load_matching_data(path, meta, data, data_dir)
    plain, tta, *moved = (p.argmax(1) for p in predict_batches(model, d.test_x, meta["mean"], meta["std"],
                                                                batch_size, tta_shift))
    n, right, right_tta = len(d.test_y), int((plain == d.test_y).sum()), int((tta == d.test_y).sum())
    shift_txt = ""
    if moved:
        right_shift = int((moved[0] == d.test_y).sum())
        shift_txt = f", with flip and ±{tta_shift} px shift TTA {100.0 * right_shift / n:.2f}% ({right_shift}/{n})"
    print(f"{meta['model']} on {d.source}: test accuracy {100.0 * right / n:.2f}% ({right}/{n}), "
          f"with flip TTA {100.0 * right_tta / n:.2f}% ({right_tta}/{n}){shift_txt}")
    print(per_class_markdown(plain, d.test_y, list(d.classes)))
    return 0


def read_image(path: str) -> np.ndarray:
    """An image file as 32x32 RGB uint8 (any size or mode; resized bilinearly), as `s7 predict` reads it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (32, 32):
                img = img.resize((32, 32), Image.BILINEAR)
            return np.array(img, dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: not a readable image ({e.__class__.__name__})") from None


def predict_command(path: str, images: list[str], model_name: str | None) -> int:
    """`s7 predict`: class and probability per image (mean of the image's and its mirror's logits)."""
    model, meta = load_classifier(path, model_name)
    batch = np.stack([read_image(p) for p in images])
    probs = predict_batches(model, batch, meta["mean"], meta["std"])[1]
    for p, row in zip(images, probs):
        k = int(row.argmax())
        print(f"{p}: {meta['classes'][k]} ({row[k]:.3f})")
    return 0
