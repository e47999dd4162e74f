"""How much of timm splicer can splice: one small model per family, with ``blocks: auto``.

Families are grouped: CNNs, transformers (token sequences, channels-last stages, pooled tokens),
hybrids (conv stages and attention) and MLP models.

Each model is compiled both as the teacher (against a small student) and as the student (of a
large teacher), verified (teacher equivalence, branch shapes) and run forward + backward once.
Two more checks catch what the compiler's own verification does not see: the student cut into
blocks must reproduce the student model (stage 2 trains that student), and the SFTN must be
deterministic in eval mode (a training-mode op baked into a trace is not). A failure is
recorded with the exception's first line, so one model never stops the run; the table goes
to ``benchmarks/results/timm_coverage.{md,json}``. With ``--groups`` or ``--families`` only
those models run, and the stored rows of all other models are kept (``--no-keep`` drops them),
so one group can be re-measured without the others.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from provenance import provenance  # benchmarks/ is on sys.path when run as a script
from timm.models import get_pretrained_cfg_value

import splicer
from splicer.assembly.build import BuildResult
from splicer.assembly.modules import SFTN, BlockNet
from splicer.spec import spec_from_dict

RESULTS = Path(__file__).resolve().parent / "results"
TOLERANCE = 1e-5

# (family, model): the smallest timm variant of each family, per group.
# Models whose timm config says ``fixed_input_size`` also get ``img_size`` = the input height.
# Some models need a larger input than the default (halo attention: every attention stage's
# map divisible by the block size 8).
MIN_INPUT: dict[str, int] = {"halonet26t": 256, "efficientformer_l1": 224, "crossvit_tiny_240": 240}
CNN_MODELS: list[tuple[str, str]] = [
    ("resnet", "resnet10t"),
    ("resnext", "resnext26ts"),
    ("convnext", "convnext_atto"),
    ("convnextv2", "convnextv2_atto"),
    ("efficientnet", "efficientnet_b0"),
    ("efficientnetv2", "efficientnetv2_rw_t"),
    ("mobilenetv1", "mobilenetv1_100"),
    ("mobilenetv2", "mobilenetv2_035"),
    ("mobilenetv3", "mobilenetv3_small_050"),
    ("mobilenetv4", "mobilenetv4_conv_small_035"),
    ("regnet", "regnetx_002"),
    ("regnetz", "regnetz_005"),
    ("densenet", "densenet121"),
    ("vgg", "vgg11_bn"),
    ("ghostnet", "ghostnet_050"),
    ("ghostnetv2", "ghostnetv2_100"),
    ("rexnet", "rexnet_100"),
    ("repvgg", "repvgg_a0"),
    ("cspnet", "cs3darknet_s"),
    ("darknet", "darknet17"),
    ("dla", "dla46_c"),
    ("hrnet", "hrnet_w18_small"),
    ("mixnet", "mixnet_s"),
    ("dpn", "dpn48b"),
    ("inception", "inception_v3"),
    ("inception_v4", "inception_v4"),
    ("inception_resnet", "inception_resnet_v2"),
    ("xception", "xception41"),
    ("res2net", "res2net50_48w_2s"),
    ("resnest", "resnest14d"),
    ("resnetv2", "resnetv2_18"),
    ("seresnet", "seresnet18"),
    ("ecaresnet", "ecaresnet26t"),
    ("skresnet", "skresnet18"),
    ("gcresnet", "gcresnet33ts"),
    ("nfnet", "nf_regnet_b0"),
    ("tresnet", "tresnet_m"),
    ("selecsls", "selecsls42b"),
    ("hardcorenas", "hardcorenas_a"),
    ("fbnet", "fbnetc_100"),
    ("fbnetv3", "fbnetv3_b"),
    ("lcnet", "lcnet_035"),
    ("mnasnet", "mnasnet_small"),
    ("spnasnet", "spnasnet_100"),
    ("tinynet", "tinynet_e"),
    ("efficientvit", "efficientvit_b0"),
    ("gernet", "gernet_s"),
    ("hgnet", "hgnetv2_b0"),
    ("repghost", "repghostnet_050"),
    ("mobileone", "mobileone_s0"),
    ("repvit", "repvit_m0_9"),
    ("vovnet", "ese_vovnet19b_slim_dw"),
    ("fastvit", "fastvit_t8"),
    ("edgenext", "edgenext_xx_small"),
    ("inception_next", "inception_next_atto"),
    ("starnet", "starnet_s050"),
    ("fasternet", "fasternet_t0"),
    ("mambaout", "mambaout_femto"),
    ("poolformer", "poolformer_s12"),
    ("rdnet", "rdnet_tiny"),
    ("convmixer", "convmixer_768_32"),
    ("halonet", "halonet26t"),
    ("botnet", "botnet26t_256"),
    ("lambda_resnet", "lambda_resnet26t"),
]
TRANSFORMER_MODELS: list[tuple[str, str]] = [
    ("vit", "vit_tiny_patch16_224"),
    ("deit", "deit_tiny_patch16_224"),
    ("deit_distilled", "deit_tiny_distilled_patch16_224"),
    ("deit3", "deit3_small_patch16_224"),
    ("vit_registers", "vit_dwee_patch16_reg1_gap_256"),
    ("flexivit", "flexivit_small"),
    ("beit", "beit_base_patch16_224"),
    ("eva02", "eva02_tiny_patch14_224"),
    ("cait", "cait_xxs24_224"),
    ("xcit", "xcit_nano_12_p16_224"),
    ("convit", "convit_tiny"),
    ("tnt", "tnt_s_patch16_224"),
    ("crossvit", "crossvit_tiny_240"),
    ("volo", "volo_d1_224"),
    ("pit", "pit_ti_224"),
    ("levit", "levit_128s"),
    ("swin", "swin_tiny_patch4_window7_224"),
    ("swinv2", "swinv2_tiny_window8_256"),
    ("swinv2_cr", "swinv2_cr_tiny_224"),
    ("pvt_v2", "pvt_v2_b0"),
    ("twins", "twins_svt_small"),
    ("mvitv2", "mvitv2_tiny"),
    ("nest", "nest_tiny"),
    ("davit", "davit_tiny"),
    ("gcvit", "gcvit_xxtiny"),
    ("hiera", "hiera_tiny_224"),
    ("tiny_vit", "tiny_vit_5m_224"),
]
HYBRID_MODELS: list[tuple[str, str]] = [
    ("mobilevit", "mobilevit_xxs"),
    ("mobilevitv2", "mobilevitv2_050"),
    ("efficientformer", "efficientformer_l1"),
    ("efficientformerv2", "efficientformerv2_s0"),
    ("coatnet", "coatnet_nano_rw_224"),
    ("maxvit", "maxvit_pico_rw_256"),
    ("focalnet", "focalnet_tiny_srf"),
    ("coat", "coat_tiny"),
    ("visformer", "visformer_tiny"),
    ("vit_hybrid", "vit_small_r26_s32_224"),
    ("nextvit", "nextvit_small"),
    ("caformer", "caformer_s18"),
    ("vitamin", "vitamin_small_224"),
]
MLP_MODELS: list[tuple[str, str]] = [
    ("mlp_mixer", "mixer_s16_224"),
    ("resmlp", "resmlp_12_224"),
    ("gmlp", "gmlp_ti16_224"),
    ("sequencer", "sequencer2d_s"),
]
GROUPS: dict[str, list[tuple[str, str]]] = {
    "cnn": CNN_MODELS,
    "transformer": TRANSFORMER_MODELS,
    "hybrid": HYBRID_MODELS,
    "mlp": MLP_MODELS,
}


@dataclass
class Row:
    """One model in one direction: what was built and how it went."""

    group: str
    family: str
    model: str
    direction: str  # "teacher": the model teaches the small student; "student": the big teacher teaches it
    kwargs: dict[str, Any]
    input_size: tuple[int, int, int]
    ok: bool = False
    reason: str = ""
    teacher_blocks: list[str] = field(default_factory=list)
    student_blocks: list[str] = field(default_factory=list)
    transforms: list[str] = field(default_factory=list)
    equivalence_error: float | None = None
    student_error: float | None = None
    build_s: float | None = None
    fwd_bwd_s: float | None = None


def first_line(exc: BaseException) -> str:
    """The exception's class and first message line: enough to tell failures apart in a table."""
    lines = str(exc).strip().splitlines()
    message = lines[0] if lines else ""
    return f"{type(exc).__name__}: {message}"[:300]


