"""Shared fixtures and helpers: spec files, torch on one thread, a run's metrics, checkpoints flattened."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread in each pytest-xdist worker and every process it starts: ``make test`` runs one
    worker per core, and two workers with a thread per core each would fight over the cores."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[..., Path]:
    """Write a spec (a dict, or YAML text) to a file and return its path."""

    def write(content: dict | str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    on a shared 2-core machine two intra-op threads can be slowed down a hundredfold by any other busy process."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def records(run: Path) -> list[dict]:
    """The epoch records of a training run folder, in order (its metrics.jsonl)."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def flatten(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """A checkpoint's nested dicts as one dict with dotted keys, for comparing two checkpoints tensor by tensor."""
    flat = {}
    for key, value in state.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def toy_spec(**overrides: object) -> dict:
    """A small residual teacher/student pair on 3x16x16 inputs."""
    spec = {
        "name": "toy",
        "num_classes": 10,
        "input_size": [3, 16, 16],
        "teacher": {"model": "python:tests.toy_nets:tiny_resnet", "kwargs": {"width": 8}, "blocks": ["layer1", "layer2", "layer3"]},
        "student": {"model": "python:tests.toy_nets:tiny_resnet", "kwargs": {"width": 4}, "blocks": ["layer1", "layer2", "layer3"]},
    }
    spec.update(overrides)
    return spec


def toy_pair(factory: str) -> dict:
    """Teacher and student both ``tests.toy_nets.<factory>``, cut after ``stage1`` and ``stage2``."""
    network = {"model": f"python:tests.toy_nets:{factory}", "blocks": ["stage1", "stage2"]}
    return {"name": factory, "num_classes": 10, "input_size": [3, 16, 16], "teacher": network, "student": dict(network)}
