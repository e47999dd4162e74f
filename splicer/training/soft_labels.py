"""Soft labels computed once (Fast Knowledge Distillation, Shen and Xing, ECCV 2022): the frozen
teacher's logits on a fixed number of augmented views of every training image are computed once
into the run folder, and the student then learns from them without a teacher forward pass
(``distill.soft_labels``; the logit methods KD, DKD and DIST).

The store, ``RUN/soft_labels/``: ``manifest.json`` (what the store was computed for, and what it
cost) and one ``chunk-NNNNN.pt`` per :data:`CHUNK_IMAGES` training images, in the split's order.
A chunk holds each image's views as crop and flip parameters (``top``, ``left``: int16, ``flip``:
bool, each (n, views)) and the teacher's outputs on them: ``logits`` (n, views, classes) float32,
or for ``keep: k`` the ``values`` of the k largest logits (float32), their ``classes`` (int16; int32
past 32767 classes) and ``rest``, the log-sum-exp over the other classes of logit / T at the
method's temperature T (float32). float32, not float16: the stored logits are the teacher's own, so
the student learns exactly what a live teacher would teach on those views (where the teacher runs in
bf16, on a GPU or a CPU with AMX, float32 holds its values exactly); top-k is the way to a smaller store.

A chunk is written whole or not at all, and chunk c's views are drawn from a generator of the seed
and c alone: an interrupted precompute continues with the chunks it lacks and ends with the store an
uninterrupted one writes. Under torchrun each process computes every world_size-th chunk.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from splicer.data.augment import draw_crop_flip
from splicer.data.build import streams_from_disk
from splicer.data.bundle import epoch_generator
from splicer.data.memory import Crops, MemoryBatches
from splicer.data.views import StoredViewBatches
from splicer.errors import SplicerError
from splicer.spec import Spec
from splicer.spec.schema import DistillSpec
from splicer.training.checkpoint import save_atomic, weights_digest
from splicer.training.frozen_teacher import TeacherNumerics
from splicer.training.logging import RunLogger
from splicer.training.methods import METHODS, DistillMethod
from splicer.training.methods.base import method_options

if TYPE_CHECKING:
    from splicer.data import DataBundle
    from splicer.training.distributed import Distributed
    from splicer.training.engine import LossFn, Runtime
    from splicer.training.runs import RunDir

FORMAT = 1
"""Version of the store's layout, in its manifest and every chunk."""
CHUNK_IMAGES = 1024
"""Training images per chunk file: what an interrupted precompute loses at most."""


def soft_label_methods() -> list[str]:
    """The registered methods that can learn from soft labels: those that read only the teacher's logits."""
    return sorted(
        name
        for name, cls in METHODS.items()
        if cls.soft_label_temperature(DistillSpec(), cls.Options()) is not None
    )


def check_soft_labels(spec: Spec, method: str) -> None:
    """Refuse ``distill.soft_labels`` where it cannot serve, before anything is built or written."""
    if spec.distill.soft_labels is None:
        return
    if METHODS[method].soft_label_temperature(spec.distill, method_options(method, spec.distill)) is None:
        raise SplicerError(
            f"distill.soft_labels: {method} reads more of the teacher than its logits, so the teacher must run at "
            f"every step; soft labels serve the logit methods {', '.join(soft_label_methods())}. Distil with one "
            "of them, or set distill.soft_labels: null"
        )
    if streams_from_disk(spec.data, spec.input_size):
        side = max(spec.input_size[1:])
        raise SplicerError(
            f"distill.soft_labels: {side}-pixel image folder images stream from disk, augmented by random resized "
            "crops in DataLoader workers that keep no record of them; soft labels need in-memory data (CIFAR, "
            "synthetic, image folders up to 64 px), whose crops and flips can be stored. Set distill.soft_labels: null"
        )


@dataclass
class SoftLabels:
    """A complete store on the training device: each image's view crops and the teacher's outputs on them."""

    crops: Crops  # (top, left, flip), each (N, views)
    stored: tuple[Tensor, ...]  # (logits,) or (values, classes, rest), each (N, views, ...)
    num_classes: int
    temperature: float | None  # top-k: the temperature ``rest`` was computed at
    facts: dict[str, Any]  # for the run's summary (meta.soft_labels) and its log

    def batches(self, train: MemoryBatches) -> StoredViewBatches:
        """``train``'s stream with each image on one of its stored views per epoch, carrying the stored outputs."""
        return StoredViewBatches(train, self.crops, self.stored)

    def teacher_logits(self, *stored: Tensor) -> Tensor:
        """The teacher's logits of a batch from what its stream carries (rebuilt for top-k)."""
        if len(stored) == 1:
            return stored[0]
        values, classes, rest = stored
        return rebuild_logits(values, classes, rest, self.num_classes, self.temperature or 1.0)

    def note(self) -> str:
        """What the run trains from, said once when it starts."""
        facts = self.facts
        return (
            f"soft labels: each image trains on one of its {facts['views']} stored views per epoch, with the "
            f"teacher's {facts['stored']} from {facts['folder']} and no teacher forward pass; computed once: "
            f"{facts['teacher_images']:,} teacher passes in {facts['precompute_seconds']:.1f} s, "
            f"{facts['store_bytes'] / 1e6:.2f} MB on disk"
        )


