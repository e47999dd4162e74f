"""The ``splicer`` command line: build, inspect and schema here; training commands register below.

User errors (:class:`splicer.errors.SplicerError`) are printed as one message and exit with
status 2, never as a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import typer.core

class _FlagsShownAsFlags:
    """typer shows a ``<bool>`` value after every flag (``--resume <bool>``), which flags never take:
    give flags an empty metavar so ``--help`` lists them bare."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class FlagCommand(_FlagsShownAsFlags, typer.core.TyperCommand):
    """Every splicer command: flags shown as flags."""


class FlagGroup(_FlagsShownAsFlags, typer.core.TyperGroup):
    """The ``splicer`` group: flags shown as flags."""


app = typer.Typer(
    name="splicer",
    cls=FlagGroup,
    help="Compile a teacher and a student network into a student-friendly teacher network (SFTN) and train it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"splicer {version('splicer')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            typer.echo("splicer (not installed: no package metadata)")
        raise typer.Exit()


@app.callback()
def _main(
    show_version: Annotated[
        bool | None,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print splicer's version and exit."),
    ] = None,
) -> None:
    """Compile a teacher and a student network into a student-friendly teacher network (SFTN) and train it."""

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(command: F) -> F:
    """Turn a SplicerError into a message on stderr and exit status 2 (under torchrun, printed once per machine)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from splicer.errors import SplicerError

        try:
            return command(*args, **kwargs)
        except SplicerError as exc:
            from splicer.training.distributed import Distributed

            if Distributed.prints(exc):  # under torchrun: once per machine, not once per process
                typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


GRAPH_FORMATS = (".svg", ".png", ".dot", ".mmd")  # splicer inspect --graph: pictures, Graphviz DOT, Mermaid

SpecArg = Annotated[Path, typer.Argument(help="Spec file (YAML).", show_default=False)]


@app.command(cls=FlagCommand)
@user_errors
def build(
    spec: SpecArg,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default: build/<name>).")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite another spec's build (or files of the same names) in --out.")
    ] = False,
) -> None:
    """Compile SPEC into an SFTN and write sftn.py, train_sftn.py, report.md, branch graphs and the resolved spec."""
    from splicer.assembly.build import compile_spec
    from splicer.emission.artifacts import check_build_folder, emit_artifacts
    from splicer.emission.report import summary_lines

    result = compile_spec(spec)
    out_dir = out if out is not None else Path("build") / result.spec.name
    check_build_folder(out_dir, result.spec.name, force)
    written = emit_artifacts(result, out_dir)
    typer.echo("\n".join(summary_lines(result)))
    typer.echo(f"wrote {', '.join(str(p) for p in written.values())}")


@app.command(cls=FlagCommand)
@user_errors
def inspect(
    target: Annotated[str, typer.Argument(help="A spec file, or a model reference such as timm:resnet50.", show_default=False)],
    input_size: Annotated[
        tuple[int, int, int] | None,
        typer.Option(
            "--input-size",
            help="C H W, for a model reference (default: timm's pretrained_cfg for timm:, 3 224 224 for "
            "torchvision:, 3 32 32 otherwise).",
            show_default=False,
        ),
    ] = None,
    num_classes: Annotated[
        int | None,
        typer.Option(
            "--num-classes",
            help="Classes, for a model reference (default: timm's for timm:, 1000 for torchvision:, 100 otherwise).",
            show_default=False,
        ),
    ] = None,
    all_cuts: Annotated[bool, typer.Option("--all", help="List every cut point, not only stage ends.")] = False,
    layers: Annotated[
        bool, typer.Option("--layers", help="Also every layer of the teacher and each branch (the paper's table 12).")
    ] = False,
    graph: Annotated[
        Path | None,
        typer.Option("--graph", help="Write the branch graph to this file: .svg or .png picture, .dot or .mmd text."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON (with --layers: the layer tables too).")
    ] = False,
) -> None:
    """Summarise an SFTN (blocks, shapes, transforms, parameters) from a spec; or list a model's cut points."""
    from rich.console import Console

    from splicer.errors import SplicerError

    console = Console(highlight=False)
    if graph is not None and graph.suffix.lower() not in GRAPH_FORMATS:
        known = ", ".join(GRAPH_FORMATS)
        raise SplicerError(f"--graph {graph}: unknown format {graph.suffix or '(no extension)'}; use {known}")
    if Path(target).exists() or target.endswith((".yaml", ".yml")):
        _inspect_spec(Path(target), console, layers, graph, as_json)
    elif layers or graph is not None or as_json:
        raise SplicerError(f"{target}: --layers, --graph and --json need a spec file, not a model reference")
    else:
        _inspect_model(target, input_size, num_classes, all_cuts, console)


def _inspect_spec(path: Path, console: Any, layers: bool, graph: Path | None, as_json: bool) -> None:
    from splicer.assembly.build import compile_spec
    from splicer.cli.inspect_view import print_layers, print_overview
    from splicer.emission.layers import layer_tables
    from splicer.emission.report import summary_data

    result = compile_spec(path)
    tables = layer_tables(result) if layers else None
    if graph is not None:
        _write_graph(result, graph)
        typer.echo(f"wrote {graph}", err=as_json)  # stdout stays pure JSON
    data = summary_data(result, tables)
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        print_overview(data, console)
        if tables is not None:
            print_layers(tables, console)


def _write_graph(result: Any, path: Path) -> None:
    """The branch graph in the format the file's extension names (one of GRAPH_FORMATS)."""
    from splicer.emission.artifacts import write_text_atomic
    from splicer.emission.graph import branch_graph, to_dot, to_mermaid
    from splicer.emission.picture import write_result_pictures

    suffix = path.suffix.lower()
    if suffix == ".dot":
        write_text_atomic(path, to_dot(branch_graph(result), result.spec.name))
    elif suffix == ".mmd":
        write_text_atomic(path, to_mermaid(branch_graph(result)))
    else:
        write_result_pictures(result, [path])


def _inspect_model(
    reference: str, input_size: tuple[int, int, int] | None, num_classes: int | None, all_cuts: bool, console: Any
) -> None:
    from rich.table import Table

    from splicer.errors import SpecError, UnsupportedModelError
    from splicer.models.registry import check_model_reference, create_model, default_task, input_size_hint
    from splicer.spec.schema import NetworkSpec
    from splicer.trace.cuts import find_cut_points
    from splicer.trace.shapes import propagate_shapes
    from splicer.trace.stages import auto_block_ends, check_feature_layout
    from splicer.trace.tracer import trace_model

    if ":" not in reference:
        raise SpecError(f"{reference}: no such spec file, and not a model reference (SOURCE:NAME, e.g. timm:resnet50)")
    try:
        NetworkSpec(model=reference)  # validates the form of the reference
    except ValueError as exc:
        raise SpecError(f"{reference}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None  # type: ignore[attr-defined]
    problem = check_model_reference(reference)
    if problem:
        raise SpecError(f"{reference}: {problem}")
    default_size, default_classes, origin = default_task(reference)
    defaults = [f"--input-size {' '.join(map(str, default_size))}" if input_size is None else ""]
    defaults.append(f"--num-classes {default_classes}" if num_classes is None else "")
    if any(defaults):
        console.print(f"using {origin} {' '.join(d for d in defaults if d)} (pass them to change)", highlight=False)
    input_size = input_size or default_size
    model = create_model(reference, num_classes or default_classes)
    traced = trace_model(model, name=reference)
    hint = input_size_hint(model, input_size, None)
    if hint:
        native = " ".join(map(str, default_size))
        hint += f"; try --input-size {native}"
    propagate_shapes(traced.graph_module, input_size, name=reference, hint=hint)
    cuts = find_cut_points(traced, model)
    try:
        check_feature_layout(model, cuts, reference)
        auto_ends, origin = auto_block_ends(traced, model, cuts, None)
    except UnsupportedModelError as exc:
        auto_ends, origin = [], f"none: {exc}"
    auto = {c.node for c in auto_ends}
    shown = cuts if all_cuts else [c for c in cuts if c.stage_end or c.node in auto]
    title = f"{reference} at {'x'.join(map(str, input_size))}: {len(cuts)} valid cut points, {len(shown)} shown"
    table = Table(
        "Cut point (spec name)", "fx node", "Output shape", "Layout", "Stage end", "auto", title=title, title_justify="left"
    )
    for c in shown:
        layout = c.layout.describe() if c.layout is not None else "-"
        table.add_row(
            c.label, c.node, "x".join(map(str, c.shape)), layout, "yes" if c.stage_end else "", "yes" if c.node in auto else ""
        )
    console.print(table)
    console.print(f"auto: {', '.join(c.label for c in auto_ends)} ({origin})", highlight=False, markup=False)
    if not all_cuts:
        console.print("(--all lists every cut point)", highlight=False)


@app.command(cls=FlagCommand)
@user_errors
def schema(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write to this file instead of stdout.")] = None,
) -> None:
    """Print the spec's JSON Schema, for editors that complete and check YAML."""
    from splicer.spec.schema import Spec

    from splicer.errors import SplicerError

    text = json.dumps(Spec.model_json_schema(), indent=2) + "\n"
    if out is not None and out.is_dir():
        raise SplicerError(f"--out {out}: is a folder; name a file, e.g. {out / 'splicer.schema.json'}")
    if out is not None and not out.parent.is_dir():
        raise SplicerError(f"--out {out}: no folder {out.parent}; create it first or name a file in an existing folder")
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
        typer.echo(f"wrote {out}")


def _register_training_commands() -> None:
    from splicer.cli import export_command, train_commands

    app.command("train", cls=FlagCommand)(user_errors(train_commands.train))
    app.command("distill", cls=FlagCommand)(user_errors(train_commands.distill))
    app.command("eval", cls=FlagCommand)(user_errors(train_commands.eval_run))
    app.command("run", cls=FlagCommand)(user_errors(train_commands.run))
    app.command("probe", cls=FlagCommand)(user_errors(train_commands.probe))
    app.command("export", cls=FlagCommand)(user_errors(export_command.export))


_register_training_commands()


if __name__ == "__main__":  # pragma: no cover
    app()
