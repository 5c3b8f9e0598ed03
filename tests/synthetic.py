"""A small, separable synthetic image task written as an image-folder tree (for trainer tests)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("hstripes", "square", "vstripes")


def pattern(cls: int, rng: np.random.Generator) -> np.ndarray:
    """32x32 RGB uint8: horizontal stripes, a bright centre square, or vertical stripes, on noise."""
    img = rng.integers(0, 60, (32, 32, 3)).astype(np.int32)
    colour = rng.integers(120, 255, 3)
    if cls == 0:
        img[::4] += colour
        img[1::4] += colour
    elif cls == 1:
        o = rng.integers(6, 12)
        img[o:o + 14, o:o + 14] += colour
    else:
        img[:, ::4] += colour
        img[:, 1::4] += colour
    return np.clip(img, 0, 255).astype(np.uint8)


def write_tree(root: Path, n_train: int = 64, n_test: int = 24, seed: int = 0) -> Path:
    """root/train/<class>/*.png and root/test/<class>/*.png; returns root."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for c, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(pattern(c, rng)).save(d / f"{i:04d}.png")
    return root


if __name__ == "__main__":  # python tests/synthetic.py DIR [N_TRAIN N_TEST]: the tree the README's sweep demo uses
    import sys

    if len(sys.argv) not in (2, 4):
        raise SystemExit("usage: python tests/synthetic.py DIR [N_TRAIN_PER_CLASS N_TEST_PER_CLASS]")
    counts = [int(n) for n in sys.argv[2:]] or [200, 51]
    print(write_tree(Path(sys.argv[1]), *counts))
