"""Read a spec from YAML and turn validation failures into one readable message."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from splicer.errors import SpecError, did_you_mean
from splicer.files import read_text
from splicer.spec.schema import Spec


def load_spec(path: str | Path) -> Spec:
    """Load and validate the spec at ``path``; every model reference is checked to exist."""
    data = load_yaml_mapping(path, "a YAML spec (UTF-8 text)", "name:, num_classes:, teacher:, ...")
    return spec_from_dict(data, source=str(path))


def _duplicate_key(node: yaml.Node, path: tuple[str, ...] = ()) -> tuple[str, int, int] | None:
    """The first key written twice in one mapping, as (dotted path, first line, second line); PyYAML
    itself silently keeps the last one."""
    children: list[tuple[tuple[str, ...], yaml.Node]] = []
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                line = key_node.start_mark.line + 1
                if key_node.value in lines:
                    return ".".join([*path, key_node.value]), lines[key_node.value], line
                lines[key_node.value] = line
                children.append(((*path, key_node.value), value_node))
    elif isinstance(node, yaml.SequenceNode):
        children = [((*path[:-1], f"{path[-1] if path else ''}[{i}]"), item) for i, item in enumerate(node.value)]
    for child_path, child in children:
        found = _duplicate_key(child, child_path)
        if found:
            return found
    return None


def load_yaml_mapping(path: str | Path, expected: str, keys: str) -> dict[str, Any]:
    """A user's YAML file as a mapping: the wrong kind of file, invalid YAML, a duplicated key or
    anything but a mapping is one :class:`SpecError` naming the file (and the line)."""
    path = Path(path)
    text = read_text(path, expected, SpecError)
    try:
        duplicate = _duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader))
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{path}{where}: not valid YAML: {problem}") from None
    if duplicate is not None:
        key, first, second = duplicate
        raise SpecError(
            f"{path}:{second}: {key}: written twice (lines {first} and {second}); keep one (YAML would silently "
            "use the last)"
        )
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a YAML mapping ({keys}); found {_yaml_kind(data)}")
    return data


def _yaml_kind(data: Any) -> str:
    if isinstance(data, list):
        return f"a list of {len(data)} item(s)"
    if data is None:
        return "no content"
    shown = repr(data) if len(repr(data)) <= 40 else repr(data)[:37] + "..."
    return f"a single value, {shown}"


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
    _check_branch_student(spec, source)
    spec._source = source
    return spec


def _check_branch_student(spec: Spec, source: str) -> None:
    """The SFTN's teacher is cut like ``branch_student``, and stage 2 pairs it block by block with the
    student: both must have as many block ends. Checked here where both are listed; with ``auto``
    the compiler checks it (:func:`splicer.assembly.build.compile_spec`)."""
    branch, student = spec.branch_student, spec.student
    if branch is None:
        return
    counts = [len(n.blocks) if isinstance(n.blocks, list) else n.num_blocks for n in (branch, student)]
    if None not in counts and counts[0] != counts[1]:
        field = "blocks" if isinstance(branch.blocks, list) else "num_blocks"
        raise SpecError(
            f"{source}: branch_student.{field}: {counts[0]} blocks, but student has {counts[1]}; the SFTN's teacher is "
            f"cut like the branch student and stage 2 distils the student from it block by block, so list "
            f"{counts[1]} block ends"
        )


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
        if not loc:  # a check across sections: its message names the fields, and the input is the whole spec
            lines.append(f"{source}: {message}")
            continue
        lines.append(f"{source}: {field}: {message} (got {value!r})")
    unique = list(dict.fromkeys(lines))
    return "\n".join(unique)


def _model_at(model: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    """The pydantic model class that a location points into, for listing valid keys."""
    for part in loc:
        field = model.model_fields.get(part)
        if field is None:
            return None
        models = [a for a in (field.annotation, *get_args(field.annotation)) if _is_model(a)]  # X | None: X
        if not models:
            return None
        model = models[0]
    return model


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)
