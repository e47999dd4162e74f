"""Training curves as PNG files (the paper's figure 5): the loss and its terms, the KL
term, and the accuracies per epoch. matplotlib is imported only here, with the Agg
backend, so that training never needs a display and imports stay fast."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(records: list[dict[str, Any]], path: Path, title: str, kl_term: str | None) -> None:
    """Three panels: training loss with its terms, the KL term alone, train/eval accuracy."""
    if not records:
        return
    plt = _pyplot()
    epochs = [r["epoch"] for r in records]
    panels = 3 if kl_term else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8))
    loss_ax, acc_ax = axes[0], axes[-1]
    loss_ax.plot(epochs, [r["loss"] for r in records], label="total", linewidth=2)
    for term in records[0]["terms"]:
        loss_ax.plot(epochs, [r["terms"][term] for r in records], label=term, linewidth=1)
    loss_ax.set(title="training loss", xlabel="epoch")
    loss_ax.legend(fontsize="small")
    if kl_term:
        axes[1].plot(epochs, [r["terms"][kl_term] for r in records], color="tab:red")
        axes[1].set(title=f"KL term ({kl_term})", xlabel="epoch")
    scored = [r for r in records if r["train_acc"] is not None]  # a method's phase may have no class logits
    acc_ax.plot([r["epoch"] for r in scored], [r["train_acc"] for r in scored], label="train")
    evaluated = [r for r in records if r.get("eval_top1") is not None]
    acc_ax.plot([r["epoch"] for r in evaluated], [r["eval_top1"] for r in evaluated], label="eval top-1", marker=".")
    acc_ax.plot(
        [r["epoch"] for r in evaluated], [r["eval_top5"] for r in evaluated], label="eval top-5", linestyle="--"
    )
    acc_ax.set(title="accuracy (%)", xlabel="epoch")
    acc_ax.legend(fontsize="small")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_comparison(
    curves: dict[str, dict[str, list[dict[str, Any]]]], path: Path, title: str, kl_term: str = "kd"
) -> None:
    """Figure 5: per method, the students' KL (KD) term and eval top-1 from the standard vs the SFTN teacher.

    ``curves[method][teacher_kind]`` holds the metric records of one distillation run.
    """
    if not curves:
        return
    plt = _pyplot()
    fig, axes = plt.subplots(2, len(curves), figsize=(4.5 * len(curves), 7), squeeze=False)
    for column, (method, by_teacher) in enumerate(curves.items()):
        kl_ax, acc_ax = axes[0][column], axes[1][column]
        for kind, records in by_teacher.items():
            epochs = [r["epoch"] for r in records]
            kl_ax.plot(epochs, [r["terms"][kl_term] for r in records], label=kind)
            evaluated = [r for r in records if r.get("eval_top1") is not None]
            acc_ax.plot([r["epoch"] for r in evaluated], [r["eval_top1"] for r in evaluated], label=kind)
        kl_ax.set(title=f"{method}: KL term ({kl_term})", xlabel="epoch")
        acc_ax.set(title=f"{method}: student eval top-1 (%)", xlabel="epoch")
        for ax in (kl_ax, acc_ax):
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
