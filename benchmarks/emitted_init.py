"""Does the emitted ``sftn.py`` start from splicer's initialisation? One row per model family.

For every family of the timm coverage tables (CNN, transformer, hybrid, MLP), a few torchvision
models, the CIFAR zoo and ``python:`` models, the model is compiled as the teacher of a small
student under ``torch.manual_seed(0)`` and ``sftn.py`` is emitted. A separate process that
never imports splicer (any attempt raises) then runs ``torch.manual_seed(0); SFTN()`` and
compares every tensor of its state_dict with the built SFTN's: all finite, and equal (same
seed, same weights). The column "emitted as" says how each network was written: "layers"
(torch.nn layers whose initialisation is replayed) or "model" (created from its reference).
Results go to ``benchmarks/results/emitted_init.{md,json}``. On a shared machine the models can
be split over processes (``--shard 0/2``, ``--shard 1/2``, each with its own ``--out``) and the
shards' tables merged into one (``--merge DIR DIR``); ``--skip DIR`` leaves out the models a stopped
run already measured; ``--models`` runs only the named ones. Models are taken round-robin over the
groups, so a stopped run has some of every group. Merging a stored (merged) table with a newer run
keeps the stored rows but the re-run models', and its shards' commands.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from provenance import REPO, provenance, repo_relative  # benchmarks/ is on sys.path when run as a script
from timm.models import get_pretrained_cfg_value
from timm_coverage import GROUPS, MIN_INPUT

import splicer
from splicer.emission.source import emit_source
from splicer.spec import spec_from_dict

RESULTS = Path(__file__).resolve().parent / "results"

# Beyond timm: (group, family, model reference, input side).
OTHER_MODELS: list[tuple[str, str, str, int]] = [
    ("torchvision", "resnet", "torchvision:resnet18", 96),
    ("torchvision", "mobilenet_v3", "torchvision:mobilenet_v3_small", 96),
    ("torchvision", "efficientnet", "torchvision:efficientnet_b0", 96),
    ("torchvision", "shufflenet_v2", "torchvision:shufflenet_v2_x0_5", 96),
    ("torchvision", "convnext", "torchvision:convnext_tiny", 96),
    ("cifar", "resnet", "cifar:resnet8x4", 32),
    ("cifar", "vgg", "cifar:vgg8", 32),
    ("cifar", "wrn", "cifar:wrn_16_2", 32),
    ("cifar", "mobilenetv2", "cifar:MobileNetV2", 32),
    ("cifar", "shufflenetv1", "cifar:ShuffleV1", 32),
    ("python", "own_net (examples/)", "python:examples.own_net:make_net", 32),
    ("python", "custom_layers_net (tests/)", "python:tests.toy_nets:custom_layers_net", 16),
]

# The checking process: splicer cannot be imported there; one sftn.py folder per stdin line, one JSON line out.
_CHECKER = r'''
import importlib.abc, importlib.util, json, sys, torch

class NoSplicer(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "splicer":
            raise ImportError(f"{name} imported by the emitted source")

sys.meta_path.insert(0, NoSplicer())
torch.set_num_threads(1)
for n, line in enumerate(sys.stdin):
    folder = line.strip()
    try:
        spec = importlib.util.spec_from_file_location(f"sftn_{n}", f"{folder}/sftn.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        torch.manual_seed(0)
        state = module.SFTN().state_dict()
        built = torch.load(f"{folder}/built.pt", weights_only=True)
        floats = [k for k, v in state.items() if v.is_floating_point()]
        non_finite = [k for k in floats if not torch.isfinite(state[k]).all()]
        differ = [k for k in built if k not in state or state[k].shape != built[k].shape or not torch.equal(state[k], built[k])]
        report = {"tensors": len(state), "same_keys": list(state) == list(built), "non_finite": non_finite,
                  "differ": differ}
    except Exception as exc:
        report = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    print(json.dumps(report), flush=True)
'''


@dataclass
class Row:
    """One model as the teacher of the small student: how its emitted SFTN starts."""

    group: str
    family: str
    model: str
    input_size: tuple[int, int, int]
    ok: bool = False
    reason: str = ""
    teacher_as: str = ""  # "layers" or "model"
    student_as: str = ""
    tensors: int = 0
    non_finite: int = 0
    differ: int = 0
    seconds: float | None = None


def models(args: argparse.Namespace) -> list[tuple[str, str, str, int]]:
    """(group, family, reference, input side) for every family, filtered by ``--groups``."""
    rows = [
        (group, family, f"timm:{model}", max(args.side, MIN_INPUT.get(model, 0)))
        for group, members in GROUPS.items()
        for family, model in members
    ]
    rows += OTHER_MODELS
    rows = [r for r in rows if not args.groups or r[0] in args.groups]
    if args.models:
        rows = [r for r in rows if r[2] in args.models or r[2].partition(":")[2] in args.models]
    by_group: dict[str, list[tuple[str, str, str, int]]] = {}
    for row in rows:
        by_group.setdefault(row[0], []).append(row)
    # Round-robin over the groups, so that an interrupted run has measured some of every group.
    rows = [row for turn in itertools.zip_longest(*by_group.values()) for row in turn if row is not None]
    done = {r["model"].split(" (")[0] for folder in args.skip or [] for r in _stored_rows(folder)}
    index, count = args.shard
    return [r for r in rows if r[2] not in done][index::count]


def _stored_rows(folder: Path) -> list[dict[str, Any]]:
    path = folder / "emitted_init.json"
    return json.loads(path.read_text())["rows"] if path.is_file() else []


def run_one(group: str, family: str, reference: str, side: int, args: argparse.Namespace, checker: Any, work: Path) -> Row:
    """Build under seed 0, emit, and have the checker construct ``SFTN()`` under seed 0 and compare."""
    row = Row(group, family, reference, (3, side, side))
    name = reference.partition(":")[2]
    kwargs = {"img_size": side} if group in GROUPS and get_pretrained_cfg_value(name, "fixed_input_size") else {}
    if kwargs:
        row.model += f" (img_size={side})"
    student = args.student if group != "cifar" else "cifar:resnet8x4"
    spec = {
        "name": "emitted_init",
        "num_classes": args.num_classes,
        "input_size": [3, side, side],
        "teacher": {"model": reference, "kwargs": kwargs, "blocks": "auto"},
        "student": {"model": student, "blocks": "auto"},
    }
    folder = work / f"{group}_{family}".replace(" ", "_").replace("/", "_").replace("(", "").replace(")", "")
    start = time.perf_counter()
    try:
        torch.manual_seed(0)
        result = splicer.compile_spec(spec_from_dict(spec, source=f"{reference} as teacher"), verify=False)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(result.sftn.state_dict(), folder / "built.pt")
        source = emit_source(result)
        (folder / "sftn.py").write_text(source)
        row.teacher_as = "model" if "def _teacher_model()" in source else "layers"
        row.student_as = "model" if "def _student_model()" in source else "layers"
        del result
        gc.collect()
        checker.stdin.write(f"{folder}\n")
        checker.stdin.flush()
        report = json.loads(checker.stdout.readline())
        if "error" in report:
            raise RuntimeError(f"SFTN() without splicer: {report['error']}")
        row.tensors, row.non_finite, row.differ = report["tensors"], len(report["non_finite"]), len(report["differ"])
        problems = []
        if not report["same_keys"]:
            problems.append("state_dict keys differ")
        if report["non_finite"]:
            problems.append(f"non-finite: {', '.join(report['non_finite'][:3])}")
        if report["differ"]:
            problems.append(f"not splicer's weights under the same seed: {', '.join(report['differ'][:3])}")
        row.reason = "; ".join(problems)
        row.ok = not problems
    except Exception as exc:  # noqa: BLE001 - the benchmark records every failure and goes on
        row.reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        (folder / "built.pt").unlink(missing_ok=True)
        row.seconds = round(time.perf_counter() - start, 1)
        gc.collect()
    return row


def markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    """The table with the run's provenance and a summary per group on top."""
    summary = []
    for group in dict.fromkeys(r.group for r in rows):
        members = [r for r in rows if r.group == group]
        refused = [r.family for r in members if _refused(r)]
        built = len(members) - len(refused)
        line = f"- {group}: {sum(r.ok for r in members)}/{built} that splicer builds start from splicer's weights, all finite"
        summary.append(line + (f" ({', '.join(refused)}: splicer refuses to build, as in timm_coverage.md)" if refused else ""))
    head = [
        "# Emitted sftn.py: SFTN() starts from splicer's initialisation",
        "",
        *(f"- {key}: {value}" for key, value in meta.items()),
        "",
        "## Summary",
        "",
        *summary,
        "",
        "## Results",
        "",
        "ok: in a process without splicer, `torch.manual_seed(0); SFTN()` has every tensor finite and equal to "
        "`splicer.build` under `torch.manual_seed(0)`. emitted as: `layers` (torch.nn layers, the model's "
        "torch.nn.init calls replayed) or `model` (created from its reference), teacher / student.",
        "",
        "| group | family | model | input | result | emitted as | tensors | non-finite | differ | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    body = [
        f"| {r.group} | {r.family} | {r.model} | {'x'.join(map(str, r.input_size))} | "
        f"{'ok' if r.ok else 'failed: ' + r.reason.replace('|', chr(92) + '|')} | {r.teacher_as} / {r.student_as} | "
        f"{r.tensors} | {r.non_finite} | {r.differ} | {r.seconds} |"
        for r in rows
    ]
    return "\n".join(head + body) + "\n"


