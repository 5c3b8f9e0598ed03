"""Data loading from folders and archives, the decoded cache, input errors and channel statistics."""
from __future__ import annotations

import os
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer import dataset
from trainer.tools.data import stats_command
from trainer.dataset import DataError, channel_stats, load_data

CLASSES = ["zebra", "ant", "mole"]  # written unsorted: labels must follow sorted names
SHARED = Path(__file__).resolve().parents[1].parent / "shared/data/cifar10-jpeg.tar.gz"


def pixel(cls: str, split: str, i: int) -> tuple[int, int, int]:
    """A colour that encodes class, split and index, so a loaded image tells where it came from."""
    return (sorted(CLASSES).index(cls) * 50, (split == "test") * 100 + i, 7)


def write_tree(root: Path, counts: dict[str, int] | None = None, classes: list[str] = CLASSES) -> Path:
    counts = counts or {"train": 4, "test": 2}
    for split, n in counts.items():
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (32, 32), pixel(cls, split, i)).save(root / split / cls / f"{i:04d}.png")
    return root


def write_tar(tree: Path, out: Path, top: str | None) -> Path:
    mode = "w:gz" if out.name.endswith(("gz", "tgz")) else "w"
    with tarfile.open(out, mode) as tf:
        if top is None:
            for split in ("train", "test"):
                tf.add(tree / split, arcname=split)
        else:
            tf.add(tree, arcname=top)
    return out


def expected(split: str, counts: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    x, y = [], []
    for label, cls in enumerate(sorted(CLASSES)):
        for i in range(counts[split]):
            x.append(np.broadcast_to(np.array(pixel(cls, split, i), np.uint8), (32, 32, 3)))
            y.append(label)
    return np.stack(x), np.array(y, dtype=np.int64)


def assert_matches_tree(d, counts=None):
    counts = counts or {"train": 4, "test": 2}
    assert d.classes == sorted(CLASSES)
    for split in ("train", "test"):
        x, y = getattr(d, f"{split}_x"), getattr(d, f"{split}_y")
        ex, ey = expected(split, counts)
        assert x.dtype == np.uint8 and x.shape == (len(ey), 32, 32, 3)
        assert y.dtype == np.int64
        np.testing.assert_array_equal(y, ey)
        np.testing.assert_array_equal(x, ex)


def test_folder_source_loads_images_with_sorted_class_labels(tmp_path):
    tree = write_tree(tmp_path / "tree")
    d = load_data(str(tree), str(tmp_path / "cache"))
    assert_matches_tree(d)
    assert str(tree) in d.source and not d.from_cache


@pytest.mark.parametrize("name,top", [("c.tar.gz", None), ("c.tgz", "cifar10"), ("c.tar", "cifar10"), ("d.tar", ".")])
def test_archive_source_loads_like_the_folder(tmp_path, name, top):
    tar = write_tar(write_tree(tmp_path / "tree"), tmp_path / name, top)
    assert_matches_tree(load_data(str(tar), str(tmp_path / "cache")))


def test_second_load_comes_from_the_cache_without_decoding(tmp_path, monkeypatch):
    tar = write_tar(write_tree(tmp_path / "tree"), tmp_path / "c.tar.gz", "top")
    first = load_data(str(tar), str(tmp_path / "cache"))

    def no_decoding(*args):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(dataset, "_decode", no_decoding)
    second = load_data(str(tar), str(tmp_path / "cache"))
    assert second.from_cache and not first.from_cache
    assert_matches_tree(second)
    assert second.source == first.source
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".npz"]  # one cache, no tmp file left behind


def test_damaged_cache_is_decoded_again_and_replaced(tmp_path):
    tree = write_tree(tmp_path / "tree")
    load_data(str(tree), str(tmp_path / "cache"))
    cache = next((tmp_path / "cache").iterdir())
    cache.write_bytes(cache.read_bytes()[:1000])  # e.g. a copy cut short
    d = load_data(str(tree), str(tmp_path / "cache"))
    assert not d.from_cache
    assert_matches_tree(d)
    assert load_data(str(tree), str(tmp_path / "cache")).from_cache


