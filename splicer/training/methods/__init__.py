"""Stage-2 distillation methods: how a fresh student learns from the frozen (SFTN) teacher.

One module per method; each registers its class with ``@register_method("name")`` and the
trainer only calls :func:`create_method`. As in the paper (section 4.1), feature methods
are trained jointly with KD:

    total = ce_weight * CE(z_S, y) + kd_weight * KD + feature_weight * feature_loss

==============  ============================================  ======================  ==============
our name        what it weighs                                default                 benchmark name
==============  ============================================  ======================  ==============
ce_weight       cross-entropy of the student with the labels  0.1                     gamma (-r)
kd_weight       KD = T^2 * KL(q_T || q_S) at T = kd_tau       0.9 (kd_tau 4)          alpha (-a)
feature_weight  the method's feature loss (FitNets hint, AT)  FitNets 100, AT 1000    beta (-b)
==============  ============================================  ======================  ==============

The T^2 factor lives inside the KD term (:func:`kd_loss`), as the benchmark's DistillKL
computes it, so kd_weight multiplies T^2 * KL. The benchmark is the CIFAR-100 code of CRD
(Tian et al., 2020), which the paper follows; its scripts run feature methods without KD
(alpha 0), while the paper adds KD to them because that trains better students.
"""

from __future__ import annotations

from splicer.training.methods import at, fitnets, ft, kd, sskd  # noqa: F401  (each registers its method)
from splicer.training.methods.base import (
    METHODS,
    DistillMethod,
    FeatureMethod,
    MethodOptions,
    Phase,
    Shape,
    create_method,
    kd_loss,
    phase_epochs,
    register_method,
    resize_to,
)

__all__ = [
    "METHODS",
    "DistillMethod",
    "FeatureMethod",
    "MethodOptions",
    "Phase",
    "Shape",
    "create_method",
    "kd_loss",
    "phase_epochs",
    "register_method",
    "resize_to",
]
