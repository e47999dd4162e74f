"""Scoring trained networks: top-1/top-5 accuracy, and for a teacher/student pair the
paper's table-8 similarity: the KL divergence between their output distributions and the
linear CKA (Kornblith et al., 2019) of their last block features, global-average-pooled.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from splicer.assembly.modules import BlockNet
    from splicer.training.distributed import Distributed
    from splicer.training.engine import Runtime


@torch.no_grad()
def accuracy(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], runtime: Runtime, dist: Distributed | None = None
) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (%) of ``model`` in eval mode (top-k with k = classes when fewer than 5).

    Under torchrun each rank scores its own part of the split (see ``Distributed.shard``)
    and the hits and counts are summed over the ranks: every image counts exactly once.
    """
    was_training = model.training
    model.eval()
    hits = torch.zeros(3, dtype=torch.float64, device=runtime.device)  # top-1, top-5, images
    for images, labels in batches:
        with runtime.autocast():
            logits = model(runtime.inputs(images))
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]
        hits += torch.stack([top[:, 0].sum(), top.any(dim=1).sum(), top.new_tensor(len(labels), dtype=torch.long)])
    model.train(was_training)
    if dist is not None:
        dist.sum(hits)
    top1, top5, count = hits.tolist()
    return 100 * top1 / count, 100 * top5 / count


class LinearCKA:
    """Linear CKA of two feature sets, accumulated batch by batch in float64.

    CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with Xc, Yc centred over the
    examples. The cross-products of the centred features follow from the running sums of
    X, Y, X^T X, Y^T Y and Y^T X, so no feature matrix of the whole split is ever held.
    """

    def __init__(self) -> None:
        self.n = 0
        self._sums: list[Tensor] = []

    def update(self, x: Tensor, y: Tensor) -> None:
        x, y = x.double(), y.double()
        parts = [x.sum(0), y.sum(0), x.T @ x, y.T @ y, y.T @ x]
        self._sums = parts if not self._sums else [a + b for a, b in zip(self._sums, parts, strict=True)]
        self.n += len(x)

    def value(self) -> float:
        sx, sy, xx, yy, yx = self._sums
        n = self.n
        xx = xx - torch.outer(sx, sx) / n
        yy = yy - torch.outer(sy, sy) / n
        yx = yx - torch.outer(sy, sx) / n
        return (yx.pow(2).sum() / (xx.norm() * yy.norm())).item()


@dataclass(frozen=True)
class Similarity:
    """Table 8: lower KL and higher CKA mean a student closer to its teacher."""

    kl: float  # mean over examples of KL(p_teacher || p_student), temperature 1
    cka: float  # linear CKA of the pooled last block features


@torch.no_grad()
def similarity(
    teacher: BlockNet, student: BlockNet, batches: Iterable[tuple[Tensor, Tensor]], runtime: Runtime
) -> Similarity:
    """KL divergence and linear CKA between a teacher and a student over an eval stream."""
    modes = (teacher.training, student.training)
    teacher.eval()
    student.eval()
    kl_sum = torch.zeros((), dtype=torch.float64, device=runtime.device)
    cka = LinearCKA()
    for images, _ in batches:
        images = runtime.inputs(images)
        with runtime.autocast():
            t_features, t_logits = teacher.forward_features(images)
            s_features, s_logits = student.forward_features(images)
        kl_sum += F.kl_div(
            F.log_softmax(s_logits.float(), 1), F.log_softmax(t_logits.float(), 1), log_target=True, reduction="sum"
        ).double()
        cka.update(t_features[-1].float().mean(dim=(2, 3)), s_features[-1].float().mean(dim=(2, 3)))
    teacher.train(modes[0])
    student.train(modes[1])
    return Similarity(kl=(kl_sum / cka.n).item(), cka=cka.value())


def evaluate_run(run: str | Path, teacher: str | Path | None = None, device: str = "auto") -> dict[str, Any]:
    """Score a run's last and best checkpoints; with ``teacher``, also its similarity to that teacher.

    Everything needed is in the checkpoints (the spec included), so the run folder alone
    suffices. Similarity compares the final (last.pt) networks, as the paper does.
    """
    from splicer.data import build_data
    from splicer.spec import spec_from_dict
    from splicer.training.checkpoint import load_checkpoint, network_from_checkpoint, resolve_checkpoint
    from splicer.training.distributed import Distributed
    from splicer.training.engine import Runtime

    runtime = Runtime.create(device, Distributed.from_env())
    last_path = resolve_checkpoint(run, "last")
    last = load_checkpoint(last_path)
    if teacher is not None:  # checked before any data is built or network scored
        from splicer.training.checkpoint_checks import check_same_task

        teacher_path = resolve_checkpoint(teacher, "last")
        teacher_state = load_checkpoint(teacher_path)
        check_same_task(teacher_state, teacher_path, last, last_path)
    spec = spec_from_dict(last["spec"], source=f"{last_path} (spec)")
    data = build_data(
        spec.data, spec.input_size, spec.num_classes, spec.train.batch_size, runtime.device, spec.train.seed
    )
    result: dict[str, Any] = {
        "run": str(last_path.parent),
        "kind": last["kind"],
        "meta": last["meta"],
        "eval_split": data.eval_name,
    }
    checkpoints = {"last": (last_path, last)}
    best_path = last_path.with_name("best.pt")
    if Path(run).is_dir() and best_path.is_file():
        checkpoints["best"] = (best_path, load_checkpoint(best_path))
    networks = {}
    for which, (path, state) in checkpoints.items():
        networks[which] = runtime.place(network_from_checkpoint(state, path))
        top1, top5 = accuracy(networks[which], data.eval, runtime)
        result[which] = {"top1": top1, "top5": top5, "epoch": state["epoch"]}
    if teacher is not None:
        teacher_net = runtime.place(network_from_checkpoint(teacher_state, teacher_path))
        score = similarity(teacher_net, networks["last"], data.eval, runtime)
        result["similarity"] = {"teacher": str(teacher_path), "kl": score.kl, "cka": score.cka}
    return result