def test_unwritable_cache_folder_only_warns(tmp_path, capsys):
    tree = write_tree(tmp_path / "tree")
    (tmp_path / "blocker").write_text("a file where the cache folder should go")
    assert_matches_tree(load_data(str(tree), str(tmp_path / "blocker" / "cache")))
    assert "warning: could not write the decoded cache" in capsys.readouterr().err


def test_cache_is_rebuilt_when_a_file_in_the_folder_changes(tmp_path):
    tree = write_tree(tmp_path / "tree")
    load_data(str(tree), str(tmp_path / "cache"))
    Image.new("RGB", (32, 32), (1, 2, 3)).save(tree / "train/ant/0000.png")
    os.utime(tree / "train/ant/0000.png", ns=(1, 1))  # a different mtime even on coarse filesystems
    d = load_data(str(tree), str(tmp_path / "cache"))
    assert not d.from_cache
    assert tuple(d.train_x[0, 0, 0]) == (1, 2, 3)


def test_grayscale_rgba_and_palette_images_are_converted_to_rgb(tmp_path):
    tree = write_tree(tmp_path / "tree")
    Image.new("L", (32, 32), 77).save(tree / "train/ant/0000.png")
    Image.new("RGBA", (32, 32), (10, 20, 30, 40)).save(tree / "train/ant/0001.png")
    Image.new("RGB", (32, 32), (90, 80, 70)).convert("P", palette=Image.Palette.ADAPTIVE).save(tree / "train/ant/0002.png")
    assert [Image.open(tree / f"train/ant/000{i}.png").mode for i in range(3)] == ["L", "RGBA", "P"]
    d = load_data(str(tree), str(tmp_path / "cache"))
    assert d.train_x.shape[1:] == (32, 32, 3)
    assert tuple(d.train_x[0, 5, 5]) == (77, 77, 77)
    assert tuple(d.train_x[1, 5, 5]) == (10, 20, 30)
    assert tuple(d.train_x[2, 5, 5]) == (90, 80, 70)


def test_jpeg_files_are_read(tmp_path):
    tree = write_tree(tmp_path / "tree")
    Image.new("RGB", (32, 32), (200, 100, 50)).save(tree / "test/mole/0000.jpg", quality=95)
    d = load_data(str(tree), str(tmp_path / "cache"))
    assert np.abs(d.test_x[2].astype(int) - (200, 100, 50)).max() <= 3  # after ant's 2; 0000.jpg < 0000.png
    assert len(d.test_x) == 7