def rebuild_logits(values: Tensor, classes: Tensor, rest: Tensor, num_classes: int, temperature: float) -> Tensor:
    """Logits of every class from the k kept ones: those as they were, every other class one logit r with
    (C - k) * exp(r / T) = exp(rest). Then softmax(z / T) gives each kept class exactly the teacher's
    probability at T and shares the rest of it equally among the other classes."""
    other = temperature * (rest - math.log(num_classes - values.shape[-1]))
    logits = other.unsqueeze(-1).expand(*rest.shape, num_classes).clone()
    return logits.scatter_(-1, classes.long(), values)


def keep_top(logits: Tensor, k: int, temperature: float) -> dict[str, Tensor]:
    """The k largest logits, their classes and the log-sum-exp of the others' logit / T (see :func:`rebuild_logits`)."""
    values, classes = logits.topk(k, dim=-1)
    rest = (logits / temperature).scatter(-1, classes, float("-inf")).logsumexp(dim=-1)
    dtype = torch.int16 if logits.shape[-1] <= torch.iinfo(torch.int16).max else torch.int32
    return {"values": values, "classes": classes.to(dtype), "rest": rest}


def soft_label_loss(student: torch.nn.Module, method: DistillMethod, labels_from: SoftLabels) -> LossFn:
    """The method's terms on the stored teacher logits of each batch's views: no teacher forward pass."""

    def loss(images: Tensor, labels: Tensor, *stored: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        logits = student(images)
        return method(logits.float(), labels_from.teacher_logits(*stored).float(), [], [], labels), logits

    return loss


def open_soft_labels(
    spec: Spec,
    method: str,
    run: RunDir,
    teacher: torch.nn.Module,
    teacher_digest: str,
    data: DataBundle,
    runtime: Runtime,
    dist: Distributed,
    title: str,
    quiet: bool,
) -> SoftLabels:
    """The store of ``run``, computed where chunks are missing (all of them on a fresh run) and loaded onto the
    device. A store computed for another teacher, data, seed or setting is refused, never overwritten."""
    train = data.train
    if not isinstance(train, MemoryBatches):
        raise SplicerError("distill.soft_labels: the training images stream from disk; soft labels need in-memory data")
    run = dist.from_main(run)
    settings = spec.distill.soft_labels
    assert settings is not None
    temperature = None
    if settings.keep != "full":
        temperature = METHODS[method].soft_label_temperature(spec.distill, method_options(method, spec.distill))
    fingerprint = _fingerprint(spec, teacher_digest, train, temperature, runtime)
    folder, manifest_path = run.soft_labels, run.soft_labels / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    if manifest is not None and manifest["fingerprint"] != fingerprint:
        raise SplicerError(_mismatch(manifest_path, manifest["fingerprint"], fingerprint))
    if manifest is None:
        manifest = {"fingerprint": fingerprint, "complete": False, "seconds": 0.0}
        if dist.is_main:
            folder.mkdir(parents=True, exist_ok=True)
            _write_json(manifest_path, manifest)
    dist.barrier()
    logger = RunLogger(run, dist, title, quiet)
    count, views = len(train.labels), settings.views
    chunks = math.ceil(count / CHUNK_IMAGES)
    missing = [c for c in range(chunks) if not _chunk_path(run, c).is_file()]
    started, before = time.perf_counter(), manifest["seconds"]
    if missing:
        manifest["complete"] = False
        logger.info(
            f"{logger.title}: computing soft labels once: {count:,} images x {views} views = {count * views:,} "
            f"teacher passes into {folder} ({chunks - len(missing)} of {chunks} chunks already there)"
        )
        teacher.eval()
        mine = [c for c in missing if c % dist.world_size == dist.rank]
        with logger.progress(f"{logger.title} soft labels, chunks", len(mine)) as progress:
            for chunk in mine:
                outputs = _compute_chunk(
                    chunk, train, teacher, views, spec.num_classes, settings.keep, temperature, runtime
                )
                save_atomic(outputs, _chunk_path(run, chunk))
                progress.advance()
                manifest["seconds"] = before + time.perf_counter() - started
                if dist.is_main:
                    _write_json(manifest_path, manifest)
    dist.barrier()
    if dist.is_main and not manifest["complete"]:
        manifest.update(
            complete=True,
            seconds=before + time.perf_counter() - started,  # until the last rank's chunks were written
            teacher_images=count * views,
            store_bytes=sum(_chunk_path(run, c).stat().st_size for c in range(chunks)),
        )
        _write_json(manifest_path, manifest)
        logger.info(
            f"{logger.title}: soft labels computed: {count * views:,} teacher passes in {manifest['seconds']:.1f} s, "
            f"{manifest['store_bytes'] / 1e6:.2f} MB in {folder}"
        )
    dist.barrier()
    manifest = json.loads(manifest_path.read_text())
    return _load(run, chunks, manifest, settings.keep, spec.num_classes, temperature, runtime.device)


def _fingerprint(
    spec: Spec, teacher_digest: str, train: MemoryBatches, temperature: float | None, runtime: Runtime
) -> dict[str, Any]:
    """Everything the stored views and logits depend on (where the data lies and how it loads do not count), the
    teacher's precision included: ``auto`` differs between machines, and a store resumed on another must not mix."""
    settings = spec.distill.soft_labels
    assert settings is not None
    return {
        "format": FORMAT,
        "teacher_digest": teacher_digest,
        "teacher_precision": TeacherNumerics.resolve(spec.distill, runtime.device).precision,
        "views": settings.views,
        "keep": settings.keep,
        "temperature": temperature,
        "seed": spec.train.seed,
        "num_classes": spec.num_classes,
        "input_size": list(spec.input_size),
        "data": spec.data.model_dump(mode="json", exclude={"root", "download", "workers"}),
        "images": len(train.labels),
        "labels_digest": weights_digest({"labels": train.labels})[:16],
        "pad": train.pad,
        "chunk_images": CHUNK_IMAGES,
    }


def _mismatch(path: Path, was: dict[str, Any], now: dict[str, Any]) -> str:
    changes = "; ".join(
        f"{key}: was {was.get(key)}, now {now.get(key)}" for key in sorted(was.keys() | now.keys())
        if was.get(key) != now.get(key)
    )
    return (
        f"--resume: the soft labels in {path} were computed for other settings than this run's ({changes}); "
        "they are kept as they are. Resume with the spec and teacher the run started with, or distil into a new "
        "folder (--out)"
    )


def _chunk_path(run: RunDir, chunk: int) -> Path:
    return run.soft_labels / f"chunk-{chunk:05d}.pt"


def _write_json(path: Path, content: dict[str, Any]) -> None:
    """Readers see the old manifest or the complete new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(tmp, path)


def _compute_chunk(
    chunk: int,
    train: MemoryBatches,
    teacher: torch.nn.Module,
    views: int,
    num_classes: int,
    keep: str | int,
    temperature: float | None,
    runtime: Runtime,
) -> dict[str, Any]:
    """Chunk ``chunk``'s images: their views' crops and flips, drawn as training draws them, and the teacher's
    outputs on them."""
    start = chunk * CHUNK_IMAGES
    stop = min(start + CHUNK_IMAGES, len(train.labels))
    count, device = stop - start, train.images.device
    generator = epoch_generator(train.seed, -1 - chunk)  # a stream of its own: training epochs are >= 0
    if train.pad is None:
        drawn = [(torch.zeros(count, dtype=torch.int64),) * 2 + (torch.zeros(count, dtype=torch.bool),)] * views
    else:
        drawn = [draw_crop_flip(generator, count, train.pad) for _ in range(views)]
    top, left, flip = (torch.stack([view[part] for view in drawn], dim=1) for part in range(3))
    logits = torch.empty(count, views, num_classes)
    batch = train.batch_size  # the live teacher's batch: known to fit, and no slower per image on a CPU than more
    for view in range(views):
        for begin in range(0, count, batch):
            rows = slice(begin, min(begin + batch, count))
            index = torch.arange(start + rows.start, start + rows.stop, device=device)
            crops = None if train.pad is None else tuple(p[rows, view].to(device) for p in (top, left, flip))
            with torch.no_grad(), runtime.autocast():
                logits[rows, view] = teacher(runtime.inputs(train.augmented(index, crops))).float().cpu()
    outputs = {"logits": logits} if keep == "full" else keep_top(logits, int(keep), temperature or 1.0)
    return {"format": FORMAT, "chunk": chunk, "top": top.short(), "left": left.short(), "flip": flip, **outputs}


def _load(
    run: RunDir,
    chunks: int,
    manifest: dict[str, Any],
    keep: str | int,
    num_classes: int,
    temperature: float | None,
    device: torch.device,
) -> SoftLabels:
    """Every chunk, concatenated in the split's order, on ``device``."""
    parts = [torch.load(_chunk_path(run, c), map_location="cpu", weights_only=True) for c in range(chunks)]
    names = ("logits",) if keep == "full" else ("values", "classes", "rest")

    def joined(name: str) -> Tensor:
        return torch.cat([part[name] for part in parts]).to(device)

    crops = (joined("top").long(), joined("left").long(), joined("flip"))
    stored = tuple(joined(name) for name in names)
    kind = "float32 logits" if keep == "full" else f"top-{keep} logits (the rest shared equally at T={temperature:g})"
    facts = {
        "views": manifest["fingerprint"]["views"],
        "keep": keep,
        "stored": kind,
        "folder": str(run.soft_labels),
        "store_bytes": manifest["store_bytes"],
        "precompute_seconds": manifest["seconds"],
        "teacher_images": manifest["teacher_images"],
    }
    return SoftLabels(crops, stored, num_classes, temperature, facts)
