"""The run key's lock: refused while its holder lives (naming it), taken over once the holder is gone."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

from tasks.core.runlock import OutputInUse, OutputLock, RunLock, RunLocked

ROOT = Path(__file__).resolve().parents[3]
T = TypeVar("T")


@contextmanager
def held_elsewhere(acquire: str) -> Iterator[subprocess.Popen[str]]:
    """Another process holding a lock (``acquire``: the Python expression that takes it); SIGKILLed on exit."""
    code = ("import time; from pathlib import Path; from tasks.core.runlock import OutputLock, RunLock; "
            f"held = {acquire}; print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def taken_when_free(take: Callable[[], T]) -> T:
    """``take()`` once the kernel has dropped a killed holder's flock (within 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return take()
        except RunLocked:  # OutputInUse too
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_a_second_holder_is_refused_with_the_holders_name(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    with RunLock(path, flow="batch-map", run_key="k", flow_run_id="run-1"):
        with pytest.raises(RunLocked) as refused:
            RunLock(path, flow="batch-map", run_key="k", flow_run_id="run-2").acquire()
        text = str(refused.value)
        assert "run_key 'k'" in text and "flow run run-1" in text and "pid" in text and "another run_key" in text
    with RunLock(path, flow="batch-map", run_key="k", flow_run_id="run-3") as again:
        assert again.previous is None  # released cleanly: no takeover


def test_a_killed_holder_is_taken_over_and_named(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    with held_elsewhere(f"RunLock(Path({str(path)!r}), flow='f', run_key='k', flow_run_id='dead-run').acquire()"
                        ) as holder, pytest.raises(RunLocked, match="dead-run"):
        RunLock(path, flow="f", run_key="k", flow_run_id="new").acquire()
    lock = taken_when_free(lambda: RunLock(path, flow="f", run_key="k", flow_run_id="new").acquire())
    assert lock.previous is not None and lock.previous.flow_run_id == "dead-run" and lock.previous.pid == holder.pid
    lock.release()


def test_an_output_folder_is_held_by_one_run_however_its_path_is_written(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (tmp_path / "out").mkdir()
    held = (f"OutputLock({str(tmp_path / 'out')!r}, state_dir=Path({str(state)!r}), flow='batch-map', "
            "run_key='first', flow_run_id='run-1').acquire()")
    with held_elsewhere(held) as holder:
        with pytest.raises(OutputInUse) as refused:  # the same folder, written another way
            OutputLock(f"{tmp_path}/./out/", state_dir=state, flow="api-bulk", run_key="second", flow_run_id=None
                       ).acquire()
        text = str(refused.value)
        assert "batch-map run_key 'first'" in text and f"pid {holder.pid}" in text and "run-1" in text
        assert "run_key 'second'" in text and "own output folder" in text
        with OutputLock(str(tmp_path / "other"), state_dir=state, flow="f", run_key="third", flow_run_id=None):
            pass  # another folder is free
    lock = taken_when_free(lambda: OutputLock(str(tmp_path / "out"), state_dir=state, flow="f", run_key="second",
                                              flow_run_id=None).acquire())  # SIGKILLed: the folder is free again
    lock.release()
