"""Factor transfer (Kim et al., NeurIPS 2018, "Paraphrasing complex network"): a paraphraser
(an auto-encoder) learns to reconstruct the teacher's last block output in a phase of its
own; then a translator on the student's last block output learns, with the student, to
produce the paraphraser's factors.

Follows the CIFAR-100 benchmark (RepDistiller's ``Paraphraser``, ``Translator`` and
``FactorTransfer``): factor channels = rate 0.5 x teacher channels, 3x3 convolutions with
LeakyReLU 0.1, batch norm in the translator only; the paraphraser trains 30 of 240 epochs
with SGD at lr 0.01 and stays frozen afterwards; the factor loss is the mean absolute
difference of L2-normalised factor maps, each factor map being the channel mean of the
squared factor (the paper's formula normalises the whole flattened factor instead).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from splicer.training.methods.base import (
    FeatureMethod,
    MethodOptions,
    Phase,
    Shape,
    block_features,
    phase_epochs,
    register_method,
    resize_to,
)

if TYPE_CHECKING:
    from splicer.assembly.modules import BlockNet

AUTHORS_PARAPHRASER_EPOCHS = 30
"""The benchmark's ``init_epochs``, of its 240 main epochs."""
AUTHORS_MAIN_EPOCHS = 240


class FTOptions(MethodOptions):
    rate: float = Field(0.5, gt=0, le=1, description="Factor channels as a share of the teacher's channels.")
    paraphraser_epochs: int | None = Field(
        None, ge=1, description="Epochs of the paraphraser phase (default: 30/240 of train.epochs, at least 1)."
    )
    paraphraser_lr: float = Field(0.01, gt=0, description="SGD learning rate of the paraphraser phase (constant).")


def _conv_stack(convs: list[nn.Module], batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for conv in convs:
        layers.append(conv)
        if batch_norm:
            layers.append(nn.BatchNorm2d(conv.out_channels))
        layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


def _factor_encoder(channels: int, factor_channels: int, batch_norm: bool) -> nn.Sequential:
    """Three 3x3 convs from ``channels`` down to the factor channels: the paraphraser's and the translator's shape."""
    return _conv_stack(
        [
            nn.Conv2d(channels, channels, 3, 1, 1),
            nn.Conv2d(channels, factor_channels, 3, 1, 1),
            nn.Conv2d(factor_channels, factor_channels, 3, 1, 1),
        ],
        batch_norm,
    )


class Paraphraser(nn.Module):
    """Auto-encoder of the teacher feature: three 3x3 convs down to the factor channels, three transposed convs back."""

    def __init__(self, channels: int, factor_channels: int) -> None:
        super().__init__()
        self.encoder = _factor_encoder(channels, factor_channels, batch_norm=False)
        self.decoder = _conv_stack(
            [
                nn.ConvTranspose2d(factor_channels, factor_channels, 3, 1, 1),
                nn.ConvTranspose2d(factor_channels, channels, 3, 1, 1),
                nn.ConvTranspose2d(channels, channels, 3, 1, 1),
            ],
            batch_norm=False,
        )

    def forward(self, feature: Tensor) -> Tensor:
        """The reconstruction of ``feature``."""
        return self.decoder(self.encoder(feature))


class Translator(nn.Module):
    """Maps the student feature to factor channels: three 3x3 convs, each with batch norm and LeakyReLU."""

    def __init__(self, channels: int, factor_channels: int) -> None:
        super().__init__()
        self.encoder = _factor_encoder(channels, factor_channels, batch_norm=True)

    def forward(self, feature: Tensor) -> Tensor:
        return self.encoder(feature)


def factor_map(factor: Tensor) -> Tensor:
    """The benchmark's normalised factor: channel mean of the squared factor, flattened and L2-normalised."""
    return F.normalize(factor.pow(2).mean(dim=1).flatten(1), dim=1)


def factor_loss(student_factor: Tensor, teacher_factor: Tensor) -> Tensor:
    """Mean absolute difference of the normalised factors; the larger map is pooled to the smaller's H x W."""
    size = (
        min(student_factor.shape[-2], teacher_factor.shape[-2]),
        min(student_factor.shape[-1], teacher_factor.shape[-1]),
    )
    return (factor_map(resize_to(student_factor, size)) - factor_map(resize_to(teacher_factor, size))).abs().mean()


@register_method("ft")
class FT(FeatureMethod):
    """Factor transfer on the last block outputs, after a paraphraser phase; weight 200 as the benchmark."""

    default_feature_weight: ClassVar[float] = 200.0
    size_rule: ClassVar[str] = (
        "last block; paraphraser (teacher) and translator (student) to factors, the larger factor map "
        "average-pooled to the smaller one's H x W"
    )
    Options = FTOptions

    def build(self, teacher_shapes: list[Shape], student_shapes: list[Shape]) -> None:
        teacher_channels = teacher_shapes[-1][0]
        factor_channels = max(1, int(teacher_channels * self.options.rate))
        self.paraphraser = Paraphraser(teacher_channels, factor_channels)
        self.paraphraser.requires_grad_(False)  # trained only in its phase
        self.translator = Translator(student_shapes[-1][0], factor_channels)

    def feature_loss(self, student_features: list[Tensor], teacher_features: list[Tensor]) -> Tensor:
        student_factor = self.translator(student_features[-1]).float()
        return factor_loss(student_factor, self.paraphraser.encoder(teacher_features[-1]).float())

    def phases(self, student: BlockNet, teacher: BlockNet, main_epochs: int) -> list[Phase]:
        def reconstruction(images: Tensor, labels: Tensor) -> tuple[dict[str, Tensor], None]:
            with torch.no_grad():
                features, _ = block_features(self, teacher, images)
            target = features[-1].float()
            loss = F.mse_loss(self.paraphraser(target).float(), target)
            return {"reconstruction": loss, "total": loss}, None

        epochs = phase_epochs(
            self.options.paraphraser_epochs, AUTHORS_PARAPHRASER_EPOCHS, AUTHORS_MAIN_EPOCHS, main_epochs
        )
        return [
            Phase(
                name="paraphraser",
                epochs=epochs,
                trains={"paraphraser": self.paraphraser},
                loss=reconstruction,
                lr=self.options.paraphraser_lr,
                lr_setting="distill.options.ft.paraphraser_lr",
            )
        ]
