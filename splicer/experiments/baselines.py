"""The baselines' rows of ``splicer run`` (paper table 4): each baseline's student next to
KD from the standard teacher and from the SFTN, with its gain over the student alone.

Baseline runs live in the experiment's seed folders (``seed0/dml``, ...); finished ones are
reused, interrupted ones resumed with ``--resume``. RCO follows the anchors of the seed's
standard teacher, which ``splicer run`` saves when RCO is among the methods.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from splicer.experiments.experiment import seed_stats
from splicer.spec import Spec
from splicer.training.distributed import Distributed
from splicer.training.online import TITLES, train_baseline
from splicer.training.runs import RunDir


def _final(run: str | Path) -> float:
    return json.loads(RunDir(Path(run)).summary.read_text())["final"]["top1"]


def add_baselines(
    report: dict[str, Any], spec: Spec, baselines: list[str], resume: bool = False, quiet: bool = False
) -> dict[str, Any]:
    """Train (or reuse) each baseline per seed of an experiment report; add table 4 to report.json and report.md."""
    seeds = report["seeds"]
    finals: dict[str, list[float]] = {name: [] for name in baselines}
    runs: dict[str, dict[str, str]] = {}
    for seed in seeds:
        seed_runs = report["runs"][str(seed)]
        folder = Path(seed_runs["standard"]).parent
        seeded = spec.model_copy(update={"train": spec.train.model_copy(update={"seed": seed})})
        for name in baselines:
            run = RunDir(folder / name)
            summary = json.loads(run.summary.read_text()) if run.summary.is_file() else None
            if summary is None or summary["epochs"] < spec.train.epochs:
                summary = train_baseline(
                    name, seeded, run.path, resume and run.last.is_file(), quiet, teacher=Path(seed_runs["standard"])
                )
            finals[name].append(summary["final"]["top1"])
            runs.setdefault(str(seed), {})[name] = str(run.path)
    alone = seed_stats([_final(report["runs"][str(s)]["student"]) for s in seeds])
    rows: dict[str, Any] = {}
    kd = "kd" if "kd" in report.get("methods", {}) else None
    if kd:
        rows["Standard"] = seed_stats([_final(report["runs"][str(s)]["kd-from-standard"]) for s in seeds])
    rows.update({TITLES[name]: seed_stats(finals[name]) for name in baselines})
    if kd:
        rows["SFTN"] = seed_stats([_final(report["runs"][str(s)]["kd-from-sftn"]) for s in seeds])
    table = {
        "student_alone": alone,
        "rows": {title: {**stats, "delta": stats["mean"] - alone["mean"]} for title, stats in rows.items()},
        "runs": runs,
        "note": "Standard and SFTN: KD from the pretrained teacher; delta: gain over the student without KD.",
    }
    report["baselines"] = table
    folder = Path(report["folder"])
    if Distributed.from_env().is_main:
        (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        with open(folder / "report.md", "a") as handle:
            handle.write(render_markdown(table))
    return report


def render_markdown(table: dict[str, Any]) -> str:
    """Table 4's layout: the student per training method and its gain over the student alone."""

    def cell(stats: dict[str, Any]) -> str:
        return f"{stats['mean']:.2f} ± {stats['std']:.2f}" if len(stats["values"]) > 1 else f"{stats['mean']:.2f}"

    lines = [
        "",
        "## Online and curriculum baselines (table 4)",
        "",
        f"Student accuracy w/o KD: {cell(table['student_alone'])}. {table['note']}",
        "",
        "| Method | Student | Δ |",
        "|:--|--:|--:|",
    ]
    lines += [f"| {title} | {cell(row)} | {row['delta']:+.2f} |" for title, row in table["rows"].items()]
    for seed, runs in table["runs"].items():
        lines.append(f"\n- seed {seed}: " + ", ".join(f"{k} `{v}`" for k, v in runs.items()))
    return "\n".join(lines) + "\n"
