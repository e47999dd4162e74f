"""The spec language: what a user writes in YAML, as pydantic models.

Every model forbids unknown keys so that a typo is an error, not a silently ignored
setting. Defaults follow the paper's CIFAR-100 recipe (section 4.1 and 7.1).
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from splicer.errors import did_you_mean

MODEL_SOURCES = ("cifar", "timm", "torchvision", "python")
LOGGERS = ("jsonl", "tensorboard", "mlflow")
"""Where a run's per-epoch metrics can go (``train.loggers``); jsonl is metrics.jsonl, always written."""


def default_workers() -> int:
    """DataLoader workers the machine has: more than its CPUs only slows loading, and torch warns about it."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cpus <= 1 else min(4, cpus)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NetworkSpec(_Strict):
    """One network (teacher or student) and where to cut it into blocks."""

    model: str = Field(
        description="Model reference: cifar:NAME, timm:NAME, torchvision:NAME or python:MODULE:FACTORY.",
        examples=["cifar:vgg13", "timm:resnet18", "torchvision:resnet34", "python:mypkg.nets:make_net"],
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments passed to the model factory.")
    checkpoint: str | None = Field(
        default=None,
        description="Optional initial weights, loaded with weights_only=True: a state_dict file of the model "
        "(its own keys). For the teacher also a splicer stage-1 run folder or checkpoint (standard or SFTN: its "
        "teacher part); `splicer train --from` sets it.",
    )
    pretrained: bool = Field(
        False,
        description="Teacher only: start from the library's pretrained weights (timm: or torchvision: models), "
        "downloaded by the library itself. Offline, save them elsewhere and pass the file with --from.",
    )
    head: Literal["keep", "reset"] = Field(
        "keep",
        description="Teacher only: reset, re-initialise the classification head when the initial weights "
        "(checkpoint, pretrained) have another class count; keep refuses such weights.",
    )
    blocks: list[str] | Literal["auto"] = Field(
        default="auto",
        description="Block ends, in order: fx node names or module paths. The last one is the output of the "
        "last feature block, just before the classification head. 'auto' picks stage ends.",
    )
    num_blocks: int | None = Field(
        default=None, ge=2, description="With blocks: auto, how many blocks to cut (default: one per stage)."
    )

    @model_validator(mode="after")
    def _one_start(self) -> NetworkSpec:
        if self.pretrained and self.checkpoint is not None:
            raise ValueError(
                "pretrained: true and checkpoint both give initial weights; keep one (--from FILE replaces pretrained)"
            )
        return self

    @field_validator("model")
    @classmethod
    def _known_source(cls, value: str) -> str:
        source, sep, name = value.partition(":")
        if not sep or not name:
            raise ValueError(
                f"model reference {value!r} needs the form SOURCE:NAME with SOURCE one of {', '.join(MODEL_SOURCES)}"
            )
        if source not in MODEL_SOURCES:
            from splicer.errors import did_you_mean

            hint = did_you_mean(source, MODEL_SOURCES) or ";"
            raise ValueError(f"unknown model source {source!r}{hint} valid sources: {', '.join(MODEL_SOURCES)}")
        return value

    @field_validator("blocks")
    @classmethod
    def _enough_blocks(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list):
            if len(value) < 2:
                raise ValueError("an SFTN needs at least 2 blocks (one branch); list at least 2 block ends")
            if len(set(value)) != len(value):
                raise ValueError("block ends must be distinct")
        return value


class LossSpec(_Strict):
    """Stage-1 loss: L = teacher_ce*CE(z_T) + branch_kl*mean_i KL + branch_ce*mean_i CE(z_R^i)."""

    teacher_ce: float = Field(1.0, ge=0, description="lambda_T: weight of the teacher's cross-entropy.")
    branch_kl: float = Field(3.0, ge=0, description="lambda_KL: weight of the mean branch KL (CIFAR 3, ImageNet 1).")
    branch_ce: float = Field(1.0, ge=0, description="lambda_CE: weight of the mean branch cross-entropy.")
    tau: float = Field(1.0, gt=0, description="Softmax temperature of the KL term (no tau^2 factor, as equation 5).")
    kl_direction: Literal["teacher_branch", "branch_teacher"] = Field(
        "teacher_branch",
        description="teacher_branch: KL(q_T || q_R), teacher as the target, as the common CIFAR code computes it "
        "(F.kl_div(log q_R, q_T)). branch_teacher: KL(q_R || q_T), as the paper's equation 5 is written.",
    )


class TransformSpec(_Strict):
    """How the transforms T^i are built; the defaults are the paper's (section 3.1)."""

    equal_kernel: Literal[1, 3] = Field(
        1, description="Conv kernel where teacher and student feature sizes are equal: 1 (paper) or 3 (padding 1)."
    )
    activation: bool = Field(True, description="ReLU after each transform's BN (paper: yes); false leaves conv + BN.")


