"""splicer's KD epoch against RepDistiller's and torchdistill's on the same files, models, batch and threads.

One KD epoch of resnet32x4 -> resnet8x4 (tau 4, CE weight 0.1, KD weight 0.9), batch 64, one thread
per tool, on ``--images`` generated CIFAR-100-format training images, with the same teacher weights in
every tool; the tools run as subprocesses in interleaved rounds (the order rotated each round), so that
a change of load touches every tool alike. Per round, each tool's training-epoch images/second and
splicer's time per image divided by each peer's; the table gives the median and range over rounds.

What is timed (start-up, teacher loading and evaluation excluded in every tool; the data pipeline,
teacher forward, student forward and backward and the optimizer step included in every tool):

- splicer: ``img_per_s`` of its ``metrics.jsonl`` (``_train_epoch``: first batch request to the last
  step's metrics read-back; in-memory uint8 tensors, augmented as tensors).
- RepDistiller: its own "epoch 1, total time" line (``train_distill``: PIL images through torchvision
  transforms in a DataLoader with ``--num_workers 0``, plus its per-step accuracy meters).
- torchdistill: the training loader's ``MetricLogger.log_every`` loop (the span of its own "Total time"
  line, timed to the microsecond by ``peer_launch.py``; PIL transforms, ``num_workers: 0``).

Setup (once per ``--work`` folder, reused after): the data and teacher files; RepDistiller's source at a
pinned commit (``--repdistiller``: a checkout or git directory, default a clone from GitHub); the
torchdistill example script at a pinned commit (``--torchdistill-src``, likewise); and one virtual
environment per peer, ``python -m venv`` + ``pip install torch==X torchvision==Y`` (the versions this
script runs with) + ``tensorboard_logger==0.1.0`` (RepDistiller) or ``torchdistill==1.1.5``. Nothing of
the peers' code is patched; ``peer_launch.py`` says what it sets before starting a tool.

splicer variants run when the installed splicer's spec schema has their options, and are skipped with
the reason printed otherwise: "live teacher unfolded, fp32" (``distill.teacher_fold_bn=false`` where that
exists, else splicer as it is), "folded teacher, fp32" (``distill.teacher_fold_bn=true``), "stored soft
labels" (``distill.soft_labels.views=K``: its training epoch is timed alone; the precompute's cost, per view
and image, is read from the run's ``summary.json`` ``meta.soft_labels``: teacher passes and seconds). On a
CPU with AMX (native bf16; ``distill.teacher_precision: auto`` picks bf16 there) also: "folded teacher,
bf16" and, with the student's step under bf16 autocast too (``train.precision=bf16``), "folded teacher and
student step, bf16" and "stored soft labels, bf16 student step"; elsewhere they are skipped (emulated bf16
is several times slower than fp32).

    python benchmarks/peer_throughput.py                     # 5,000 images, 5 rounds
    python benchmarks/peer_throughput.py --quick             # 640 images, 1 round: a smoke test
    python benchmarks/peer_throughput.py --repdistiller /path/to/RepDistiller --rounds 3

Writes ``benchmarks/results/peer_throughput.md`` / ``.json`` (``peer_throughput_quick`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peer_data import teacher_reference, write_cifar100, write_teachers  # noqa: E402
from provenance import REPO, provenance, repo_relative as relative  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
LAUNCHER = Path(__file__).resolve().parent / "peer_launch.py"
SPEC = REPO / "specs" / "resnet32x4_resnet8x4.yaml"
REPDISTILLER_URL = "https://github.com/HobbitLong/RepDistiller"
REPDISTILLER_COMMIT = "b84f547c5db6a35318d4671d7d5c4de74c822403"
TORCHDISTILL_URL = "https://github.com/yoshitomo-matsubara/torchdistill"
TORCHDISTILL_COMMIT = "3e4373c45214c5c56eebac481d5bfe8b8735aa05"  # examples/ as of the 1.1.5 package
TORCHDISTILL_VERSION = "1.1.5"
TENSORBOARD_LOGGER = "tensorboard_logger==0.1.0"  # RepDistiller imports it at start
KD = {"tau": 4.0, "ce_weight": 0.1, "kd_weight": 0.9}  # RepDistiller's -r 0.1 -a 0.9 --kd_T 4


@dataclass(frozen=True)
class Variant:
    """A splicer configuration timed as its own tool; ``requires`` are spec fields it cannot run without."""

    name: str
    sets: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    fallback_sets: tuple[str, ...] | None = None  # used instead of ``sets`` when ``requires`` is missing
    bf16: bool = False  # runs only where the CPU computes bf16 natively (AMX)

    @property
    def stores_soft_labels(self) -> bool:
        return any(assignment.startswith("distill.soft_labels.") for assignment in self.sets)


def splicer_variants(views: int) -> list[Variant]:
    fp32_teacher = ("distill.teacher_precision=fp32",)
    soft = (f"distill.soft_labels.views={views}",)
    return [
        Variant(
            "splicer, live teacher unfolded, fp32",
            sets=("distill.teacher_fold_bn=false", *fp32_teacher),
            requires=("distill.teacher_fold_bn",),
            fallback_sets=(),  # before the fold option, splicer's teacher is always live, unfolded and fp32
        ),
        Variant(
            "splicer, folded teacher, fp32",
            sets=("distill.teacher_fold_bn=true", *fp32_teacher),
            requires=("distill.teacher_fold_bn",),
        ),
        Variant(
            "splicer, folded teacher, bf16",
            sets=("distill.teacher_fold_bn=true", "distill.teacher_precision=bf16"),
            requires=("distill.teacher_fold_bn",),
            bf16=True,
        ),
        Variant(
            "splicer, folded teacher and student step, bf16",
            sets=("distill.teacher_fold_bn=true", "distill.teacher_precision=bf16", "train.precision=bf16"),
            requires=("distill.teacher_fold_bn",),
            bf16=True,
        ),
        Variant("splicer, stored soft labels", sets=soft, requires=("distill.soft_labels.views",)),
        Variant(
            "splicer, stored soft labels, bf16 student step",
            sets=(*soft, "train.precision=bf16"),
            requires=("distill.soft_labels.views",),
            bf16=True,
        ),
    ]


PEERS = ("RepDistiller", "torchdistill")


@dataclass
class Work:
    """The work folder's layout."""

    root: Path
    data: Path = field(init=False)
    teachers: Path = field(init=False)
    sources: Path = field(init=False)
    venvs: Path = field(init=False)
    runs: Path = field(init=False)

    def __post_init__(self) -> None:
        self.data, self.teachers = self.root / "data", self.root / "teachers"
        self.sources, self.venvs, self.runs = self.root / "src", self.root / "venvs", self.root / "runs"

    def python(self, peer: str) -> Path:
        return self.venvs / peer / "bin" / "python"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000, help="training images (default: 5000)")
    parser.add_argument("--test-images", type=int, default=500, help="test images each tool evaluates (default: 500)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: 5)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per tool (default: 1)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 640 images, 128 test images, 1 round")
    parser.add_argument(
        "--soft-label-views", type=int, default=1, help="K for the stored-soft-labels variant (default: 1)"
    )
    parser.add_argument("--tools", help="comma-separated subset of the tools' names (default: all)")
    parser.add_argument(
        "--work", type=Path, default=REPO / ".cache" / "peer_throughput",
        help="data, teachers, peers' sources, venvs and runs (default: .cache/peer_throughput)",
    )
    parser.add_argument(
        "--repdistiller", help=f"RepDistiller checkout or git directory (default: clone {REPDISTILLER_URL})"
    )
    parser.add_argument(
        "--torchdistill-src",
        help=f"torchdistill checkout or git directory, for its example (default: clone {TORCHDISTILL_URL})",
    )
    parser.add_argument("--seed", type=int, default=0, help="data and teacher seed (default: 0)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: benchmarks/results/)")
    parser.add_argument("--name", help="result files' name (default: peer_throughput, peer_throughput_quick)")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.test_images, args.rounds = 640, 128, 1
    args.name = args.name or ("peer_throughput_quick" if args.quick else "peer_throughput")
    if args.images < args.batch_size or args.test_images < 1 or args.rounds < 1 or args.soft_label_views < 1:
        parser.error("--images must be at least --batch-size; --test-images, --rounds, --soft-label-views at least 1")
    return args


