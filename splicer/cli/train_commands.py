"""The training commands: ``splicer train``, ``distill``, ``eval``, ``run`` and ``probe``.

Plain typer command functions; :mod:`splicer.cli.main` registers them. Heavy imports
(torch, the trainers) happen inside the functions so that ``splicer --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from splicer.spec import Spec

# The registered distillation methods, for --help without importing torch; tests/test_mistakes_input.py
# checks that this is splicer.training.methods.METHODS.
METHOD_NAMES = (
    "ab", "at", "crd", "dist", "dkd", "fitnets", "ft", "kd", "ofa", "oh", "pkt", "rkd", "sp", "sskd", "vid"
)

SpecArg = Annotated[Path, typer.Argument(help="Spec file (YAML).", show_default=False)]
EpochsOpt = Annotated[int | None, typer.Option("--epochs", help="Override train.epochs.", show_default=False)]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="Override train.batch_size.", show_default=False)]
LrOpt = Annotated[float | None, typer.Option("--lr", help="Override train.lr.", show_default=False)]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="Override train.device: auto, cpu or cuda.", show_default=False)
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Override train.seed.", show_default=False)]
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Run folder (default: runs/<spec name>/<stage>-<timestamp>).", show_default=False),
]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue the run in --out (or the latest one) from its last.pt.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Change any spec field, e.g. --set data.resize=16 (repeatable).", show_default=False),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or per-epoch lines.")]
NprocOpt = Annotated[
    int | None,
    typer.Option(
        "--nproc",
        help="Train with N processes on this machine (hands over to torchrun; train.batch_size stays the global batch).",
        show_default=False,
    ),
]


def _spec(path: Path, sets: list[str] | None, **train: Any) -> Spec:
    """The spec with the command line's changes; its loggers' packages checked before anything trains."""
    from splicer.spec import load_spec
    from splicer.training.loggers import check_installed
    from splicer.training.overrides import apply_overrides

    spec = apply_overrides(load_spec(path), train, sets)
    check_installed(spec.train.loggers)
    return spec


def _is_main() -> bool:
    """Under torchrun only rank 0 prints the result."""
    from splicer.training.distributed import Distributed

    return Distributed.from_env().is_main


def _launch(nproc: int | None, command: str, spec: Spec) -> None:
    """With ``--nproc``, hand over to torchrun; called once the whole plan has been checked, so that a
    mistake is reported once, before any process starts."""
    if nproc is not None:
        from splicer.cli.launch import hand_over

        hand_over(nproc, command, spec.train.batch_size, spec.train.device)


def _report(summary: dict[str, Any]) -> None:
    if not _is_main():
        return
    final, best = summary["final"], summary["best"]
    split = summary["eval_split"]
    typer.echo(f"run: {summary['run']}")
    if final is not None:
        typer.echo(f"final {split} top-1 {final['top1']:.2f}%  top-5 {final['top5']:.2f}%  (epoch {final['epoch']})")
        typer.echo(f"best  {split} top-1 {best['top1']:.2f}%  top-5 {best['top5']:.2f}%  (epoch {best['epoch']})")
    typer.echo(f"wall time {summary['wall_seconds']:.1f}s, {summary['img_per_s_median']:,.0f} img/s")


def train(
    spec: SpecArg,
    standard: Annotated[
        bool, typer.Option("--standard", help="Train the teacher alone with cross-entropy (the baseline).")
    ] = False,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    device: DeviceOpt = None,
    seed: SeedOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
    nproc: NprocOpt = None,
    from_: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Start the teacher from a teacher you have: a standard or SFTN run folder (its teacher), a splicer "
            "checkpoint or a state_dict file of the model (sets teacher.checkpoint; see finetune: in the README).",
            show_default=False,
        ),
    ] = None,
    anchors: Annotated[
        int,
        typer.Option(
            "--anchors",
            help="With --standard: also save N anchor checkpoints at equal epoch intervals (anchors/epoch-*.pt), "
            "the route RCO's student follows. Needs --out.",
        ),
    ] = 0,
) -> None:
    """Stage 1: train SPEC's SFTN teacher (with --standard, the same teacher alone)."""
    from splicer.errors import SplicerError
    from splicer.training.runs import open_run
    from splicer.training.stage1 import train_teacher

    resolved = _spec(spec, set_, epochs=epochs, batch_size=batch_size, lr=lr, device=device, seed=seed)
    if from_ is not None:
        from splicer.training.overrides import start_teacher_from

        resolved = start_teacher_from(resolved, from_)
    if anchors < 0:
        raise SplicerError(f"--anchors {anchors}: the number of anchor checkpoints to save, 1 or more (0: none)")
    if anchors and (not standard or out is None):
        raise SplicerError("--anchors: anchors are saved by a standard teacher run; pass --standard and --out RUN")
    open_run(resolved.name, "standard" if standard else "sftn", out, resume)  # checks the folder, writes nothing
    _launch(nproc, "train", resolved)
    if anchors:
        from splicer.training.anchors import train_anchored_teacher

        _report(train_anchored_teacher(resolved, out, anchors, resume=resume, quiet=quiet))
        return
    _report(train_teacher(resolved, standard=standard, out=out, resume=resume, quiet=quiet))