class DataSpec(_Strict):
    """Where the images come from and how they are prepared."""

    dataset: Literal["synthetic", "cifar10", "cifar100", "imagefolder"] = "synthetic"
    root: str | None = Field(None, description="Data folder (cifar10/cifar100/imagefolder).")
    download: bool = Field(False, description="Let torchvision download CIFAR into root when it is missing.")
    resize: int | None = Field(
        None, ge=4, description="Average-pool or resize images to this side length (a cheaper input)."
    )
    train_subset: int | None = Field(None, ge=1, description="Use only this many training images.")
    val_split: int = Field(
        0, ge=0, description="Hold out this many training images as a validation split (evaluated instead of test)."
    )
    augment: bool = Field(True, description="Random crop (4-pixel padding) and horizontal flip on training batches.")
    workers: int = Field(
        default_factory=default_workers,
        ge=0,
        description="DataLoader workers for large (ImageNet-style) images; default: the CPUs this process may use, "
        "up to 4 (0, loading in the main process, on one CPU).",
    )
    synthetic_train: int = Field(2048, ge=16, description="Synthetic task: training images.")
    synthetic_test: int = Field(512, ge=16, description="Synthetic task: test images.")


_CIFAR_RECIPE = dict(
    epochs=240, batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4, milestones=[150, 180, 210], gamma=0.1
)
_IMAGENET_RECIPE = dict(
    epochs=100, batch_size=256, lr=0.1, momentum=0.9, weight_decay=1e-4, milestones=[30, 60, 90], gamma=0.1
)


RECIPES: dict[str, dict[str, Any]] = {"cifar": _CIFAR_RECIPE, "imagenet": _IMAGENET_RECIPE}


