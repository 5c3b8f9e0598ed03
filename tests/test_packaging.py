"""The project's declared dependency floors (pyproject.toml) and the checkpoint-safety claim they stand for: that
a planted pickle is refused is tested on the project's own resume (tests/test_checkpoint.py), not here on torch's
or Accelerate's loaders."""
from __future__ import annotations

from importlib.metadata import requires, version

import pytest
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