class CheckFailed(Exception):
    """A check of the benchmark's own (beyond compile_spec's verification) failed."""


def student_error(result: BuildResult) -> float:
    """Max abs difference between the student run block by block and the student model (eval)."""
    student = result.student
    blocks = BlockNet(student.parts[:-1], student.parts[-1]).eval()
    x = torch.randn(1, *result.spec.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return (blocks(x) - student.model.eval()(x)).abs().max().item()


def eval_is_deterministic(sftn: SFTN, input_size: tuple[int, ...]) -> bool:
    """Two eval-mode runs on one input must agree exactly, teacher and branches."""
    sftn.eval()
    x = torch.randn(2, *input_size)
    with torch.no_grad():
        first, second = sftn(x), sftn(x)
    pairs = zip([first.teacher_logits, *first.branch_logits], [second.teacher_logits, *second.branch_logits])
    return all(torch.equal(a, b) for a, b in pairs)


def run_one(group: str, family: str, model: str, direction: str, args: argparse.Namespace) -> Row:
    """Compile, verify and train one step; every exception becomes the row's reason."""
    side = MIN_INPUT.get(model, 0)
    input_size = tuple(args.input_size) if min(args.input_size[1:]) >= side else (args.input_size[0], side, side)
    kwargs = {"img_size": input_size[1]} if get_pretrained_cfg_value(model, "fixed_input_size") else {}
    row = Row(group, family, model, direction, kwargs, input_size)
    network = {"model": f"timm:{model}", "kwargs": kwargs, "blocks": "auto"}
    other_model = args.student if direction == "teacher" else args.teacher
    other = {"model": other_model, "blocks": "auto"}
    teacher, student = (network, other) if direction == "teacher" else (other, network)
    spec = spec_from_dict(
        {
            "name": f"{model}_{direction}",
            "num_classes": args.num_classes,
            "input_size": list(input_size),
            "teacher": teacher,
            "student": student,
        },
        source=f"{model} as {direction}",
    )
    try:
        start = time.perf_counter()
        result = splicer.compile_spec(spec, verify=True)
        row.build_s = round(time.perf_counter() - start, 2)
        row.teacher_blocks = result.teacher.block_labels
        row.student_blocks = result.student.block_labels
        row.transforms = [p.kind for p in result.transforms]
        row.equivalence_error = result.equivalence_error
        sftn = result.sftn.train()
        start = time.perf_counter()
        out = sftn(torch.randn(args.batch, *input_size))
        loss = out.teacher_logits.logsumexp(1).mean() + sum(z.logsumexp(1).mean() for z in out.branch_logits)
        loss.backward()
        row.fwd_bwd_s = round(time.perf_counter() - start, 2)
        row.student_error = student_error(result)
        if row.student_error > TOLERANCE:
            raise CheckFailed(
                f"the student's blocks run in sequence differ from the student model by {row.student_error:.3g} "
                "(eval mode)"
            )
        if not eval_is_deterministic(sftn, input_size):
            raise CheckFailed("eval-mode SFTN outputs differ between two runs on one input (a training-mode op is traced in)")
        row.ok = True
    except Exception as exc:  # noqa: BLE001 - the benchmark records every failure and goes on
        row.reason = first_line(exc)
    finally:
        gc.collect()
    return row


def summary(rows: list[Row]) -> list[str]:
    """Families that built, per group and direction: a family counts once per direction."""
    lines = []
    for group in GROUPS:
        for direction in ("teacher", "student"):
            chosen = [r for r in rows if r.group == group and r.direction == direction]
            if chosen:
                ok = sum(r.ok for r in chosen)
                lines.append(f"{group} families, as {direction}: {ok}/{len(chosen)} ok ({100 * ok / len(chosen):.0f}%)")
        both = {r.family for r in rows if r.group == group}
        if both:
            ok_both = [f for f in both if all(r.ok for r in rows if r.family == f)]
            share = 100 * len(ok_both) / len(both)
            lines.append(f"{group} families ok in both directions: {len(ok_both)}/{len(both)} ({share:.0f}%)")
    return lines


def markdown(rows: list[Row], meta: dict[str, Any], meta_size: list[int]) -> str:
    """The results table with the run's provenance on top; rows at another input size say so."""
    head = [
        "# timm coverage: blocks: auto, both directions",
        "",
        *(f"- {key}: {value}" for key, value in meta.items()),
        "",
        "## Summary",
        "",
        *(f"- {line}" for line in summary(rows)),
        "",
        "## Results",
        "",
        "direction `teacher`: the model is the teacher of the small student; `student`: the large teacher teaches the model.",
        "",
        "| group | family | model | direction | result | teacher blocks | student blocks | transforms | build s | fwd+bwd s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    body = []
    for r in rows:
        size = "" if list(r.input_size) == list(meta_size) else f" (input {'x'.join(map(str, r.input_size))})"
        model = r.model + "".join(f" ({k}={v})" for k, v in r.kwargs.items()) + size
        result = "ok" if r.ok else f"failed: {r.reason}".replace("|", "\\|")
        body.append(
            f"| {r.group} | {r.family} | {model} | {r.direction} | {result} | {', '.join(r.teacher_blocks)} | "
            f"{', '.join(r.student_blocks)} | {', '.join(r.transforms)} | {r.build_s if r.build_s is not None else ''} | "
            f"{r.fwd_bwd_s if r.fwd_bwd_s is not None else ''} |"
        )
    return "\n".join(head + body) + "\n"


def load_stored(path: Path) -> tuple[dict[str, Any], list[Row]]:
    """The stored run's meta and rows (empty when there is none)."""
    if not path.is_file():
        return {}, []
    payload = json.loads(path.read_text())
    return payload["meta"], [Row(**{**r, "input_size": tuple(r["input_size"])}) for r in payload["rows"]]


def merge_stored(rows: list[Row], stored: tuple, meta: dict[str, Any]) -> list[Row]:
    """The stored rows of models not run now, with the new rows, in the benchmark's order.

    Which run the kept rows come from is added to ``meta`` under ``kept rows from``.
    """
    if not stored or not stored[1]:
        return rows
    old_meta, old_rows = stored
    run = {(r.model, r.direction) for r in rows}
    kept = [r for r in old_rows if (r.model, r.direction) not in run]
    if kept:
        earlier = f"; {old_meta['kept rows from']}" if "kept rows from" in old_meta else ""
        meta["kept rows from"] = f"{old_meta.get('command', '?')} ({old_meta.get('date', '?')}): {len(kept)} rows{earlier}"
    order = {model: i for i, model in enumerate(m for members in GROUPS.values() for _, m in members)}
    return sorted(kept + rows, key=lambda r: (order.get(r.model, len(order)), r.direction != "teacher"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-size", type=int, nargs=3, default=[3, 96, 96], metavar=("C", "H", "W"))
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2, help="batch size of the forward + backward check")
    parser.add_argument("--teacher", default="timm:resnet50", help="teacher when the family model is the student")
    parser.add_argument("--student", default="timm:resnet18", help="student when the family model is the teacher")
    parser.add_argument("--families", nargs="*", help="only these families (default: all)")
    parser.add_argument("--groups", nargs="*", choices=list(GROUPS), help="only these groups (default: all)")
    parser.add_argument(
        "--no-keep", action="store_true", help="drop the stored rows of models not run (default: keep them)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for timm_coverage.md/.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    models = [(group, *m) for group, members in GROUPS.items() if not args.groups or group in args.groups for m in members]
    if args.families:
        models = [m for m in models if m[1] in args.families]
    start = time.perf_counter()
    stored = [] if args.no_keep else load_stored(args.out / "timm_coverage.json")
    rows: list[Row] = []
    for done, (group, family, model) in enumerate(models, start=1):
        for direction in ("teacher", "student"):
            row = run_one(group, family, model, direction, args)
            rows.append(row)
            status = "ok" if row.ok else f"FAILED {row.reason}"
            timing = f"build {row.build_s}s fwd+bwd {row.fwd_bwd_s}s" if row.ok else ""
            print(f"{family:18} {model:30} {direction:8} {status}  {timing}", flush=True)
        # Written after every model, so an interrupted run keeps what it measured.
        write_results(args, argv, rows, stored, start, f"{done} of {len(models)}")
    for line in summary(merge_stored(rows, stored, {})):
        print(line)


def write_results(
    args: argparse.Namespace, argv: list[str] | None, rows: list[Row], stored: tuple, start: float, progress: str
) -> None:
    meta = {
        **provenance(argv, args.threads),
        "input": "x".join(map(str, args.input_size)) + f", batch {args.batch}, {args.num_classes} classes "
        "(larger where a model needs it, see the model column)",
        "pairs": f"model as teacher vs {args.student}; {args.teacher} as teacher vs model",
        "models run": progress,
        "total seconds": round(time.perf_counter() - start, 1),
    }
    rows = merge_stored(rows, stored, meta)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "timm_coverage.md").write_text(markdown(rows, meta, args.input_size))
    payload = {"meta": meta, "summary": summary(rows), "rows": [asdict(r) for r in rows]}
    (args.out / "timm_coverage.json").write_text(json.dumps(payload, indent=1) + "\n")

if __name__ == "__main__":
    main()
