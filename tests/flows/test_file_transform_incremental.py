"""file_transform incremental over a folder, as scheduled runs use it: only new or changed files are read,
a changed file's old parts are replaced, a failed file is taken again by the next run, a killed run's
directory is dropped by the next run, a reset replaces every part; reading ``output_dir/run-*/`` always gives every row once."""

from __future__ import annotations

import gzip
import os
import signal
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from flows.file_transform import file_transform
from tasks.core.outcomes import RunSummary
from tasks.core.runlock import OutputInUse
from tasks.core.state import _main as state_cli
from tests.faults.helpers import finish, kill, passed, wait_until
from tests.run_flow import start_flow

SCHEMA = {"id": "int64", "label": "str"}
SLOW = "tests.flows.test_file_transform:slow_identity"


def write(path: Path, ids: range, label: str = "Basic monthly") -> Path:
    path.write_text("id,label\n" + "".join(f"{i},{label} {i}\n" for i in ids))
    return path


def rows(out: Path) -> list[tuple[int, str]]:
    parts = sorted(out.glob("run-*/part-*.parquet"))
    return sorted(pl.read_parquet(parts).select("id", "label").rows()) if parts else []


def expected(ids: range, label: str = "Basic monthly") -> list[tuple[int, str]]:
    return [(i, f"{label} {i}") for i in ids]


def touch_later(path: Path) -> None:
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))


def run(src: Path | str, out: Path, **kwargs: object) -> RunSummary:
    return file_transform(str(src), str(out), schema=SCHEMA, incremental=True, raise_on_failure=False,
                          **kwargs)  # type: ignore[arg-type]


