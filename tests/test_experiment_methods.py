"""`splicer run --methods all`: the paper's tables 1-2 with every registered method, and a
failing method reported in its own row while the others complete."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from splicer.cli.main import app
from splicer.errors import SplicerError
from splicer.spec import spec_from_dict
from splicer.training import plots
from splicer.experiments.experiment import (
    ERROR_FILE,
    build_report,
    merge_reports,
    expand_methods,
    paired_delta,
    render_markdown,
    run_experiment,
)
from splicer.training.methods import METHODS, DistillMethod
from tests.conftest import toy_spec

runner = CliRunner()


class Broken(DistillMethod):
    """A registered method whose every step raises, as a bug in a new method would."""

    def forward(self, *args, **kwargs):
        raise RuntimeError("boom in the broken method")


def tiny_spec() -> dict:
    return toy_spec(
        data={"dataset": "synthetic", "synthetic_train": 32, "synthetic_test": 16},
        train={"epochs": 1, "batch_size": 32, "device": "cpu"},
    )


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`splicer run --methods all` with a broken method registered next to the real ones.

    Each run's own curves.png is skipped (about a second of plotting per run; test_training
    checks them), the experiment's comparison figure is drawn.
    """
    folder = tmp_path_factory.mktemp("all")
    spec = folder / "toy.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec(), sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(METHODS, "broken", Broken)
        patch.setattr(plots, "plot_curves", lambda *args, **kwargs: None)
        result = runner.invoke(
            app, ["run", str(spec), "--methods", "all", "--seeds", "0", "--out", str(folder / "out"), "-q"]
        )
    assert result.exit_code == 1, result.output  # the report is written, the failure still shows in the status
    return folder / "out", result.output


