"""Command-line changes to a spec: typed flags (``--epochs 10``) and generic
``--set data.resize=16`` assignments, validated like the spec file itself."""

from __future__ import annotations

from typing import Any

import yaml

from splicer.errors import SpecError
from splicer.spec import Spec, spec_from_dict
from splicer.spec.schema import RECIPES


def apply_overrides(spec: Spec, train: dict[str, Any] | None = None, assignments: list[str] | None = None) -> Spec:
    """``spec`` with ``train`` fields (None values ignored) and ``KEY.PATH=VALUE`` assignments applied.

    Values are parsed as YAML (``16`` is a number, ``[1, 2]`` a list, ``cpu`` a string).
    The result is validated again, so a bad key or value gets the spec's own error message.
    """
    data = spec.model_dump(mode="json")
    explicit = {key for key, value in (train or {}).items() if value is not None}
    for key in explicit:
        data["train"][key] = train[key]  # type: ignore[index]
    for assignment in assignments or []:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set {assignment!r}: expected KEY.PATH=VALUE, e.g. --set data.resize=16")
        path = key.strip().split(".")
        _assign(data, path, _parse(text, assignment), assignment)
        if path[0] == "train" and len(path) == 2:
            explicit.add(path[1])
    _follow_recipe(data["train"], spec.train.recipe, explicit)
    return spec_from_dict(data, source="the spec with command-line overrides")


def _follow_recipe(train: dict[str, Any], old: str, explicit: set[str]) -> None:
    """A new ``train.recipe`` replaces the values that came from the old recipe's defaults."""
    new = train.get("recipe", old)
    if new == old or new not in RECIPES:
        return
    for key, value in RECIPES[old].items():
        if key not in explicit and train.get(key) == value:
            del train[key]


def _parse(text: str, assignment: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise SpecError(f"--set {assignment!r}: the value is not valid YAML") from None


def _assign(data: dict[str, Any], path: list[str], value: Any, assignment: str) -> None:
    node = data
    for depth, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(path[: depth + 1])
            raise SpecError(f"--set {assignment!r}: {where} is a value, not a section with fields")
        node = child
    node[path[-1]] = value


def scale_schedule(spec: Spec, factor: float) -> Spec:
    """``spec`` trained ``factor`` times longer: epochs and LR milestones scaled (the paper's SFTN-4, RCO-EEI-4)."""
    if factor <= 0:
        raise SpecError(f"--schedule-scale {factor}: must be positive, e.g. 4 for the paper's 240x4 epochs")
    train = spec.train
    epochs = max(1, round(train.epochs * factor))
    milestones = [max(1, round(m * factor)) for m in train.milestones]
    return spec.model_copy(update={"train": train.model_copy(update={"epochs": epochs, "milestones": milestones})})


def start_teacher_from(spec: Spec, source: str) -> Spec:
    """``spec`` whose teacher starts from ``source`` (``--from``: a run folder, checkpoint or state_dict
    file), in place of any other initial weights (``teacher.pretrained``)."""
    teacher = spec.teacher.model_copy(update={"checkpoint": source, "pretrained": False})
    return spec.model_copy(update={"teacher": teacher})
