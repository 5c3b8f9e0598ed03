"""Session fixtures shared by the trainer tests: the synthetic tree and cached runs, each made once."""
from __future__ import annotations

from pathlib import Path

import pytest

from runs import WEAK, Data, cached_run, shared_data
from trainer.memory import keep_freed_memory
from trainer.runfolder import read_metrics

keep_freed_memory()  # as every training and `s7` process sets it: the first in-process run would, for the rest


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Data:
    return shared_data(tmp_path_factory)


@pytest.fixture(scope="session")
def baseline(data) -> Path:
    """4 epochs, seed 0, one process: the reference run."""
    return cached_run(data, "baseline")


@pytest.fixture(scope="session")
def weak_run(data) -> Path:
    """Two epochs on 256 of the training images: a model that gets some, but not all, test images right (some
    misclassified to show; s7 learns the whole synthetic tree in two epochs)."""
    run = cached_run(data, "weak", *WEAK, epochs=2)
    final = read_metrics(run)[-1]["test_acc"]
    assert 100.0 / 3 + 1 < final < 100.0, f"precondition: the short run should be partly right, got {final}"
    return run
