"""Transfer by linear probe (paper table 7): how useful a trained network's features are on
another data set.

The network is frozen (eval mode, no gradients); its last block's output, global-average
pooled, is extracted once for the probe data's training and evaluation images (without
augmentation), standardised with the training statistics, and a linear classifier is fitted
on it with L-BFGS (cross-entropy plus a small L2 penalty; deterministic, no learning rate to
tune). The score is the classifier's top-1 on the probe data's eval split.

The probe data is a YAML file (``splicer probe RUN --data FILE``)::

    num_classes: 10
    data: {dataset: imagefolder, root: /data/stl10, resize: 32}   # any spec data: section
    input_size: [3, 32, 32]     # optional; default: the network's own
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor

from splicer.errors import SplicerError, did_you_mean
from splicer.spec import DataSpec
from splicer.spec.loader import load_yaml_mapping


class ProbeData(BaseModel):
    """The data set a probe fits and scores its linear classifier on."""

    model_config = ConfigDict(extra="forbid")

    num_classes: int = Field(ge=2, description="Classes of the probe data set.")
    data: DataSpec = Field(description="Any spec data: section (synthetic, cifar10/100, imagefolder).")
    input_size: tuple[int, int, int] | None = Field(None, description="C, H, W; default: the network's.")
    batch_size: int = Field(256, ge=1, description="Images per batch while extracting features.")
    steps: int = Field(100, ge=1, description="L-BFGS iterations of the linear classifier.")
    l2: float = Field(1e-4, ge=0, description="L2 penalty on the classifier weights.")
    seed: int = 0


def load_probe_data(path: str | Path) -> ProbeData:
    """Read and validate a probe data file; errors name the file, the field and the valid fields."""
    path = Path(path)
    raw = load_yaml_mapping(path, "a probe data file (YAML text)", "num_classes:, data:")
    try:
        return ProbeData.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "(top level)"
            if err["type"] == "extra_forbidden":
                owner = DataSpec if field.startswith("data.") else ProbeData
                valid = sorted(owner.model_fields)
                hint = did_you_mean(str(err["loc"][-1]), valid) or "."
                problems.append(f"{path}: {field}: unknown field{hint} Valid fields here: {', '.join(valid)}")
            else:
                problems.append(f"{path}: {field}: {err['msg']} (got {err.get('input')!r})")
        raise SplicerError("\n".join(dict.fromkeys(problems))) from None


def check_probe_input(probe: ProbeData, input_size: tuple[int, ...], network: str) -> None:
    """The probe images must have as many channels as ``network`` takes (its spec's ``input_size``)."""
    if probe.input_size is not None and probe.input_size[0] != input_size[0]:
        raise SplicerError(
            f"probe data input_size {list(probe.input_size)}: {probe.input_size[0]} channel(s), but {network} expects "
            f"{input_size[0]} (input_size {list(input_size)}); give the probe data {input_size[0]} channels, "
            "or leave its input_size out to use the network's"
        )


@torch.no_grad()
def pooled_features(network: Any, batches: Any, runtime: Any) -> tuple[Tensor, Tensor]:
    """The last block's output, global-average pooled, for every image of ``batches``; and the labels."""
    network.eval()
    features, labels = [], []
    for images, targets in batches:
        with runtime.autocast():
            blocks, _ = network.forward_features(runtime.inputs(images))
        last = blocks[-1].float()
        features.append(last.mean(dim=(2, 3)) if last.dim() == 4 else last.flatten(1))
        labels.append(targets)
    return torch.cat(features), torch.cat(labels)


def fit_linear(features: Tensor, labels: Tensor, num_classes: int, steps: int, l2: float) -> torch.nn.Linear:
    """A linear classifier on (already standardised) features, fitted by L-BFGS."""
    classifier = torch.nn.Linear(features.shape[1], num_classes).to(features.device)
    torch.nn.init.zeros_(classifier.weight)
    torch.nn.init.zeros_(classifier.bias)
    optimizer = torch.optim.LBFGS(classifier.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(classifier(features), labels) + l2 * classifier.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return classifier


def linear_probe(run: str | Path, probe: ProbeData, device: str = "auto") -> dict[str, Any]:
    """Freeze the network of ``run`` (a run folder or checkpoint) and score a linear probe of it on ``probe``."""
    from splicer.data import build_data
    from splicer.spec import spec_from_dict
    from splicer.training.checkpoint import load_checkpoint, network_from_checkpoint, resolve_checkpoint
    from splicer.training.distributed import Distributed
    from splicer.training.engine import Runtime, seed_everything

    path = resolve_checkpoint(run, "last")
    checkpoint = load_checkpoint(path)
    spec = spec_from_dict(checkpoint["spec"], source=f"{path} (spec)")
    check_probe_input(probe, spec.input_size, f"the network of {path}")
    runtime = Runtime.create(device, Distributed.from_env())
    network = runtime.place(network_from_checkpoint(checkpoint, path, spec))
    network.requires_grad_(False)
    input_size = probe.input_size or spec.input_size
    data_spec = probe.data.model_copy(update={"augment": False})
    data = build_data(data_spec, input_size, probe.num_classes, probe.batch_size, runtime.device, probe.seed)
    train_x, train_y = pooled_features(network, data.train, runtime)
    eval_x, eval_y = pooled_features(network, data.eval, runtime)
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, eval_x = (train_x - mean) / std, (eval_x - mean) / std
    seed_everything(probe.seed)
    classifier = fit_linear(train_x, train_y, probe.num_classes, probe.steps, probe.l2)
    with torch.no_grad():
        train_top1 = (classifier(train_x).argmax(1) == train_y).float().mean().item() * 100
        top1 = (classifier(eval_x).argmax(1) == eval_y).float().mean().item() * 100
    return {
        "run": str(path.parent if Path(run).is_dir() else path),
        "kind": checkpoint["kind"],
        "method": checkpoint.get("meta", {}).get("method"),
        "network": spec.student.model if checkpoint["kind"] not in ("sftn", "standard") else spec.teacher.model,
        "dataset": probe.data.dataset,
        "num_classes": probe.num_classes,
        "feature_dim": int(train_x.shape[1]),
        "num_train": int(len(train_y)),
        "num_eval": int(len(eval_y)),
        "eval_split": data.eval_name,
        "train_top1": train_top1,
        "top1": top1,
    }


def add_transfer(report: dict[str, Any], probe: ProbeData, data_file: str, device: str = "auto") -> dict[str, Any]:
    """Probe every network of an experiment report (table 7); add the section to report.json and report.md."""
    import json
    import statistics

    from splicer.training.distributed import Distributed

    seeds = [str(seed) for seed in report["seeds"]]
    keys = list(report["runs"][seeds[0]])
    scores = {key: [linear_probe(report["runs"][seed][key], probe, device)["top1"] for seed in seeds] for key in keys}
    rows = {
        key: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "values": v}
        for key, v in scores.items()
    }
    report["transfer"] = {
        "data": data_file,
        "dataset": probe.data.dataset,
        "num_classes": probe.num_classes,
        "rows": rows,
    }
    folder = Path(report["folder"])
    if Distributed.from_env().is_main:
        (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        with open(folder / "report.md", "a") as handle:
            handle.write(render_transfer(report["transfer"]))
    return report


def render_transfer(transfer: dict[str, Any]) -> str:
    """Table 7's layout: linear-probe top-1 of the networks from the standard teacher and from the SFTN."""

    def cell(stats: dict[str, Any] | None) -> str:
        if stats is None:
            return ""
        return f"{stats['mean']:.2f} ± {stats['std']:.2f}" if len(stats["values"]) > 1 else f"{stats['mean']:.2f}"

    rows = transfer["rows"]
    lines = [
        "",
        f"## Transfer by linear probe (table 7): {transfer['data']}",
        "",
        f"Frozen networks, a linear classifier on their pooled last-block features, top-1 (%) on the "
        f"{transfer['dataset']} eval split ({transfer['num_classes']} classes).",
        "",
        "| Teacher training method | Standard | SFTN | Δ |",
        "|:--|--:|--:|--:|",
        f"| Teacher | {cell(rows.get('standard'))} | {cell(rows.get('sftn'))} | {_delta(rows, 'standard', 'sftn')} |",
    ]
    if "student" in rows:
        lines.append(f"| Student w/o KD | {cell(rows['student'])} | | |")
    methods = [key.removesuffix("-from-standard") for key in rows if key.endswith("-from-standard")]
    for method in methods:
        standard, sftn = f"{method}-from-standard", f"{method}-from-sftn"
        lines.append(
            f"| {method.upper()} | {cell(rows.get(standard))} | {cell(rows.get(sftn))} | {_delta(rows, standard, sftn)} |"
        )
    return "\n".join(lines) + "\n"


def _delta(rows: dict[str, Any], standard: str, sftn: str) -> str:
    """SFTN minus standard, when both were probed."""
    if standard not in rows or sftn not in rows:
        return ""
    return f"{rows[sftn]['mean'] - rows[standard]['mean']:+.2f}"
