"""CIFAR-10 loading: torchvision download or an image-folder tree / tar archive, decoded once and cached as .npz."""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

SPLITS = ("train", "test")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
CACHE_VERSION = 1
IMAGE_SIZE = 32


class DataError(ValueError):
    """A user-facing problem with the data source, described in one line."""


@dataclass
class CifarData:
    """Both splits as uint8 NHWC images and int64 labels, with class names and where they came from."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    source: str
    from_cache: bool = False


def load_data(data: str | None, data_dir: str = "./data") -> CifarData:
    """Load CIFAR-10 from torchvision (data=None) or from an image-folder tree or tar archive of one."""
    if data is None:
        return _load_torchvision(data_dir)
    path = Path(data).expanduser()
    if not path.exists():
        raise DataError(f"{data}: no such file or directory")
    if path.is_file() and not path.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise DataError(f"{data}: not a folder or a .tar/.tar.gz/.tgz archive")
    path = path.resolve()
    cache = Path(data_dir) / f"cifar-{_source_key(path)}.npz"
    if cache.is_file():
        try:
            return _read_cache(cache)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # damaged or foreign cache file: decode again and overwrite it
    if path.is_dir():
        files = _folder_files(path)
        kind = "image-folder tree"
    else:
        files = _archive_files(path)
        kind = "image-folder archive"
    result = _decode_tree(files, str(path))
    result.source = f"{path} ({kind})"
    _write_cache(cache, result)
    return result


def _load_torchvision(data_dir: str) -> CifarData:
    try:
        from torchvision.datasets import CIFAR10

        train = CIFAR10(root=data_dir, train=True, download=True)
        test = CIFAR10(root=data_dir, train=False, download=True)
    except Exception as e:  # no network, proxy errors, corrupt download: all end the same way
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DataError(
            f"could not download CIFAR-10 into {data_dir} ({reason}); without network access pass a local copy "
            "with --data PATH (a folder PATH/train/<class>/*, PATH/test/<class>/* of PNG/JPEG images, "
            "or a .tar.gz of one)"
        ) from None
    return CifarData(
        train_x=np.asarray(train.data, dtype=np.uint8),
        train_y=np.asarray(train.targets, dtype=np.int64),
        test_x=np.asarray(test.data, dtype=np.uint8),
        test_y=np.asarray(test.targets, dtype=np.int64),
        classes=list(train.classes),
        source=f"original CIFAR-10 (torchvision download in {os.path.abspath(data_dir)})",
    )


def _source_key(path: Path) -> str:
    """Hash of the path, size and mtime of the source (of every file in it, for a folder)."""
    h = hashlib.sha256(f"v{CACHE_VERSION}\0{path}".encode())
    if path.is_file():
        st = path.stat()
        h.update(f"\0{st.st_size}\0{st.st_mtime_ns}".encode())
    else:
        for root, dirs, names in os.walk(path):
            dirs.sort()
            for name in sorted(names):
                st = os.stat(os.path.join(root, name))
                h.update(f"\0{os.path.relpath(os.path.join(root, name), path)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


# A source is reduced to {split: {class: [(display name, bytes loader)]}} and then decoded the same way.
Files = dict[str, dict[str, list[tuple[str, object]]]]


def _hidden(name: str) -> bool:
    return name.startswith(".")  # .DS_Store, ._AppleDouble files and the like


def _folder_files(root: Path) -> Files:
    files: Files = {}
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            raise DataError(f"{root}: no {split}/ folder (expected {split}/<class>/<images>)")
        classes: dict[str, list[tuple[str, object]]] = {}
        for entry in sorted(split_dir.iterdir()):
            if _hidden(entry.name):
                continue
            if not entry.is_dir():
                raise DataError(f"{entry}: expected only class folders in {split_dir}")
            images = []
            for dirpath, dirs, names in os.walk(entry):
                dirs[:] = sorted(d for d in dirs if not _hidden(d))
                images += [Path(dirpath) / n for n in sorted(names) if not _hidden(n)]
            classes[entry.name] = [(str(p), p) for p in images]
        files[split] = classes
    return files


def _archive_files(path: Path) -> Files:
    members: list[tuple[list[str], bytes | None]] = []  # None marks a folder
    try:
        with tarfile.open(path, "r|*") as tf:  # streaming: one pass over the compressed file
            for m in tf:
                parts = [p for p in m.name.split("/") if p not in ("", ".")]
                if not parts or any(_hidden(p) for p in parts) or not (m.isfile() or m.isdir()):
                    continue
                f = tf.extractfile(m) if m.isfile() else None
                members.append((parts, f.read() if f else None))
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        raise DataError(f"{path}: cannot read the archive ({' '.join(str(e).split())})") from None
    tops = {parts[0] for parts, _ in members}
    if not tops & set(SPLITS) and len(tops) == 1:  # one folder wrapping train/ and test/
        members = [(parts[1:], data) for parts, data in members if len(parts) > 1]
    files: Files = {}
    for split in SPLITS:
        classes: dict[str, list[tuple[str, object]]] = {}
        for parts, data in members:
            if not parts or parts[0] != split:
                continue
            if data is None:
                if len(parts) == 2:
                    classes.setdefault(parts[1], [])
                continue
            if len(parts) < 3:
                raise DataError(f"{path}: {'/'.join(parts)}: expected only class folders in {split}/")
            classes.setdefault(parts[1], []).append((f"{path}:{'/'.join(parts)}", data))
        if not classes:
            raise DataError(f"{path}: no {split}/ folder in the archive (expected {split}/<class>/<images>)")
        files[split] = {c: sorted(classes[c], key=lambda item: item[0]) for c in sorted(classes)}
    return files


def _decode_tree(files: Files, where: str) -> CifarData:
    train_classes, test_classes = sorted(files["train"]), sorted(files["test"])
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise DataError(
            f"{where}: train/ and test/ have different class folders "
            f"(only in train: {', '.join(only_train) or '-'}; only in test: {', '.join(only_test) or '-'})"
        )
    if not train_classes:
        raise DataError(f"{where}: train/ has no class folders")
    arrays = []
    for split in SPLITS:
        count = sum(len(v) for v in files[split].values())
        x = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        y = np.empty(count, dtype=np.int64)
        i = 0
        for label, cls in enumerate(train_classes):
            images = files[split][cls]
            if not images:
                raise DataError(f"{where}: {split}/{cls}/ has no images")
            for name, src in images:
                x[i] = _decode(name, src)
                y[i] = label
                i += 1
        arrays += [x, y]
    return CifarData(arrays[0], arrays[1], arrays[2], arrays[3], train_classes, source=where)


def _decode(name: str, src: object) -> np.ndarray:
    try:
        data = src.read_bytes() if isinstance(src, Path) else src
        with Image.open(io.BytesIO(data)) as img:
            size = img.size
            if size != (IMAGE_SIZE, IMAGE_SIZE):
                raise DataError(f"{name}: image is {size[0]}x{size[1]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
            return np.asarray(img.convert("RGB"))  # grayscale, RGBA, palette -> RGB
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{name}: not a readable image ({' '.join(str(e).split())})") from None


def _read_cache(cache: Path) -> CifarData:
    with np.load(cache, allow_pickle=False) as z:
        return CifarData(
            train_x=z["train_x"], train_y=z["train_y"], test_x=z["test_x"], test_y=z["test_y"],
            classes=[str(c) for c in z["classes"]], source=str(z["source"]), from_cache=True,
        )


def _write_cache(cache: Path, d: CifarData) -> None:
    """Write atomically (tmp file + rename), so an interrupted run never leaves a half cache."""
    tmp = cache.with_name(f"{cache.name}.tmp-{os.getpid()}")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, train_x=d.train_x, train_y=d.train_y, test_x=d.test_x, test_y=d.test_y,
                     classes=np.array(d.classes), source=np.array(d.source))
        os.replace(tmp, cache)
    except OSError as e:  # read-only or full disk: the data is loaded all the same, only slower next time
        print(f"warning: could not write the decoded cache {cache} ({e.strerror or e})", file=sys.stderr)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) std in pixel units of a uint8 NHWC array.

    Exact, from each channel's 256-bin histogram: no float copy of the images (2.5 s -> a fraction for 50k).
    """
    if x.ndim != 4 or x.shape[-1] != 3 or len(x) == 0:
        raise ValueError(f"expected a non-empty NHWC array with 3 channels, got shape {x.shape}")
    levels = np.arange(256, dtype=np.float64)
    hist = np.stack([np.bincount(x[..., c].ravel(), minlength=256) for c in range(3)]).astype(np.float64)
    n = hist[0].sum()
    mean = hist @ levels / n
    var = (hist * (levels[None, :] - mean[:, None]) ** 2).sum(axis=1) / n
    return mean, np.sqrt(var)


SPLIT_SEED = 12345  # fixed, so every run (any --seed) holds out the same images and subsets


def subset(x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random subset of n images (class folders are sorted, so a prefix would be one class)."""
    if n <= 0 or n >= len(y):
        return x, y
    idx = np.sort(np.random.default_rng(SPLIT_SEED).permutation(len(y))[:n])
    return x[idx], y[idx]


def split_validation(x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold n images out of a training split, stratified (each class in proportion, largest remainders first)
    and drawn with a fixed seed: (train_x, train_y, val_x, val_y), both in the original order."""
    if not 0 < n < len(y):
        raise DataError(f"--val-split {n}: must be between 1 and {len(y) - 1} (the training split has {len(y)} images)")
    classes, counts = np.unique(y, return_counts=True)
    exact = counts * n / len(y)
    quota = np.floor(exact).astype(int)
    quota[np.argsort(-(exact - quota), kind="stable")[: n - quota.sum()]] += 1
    rng = np.random.default_rng(SPLIT_SEED)
    held = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:q] for c, q in zip(classes, quota)])
    mask = np.zeros(len(y), dtype=bool)
    mask[held] = True
    return x[~mask], y[~mask], x[mask], y[mask]
