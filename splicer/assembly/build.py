"""The compiler pipeline: spec -> models -> traced graphs -> blocks -> transforms -> SFTN.

``compile_spec`` keeps every intermediate result (cut points, resolved block ends, shapes,
transform plans, timings) in a :class:`BuildResult`, from which reports and the standalone
source are emitted; ``build`` returns just the module.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import fx, nn

from splicer.assembly.modules import SFTN, Branch
from splicer.assembly.tapped import TappedBlockNet
from splicer.assembly.teacher_start import load_teacher_start
from splicer.errors import CutError, SplicerError
from splicer.models.registry import create_model, input_size_hint
from splicer.spec import Spec, load_spec
from splicer.spec.schema import NetworkSpec
from splicer.synthesis.transforms import Transform, TransformPlan, plan_transform
from splicer.trace.cuts import CutPoint, find_cut_points, resolve_block_ends
from splicer.trace.layouts import FeatureLayout
from splicer.trace.partition import split_graph
from splicer.trace.preactivation import find_preactivations
from splicer.trace.shapes import propagate_shapes
from splicer.trace.stages import (
    auto_block_ends,
    check_feature_layout,
    depth_block_ends,
    is_isotropic,
    match_ends,
)
from splicer.trace.tracer import TracedModel, trace_model

EQUIVALENCE_TOLERANCE = 1e-5


@dataclass
class NetworkPlan:
    """What the compiler learnt about one network (teacher or student)."""

    role: str
    reference: str
    model: nn.Module
    traced: TracedModel
    cut_points: list[CutPoint]
    block_ends: list[CutPoint]
    parts: list[fx.GraphModule]  # blocks, then the head
    auto: bool

    @property
    def block_shapes(self) -> list[tuple[int, ...]]:
        return [c.shape for c in self.block_ends]

    @property
    def block_labels(self) -> list[str]:
        return [c.label for c in self.block_ends]

    @property
    def block_layouts(self) -> list[FeatureLayout]:
        """Every block end's layout (plan_network refuses block ends without one)."""
        return [c.layout for c in self.block_ends]  # type: ignore[misc]


@dataclass
class BuildResult:
    """An SFTN and everything decided while compiling it."""

    spec: Spec
    source: str
    sftn: SFTN
    teacher: NetworkPlan
    student: NetworkPlan  # the network of the student branches: spec.branch_network
    transforms: list[TransformPlan]
    equivalence_error: float | None
    seconds: float
    notes: list[str] = field(default_factory=list)

    def resolved_spec(self) -> Spec:
        """The spec with automatic choices written out, for a user to copy and edit."""
        spec = self.spec.model_copy(deep=True)
        spec.teacher.blocks = self.teacher.block_labels
        spec.branch_network.blocks = self.student.block_labels
        spec.teacher.num_blocks = spec.branch_network.num_blocks = None
        return spec


def build(spec_or_path: Spec | str | Path, verify: bool = True, initial_weights: bool = True) -> SFTN:
    """Compile a spec (or the spec file at a path) into an SFTN module."""
    return compile_spec(spec_or_path, verify=verify, initial_weights=initial_weights).sftn


def compile_spec(spec_or_path: Spec | str | Path, verify: bool = True, initial_weights: bool = True) -> BuildResult:
    """Run the whole compiler; with ``verify``, check the result numerically (see :func:`verify_build`).

    ``initial_weights``: load the teacher's (``teacher.checkpoint``, ``teacher.pretrained``); off when
    trained weights are loaded next anyway (a resume, a finished run's network).
    """
    start = time.perf_counter()
    spec = spec_or_path if isinstance(spec_or_path, Spec) else load_spec(spec_or_path)
    source = spec.source
    notes: list[str] = []
    teacher = plan_network(spec, spec.teacher, "teacher", source, notes)
    student = plan_network(spec, spec.branch_network, spec.branch_role, source, notes)
    _pair_blocks(teacher, student, source, notes)
    if spec.branch_student is not None:
        _check_distilled_student(spec, len(teacher.block_ends), source)
    transforms = [
        plan_transform(
            teacher.block_layouts[i], student.block_layouts[i], spec.transforms.equal_kernel, spec.transforms.activation
        )
        for i in range(len(teacher.block_ends) - 1)
    ]
    notes += [f"T^{i + 1}: {plan.note}" for i, plan in enumerate(transforms) if plan.note]
    sftn = assemble(spec, teacher, student, transforms)
    if initial_weights and spec.teacher_starts_trained:
        notes += load_teacher_start(spec, teacher, sftn.teacher)
    result = BuildResult(spec, source, sftn, teacher, student, transforms, None, 0.0, notes)
    if verify:
        result.equivalence_error = verify_build(result)
    result.seconds = time.perf_counter() - start
    return result


