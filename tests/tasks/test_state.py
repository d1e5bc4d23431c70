from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tasks.errors import ConfigError
from tasks.state import RunDir, atomic_write, cleanup_state, validate_run_key


def test_run_key_validation() -> None:
    assert validate_run_key("nightly-2026-01-01") == "nightly-2026-01-01"
    for bad in ["", "../etc", "a/b", "x" * 200, "-leading"]:
        with pytest.raises(ConfigError, match="run_key"):
            validate_run_key(bad)


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_write(target) as fh:
        fh.write("half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_write(target) as fh:
        fh.write("whole")
    assert target.read_text() == "whole"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_cleanup_by_age_and_by_run_key(state_dir: Path) -> None:
    old = RunDir.for_run("batch-map", "old", state_dir)
    new = RunDir.for_run("batch-map", "new", state_dir)
    (old.root / "summary.json").write_text("{}")
    (new.root / "summary.json").write_text("{}")
    past = time.time() - 40 * 86400
    for p in [old.root / "summary.json", old.root]:
        os.utime(p, (past, past))
    with pytest.raises(ConfigError):
        cleanup_state(state_dir=state_dir)
    assert cleanup_state(older_than_days=30, state_dir=state_dir) == [old.root]
    assert not old.root.exists() and new.root.exists()
    assert cleanup_state(run_key="new", state_dir=state_dir) == [new.root]
