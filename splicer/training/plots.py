"""Training curves as PNG files (the paper's figure 5): the loss and its terms, the KL
term, and the accuracies per epoch. matplotlib is imported only here, with the Agg
backend, so that training never needs a display and imports stay fast. Short runs draw a
marker at every epoch: a line through one or two points is invisible or easy to miss."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Up to this many epochs every point gets a marker; longer runs read as lines.
MARKED_EPOCHS = 40


def _points(count: int) -> dict[str, Any]:
    """Line style keywords: a visible marker per point for short runs."""
    return {"marker": "o", "markersize": 4} if count <= MARKED_EPOCHS else {}


def _whole_epochs(ax: Any, epochs: list[int]) -> None:
    """Epoch ticks at whole numbers; a run of one or two epochs gets a little room either side
    (matplotlib would otherwise tick 0.96, 0.98, ... around a single point)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if epochs and max(epochs) - min(epochs) < 2:
        ax.set_xlim(min(epochs) - 1, max(epochs) + 1)


def curves_figure(records: list[dict[str, Any]], title: str, kl_term: str | None) -> Any:
    """Three panels: training loss with its terms, the KL term alone, train/eval accuracy."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in records]
    marks = _points(len(epochs))
    panels = 3 if kl_term else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8))
    loss_ax, acc_ax = axes[0], axes[-1]
    loss_ax.plot(epochs, [r["loss"] for r in records], label="total", linewidth=2, **marks)
    for term in records[0]["terms"]:
        loss_ax.plot(epochs, [r["terms"][term] for r in records], label=term, linewidth=1, **marks)
    loss_ax.set(title="training loss", xlabel="epoch")
    loss_ax.legend(fontsize="small")
    if kl_term:
        axes[1].plot(epochs, [r["terms"][kl_term] for r in records], color="tab:red", **marks)
        axes[1].set(title=f"KL term ({kl_term})", xlabel="epoch")
    scored = [r for r in records if r["train_acc"] is not None]  # a method's phase may have no class logits
    acc_ax.plot([r["epoch"] for r in scored], [r["train_acc"] for r in scored], label="train", **_points(len(scored)))
    evaluated = [r for r in records if r.get("eval_top1") is not None]
    eval_epochs, eval_marks = [r["epoch"] for r in evaluated], _points(len(evaluated))
    acc_ax.plot(eval_epochs, [r["eval_top1"] for r in evaluated], label="eval top-1", **eval_marks)
    acc_ax.plot(eval_epochs, [r["eval_top5"] for r in evaluated], label="eval top-5", linestyle="--", **eval_marks)
    acc_ax.set(title="accuracy (%)", xlabel="epoch")
    acc_ax.legend(fontsize="small")
    for ax in axes:
        ax.grid(alpha=0.3)
        _whole_epochs(ax, epochs)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(records: list[dict[str, Any]], path: Path, title: str, kl_term: str | None) -> None:
    """Write :func:`curves_figure` as a PNG (nothing when there are no records)."""
    if not records:
        return
    plt = _pyplot()
    fig = curves_figure(records, title, kl_term)
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
            kl_ax.plot(epochs, [r["terms"][kl_term] for r in records], label=kind, **_points(len(epochs)))
            evaluated = [r for r in records if r.get("eval_top1") is not None]
            acc_ax.plot(
                [r["epoch"] for r in evaluated], [r["eval_top1"] for r in evaluated], label=kind,
                **_points(len(evaluated)),
            )
        kl_ax.set(title=f"{method}: KL term ({kl_term})", xlabel="epoch")
        acc_ax.set(title=f"{method}: student eval top-1 (%)", xlabel="epoch")
        every_epoch = [r["epoch"] for records in by_teacher.values() for r in records]
        for ax in (kl_ax, acc_ax):
            ax.grid(alpha=0.3)
            _whole_epochs(ax, every_epoch)
            ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
