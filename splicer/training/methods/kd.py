"""KD (Hinton et al., 2015): cross-entropy plus the softened KL to the teacher's logits."""

from __future__ import annotations

from splicer.spec.schema import DistillSpec
from splicer.training.methods.base import DistillMethod, MethodOptions, register_method


@register_method("kd")
class KD(DistillMethod):
    """CE + KD on the logits only; the base class computes both terms."""

    @classmethod
    def soft_label_temperature(cls, spec: DistillSpec, options: MethodOptions) -> float:
        return spec.kd_tau
