"""Stage-2 distillation methods: how a fresh student learns from the frozen (SFTN) teacher.

One module per method; each registers its class with ``@register_method("name")`` and the
trainer only calls :func:`create_method`. As in the paper (section 4.1), feature methods
are trained jointly with KD:

    total = ce_weight * CE(z_S, y) + kd_weight * KD + feature_weight * feature_loss

DKD has its own objective (``ce_weight * CE + warm-up * (alpha * TCKD + beta * NCKD)``, its
weights in ``distill.options.dkd``). Defaults, and where they come from ("benchmark" is the
CIFAR-100 code of CRD, Tian et al. 2020, HobbitLong/RepDistiller, which the paper follows:
scripts/run_cifar_distill.sh and distiller_zoo/; "mdistiller" is the DKD authors' code,
megvii-research/mdistiller, mdistiller/engine/cfg.py; "SSKD" is xuguodong03/SSKD; "DIST" is
the DIST authors' classification code, hunto/image_classification_sota (the submodule of
hunto/DIST_KD): lib/models/losses/dist_kd.py and kd_loss.py, configs/strategies/distill/
dist_cifar.yaml (CIFAR-100) and resnet_dist.yaml (ImageNet); "OFAKD" is Hao840/OFAKD:
distillers/ofa.py, distillers/utils.py, train.py and its README's commands):

===========  =======================================  =================  =====================  ===================
method       what it weighs (our name)                default            authors' name          source
===========  =======================================  =================  =====================  ===================
all but dkd  ce_weight: CE with the labels            0.1                gamma (-r)             benchmark KD script
all but dkd  kd_weight: T^2 KL(q_T || q_S) at kd_tau  0.9, kd_tau 4      alpha (-a), kd_T       benchmark KD script
kd           (CE and KD only)
fitnets      feature_weight: hint MSE at hint_block   100, hint_block 2  beta (-b), hint_layer  benchmark script
at           feature_weight: attention maps, all N    1000               beta (-b)              benchmark script
sp           feature_weight: batch similarity, last   3000               beta (-b)              benchmark script
vid          feature_weight: Gaussian NLL, all N      1                  beta (-b)              benchmark script
             options.vid.init_variance, .eps          5.0, 1e-5          init_pred_var, eps     benchmark VIDLoss
rkd          feature_weight: RKD on pooled last       1                  beta (-b)              benchmark script
             options.rkd.distance_weight              25                 w_d                    benchmark RKDLoss
             options.rkd.angle_weight                 50                 w_a                    benchmark RKDLoss
pkt          feature_weight: PKT on pooled last       30000              beta (-b)              benchmark script
crd          feature_weight: NCE loss, both ways      0.8                beta (-b)              benchmark script
             options.crd.embed_dim                    128                feat_dim               benchmark CRD
             options.crd.negatives (other classes)    16384              nce_k                  benchmark CRD
             options.crd.temperature                  0.07               nce_t                  benchmark CRD
             options.crd.momentum (memory banks)      0.5                nce_m                  benchmark CRD
             options.crd.sampling                     w/o repl. <= 100k  replace=               benchmark CRD data
oh           feature_weight: partial L2 pre-ReLU,     1/1000             (/ 1000 in script)     OH authors' CIFAR
             all N, 2^-(N-i) per block, / batch
ab           feature_weight: boundary loss in main    0                  beta x loss_kd = 0     benchmark loops
             init phase: hinge^2 pre-ReLU, all N,     3/1000             / 1000 * 3             benchmark ABLoss
             2^-(N-1-i) per block, / batch
             options.ab.margin                        1.0                margin                 benchmark ABLoss
             options.ab.init_epochs                   30/240 of main     init_epochs            benchmark
             options.ab.init_lr (constant)            0.05               learning_rate          benchmark pretrain
ft           feature_weight: factor L1, translator    200                beta (-b)              benchmark script
             options.ft.rate (factor / teacher ch.)   0.5                k                      benchmark Paraphraser
             options.ft.paraphraser_epochs            30/240 of main     init_epochs            benchmark
             options.ft.paraphraser_lr                0.01               init lr                benchmark pretrain
sskd         own objective: CE, KD on unrotated       0.1, 0.9, T 4      ce-, kd-weight, kd-T   SSKD student.py
             options.sskd.tf_weight, tf_tau           2.7, 4             tf-weight, tf-T        SSKD student.py
             options.sskd.ss_weight, ss_tau           10, 0.5            ss-weight, ss-T        SSKD student.py
             options.sskd.tf_ratio, ss_ratio          1, 0.75            ratio-tf, ratio-ss     SSKD student.py
             options.sskd.head_epochs                 60/240 of main     t-epoch                SSKD student.py
             options.sskd.head_lr (x0.1 at 1/2, 3/4)  0.05               t-lr, t-milestones     SSKD student.py
dkd          options.dkd.ce_weight: CE                1.0                CE_WEIGHT              mdistiller CFG.DKD
             options.dkd.alpha: TCKD                  1.0                ALPHA                  mdistiller CFG.DKD
             options.dkd.beta: NCKD                   8.0                BETA                   mdistiller CFG.DKD
             options.dkd.temperature                  4.0                T                      mdistiller CFG.DKD
             options.dkd.warmup_epochs (linear)       20                 WARMUP                 mdistiller CFG.DKD
dist         options.dist.ce_weight: CE               1.0                ori_loss_weight        DIST cifar config
             options.dist.beta: tau^2 x inter-class   2.0                kd_loss_weight 2 x     DIST kd_loss.py,
             options.dist.gamma: tau^2 x intra-class  2.0                DIST(beta=1, gamma=1)  cifar config
             options.dist.tau (ImageNet: 1)           4.0                dist_t4 (ImageNet:     DIST cifar config
                                                                         dist, tau 1)           (resnet_dist.yaml)
ofa          options.ofa.ce_weight: CE                1.0                --gt-loss-weight       OFAKD train.py
             options.ofa.kd_weight: OFA on logits     1.0                --kd-loss-weight       OFAKD train.py
             options.ofa.loss_weight: projectors'     1.0                --ofa-loss-weight      OFAKD train.py
             OFA terms, summed
             options.ofa.eps (one, or per stage       1.0 (ImageNet      --ofa-eps              OFAKD README
             then logits)                             command: 1.5)
             options.ofa.temperature                  1.0                --ofa-temperature      OFAKD train.py
             options.ofa.stages (1-based blocks)      every block        --ofa-stage 1 2 3 4    OFAKD train.py
             options.ofa.heads (token projectors)     4                  Block(num_heads=4)     OFAKD ofa.py
===========  =======================================  =================  =====================  ===================

DIST and OFA have their own objectives, as DKD: DIST ``ce_weight * CE + tau^2 * (beta * inter +
gamma * intra)`` (Pearson correlations of softmax(z / tau) over each image's classes and over each
class's images), OFA ``ce_weight * CE + kd_weight * OFA(z_S) + loss_weight * sum of OFA(projector_i)``
with a projector from each chosen student block end to the logits (:mod:`.ofa`); the spec's
``ce_weight``, ``kd_weight``, ``kd_tau`` and ``feature_weight`` do not apply to either.

``feature_weight`` in the spec overrides the feature method's default. "all N" means every
block end of the cut; "last" the last block's output; "pooled last" that output averaged over
its spatial positions (the benchmark's feat[-1]). The T^2 factor lives inside the KD term
(:func:`kd_loss`), as the benchmark's DistillKL computes it. The benchmark's scripts run
feature methods without KD (alpha 0); the paper adds KD to them because that trains better
students, and so does splicer. OH is not in the benchmark; its default is the scale of the
authors' CIFAR-100 code (clovaai/overhaul-distillation), here next to CE 0.1 + KD 0.9 as the
paper trains every feature method. AB transfers the activation boundaries in its
initialisation phase (connectors and the student's blocks, AB loss alone), then the student
trains with CE 0.1 + KD 0.9 and AB weight 0, as the benchmark's main phase adds no AB term and
the AB authors' CIFAR code (bhheo/AB_distillation) trains the initialised student with KD.
CRD samples its negatives from other classes, as the authors' ``--mode exact``, without
replacement up to 100k training images (their CIFAR code) and with replacement above (their
ImageNet code).

Layouts. Every block end reaches a method through :func:`~splicer.training.methods.base.block_features`,
in the form the method's ``reads`` declares, by one adapter per layout
(:mod:`splicer.synthesis.layouts`, the one the SFTN's transforms use): "maps" gives NCHW maps
(tokens: prefix tokens dropped and the patch grid restored, pooled-token stages on their own
grid; NHWC: permuted), "vectors" one (B, C) vector per image, the one the head would pool (the
class token where a token sequence has prefix tokens, else the mean over the map's positions),
"native" the networks' own tensors. So the layout of a pair never refuses a method; only OH and
AB, which read pre-activations, need a final ReLU at every block end of both networks:

===========  ===================================  =====================================================
method       reads                                layout pairs (teacher -> student)
===========  ===================================  =====================================================
kd, dkd      logits only                          any
dist         logits only                          any
ofa          native (chosen student block ends)   any: conv projectors for NCHW students, transformer-block
                                                  projectors for token students and NHWC maps read as
                                                  tokens (as the authors treat Swin)
fitnets      maps (hint block)                    any: NCHW, NHWC, tokens, pooled tokens, in any pairing
at, vid      maps (every block end)               any
sp, ft       maps (last block end)                any
rkd, pkt     vectors (last block end)             any
crd, sskd    vectors (last block end)             any (sskd: square images, it rotates them)
oh, ab       pre-ReLU maps (every block end)      block ends that end in a ReLU on both sides (CNNs);
                                                  refused (UnsupportedPairError) naming the block end
===========  ===================================  =====================================================

Where teacher and student maps differ in size, each method's ``size_rule`` applies (FitNets'
regressor and OH's/AB's connectors resize the student's map to the teacher's; AT, VID and FT
pool the larger map to the smaller's; SP, RKD, PKT, CRD and SSKD compare batch relations or
embeddings and need no resizing); :func:`splicer.training.stage2.feature_report` writes the
layouts, adapters and rule into each run's summary (``meta.features``).

Methods with ``needs_preactivations`` (OH, AB) receive each block end's value before its final
ReLU instead of the block output; the compiler finds it in the traced graph
(:mod:`splicer.trace.preactivation`), and ``prepare(teacher)`` lets a method read the
frozen teacher (OH's margins from its BatchNorms) before training. Methods with
``needs_indices`` (CRD) receive each image's index in the training split.

AB, FT and SSKD train something first, with the teacher frozen (AB's connectors and the
student's blocks, FT's paraphraser, SSKD's teacher head): a method declares such :class:`Phase` s, which run in the same run folder before the
main distillation (:mod:`splicer.training.phases`). A phase's default epochs are the
authors' share of ``train.epochs`` (:func:`phase_epochs`), so shortened runs keep the
proportion.
"""

from __future__ import annotations

from splicer.training.methods import (  # noqa: F401  (each registers itself)
    ab,
    at,
    crd,
    dist,
    dkd,
    fitnets,
    ft,
    kd,
    ofa,
    oh,
    pkt,
    rkd,
    sp,
    sskd,
    vid,
)
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
