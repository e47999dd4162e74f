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
feature_weight  CRD: its NCE loss, both directions            CRD 0.8                 beta (-b)
crd.embed_dim   CRD: size of the shared embedding space       128                     feat_dim
crd.negatives   CRD: negatives per image (other classes)      16384                   nce_k
crd.temperature CRD: temperature of the contrast scores       0.07                    nce_t
crd.momentum    CRD: momentum of the two memory banks         0.5                     nce_m
crd.sampling    CRD: negatives with or without replacement    auto (w/o up to 100k)   choice(replace=)
feature_weight  OH: sum_i 2^-(N-i) partial-L2_i / batch       OH 1/1000               (/ 1000 in the
                (pre-ReLU features, margin from teacher BN)                           authors' script)
==============  ============================================  ======================  ==============

Sources: CRD's values are the defaults of the authors' RepDistiller (train_student.py, crd/,
dataset/cifar100.py and, for beta, scripts/run_cifar_distill.sh); ``crd.*`` rows are set
under ``distill.options.crd``.

The T^2 factor lives inside the KD term (:func:`kd_loss`), as the benchmark's DistillKL
computes it, so kd_weight multiplies T^2 * KL. The benchmark is the CIFAR-100 code of CRD
(Tian et al., 2020), which the paper follows; its scripts run feature methods without KD
(alpha 0), while the paper adds KD to them because that trains better students. OH is not
in that benchmark; its default is the scale of the authors' CIFAR-100 code
(clovaai/overhaul-distillation: distillation sum / batch / 1000 next to CE), here next to
CE 0.1 + KD 0.9 as the paper trains it.

Methods with ``needs_preactivations`` (OH) receive each block end's value before its final
ReLU instead of the block output; the compiler finds it in the traced graph
(:mod:`splicer.trace.preactivation`), and ``prepare(teacher)`` lets a method read the
frozen teacher (OH's margins from its BatchNorms) before training.
"""

from __future__ import annotations

from splicer.training.methods import at, crd, fitnets, kd, oh  # noqa: F401  (each registers its method)
from splicer.training.methods.base import (
    METHODS,
    DistillMethod,
    FeatureMethod,
    MethodOptions,
    Shape,
    create_method,
    kd_loss,
    register_method,
    resize_to,
)

__all__ = [
    "METHODS",
    "DistillMethod",
    "FeatureMethod",
    "MethodOptions",
    "Shape",
    "create_method",
    "kd_loss",
    "register_method",
    "resize_to",
]
