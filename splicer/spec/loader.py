"""Read a spec from YAML and turn validation failures into one readable message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from splicer.errors import SpecError, did_you_mean
from splicer.spec.schema import Spec


def load_spec(path: str | Path) -> Spec:
    """Load and validate the spec at ``path``; every model reference is checked to exist."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{path}{where}: not valid YAML: {problem}") from None
    return spec_from_dict(data, source=str(path))


def spec_from_dict(data: Any, source: str = "<spec>") -> Spec:
    """Validate an already parsed spec; ``source`` names it in error messages."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec is a YAML mapping (name:, num_classes:, teacher:, ...), got {type(data).__name__}")
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, source)) from None
    from splicer.models.registry import check_model_reference

    for role in ("teacher", "student", "branch_student"):
        network = getattr(spec, role)
        problem = check_model_reference(network.model) if network is not None else None
        if problem:
            raise SpecError(f"{source}: {role}.model: {problem}")
    spec._source = source
    return spec


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem: file, dotted field, the bad value and what would be valid."""
    lines = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        # pydantic names the union member it tried (e.g. 'list[str]'); users never wrote that.
        loc = [part for part in loc if not part.startswith(("list[", "literal[", "function-"))]
        field = ".".join(loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            parent = _model_at(Spec, loc[:-1])
            valid = sorted(parent.model_fields) if parent else []
            hint = did_you_mean(loc[-1], valid)
            lines.append(f"{source}: {field}: unknown field{hint} Valid fields here: {', '.join(valid)}")
            continue
        if err["type"] == "missing":
            lines.append(f"{source}: {field}: required field is missing")
            continue
        value = err.get("input")
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: {field}: {message} (got {value!r})")
    unique = list(dict.fromkeys(lines))
    return "\n".join(unique)


def _model_at(model: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    """The pydantic model class that a location points into, for listing valid keys."""
    for part in loc:
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model