def error_of(source, tmp_path) -> str:
    with pytest.raises(DataError) as e:
        load_data(str(source), str(tmp_path / "cache"))
    message = str(e.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_missing_path_is_named(tmp_path):
    assert str(tmp_path / "nope") in error_of(tmp_path / "nope", tmp_path)


@pytest.mark.parametrize("split", ["train", "test"])
def test_missing_split_folder_is_named(tmp_path, split):
    tree = write_tree(tmp_path / "tree", counts={"train" if split == "test" else "test": 1})
    message = error_of(tree, tmp_path)
    assert str(tree) in message and f"{split}/" in message


def test_missing_split_in_an_archive_is_named(tmp_path):
    tree = write_tree(tmp_path / "tree", counts={"train": 1})
    tar = write_tar(tree, tmp_path / "t.tar.gz", "top")
    message = error_of(tar, tmp_path)
    assert str(tar) in message and "test/" in message


def test_differing_class_folders_are_named(tmp_path):
    tree = write_tree(tmp_path / "tree")
    (tree / "test/ant").rename(tree / "test/bee")
    message = error_of(tree, tmp_path)
    assert str(tree) in message and "ant" in message and "bee" in message


@pytest.mark.parametrize("archive", [False, True])
def test_empty_class_folder_is_named(tmp_path, archive):
    tree = write_tree(tmp_path / "tree")
    for f in (tree / "train/mole").iterdir():
        f.unlink()
    source = write_tar(tree, tmp_path / "t.tar.gz", None) if archive else tree
    message = error_of(source, tmp_path)
    assert str(source) in message and "train/mole" in message and "no images" in message


@pytest.mark.parametrize("archive", [False, True])
def test_non_image_file_is_named(tmp_path, archive):
    tree = write_tree(tmp_path / "tree")
    (tree / "train/ant/notes.txt").write_text("not a picture")
    source = write_tar(tree, tmp_path / "t.tar.gz", None) if archive else tree
    message = error_of(source, tmp_path)
    assert str(source) in message and "train/ant/notes.txt" in message


def test_truncated_image_is_named(tmp_path):
    tree = write_tree(tmp_path / "tree")
    Image.new("RGB", (32, 32), (1, 2, 3)).save(tree / "test/zebra/0000.jpg")
    data = (tree / "test/zebra/0000.jpg").read_bytes()
    (tree / "test/zebra/0000.jpg").write_bytes(data[: len(data) // 3])
    assert "test/zebra/0000.jpg" in error_of(tree, tmp_path)


def test_image_of_the_wrong_size_is_named(tmp_path):
    tree = write_tree(tmp_path / "tree")
    Image.new("RGB", (40, 40)).save(tree / "train/zebra/big.png")
    message = error_of(tree, tmp_path)
    assert str(tree / "train/zebra/big.png") in message and "40x40" in message


def test_a_file_that_is_neither_folder_nor_archive_is_named(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"PK")
    assert str(tmp_path / "x.zip") in error_of(tmp_path / "x.zip", tmp_path)


def test_corrupt_archive_is_named(tmp_path):
    (tmp_path / "x.tar.gz").write_bytes(b"\x1f\x8b garbage")
    assert str(tmp_path / "x.tar.gz") in error_of(tmp_path / "x.tar.gz", tmp_path)


def test_download_failure_without_network_points_to_data_flag(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise RuntimeError("<urlopen error [Errno -3] Temporary failure\nin name resolution>")

    fake = types.ModuleType("torchvision")
    fake.datasets = types.SimpleNamespace(CIFAR10=offline)
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", fake.datasets)
    with pytest.raises(DataError) as e:
        load_data(None, str(tmp_path / "dl"))
    message = str(e.value)
    assert "--data" in message and "download" in message and str(tmp_path / "dl") in message
    assert "\n" not in message


def test_channel_stats_match_numpy_over_the_whole_array():
    x = np.random.default_rng(0).integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    x[:, :, :, 2] //= 3  # channels with different statistics
    mean, std = channel_stats(x)
    flat = x.astype(np.float64).reshape(-1, 3)
    np.testing.assert_allclose(mean, flat.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, flat.std(axis=0), rtol=1e-12)


def test_stats_command_prints_counts_classes_and_both_scales(tmp_path, capsys):
    tree = write_tree(tmp_path / "tree")
    assert stats_command(str(tree), str(tmp_path / "cache")) == 0
    out = capsys.readouterr().out
    mean = np.array([pixel(c, "train", i) for c in CLASSES for i in range(4)], float).mean(axis=0)
    assert "train:    12 images (4 per class)" in out and "test:     6 images (2 per class)" in out
    assert "3 (ant, mole, zebra)" in out
    assert f"({mean[0]:.2f}, {mean[1]:.2f}, {mean[2]:.2f}) pixels" in out
    assert f"({mean[0] / 255:.4f}, {mean[1] / 255:.4f}, {mean[2] / 255:.4f}) on 0-1 scale" in out
    assert "decoded" in out
    stats_command(str(tree), str(tmp_path / "cache"))
    assert "from the decoded cache" in capsys.readouterr().out


@pytest.fixture(scope="session")
def shared_cifar(tmp_path_factory):
    if not SHARED.is_file():
        pytest.skip(f"shared CIFAR-10 copy not found at {SHARED}")
    return load_data(str(SHARED), str(tmp_path_factory.mktemp("cifar-cache")))


@pytest.mark.slow
def test_shared_jpeg_copy_loads_complete_and_balanced(shared_cifar):
    d = shared_cifar
    assert d.train_x.shape == (50_000, 32, 32, 3) and d.test_x.shape == (10_000, 32, 32, 3)
    assert d.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert np.bincount(d.train_y).tolist() == [5_000] * 10
    assert np.bincount(d.test_y).tolist() == [1_000] * 10
    mean, std = channel_stats(d.train_x)
    np.testing.assert_allclose(mean, (125.3, 123.0, 113.9), atol=1.5)
    np.testing.assert_allclose(std, (63.0, 62.1, 66.7), atol=1.5)
