"""Which settings a resumed run may change. A run resumed under other settings would train a mix of
two runs and report it under one spec, so ``--resume`` compares the spec a run started with (stored
in its checkpoint) with the one given now, and refuses changes to what the run trains.
"""

from __future__ import annotations

from typing import Any

from splicer.errors import SplicerError

FREE = frozenset(
    {
        "name",
        "data.root",
        "data.download",
        "data.workers",
        "train.epochs",
        "train.device",
        "train.precision",
        "train.memory_format",
        "train.compile",
        "train.eval_every",
        "train.loggers",
        "train.mlflow_uri",
        "teacher.checkpoint",
        "teacher.pretrained",
        "teacher.head",
        "finetune.epochs",
        "student.checkpoint",
        "branch_student.checkpoint",
        "distill.methods",
        "distill.teacher_fold_bn",
        "distill.teacher_channels_last",
        "distill.teacher_precision",
        "distill.teacher_compile",
    }
)
"""Where the data and initial weights lie (teacher.head only decides how they load), how long the run
trains, on what hardware and numerics (the frozen teacher's too) and where its metrics are sent: none
changes the objective an epoch follows (initial weights only matter before the first epoch)."""

COMMON = ("num_classes", "input_size", "data", "train")
TRAINED = {
    "sftn": ("teacher", "student", "branch_student", "transforms", "loss", "finetune"),
    "standard": ("teacher", "finetune"),
    "student": ("student",),
    "distill": ("teacher", "student", "distill"),
    "phase": ("teacher", "student", "distill"),
}
"""The spec sections each kind of run depends on, besides :data:`COMMON`."""


DEFAULT = "(default)"
"""How a setting left out (a model keyword, a method option) is shown."""


def changed_settings(started: dict[str, Any], now: dict[str, Any], kind: str, method: str | None) -> list[str]:
    """``"field: was A, now B"`` for every setting the run depends on that differs between the two specs.

    A distillation depends on its own method's ``distill.options`` only. Settings added to splicer
    after the run started take their defaults, the behaviour the run had.
    """
    sections = COMMON + TRAINED[kind]
    before, after = (_flatten(_relevant(spec, sections, method)) for spec in (_with_defaults(started), now))
    changes = []
    for key in sorted(before.keys() | after.keys()):
        if key in FREE:
            continue
        was, is_now = before.get(key, DEFAULT), after.get(key, DEFAULT)
        if was != is_now:
            changes.append(f"{key}: was {was}, now {is_now}")
    return changes


def _with_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """The started spec as this version of splicer reads it; as stored if it no longer validates."""
    from splicer.spec import spec_from_dict

    try:
        return spec_from_dict(spec).model_dump(mode="json")
    except SplicerError:
        return spec


def _relevant(spec: dict[str, Any], sections: tuple[str, ...], method: str | None) -> dict[str, Any]:
    """The sections a run depends on, with ``distill.options`` cut down to the run's method."""
    kept = {name: spec[name] for name in sections if name in spec}
    if "distill" in kept:
        options = kept["distill"].get("options", {})
        kept["distill"] = {**kept["distill"], "options": {method: options[method]} if method in options else {}}
    return kept


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted names for nested settings; lists (blocks, milestones) stay whole values."""
    flat: dict[str, Any] = {}
    for name, value in tree.items():
        if isinstance(value, dict):  # an empty one (no kwargs, no options) adds nothing
            flat.update(_flatten(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat
