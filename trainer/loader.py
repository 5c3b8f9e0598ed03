"""Training/test DataLoaders: uint8 images augmented a batch at a time (in worker processes, or in the training
process on the CPU), reproducible per epoch, rank and worker."""
from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, Dataset, get_worker_info

from trainer.augment import BatchAugment, build_train_transform, ramped_probabilities, reseed, set_probabilities
from trainer.config import TrainConfig
from trainer.dataset import CifarData, channel_stats, load_data, split_validation, subset


class AugmentedDataset(Dataset):
    """uint8 NHWC images and int64 labels; items are (uint8 CHW tensor, int label), augmented if a transform is set
    (a DataLoader's batch all at once, `__getitems__`).

    The epoch lives in shared memory, so forked (also persistent) workers see `set_epoch` and reseed their
    transform from (seed, epoch, rank, worker id) at their first item of each epoch; there, too, `schedule`
    (epoch -> transform probabilities, `augment.set_probabilities`), if given, sets the epoch's probabilities.
    With `alternate_flip` each image is flipped in every other epoch instead of by a fresh coin: which images
    start flipped is drawn once from `seed`, the same on every rank and worker.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None, seed: int = 0, rank: int = 0,
                 schedule: Callable[[int], dict[str, float]] | None = None, alternate_flip: bool = False):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 NHWC images with 3 channels, got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.schedule = schedule
        self.seed = seed
        self.rank = rank
        self._epoch = multiprocessing.Value("q", 0, lock=False)
        self._seeded_for: tuple[int, int] | None = None  # (pid, epoch) of the last reseed in this process
        self._rng = np.random.default_rng(seed)
        unfit = transform is None or BatchAugment.unsupported(transform)
        self._batch = None if unfit else BatchAugment(transform)
        self._flipped_first = None
        if alternate_flip:
            if self._batch is None:
                raise ValueError("alternate flip needs the pipeline build_train_transform builds (BatchAugment's)")
            self._flipped_first = np.random.default_rng([seed & (2**64 - 1), 0xF1]).random(len(images)) < 0.5

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of `epoch`; call before iterating the loader for that epoch."""
        self._epoch.value = epoch

    @property
    def epoch(self) -> int:
        return self._epoch.value

    def stream_seed(self, epoch: int, worker_id: int) -> int:
        """Well-mixed 128-bit seed of one (seed, epoch, rank, worker) stream."""
        words = np.random.SeedSequence([self.seed & (2**64 - 1), epoch, self.rank, worker_id]).generate_state(4)
        return int.from_bytes(words.astype("<u4").tobytes(), "little")

    def _start_stream(self) -> None:
        """At the first item of an epoch in this process: reseed the transform and the batch stream from (seed,
        epoch, rank, worker) and set the epoch's probabilities."""
        epoch = self._epoch.value
        if self._seeded_for != (os.getpid(), epoch):  # pid: a fork must never inherit its parent's stream
            info = get_worker_info()
            seed = self.stream_seed(epoch, info.id if info is not None else 0)
            reseed(self.transform, seed)
            self._rng = np.random.default_rng(seed)
            if self.schedule is not None:
                set_probabilities(self.transform, self.schedule(epoch))
            self._seeded_for = (os.getpid(), epoch)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            self._start_stream()
            image = self.transform(image=image)["image"]
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), int(self.labels[index])

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        """A batch's items, as the DataLoader asks for them: augmented all at once by `BatchAugment` where the
        pipeline is one `build_train_transform` builds, else item by item."""
        if self._batch is None:
            return [self[i] for i in indices]
        self._start_stream()
        flip = None if self._flipped_first is None else self._flipped_first[indices] ^ (self.epoch % 2 == 0)
        images = torch.from_numpy(self._batch(self.images[indices], self._rng, flip)).permute(0, 3, 1, 2)
        return list(zip(images.unbind(0), self.labels[indices].tolist()))


def worker_init_fn(worker_id: int) -> None:
    """Per worker: one thread each for OpenCV and torch, so workers don't fight over the cores."""
    import cv2

    cv2.setNumThreads(0)
    torch.set_num_threads(1)


def usable_cores() -> int:
    """Cores this process may run on: its affinity mask (taskset, cgroup cpusets, Slurm), else all of them."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def local_processes() -> int:
    """Training processes on this machine, from the launcher's LOCAL_WORLD_SIZE (torchrun, accelerate launch)."""
    return max(int(os.environ.get("LOCAL_WORLD_SIZE") or 1), 1)


