"""Everything that knows about ranks and processes, in one class.

Training runs as one process, or as N processes started by ``torchrun`` (one per GPU, or
per CPU slot), on one machine or many. :class:`Distributed` reads torchrun's environment,
starts the process group (NCCL on CUDA, Gloo on CPU) with a bounded timeout, wraps the
trained modules in DistributedDataParallel (optionally with SyncBatchNorm), shards the data
streams by rank, all-reduces metrics and gathers the global batch for losses that span it.
Trainers ask it whether they run on the main process before they print or write files. With
one process every method is a no-op.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

from splicer.errors import SplicerError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from splicer.data import DataBundle

T = TypeVar("T")

TIMEOUT_ENV = "SPLICER_DIST_TIMEOUT"
"""Seconds a collective may wait for the other ranks before the job fails (default 600)."""


class RankError(SplicerError):
    """A user error that concerns one process (its GPU, its environment), which the other ranks may not meet."""


@dataclass(frozen=True)
class Distributed:
    """Where this process stands among the processes of one training job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Distributed:
        """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK (a single process when they are unset)."""
        try:
            dist = cls(
                rank=int(os.environ.get("RANK", "0")),
                world_size=int(os.environ.get("WORLD_SIZE", "1")),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            )
        except ValueError:
            raise RankError("RANK, WORLD_SIZE and LOCAL_RANK must be integers when set") from None
        if dist.world_size < 1 or not 0 <= dist.rank < dist.world_size:
            raise RankError(f"RANK={dist.rank} does not fit WORLD_SIZE={dist.world_size}")
        return dist

    @classmethod
    def prints(cls, error: SplicerError) -> bool:
        """Whether this process prints a user error. Under torchrun every rank checks the same plan and
        meets the same mistake, so the first process of each machine (local rank 0) alone says it: once
        on one machine, and still once per machine for what differs between machines (a missing data
        folder). A :class:`RankError` is said by each process that meets it."""
        if isinstance(error, RankError):
            return True
        try:
            return cls.from_env().local_rank == 0
        except SplicerError:
            return True

    @property
    def is_main(self) -> bool:
        """Only the main process prints, logs metrics and writes checkpoints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process: collectives and DDP are in use."""
        return self.world_size > 1

    def device(self, cuda: bool) -> torch.device:
        """The device of this process: the GPU of its local rank, or the CPU."""
        import torch

        if not cuda:
            return torch.device("cpu")
        if self.local_rank >= torch.cuda.device_count():
            raise RankError(
                f"LOCAL_RANK={self.local_rank} but this machine has {torch.cuda.device_count()} GPU(s); "
                "start at most one process per GPU (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def start(self, device: torch.device) -> None:
        """Join the process group (once per process): NCCL for CUDA, Gloo for the CPU."""
        import torch.distributed as td

        if not self.active or td.is_initialized():
            return
        if "MASTER_ADDR" not in os.environ:
            raise RankError(
                f"WORLD_SIZE={self.world_size} but no rendezvous address (MASTER_ADDR) is set; "
                "start multi-process training with torchrun (or splicer ... --nproc N)"
            )
        try:
            seconds = float(os.environ.get(TIMEOUT_ENV, "600"))
        except ValueError:
            raise SplicerError(f"{TIMEOUT_ENV}={os.environ[TIMEOUT_ENV]!r}: expected a number of seconds") from None
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        td.init_process_group(backend, timeout=timedelta(seconds=seconds), **kwargs)
        atexit.register(_leave)

    def check_batch_size(self, batch_size: int) -> None:
        """The global batch must split evenly over the ranks so every rank steps with the same share."""
        if batch_size % self.world_size:
            raise SplicerError(
                f"train.batch_size: {batch_size} is the global batch and must divide by the {self.world_size} "
                f"processes; use a multiple of {self.world_size}, e.g. {batch_size - batch_size % self.world_size or self.world_size}"
            )

    def shard(self, data: DataBundle) -> None:
        """Give this rank its share of the training batches and its own part of the eval split."""
        if self.active:
            data.train.shard(self.rank, self.world_size)
            data.eval.shard(self.rank, self.world_size)

    def sync_batch_norm(self, module: nn.Module, device: torch.device) -> nn.Module:
        """Swap BatchNorm for SyncBatchNorm (statistics over the global batch); GPUs only."""
        if device.type != "cuda":
            raise SplicerError(
                "train.sync_bn: true needs CUDA GPUs: torch's SyncBatchNorm runs on GPU modules only. "
                "Set train.sync_bn: false on the CPU (each process then normalises with its own batch share)"
            )
        from torch import nn

        return nn.SyncBatchNorm.convert_sync_batchnorm(module) if self.active else module

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """DistributedDataParallel around ``module`` (its gradients averaged over the ranks)."""
        if not self.active or not any(p.requires_grad for p in module.parameters()):
            return module
        from torch.nn.parallel import DistributedDataParallel

        synced = rank_synced_buffer_names(module)
        if synced:  # not broadcast from rank 0 at every step: for CRD that would send its whole banks
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, synced)
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks (in place; returned for chaining)."""
        if self.active:
            import torch.distributed as td

            td.all_reduce(tensor, op=td.ReduceOp.SUM)
        return tensor

    def max(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` element-wise maximum over the ranks (in place)."""
        if self.active:
            import torch.distributed as td

            td.all_reduce(tensor, op=td.ReduceOp.MAX)
        return tensor

    def gather_batch(self, share: torch.Tensor, groups: int = 1) -> torch.Tensor:
        """The global batch from every rank's ``share`` (equal shares, as training batches are), in the
        order one process would hold it; differentiable, so a loss over the whole batch (in-batch
        negatives, batch-wide selections) is the one-process loss on every rank.

        ``groups``: the share is that many stacked blocks of its images (SSKD's rotated copies); the
        result keeps the blocks: block 0 of every rank, then block 1, and so on.
        """
        if not self.active:
            return share
        import torch
        from torch.distributed.nn.functional import all_gather

        parts = all_gather(share)  # rank order; the backward sums each rank's gradient back to its share
        return torch.cat([part.unflatten(0, (groups, -1)) for part in parts], dim=1).flatten(0, 1)

    def own_rows(self, share: int) -> slice:
        """This rank's rows in a :meth:`gather_batch` of ``share`` rows per rank (one group)."""
        return slice(self.rank * share, (self.rank + 1) * share)

    def from_main(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (e.g. a run folder named after the time it started)."""
        if not self.active:
            return value
        import torch.distributed as td

        box = [value]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Wait for every rank (e.g. until rank 0 has written a checkpoint the others will read)."""
        if self.active:
            import torch.distributed as td

            td.barrier()


def rank_synced_buffer_names(module: nn.Module) -> list[str]:
    """Qualified names of the buffers ``module``'s submodules keep equal on every rank themselves
    (their ``rank_synced_buffers``), which DDP therefore need not broadcast."""
    return [
        f"{prefix}.{name}" if prefix else name
        for prefix, sub in module.named_modules()
        for name in getattr(sub, "rank_synced_buffers", ())
    ]


def _leave() -> None:
    import torch.distributed as td

    if td.is_initialized():
        td.destroy_process_group()
