"""AugmentedDataset items and batches, per-epoch/worker seeding through real DataLoader workers, make_loader and
its worker count."""
from __future__ import annotations

import os

import albumentations as A
import numpy as np
import pytest
import torch

from trainer.augment import BatchAugment, build_train_transform
from trainer.loader import AugmentedDataset, make_loader, resolve_workers, worker_init_fn

N = 48


def images(n: int = N, same: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1 if same else n, 32, 32, 3), dtype=np.uint8)
    return np.repeat(x, n, axis=0) if same else x, np.arange(n) % 10


def augmented(seed: int = 0, same: bool = False) -> AugmentedDataset:
    x, y = images(same=same)
    return AugmentedDataset(x, y, build_train_transform((125, 123, 114), ssr_p=1.0, dropout_p=1.0), seed=seed)


def epochs(ds: AugmentedDataset, workers: int, epoch_ids: list[int], shuffle: bool = False, batch_size: int = 8):
    """Images and labels of each requested epoch, through one (persistent) loader."""
    loader = make_loader(ds, batch_size, shuffle=shuffle, workers=workers, seed=3)
    out = []
    for e in epoch_ids:
        ds.set_epoch(e)
        batches = list(loader)
        out.append((torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])))
    return out


def test_item_is_uint8_chw_tensor_and_int_label_of_the_stored_image():
    x, y = images()
    image, label = AugmentedDataset(x, y)[5]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert label == y[5] and isinstance(label, int)
    np.testing.assert_array_equal(image.numpy(), x[5].transpose(2, 0, 1))


def test_rejects_float_or_channels_first_images():
    with pytest.raises(ValueError):
        AugmentedDataset(np.zeros((2, 32, 32, 3), np.float32), np.zeros(2))
    with pytest.raises(ValueError):
        AugmentedDataset(np.zeros((2, 3, 32, 32), np.uint8), np.zeros(2))


def test_two_workers_augment_the_same_image_differently():
    ds = augmented(same=True)  # every index holds the same picture
    (x, _), = epochs(ds, workers=2, epoch_ids=[0], batch_size=4)
    # batches alternate between worker 0 and 1; the k-th item of each worker's stream sits 4 apart
    worker0 = torch.cat([x[i:i + 4] for i in range(0, N, 8)])
    worker1 = torch.cat([x[i + 4:i + 8] for i in range(0, N, 8)])
    assert all(not torch.equal(a, b) for a, b in zip(worker0, worker1))


@pytest.mark.parametrize("workers", [0, 2])
def test_epochs_differ_and_the_same_seed_reproduces_every_epoch(workers):
    run1 = epochs(augmented(seed=7), workers, [0, 1, 2], shuffle=True)
    run2 = epochs(augmented(seed=7), workers, [0, 1, 2], shuffle=True)
    for (x1, y1), (x2, y2) in zip(run1, run2):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(run1[0][1], run1[1][1])  # a new shuffle order per epoch
    # same image index, different epoch: different augmentation
    first = [x[torch.argsort(y, stable=True)] for x, y in run1[:2]]
    assert not torch.equal(first[0], first[1])
    other = epochs(augmented(seed=8), workers, [0], shuffle=True)
    assert not torch.equal(other[0][0], run1[0][0])


@pytest.mark.parametrize("workers", [0, 2])
def test_fresh_dataset_set_to_epoch_k_reproduces_epoch_k_of_the_uninterrupted_run(workers):
    uninterrupted = epochs(augmented(seed=1), workers, [0, 1, 2])
    resumed = epochs(augmented(seed=1), workers, [2])
    assert torch.equal(resumed[0][0], uninterrupted[2][0])
    assert not torch.equal(uninterrupted[1][0], uninterrupted[2][0])


def test_a_fork_after_use_in_the_parent_does_not_inherit_the_parents_stream():
    ds = augmented(same=True)
    parent = torch.stack([image for image, _ in ds.__getitems__([0] * 4)])  # main process seeded and drew
    (x, _), = epochs(ds, workers=1, epoch_ids=[0], batch_size=4)
    fresh = epochs(augmented(same=True), workers=1, epoch_ids=[0], batch_size=4)[0][0]
    assert torch.equal(x, fresh)  # the worker reseeded itself as if the parent had never drawn
    assert torch.equal(parent, x[:4])  # the main process (0 workers) draws worker 0's stream


def test_the_loader_augments_a_pipeline_batch_augment_cannot_run_item_by_item():
    x, y = images()
    odd = A.Compose([A.HorizontalFlip(p=1.0), A.VerticalFlip(p=1.0)])
    assert BatchAugment.unsupported(odd) is not None
    (got, _), = epochs(AugmentedDataset(x, y, odd), workers=0, epoch_ids=[0])
    np.testing.assert_array_equal(got.numpy(), x[:, ::-1, ::-1].transpose(0, 3, 1, 2))