def test_all_expands_to_every_registered_method_in_the_papers_order(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(METHODS, "broken", Broken)
    expanded = expand_methods(["all"])
    assert expanded[:3] == ["kd", "fitnets", "at"] and set(expanded) == set(METHODS)
    assert expanded.index("sp") < expanded.index("dkd") < expanded.index("broken")
    assert expand_methods(["at", "all"]).count("at") == 1


def test_methods_all_produces_the_full_table(experiment: tuple[Path, str]):
    out, _ = experiment
    report = json.loads((out / "report.json").read_text())
    real = sorted(set(METHODS) - {"broken"})
    assert set(report["methods"]) == set(real) | {"broken"}
    for method in real:
        row = report["methods"][method]
        assert row["errors"] == []
        assert row["delta"] == pytest.approx(row["sftn"]["mean"] - row["standard"]["mean"])
        assert row["wall_seconds"] > 0 and all(row["step_seconds"][kind] > 0 for kind in ("standard", "sftn"))
        assert (out / "seed0" / f"{method}-from-sftn" / "summary.json").is_file()
    assert sorted(report["mean_delta"]["methods"]) == real
    deltas = [report["methods"][m]["delta"] for m in real]
    assert report["mean_delta"]["mean"] == pytest.approx(sum(deltas) / len(deltas))
    assert report["best"]["sftn"] == max(report["methods"][m]["sftn"]["mean"] for m in real)
    markdown = (out / "report.md").read_text()
    rows = ("| Teacher accuracy |", "| Student accuracy w/o KD |", "| Best |", f"| Mean Δ over {len(real)} methods |")
    for row in rows:
        assert row in markdown, row
    for title in ("KD", "FitNets", "AT", "SP", "VID", "RKD", "PKT", "DKD"):
        assert f"\n| {title} | " in markdown, title


def test_a_failing_method_is_reported_in_its_row_and_the_others_go_on(experiment: tuple[Path, str]):
    out, output = experiment
    report = json.loads((out / "report.json").read_text())
    broken = report["methods"]["broken"]
    assert broken["standard"] is None and broken["sftn"] is None and broken["delta"] is None
    assert broken["errors"] == [
        "seed 0, standard teacher: RuntimeError: boom in the broken method",
        "seed 0, sftn teacher: RuntimeError: boom in the broken method",
    ]
    assert "broken" not in report["mean_delta"]["methods"]
    assert "boom in the broken method" in (out / "seed0" / "broken-from-sftn" / "error.txt").read_text()
    row = next(line for line in (out / "report.md").read_text().splitlines() if line.startswith("| BROKEN |"))
    assert "| failed | failed |" in row and "RuntimeError: boom in the broken method" in row
    assert "broken from the standard teacher failed" in output
    assert "2 distillation run(s) failed" in output
    assert (out / "curves.png").is_file()


def test_report_with_seeds_and_a_failure_in_one_seed_only(tmp_path: Path):
    """Built from summaries: a cell is scored only when every seed finished; the others are kept.
    A method's time counts its phases' (here AT from the standard teacher, seed 1: a 4 s phase)."""

    def done(top1: float, seconds: float = 10.0, phases: float = 0.0) -> dict:
        return {"final": {"top1": top1}, "wall_seconds": seconds, "step_seconds_median": seconds / 100,
                "similarity": {"kl": 0.1, "cka": 0.9}, "run": str(tmp_path / "plain"), "eval_split": "test",
                "phases_wall_seconds": phases}  # fmt: skip

    results = {
        seed: {
            "standard": done(70.0 + seed),
            "sftn": done(69.0 + seed),
            "student": done(60.0),
            "kd-from-standard": done(65.0 + seed),
            "kd-from-sftn": done(66.0 + seed, 20.0),
            "at-from-standard": done(64.0, phases=4.0 if seed == 1 else 0.0),
            "at-from-sftn": done(67.0) if seed == 0 else {"run": "r", "error": "diverged"},
        }
        for seed in (0, 1)
    }
    spec = spec_from_dict(tiny_spec())
    report = build_report(spec, ["kd", "at"], [0, 1], results)
    kd, at = report["methods"]["kd"], report["methods"]["at"]
    assert kd["standard"]["mean"] == 65.5 and kd["sftn"]["std"] == pytest.approx(0.7071, rel=1e-3)
    assert kd["delta"] == pytest.approx(1.0) and kd["wall_seconds"] == 15.0
    assert at["standard"]["mean"] == 64.0 and at["sftn"] is None and at["delta"] is None
    assert at["errors"] == ["seed 1, sftn teacher: diverged"]
    assert report["best"] == {"standard": 65.5, "sftn": 66.5, "delta": 1.0}
    assert report["mean_delta"] == {"mean": 1.0, "methods": ["kd"]}
    markdown = render_markdown(report)
    assert "| KD | 65.50 ± 0.71 | 66.50 ± 0.71 | +1.00 ± 0.00 | 15.0 s | |" in markdown
    assert "| Teacher accuracy | 70.50 ± 0.71 | 69.50 ± 0.71 | -1.00 ± 0.00 | |" in markdown
    assert at["wall_seconds"] == pytest.approx((10 + 14 + 10) / 3)  # both AT-from-standard runs, one SFTN
    assert "| AT | 64.00 ± 0.00 | failed |  | 11.3 s | seed 1, sftn teacher: diverged |" in markdown


def test_unknown_methods_and_options_fail_before_any_training(tmp_path: Path):
    with pytest.raises(SplicerError, match="unknown method 'nope'.*Valid: all, "):
        run_experiment(spec_from_dict(tiny_spec()), ["nope"], [0], out=tmp_path / "a")
    typo = spec_from_dict({**tiny_spec(), "distill": {"options": {"dkd": {"betta": 6}}}})
    with pytest.raises(SplicerError, match=r"distill\.options\.dkd\.betta.*valid fields of dkd: .*beta"):
        run_experiment(typo, ["kd", "dkd"], [0], out=tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_similarity_is_stored_and_measured_again_only_for_a_changed_checkpoint(tmp_path: Path, monkeypatch):
    """Rewriting a table from finished runs reuses each student's KL and CKA; a new teacher checkpoint does not."""
    from splicer.experiments import experiment

    spec = spec_from_dict(tiny_spec())
    first = run_experiment(spec, ["kd"], [0], out=tmp_path, resume=False, quiet=True)
    measured: list[str] = []
    real = experiment.similarity
    monkeypatch.setattr(experiment, "similarity", lambda *args: measured.append("x") or real(*args))
    again = run_experiment(spec, ["kd"], [0], out=tmp_path, resume=True, quiet=True)
    assert measured == []
    assert again["methods"] == first["methods"] and again["similarity"] == first["similarity"]
    teacher = tmp_path / "seed0" / "sftn" / "last.pt"
    os.utime(teacher, ns=(teacher.stat().st_atime_ns, teacher.stat().st_mtime_ns + 10**9))
    run_experiment(spec, ["kd"], [0], out=tmp_path, resume=True, quiet=True)
    assert measured == ["x"]  # kd from the SFTN only; kd from the standard teacher is reused
    stored = json.loads((tmp_path / "seed0" / "kd-from-sftn" / "similarity.json").read_text())
    assert set(stored["score"]) == {"kl", "cka"} and stored["key"]["teacher"].endswith("sftn/last.pt")


def test_reports_of_single_seeds_merge_into_the_report_of_all_seeds(tmp_path: Path):
    """Seeds run apart (one per machine or session) give, merged, the report the experiment gives over
    the same runs at once: scores, paired differences, similarity, time. A seed split by methods repeats its
    teachers, which must score the same; a distillation twice or a method missing a seed is refused."""
    spec = spec_from_dict(tiny_spec())
    apart = [run_experiment(spec, ["kd"], [seed], out=tmp_path / f"seed{seed}", quiet=True) for seed in (0, 1)]
    for seed in (0, 1):
        shutil.copytree(tmp_path / f"seed{seed}" / f"seed{seed}", tmp_path / "together" / f"seed{seed}")
    together = run_experiment(spec, ["kd"], [0, 1], out=tmp_path / "together", resume=True, quiet=True)
    merged = json.loads(json.dumps(merge_reports(spec, apart)))  # as read back from the stored JSON
    for key in ("seeds", "teacher", "teacher_seconds", "student_alone", "best", "mean_delta", "similarity"):
        assert merged[key] == together[key], key
    kd = together["methods"]["kd"]
    assert merged["methods"]["kd"]["delta_seeds"] == kd["delta_seeds"] and len(kd["delta_seeds"]["values"]) == 2
    assert merged["methods"]["kd"]["wall_seconds"] == pytest.approx(kd["wall_seconds"])
    repeated = merge_reports(spec, [_without_method(apart[0], "kd"), *apart])  # seed 0's teachers in two parts
    assert repeated["methods"] == merged["methods"] and repeated["teacher"] == merged["teacher"]
    with pytest.raises(SplicerError, match="seed 0's kd-from-standard is in two of the reports"):
        merge_reports(spec, [apart[0], apart[0]])
    with pytest.raises(SplicerError, match="every method needs every seed; missing seed 1: kd"):
        merge_reports(spec, [apart[0], _without_method(apart[1], "kd")])
    other = json.loads(json.dumps(_without_method(apart[0], "kd")))
    other["seed_results"]["0"]["standard"]["final"]["top1"] += 1
    with pytest.raises(SplicerError, match="seed 0's standard scores .* not the same run"):
        merge_reports(spec, [apart[0], other])


def _without_method(report: dict, method: str) -> dict:
    """``report`` as if ``method`` had not been run: its teachers and student alone only."""
    runs = {seed: {k: v for k, v in kinds.items() if not k.startswith(f"{method}-from-")}
            for seed, kinds in report["seed_results"].items()}  # fmt: skip
    return {**report, "methods": {}, "seed_results": runs}


def test_the_difference_is_paired_seed_by_seed():
    """Δ's spread is the std of the per-seed differences, not of either teacher's scores: a
    constant one-point gain between seeds that spread by 4 points has no spread at all."""
    standard = {"values": [60.0, 64.0, 62.0]}
    assert paired_delta(standard, {"values": [61.0, 65.0, 63.0]})["std"] == pytest.approx(0.0)
    shuffled = paired_delta(standard, {"values": [65.0, 61.0, 63.0]})
    assert shuffled["mean"] == pytest.approx(1.0) and shuffled["values"] == [5.0, -3.0, 1.0]
    assert shuffled["std"] == pytest.approx(4.0)


def test_an_experiment_moved_during_an_interrupted_distillation_resumes_in_its_new_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A resumed student recognises its teacher by weights, not by path: after the experiment folder
    is moved, `run --resume --out NEW` finishes the interrupted run with the weights of a run never
    interrupted."""
    from splicer.training import engine

    settings = tiny_spec()
    spec = spec_from_dict({**settings, "train": {**settings["train"], "epochs": 2}})
    run_experiment(spec, ["kd"], [0], out=tmp_path / "straight", quiet=True)
    real_save = engine.save_atomic

    def killed_before_the_students_second_epoch(payload: dict, path: Path) -> None:
        if path.parent.name == "kd-from-standard" and payload["epoch"] == 2:
            raise RuntimeError("killed")
        real_save(payload, path)

    with monkeypatch.context() as patch:
        patch.setattr(engine, "save_atomic", killed_before_the_students_second_epoch)
        interrupted = run_experiment(spec, ["kd"], [0], out=tmp_path / "first", quiet=True)
    assert interrupted["methods"]["kd"]["standard"] is None and interrupted["methods"]["kd"]["sftn"] is not None
    shutil.move(tmp_path / "first", tmp_path / "moved")
    resumed = run_experiment(spec, ["kd"], [0], out=tmp_path / "moved", resume=True, quiet=True)
    run = tmp_path / "moved" / "seed0" / "kd-from-standard"
    assert resumed["methods"]["kd"]["standard"] is not None and not (run / ERROR_FILE).exists()
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and Path(state["meta"]["teacher"]).is_relative_to(tmp_path / "moved")
    straight = torch.load(tmp_path / "straight" / "seed0" / "kd-from-standard" / "last.pt", weights_only=True)
    for name, value in straight["model"].items():
        assert torch.equal(state["model"][name], value), name
