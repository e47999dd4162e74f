"""Stored benchmark results stay true on another machine: no absolute paths, and the commit that made them."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import REPO
from tests.test_proof_benchmark import benchmark_module

RESULTS = sorted((REPO / "benchmarks" / "results").rglob("*.*"))

# A path from the file-system root (/work/..., /home/...), a home folder (~/...) or a drive (C:\...),
# starting a token; "1/5/15 min" and "150/180/210" do not count, as a word character precedes their slash.
ABSOLUTE_PATH = re.compile(r"(?:^|[\s\"'`(\[=])(/[\w.-]+/[\w./-]*|~/[\w./-]+|[A-Za-z]:\\[\w\\.-]+)")


def test_there_are_stored_results():
    assert any(path.suffix == ".json" for path in RESULTS) and any(path.suffix == ".md" for path in RESULTS)


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_stored_result_names_no_absolute_path_and_records_its_commit(path):
    text = path.read_text()
    found = ABSOLUTE_PATH.findall(text)
    assert not found, f"{path.name} names absolute paths, e.g. {found[:3]}; store them relative to the repository"
    assert re.search(r"commit\W+(unknown|[0-9a-f]{40})", text, re.IGNORECASE), f"{path.name} does not record its commit"


def test_the_path_check_catches_machine_paths():
    for text in ('"run": "/work/main/runs/x"', "- seed 0: `/home/me/runs/seed0`", "root ~/data/cifar", r"at C:\runs\a"):
        assert ABSOLUTE_PATH.search(text), text
    for text in ("load average (1/5/15 min)", "lr x0.1 at 150/180/210", "runs/proof_cpu/seed0", "../shared/data"):
        assert not ABSOLUTE_PATH.search(text), text


def test_provenance_marks_code_changes_dirty_but_not_stored_results(tmp_path, monkeypatch):
    provenance = benchmark_module("provenance")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "code.py").write_text("a = 1\n")
    (tmp_path / "benchmarks" / "results" / "table.md").write_text("old\n")
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "x"]):
        subprocess.run([*git, *args], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    monkeypatch.setattr(provenance, "REPO", tmp_path)
    assert provenance.git_commit() == head
    (tmp_path / "benchmarks" / "results" / "table.md").write_text("rewritten as the benchmark runs\n")
    assert provenance.git_commit() == head
    (tmp_path / "code.py").write_text("a = 2\n")
    assert provenance.git_commit() == head + "+dirty"


def test_provenance_names_relative_folders(tmp_path):
    provenance = benchmark_module("provenance")
    assert provenance.repo_relative(REPO / "runs" / "proof" / "seed0") == "runs/proof/seed0"
    assert not provenance.repo_relative(tmp_path / "runs").startswith("/")
    script = str(REPO / "benchmarks" / "proof.py")
    command = provenance.portable_command(script, ["--runs", str(REPO / "runs"), "--seeds", "0"])
    assert command == "python benchmarks/proof.py --runs runs --seeds 0"
    assert provenance.portable_command("benchmarks/proof.py", [f"--out={REPO}/x"]).endswith(" --out=x")
    listed = provenance.portable_command("benchmarks/proof.py", ["--combine", f"{REPO}/a.json,{REPO}/b.json,c.json"])
    assert listed.endswith(" --combine a.json,b.json,c.json")  # each path of a comma-separated list


def test_proof_report_stores_run_folders_relative_to_the_repository():
    proof = benchmark_module("proof")
    sftn = str(REPO / "runs" / "p" / "seed0" / "sftn")
    report = {
        "folder": str(REPO / "runs" / "p"),
        "runs": {"0": {"sftn": sftn}},
        "seed_results": {"0": {"sftn": {"run": sftn, "final": {"top1": 50.0}}}},
    }
    stored = proof.portable_report(report)
    assert stored["folder"] == "runs/p" and stored["runs"]["0"]["sftn"] == "runs/p/seed0/sftn"
    assert stored["seed_results"]["0"]["sftn"] == {"run": "runs/p/seed0/sftn", "final": {"top1": 50.0}}
    assert report["folder"] == str(REPO / "runs" / "p")  # the live report, which reads summaries, is unchanged
