"""The method base classes and the registry; one module per method registers itself here.

A method turns the student's and the frozen teacher's logits (and, for feature methods,
block features) into named, weighted loss terms. Method-specific settings live in the
method's own pydantic ``Options`` model and are given in the spec under
``distill.options.<method>``; :func:`create_method` validates them there, so a typo names
the method, the field and the valid fields.

The caller computes the teacher's logits and features under ``torch.no_grad``; no method
needs gradients through the teacher.

A method may also declare :class:`Phase` s, trainings that run before the main distillation
(FT's paraphraser, SSKD's teacher head), and may replace the generic CE + KD + feature
objective with its own (:meth:`DistillMethod.objective`, SSKD).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor, nn

from splicer.errors import SplicerError, did_you_mean
from splicer.spec.schema import DistillSpec
from splicer.synthesis.layouts import as_map, as_vector
from splicer.training.distributed import Distributed
from splicer.training.losses import softened_kl

if TYPE_CHECKING:
    from splicer.data import DataBundle
    from splicer.assembly.modules import BlockNet
    from splicer.assembly.tapped import TappedBlockNet
    from splicer.trace.layouts import FeatureLayout
    from splicer.training.engine import LossFn

Shape = tuple[int, int, int]
"""(C, H, W) of one block output, as an NCHW map (``splicer.training.stage2.block_shapes``)."""

FeatureForm = Literal["native", "maps", "vectors"]
"""How block features reach a method (:attr:`DistillMethod.reads`): as the network gives them, as NCHW
maps, or as one global vector per image (:mod:`splicer.synthesis.layouts`, ``as_map``/``as_vector``)."""

METHODS: dict[str, type[DistillMethod]] = {}


def register_method(name: str) -> Callable[[type[DistillMethod]], type[DistillMethod]]:
    """Class decorator that makes a :class:`DistillMethod` available under ``name``."""

    def register(cls: type[DistillMethod]) -> type[DistillMethod]:
        if name in METHODS:
            raise ValueError(f"distillation method {name!r} is already registered")
        METHODS[name] = cls
        return cls

    return register


@dataclass
class Phase:
    """A training a method runs before its main distillation, in ``RUN/phases/<name>``.

    It trains only the parameters of ``trains`` (in train mode), with SGD at ``lr`` (momentum
    and weight decay from ``train``; ``lr_setting`` names the spec field that sets it), the
    rate multiplied by ``train.gamma`` at each of ``milestones``; the student, the teacher and
    the rest of the method stay frozen and in eval mode. ``loss`` is called like a stage's
    loss, ``(images, labels) -> (terms with "total", logits or None)``, and builds whatever
    teacher or student outputs it needs itself. A phase has its own metrics, checkpoints and
    summary, and ``--resume`` continues it exactly.
    """

    name: str  # folder name and title: lower-case letters, digits, '-' and '_'
    epochs: int
    trains: dict[str, nn.Module]
    loss: LossFn
    lr: float
    lr_setting: str  # e.g. "distill.options.ft.paraphraser_lr"
    milestones: list[int] = field(default_factory=list)


def phase_epochs(chosen: int | None, authors_epochs: int, authors_main_epochs: int, main_epochs: int) -> int:
    """The epochs of a phase: the user's number, or the authors' share of the main schedule.

    The share keeps a phase in proportion when a run is shortened (a 240-epoch benchmark
    with a 30-epoch phase gives a 1-epoch phase to an 8-epoch test run); at least one epoch.
    """
    if chosen is not None:
        return chosen
    return max(1, round(main_epochs * authors_epochs / authors_main_epochs))


class MethodOptions(BaseModel):
    """Settings of one method (``distill.options.<name>``); unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def create_method(
    name: str,
    spec: DistillSpec,
    teacher_shapes: list[Shape],
    student_shapes: list[Shape],
    *,
    teacher_layouts: list[FeatureLayout] | None = None,
    student_layouts: list[FeatureLayout] | None = None,
    num_classes: int | None = None,
) -> DistillMethod:
    """Build the method ``name`` for a teacher and student cut into the same number of blocks.

    The layouts (NCHW, NHWC, tokens) of the block ends are for methods that read block ends as the
    network gives them (``reads = "native"``, e.g. OFA's projectors); without them, block ends are NCHW maps.
    ``num_classes`` is for methods with modules that predict classes (OFA's projectors).
    """
    if name not in METHODS:
        valid = sorted(METHODS)
        suggestion = did_you_mean(name, valid) or "."
        raise SplicerError(f"unknown distillation method {name!r}{suggestion} Valid methods: {', '.join(valid)}")
    if len(teacher_shapes) != len(student_shapes):
        raise SplicerError(
            f"teacher and student must be cut into the same number of blocks for distillation; "
            f"got {len(teacher_shapes)} teacher blocks and {len(student_shapes)} student blocks"
        )
    cls = METHODS[name]
    return cls(
        spec,
        list(teacher_shapes),
        list(student_shapes),
        method_options(name, spec),
        teacher_layouts=teacher_layouts,
        student_layouts=student_layouts,
        num_classes=num_classes,
    )