# ----------------------------------------------------------------------------------------------- setup


def spec_has(dotted: str) -> bool:
    """Whether the installed splicer's spec schema has the field ``dotted`` (e.g. ``distill.soft_labels.views``)."""
    import typing

    from pydantic import BaseModel

    from splicer.spec.schema import Spec

    model: Any = Spec
    for part in dotted.split("."):
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return False
        annotation = fields[part].annotation
        candidates = (annotation, *typing.get_args(annotation))
        models = [a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)]
        model = models[0] if models else None
    return True


def run_logged(command: list[str], log: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``command``, its output in ``log``; raise with the log's tail when it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, text=True, **kwargs)
    if done.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"{' '.join(map(str, command))} failed ({done.returncode}); {log}:\n{tail}")
    return done


def checkout(source: str | None, url: str, commit: str, dest: Path) -> str:
    """``commit`` of the repository at ``source`` (a checkout or a git directory; a clone of ``url`` when None)
    as plain files in ``dest``; returns where it came from."""
    if (dest / ".commit").is_file() and (dest / ".commit").read_text().strip() == commit:
        return (dest / ".origin").read_text().strip()
    shutil.rmtree(dest, ignore_errors=True)
    if source is None:
        git_dir = dest.with_name(dest.name + ".git")
        if not git_dir.is_dir():
            run_logged(["git", "clone", "--bare", url, str(git_dir)], dest.with_name(dest.name + "-clone.log"))
        origin = url
    else:
        git_dir = Path(source)
        origin = relative(git_dir)
        if (git_dir / ".git").exists():
            git_dir = git_dir / ".git"
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "--git-dir", str(git_dir), "archive", commit], capture_output=True, check=False)
    if archive.returncode != 0:
        raise RuntimeError(f"{origin}: no commit {commit} ({archive.stderr.decode().strip()})")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    (dest / ".commit").write_text(commit + "\n")
    (dest / ".origin").write_text(origin + "\n")
    return origin