def distill(
    spec: SpecArg,
    teacher: Annotated[
        str,
        typer.Option("--teacher", help="Teacher run folder (uses its last.pt) or checkpoint file.", show_default=False),
    ],
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help=f"Distillation method: {', '.join(METHOD_NAMES)} (README, section Training, says what each does).",
            show_default=False,
        ),
    ],
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    device: DeviceOpt = None,
    seed: SeedOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
    nproc: NprocOpt = None,
) -> None:
    """Stage 2: distil a fresh student of SPEC from a trained teacher (SFTN or standard)."""
    from splicer.training.stage2 import check_distill
    from splicer.training.stage2 import distill as distill_student

    resolved = _spec(spec, set_, epochs=epochs, batch_size=batch_size, lr=lr, device=device, seed=seed)
    check_distill(resolved, teacher, method, out, resume)
    _launch(nproc, "distill", resolved)
    _report(distill_student(resolved, teacher, method, out=out, resume=resume, quiet=quiet))


def eval_run(
    run: Annotated[str, typer.Argument(help="Run folder or checkpoint file.", show_default=False)],
    teacher: Annotated[
        str | None,
        typer.Option("--teacher", help="Teacher run: also print KL divergence and CKA to it.", show_default=False),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Score a run's last and best checkpoints (top-1/top-5); with --teacher, its similarity to that teacher."""
    from splicer.errors import SplicerError
    from splicer.training.evaluate import evaluate_run

    if device not in ("auto", "cpu", "cuda"):
        raise SplicerError(f"--device {device!r}: use auto, cpu or cuda")
    result = evaluate_run(run, teacher, device)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    split = result["eval_split"]
    method = result["meta"].get("method")
    typer.echo(f"run: {result['run']} ({result['kind']}{', ' + method if method else ''})")
    for which in ("last", "best"):
        if which in result:
            score = result[which]
            typer.echo(
                f"{which:<4} (epoch {score['epoch']}): {split} top-1 {score['top1']:.2f}%  top-5 {score['top5']:.2f}%"
            )
    if "similarity" in result:
        sim = result["similarity"]
        typer.echo(f"similarity to {sim['teacher']}: KL {sim['kl']:.4f}  CKA {sim['cka']:.4f}")


def run(
    spec: SpecArg,
    methods: Annotated[
        str | None,
        typer.Option(
            "--methods",
            help="Comma-separated methods, or all for every registered one (default: the spec's "
            "distill.methods); distillation methods and the baselines dml, kdcl, rco (table 4).",
            show_default=False,
        ),
    ] = None,
    seeds: Annotated[
        str | None,
        typer.Option("--seeds", help="Comma-separated seeds (default: the spec's train.seed).", show_default=False),
    ] = None,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    device: DeviceOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Experiment folder (default: runs/<spec name>/experiment-<timestamp>, with --sweep "
            "runs/<spec name>/sweep).",
            show_default=False,
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue the experiment in --out (or the latest): reuse finished runs, resume the others."
        ),
    ] = False,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
    nproc: NprocOpt = None,
    sweep: Annotated[
        list[str] | None,
        typer.Option(
            "--sweep",
            help="KEY=V1,V2,...: an SFTN and students per value of any spec field, e.g. loss.tau=1,5,10 "
            "(repeatable: a grid). Finished cells of the sweep folder are reused.",
            show_default=False,
        ),
    ] = None,
    schedule_scale: Annotated[
        float | None,
        typer.Option(
            "--schedule-scale",
            help="Train every run this many times longer (epochs and LR milestones), e.g. 4 for SFTN-4.",
            show_default=False,
        ),
    ] = None,
    anchors: Annotated[
        int, typer.Option("--anchors", help="With rco: anchor checkpoints the standard teacher saves (one-stage EEI).")
    ] = 4,
    probe: Annotated[
        Path | None,
        typer.Option(
            "--probe",
            help="Probe data file (num_classes:, data:): add the linear-probe transfer table (table 7).",
            show_default=False,
        ),
    ] = None,
    probe_device: Annotated[
        str, typer.Option("--probe-device", help="Device of the probes: auto, cpu or cuda.")
    ] = "auto",
    sftn_from: Annotated[
        str,
        typer.Option(
            "--sftn-from",
            help="How the SFTN teacher starts: scratch (the paper), standard (fine-tune the standard teacher of "
            "the same seed, by the spec's finetune: section) or scratch,standard (both: three teacher columns).",
        ),
    ] = "scratch",
) -> None:
    """Train standard and SFTN teachers, the student alone and distilled from each; report them side by side."""
    from splicer.errors import SplicerError
    from splicer.experiments.experiment import SFTN_FROM, check_method_names, check_methods, experiment_folder
    from splicer.training.online import BASELINES

    resolved = _spec(spec, set_, epochs=epochs, batch_size=batch_size, lr=lr, device=device)
    if schedule_scale is not None:
        from splicer.training.overrides import scale_schedule

        resolved = scale_schedule(resolved, schedule_scale)
    requested = _split(methods) if methods is not None else list(resolved.distill.methods)
    check_method_names(requested, f"--methods {methods}" if methods is not None else f"{spec}: distill.methods")
    baselines = [m for m in requested if m in BASELINES]
    method_list = [m for m in requested if m not in BASELINES] or (["kd"] if baselines else [])
    try:
        seed_list = [int(s) for s in _split(seeds)] if seeds is not None else [resolved.train.seed]
    except ValueError:
        raise SplicerError(f"--seeds {seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seed_list:
        raise SplicerError(f"--seeds {seeds!r}: expected comma-separated integers, e.g. 0,1,2")
    probe_data = None
    if probe is not None:
        from splicer.experiments.probe import check_probe_input, load_probe_data

        probe_data = load_probe_data(probe)
        check_probe_input(probe_data, resolved.input_size, f"the networks of spec {resolved.name!r}")
    if probe_device not in ("auto", "cpu", "cuda"):
        raise SplicerError(f"--probe-device {probe_device!r}: use auto, cpu or cuda")
    if sweep:
        from splicer.experiments.sweep import check_sweep, parse_sweeps, render_markdown, run_sweep

        if baselines or probe_data is not None or sftn_from != "scratch":
            raise SplicerError(
                "--sweep compares SFTN settings; run baselines (dml, kdcl, rco), --probe and --sftn-from without it"
            )
        sweeps = parse_sweeps(sweep)
        check_sweep(resolved, sweeps, method_list, seed_list, out)
        _launch(nproc, "run", resolved)
        report = run_sweep(resolved, sweeps, method_list, seed_list, out=out, quiet=quiet)
        if not _is_main():
            return
        typer.echo(render_markdown(report))
        typer.echo(f"wrote {report['folder']}/report.md and report.json")
        return
    starts = tuple(_split(sftn_from))
    if "scratch" not in starts and baselines:
        raise SplicerError("--sftn-from: baselines (dml, kdcl, rco) compare with the SFTN from scratch; add scratch")
    unknown_start = [value for value in starts if value not in SFTN_FROM]
    if unknown_start or not starts:
        raise SplicerError(f"--sftn-from {sftn_from}: use {', '.join(SFTN_FROM)} or both, e.g. --sftn-from scratch,standard")
    check_methods(resolved, method_list)
    if "rco" in baselines and anchors < 1:
        raise SplicerError(f"--anchors {anchors}: rco follows the standard teacher's anchor checkpoints; use 1 or more")
    if out is not None or resume:
        out = experiment_folder(resolved.name, out, resume)  # checks the folder, writes nothing
    _launch(nproc, "run", resolved)
    from splicer.experiments.experiment import render_markdown, run_experiment

    rco_anchors = anchors if "rco" in baselines else 0
    report = run_experiment(
        resolved, method_list, seed_list, out=out, resume=resume, quiet=quiet, anchors=rco_anchors, sftn_from=starts
    )
    text = render_markdown(report)
    if baselines:
        from splicer.experiments.baselines import add_baselines
        from splicer.experiments.baselines import render_markdown as render_baselines

        report = add_baselines(report, resolved, baselines, resume=resume, quiet=quiet)
        text += render_baselines(report["baselines"])
    if probe_data is not None:
        from splicer.experiments.probe import add_transfer, render_transfer

        report = add_transfer(report, probe_data, str(probe), probe_device)
        text += render_transfer(report["transfer"])
    if not _is_main():
        return
    typer.echo(text)
    typer.echo(f"wrote {report['folder']}/report.md, report.json and curves.png")
    failed = sum(len(runs) for runs in report["failures"].values())
    if failed:
        typer.echo(
            f"{failed} distillation run(s) failed: their rows in report.md say why; --resume retries them", err=True
        )
        raise typer.Exit(1)


def probe(
    run: Annotated[str, typer.Argument(help="Run folder or checkpoint of a trained network.", show_default=False)],
    data: Annotated[
        Path, typer.Option("--data", help="Probe data file: num_classes: and a data: section.", show_default=False)
    ],
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Transfer by linear probe: freeze RUN's network, fit a linear classifier on its pooled features of DATA."""
    from splicer.errors import SplicerError
    from splicer.experiments.probe import linear_probe, load_probe_data

    if device not in ("auto", "cpu", "cuda"):
        raise SplicerError(f"--device {device!r}: use auto, cpu or cuda")
    result = linear_probe(run, load_probe_data(data), device)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(
        f"{result['run']} ({result['kind']}{', ' + result['method'] if result['method'] else ''}, "
        f"{result['network']}): "
        f"linear probe on {data} ({result['dataset']}, {result['num_classes']} classes, "
        f"{result['feature_dim']} features): {result['eval_split']} top-1 {result['top1']:.2f}% "
        f"(train {result['train_top1']:.2f}%)"
    )


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