def _refused(row: Row) -> bool:
    """The compiler refused the model (as the timm coverage table records), before any emission."""
    return row.reason.startswith(("CutError", "UnsupportedModelError"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=96, help="input height and width for timm models")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--student", default="timm:test_resnet", help="the small student of every non-CIFAR teacher")
    parser.add_argument(
        "--groups", nargs="*", choices=[*GROUPS, "torchvision", "cifar", "python"], help="only these groups"
    )
    parser.add_argument("--models", nargs="+", metavar="NAME", help="only these models (timm:NAME or NAME)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N", help="only every N-th model from the I-th")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="DIR", help="merge the shards' results in these folders")
    parser.add_argument("--skip", type=Path, nargs="+", metavar="DIR", help="skip the models measured in these folders")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for emitted_init.md/.json")
    return parser.parse_args(argv)


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"--shard needs I/N with 0 <= I < N, e.g. 0/2; got {text!r}")
    return int(index), int(count)


def merge(args: argparse.Namespace, argv: list[str] | None) -> None:
    """One table from the shards' tables, in the order of a single run; each shard's command and times kept.

    A folder that holds a merged table (the stored one) brings its shards along; a model measured in
    several folders keeps the row of the last one, so re-run models replace their stored rows.
    """
    payloads = [json.loads((folder / "emitted_init.json").read_text()) for folder in args.merge]
    by_model: dict[str, Row] = {}
    for payload in payloads:
        for r in payload["rows"]:
            row = Row(**{**r, "input_size": tuple(r["input_size"])})
            by_model[row.model.split(" (")[0]] = row
    every = argparse.Namespace(**{**vars(args), "skip": None, "shard": (0, 1), "models": None})
    order = {reference: n for n, (_, _, reference, _) in enumerate(models(every))}
    rows = sorted(by_model.values(), key=lambda r: order.get(r.model.split(" (")[0], len(order)))
    meta = provenance(argv, args.threads)
    carried = [shard for p in payloads if "shards" in p["meta"] for shard in p["meta"]["shards"].split("; ")]
    earlier = []  # the merges that made the stored tables, oldest first
    for stored in (p["meta"] for p in payloads if "shards" in p["meta"]):
        earlier += [m for m in stored.get("earlier merges", "").split("; ") if m]
        earlier.append(f"{stored['command']} ({stored['date']}, commit {stored['commit']})")
    # The shards' folders are scratch space of the machine that ran them: named by their place only (a stored
    # merged table keeps its repository path).
    fresh = [(folder, p) for folder, p in zip(args.merge, payloads) if "shards" not in p["meta"]]
    names = {repo_relative(folder): f"SHARD{len(carried) + i}" for i, (folder, _) in enumerate(fresh)}

    def named(command: str) -> str:
        return " ".join(names.get(word, word) for word in command.split(" "))

    meta["command"] = named(meta["command"])
    shards = list(carried)
    for folder, payload in fresh:
        shard = payload["meta"]
        shards.append(
            f"{names[repo_relative(folder)]}: {named(shard['command'])} ({shard['date']}, {shard['total seconds']} s, "
            f"{shard['models run']} models, commit {shard['commit']})"
        )
    meta["shards"] = "; ".join(shards)
    if earlier:
        meta["earlier merges"] = "; ".join(earlier)
    meta.update({"pairs": payloads[0]["meta"]["pairs"], "models run": f"{len(rows)} of {len(order)}"})
    write(args.out, rows, meta)


