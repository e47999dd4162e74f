"""Stage 2: distil a fresh student from a trained teacher (SFTN or standard), with one of
the methods of :mod:`splicer.training.methods`; and the student trained alone, the
"w/o KD" baseline.

The teacher loses its student branches, is frozen and stays in eval mode; its forward
pass runs under ``no_grad``, as an inference network (BatchNorm folded, its own precision
and memory format: :mod:`splicer.training.frozen_teacher`) checked against the teacher as
trained. Students of the same seed start from the same weights whichever teacher (or none)
they learn from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from splicer.assembly.build import build_student
from splicer.assembly.modules import BlockNet
from splicer.assembly.tapped import TappedBlockNet
from splicer.data import DataBundle, build_data
from splicer.errors import SplicerError
from splicer.spec import Spec
from splicer.synthesis.layouts import describe_as_map, describe_as_vector
from splicer.training.checkpoint import (
    TEACHER_KINDS,
    load_checkpoint,
    network_from_checkpoint,
    resolve_checkpoint,
    teacher_state,
    weights_digest,
)
from splicer.training.distributed import Distributed
from splicer.training.engine import LossFn, Runtime, Stage, fit, seed_everything
from splicer.training.frozen_teacher import inference_teacher
from splicer.training.methods import METHODS, DistillMethod, create_method
from splicer.training.methods.base import FeatureForm, adapt_features, block_features, block_layouts, method_options
from splicer.training.phases import train_phases
from splicer.training.runs import RunDir, open_run
from splicer.training.soft_labels import check_soft_labels, open_soft_labels, soft_label_loss
from splicer.training.stage1 import cross_entropy_loss


def train_student(spec: Spec, out: Path | None = None, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """The student alone with cross-entropy; returns the run summary."""
    dist = Distributed.from_env()
    runtime = Runtime.for_spec(spec, dist)
    run = open_run(spec.name, "student", out, resume)
    seed_everything(spec.train.seed)
    student = runtime.place(build_student(spec))
    stage = Stage(
        kind="student",
        title=f"{spec.name} student alone",
        model=student,
        evaluator=student,
        loss=cross_entropy_loss(student),
    )
    data = build_data(
        spec.data, spec.input_size, spec.num_classes, spec.train.batch_size, runtime.device, spec.train.seed
    )
    return fit(stage, spec, run, data, runtime, dist, resume, quiet)


def distill(
    spec: Spec, teacher: str | Path, method: str, out: Path | None = None, resume: bool = False, quiet: bool = False
) -> dict[str, Any]:
    """Distil a fresh student of ``spec`` from the teacher run (or checkpoint) ``teacher``; returns the run summary."""
    teacher_path, checkpoint = check_distill(spec, teacher, method, out, resume)
    kind = checkpoint["kind"]
    dist = Distributed.from_env()
    runtime = Runtime.for_spec(spec, dist)
    seed_everything(spec.train.seed)
    student = build_student(spec)
    teacher_net = network_from_checkpoint(checkpoint, teacher_path, spec)
    teacher_net.requires_grad_(False)
    loss_method = method_for_pair(spec, method, teacher_net, student)  # before the run folder exists
    run = open_run(spec.name, f"distill-{method}-{kind}", out, resume)
    digest = weights_digest(teacher_state(checkpoint))
    if resume:
        _check_resumed_teacher(run, teacher_path, digest)
    for network in (student, teacher_net, loss_method):
        runtime.place(network)
    features = feature_report(loss_method, teacher_net, student, spec)
    data = build_data(
        spec.data, spec.input_size, spec.num_classes, spec.train.batch_size, runtime.device, spec.train.seed
    )
    data.train.indexed = loss_method.needs_indices
    first = first_images(data, runtime.device)
    teacher_net, teacher_facts = inference_teacher(teacher_net, spec.distill, loss_method, first, runtime)
    own_loss = loss_method.objective(student, teacher_net)
    stage = Stage(
        kind="distill",
        title=f"{spec.name} {method} student from {kind} teacher",
        model=student,
        evaluator=student,
        loss=own_loss if own_loss is not None else distill_loss(student, teacher_net, loss_method),
        kl_term="kd",
        extra={"method": loss_method},
        frozen=[teacher_net],
        meta={
            "method": method,
            "teacher": str(teacher_path),
            "teacher_digest": digest,
            "teacher_kind": kind,
            "features": features,
            "teacher_inference": teacher_facts,
        },
        epoch_hooks=[loss_method.set_epoch],
        notes=[teacher_facts["line"]],
    )
    loss_method.bind_data(data)
    if spec.distill.soft_labels is not None:  # the teacher's logits computed once, read instead of a forward pass
        labels = open_soft_labels(spec, method, run, teacher_net, digest, data, runtime, dist, stage.title, quiet)
        data.train = labels.batches(data.train)
        stage.loss = soft_label_loss(student, loss_method, labels)
        stage.meta["soft_labels"] = labels.facts
        stage.notes.append(labels.note())
    title, meta = stage.title, stage.meta
    train_phases(loss_method, student, teacher_net, spec, run, data, runtime, dist, resume, quiet, title, meta)
    return fit(stage, spec, run, data, runtime, dist, resume and run.last.is_file(), quiet)


def first_images(data: DataBundle, device: torch.device) -> Tensor:
    """The first training batch's images, drawn without moving the stream's epoch or any random state."""
    epoch = data.train.epoch
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        images = next(iter(data.train))[0]
    data.train.set_epoch(epoch)
    return images


def check_distill(
    spec: Spec, teacher: str | Path, method: str, out: Path | None, resume: bool
) -> tuple[Path, dict[str, Any]]:
    """What a distillation uses, checked before anything is built or written: the method and its options,
    the teacher checkpoint (a finite teacher of this spec) and the run folder. Returns the teacher's
    checkpoint path and contents."""
    if method not in METHODS:
        from splicer.training.online import BASELINES

        if method in (*BASELINES, "all"):
            raise SplicerError(
                f"--method {method}: distill trains one student with one distillation method; "
                f"{'every method' if method == 'all' else 'the baselines'} run with `splicer run SPEC --methods {method}`"
            )
        create_method(method, spec.distill, [], [])  # raises the registry's message with suggestions
    method_options(method, spec.distill)
    check_soft_labels(spec, method)
    teacher_path = resolve_checkpoint(teacher, "last")
    checkpoint = load_checkpoint(teacher_path)
    kind = checkpoint["kind"]
    if kind not in TEACHER_KINDS:
        raise SplicerError(
            f"--teacher {teacher}: this is a {kind} run, not a teacher; "
            "pass a run of `splicer train` (SFTN or --standard)"
        )
    _check_same_teacher(spec, checkpoint, teacher_path)
    open_run(spec.name, f"distill-{method}-{kind}", out, resume)  # checks the folder, writes nothing
    return teacher_path, checkpoint


def method_for_pair(spec: Spec, method: str, teacher: TappedBlockNet, student: TappedBlockNet) -> DistillMethod:
    """The method ``method`` built for this teacher and student, checked and prepared on the teacher.

    Raises :class:`~splicer.errors.UnsupportedPairError` where the method cannot read their block ends
    (``splicer run --methods all`` then skips it), other SplicerErrors for a wrong spec.
    """
    form = METHODS[method].reads if method in METHODS else "maps"  # an unknown name: create_method says so
    shapes = [block_shapes(network, spec, form) for network in (teacher, student)]
    loss_method = create_method(
        method,
        spec.distill,
        *shapes,
        teacher_layouts=teacher.layouts,
        student_layouts=student.layouts,
        num_classes=spec.num_classes,
    )
    loss_method.check_pair(method, teacher, student)
    loss_method.prepare(teacher)
    return loss_method


def distill_loss(student: TappedBlockNet, teacher: TappedBlockNet, method: DistillMethod) -> LossFn:
    """The method's weighted terms; the teacher runs without autograd, block features (block outputs, or
    pre-activations for methods with ``needs_preactivations``, in the form the method reads) only when needed."""

    def loss(images: Tensor, labels: Tensor, indices: Tensor | None = None) -> tuple[dict[str, Tensor], Tensor]:
        if method.needs_features or method.needs_preactivations:
            with torch.no_grad():
                t_features, t_logits = block_features(method, teacher, images)
            s_features, s_logits = block_features(method, student, images)
        else:
            with torch.no_grad():
                t_logits = teacher(images)
            s_logits, s_features, t_features = student(images), [], []
        if method.needs_indices:
            terms = method(s_logits.float(), t_logits.float(), s_features, t_features, labels, indices=indices)
        else:
            terms = method(s_logits.float(), t_logits.float(), s_features, t_features, labels)
        return terms, s_logits

    return loss


def block_shapes(network: BlockNet, spec: Spec, form: FeatureForm = "maps") -> list[tuple[int, ...]]:
    """Per-sample shape of each block end, from one forward pass of a blank image in eval mode: (C, H, W) of
    its NCHW map for methods reading maps or vectors (a vector has the map's C), the network's own for "native"."""
    was_training = network.training
    network.eval()
    with torch.no_grad():
        features, _ = network.forward_features(torch.zeros(1, *spec.input_size))
    network.train(was_training)
    if form != "native":
        features = adapt_features("maps", features, block_layouts(network))
    return [tuple(f.shape[1:]) for f in features]


def feature_report(
    method: DistillMethod, teacher: TappedBlockNet, student: TappedBlockNet, spec: Spec
) -> dict[str, Any] | None:
    """How the block ends reach ``method``, for the run's summary: per block, each network's layout and its
    adapter, and the method's rule for features of different sizes; None for a method that reads no features."""
    if not (method.needs_features or method.needs_preactivations):
        return None
    describe = describe_as_vector if method.reads == "vectors" else describe_as_map
    shapes = [block_shapes(network, spec, method.reads) for network in (teacher, student)]
    blocks = []
    for k, (t_layout, t_shape, s_layout, s_shape) in enumerate(
        zip(block_layouts(teacher), shapes[0], block_layouts(student), shapes[1], strict=True), start=1
    ):
        if method.reads == "native":
            blocks.append(f"block {k}: teacher {t_shape}, student {s_shape}, as the networks give them")
        else:
            blocks.append(f"block {k}: teacher {describe(t_layout, t_shape)}; student {describe(s_layout, s_shape)}")
    what = "pre-activations" if method.needs_preactivations else "block outputs"
    return {"reads": f"{what} as {method.reads}", "blocks": blocks, "size_rule": method.size_rule}


def _check_same_teacher(spec: Spec, checkpoint: dict[str, Any], path: Path) -> None:
    """The teacher weights must come from the teacher network this spec describes."""
    trained = checkpoint["spec"]
    if trained["teacher"]["model"] != spec.teacher.model or trained["num_classes"] != spec.num_classes:
        raise SplicerError(
            f"--teacher {path}: that teacher is {trained['teacher']['model']} with {trained['num_classes']} classes "
            f"(spec {trained['name']!r}), but spec {spec.name!r} has teacher {spec.teacher.model} with "
            f"{spec.num_classes} classes"
        )


def _check_resumed_teacher(run: RunDir, teacher_path: Path, digest: str) -> None:
    """A resumed run must keep its teacher's weights; they are compared by digest, so the teacher may have
    moved with its experiment (runs written before the digest existed are compared by path)."""
    if not run.checkpoints():  # only soft labels computed so far: their manifest names the teacher's digest
        return
    meta = load_checkpoint(run.checkpoints()[-1])["meta"]
    previous = Path(meta["teacher"])
    if "teacher_digest" in meta:
        if meta["teacher_digest"] != digest:
            raise SplicerError(
                f"--resume: {run.path} was distilled from other teacher weights (then at {previous}) than those in "
                f"{teacher_path}; pass the teacher it started with"
            )
    elif previous.resolve() != teacher_path.resolve():
        raise SplicerError(f"--resume: {run.path} was distilled from {previous}; pass --teacher {previous}")
