"""AB (Heo et al., AAAI 2019, "Knowledge transfer via distillation of activation boundaries
formed by hidden neurons"): the student learns where the teacher's neurons switch on and off.

For each block end, the student's pre-ReLU feature (through a connector to the teacher's
channels) is pushed below -margin where the teacher's pre-ReLU value is off (t <= 0), and
above +margin where it is on (t > 0), with the authors' hinge-squared "alternative loss":

    sum over elements of (s + m)^2 [s > -m and t <= 0] + (s - m)^2 [s <= m and t > 0]

Scale, as both the benchmark's ``ABLoss`` and the authors' CIFAR code: block i of N weighs
2^-(N-1-i) (the last block 1, the one before 1/2, ...), the weighted sum is divided by the
batch size and multiplied by 3/1000. Connectors as the authors' (bhheo/AB_distillation): the
identity where the student's block end already has the teacher's shape, else 1x1 conv without
bias + BN, He-initialised (OH's connector, which first resizes to the teacher's H x W). The
benchmark's ``Connector`` differs only where BN makes no difference (a conv bias) or where
the sizes differ (a strided 3x3 conv instead of resizing) and in its default init.

AB transfers the boundaries in an initialisation phase, ``RUN/phases/init``: the connectors
and the student's blocks train with the AB loss alone (teacher frozen, the student's head
untouched) for 30 of 240 epochs at the benchmark's lr 0.05, constant. The main distillation
then trains the student as the paper trains every feature method, 0.1 CE + 0.9 KD at T = 4,
with AB weight 0 by default: the benchmark's main phase adds no AB term (``loss_kd = 0`` for
``abound``, so its ``-b 1`` multiplies nothing) and the authors' CIFAR script also trains
the initialised student with KD alone. A ``feature_weight`` above 0 adds the AB loss to the
main phase too, and the connectors then keep training there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from splicer.assembly.tapped import TappedBlockNet
from splicer.training.methods.base import (
    RESIZE,
    FeatureMethod,
    MethodOptions,
    Phase,
    Shape,
    block_features,
    phase_epochs,
    register_method,
)
from splicer.training.methods.oh import Connector

if TYPE_CHECKING:
    from splicer.assembly.modules import BlockNet

AUTHORS_INIT_EPOCHS = 30
"""The benchmark's ``init_epochs``, of its 240 main epochs."""
AUTHORS_MAIN_EPOCHS = 240
AUTHORS_SCALE = 3 / 1000
"""Both codes' ``loss / 1000 * 3`` on the per-image, block-weighted sum."""


class ABOptions(MethodOptions):
    margin: float = Field(1.0, gt=0, description="Margin m of the alternative loss (the authors' 1.0).")
    init_epochs: int | None = Field(
        None, ge=1, description="Epochs of the initialisation phase (default: 30/240 of train.epochs, at least 1)."
    )
    init_lr: float = Field(
        0.05, gt=0, description="SGD learning rate of the initialisation phase (constant; the benchmark's 0.05)."
    )


def alternative_l2(source: Tensor, target: Tensor, margin: float) -> Tensor:
    """Sum over all elements of the hinge-squared boundary loss of ``source`` against the sign of ``target``."""
    teacher_on = target > 0
    push_down = ~teacher_on & (source > -margin)
    push_up = teacher_on & (source <= margin)
    return ((source + margin).pow(2) * push_down + (source - margin).pow(2) * push_up).sum()


@register_method("ab")
class AB(FeatureMethod):
    """Heo et al. (2019): activation boundaries of every block end, transferred in an initialisation phase."""

    needs_preactivations: ClassVar[bool] = True
    default_feature_weight: ClassVar[float] = 0.0
    size_rule: ClassVar[str] = (
        f"every block's pre-ReLU map; connector: identity for equal shapes, else {RESIZE}, then 1x1 conv + BN"
    )
    Options = ABOptions

    def build(self, teacher_shapes: list[Shape], student_shapes: list[Shape]) -> None:
        self.connectors = nn.ModuleList(
            nn.Identity() if tuple(s) == tuple(t) else Connector(s, t)
            for s, t in zip(student_shapes, teacher_shapes, strict=True)
        )
        if self.feature_weight == 0:
            self.connectors.requires_grad_(False)  # trained only in the initialisation phase
        count = len(teacher_shapes)
        self.layer_weights = [2.0 ** -(count - 1 - i) for i in range(count)]

    def feature_terms(self, student_features: list[Tensor], teacher_features: list[Tensor]) -> dict[str, Tensor]:
        if self.feature_weight == 0:  # the default: AB acts through the initialisation phase only
            return {}
        return super().feature_terms(student_features, teacher_features)

    def feature_loss(self, student_features: list[Tensor], teacher_features: list[Tensor]) -> Tensor:
        """The authors' scale: 3/1000 x sum over blocks of 2^-(N-1-i) x alternative loss, per image."""
        batch = student_features[0].shape[0]
        total = student_features[0].new_zeros((), dtype=torch.float32)
        for i, (student, teacher) in enumerate(zip(student_features, teacher_features, strict=True)):
            source = self.connectors[i](student).float()
            total = total + self.layer_weights[i] * alternative_l2(source, teacher.float(), self.options.margin)
        return AUTHORS_SCALE * total / batch

    def phases(self, student: BlockNet, teacher: BlockNet, main_epochs: int) -> list[Phase]:
        if not (isinstance(student, TappedBlockNet) and isinstance(teacher, TappedBlockNet)):
            raise TypeError("AB's initialisation phase needs both networks with pre-activation taps (TappedBlockNet)")

        def boundary_loss(images: Tensor, labels: Tensor) -> tuple[dict[str, Tensor], None]:
            with torch.no_grad():
                teacher_pre, _ = block_features(self, teacher, images)
            student_pre, _ = block_features(self, student, images)
            loss = self.feature_loss(student_pre, teacher_pre)
            return {"boundary": loss, "total": loss}, None

        epochs = phase_epochs(self.options.init_epochs, AUTHORS_INIT_EPOCHS, AUTHORS_MAIN_EPOCHS, main_epochs)
        return [
            Phase(
                name="init",
                epochs=epochs,
                trains={"connectors": self.connectors, "student_blocks": student.blocks},
                loss=boundary_loss,
                lr=self.options.init_lr,
                lr_setting="distill.options.ab.init_lr",
            )
        ]
