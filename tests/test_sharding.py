"""Data sharding by rank and the Distributed class's refusals, in one process (no process group)."""

from __future__ import annotations

import pytest
import torch

from splicer.cli.launch import hand_over, torchrun_command
from splicer.data.augment import Normalize
from splicer.data.large import LoaderBatches
from splicer.data.memory import ImageSet, MemoryBatches
from splicer.errors import SplicerError
from splicer.training.distributed import Distributed

CPU = torch.device("cpu")
IDENTITY = Normalize((0.0,), (1.0 / 255,), CPU)  # uint8 value v -> float v


def numbered(count: int) -> ImageSet:
    """Image i is filled with the value i (mod 256) and labelled i, so batches tell which images they hold."""
    images = (torch.arange(count) % 256).to(torch.uint8).view(count, 1, 1, 1).expand(count, 1, 4, 4).clone()
    return ImageSet(images, torch.arange(count), [str(i) for i in range(count)])


def memory_stream(count: int, batch: int, train: bool, rank: int = 0, world: int = 1) -> MemoryBatches:
    stream = MemoryBatches(numbered(count), batch, IDENTITY, train=train, seed=3, pad=None)
    stream.shard(rank, world)
    return stream


def test_memory_training_ranks_take_slices_of_the_same_global_batch():
    whole = [labels for _, labels in memory_stream(70, 12, True)]
    for world in (2, 3):
        shards = [[labels for _, labels in memory_stream(70, 12, True, rank, world)] for rank in range(world)]
        assert all(len(s) == len(whole) for s in shards)
        for step, labels in enumerate(whole):
            assert torch.equal(torch.cat([shard[step] for shard in shards]), labels)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_memory_evaluation_scores_each_image_exactly_once(world: int):
    seen = []
    for rank in range(world):
        stream = memory_stream(37, 8, False, rank, world)
        labels = [labels for _, labels in stream]
        assert len(labels) == len(stream)
        seen += torch.cat(labels).tolist()
    assert sorted(seen) == list(range(37))


class Numbered(torch.utils.data.Dataset):
    def __init__(self, count: int) -> None:
        self.images = numbered(count)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images.images[index], index


def loader_stream(count: int, batch: int, train: bool, rank: int, world: int) -> LoaderBatches:
    stream = LoaderBatches(Numbered(count), batch, IDENTITY, train=train, seed=5, workers=0, device=CPU)
    stream.shard(rank, world)
    return stream


def test_loader_training_ranks_draw_disjoint_shares_reshuffled_each_epoch():
    orders = []
    for epoch in (0, 1):
        parts = []
        for rank in range(2):
            stream = loader_stream(50, 10, True, rank, 2)
            stream.set_epoch(epoch)
            batches = [labels for _, labels in stream]
            assert len(batches) == len(stream) and all(len(b) == 5 for b in batches)
            parts.append(torch.cat(batches).tolist())
        assert not set(parts[0]) & set(parts[1])
        orders.append(parts[0])
    assert orders[0] != orders[1]


def test_loader_evaluation_scores_each_image_exactly_once():
    seen = []
    for rank in range(3):
        stream = loader_stream(37, 8, False, rank, 3)
        batches = [labels for _, labels in stream]
        assert len(batches) == len(stream)
        seen += torch.cat(batches).tolist()
    assert sorted(seen) == list(range(37))


def test_sync_batch_norm_is_refused_on_the_cpu_with_the_reason():
    with pytest.raises(SplicerError, match="train.sync_bn.*CUDA"):
        Distributed(0, 2, 0).sync_batch_norm(torch.nn.BatchNorm2d(3), CPU)


def test_the_global_batch_must_divide_by_the_processes():
    Distributed(0, 4, 0).check_batch_size(64)
    with pytest.raises(SplicerError, match=r"train.batch_size: 30 .* 4 processes"):
        Distributed(0, 4, 0).check_batch_size(30)


def test_environment_errors(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(SplicerError, match="RANK=2 does not fit WORLD_SIZE=2"):
        Distributed.from_env()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(SplicerError, match="torchrun"):
        Distributed.from_env().start(CPU)
    with pytest.raises(SplicerError, match="already runs under torchrun"):
        hand_over(2, "train", 16, "cpu")


def test_nproc_becomes_a_torchrun_command_without_nproc():
    command = torchrun_command(4, ["train", "spec.yaml", "--nproc", "4", "--epochs", "2", "--nproc=3"])
    assert command[1:] == [
        "-m",
        "splicer.cli.launch",  # torchrun's launcher, quiet about a process's user error
        "--standalone",
        "--nproc_per_node=4",
        "-m",
        "splicer",
        "train",
        "spec.yaml",
        "--epochs",
        "2",
    ]


def test_one_process_is_its_own_global_batch():
    rows = torch.arange(6).view(3, 2)
    assert Distributed().gather_batch(rows, groups=3) is rows
    assert Distributed().own_rows(3) == slice(0, 3)
    assert Distributed(rank=1, world_size=2).own_rows(3) == slice(3, 6)
