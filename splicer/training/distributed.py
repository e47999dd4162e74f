"""Rank and world size, read in one place.

Everything that prints or writes files asks :class:`Distributed` whether it runs on the
main process; adding torchrun/DDP later means extending this class (process group, model
wrapping, all-reduced metrics), not hunting for prints and saves across the trainers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from splicer.errors import SplicerError


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
            raise SplicerError("RANK, WORLD_SIZE and LOCAL_RANK must be integers when set") from None
        if dist.world_size > 1:
            # Without a process group every rank would train its own copy: refuse rather than waste GPUs.
            raise SplicerError(
                f"WORLD_SIZE={dist.world_size}: multi-process (torchrun/DDP) training is not supported yet; "
                "run a single process"
            )
        return dist

    @property
    def is_main(self) -> bool:
        """Only the main process prints, logs metrics and writes checkpoints."""
        return self.rank == 0