def make_venv(work: Work, peer: str, packages: list[str]) -> list[str]:
    """``work/venvs/<peer>``: a virtual environment with ``packages``; reused while they are the same.
    Returns the commands that made it."""
    import torch
    import torchvision

    venv = work.venvs / peer
    wanted = [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}"]
    wanted += packages
    marker = venv / "peer_packages.txt"
    commands = [f"python -m venv venvs/{peer}", f"venvs/{peer}/bin/pip install {' '.join(wanted)}"]
    if marker.is_file() and marker.read_text().split() == wanted:
        return commands
    shutil.rmtree(venv, ignore_errors=True)
    print(f"setting up {peer}'s virtual environment: {'; '.join(commands)}", flush=True)
    run_logged([sys.executable, "-m", "venv", str(venv)], work.venvs / f"{peer}-venv.log")
    run_logged([str(venv / "bin" / "pip"), "install", "-q", *wanted], work.venvs / f"{peer}-pip.log")
    marker.write_text("\n".join(wanted) + "\n")
    return commands


def prepare(args: argparse.Namespace, work: Work) -> dict[str, Any]:
    """Data, teachers, peers' sources and venvs; what was used, for the results file."""
    facts: dict[str, Any] = {}
    stamp = f"{args.images} {args.test_images} {args.seed}"
    if not (work.data / "stamp").is_file() or (work.data / "stamp").read_text() != stamp:
        shutil.rmtree(work.data, ignore_errors=True)
        write_cifar100(work.data, args.images, args.test_images, args.seed)
        (work.data / "stamp").write_text(stamp)
    teachers = write_teachers(work.teachers, SPEC, args.seed)
    reference = teacher_reference(teachers["splicer"], work.teachers / "reference.pt")
    facts["repdistiller"] = {
        "source": checkout(args.repdistiller, REPDISTILLER_URL, REPDISTILLER_COMMIT, work.sources / "RepDistiller"),
        "commit": REPDISTILLER_COMMIT,
        "venv": make_venv(work, "RepDistiller", [TENSORBOARD_LOGGER]),
    }
    facts["torchdistill"] = {
        "source of examples/torchvision/image_classification.py": checkout(
            args.torchdistill_src, TORCHDISTILL_URL, TORCHDISTILL_COMMIT, work.sources / "torchdistill"
        ),
        "commit": TORCHDISTILL_COMMIT,
        "venv": make_venv(work, "torchdistill", [f"torchdistill=={TORCHDISTILL_VERSION}"]),
    }
    check = [str(work.python("RepDistiller")), str(LAUNCHER), "--check-teacher", str(reference)]
    check += [str(teachers["repdistiller"]), str(work.sources / "RepDistiller")]
    run_logged(check, work.teachers / "check.log")
    facts["teacher check"] = (work.teachers / "check.log").read_text().strip().splitlines()[-1]
    print(facts["teacher check"], flush=True)
    facts["teachers"] = {tool: relative(path) for tool, path in teachers.items()}
    return {**facts, "_teachers": teachers}


