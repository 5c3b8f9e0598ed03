"""Class activation maps (`s7 explain`, and the run report's grid of the most confident mistakes).

The s7 nets map channels to classes with a 1x1 conv *before* global average pooling (their classifier,
`get_classifier()`), so the map entering GAP is each class's evidence place by place and its mean is the logit:
the class activation map costs one forward pass and no extra library (grad-cam and the like compute
gradients to weight a feature map; here the weighting is already done by the head). Maps are upsampled
bilinearly to 32x32. Their cells tile the image in s7 and s7_strided (stride 4 and 8); in s7_dilated
(no stride, unpadded transitions) the 4x4 cells lie 1 pixel apart at the centre and each sees almost the
whole image, so its maps say little about where.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from trainer.runfolder import read_predictions
from trainer.tools.evaluate import load_classifier, normalized_batches, read_image

MAP_SIZE = 32
MISTAKES_SHOWN = 8  # the report's grid: the most confident of the mistakes predictions.npz keeps
MISTAKE_MAPS_NPZ, MISTAKE_MAPS_PNG = "mistake_maps.npz", "mistake_maps.png"


class NoClassMapError(ValueError):
    """The net's classifier is no 1x1 conv before GAP, so it has no class activation map."""


def class_map_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The net's classifier (timm's `get_classifier`) when it is a 1x1 conv before GAP: its output is the class
    map GAP averages."""
    get = getattr(model, "get_classifier", None)
    layer = get() if callable(get) else None
    if not (isinstance(layer, torch.nn.Conv2d) and layer.kernel_size == (1, 1)):
        raise NoClassMapError(f"{type(model).__name__}'s classifier is {type(layer).__name__}, not a 1x1 conv to the "
                              "classes before GAP: class activation maps need one")
    return layer


@torch.no_grad()
def class_maps(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, maps) of a normalised NCHW batch: maps (N, classes, h, w) is the head's 1x1-conv output as
    it enters GAP, captured by a hook during the ordinary forward pass that returns the logits."""
    captured: list[torch.Tensor] = []
    handle = class_map_layer(model).register_forward_hook(lambda module, args, out: captured.append(out))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return logits, captured[-1]


def upsample(maps: torch.Tensor, size: int = MAP_SIZE) -> torch.Tensor:
    """(N, C, h, w) maps to (N, C, size, size), bilinear (pixel centres aligned, as the cells tile the image)."""
    return F.interpolate(maps.float(), size=(size, size), mode="bilinear", align_corners=False)