def plan_network(spec: Spec, network: NetworkSpec, role: str, source: str, notes: list[str] | None = None) -> NetworkPlan:
    """Create, trace, shape-propagate and cut one network; automatic choices are added to ``notes``."""
    notes = notes if notes is not None else []
    # The teacher's initial weights may be a run's or another class count's: compile_spec loads them.
    checkpoint = network.checkpoint if role != "teacher" else None
    model = create_model(network.model, spec.num_classes, network.kwargs, checkpoint)
    traced = trace_model(model, name=f"{role} {network.model}")
    hint = input_size_hint(model, spec.input_size, f"{role}.kwargs")
    propagate_shapes(traced.graph_module, spec.input_size, name=f"{source}: {role}.model: {network.model}", hint=hint)
    cut_points = find_cut_points(traced, model)
    check_feature_layout(model, cut_points, f"{source}: {role}.model: {network.model}")
    where = f"{source}: {role}.blocks"
    if network.blocks == "auto":
        ends, origin = auto_block_ends(traced, model, cut_points, network.num_blocks)
        notes.append(f"{role}: blocks: auto chose {', '.join(c.label for c in ends)} ({origin})")
        if len(ends) < 2:
            raise CutError(
                f"{where}: auto found {len(ends)} stage end(s) in {network.model}; an SFTN needs at least 2. "
                "List block ends by hand (see `splicer inspect`)."
            )
    else:
        nodes = resolve_block_ends(traced, network.blocks, cut_points, where)
        by_node = {c.node: c for c in cut_points}
        ends = [by_node[n.name] for n in nodes]
        for index, end in enumerate(ends):
            if end.layout is None:
                raise CutError(
                    f"{where}[{index}]: {network.blocks[index]!r} has shape {end.shape}, which is no feature: a block "
                    "end must be an NCHW map (C, H, W), an NHWC map (H, W, C) or a token sequence over the patch grid "
                    "(prefix + h*w, C); see the layout column of `splicer inspect`"
                )
    node_by_name = {n.name: n for n in traced.nodes}
    parts = split_graph(traced.graph_module, [node_by_name[c.node] for c in ends])
    return NetworkPlan(role, network.model, model, traced, cut_points, ends, parts, network.blocks == "auto")


def _pair_blocks(teacher: NetworkPlan, student: NetworkPlan, source: str, notes: list[str]) -> None:
    """Teacher block i feeds student block i+1: both networks need the same number of blocks."""
    n_t, n_s = len(teacher.block_ends), len(student.block_ends)
    if n_t == n_s:
        return
    if not (teacher.auto or student.auto):
        raise CutError(
            f"{source}: {student.role}.blocks: lists {n_s} block ends and teacher.blocks {n_t}; "
            f"teacher and {student.role} need the same number of blocks"
        )
    # An automatic side keeps the stages that best match the other side's resolutions.
    n = min(n_t, n_s)
    for plan, other in ((teacher, student), (student, teacher)):
        if len(plan.block_ends) > n:
            if not plan.auto:
                raise CutError(
                    f"{source}: {plan.role}.blocks lists {len(plan.block_ends)} block ends but the other network "
                    f"has only {n} stages; list {n} block ends"
                )
            if is_isotropic(plan.block_ends):  # cut by depth again, into as many groups as the other side
                kept = depth_block_ends(plan.traced, plan.model, plan.cut_points, n)
            else:
                kept = match_ends(plan.block_ends, [lay.grid for lay in other.block_layouts])
            dropped = [c.label for c in plan.block_ends if c not in kept]
            notes.append(
                f"{plan.role}: auto kept {', '.join(c.label for c in kept)} to pair with the other network's "
                f"{n} blocks (merged {', '.join(dropped)} into the blocks after them)"
            )
            node_by_name = {nd.name: nd for nd in plan.traced.nodes}
            plan.block_ends = kept
            plan.parts = split_graph(plan.traced.graph_module, [node_by_name[c.node] for c in kept])


