"""Shared fixtures: spec files written to a temporary folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[..., Path]:
    """Write a spec (a dict, or YAML text) to a file and return its path."""

    def write(content: dict | str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return path

    return write


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