class TrainSpec(_Strict):
    """Optimisation recipe. `recipe` picks the paper's defaults; any field given overrides them."""

    recipe: Literal["cifar", "imagenet"] = "cifar"
    epochs: int = Field(240, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(5e-4, ge=0)
    milestones: list[int] = Field(default_factory=lambda: [150, 180, 210])
    gamma: float = Field(0.1, gt=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU. Weights and optimizer state stay fp32."
    )
    memory_format: Literal["auto", "channels_last", "contiguous"] = Field(
        "auto",
        description="auto: channels-last on CUDA and on the CPU (faster convolutions on both; "
        "benchmarks/results/student_step_layout.md).",
    )
    eval_every: int = Field(1, ge=1, description="Evaluate every this many epochs (and always at the end).")
    compile: Literal["auto", True, False] = Field(
        "auto",
        description="torch.compile the training step (networks and the method's modules). "
        "auto: on CUDA, off on the CPU (see benchmarks/results/ddp_compile.md).",
    )
    sync_bn: bool = Field(
        False,
        description="Under torchrun, BatchNorm statistics over the global batch (SyncBatchNorm; CUDA only). "
        "false: each process normalises with its own share of the batch.",
    )
    loggers: list[str] = Field(
        default_factory=lambda: ["jsonl"],
        description="Where each epoch's metrics go: jsonl (metrics.jsonl, always on: summaries, curves and "
        "reports are read from it), tensorboard (event files in the run folder), mlflow.",
    )
    mlflow_uri: str | None = Field(
        None,
        description="MLflow tracking URI (a server, sqlite:///FILE.db, ...); default: MLFLOW_TRACKING_URI, "
        "else sqlite:///RUN/mlflow.db in each run folder.",
    )

    @field_validator("loggers", mode="before")
    @classmethod
    def _loggers_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value  # --set train.loggers=tensorboard

    @field_validator("loggers")
    @classmethod
    def _known_loggers(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in LOGGERS:
                raise ValueError(
                    f"unknown logger {name!r}{did_you_mean(name, LOGGERS) or '.'} Valid loggers: {', '.join(LOGGERS)}"
                )
        return list(dict.fromkeys(["jsonl", *value]))  # metrics.jsonl stays on: splicer reads its runs from it

    @model_validator(mode="before")
    @classmethod
    def _apply_recipe(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {**RECIPES.get(data.get("recipe", "cifar"), _CIFAR_RECIPE), **data}
        return data


class FinetuneSpec(_Strict):
    """Stage 1 from a teacher you have (teacher.checkpoint or teacher.pretrained): a shorter recipe.

    Unset fields derive from ``train``; momentum, weight decay and batch size stay ``train``'s.
    """

    epochs: int | None = Field(None, ge=1, description="Fine-tuning epochs (default: a quarter of train.epochs).")
    lr: float | None = Field(None, gt=0, description="Learning rate of the branches (default: train.lr / 10).")
    milestones: list[int] = Field(default_factory=list, description="Epochs where the LR drops (default: none).")
    gamma: float = Field(0.1, gt=0, description="LR factor at each milestone.")
    teacher_lr_mult: float = Field(
        1.0,
        ge=0,
        description="The teacher's blocks through freeze_through learn at lr x this; 0 freezes them "
        "(no gradient, BatchNorm in eval mode). What follows them, and the branches, learn at lr.",
    )
    freeze_through: int | str | None = Field(
        None,
        description="Last teacher block teacher_lr_mult applies to: a 1-based block index or a block end name "
        "(default: every block and the head).",
    )

    @field_validator("freeze_through")
    @classmethod
    def _positive_block(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and value < 1:
            raise ValueError("freeze_through counts blocks from 1 (the first block), or names a block end")
        return value

    @model_validator(mode="after")
    def _sorted_milestones(self) -> FinetuneSpec:
        if self.milestones != sorted(set(self.milestones)):
            raise ValueError(f"milestones {self.milestones} must be distinct and increasing")
        return self

    def recipe(self, train: TrainSpec) -> TrainSpec:
        """``train`` with this section's epochs and schedule: the recipe a fine-tuning run follows."""
        epochs = self.epochs if self.epochs is not None else max(1, -(-train.epochs // 4))
        lr = self.lr if self.lr is not None else train.lr / 10
        return train.model_copy(update={"epochs": epochs, "lr": lr, "milestones": self.milestones, "gamma": self.gamma})


class SoftLabelsSpec(_Strict):
    """Stage 2 from soft labels computed once (Fast Knowledge Distillation, Shen and Xing, ECCV 2022):
    the teacher's logits on a fixed set of augmented views per training image, stored in the run folder,
    replace the teacher's forward pass while the student trains (logit methods only: kd, dkd, dist)."""

    views: int = Field(
        10,
        ge=1,
        description="Augmented views (crop and flip) stored per training image; each epoch trains each image on "
        "one of them, drawn anew. The teacher runs views x training images once, instead of once per epoch.",
    )
    keep: Literal["full"] | int = Field(
        "full",
        description="full: every class's logit (float32); an integer k: the k largest logits and their classes, "
        "the other classes sharing what remains of the teacher's probability at the method's temperature equally.",
    )

    @field_validator("keep", mode="before")
    @classmethod
    def _full_or_count(cls, value: Any) -> Any:
        if value == "full" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError("keep is full (every logit) or a positive number of top logits, e.g. 10")


class DistillSpec(_Strict):
    """Stage 2: how a fresh student learns from the frozen teacher."""

    methods: list[str] = Field(default_factory=lambda: ["kd"], description="Methods `splicer run` compares.")
    ce_weight: float = Field(0.1, ge=0, description="Weight of the student's cross-entropy with the labels.")
    kd_weight: float = Field(0.9, ge=0, description="Weight of the KD term (T^2 * KL(q_T || q_S) at temperature kd_tau).")
    kd_tau: float = Field(4.0, gt=0, description="Temperature of the KD term.")
    feature_weight: float | None = Field(
        None, ge=0, description="Weight of a feature method's loss (default: the method's, FitNets 100, AT 1000)."
    )
    hint_block: int = Field(
        2, ge=1, description="FitNets: the block (1-based) whose output is the hint (benchmark hint_layer=2)."
    )
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per-method settings, e.g. {crd: {embed_dim: 128}}; each method validates its own fields.",
    )
    soft_labels: SoftLabelsSpec | None = Field(
        None,
        description="Train from the teacher's logits computed once on stored augmented views (kd, dkd, dist; "
        "in-memory data), without a teacher forward pass per step; null: the teacher runs at every step.",
    )
    teacher_fold_bn: bool = Field(
        True,
        description="Fold the frozen teacher's BatchNorms into the convolutions before them (same outputs, "
        "checked at start against the unfolded teacher); false: run the teacher as trained.",
    )
    teacher_channels_last: Literal["auto", True, False] = Field(
        "auto",
        description="Run the frozen teacher channels-last. auto: on (faster on CUDA and, measured, on the CPU).",
    )
    teacher_precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="The frozen teacher's numerics (its outputs reach the loss as float32). "
        "auto: bf16 autocast where the device runs bf16 natively (CUDA GPUs that support it, CPUs with AMX), "
        "fp32 elsewhere (emulated bf16 is far slower).",
    )
    teacher_compile: bool = Field(
        False, description="torch.compile the frozen teacher for inference (its own graphs, apart from train.compile)."
    )


class Spec(_Strict):
    """A teacher/student pair and everything needed to compile and train its SFTN."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Name of the pair; used for output folders.")
    num_classes: int = Field(ge=2)
    input_size: tuple[int, int, int] = Field(description="C, H, W of one input image.")
    teacher: NetworkSpec
    student: NetworkSpec
    branch_student: NetworkSpec | None = Field(
        None,
        description="The network whose blocks form the SFTN's student branches (paper table 9); "
        "default: the student. `student` stays the network distilled in stage 2.",
    )
    transforms: TransformSpec = Field(default_factory=TransformSpec)
    loss: LossSpec = Field(default_factory=LossSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    distill: DistillSpec = Field(default_factory=DistillSpec)
    finetune: FinetuneSpec | None = Field(
        None,
        description="Stage 1's recipe when the teacher starts from weights (teacher.checkpoint, teacher.pretrained, "
        "splicer train --from, splicer run --sftn-from standard); without it such a start follows train.",
    )
    _source: str = PrivateAttr("<spec>")  # the file it came from, for error messages

    @property
    def source(self) -> str:
        return self._source

    @property
    def branch_network(self) -> NetworkSpec:
        """The network the SFTN's student branches are built from: ``branch_student``, else ``student``."""
        return self.branch_student if self.branch_student is not None else self.student

    @property
    def branch_role(self) -> str:
        """The spec section the branch network comes from, for messages and reports."""
        return "branch_student" if self.branch_student is not None else "student"

    @property
    def teacher_starts_trained(self) -> bool:
        """Whether stage 1 starts from weights the user has rather than from a fresh initialisation."""
        return self.teacher.checkpoint is not None or self.teacher.pretrained

    def stage1_recipe(self) -> TrainSpec:
        """The recipe stage 1 follows: ``finetune`` over ``train`` when the teacher starts trained."""
        if self.finetune is not None and self.teacher_starts_trained:
            return self.finetune.recipe(self.train)
        return self.train

    @model_validator(mode="after")
    def _teacher_only_starts(self) -> Spec:
        for role in ("student", "branch_student"):
            network = getattr(self, role)
            if network is not None and (network.pretrained or network.head != "keep"):
                raise ValueError(
                    f"{role}: pretrained and head are teacher settings (stage 1 starts from the teacher you have); "
                    f"a {role} starts fresh or from a local state_dict in {role}.checkpoint"
                )
        return self

    @model_validator(mode="after")
    def _soft_labels_fit(self) -> Spec:
        soft = self.distill.soft_labels
        if soft is None:
            return self
        if soft.keep != "full" and soft.keep >= self.num_classes:
            raise ValueError(
                f"distill.soft_labels.keep: {soft.keep} top logits of {self.num_classes} classes keep them all; "
                f"use keep: full, or fewer than {self.num_classes}"
            )
        if soft.views > 1 and not self.data.augment:
            raise ValueError(
                f"distill.soft_labels.views: {soft.views} views of unaugmented images (data.augment: false) are all "
                "the same image; use views: 1, or data.augment: true"
            )
        return self

    @field_validator("input_size")
    @classmethod
    def _positive(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(value) < 1:
            raise ValueError("input_size needs three positive integers: channels, height, width")
        return value