# ------------------------------------------------------------------------------------------- the tools


@dataclass(frozen=True)
class Tool:
    """One timed tool: a splicer variant or a peer."""

    name: str
    variant: Variant | None = None


def tools_to_run(args: argparse.Namespace) -> tuple[list[Tool], dict[str, str]]:
    """The tools this run times, and the variants skipped with their reason."""
    chosen = {name.strip() for name in args.tools.split(",")} if args.tools else None
    tools, skipped = [], {}
    import torch

    from splicer.training.hardware import native_bf16

    amx = native_bf16(torch.device("cpu"))
    for variant in splicer_variants(args.soft_label_views):
        if variant.bf16 and not amx:
            skipped[variant.name] = "this CPU has no AMX: bf16 is emulated there, several times slower than fp32"
            continue
        missing = [name for name in variant.requires if not spec_has(name)]
        if missing and variant.fallback_sets is None:
            skipped[variant.name] = f"this splicer's spec has no {', '.join(missing)}"
            continue
        if missing:
            variant = Variant(variant.name, variant.fallback_sets or (), ())
        tools.append(Tool(variant.name, variant))
    tools += [Tool(peer) for peer in PEERS]
    if chosen is not None:
        unknown = chosen - {tool.name for tool in tools} - set(skipped)
        if unknown:
            sys.exit(f"peer_throughput.py: --tools: unknown {sorted(unknown)}; known: {[t.name for t in tools]}")
        tools = [tool for tool in tools if tool.name in chosen]
    for name, reason in skipped.items():
        print(f"skipped: {name}: {reason}", flush=True)
    return tools, skipped


