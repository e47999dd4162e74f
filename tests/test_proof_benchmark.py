"""The proof benchmark's own plumbing (its real runs take minutes to hours: see benchmarks/)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import splicer
from tests.conftest import REPO

PROOF_SPECS = sorted((REPO / "benchmarks" / "specs").glob("proof_*.yaml"))


@pytest.mark.parametrize("path", PROOF_SPECS, ids=[p.stem for p in PROOF_SPECS])
def test_proof_specs_compile(path):
    result = splicer.compile_spec(path, verify=False)
    assert result.spec.num_classes == 10
    assert [p.kind for p in result.transforms] == ["equal"] * (len(result.transforms))


def test_proof_help_and_missing_data(tmp_path):
    script = REPO / "benchmarks" / "proof.py"
    shown = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, check=True)
    assert "--validation" in shown.stdout and "--config" in shown.stdout
    missing = subprocess.run(
        [sys.executable, str(script), "--data-root", str(tmp_path / "nowhere"), "--seeds", "0", "--runs", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0
    assert "proof.py:" in missing.stderr and "nowhere" in missing.stderr
    assert "Traceback" not in missing.stderr
