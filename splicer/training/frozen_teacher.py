"""The frozen teacher of stage 2, prepared for inference: cheaper per image, same outputs.

A distillation runs the teacher once per step and never trains it, so it can run as an
inference network: BatchNorm folded into the convolutions (:mod:`splicer.trace.fold_batchnorm`,
on a copy), eval mode for good, channels-last and bf16 where the device gains from them, and
optionally ``torch.compile`` d. :class:`InferenceTeacher` converts its input and hands back
float32 outputs in the memory format the rest of the step uses, so the methods see the same
values in the same form. :func:`inference_teacher` builds it from ``distill.teacher_*`` and
checks it against the unfolded teacher on one batch before anything trains.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, fx, nn

from splicer.assembly.tapped import TappedBlockNet
from splicer.errors import SplicerError
from splicer.spec.schema import DistillSpec
from splicer.trace.fold_batchnorm import fold_batchnorm, retarget_tap
from splicer.training.hardware import native_bf16
from splicer.training.methods.base import block_features

if TYPE_CHECKING:
    from splicer.training.engine import Runtime
    from splicer.training.methods import DistillMethod

RELATIVE_TOLERANCE = {"fp32": 1e-3, "bf16": 1e-1}
"""Largest max |difference| to the unfolded fp32 teacher, relative to the largest |value| of the same output:
a fold gone wrong is off by the order of the values themselves; bf16 alone rounds to ~3 significant digits."""


@dataclass(frozen=True)
class TeacherNumerics:
    """How the frozen teacher runs, resolved for one device from ``distill.teacher_*``."""

    fold_bn: bool
    channels_last: bool
    precision: str  # fp32 | bf16
    compile: bool

    @classmethod
    def resolve(cls, spec: DistillSpec, device: torch.device) -> TeacherNumerics:
        """``auto``: channels-last everywhere (faster on CUDA, and measured faster for resnet32x4 on the CPU);
        bf16 where the device runs it natively (:func:`native_bf16`: CUDA GPUs that support it, CPUs with
        AMX), fp32 elsewhere (bf16 convolutions are emulated and far slower there)."""
        channels_last = spec.teacher_channels_last if spec.teacher_channels_last != "auto" else True
        precision = spec.teacher_precision
        if precision == "auto":
            precision = "bf16" if native_bf16(device) else "fp32"
        return cls(spec.teacher_fold_bn, channels_last, precision, spec.teacher_compile)


@dataclass(frozen=True)
class FoldSummary:
    """What folding did to a network: pairs folded, and each BatchNorm left (``block k: path (type): why``)."""

    folded: int
    left: tuple[str, ...]


def folded_copy(network: TappedBlockNet) -> tuple[TappedBlockNet, FoldSummary]:
    """A copy of ``network`` in eval mode with its BatchNorms folded into its convolutions, taps moved to the
    nodes that hold their values; ``network`` itself is unchanged."""
    folded = copy.deepcopy(network).eval()
    graphs = {f"block {k}": block for k, block in enumerate(folded.blocks, start=1)}
    graphs["head"] = folded.head
    graphs = {name: g for name, g in graphs.items() if isinstance(g, fx.GraphModule)}
    shared = _modules_called_by_several(list(graphs.values()))
    count, left, taps = 0, [], list(folded.taps)
    for name, graph_module in graphs.items():
        folding = fold_batchnorm(graph_module, shared)
        count += len(folding.folded)
        left += [f"{name}: {reason}" for reason in folding.left]
        if name.startswith("block") and taps:
            index = int(name.split()[1]) - 1
            taps[index] = retarget_tap(taps[index], folding)
    folded.taps = taps
    folded._tapped = None  # regenerated from the folded graphs on first use
    return folded, FoldSummary(count, tuple(left))


class InferenceTeacher(TappedBlockNet):
    """A frozen TappedBlockNet that runs with its own numerics and delivers float32 outputs.

    Input is made channels-last (or contiguous) to match the weights, the forward runs under
    bf16 autocast or with autocast off (fp32, whatever the training step's autocast), and
    4-D outputs come back contiguous when the teacher runs channels-last but the step does not.
    It stays in eval mode and without gradients whatever is asked of it.
    """

    def __init__(self, network: TappedBlockNet, numerics: TeacherNumerics, step_channels_last: bool) -> None:
        super().__init__(list(network.blocks), network.head, network.clone_inputs, network.taps, network.layouts)
        self.numerics = numerics
        self.step_channels_last = step_channels_last
        self._compiled: dict[str, Callable[[Tensor], Any]] = {}
        self.requires_grad_(False)
        self.eval()
        if numerics.channels_last:
            self.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> InferenceTeacher:
        """Always eval: its BatchNorms are folded or frozen."""
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        return self._run("forward", x)

    def forward_features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        return self._run("forward_features", x)

    def forward_preactivations(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
        return self._run("forward_preactivations", x)

    def _run(self, entry: str, x: Tensor) -> Any:
        """The plain network's ``entry`` (compiled once with ``teacher_compile``) with this teacher's numerics."""
        code = getattr(TappedBlockNet, entry).__get__(self)
        if self.numerics.compile:
            if entry not in self._compiled:  # frozen weights: inductor may fold them in as constants
                self._compiled[entry] = torch.compile(code, options={"freezing": True})
            code = self._compiled[entry]
        if x.dim() == 4:
            layout = torch.channels_last if self.numerics.channels_last else torch.contiguous_format
            x = x.contiguous(memory_format=layout)
        with torch.no_grad(), self._precision(x.device.type):
            return self._deliver(code(x))

    def _precision(self, device_type: str) -> AbstractContextManager[Any]:
        if self.numerics.precision == "bf16":
            return torch.autocast(device_type, dtype=torch.bfloat16)
        return torch.autocast(device_type, enabled=False)

    def _deliver(self, value: Any) -> Any:
        """Outputs as float32, 4-D ones contiguous where the teacher runs channels-last and the step does not."""
        if isinstance(value, Tensor):
            if value.dim() == 4 and self.numerics.channels_last and not self.step_channels_last:
                return value.to(torch.float32, memory_format=torch.contiguous_format)
            return value.float()
        return type(value)(self._deliver(v) for v in value)


def inference_teacher(
    teacher: TappedBlockNet, spec: DistillSpec, method: DistillMethod, images: Tensor, runtime: Runtime
) -> tuple[InferenceTeacher, dict[str, Any]]:
    """The frozen teacher for stage 2 and what it is (for the run's meta, with its ``line`` to log).

    ``teacher`` is the loaded teacher, on the runtime's device, already read by ``method.prepare``
    (OH reads BatchNorm statistics there). On ``images`` (the first training batch) the logits and
    the features ``method`` reads (its block outputs or pre-activations; block outputs for a
    logit method) are compared with ``teacher`` run in fp32; a difference beyond
    :data:`RELATIVE_TOLERANCE` is refused.
    """
    numerics = TeacherNumerics.resolve(spec, runtime.device)
    teacher.eval()
    network, summary = folded_copy(teacher) if numerics.fold_bn else (teacher, None)
    prepared = InferenceTeacher(network, numerics, runtime.channels_last).to(runtime.device)
    reads = "pre-activations" if method.needs_preactivations else "block outputs"
    with torch.no_grad(), torch.autocast(runtime.device.type, enabled=False):
        expected = _outputs(method, teacher, images.contiguous())
    got = _checked_run(prepared, method, images)
    logits = _difference(got[1], expected[1])
    features = max((_difference(g, e) for g, e in zip(got[0], expected[0], strict=True)), default=(0.0, 0.0))
    facts: dict[str, Any] = {
        "fold_bn": numerics.fold_bn,
        "batchnorms_folded": summary.folded if summary else 0,
        "batchnorms_left": list(summary.left) if summary else [],
        "channels_last": numerics.channels_last,
        "precision": numerics.precision,
        "compile": numerics.compile,
        "checked_images": len(images),
        "max_abs_diff": {"logits": logits[0], reads.replace(" ", "_").replace("-", "_"): features[0]},
    }
    facts["line"] = _line(facts, numerics, reads, logits[0], features[0])
    tolerance = RELATIVE_TOLERANCE[numerics.precision]
    for what, (difference, scale) in (("logits", logits), (reads, features)):
        if difference > tolerance * max(scale, 1e-6):
            raise SplicerError(_refusal(numerics, what, difference, scale, tolerance))
    return prepared, facts


def _outputs(method: DistillMethod, network: TappedBlockNet, images: Tensor) -> tuple[list[Tensor], Tensor]:
    """The features ``method`` reads (block outputs for a method that reads none) and the logits."""
    if method.needs_features or method.needs_preactivations:
        return block_features(method, network, images)
    return network.forward_features(images)


def _checked_run(
    prepared: InferenceTeacher, method: DistillMethod, images: Tensor
) -> tuple[list[Tensor], Tensor]:
    """The prepared teacher's outputs on ``images``; a torch.compile failure is said as the setting's error."""
    if not prepared.numerics.compile:
        return _outputs(method, prepared, images)
    if not torch._dynamo.is_dynamo_supported():
        raise SplicerError(
            "distill.teacher_compile: torch.compile is not available with this Python and torch; "
            "set distill.teacher_compile=false"
        )
    try:
        return _outputs(method, prepared, images)
    except Exception as exc:  # any backend's failure (no C compiler, an unsupported op): the user's remedy is one
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SplicerError(
            f"distill.teacher_compile: torch.compile could not compile the teacher ({type(exc).__name__}: "
            f"{first_line}); set distill.teacher_compile=false"
        ) from None


def _difference(got: Tensor, expected: Tensor) -> tuple[float, float]:
    """(max |got - expected|, max |expected|)."""
    return (got.float() - expected.float()).abs().max().item(), expected.float().abs().max().item()


def _line(facts: dict[str, Any], numerics: TeacherNumerics, reads: str, logits: float, features: float) -> str:
    if numerics.fold_bn:
        left = f" ({len(facts['batchnorms_left'])} left as they are)" if facts["batchnorms_left"] else ""
        fold = f"{facts['batchnorms_folded']} BatchNorms folded into convolutions{left}"
    else:
        fold = "BatchNorms not folded"
    layout = "channels-last" if numerics.channels_last else "contiguous"
    compiled = ", compiled" if numerics.compile else ""
    return (
        f"teacher: {fold}, {layout}, {numerics.precision}{compiled}; max |Δ| logits {logits:.1e}, "
        f"{reads} {features:.1e} against the unfolded teacher"
    )


def _refusal(numerics: TeacherNumerics, what: str, difference: float, scale: float, tolerance: float) -> str:
    remedy = (
        "set distill.teacher_fold_bn=false and report it (a BatchNorm fold gone wrong)"
        if numerics.fold_bn
        else "set distill.teacher_precision=fp32 and distill.teacher_channels_last=false"
    )
    return (
        f"distill: the inference teacher's {what} differ from the unfolded teacher's by up to {difference:.3g} "
        f"(largest |value| {scale:.3g}; tolerance {tolerance:g} of it in {numerics.precision}); {remedy}"
    )


def _modules_called_by_several(graphs: list[fx.GraphModule]) -> list[nn.Module]:
    """Modules that more than one of ``graphs`` calls (one module object reached from two blocks)."""
    seen: dict[int, int] = {}
    modules: dict[int, nn.Module] = {}
    for graph_module in graphs:
        nodes = [n for n in graph_module.graph.nodes if n.op == "call_module"]
        called = {id(m): m for m in (graph_module.get_submodule(str(n.target)) for n in nodes)}
        for key, module in called.items():
            seen[key] = seen.get(key, 0) + 1
            modules[key] = module
    return [modules[key] for key, count in seen.items() if count > 1]