def torchdistill_config(work: Work, teacher: Path, run: Path, args: argparse.Namespace) -> str:
    """torchdistill's yaml for one KD epoch of RepDistiller's resnet32x4 -> resnet8x4 on the generated files."""
    normalize = "mean: [0.5071, 0.4867, 0.4408]\n                      std: [0.2675, 0.2565, 0.2761]"
    root = work.data
    return f"""\
datasets:
  &train cifar100/train: !import_call
    key: 'torchvision.datasets.CIFAR100'
    init:
      kwargs:
        root: '{root}'
        train: True
        download: False
        transform: !import_call
          key: 'torchvision.transforms.Compose'
          init:
            kwargs:
              transforms:
                - !import_call
                  key: 'torchvision.transforms.RandomCrop'
                  init:
                    kwargs: {{size: 32, padding: 4}}
                - !import_call
                  key: 'torchvision.transforms.RandomHorizontalFlip'
                  init:
                    kwargs: {{p: 0.5}}
                - !import_call
                  key: 'torchvision.transforms.ToTensor'
                  init:
                - !import_call
                  key: 'torchvision.transforms.Normalize'
                  init:
                    kwargs:
                      {normalize}
  &test cifar100/test: !import_call
    key: 'torchvision.datasets.CIFAR100'
    init:
      kwargs:
        root: '{root}'
        train: False
        download: False
        transform: !import_call
          key: 'torchvision.transforms.Compose'
          init:
            kwargs:
              transforms:
                - !import_call
                  key: 'torchvision.transforms.ToTensor'
                  init:
                - !import_call
                  key: 'torchvision.transforms.Normalize'
                  init:
                    kwargs:
                      {normalize}
models:
  teacher_model:
    key: 'repdistiller_resnet32x4'
    kwargs: {{num_classes: 100}}
    src_ckpt: '{teacher}'
  student_model:
    key: 'repdistiller_resnet8x4'
    kwargs: {{num_classes: 100}}
    src_ckpt:
    dst_ckpt: '{run / "student.pt"}'
train:
  log_freq: 100
  num_epochs: 1
  train_data_loader:
    dataset_id: *train
    sampler:
      class_or_func: !import_get
        key: 'torch.utils.data.RandomSampler'
      kwargs:
    kwargs: {{batch_size: {args.batch_size}, num_workers: 0, pin_memory: False, drop_last: False}}
  val_data_loader:
    dataset_id: *test
    sampler: &val_sampler
      class_or_func: !import_get
        key: 'torch.utils.data.SequentialSampler'
      kwargs:
    kwargs: {{batch_size: 128, num_workers: 0, pin_memory: False, drop_last: False}}
  teacher:
    forward_proc: 'forward_batch_only'
    sequential: []
    wrapper:
    requires_grad: False
    frozen_modules: []
  student:
    forward_proc: 'forward_batch_only'
    adaptations:
    sequential: []
    wrapper:
    requires_grad: True
    frozen_modules: []
  optimizer:
    key: 'SGD'
    kwargs: {{lr: 0.05, momentum: 0.9, weight_decay: 0.0005}}
  scheduler:
    key: 'MultiStepLR'
    kwargs: {{milestones: [150, 180, 210], gamma: 0.1}}
  criterion:
    key: 'WeightedSumLoss'
    kwargs:
      sub_terms:
        kd:
          criterion:
            key: 'KDLoss'
            kwargs:
              student_module_path: '.'
              student_module_io: 'output'
              teacher_module_path: '.'
              teacher_module_io: 'output'
              temperature: {KD['tau']}
              alpha: {KD['kd_weight']}
              reduction: 'batchmean'
          weight: 1.0
test:
  test_data_loader:
    dataset_id: *test
    sampler: *val_sampler
    kwargs: {{batch_size: 128, num_workers: 0, pin_memory: False, drop_last: False}}
"""


