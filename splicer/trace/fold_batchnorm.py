"""Fold eval-mode BatchNorm into the convolution before it, in a block's fx graph.

A frozen teacher normalises with fixed statistics, so ``bn(conv(x))`` is one convolution
with scaled weights and a shifted bias: ``W' = W * s``, ``b' = (b - mean) * s + beta`` with
``s = gamma / sqrt(var + eps)``. Folding saves the BatchNorm's pass over every activation.

:func:`fold_batchnorm` edits a GraphModule in place (fold a copy of a network whose original
must stay intact). A Conv1d/Conv2d node is folded with the BatchNorm that is its only user
when that BatchNorm is a plain ``nn.BatchNorm1d``/``nn.BatchNorm2d`` in eval mode with
running statistics, or timm's ``BatchNormAct2d`` (whose dropout and activation stay, as one
module at the norm's path); every other BatchNorm is left as it is, with the reason.
A removed node's value is then held by the convolution's node: :func:`retarget_tap` moves a
pre-activation tap onto it, so a tap keeps reading the same value.
"""

from __future__ import annotations

import sys
from collections.abc import Collection
from dataclasses import dataclass, field, replace

import torch
from torch import fx, nn

from splicer.trace.preactivation import PreActivationTap

_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d)
_PLAIN_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class Folding:
    """What :func:`fold_batchnorm` did to one graph.

    ``folded``: (convolution, norm) module paths folded into one convolution; ``left``: each
    BatchNorm left in the graph, with why; ``renamed``: a removed node's name -> the name of
    the node that now holds its value.
    """

    folded: list[tuple[str, str]] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)


def fold_batchnorm(graph_module: fx.GraphModule, shared: Collection[nn.Module] = ()) -> Folding:
    """Fold every foldable (convolution, BatchNorm) pair of ``graph_module`` in place; returns what was done.

    ``shared`` are modules that some other graph also calls (their weights cannot change for
    this graph alone); a module this graph calls more than once is left alone for the same reason.
    """
    folding = Folding()
    calls: dict[str, int] = {}
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    shared_ids = {id(module) for module in shared}
    for node in list(graph_module.graph.nodes):
        if node.op != "call_module":
            continue
        norm = graph_module.get_submodule(str(node.target))
        if not isinstance(norm, nn.modules.batchnorm._BatchNorm):
            continue
        reason = _why_not(graph_module, node, norm, calls, shared_ids)
        if reason is not None:
            folding.left.append(f"{node.target} ({type(norm).__name__}): {reason}")
            continue
        conv_node = node.args[0]
        conv = graph_module.get_submodule(str(conv_node.target))
        _fold_into(conv, norm)
        rest = _after_norm(norm)
        if rest is None:
            node.replace_all_uses_with(conv_node)
            graph_module.graph.erase_node(node)
            graph_module.delete_submodule(str(node.target))
            folding.renamed[node.name] = conv_node.name
        else:  # timm's BatchNormAct2d: its dropout and activation stay, at the norm's path
            graph_module.set_submodule(str(node.target), rest)
        folding.folded.append((str(conv_node.target), str(node.target)))
    if folding.folded:
        graph_module.graph.lint()
        graph_module.recompile()
    return folding


def retarget_tap(tap: PreActivationTap, folding: Folding) -> PreActivationTap:
    """``tap`` reading the nodes that hold its values after ``folding``; its BatchNorm is gone if it was folded,
    so read norm statistics (OH's margins) before folding."""
    folded_norms = {norm for _, norm in folding.folded}
    return replace(
        tap,
        activation=folding.renamed.get(tap.activation, tap.activation) if tap.activation else None,
        pre_activation=folding.renamed.get(tap.pre_activation, tap.pre_activation) if tap.pre_activation else None,
        norm=None if tap.norm in folded_norms else tap.norm,
    )


def _why_not(
    graph_module: fx.GraphModule, node: fx.Node, norm: nn.Module, calls: dict[str, int], shared_ids: set[int]
) -> str | None:
    """Why this BatchNorm node cannot be folded into the node before it; None when it can."""
    if type(norm) not in (*_PLAIN_NORMS, *_timm_norm_acts()):
        return "not a plain BatchNorm1d/2d (its forward may do more than normalise)"
    if norm.training:
        return "in training mode (it normalises with batch statistics)"
    if norm.running_mean is None or norm.running_var is None:
        return "no running statistics (it normalises with batch statistics)"
    source = node.args[0] if node.args else None
    if len(node.args) != 1 or node.kwargs or not isinstance(source, fx.Node) or source.op != "call_module":
        return "its input is not a convolution module"
    conv = graph_module.get_submodule(str(source.target))
    if type(conv) not in _CONVOLUTIONS:
        return f"its input is a {type(conv).__name__}, not a Conv1d/Conv2d"
    if len(source.users) != 1:
        return "its convolution's output is also read elsewhere"
    if calls[str(node.target)] > 1 or calls[str(source.target)] > 1 or {id(norm), id(conv)} & shared_ids:
        return "the norm or its convolution is called more than once"
    if conv.out_channels != norm.num_features:
        return f"{conv.out_channels} convolution channels but {norm.num_features} norm features"
    return None


def _fold_into(conv: nn.Module, norm: nn.Module) -> None:
    """Scale ``conv``'s weights and shift its bias so that it computes ``norm(conv(x))``; in float64, then back."""
    weight = conv.weight.detach()
    scale = torch.rsqrt(norm.running_var.double() + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.detach().double()
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(scale)
    bias = (bias - norm.running_mean.double()) * scale
    if norm.bias is not None:
        bias = bias + norm.bias.detach().double()
    shape = (-1,) + (1,) * (weight.dim() - 1)
    conv.weight = nn.Parameter((weight.double() * scale.view(shape)).to(weight.dtype), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(weight.dtype), requires_grad=False)


def _after_norm(norm: nn.Module) -> nn.Module | None:
    """What runs after the normalisation inside the norm module: None for a plain BatchNorm, else
    timm's dropout and activation (the dropout only where it is not an Identity)."""
    if type(norm) in _PLAIN_NORMS:
        return None
    if isinstance(norm.drop, nn.Identity):
        return norm.act
    return nn.Sequential(norm.drop, norm.act)


def _timm_norm_acts() -> tuple[type[nn.Module], ...]:
    """timm's BatchNormAct2d, when timm is loaded (a model can only hold one then)."""
    if "timm" not in sys.modules:
        return ()
    from timm.layers import BatchNormAct2d

    return (BatchNormAct2d,)