def write(out: Path, rows: list[Row], meta: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "emitted_init.md").write_text(markdown(rows, meta))
    (out / "emitted_init.json").write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.merge:
        merge(args, argv)
        return
    sys.path.insert(0, str(REPO))  # python:examples.own_net and python:tests.toy_nets
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)}
    checker = subprocess.Popen(
        [sys.executable, "-c", _CHECKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    start, rows = time.perf_counter(), []
    todo = models(args)
    with tempfile.TemporaryDirectory(prefix="emitted_init_") as work:
        for done, (group, family, reference, side) in enumerate(todo, start=1):
            if checker.poll() is not None:  # a crash in one model's SFTN() must not stop the others
                checker = subprocess.Popen(
                    [sys.executable, "-c", _CHECKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
                )
            row = run_one(group, family, reference, side, args, checker, Path(work))
            rows.append(row)
            status = "ok" if row.ok else f"FAILED {row.reason}"
            print(f"{group:11} {family:22} {row.model:40} {row.teacher_as:6}/{row.student_as:6} {status} {row.seconds}s", flush=True)
            meta = {
                **provenance(argv, args.threads),
                "pairs": f"model as teacher (blocks: auto) vs {args.student} (CIFAR zoo: vs cifar:resnet8x4), 10 classes",
                "models run": f"{done} of {len(todo)}",
                "total seconds": round(time.perf_counter() - start, 1),
            }
            write(args.out, rows, meta)  # after every model, so an interrupted run keeps what it measured
    checker.stdin.close()
    checker.wait()
    print(f"{sum(r.ok for r in rows)}/{len(rows)} ok")


if __name__ == "__main__":
    main()