def image_maps(model: torch.nn.Module, images: np.ndarray, mean: Sequence[float], std: Sequence[float],
               pick: np.ndarray | None = None, top: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For uint8 NHWC images: (logits (N, classes), class indices (N, k), 32x32 maps (N, k, 32, 32)).
    The classes are `pick` (N, k) when given, else each image's `top` highest logits."""
    logits, maps = [], []
    for x in normalized_batches(images, mean, std, batch_size=250):
        lg, mp = class_maps(model, x)
        logits.append(lg)
        maps.append(mp)
    lg, mp = torch.cat(logits), torch.cat(maps)
    idx = torch.from_numpy(np.asarray(pick, dtype=np.int64)) if pick is not None else lg.topk(top, dim=1).indices
    chosen = mp[torch.arange(len(mp))[:, None], idx]  # (N, k, h, w)
    return lg.numpy(), idx.numpy(), upsample(chosen).numpy()


# ---------------------------------------------------------------- figures

def _grid_png(items: list[dict], path: Path, title: str, per_row: int) -> None:
    """Items side by side, `per_row` to a row; each item is its image (titled `label`) then its maps overlaid
    on it (titled), on one colour scale per item so the classes' evidence can be compared."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 1 + max(len(it["maps"]) for it in items)
    rows, cols = -(-len(items) // per_row), panels * min(per_row, len(items))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.45, rows * 1.75 + 0.5), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for n, it in enumerate(items):
        r, c0 = divmod(n, per_row)
        c0 *= panels
        axes[r][c0].imshow(it["image"])
        axes[r][c0].set_title(it["label"], fontsize=7)
        lo, hi = float(min(m.min() for m, _ in it["maps"])), float(max(m.max() for m, _ in it["maps"]))
        for k, (m, text) in enumerate(it["maps"], start=1):
            ax = axes[r][c0 + k]
            ax.imshow(it["image"])
            ax.imshow(m, cmap="jet", alpha=0.5, vmin=lo, vmax=hi if hi > lo else lo + 1e-6)
            ax.set_title(text, fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


# ---------------------------------------------------------------- s7 explain

def true_labels(images: list[str], classes: list[str], labels: str | None) -> list[int | None]:
    """Each image's true class index: from --labels (comma-separated, one per image, '-' = unknown), else its
    folder's name when that is a class name (the test-folder layout), else unknown (None)."""
    if labels is None:
        return [classes.index(Path(p).parent.name) if Path(p).parent.name in classes else None for p in images]
    names = [n.strip() for n in labels.split(",")]
    if len(names) != len(images):
        raise ValueError(f"--labels: {len(names)} labels for {len(images)} images")
    unknown = [n for n in names if n != "-" and n not in classes]
    if unknown:
        raise ValueError(f"--labels: {unknown[0]!r} is not a class of these weights ({', '.join(classes)})")
    return [None if n == "-" else classes.index(n) for n in names]


def explain_command(path: str, images: list[str], out: str, top: int, labels: str | None,
                    model_name: str | None, per_row: int = 2) -> int:
    """`s7 explain`: per image, its predicted class (plain forward pass, no TTA: the maps explain that pass)
    and the class activation maps of its `top` classes, drawn to `out` (a .png path, checked by the command
    line: cli.Output); one line per image printed."""
    if not 1 <= top <= 3:
        raise ValueError(f"--top {top}: must be 1, 2 or 3")
    model, meta = load_classifier(path, model_name)
    classes = list(meta["classes"])
    truth = true_labels(images, classes, labels)
    batch = np.stack([read_image(p) for p in images])
    logits, idx, maps = image_maps(model, batch, meta["mean"], meta["std"], top=min(top, len(classes)))
    probs = _softmax(logits)
    items = []
    for p, img, t, row, ks, ms in zip(images, batch, truth, probs, idx, maps):
        verdict = "" if t is None else (" ✓" if ks[0] == t else " ✗")
        label = f"{Path(p).name}\ntrue: {classes[t] if t is not None else '?'}{verdict}"
        items.append({"image": img, "label": label,
                      "maps": [(m, f"{classes[k]} {row[k]:.2f}") for k, m in zip(ks, ms)]})
        print(f"{p}: {classes[ks[0]]} ({row[ks[0]]:.3f})" + ("" if t is None else f", true {classes[t]}"))
    _grid_png(items, Path(out), f"{meta['model']}: class activation maps of the top {top} "
              f"(class, probability; no TTA), one colour scale per image", per_row)
    print(out)
    return 0


# ---------------------------------------------------------------- the run report's grid

def save_mistake_maps(run_dir: Path, n: int = MISTAKES_SHOWN) -> Path | None:
    """mistake_maps.npz: the `n` most confident mistakes among those predictions.npz keeps, with the 32x32
    maps of their predicted and true classes under the run's shipped weights. None when the run folder has
    no predictions.npz, no weights, or a net without a class map; the report then draws from an earlier
    mistake_maps.npz if there is one. An unreadable predictions.npz is a ValueError naming it."""
    from trainer.checkpoint import CheckpointError

    run_dir = Path(run_dir)
    p = read_predictions(run_dir)
    if p is None:
        return None
    try:
        model, meta = load_classifier(str(run_dir))
        class_map_layer(model)
    except (CheckpointError, NoClassMapError):
        return None
    order = np.argsort(-p["probs"][p["wrong_index"]], kind="stable")[:n]
    index, images = p["wrong_index"][order], p["wrong_images"][order]
    true, predicted = p["labels"][index], p["preds"][index]
    maps = (image_maps(model, images, meta["mean"], meta["std"], pick=np.stack([predicted, true], axis=1))[2]
            if len(index) else np.zeros((0, 2, MAP_SIZE, MAP_SIZE), np.float32))
    out = run_dir / MISTAKE_MAPS_NPZ
    tmp = run_dir / "mistake_maps.tmp.npz"
    np.savez_compressed(tmp, index=index, images=images, true=true, predicted=predicted,
                        probability=p["probs"][index], predicted_map=maps[:, 0], true_map=maps[:, 1],
                        classes=p["classes"], epoch=np.int64(meta.get("epoch", -1)))
    tmp.replace(out)
    return out


def mistake_maps_png(run_dir: Path) -> Path | None:
    """mistake_maps.png from mistake_maps.npz (None when there is none): each mistake, the map of the class
    it was taken for and the map of its true class."""
    run_dir = Path(run_dir)
    src = run_dir / MISTAKE_MAPS_NPZ
    if not src.is_file():
        return None
    m = np.load(src)
    classes = [str(c) for c in m["classes"]]
    items = [{"image": img, "label": f"test #{i}",
              "maps": [(pm, f"taken for {classes[p]}\n{prob:.2f}"), (tm, f"true: {classes[t]}")]}
             for i, img, p, t, prob, pm, tm in zip(m["index"], m["images"], m["predicted"], m["true"],
                                                    m["probability"], m["predicted_map"], m["true_map"])]
    out = run_dir / MISTAKE_MAPS_PNG
    if not items:  # no mistakes: no grid (nor one left from an earlier build)
        out.unlink(missing_ok=True)
        return None
    _grid_png(items, out, "most confident mistakes: class activation maps of the predicted and the true class "
              "(no TTA), one colour scale per image", per_row=2)
    return out
