"""``--nproc N``: hand the same command over to torchrun's launcher, N processes on this machine.

``splicer train SPEC --nproc 2`` becomes ``python -m splicer.cli.launch --standalone
--nproc_per_node 2 -m splicer train SPEC``: torchrun's launcher, run so that a user error in
the processes (exit status 2, its message printed once by rank 0) ends the launch with status 2
and without the launcher's ``ChildFailedError`` traceback. torchrun starts the processes, sets
their RANK/WORLD_SIZE/LOCAL_RANK and stops them all when one fails. For several machines, run
torchrun yourself (see the README).
"""

from __future__ import annotations

import os
import sys

from splicer.errors import SplicerError

USER_ERROR = 2
"""The exit status of a process that stopped on a user error (SplicerError)."""


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """The launcher's command line for ``argv`` (the splicer arguments) without its ``--nproc`` option."""
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
        "splicer.cli.launch",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "splicer",
        *rest,
    ]


def available_slots(device: str) -> tuple[int, str]:
    """How many processes this machine can run for ``device`` (auto, cpu, cuda): GPUs, or CPU cores."""
    import torch

    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return torch.cuda.device_count(), "CUDA device(s)"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores, "CPU core(s)"


def check_nproc(nproc: int, batch_size: int, device: str) -> None:
    """Refuse a process count that cannot work before any process starts: at least 1, at most one per
    GPU (or CPU core), and a divisor of the global batch."""
    slots, what = available_slots(device)
    if nproc < 1 or nproc > max(slots, 1):
        raise SplicerError(
            f"--nproc {nproc}: this machine has {slots} {what} for train.device {device}; use 1 to {max(slots, 1)}"
        )
    if batch_size % nproc:
        fits = [n for n in range(1, max(slots, 1) + 1) if batch_size % n == 0]
        raise SplicerError(
            f"--nproc {nproc}: train.batch_size {batch_size} is the global batch and must divide by the number of "
            f"processes; use --nproc {', '.join(map(str, fits))}, or a --batch-size that is a multiple of {nproc}"
        )


def hand_over(nproc: int, command: str, batch_size: int, device: str) -> None:
    """Replace this process with torchrun running this very command in ``nproc`` processes."""
    if "WORLD_SIZE" in os.environ:
        raise SplicerError("--nproc starts torchrun, but this process already runs under torchrun; drop --nproc")
    check_nproc(nproc, batch_size, device)
    argv = sys.argv[1:]
    if command not in argv:
        raise SplicerError(f"--nproc: could not find the `{command}` command in {argv}; run torchrun directly")
    os.execv(sys.executable, torchrun_command(nproc, argv))


def launch(args: list[str]) -> int:
    """torchrun's launcher on ``args``; a process's user error becomes exit status 2 without a launcher traceback
    (the process has printed its message). Any other failure keeps torchrun's report: it is a bug."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(_UserErrorNote())
    try:
        run(parse_args(args))
    except ChildFailedError as exc:
        _, failure = exc.get_first_failure()
        if failure.exitcode != USER_ERROR:
            raise
        logging.disable(logging.CRITICAL)  # the launcher's shutdown notes would bury the message above
        return USER_ERROR
    return 0


class _UserErrorNote:
    """Drops the launcher's "failed (exitcode: 2)" line: that process has printed its own message."""

    def filter(self, record: object) -> bool:
        return f"(exitcode: {USER_ERROR})" not in record.getMessage()  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(launch(sys.argv[1:]))