def _check_distilled_student(spec: Spec, teacher_blocks: int, source: str) -> None:
    """Stage 2 pairs the SFTN's teacher with the student block by block: with a ``branch_student``
    the student is cut on its own, so check now that it has as many blocks, not after stage 1."""
    ends = plan_network(spec, spec.student, "student", source).block_ends
    if len(ends) != teacher_blocks:
        raise CutError(
            f"{source}: student.blocks: the student is cut into {len(ends)} blocks "
            f"({', '.join(c.label for c in ends)}) but the SFTN's teacher, paired with branch_student, into "
            f"{teacher_blocks}; stage 2 needs the same number: list {teacher_blocks} block ends for the student "
            "or change branch_student.blocks"
        )


def assemble(spec: Spec, teacher: NetworkPlan, student: NetworkPlan, transforms: list[TransformPlan]) -> SFTN:
    """Teacher blocks + one branch per teacher block but the last, with fresh student blocks."""
    teacher_net = block_net(teacher)
    node_by_name = {n.name: n for n in student.traced.nodes}
    cut_nodes = [node_by_name[c.node] for c in student.block_ends]
    branches = []
    for i, plan in enumerate(transforms):
        # A fresh instance per branch: each branch starts from the student's own initialisation.
        network = spec.branch_network
        fresh = create_model(network.model, spec.num_classes, network.kwargs, network.checkpoint)
        for name, module in student.traced.added_modules.items():
            fresh.add_module(name, copy.deepcopy(module))
        _copy_traced_constants(student.traced.graph_module, fresh)
        parts = split_graph(student.traced.graph_module, cut_nodes, root=fresh)
        blocks = parts[i + 1 : -1]
        branches.append(Branch(Transform(plan), blocks, parts[-1], clone_input=_clone_flags(blocks[:1])[0]))
    return SFTN(teacher_net, branches)


def _copy_traced_constants(traced: fx.GraphModule, fresh: nn.Module) -> None:
    """Tensor constants the tracer lifted onto the traced module (``_tensor_constant0``, e.g. Swin V2's
    relative-position tables) are no attributes of a fresh model instance: give it the same ones."""
    for node in traced.graph.nodes:
        if node.op != "get_attr" or "." in str(node.target) or hasattr(fresh, str(node.target)):
            continue
        value = getattr(traced, str(node.target))
        if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
            fresh.register_buffer(str(node.target), value.clone(), persistent=False)


def build_student(spec: Spec | str | Path) -> TappedBlockNet:
    """A fresh student cut at its block ends: logits, block features and pre-activations for stage 2."""
    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    return block_net(plan_network(spec, spec.student, "student", spec.source))


def block_net(plan: NetworkPlan) -> TappedBlockNet:
    """The planned network run block by block, sharing the traced model's weights, with its pre-activation taps."""
    blocks = plan.parts[:-1]
    taps = find_preactivations(plan.traced, plan.cut_points, plan.block_ends, blocks)
    layouts = [c.layout.describe() if c.layout is not None and c.layout.kind != "nchw" else "" for c in plan.block_ends]
    return TappedBlockNet(blocks, plan.parts[-1], clone_inputs=_clone_flags(blocks), taps=taps, layouts=layouts)