def command_for(tool: Tool, work: Work, teachers: dict[str, Path], run: Path, number: int, args: argparse.Namespace):
    """(command, working folder, environment additions) that run one epoch of ``tool`` in ``run``."""
    launch = ["--threads", str(args.threads), "--accept-generated-cifar"]
    if tool.variant is not None:
        sets = [
            f"data.root={work.data}", "data.download=false", "data.workers=0", "train.epochs=1",
            f"train.batch_size={args.batch_size}", "train.milestones=[]", "train.device=cpu", "train.compile=false",
            f"train.seed={number}", f"distill.kd_tau={KD['tau']}", f"distill.ce_weight={KD['ce_weight']}",
            f"distill.kd_weight={KD['kd_weight']}", *tool.variant.sets,
        ]
        command = [sys.executable, str(LAUNCHER), *launch, "-m", "splicer", "distill", str(SPEC)]
        command += ["--teacher", str(teachers["splicer"]), "--method", "kd", "--out", str(run), "--quiet"]
        command += [word for assignment in sets for word in ("--set", assignment)]
        return command, REPO, {"PYTHONPATH": str(REPO)}
    run.mkdir(parents=True, exist_ok=True)
    if tool.name == "RepDistiller":
        (run / "data").symlink_to(work.data)  # its loader reads ./data/cifar-100-python
        script = work.sources / "RepDistiller" / "train_student.py"
        command = [str(work.python("RepDistiller")), str(LAUNCHER), *launch, str(script)]
        command += ["--path_t", str(teachers["repdistiller"]), "--model_s", "resnet8x4", "--distill", "kd"]
        command += ["-r", str(KD["ce_weight"]), "-a", str(KD["kd_weight"]), "-b", "0", "--kd_T", str(KD["tau"])]
        command += ["--batch_size", str(args.batch_size), "--num_workers", "0", "--epochs", "1", "--trial", str(number)]
        # tensorboard_logger 0.1.0's generated protobuf code needs the pure-Python protobuf of today's releases.
        return command, run, {"PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
    config = run / "config.yaml"
    config.write_text(torchdistill_config(work, teachers["repdistiller"], run, args))
    script = work.sources / "torchdistill" / "examples" / "torchvision" / "image_classification.py"
    command = [str(work.python("torchdistill")), str(LAUNCHER), *launch]
    command += ["--torchdistill-models", str(work.sources / "RepDistiller"), str(script)]
    command += ["--config", str(config), "--device", "cpu", "--run_log", str(run / "log.txt"), "--seed", str(number)]
    return command, run, {}


def epoch_speed(tool: Tool, run: Path, output: str, args: argparse.Namespace) -> dict[str, Any]:
    """Images/second of the training epoch, read as the module docstring says, and what else the run recorded."""
    if tool.variant is not None:
        record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
        found: dict[str, Any] = {"img_per_s": record["img_per_s"], "step_seconds": record["step_seconds"]}
        if tool.variant.stores_soft_labels:
            soft = json.loads((run / "summary.json").read_text())["meta"]["soft_labels"]
            found["precompute"] = {
                "seconds": soft["precompute_seconds"],
                "teacher_images": soft["teacher_images"],
                "views": soft["views"],
                "ms_per_view_and_image": 1000 * soft["precompute_seconds"] / soft["teacher_images"],
            }
        return found
    if tool.name == "RepDistiller":
        match = re.search(r"epoch 1, total time ([0-9.]+)", output)
        if not match:
            raise RuntimeError("no 'epoch 1, total time' line in RepDistiller's output")
        return {"img_per_s": args.images / float(match.group(1)), "seconds": float(match.group(1))}
    match = re.search(r"training epoch 0: (\d+) images in ([0-9.]+) s", output)
    if not match:
        raise RuntimeError("no training-epoch line from peer_launch.py in torchdistill's output")
    images, seconds = int(match.group(1)), float(match.group(2))
    return {"img_per_s": images / seconds, "seconds": seconds}


def measure(args: argparse.Namespace, work: Work, tools: list[Tool], teachers: dict[str, Path]) -> dict[str, Any]:
    """Every tool once a round, the order rotated each round; per tool the rounds' figures (None where it failed)."""
    shutil.rmtree(work.runs, ignore_errors=True)
    rounds: dict[str, list[dict[str, Any] | None]] = {tool.name: [] for tool in tools}
    errors: dict[str, str] = {}
    commands: dict[str, str] = {}
    for number in range(args.rounds):
        shift = number % len(tools)
        for tool in tools[shift:] + tools[:shift]:
            run = work.runs / f"round{number}" / re.sub(r"[^a-z0-9]+", "-", tool.name.lower()).strip("-")
            command, cwd, extra = command_for(tool, work, teachers, run, number, args)
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads), **extra}
            commands.setdefault(tool.name, " ".join(_shown(word, work) for word in command))
            done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
            (run.parent / f"{run.name}.log").write_text(done.stdout + done.stderr)
            try:
                if done.returncode != 0:
                    tail = (done.stdout + done.stderr).strip().splitlines()[-6:]
                    raise RuntimeError(f"exit {done.returncode}: " + " | ".join(tail))
                found = epoch_speed(tool, run, done.stdout + done.stderr, args)
            except (RuntimeError, OSError, ValueError, KeyError) as exc:
                rounds[tool.name].append(None)
                errors[tool.name] = str(exc)
                print(f"round {number + 1}/{args.rounds}: {tool.name} failed: {exc}", flush=True)
                continue
            rounds[tool.name].append(found)
            print(f"round {number + 1}/{args.rounds}: {tool.name}: {found['img_per_s']:.1f} img/s", flush=True)
    return {"rounds": rounds, "errors": errors, "commands": commands}