def method_options(name: str, spec: DistillSpec) -> MethodOptions:
    """``distill.options.<name>`` validated against the method's ``Options`` model."""
    unknown = sorted(set(spec.options) - set(METHODS))
    if unknown:
        raise SplicerError(
            f"distill.options: {unknown[0]!r} is not a distillation method{did_you_mean(unknown[0], sorted(METHODS)) or '.'} "
            f"Valid methods: {', '.join(sorted(METHODS))}"
        )
    options_model = METHODS[name].Options
    try:
        return options_model.model_validate(spec.options.get(name, {}))
    except ValidationError as exc:
        problems = "; ".join(
            f"distill.options.{name}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        fields = ", ".join(options_model.model_fields) or "none"
        raise SplicerError(f"{problems} (valid fields of {name}: {fields})") from None


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """Hinton's KD: T^2 * KL(q_T || q_S) at temperature T, so its gradients keep their scale as T grows."""
    return tau**2 * softened_kl(teacher_logits, student_logits, tau)


class DistillMethod(nn.Module):
    """CE + KD, plus whatever :meth:`feature_terms` adds. Subclasses may own trainable parameters.

    ``forward`` returns named, already weighted terms and their sum under ``"total"``.
    """

    needs_features: ClassVar[bool] = False
    needs_indices: ClassVar[bool] = False
    """True for methods with per-sample state (CRD's memory bank): the training stream then
    yields each image's index in the training split and ``forward`` gets them as ``indices``."""
    needs_preactivations: ClassVar[bool] = False
    """True: the trainer passes each block end's pre-activation (value before its final ReLU) as the features."""
    reads: ClassVar[FeatureForm] = "native"
    """The form in which :func:`block_features` delivers every block end, whatever its layout (tokens, NHWC):
    "maps" (NCHW), "vectors" ((B, C), the vector the head would pool) or "native" (as the network gives them)."""
    size_rule: ClassVar[str] = ""
    """How the method pairs teacher and student features of different sizes, written in the run's summary."""
    Options: ClassVar[type[MethodOptions]] = MethodOptions

    def __init__(
        self,
        spec: DistillSpec,
        teacher_shapes: list[Shape],
        student_shapes: list[Shape],
        options: MethodOptions | None = None,
        *,
        teacher_layouts: list[FeatureLayout] | None = None,
        student_layouts: list[FeatureLayout] | None = None,
        num_classes: int | None = None,
    ) -> None:
        """The shapes are (C, H, W) of each block output; methods with parameters size them in :meth:`build`.

        The layouts, where given, say how each block end holds its feature (see :attr:`reads`).
        """
        super().__init__()
        self.spec = spec
        self.teacher_layouts = teacher_layouts
        self.student_layouts = student_layouts
        self.num_classes = num_classes
        self.options: Any = options if options is not None else self.Options()
        self.epoch = 0
        self.dist = Distributed.from_env()  # the processes a batch is split over (torchrun), read once
        self.build(teacher_shapes, student_shapes)

    @classmethod
    def soft_label_temperature(cls, spec: DistillSpec, options: MethodOptions) -> float | None:
        """For a method that reads nothing of the teacher but its logits, the softmax temperature it reads them
        at: it can learn from soft labels computed once (``distill.soft_labels``, :mod:`splicer.training.soft_labels`).
        None (the default): the method needs the teacher at every step."""
        return None

    def build(self, teacher_shapes: list[Shape], student_shapes: list[Shape]) -> None:
        """Create the method's modules and state from the block shapes; nothing by default.

        Called at the end of ``__init__``, with ``spec`` and ``options`` set, so that a method
        with modules overrides this one hook instead of repeating the constructor's signature.
        """

    def set_epoch(self, epoch: int) -> None:
        """The trainer calls this before each epoch (0-based), so that a method with a schedule
        (DKD's warm-up) knows where training is; resumed runs call it with the resumed epoch."""
        self.epoch = epoch

    def prepare(self, teacher: nn.Module) -> None:
        """Read what the method needs from the frozen teacher (a TappedBlockNet) before training; nothing by default."""

    def check_pair(self, name: str, teacher: TappedBlockNet, student: TappedBlockNet) -> None:
        """Raise :class:`~splicer.errors.UnsupportedPairError` if this method (registered as ``name``) cannot
        read these networks' block ends: a method reading pre-activations needs a ReLU at every block end.
        Every layout (NCHW, NHWC, tokens) is read through :func:`block_features`, so layouts alone never refuse."""
        if self.needs_preactivations:
            teacher.check_preactivations("teacher", name)
            student.check_preactivations("student", name)

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        student_features: list[Tensor],
        teacher_features: list[Tensor],
        targets: Tensor,
    ) -> dict[str, Tensor]:
        terms = {
            "ce": self.spec.ce_weight * F.cross_entropy(student_logits, targets),
            "kd": self.spec.kd_weight * kd_loss(student_logits, teacher_logits, self.spec.kd_tau),
        }
        terms.update(self.feature_terms(student_features, teacher_features))
        terms["total"] = torch.stack(list(terms.values())).sum()
        return terms

    def feature_terms(self, student_features: list[Tensor], teacher_features: list[Tensor]) -> dict[str, Tensor]:
        """Weighted terms beyond CE and KD; none for a pure-logit method."""
        return {}

    def bind_data(self, data: DataBundle) -> None:
        """Size what depends on the training set (CRD's memory bank); called once before training or resuming."""

    def phases(self, student: BlockNet, teacher: BlockNet, main_epochs: int) -> list[Phase]:
        """The phases to train, in order, before the main distillation of ``main_epochs`` epochs; none by default.

        Called once the networks and this method are on their device; must not draw random numbers.
        Parameters a phase trains that the main distillation must leave alone are frozen
        (``requires_grad_(False)``) when the method is built: a phase unfreezes what it trains.
        """
        return []

    def objective(self, student: BlockNet, teacher: BlockNet) -> LossFn | None:
        """The main distillation's loss when this method has its own (SSKD's rotations); None: the generic one."""
        return None