def flipped_per_epoch(seed: int, workers: int, n: int = 200) -> np.ndarray:
    """(epoch, image) -> flipped?, through a shuffling loader with alternate flip and no other transform."""
    x = np.random.default_rng(1).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    ds = AugmentedDataset(x, np.arange(n), build_train_transform((0, 0, 0), ssr_p=0, dropout_p=0, gray_p=0),
                          seed=seed, alternate_flip=True)
    rows = []
    for got, labels in epochs(ds, workers, [1, 2, 3, 4], shuffle=True):
        got = got.permute(0, 2, 3, 1).numpy()[np.argsort(labels.numpy())]
        same, mirrored = (got == x).all(axis=(1, 2, 3)), (got == x[:, :, ::-1]).all(axis=(1, 2, 3))
        assert (same ^ mirrored).all()  # each image is itself or its mirror image, never both or neither
        rows.append(mirrored)
    return np.array(rows)


@pytest.mark.parametrize("workers", [0, 2])
def test_alternate_flip_flips_each_image_in_every_other_epoch_half_of_them_first(workers):
    flips = flipped_per_epoch(seed=0, workers=workers)
    np.testing.assert_array_equal(flips[1], ~flips[0])
    np.testing.assert_array_equal(flips[2], flips[0])
    np.testing.assert_array_equal(flips[3], flips[1])
    assert 70 <= flips[0].sum() <= 130  # about half of 200 (binomial sd 7)
    np.testing.assert_array_equal(flips, flipped_per_epoch(seed=0, workers=2 - workers))
    assert not np.array_equal(flips[0], flipped_per_epoch(seed=1, workers=workers)[0])


def test_alternate_flip_without_the_batch_pipeline_is_refused():
    x, y = images()
    with pytest.raises(ValueError, match="alternate flip"):
        AugmentedDataset(x, y, A.Compose([A.HorizontalFlip(p=0.5)]), alternate_flip=True)


def test_loader_without_transform_returns_the_stored_images_as_uint8_nchw_and_int64_labels():
    x, y = images()
    loader = make_loader(AugmentedDataset(x, y), 16, shuffle=False, workers=2)
    xs, ys = zip(*loader)
    assert xs[0].dtype == torch.uint8 and xs[0].shape == (16, 3, 32, 32) and ys[0].dtype == torch.int64
    np.testing.assert_array_equal(torch.cat(xs).numpy(), x.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(torch.cat(ys).numpy(), y)


def test_make_loader_settings():
    ds = AugmentedDataset(*images())
    loader = make_loader(ds, 16, shuffle=True, workers=2, drop_last=True)
    assert loader.num_workers == 2 and loader.persistent_workers and loader.drop_last
    assert loader.multiprocessing_context.get_start_method() == "fork"
    assert loader.worker_init_fn is worker_init_fn
    assert make_loader(ds, 16, shuffle=False, workers=0).num_workers == 0
    orders = [torch.cat([b[1] for b in make_loader(ds, 16, shuffle=True, workers=0, seed=s)]) for s in (4, 4, 5)]
    assert torch.equal(orders[0], orders[1]) and not torch.equal(orders[0], orders[2])


def machine(monkeypatch, cores: int, usable: int, local_world_size: int | None) -> None:
    """Pretend to run on `cores` cores of which the affinity mask allows `usable`, under a launcher or not."""
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(usable)), raising=False)
    if local_world_size is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world_size))


def test_all_workers_split_the_cores_among_the_local_processes(monkeypatch):
    machine(monkeypatch, cores=16, usable=16, local_world_size=8)
    assert resolve_workers(-1, "cuda") == 1  # 16 cores / 8 ranks, one core of each share for the rank itself
    machine(monkeypatch, cores=16, usable=16, local_world_size=None)
    assert resolve_workers(-1, "cuda") == 15


def test_all_workers_count_only_the_cores_in_the_affinity_mask(monkeypatch):
    machine(monkeypatch, cores=64, usable=4, local_world_size=None)
    assert resolve_workers(-1, "cuda") == 3
    machine(monkeypatch, cores=64, usable=4, local_world_size=1)
    assert resolve_workers(-1, "cuda") == 3


def test_all_workers_fall_back_to_cpu_count_without_an_affinity_mask(monkeypatch):
    machine(monkeypatch, cores=12, usable=12, local_world_size=2)
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows
    assert resolve_workers(-1, "cuda") == 5


def test_all_workers_is_zero_when_ranks_outnumber_the_cores(monkeypatch):
    machine(monkeypatch, cores=2, usable=2, local_world_size=4)
    assert resolve_workers(-1, "cuda") == 0


def test_automatic_workers_on_the_cpu_augment_in_the_training_process(monkeypatch):
    machine(monkeypatch, cores=16, usable=16, local_world_size=None)
    assert resolve_workers(-1, "cpu") == 0 and resolve_workers(-1, "cuda") == 15


def test_make_loader_wants_a_resolved_worker_count():
    with pytest.raises(ValueError, match="resolve_workers"):
        make_loader(AugmentedDataset(*images()), 16, shuffle=False, workers=-1)


def test_an_explicit_worker_count_is_kept(monkeypatch):
    machine(monkeypatch, cores=16, usable=4, local_world_size=8)
    assert [resolve_workers(n, d) for d in ("cuda", "cpu") for n in (0, 1, 3, 32)] == [0, 1, 3, 32] * 2


def test_worker_init_uses_one_thread():
    before = torch.get_num_threads()
    try:
        worker_init_fn(0)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