def _shown(word: str, work: Work) -> str:
    """A command word as stored: paths in the work folder as ``WORK/...``, others relative to the repository."""
    path = Path(word)
    if path.is_absolute():
        if path.is_relative_to(work.root):
            return "WORK/" + path.relative_to(work.root).as_posix()
        if path == Path(sys.executable):
            return "python"
        return relative(path)
    if "=" in word and os.path.isabs(word.split("=", 1)[1]):
        key, value = word.split("=", 1)
        return f"{key}={_shown(value, work)}"
    return word


# ------------------------------------------------------------------------------------------- the table


def summarise(measured: dict[str, Any], tools: list[Tool]) -> dict[str, Any]:
    """Per tool: median and range of img/s over rounds; per splicer variant and peer: splicer's time per image
    over the peer's, per round and median (range)."""
    speeds = {name: [r["img_per_s"] if r else None for r in per] for name, per in measured["rounds"].items()}

    def spread(values: list[float | None]) -> dict[str, Any]:
        done = [v for v in values if v is not None]
        return {
            "median": statistics.median(done) if done else None,
            "range": [min(done), max(done)] if done else None,
            "per_round": values,
        }

    table: dict[str, Any] = {"img_per_s": {name: spread(values) for name, values in speeds.items()}, "ratio": {}}
    for tool in tools:
        if tool.variant is None:
            continue
        for peer in PEERS:
            if peer not in speeds:
                continue
            per_round = [
                p / s if s and p else None for s, p in zip(speeds[tool.name], speeds[peer], strict=True)
            ]
            table["ratio"][f"{tool.name} / {peer}"] = spread(per_round)
    precompute = {}
    for tool in tools:
        if tool.variant is not None and tool.variant.stores_soft_labels:
            precompute[tool.name] = [r.get("precompute") if r else None for r in measured["rounds"][tool.name]]
    table["soft_label_precompute"] = precompute
    return table


