"""`s7 robustness`: test accuracy under common corruptions, three severities each, built from albumentations.

Each severity is one fixed parameter (a range collapsed to a point), so a corruption is deterministic except
Gaussian noise, whose draws come from a stream seeded by (--seed, corruption, severity): two runs give the
same numbers. Severity 0 is each corruption at zero strength, which is the clean image (checked by a test);
for blur and JPEG, which have no zero-strength setting, it is no transform. Accuracy is the plain (no TTA)
argmax, as the class maps and the ONNX export use.

- gaussian_noise: GaussNoise, per-channel standard deviation as a fraction of 255.
- gaussian_blur: GaussianBlur, sigma in pixels (kernel 2 * int(3.5 sigma) + 1).
- jpeg: ImageCompression, JPEG quality (the shared copy of CIFAR-10 is itself JPEG q75).
- brightness: RandomBrightnessContrast, brightness only: + fraction of 255 added.
- contrast: ColorJitter, contrast only: blended towards the image's mean gray by this factor (1 = unchanged).
- pixelate: Downscale, area-averaged to this fraction of the size and enlarged back with nearest neighbour.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch

from trainer.augment import reseed
from trainer.tools.evaluate import logits_batches

# name: (what the parameter is, the parameter at severities 0, 1, 2, 3)
CORRUPTIONS: dict[str, tuple[str, tuple[float, ...]]] = {
    "gaussian_noise": ("std / 255", (0.0, 0.04, 0.08, 0.12)),
    "gaussian_blur": ("sigma, px", (0.0, 0.6, 1.0, 1.5)),
    "jpeg": ("quality", (100, 40, 20, 10)),
    "brightness": ("+ fraction of 255", (0.0, 0.15, 0.3, 0.45)),
    "contrast": ("factor", (1.0, 0.6, 0.4, 0.2)),
    "pixelate": ("scale", (1.0, 0.75, 0.5, 0.25)),
}
SEVERITIES = (1, 2, 3)


def corruption(name: str, severity: int) -> A.Compose | None:
    """The albumentations pipeline of one corruption at one severity (0-3); None = the image unchanged."""
    if name not in CORRUPTIONS:
        raise ValueError(f"{name}: not a corruption ({', '.join(CORRUPTIONS)})")
    if severity not in (0, *SEVERITIES):
        raise ValueError(f"severity {severity}: must be 0, 1, 2 or 3")
    v = CORRUPTIONS[name][1][severity]
    if name in ("gaussian_blur", "jpeg") and severity == 0:
        return None
    t = {
        "gaussian_noise": lambda: A.GaussNoise(std_range=(v, v), mean_range=(0.0, 0.0), per_channel=True, p=1.0),
        "gaussian_blur": lambda: A.GaussianBlur(blur_limit=0, sigma_limit=(v, v), p=1.0),
        "jpeg": lambda: A.ImageCompression(compression_type="jpeg", quality_range=(int(v), int(v)), p=1.0),
        "brightness": lambda: A.RandomBrightnessContrast(brightness_limit=(v, v), contrast_limit=(0.0, 0.0), p=1.0),
        "contrast": lambda: A.ColorJitter(brightness=(1.0, 1.0), contrast=(v, v), saturation=(1.0, 1.0),
                                          hue=(0.0, 0.0), p=1.0),
        "pixelate": lambda: A.Downscale(scale_range=(v, v), p=1.0, interpolation_pair={
            "downscale": cv2.INTER_AREA, "upscale": cv2.INTER_NEAREST}),
    }[name]()
    return A.Compose([t])


def corrupt(images: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """uint8 NHWC images under one corruption, in order, from a random stream seeded by (seed, name,
    severity): the same call gives the same pixels, whatever ran before it."""
    t = corruption(name, severity)
    if t is None:
        return images
    reseed(t, int(np.random.SeedSequence([seed, list(CORRUPTIONS).index(name), severity]).generate_state(1)[0]))
    return np.stack([t(image=img)["image"] for img in images])


def accuracy(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, mean, std) -> float:
    """Plain (no TTA) test accuracy in percent."""
    return 100.0 * float((logits_batches(model, images, mean, std).argmax(1) == labels).mean())


def robustness(model: torch.nn.Module, mean, std, images: np.ndarray, labels: np.ndarray, seed: int = 0,
               progress=None) -> dict:
    """Clean accuracy, accuracy of every corruption at severities 1-3, their mean and the worst case."""
    clean = accuracy(model, images, labels, mean, std)
    table = {}
    for name, (what, values) in CORRUPTIONS.items():
        accs = [accuracy(model, corrupt(images, name, s, seed), labels, mean, std) for s in SEVERITIES]
        table[name] = {"parameter": what, "values": [values[s] for s in SEVERITIES], "accuracy": accs}
        if progress:
            progress(f"{name}: " + ", ".join(f"{a:.2f}%" for a in accs))
    cells = [(a, name, s) for name, row in table.items() for s, a in zip(SEVERITIES, row["accuracy"])]
    worst = min(cells)
    return {"clean": clean, "corruptions": table, "mean_corruption": float(np.mean([c[0] for c in cells])),
            "worst": {"accuracy": worst[0], "corruption": worst[1], "severity": worst[2]}}


# ---------------------------------------------------------------- outputs

def robustness_markdown(r: dict) -> str:
    """One net's table: a row per corruption (parameter at each severity, accuracy), then clean, mean, worst."""
    lines = [f"`{r['model']}` on {r['test_images']:,} test images ({r['data']}), no TTA, seed {r['seed']}:", "",
             "| corruption | parameter | severity 1 | severity 2 | severity 3 |", "|---|---|---|---|---|"]
    for name, row in r["corruptions"].items():
        cells = [f"{a:.2f}% ({v:g})" for a, v in zip(row["accuracy"], row["values"])]
        lines.append(f"| {name} | {row['parameter']} | " + " | ".join(cells) + " |")
    w = r["worst"]
    lines += ["", f"Clean {r['clean']:.2f}%, mean over the 18 corrupted settings {r['mean_corruption']:.2f}%, "
              f"worst {w['accuracy']:.2f}% ({w['corruption']}, severity {w['severity']})."]
    return "\n".join(lines)