def test_only_new_or_changed_files_are_read_and_replaced(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    write(src / "a.csv", range(0, 100))
    write(src / "b.csv", range(100, 200))
    write(src / "c.csv", range(200, 300))
    first = run(src, out, chunk_bytes=1000)  # b.csv alone is several chunks: no part mixes two files
    assert first.ok and first.total == 300 and first.extra["files_new_or_changed"] == 3
    assert rows(out) == [(i, f"Basic monthly {i}") for i in range(300)]
    assert Path(first.output_path or "").name.startswith("run-")

    write(src / "b.csv", range(100, 150), label="changed")  # 50 rows now
    os.utime(src / "b.csv", ns=(time.time_ns(), time.time_ns() + 10**9))
    write(src / "d.csv", range(300, 310))
    second = run(src, out, chunk_bytes=1000)
    assert second.ok and second.total == 60 and second.extra["files_new_or_changed"] == 2
    assert second.extra["files_known_before"] == 3 and second.extra["files_known_after"] == 4
    expected = [*[(i, f"Basic monthly {i}") for i in range(100)], *[(i, f"changed {i}") for i in range(100, 150)],
                *[(i, f"Basic monthly {i}") for i in range(200, 310)]]
    assert rows(out) == expected  # b's old parts replaced: every row once

    third = run(src, out)
    assert third.ok and third.total == 0 and third.extra["files_new_or_changed"] == 0
    assert rows(out) == expected

    again = run(src, out, reset_incremental=True)
    assert again.ok and again.total == 260 and rows(out) == expected
    assert len(list(out.glob("run-*"))) == 1  # the earlier runs' parts went with the reset

    assert state_cli(["reset-incremental", "--flow", "file-transform"]) == 0
    assert run(src, out).total == 260 and rows(out) == expected  # forgotten: read again, old parts replaced


def _sorted_ids(out: Path) -> list[int]:
    return sorted(r[0] for r in rows(out))


def test_a_reset_from_the_cli_or_a_parameter_gives_every_row_once(tmp_path: Path) -> None:
    """A reset keeps the list of earlier parts: the next run replaces them (only batchflows' parts go)."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    write(src / "a.csv", range(0, 10))
    write(src / "b.csv", range(10, 20))
    assert run(src, out, run_key="r1").total == 20
    (out / "run-r1" / "notes.txt").write_text("a user's file")

    assert state_cli(["reset-incremental", "--flow", "file-transform"]) == 0
    after_cli = run(src, out, run_key="r2")
    assert after_cli.ok and after_cli.total == 20 and rows(out) == expected(range(20))
    assert not list((out / "run-r1").glob("part-*")) and (out / "run-r1" / "notes.txt").exists()

    assert state_cli(["reset-incremental", "--flow", "file-transform"]) == 0  # then a reset run before any other
    after_both = run(src, out, run_key="r3", reset_incremental=True)
    assert after_both.ok and after_both.total == 20 and rows(out) == expected(range(20))
    assert sorted(p.name for p in out.glob("run-*/part-*")) == ["part-00000.parquet", "part-00001.parquet"]
    assert {p.parent.name for p in out.glob("run-*/part-*")} == {"run-r3"}

    (src / "b.csv").unlink()
    assert run(src, out, run_key="r4", reset_incremental=True).total == 10 and rows(out) == expected(range(10))


@pytest.mark.parametrize("rerun", [{"run_key": "next"}, {"run_key": "reset", "reset_incremental": True}],
                         ids=["next-run", "same-key"])
def test_a_reset_run_killed_after_a_part_loses_no_row_and_the_rerun_gives_every_row_once(
        tmp_path: Path, rerun: dict[str, Any]) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for n in range(4):
        write(src / f"f{n}.csv", range(n * 10, n * 10 + 10))
    assert run(src, out, run_key="first", transform=SLOW).total == 40
    gate = tmp_path / "gate"
    gate.mkdir()
    env = {"BATCHFLOWS_FAILPOINTS": "tests.faults.helpers:failpoint", "BF_FAILPOINT": "chunk.after_output",
           "BF_FP_GATE_DIR": str(gate), "BF_FP_GATE_OPEN": "1"}
    params = {"source": str(src), "output_dir": str(out), "schema": SCHEMA, "incremental": True, "transform": SLOW,
              "max_concurrency": 1, "run_key": "reset", "reset_incremental": True}
    proc = start_flow("flows.file_transform:file_transform", params, env)
    wait_until(lambda: passed(gate) > 1, proc, what="the reset run's second part")  # held after its output
    kill(proc)
    assert len(list((out / "run-reset").glob("part-*.parquet"))) == 2
    assert sorted(set(_sorted_ids(out))) == list(range(40))  # killed: some rows twice, none missing

    again = start_flow("flows.file_transform:file_transform", {**params, "reset_incremental": False, **rerun})
    output = finish(again)
    assert again.returncode == 0, output[-3000:]
    assert _sorted_ids(out) == list(range(40))
    assert not (out / "run-first").exists()


def test_a_failed_file_is_taken_again_by_the_next_run(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    write(src / "a.csv", range(0, 10))
    (src / "b.csv.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    bad = run(src, out)
    assert not bad.ok and bad.extra["files_done"] == 1 and rows(out) == [(i, f"Basic monthly {i}") for i in range(10)]
    (src / "b.csv.gz").write_bytes(gzip.compress(b"id,label\n10,ten\n11,eleven\n"))
    fixed = run(src, out)
    assert fixed.ok and fixed.total == 2 and fixed.extra["files_new_or_changed"] == 1
    assert [r[0] for r in rows(out)] == list(range(12))


def _start_slow_run(tmp_path: Path, run_key: str) -> tuple[Path, Path, dict[str, Any], Any]:
    """Six files of 100 rows, an incremental run of them in a subprocess, each chunk 1.5 s (to be killed)."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for n in range(6):
        write(src / f"f{n}.csv", range(n * 100, n * 100 + 100))
    params = {"source": str(src), "output_dir": str(out), "schema": SCHEMA, "incremental": True,
              "transform": SLOW, "max_concurrency": 1, "run_key": run_key}
    return src, out, params, start_flow("flows.file_transform:file_transform", params, {"BF_CHUNK_SLEEP": "1.5"})


def test_a_killed_run_is_dropped_by_the_next_scheduled_run(tmp_path: Path) -> None:
    _, out, params, proc = _start_slow_run(tmp_path, "killed-incremental")
    killed = out / "run-killed-incremental"
    wait_until(lambda: len(list(killed.glob("part-*.parquet"))) >= 2, proc, what="two parts")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert 2 <= len(list(killed.glob("part-*.parquet"))) < 6

    nxt = start_flow("flows.file_transform:file_transform", {**params, "run_key": "next"})
    output = finish(nxt)
    assert nxt.returncode == 0, output[-3000:]
    assert not killed.exists()  # the unfinished run's parts went: its files were read again
    assert [r[0] for r in rows(out)] == list(range(600))


def test_rerunning_a_finished_run_key_keeps_its_parts(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    write(src / "a.csv", range(0, 10))
    assert run(src, out, run_key="day-1").total == 10
    again = run(src, out, run_key="day-1")  # a scheduler's re-trigger: nothing to do, nothing removed
    assert again.ok and again.total == 0 and rows(out) == expected(range(10))

    write(src / "a.csv", range(0, 10), label="changed")
    touch_later(src / "a.csv")
    write(src / "b.csv", range(10, 20))
    third = run(src, out, run_key="day-1")  # the same key again, with a changed and a new file
    assert third.ok and third.total == 20 and third.extra["files_done"] == 2
    assert rows(out) == expected(range(10), "changed") + expected(range(10, 20))
    assert run(src, out, run_key="day-2").total == 0
    assert rows(out) == expected(range(10), "changed") + expected(range(10, 20))


def test_a_killed_run_resumed_and_run_again_with_the_same_key_keeps_every_row(tmp_path: Path) -> None:
    src, out, _, proc = _start_slow_run(tmp_path, "day-1")
    wait_until(lambda: len(list((out / "run-day-1").glob("part-*.parquet"))) >= 2, proc, what="two parts")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    resumed = run(src, out, run_key="day-1", transform=SLOW)
    assert resumed.ok and resumed.extra["files_done"] == 6 and rows(out) == expected(range(600))
    third = run(src, out, run_key="day-1", transform=SLOW)
    assert third.ok and third.total == 0 and rows(out) == expected(range(600))
    assert run(src, out, run_key="day-2", transform=SLOW).total == 0 and rows(out) == expected(range(600))


def test_a_second_run_into_the_output_dir_of_a_live_run_is_refused(tmp_path: Path) -> None:
    """Two live runs cannot share an output_dir (their parts and manifest would collide): the second is refused
    naming the first, which finishes with every row."""
    src, out, _, proc = _start_slow_run(tmp_path, "live")
    wait_until(lambda: any((out / "run-live").glob("part-*.parquet")), proc, what="a part")
    with pytest.raises(OutputInUse, match="'live'"):
        run(src, out, run_key="other")
    with pytest.raises(OutputInUse):
        file_transform(str(src), str(out), schema=SCHEMA, run_key="plain")  # not incremental: the same folder
    output = finish(proc)
    assert proc.returncode == 0, output[-3000:]
    assert rows(out) == expected(range(600))


def test_a_file_gone_from_the_source_loses_its_rows(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    write(src / "a.csv", range(0, 10))
    write(src / "b.csv", range(10, 20))
    write(src / "gone.csv", range(20, 30))
    assert run(src, out, run_key="day-1").total == 30
    (src / "gone.csv").unlink()
    second = run(src, out, run_key="day-2")
    assert rows(out) == expected(range(20))
    assert second.ok and second.total == 0 and second.extra["files_removed"] == 1
    assert second.extra["files_seen"] == 2 and second.extra["files_known_after"] == 2

    narrower = run(str(src / "a*.csv"), out, run_key="day-3")  # b.csv is outside the glob: the same as deleted
    assert rows(out) == expected(range(10)) and narrower.ok and narrower.extra["files_removed"] == 1
    wider = run(src, out, run_key="day-4")
    assert wider.ok and wider.total == 10 and wider.extra["files_removed"] == 0
    assert rows(out) == expected(range(20))


def test_a_changed_transform_replaces_every_file_s_rows(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    write(src / "a.csv", range(0, 10))
    write(src / "b.csv", range(10, 20))
    assert run(src, out, run_key="day-1").total == 20
    upper = run(src, out, run_key="day-2", transform="SELECT id, upper(label) AS label FROM df")
    assert upper.ok and upper.total == 20 and upper.extra["files_new_or_changed"] == 2
    assert rows(out) == expected(range(20), "BASIC MONTHLY")
