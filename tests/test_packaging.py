"""Declared dependency floors, and the checkpoint-safety claim they stand for (trainer/checkpoint.py)."""
from __future__ import annotations

import os
import pickle
import zipfile
from importlib.metadata import requires, version
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

# torch.load defaults to weights_only=True from 2.6; 2.6 and 2.10 fixed code execution through weights_only
# loading itself (CVE-2025-32434, CVE-2026-24747). The claim "a planted pickle is refused" needs all three.
SAFE_TORCH = Version("2.10")
# accelerate.utils.load passes weights_only=True itself from 1.1 (1.0 called torch.load bare), so
# TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD in the environment cannot turn Accelerate's loading unsafe.
SAFE_ACCELERATE = Version("1.1")


def declared(name: str) -> Requirement:
    """The installed s7 distribution's requirement on `name` (pyproject.toml, as last installed)."""
    reqs = [Requirement(r) for r in requires("s7") or []]
    matches = [r for r in reqs if r.name == name and r.marker is None]
    assert len(matches) == 1, f"s7 declares {len(matches)} unconditional requirements on {name}"
    return matches[0]


def floor(req: Requirement) -> Version:
    """The lowest version a requirement admits, from its >=, ~= or == bounds."""
    bounds = [Version(s.version) for s in req.specifier if s.operator in (">=", "~=", "==")]
    assert bounds, f"{req} has no lower bound"
    return max(bounds)


@pytest.mark.parametrize("name", ["torch", "torchvision", "accelerate"])
def test_installed_version_satisfies_the_declared_requirement(name):
    assert declared(name).specifier.contains(version(name), prereleases=True)


def test_declared_torch_floor_refuses_pickles_by_default_and_has_the_unpickler_fixes():
    assert floor(declared("torch")) >= SAFE_TORCH


def test_declared_accelerate_floor_passes_weights_only_itself():
    assert floor(declared("accelerate")) >= SAFE_ACCELERATE


class Planted:
    """Unpickling this calls os.mkdir(marker): a stand-in for any code a crafted checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.fixture(params=["torch.save", "plain pickle"])
def planted(request, tmp_path) -> tuple[Path, Path]:
    """A checkpoint file holding a Planted object, and the marker that appears if its code runs."""
    marker, path = tmp_path / "code-ran", tmp_path / "optimizer.bin"
    payload = {"state": Planted(marker)}
    if request.param == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))  # torch's legacy format reads a plain pickle
    return path, marker


def test_the_planted_payload_runs_when_unpickled_freely(planted):
    path, marker = planted
    if zipfile.is_zipfile(path):
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.is_dir()  # the payload is live, so the refusals below are real


def test_torch_load_by_default_refuses_a_planted_pickle_without_running_it(planted, monkeypatch):
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    path, marker = planted
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)
    assert not marker.exists()


def test_accelerate_load_refuses_a_planted_pickle_even_when_the_environment_asks_for_unsafe_loading(
        planted, monkeypatch):
    from accelerate.utils import load

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # turns torch.load's default unsafe
    path, marker = planted
    with pytest.raises(pickle.UnpicklingError):
        load(path)
    assert not marker.exists()
