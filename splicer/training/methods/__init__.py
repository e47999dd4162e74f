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
feature_weight  FT: factor loss, translator vs paraphraser    200                     beta (-b)
==============  ============================================  ======================  ==============

Method options (``distill.options.<name>``), with the defaults of the authors' code:

============================  ==========================================  =======  ==================================
our name                      what it sets                                default  authors' name (source)
============================  ==========================================  =======  ==================================
ft.rate                       factor channels / teacher channels          0.5      k (RepDistiller Paraphraser)
ft.paraphraser_epochs         epochs of the paraphraser phase             30/240   init_epochs (RepDistiller)
ft.paraphraser_lr             SGD rate of the paraphraser phase           0.01     lr of helper/pretrain.py init
sskd ce/kd (ce_weight, ...)   CE and KD on the unrotated images, T        0.1/0.9  ce-weight, kd-weight, kd-T 4
sskd.tf_weight, tf_tau        KD on the rotated copies, its T             2.7, 4   tf-weight, tf-T (SSKD student.py)
sskd.ss_weight, ss_tau        KD of the similarity rows, its T            10, 0.5  ss-weight, ss-T (SSKD student.py)
sskd.tf_ratio, ss_ratio       share of the teacher's wrong rows kept      1, 0.75  ratio-tf, ratio-ss (SSKD)
sskd.head_epochs              epochs of the teacher-head phase            60/240   t-epoch (SSKD student.py)
sskd.head_lr                  SGD rate of the teacher-head phase          0.05     t-lr, t-milestones 30,45 of 60
============================  ==========================================  =======  ==================================

RepDistiller is HobbitLong/RepDistiller (the benchmark); SSKD is xuguodong03/SSKD (Xu et al.,
ECCV 2020). A phase's default epochs are the authors' share of ``train.epochs``
(:func:`phase_epochs`), so shortened runs keep the proportion.

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
