"""How fast the input pipeline alone delivers training batches, to compare with a model's img/s."""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from splicer.data.bundle import Batches, DataBundle


def measure_pipeline_throughput(bundle: DataBundle, batches: int = 50, warmup: int = 2) -> float:
    """Training images per second through loading, augmentation, normalisation and transfer.

    The first ``warmup`` batches (worker start-up, first-touch allocation) are not timed. The
    training stream's epoch counter is restored afterwards, so measuring leaves training unchanged.
    """
    start_epoch = bundle.train.epoch
    stream = _endless(bundle.train)
    try:
        for _ in range(warmup):
            next(stream)
        _synchronize(bundle.device)
        images = 0
        started = time.perf_counter()
        for _ in range(batches):
            _, labels = next(stream)
            images += len(labels)
        _synchronize(bundle.device)
        elapsed = time.perf_counter() - started
    finally:
        stream.close()
        bundle.train.set_epoch(start_epoch)
    return images / elapsed


def _endless(batches: Batches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from batches


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