def resolve_workers(workers: int, device_type: str) -> int:
    """Loader workers of a training process on a `device_type` device: `workers` as given, or for -1 (automatic):

    - on the CPU, 0: the step's torch threads already use every core, so a worker process beside them only takes
      cores from the step (measured by benchmarks/loader_workers.py, results/loader-workers-cpu), and its streams
      are those of one worker, so the figures stay the same;
    - elsewhere, this process's share of the usable cores less one core kept for the process itself (at least 0),
      so 8 ranks on 16 cores start 8 workers in all, not 8 x 15.
    """
    if workers >= 0:
        return workers
    if device_type == "cpu":
        return 0
    return max(usable_cores() // local_processes() - 1, 0)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    workers: int,
    drop_last: bool = False,
    pin_memory: bool = False,
    seed: int = 0,
) -> DataLoader:
    """Plain DataLoader: persistent forked workers when workers > 0 (a count, as `resolve_workers` gives), shuffle
    order from a generator seeded by seed."""
    if workers < 0:
        raise ValueError(f"workers must be a count (0 or more; resolve -1 with resolve_workers), not {workers}")
    extra = {}
    if workers > 0:
        extra = dict(persistent_workers=True, prefetch_factor=4, worker_init_fn=worker_init_fn)
        if sys.platform.startswith("linux"):
            extra["multiprocessing_context"] = "fork"
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
        **extra,
    )


@dataclass
class Inputs:
    """What the data side hands the loop: the data, its pixel statistics, datasets and loaders."""

    data: CifarData
    test_x: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    transform: object
    train_ds: AugmentedDataset
    train_loader: DataLoader
    test_loader: DataLoader
    val_loader: DataLoader | None


def build_inputs(cfg: TrainConfig, accelerator: Accelerator, clock: Any = None) -> Inputs:
    """dataset -> (subset) -> validation split -> statistics -> augmentation -> loaders (not yet prepared);
    `clock` (trainer.startup.StartupClock) books the data, statistics and loaders phases of the start-up."""
    mark = clock.mark if clock is not None else (lambda phase: None)
    with accelerator.main_process_first():  # one decode, the other ranks read the cache
        data = load_data(cfg.data, cfg.data_dir)
    train_x, train_y = subset(data.train_x, data.train_y, cfg.train_subset)
    test_x, test_y = subset(data.test_x, data.test_y, cfg.test_subset)
    val = split_validation(train_x, train_y, cfg.val_split) if cfg.val_split else None
    if val:
        train_x, train_y = val[0], val[1]
    mark("data")
    mean, std = channel_stats(train_x)  # of the images trained on: the held-out ones stay unseen
    mark("statistics")
    transform = build_train_transform(mean, **cfg.augment_kwargs())
    rank = accelerator.process_index
    schedule = partial(ramped_probabilities, cfg.augment_kwargs(), cfg.aug_ramp_epochs) if cfg.aug_ramp_epochs else None
    train_ds = AugmentedDataset(train_x, train_y, transform, seed=cfg.seed, rank=rank, schedule=schedule,
                                alternate_flip=cfg.alternate_flip)
    pin = accelerator.device.type == "cuda"
    train_loader = make_loader(train_ds, cfg.batch_size, shuffle=True,
                               workers=resolve_workers(cfg.workers, accelerator.device.type), drop_last=True,
                               pin_memory=pin, seed=cfg.seed)

    def eval_loader(x: np.ndarray, y: np.ndarray) -> DataLoader:
        # even_batches pads every rank's last batch to full size: keep batches no larger than a rank's share
        batch = max(1, min(1000, -(-len(y) // accelerator.num_processes)))
        # no workers: with no augmentation, reading the decoded uint8 arrays here costs less than forked workers'
        # hand-over, and on a 2-core CPU those workers took the cores from the evaluation itself
        return make_loader(AugmentedDataset(x, y, None, seed=cfg.seed, rank=rank), batch, shuffle=False,
                           workers=0, pin_memory=pin, seed=cfg.seed)

    inputs = Inputs(data, test_x, mean, std, transform, train_ds, train_loader, eval_loader(test_x, test_y),
                    eval_loader(val[2], val[3]) if val else None)
    mark("loaders")
    return inputs