class FeatureMethod(DistillMethod):
    """A method that adds ``feature_weight * feature_loss`` on block outputs, read as NCHW maps by default."""

    needs_features: ClassVar[bool] = True
    reads: ClassVar[FeatureForm] = "maps"
    default_feature_weight: ClassVar[float]

    @property
    def feature_weight(self) -> float:
        """The spec's feature_weight, or this method's benchmark default when the spec leaves it unset."""
        if self.spec.feature_weight is None:
            return self.default_feature_weight
        return self.spec.feature_weight

    def feature_terms(self, student_features: list[Tensor], teacher_features: list[Tensor]) -> dict[str, Tensor]:
        return {"feature": self.feature_weight * self.feature_loss(student_features, teacher_features)}

    def feature_loss(self, student_features: list[Tensor], teacher_features: list[Tensor]) -> Tensor:
        """The unweighted feature loss."""
        raise NotImplementedError


def batch_relation_inputs(
    dist: Distributed, features: list[Tensor]
) -> tuple[AbstractContextManager[Any], list[Tensor]]:
    """Autocast off and the features in float32 over the global batch, for losses built on batch
    relations (Gram matrices, similarity distributions): bf16's 8-bit mantissa would blur them, and
    under torchrun they relate every pair of images one process would (see ``Distributed.gather_batch``)."""
    device = features[0].device.type if features else "cpu"
    return torch.autocast(device, enabled=False), [dist.gather_batch(f.float()) for f in features]


def adapt_features(form: FeatureForm, features: list[Tensor], layouts: list[FeatureLayout | None]) -> list[Tensor]:
    """Every block end in ``form``, through the one adapter of its layout (:mod:`splicer.synthesis.layouts`)."""
    if form == "native":
        return features
    adapt = as_map if form == "maps" else as_vector
    return [adapt(feature, layout) for feature, layout in zip(features, layouts, strict=True)]


def block_features(method: DistillMethod, network: BlockNet, images: Tensor) -> tuple[list[Tensor], Tensor]:
    """The block features ``method`` reads (pre-activations or block outputs, in its :attr:`~DistillMethod.reads`
    form) and the logits; every place that feeds a method features (the main loss, phases) goes through here."""
    if method.needs_preactivations:
        _, features, logits = network.forward_preactivations(images)
    else:
        features, logits = network.forward_features(images)
    return adapt_features(method.reads, features, block_layouts(network)), logits


def block_layouts(network: BlockNet) -> list[FeatureLayout | None]:
    """The traced layout of each block end (None where unknown, as for a plain BlockNet: read as NCHW)."""
    return list(getattr(network, "layouts", None) or [None] * len(network.blocks))


RESIZE = "the student's map is resized to the teacher's H x W (average pooling down, bilinear up)"
"""The size rule of FitNets' regressor and OH's and AB's connectors (:func:`resize_to`), for run summaries."""
POOL_LARGER = "the larger map of each pair is average-pooled to the smaller one's H x W"
"""The size rule of AT, VID and FT (:func:`resize_to` to the smaller size), for run summaries."""


def pooled(feature: Tensor) -> Tensor:
    """(B, C): a block output averaged over its spatial positions, as the head's global pooling does."""
    return feature.flatten(2).mean(dim=2) if feature.dim() > 2 else feature


def resize_to(feature: Tensor, size: tuple[int, int]) -> Tensor:
    """Average-pool ``feature`` down to ``size`` (H, W), or bilinearly upsample it when it is smaller."""
    height, width = feature.shape[-2:]
    if (height, width) == size:
        return feature
    if height >= size[0] and width >= size[1]:
        return F.adaptive_avg_pool2d(feature, size)
    return F.interpolate(feature, size=size, mode="bilinear", align_corners=False)
