"""The generic training loop shared by every stage: device and precision, optimizer and
schedule, epochs with on-device metric accumulation, divergence detection, evaluation,
checkpoints and resume.

A stage (:mod:`stage1`, :mod:`stage2`) only says what to train and how to compute its
loss, as a :class:`Stage`; everything else lives here once.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from splicer.data import DataBundle
from splicer.errors import SplicerError
from splicer.spec import Spec
from splicer.spec.schema import TrainSpec
from splicer.training.checkpoint import FORMAT, copy_atomic, load_checkpoint, rng_state, save_atomic, set_rng_state
from splicer.training.distributed import Distributed
from splicer.training.evaluate import accuracy
from splicer.training.logging import EpochProgress, RunLogger, read_metrics
from splicer.training.runs import RunDir
from splicer.training.spec_changes import changed_settings

SYNC_EVERY = 10
"""Steps between host-device synchronisations (progress numbers, divergence check)."""

LossFn = Callable[..., tuple[dict[str, Tensor], Tensor | None]]
"""(images, labels[, sample indices]) -> (loss terms including "total", logits scored for train accuracy,
or None when what is trained has no class logits, e.g. a method's paraphraser).

The sample indices come only from a training stream that was asked for them (``indexed``)."""


class TrainingDiverged(SplicerError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


@dataclass(frozen=True)
class Runtime:
    """The device and its numerics; by default bf16 autocast on CUDA (fp32 on the CPU) and channels-last on
    both (measured faster for the students' training step on the CPU: benchmarks/results/student_step_layout.md).

    The spec's ``train.precision`` and ``train.memory_format`` can force either on any device,
    which also lets the CUDA numerics be exercised on a CPU. ``compile`` runs the training
    step through ``torch.compile`` (``train.compile``; auto: on CUDA only).
    """

    device: torch.device
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False

    @classmethod
    def create(
        cls,
        name: str,
        dist: Distributed,
        precision: str = "auto",
        memory_format: str = "auto",
        compile: bool | str = False,
    ) -> Runtime:
        """Resolve ``auto|cpu|cuda``; under torchrun each process takes the GPU of its local rank
        and joins the process group."""
        if name == "cuda" and not torch.cuda.is_available():
            raise SplicerError("train.device: cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto")
        on_gpu = name != "cpu" and torch.cuda.is_available()
        if on_gpu:
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        device = dist.device(on_gpu)
        dist.start(device)
        bf16 = precision == "bf16" or (precision == "auto" and on_gpu)
        channels_last = memory_format != "contiguous"
        compiled = compile is True or (compile == "auto" and on_gpu)
        return cls(device, bf16, channels_last, compiled)

    @classmethod
    def for_spec(cls, spec: Spec, dist: Distributed) -> Runtime:
        """The runtime ``spec.train`` asks for (device, precision, memory format, compilation)."""
        train = spec.train
        return cls.create(train.device, dist, train.precision, train.memory_format, train.compile)

    def autocast(self) -> AbstractContextManager[Any]:
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def place(self, module: nn.Module) -> nn.Module:
        module.to(self.device)
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def inputs(self, images: Tensor) -> Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images


def seed_everything(seed: int) -> None:
    """Seed every RNG a model or a training step may draw from."""
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    try:
        import numpy

        numpy.random.seed(seed % 2**32)
    except ImportError:
        pass


@dataclass
class Stage:
    """One thing to train, as the engine sees it."""

    kind: str  # checkpoint kind: sftn | standard | student | distill
    title: str  # names the run in progress lines and plots
    model: nn.Module  # trained; checkpoint["model"]
    evaluator: nn.Module | None  # images -> logits, scored top-1/top-5 on the eval split; None: nothing to score
    loss: LossFn
    kl_term: str | None = None  # the term plotted as "KL" (figure 5)
    extra: dict[str, nn.Module] = field(default_factory=dict)  # trained with the model (FitNets' regressor)
    frozen: list[nn.Module] = field(default_factory=list)  # never trained, always in eval mode (the teacher)
    meta: dict[str, Any] = field(default_factory=dict)  # stored in every checkpoint
    epoch_hooks: list[Callable[[int], None]] = field(default_factory=list)  # told each epoch (0-based) before it runs
    lr_setting: str = "train.lr (--lr)"  # where the user sets the learning rate, named when the loss diverges
    recipe: TrainSpec | None = None  # the optimisation recipe; None: the spec's train (stage 1 may fine-tune)
    lr_mult: list[tuple[nn.Module, float]] = field(default_factory=list)  # parts of the model at lr x factor
    notes: list[str] = field(default_factory=list)  # said once when the run starts (what is frozen, ...)

    def trained(self) -> list[nn.Module]:
        return [self.model, *self.extra.values()]

    def train_mode(self) -> None:
        for module in self.trained():
            module.train()
        for module in self.frozen:
            module.eval()


class TrainStep(nn.Module):
    """The trained modules and the stage's loss as one module: what DDP wraps and torch.compile compiles.

    The frozen teacher is not registered here, so DDP neither wraps nor synchronises it.
    """

    def __init__(self, stage: Stage) -> None:
        super().__init__()
        self.trained = nn.ModuleList(stage.trained())
        self._loss = stage.loss

    def forward(self, images: Tensor, labels: Tensor, *extra: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        return self._loss(images, labels, *extra)  # extra: what a stream adds per batch (e.g. sample indices)


def training_step(stage: Stage, recipe: TrainSpec, runtime: Runtime, dist: Distributed) -> nn.Module:
    """The callable a training step runs: SyncBatchNorm if asked, DDP under torchrun, then torch.compile.

    Call before building the optimizer: SyncBatchNorm replaces the BatchNorm modules (and
    their parameters). The stage's own modules stay unwrapped, so checkpoints keep their keys.
    """
    if recipe.sync_bn:
        stage.model = dist.sync_batch_norm(stage.model, runtime.device)
        stage.extra = {name: dist.sync_batch_norm(m, runtime.device) for name, m in stage.extra.items()}
    step: nn.Module = dist.wrap(TrainStep(stage), runtime.device)
    if runtime.compile:
        torch._dynamo.reset()  # a fresh cache per run: runs in one process would otherwise hit the recompile limit
        step = torch.compile(step)
    return step


@dataclass
class _EpochStats:
    terms: dict[str, float]
    train_acc: float | None
    images: int
    steps: int
    seconds: float
    first_step_seconds: float


def fit(
    stage: Stage,
    spec: Spec,
    run: RunDir,
    data: DataBundle,
    runtime: Runtime,
    dist: Distributed,
    resume: bool,
    quiet: bool = False,
) -> dict[str, Any]:
    """Train ``stage`` for ``spec.train.epochs`` epochs in ``run``; returns the run's summary.

    With ``resume``, model, extra modules, optimizer, scheduler, RNG state, epoch and best
    accuracy come from ``run/last.pt``, and each epoch's data order is a function of
    (seed, epoch): the run ends with exactly the weights an uninterrupted run would have.
    """
    recipe = stage.recipe or spec.train
    spec_dict = spec.model_dump(mode="json")
    run = dist.from_main(run)  # one folder, even when each rank named a fresh one at a different second
    dist.check_batch_size(recipe.batch_size)
    dist.shard(data)
    step = training_step(stage, recipe, runtime, dist)
    optimizer = torch.optim.SGD(
        _param_groups(stage, recipe.lr), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=recipe.milestones, gamma=recipe.gamma)
    logger = RunLogger(run, dist, stage.title, quiet)
    start, best = 0, {"top1": None, "top5": None, "epoch": None}
    if resume:
        state = load_checkpoint(run.last)
        if state["kind"] != stage.kind or state.get("meta", {}).get("method") != stage.meta.get("method"):
            raise SplicerError(
                f"--resume: {run.last} is a {_describe(state['kind'], state.get('meta', {}))} run, "
                f"not a {_describe(stage.kind, stage.meta)} run"
            )
        changes = changed_settings(state["spec"], spec_dict, stage.kind, stage.meta.get("method"))
        if changes:
            raise SplicerError(
                f"--resume: {run.path} started with other settings than this spec gives: {'; '.join(changes)}. "
                f"Resume with the spec it started with ({run.spec}), or train in a new folder"
            )
        _restore(stage, optimizer, scheduler, state)
        set_rng_state(state["rng"], runtime.device)
        start, best = state["epoch"], state["best"]
        logger.info(f"{stage.title}: resuming {run.path} after epoch {start}")
    with logger.recording(spec_dict, start if resume else None):
        for note in stage.notes:
            logger.info(f"{stage.title}: {note}")
        compile_seconds = None
        for epoch in range(start, recipe.epochs):
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            data.train.set_epoch(epoch)
            for hook in stage.epoch_hooks:
                hook(epoch)
            with logger.epoch_progress(epoch + 1, recipe.epochs, len(data.train)) as progress:
                stats = _train_epoch(stage, step, data, optimizer, runtime, dist, progress, epoch, run)
            if runtime.compile and compile_seconds is None:
                compile_seconds = stats.first_step_seconds
                seconds = f"{compile_seconds:.1f} s"
                logger.info(f"{stage.title}: torch.compile: the first step (compilation) took {seconds}")
            top1 = top5 = None
            if stage.evaluator is not None and ((epoch + 1) % recipe.eval_every == 0 or epoch + 1 == recipe.epochs):
                top1, top5 = accuracy(stage.evaluator, data.eval, runtime, dist)
            scheduler.step()
            improved = top1 is not None and (best["top1"] is None or top1 > best["top1"])
            if improved:
                best = {"top1": top1, "top5": top5, "epoch": epoch + 1}
            record = {
                "epoch": epoch + 1,
                "lr": lr,
                "loss": stats.terms.pop("total"),
                "terms": stats.terms,
                "train_acc": stats.train_acc,
                "eval_top1": top1,
                "eval_top5": top5,
                "img_per_s": stats.images / stats.seconds,
                "step_seconds": stats.seconds / stats.steps,
                "seconds": time.perf_counter() - started,
            }
            logger.log_epoch(record, recipe.epochs, data.eval_name)
            if dist.is_main:
                save_atomic(_payload(stage, spec_dict, optimizer, scheduler, epoch + 1, best, runtime), run.last)
                if improved:
                    copy_atomic(run.last, run.best)
        dist.barrier()  # rank 0 has written the last epoch's record and checkpoint
        summary = _summary(stage, spec, run, data, runtime, best)
        summary["processes"] = dist.world_size
        summary["compile_seconds"] = compile_seconds
        logger.finish(summary, stage.kl_term)
    dist.barrier()  # ... and summary.json, which `splicer run` reads next on every rank
    return summary


def _param_groups(stage: Stage, lr: float) -> list[dict[str, Any]]:
    """The trained parameters at ``lr``, then one group per ``stage.lr_mult`` entry at lr x its factor;
    the same groups in the same order on every start, so that a resume restores the optimizer state."""
    scaled = [(list(module.parameters()), factor) for module, factor in stage.lr_mult]
    taken = {id(p) for params, _ in scaled for p in params}
    main = [p for module in stage.trained() for p in module.parameters() if p.requires_grad and id(p) not in taken]
    groups = [{"params": main, "lr": lr}]
    groups += [
        {"params": [p for p in params if p.requires_grad], "lr": lr * factor} for params, factor in scaled if factor > 0
    ]
    return [group for group in groups if group["params"]]


def _train_epoch(
    stage: Stage,
    step_fn: nn.Module,
    data: DataBundle,
    optimizer: torch.optim.Optimizer,
    runtime: Runtime,
    dist: Distributed,
    progress: EpochProgress,
    epoch: int,
    run: RunDir,
) -> _EpochStats:
    """One pass over the training stream. Loss terms, correct predictions and the first
    non-finite step are accumulated on the device and, every SYNC_EVERY steps, summed over
    the ranks and read back: every rank sees the same numbers and stops at the same step."""
    stage.train_mode()
    steps = len(data.train)
    device = runtime.device
    names: list[str] = []
    sums = torch.zeros(0, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    scored = False
    first_bad = torch.full((), -1.0, dtype=torch.float64, device=device)
    images = 0
    host: list[float] = []
    first_step_seconds = 0.0
    started = time.perf_counter()
    for step, (batch, labels, *indices) in enumerate(data.train):
        with runtime.autocast():
            terms, logits = step_fn(runtime.inputs(batch), labels, *indices)
        total = terms["total"]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if step == 0:
            first_step_seconds = time.perf_counter() - started
        if not names:
            names = ["total", *(name for name in terms if name != "total")]
            sums = torch.zeros(len(names), device=device)
        values = torch.stack([terms[name].detach().float() for name in names])
        sums += values
        if logits is not None:
            correct += (logits.detach().argmax(1) == labels).sum()
            scored = True
        first_bad.masked_fill_((first_bad < 0) & ~torch.isfinite(values[0]), step)
        images += len(labels)
        progress.advance()
        if (step + 1) % SYNC_EVERY == 0 or step + 1 == steps:
            counted = torch.tensor([images], dtype=torch.float64, device=device)
            host = dist.sum(torch.cat([sums.double(), correct.view(1), counted])).tolist()
            # The earliest non-finite step on any rank, as (steps - step) so that the maximum finds it.
            earliest = dist.max(torch.where(first_bad >= 0, steps - first_bad, 0.0).view(1)).item()
            if earliest > 0:
                bad = [
                    name
                    for name, value in zip(names[1:], host[1 : len(names)], strict=True)
                    if not math.isfinite(value)
                ]
                raise TrainingDiverged(_diverged_message(stage, epoch, int(steps - earliest), steps, bad, run))
            seen = host[-1]
            acc = 100 * host[-2] / seen if scored else None
            progress.show(host[0] / ((step + 1) * dist.world_size), acc, seen / (time.perf_counter() - started))
    seconds = time.perf_counter() - started
    means = {name: value / (steps * dist.world_size) for name, value in zip(names, host[: len(names)], strict=True)}
    train_acc = 100 * host[-2] / host[-1] if scored else None
    return _EpochStats(means, train_acc, int(host[-1]), steps, seconds, first_step_seconds)


def _diverged_message(stage: Stage, epoch: int, step: int, steps: int, bad_terms: list[str], run: RunDir) -> str:
    where = f"{stage.title}: the loss became NaN/inf at epoch {epoch + 1}, step {step + 1}/{steps}"
    if bad_terms:
        where += f" (non-finite terms: {', '.join(bad_terms)})"
    if run.last.is_file():
        kept = f"the last good checkpoint, {run.last}, is kept unchanged"
    else:
        kept = "no checkpoint had been written yet"
    return f"{where}. Training stopped; {kept}. Try a lower {stage.lr_setting}, or check the data and loss weights."


def _payload(
    stage: Stage,
    spec_dict: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch: int,
    best: dict[str, Any],
    runtime: Runtime,
) -> dict[str, Any]:
    """Everything a resume needs, in types that ``torch.load(weights_only=True)`` accepts."""
    return {
        "format": FORMAT,
        "kind": stage.kind,
        "meta": stage.meta,
        "spec": spec_dict,
        "model": stage.model.state_dict(),
        "extra": {name: module.state_dict() for name, module in stage.extra.items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(runtime.device),
        "epoch": epoch,
        "best": best,
    }


def _restore(stage: Stage, optimizer: torch.optim.Optimizer, scheduler: Any, state: dict[str, Any]) -> None:
    try:
        stage.model.load_state_dict(state["model"])
        for name, module in stage.extra.items():
            module.load_state_dict(state["extra"][name])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise SplicerError(f"--resume: the checkpoint does not fit the model built from this spec: {exc}") from None
    scheduler.load_state_dict(state["scheduler"])


def _describe(kind: str, meta: dict[str, Any]) -> str:
    return f"{kind} ({meta['method']})" if meta.get("method") else kind


def _summary(
    stage: Stage, spec: Spec, run: RunDir, data: DataBundle, runtime: Runtime, best: dict[str, Any]
) -> dict[str, Any]:
    """Final and best accuracy, time and speed of the whole run (across resumes)."""
    records = read_metrics(run.metrics)
    last = next((r for r in reversed(records) if r["eval_top1"] is not None), None)
    final = {"top1": last["eval_top1"], "top5": last["eval_top5"], "epoch": last["epoch"]} if last else None
    return {
        "kind": stage.kind,
        "meta": stage.meta,
        "spec": spec.name,
        "run": str(run.path),
        "seed": spec.train.seed,
        "device": str(runtime.device),
        "epochs": len(records),
        "eval_split": data.eval_name,
        "final": final,
        "best": best,
        "wall_seconds": sum(r["seconds"] for r in records),
        "step_seconds_median": statistics.median(r["step_seconds"] for r in records) if records else None,
        "img_per_s_median": statistics.median(r["img_per_s"] for r in records) if records else None,
        "data": data_facts(data),
    }


def data_facts(data: DataBundle) -> dict[str, Any]:
    """What a network trained on ``data`` expects of its input, for `splicer export`: images in [0, 1] are
    normalised with this mean and std per channel; output k is class ``classes[k]``."""
    return {"mean": list(data.mean), "std": list(data.std), "classes": list(data.class_names)}