def render(table: dict[str, Any], measured: dict[str, Any], skipped: dict[str, str], facts: dict[str, Any],
           args: argparse.Namespace, made: dict[str, str]) -> str:
    def cell(entry: dict[str, Any], digits: int) -> str:
        if entry["median"] is None:
            return "failed"
        low, high = entry["range"]
        shown = f"{entry['median']:.{digits}f}"
        return shown + (f" ({low:.{digits}f}-{high:.{digits}f})" if args.rounds > 1 else "")

    title = "splicer's KD epoch against RepDistiller and torchdistill (resnet32x4 -> resnet8x4, CPU)"
    lines = [
        f"# {title}" + (" — QUICK SMOKE TEST, not the benchmark's table" if args.quick else ""),
        "",
        f"One KD epoch (tau {KD['tau']}, CE {KD['ce_weight']}, KD {KD['kd_weight']}) on {args.images:,} generated "
        f"CIFAR-100-format training images, batch {args.batch_size}, {args.threads} torch thread(s) and "
        "OMP_NUM_THREADS per tool, one process at a time, the same random-init teacher weights in every tool "
        f"(checked: {facts['teacher check'].removeprefix('peer_launch: ')}); {args.rounds} interleaved round(s), "
        "order rotated. img/s: the training epoch only (see below); median (range) over rounds. Ratio: splicer's "
        "time per image over the peer's in the same round (below 1: splicer is faster); median (range).",
        "",
        *(f"- {key}: {value}" for key, value in made.items()),
        "",
        "| Tool | Training img/s |",
        "|:--|--:|",
        *(f"| {name} | {cell(entry, 1)} |" for name, entry in table["img_per_s"].items()),
        "",
        "| splicer / peer, time per image | Ratio |",
        "|:--|--:|",
        *(f"| {name} | {cell(entry, 3)}x |" for name, entry in table["ratio"].items()),
        "",
        "What is timed: splicer, its `metrics.jsonl` `img_per_s` (the training loop from the first batch request "
        "to the last step's metrics read-back; in-memory uint8 tensors augmented as tensors); RepDistiller, its "
        "own `epoch 1, total time` (`train_distill`, PIL images through torchvision transforms, `--num_workers 0`, "
        "its per-step accuracy meters); torchdistill, the training loader's `MetricLogger.log_every` loop timed by "
        "`benchmarks/peer_launch.py` (the span of its own `Total time` line; PIL transforms, `num_workers: 0`). "
        "Start-up, teacher loading and evaluation are outside every figure; data loading and augmentation, the "
        "teacher's forward and the student's step are inside every figure.",
    ]
    for name, per_round in table["soft_label_precompute"].items():
        shown = [f"{r['ms_per_view_and_image']:.1f} ms" if r else "failed" for r in per_round]
        lines += [
            "",
            f"{name}: the soft-label precompute (outside the training epoch; `summary.json` `meta.soft_labels`), "
            f"per view and image, per round: {', '.join(shown)}.",
        ]
    if skipped:
        lines += ["", "Skipped:", "", *(f"- {name}: {reason}" for name, reason in skipped.items())]
    if measured["errors"]:
        lines += ["", "Failures (the last message of each):", ""]
        lines += [f"- {name}: {error}" for name, error in measured["errors"].items()]
    lines += ["", "Commands (round 0; WORK is the work folder):", ""]
    lines += [f"- {name}: `{command}`" for name, command in measured["commands"].items()]
    rd, td = facts["repdistiller"], facts["torchdistill"]
    lines += [
        "",
        f"RepDistiller {rd['commit'][:12]} ({rd['source']}); venv: `{'`; `'.join(rd['venv'])}`. "
        f"torchdistill {TORCHDISTILL_VERSION} from PyPI, its example script at {td['commit'][:12]}; venv: "
        f"`{'`; `'.join(td['venv'])}`. Set before each tool starts (`peer_launch.py`): torch threads, torchvision's "
        "CIFAR checksum check relaxed for the generated files; for torchdistill, RepDistiller's resnet32x4/resnet8x4 "
        "registered as models. RepDistiller runs with PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python "
        "(tensorboard_logger 0.1.0's protobuf code). No peer code is changed.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    work = Work(args.work.resolve())
    work.root.mkdir(parents=True, exist_ok=True)
    load_at_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    tools, skipped = tools_to_run(args)
    facts = prepare(args, work)
    teachers = facts.pop("_teachers")
    measured = measure(args, work, tools, teachers)
    table = summarise(measured, tools)
    made = {**provenance(argv, args.threads), "load average at start (1/5/15 min)": load_at_start}
    markdown = render(table, measured, skipped, facts, args, made)
    payload = {
        **made,
        "quick": args.quick,
        "images": args.images,
        "test_images": args.test_images,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "kd": KD,
        "setup": facts,
        "skipped": skipped,
        "commands": measured["commands"],
        "errors": measured["errors"],
        "per_round": measured["rounds"],
        **table,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text(markdown)
    (args.out / f"{args.name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
