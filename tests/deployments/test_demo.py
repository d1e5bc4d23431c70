"""`make demo` as a user runs it (against the session's Prefect server): every pipeline completes, the batch
handler and summary.results() are shown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_the_demo_runs_every_pipeline_to_completion(tmp_path: Path) -> None:
    env = {**os.environ, "BATCHFLOWS_STATE_DIR": str(tmp_path / "state"), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "deployments.demo"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=280)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert "5/5 pipelines completed" in out.stdout, out.stdout[-3000:]
    assert "batch-map per='batch'" in out.stdout and "first result row (summary.results())" in out.stdout
    assert str(tmp_path) in out.stdout  # the state dir it was given, said where everything is
