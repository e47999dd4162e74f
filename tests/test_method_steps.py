"""benchmarks/method_steps.py end to end on the toy networks (its real run on the proof_cpu
networks takes some 15 minutes: see benchmarks/README.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from splicer.errors import SplicerError
from splicer.training import plots, stage2
from tests.conftest import toy_spec
from tests.test_proof_benchmark import benchmark_module

pytestmark = pytest.mark.usefixtures("one_thread")


def test_steps_are_measured_per_round_against_kds_in_the_same_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    spec = tmp_path / "toy.yaml"
    settings = toy_spec(train={"batch_size": 16}, distill={"options": {"crd": {"negatives": 40}}})
    spec.write_text(yaml.safe_dump(settings, sort_keys=False))
    monkeypatch.setattr(plots, "plot_curves", lambda *args, **kwargs: None)  # each run's PNG: not the point here
    monkeypatch.setattr(sys, "argv", ["benchmarks/method_steps.py"])
    real_distill = stage2.distill

    def sskd_fails_in_round0(spec, teacher, method, out, **kwargs):
        if method == "sskd" and "round0" in str(out):
            raise SplicerError("the head phase diverged")
        return real_distill(spec, teacher, method, out=out, **kwargs)

    monkeypatch.setattr(stage2, "distill", sskd_fails_in_round0)
    benchmark = benchmark_module("method_steps")
    runs = tmp_path / "runs"
    argv = ["--spec", str(spec), "--methods", "crd,kd,sskd", "--steps", "3", "--rounds", "2", "--runs", str(runs),
            "--out", str(tmp_path / "results"), "--name", "steps_toy"]  # fmt: skip
    benchmark.main(argv)

    stored = json.loads((tmp_path / "results" / "steps_toy.json").read_text())
    assert stored["command"].startswith("python benchmarks/method_steps.py --spec ")
    assert list(stored["methods"]) == ["crd", "kd", "sskd"] and stored["rounds"] == 2
    sskd = stored["methods"]["sskd"]["standard"]
    assert sskd["step_seconds_per_round"][0] is None and sskd["error"] == "the head phase diverged"
    assert sskd["relative_to_kd"] == sskd["relative_to_kd_per_round"][1] > 0  # the round that finished
    for method, by_kind in stored["methods"].items():
        for kind, entry in by_kind.items():
            if method == "sskd":
                continue
            seconds, ratios = entry["step_seconds_per_round"], entry["relative_to_kd_per_round"]
            assert len(seconds) == 2 and all(s > 0 for s in seconds)
            kd = stored["methods"]["kd"][kind]["step_seconds_per_round"]
            assert ratios == [s / k for s, k in zip(seconds, kd)] and entry["range"] == [min(ratios), max(ratios)]
            assert entry["relative_to_kd"] == pytest.approx(sum(ratios) / 2)  # the median of two
            assert entry["step_ms"] == pytest.approx(1000 * sum(seconds) / 2)
    assert stored["methods"]["kd"]["sftn"]["relative_to_kd_per_round"] == [1.0, 1.0]
    folder = runs / "toy" / "method_steps"
    for name in ("kd-from-standard", "sskd-from-sftn"):  # one epoch of --steps steps
        records = (folder / "round1" / name / "metrics.jsonl").read_text().splitlines()
        assert len(records) == 1 and yaml.safe_load((folder / "round1" / name / "spec.yaml").read_text())[
            "data"]["synthetic_train"] == 3 * 16  # fmt: skip
    crd = yaml.safe_load((folder / "round0" / "crd-from-standard" / "spec.yaml").read_text())["data"]["synthetic_train"]
    assert crd > 3 * 16 and crd - -(-crd // 10) >= 40  # all 40 negatives fit outside the largest class
    table = (tmp_path / "results" / "steps_toy.md").read_text()
    assert "| CRD |" in table and "x (" in table
    assert "- SSKD from the standard teacher: the head phase diverged" in table
