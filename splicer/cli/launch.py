"""``--nproc N``: hand the same command over to torchrun's launcher, N processes on this machine.

``splicer train SPEC --nproc 2`` becomes ``python -m torch.distributed.run --standalone
--nproc_per_node 2 -m splicer train SPEC``; torchrun starts the processes, sets their
RANK/WORLD_SIZE/LOCAL_RANK and stops them all when one fails. For several machines, run
torchrun yourself (see the README).
"""

from __future__ import annotations

import os
import sys

from splicer.errors import SplicerError


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """The torchrun command line for ``argv`` (the splicer arguments) without its ``--nproc`` option."""
    rest: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "splicer",
        *rest,
    ]


def hand_over(nproc: int, command: str) -> None:
    """Replace this process with torchrun running this very command in ``nproc`` processes."""
    if nproc < 1:
        raise SplicerError(f"--nproc {nproc}: give the number of processes to start, 1 or more")
    if "WORLD_SIZE" in os.environ:
        raise SplicerError("--nproc starts torchrun, but this process already runs under torchrun; drop --nproc")
    argv = sys.argv[1:]
    if command not in argv:
        raise SplicerError(f"--nproc: could not find the `{command}` command in {argv}; run torchrun directly")
    os.execv(sys.executable, torchrun_command(nproc, argv))
