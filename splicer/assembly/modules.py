"""The modules an SFTN is made of: a network cut into blocks, a student branch, the SFTN.

These are plain ``nn.Module`` containers around the blocks that the partitioner cut; the
emitted standalone ``sftn.py`` reproduces the same attribute names, hence the same
state_dict keys.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn


class BlockNet(nn.Module):
    """A network run block by block: ``blocks`` in sequence, then ``head`` (features -> logits).

    ``clone_inputs[i]`` marks blocks that modify their input in place (an in-place ReLU
    first thing); their input is copied so that the previous block's output, which a
    branch or a distillation loss also reads, stays intact.
    """

    def __init__(self, blocks: list[nn.Module], head: nn.Module, clone_inputs: list[bool] | None = None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        self.clone_inputs = list(clone_inputs or [False] * len(blocks))

    def forward_features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """The output of every block, and the logits."""
        features = []
        for block, clone in zip(self.blocks, self.clone_inputs):
            x = block(x.clone() if clone else x)
            features.append(x)
        return features, self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        for block, clone in zip(self.blocks, self.clone_inputs):
            x = block(x.clone() if clone else x)
        return self.head(x)


class Branch(nn.Module):
    """Student branch i: transform T^i, fresh student blocks B_S^{i+1}..B_S^N, student head.

    ``clone_input`` copies the transform's output when the first block modifies its input in
    place (the transform's ReLU needs its output intact for the backward pass).
    """

    def __init__(self, transform: nn.Module, blocks: list[nn.Module], head: nn.Module, clone_input: bool = False) -> None:
        super().__init__()
        self.transform = transform
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        self.clone_input = clone_input

    def forward(self, feature: Tensor) -> Tensor:
        x = self.transform(feature)
        if self.clone_input:
            x = x.clone()
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class SFTNOutput(NamedTuple):
    """What an SFTN computes in one pass (a NamedTuple, so DDP and torch.compile handle it)."""

    teacher_logits: Tensor
    branch_logits: list[Tensor]
    teacher_features: list[Tensor]


class SFTN(nn.Module):
    """A teacher with a student branch on the output of each of its blocks but the last."""

    def __init__(self, teacher: BlockNet, branches: list[Branch]) -> None:
        super().__init__()
        if len(branches) != len(teacher.blocks) - 1:
            raise ValueError(f"{len(teacher.blocks)} teacher blocks need {len(teacher.blocks) - 1} branches")
        self.teacher = teacher
        self.branches = nn.ModuleList(branches)

    def forward(self, x: Tensor) -> SFTNOutput:
        features, logits = self.teacher.forward_features(x)
        branch_logits = [branch(feature) for branch, feature in zip(self.branches, features)]
        return SFTNOutput(logits, branch_logits, features)