def robustness_png(r: dict, path: Path) -> None:
    """Accuracy against severity, one line per corruption; severity 0 is the clean accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=100)
    for name, row in r["corruptions"].items():
        ax.plot([0, *SEVERITIES], [r["clean"], *row["accuracy"]], marker="o", markersize=3, label=name)
    ax.set_xticks([0, *SEVERITIES], ["clean", "1", "2", "3"])
    ax.set_xlabel("severity")
    ax.set_ylabel("test accuracy, no TTA (%)")
    ax.set_title(f"{r['model']}: accuracy under corruptions ({r['test_images']:,} test images)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def robustness_command(path: str, data: str | None, data_dir: str, out: str, limit: int, seed: int,
                       model_name: str | None) -> int:
    """`s7 robustness`: write OUT/<model>.json, .md and .png for the weights at `path`. A --limit above the test
    split's size is refused rather than run on the whole split: the figures would then be recorded under a
    subset the user did not get (a typo in N, or the wrong --data), and 0 already means all."""
    from trainer.dataset import subset
    from trainer.tools.evaluate import data_source, load_classifier, load_matching_data

    model, meta = load_classifier(path, model_name)
    d = load_matching_data(path, meta, data, data_dir)
    if limit > len(d.test_y):
        raise ValueError(f"--limit {limit}: the test split of {d.source} has {len(d.test_y):,} images "
                         "(0 takes them all)")
    x, y = subset(d.test_x, d.test_y, limit)
    start = time.perf_counter()
    r = robustness(model, meta["mean"], meta["std"], x, y, seed, progress=print)
    r = {"model": meta["model"], "weights": str(path), "data": data_source(d.source, data),
         "test_images": int(len(y)), "seed": seed,
         **r, "seconds": round(time.perf_counter() - start, 1), "cpu_cores": os.cpu_count(),
         "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{meta['model']}.json").write_text(json.dumps(r, indent=2) + "\n")
    (folder / f"{meta['model']}.md").write_text(f"# Robustness: {meta['model']}\n\n{robustness_markdown(r)}\n\n"
                                                f"![{meta['model']}]({meta['model']}.png)\n")
    robustness_png(r, folder / f"{meta['model']}.png")
    print(robustness_markdown(r))
    print(f"wrote {folder / meta['model']}.json, .md, .png")
    return 0