def verify_build(result: BuildResult) -> float:
    """Check the SFTN; returns the max abs difference between teacher and original model.

    In eval mode, on a seeded random image: the teacher's blocks run in sequence must
    reproduce the original teacher's logits (real compute). Each branch is then run on fake
    tensors (shapes only, no compute; real ones where a branch reads tensor values): every
    transform must give the student block's input shape, every branch logits of the right shape.
    """
    from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode

    spec, sftn = result.spec, result.sftn
    x = torch.randn(1, *spec.input_size, generator=torch.Generator().manual_seed(0))
    original = result.teacher.model
    modes = (original.training, sftn.training)
    original.eval()
    sftn.eval()
    try:
        with torch.no_grad():
            expected = original(x)
            features, logits = sftn.teacher.forward_features(x)
            state = _module_state(sftn.branches)
            try:
                with FakeTensorMode(allow_non_fake_inputs=True) as fake:
                    _check_branches(result, [fake.from_tensor(f) for f in features])
            except DataDependentOutputException:  # a branch reads tensor values (ConViT): check it for real
                _restore_module_state(sftn.branches, state)
                _check_branches(result, features)
            finally:
                _restore_module_state(sftn.branches, state)
    finally:
        original.train(modes[0])
        sftn.train(modes[1])
    error = (logits - expected).abs().max().item()
    if error > EQUIVALENCE_TOLERANCE:
        raise SplicerError(
            f"{result.source}: the teacher's blocks run in sequence differ from {spec.teacher.model} by {error:.3g} "
            f"(tolerance {EQUIVALENCE_TOLERANCE}); the traced graph does not reproduce the model. The usual cause is "
            "forward code that reads self.training or tensor values in Python, which tracing evaluates once; "
            "register such modules with timm.layers.register_notrace_module to keep them opaque"
        )
    return error


def _module_state(root: nn.Module) -> dict[tuple[int, str], object]:
    """Every module's plain attributes and buffers, by module id and name (parameters are never reassigned)."""
    state: dict[tuple[int, str], object] = {}
    for m in root.modules():
        state.update({(id(m), k): v for k, v in vars(m).items() if not k.startswith("_")})
        state.update({(id(m), f"buffer:{k}"): v for k, v in m._buffers.items()})
    return state


def _restore_module_state(root: nn.Module, state: dict[tuple[int, str], object]) -> None:
    """Undo tensors a forward on fake tensors cached on a module (ConViT caches its position
    indices): left in place, a fake tensor would turn every later real forward fake."""
    from torch._subclasses.fake_tensor import FakeTensor

    for m in root.modules():
        for k, v in list(vars(m).items()):
            if isinstance(v, FakeTensor):
                setattr(m, k, state.get((id(m), k)))
        for k, v in list(m._buffers.items()):
            if isinstance(v, FakeTensor):
                m._buffers[k] = state.get((id(m), f"buffer:{k}"))  # type: ignore[assignment]


def _check_branches(result: BuildResult, features: list[torch.Tensor]) -> None:
    """Every transform gives its student block's input shape; every branch gives logits of the right shape."""
    for i, branch in enumerate(result.sftn.branches, start=1):
        shape = tuple(branch.transform(features[i - 1]).shape[1:])
        expected_shape = result.student.block_shapes[i - 1]
        if shape != expected_shape:
            raise SplicerError(f"internal error: transform T^{i} gives {shape}, expected {expected_shape}")
        branch_shape = tuple(branch(features[i - 1]).shape)
        if branch_shape != (1, result.spec.num_classes):
            raise SplicerError(f"internal error: branch {i} gives logits of shape {branch_shape}")


def _clone_flags(blocks: list[fx.GraphModule]) -> list[bool]:
    """Which blocks modify their input in place, so their input must be copied first."""
    flags = []
    for block in blocks:
        placeholder = next(n for n in block.graph.nodes if n.op == "placeholder")
        flags.append(any(_is_inplace(block, user) for user in placeholder.users))
    return flags


def _is_inplace(block: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return bool(getattr(block.get_submodule(node.target), "inplace", False))
    if node.op == "call_method":
        return str(node.target).endswith("_") and not str(node.target).startswith("_")
    if node.op == "call_function":
        return bool(node.kwargs.get("inplace", False)) or getattr(node.target, "__name__", "").endswith("_")
    return False
