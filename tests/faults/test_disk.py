"""Disk faults under batch_map's ``output=`` and file_transform's ``output_dir``.

* An output that cannot be written at all (a regular file in the way, a read-only mount): refused
  before any item runs, with a ConfigError naming the path and the fix.
* The output filesystem turns read-only, or fills up, in the middle of a run (real tmpfs mounts,
  remounted at an event-driven point): the run stops at once with a message naming the directory and
  what to do, and after the fix a rerun with the same run_key ends with exactly the expected outputs;
  items run twice only in the chunks that were in flight when the write failed.
* Outputs deleted between runs: batch_map (side effects) fails naming the missing files and the way to
  force the work (cache_version); file_transform (pure) rewrites exactly the chunks whose part, rejects
  or partition file is gone.

Tests run as root, which ignores permission bits, so read-only means a read-only tmpfs mount (these
cases are skipped where mounting is not allowed).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from flows.batch_map import batch_map
from flows.file_transform import file_transform
from tasks.core.errors import ConfigError
from tasks.core.outcomes import RunSummary, read_dead_letters
from tasks.core.state import RunDir
from tasks.files.process import plan_chunks, resolve_inputs
from tests.faults.helpers import CHUNK, FAILING, OPEN, SKIPPED, WINDOW, N, finish, passed, wait_until
from tests.faults.test_sigkill import SCHEMA, write_csv
from tests.handlers import held_items, set_stage_limit
from tests.run_flow import start_flow, summary_in


class Tmpfs:
    """A real tmpfs mounted at ``path``; ``remount("ro")`` and friends change it under a running flow."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def remount(self, options: str) -> None:
        """Remount; a read-only remount is refused while a file is open for writing (EBUSY), which a
        flow may hold for a moment (a part being closed): retried for up to 10 s, then the reason."""
        deadline = time.monotonic() + 10
        while True:
            done = subprocess.run(["mount", "-o", f"remount,{options}", str(self.path)], capture_output=True,
                                  text=True)
            if done.returncode == 0:
                return
            if "busy" not in done.stderr.lower() or time.monotonic() > deadline:
                raise AssertionError(f"mount -o remount,{options} {self.path} failed: {done.stderr.strip()}")
            time.sleep(0.05)


def mount_tmpfs(path: Path, options: str) -> Iterator[Tmpfs]:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the read-only and full-disk cases need it")
    try:
        yield Tmpfs(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Tmpfs]:
    yield from mount_tmpfs(tmp_path / "mnt", "size=8m")


@pytest.fixture
def read_only_tmpfs(tmp_path: Path) -> Iterator[Tmpfs]:
    yield from mount_tmpfs(tmp_path / "ro", "ro,size=1m")


def records(state_dir: Path, flow: str, run_key: str) -> int:
    """Finished chunks of a run: their result records, named by the 40-hex cache key (a failed chunk task
    leaves its persisted exception beside them under a random name)."""
    chunks = RunDir.for_run(flow, run_key, state_dir).chunks
    return len([p for p in chunks.iterdir() if re.fullmatch("[0-9a-f]{40}", p.name)]) if chunks.exists() else 0


def jsonl_rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for part in sorted(out.glob("part-*.jsonl")) for line in part.read_text().splitlines()]


def good_ids(out: Path) -> list[int]:
    return sorted(pl.read_parquet(sorted(out.rglob("part-*.parquet")), hive_partitioning=False)["id"].to_list())


def rejected_ids(out: Path) -> list[int]:
    frames = [pl.read_csv(p, infer_schema=False) for p in sorted((out / "_rejects").glob("part-*"))]
    return sorted(int(i) for i in pl.concat(frames)["id"])


# --------------------------------------------------------------------------- refused before any work


@pytest.mark.parametrize("flow", ["batch_map", "file_transform"])
@pytest.mark.parametrize("blocker", ["file-in-the-way", "read-only-mount"])
def test_an_output_that_cannot_be_written_is_refused_before_any_item_runs(
        flow: str, blocker: str, tmp_path: Path, state_dir: Path, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    if blocker == "file-in-the-way":
        (tmp_path / "a-file").write_text("not a directory")
        out, why, fix = tmp_path / "a-file" / "out", "Not a directory", "is a regular file, not a directory"
    else:
        out, why, fix = request.getfixturevalue("read_only_tmpfs").path / "out", "Read-only file system", "remount it"
    effects = tmp_path / "effects.log"
    monkeypatch.setenv("BF_SIDE_EFFECT_LOG", str(effects))
    what = "output directory" if flow == "batch_map" else "output_dir"
    with pytest.raises(ConfigError, match=re.escape(f"{what} '{out}' cannot be written: {why}")) as raised:
        if flow == "batch_map":
            batch_map(list(range(30)), "tests.handlers:side_effect", chunk_size=10, output=out, run_key="refused")
        else:
            src = tmp_path / "data.csv"
            write_csv(src, 300)
            file_transform(src, out, schema=SCHEMA, chunk_bytes=1000, run_key="refused")
    message = str(raised.value)
    assert message.startswith(what) and fix in message and message.endswith("Nothing was run")
    assert not effects.exists()  # no handler ran
    flow_name = flow.replace("_", "-")
    assert records(state_dir, flow_name, "refused") == 0 and not out.exists()


# --------------------------------------------------------------------------- read-only mid-run


@pytest.mark.slow
def test_batch_map_output_turning_read_only_mid_run_stops_clearly_then_resumes(
        tmpfs: Tmpfs, tmp_path: Path, state_dir: Path) -> None:
    stage, out, run_key, done = tmp_path / "stage", tmpfs.path / "out", "ro-mid-run", 5
    stage.mkdir()
    set_stage_limit(stage, done * CHUNK)
    params = {"source": list(range(N)), "handler": "tests.handlers:staged_record", "chunk_size": CHUNK,
              "max_concurrency": WINDOW, "retries": 0, "run_key": run_key, "output": str(out),
              "min_success_ratio": 0.5}
    env = {"BF_STAGE_DIR": str(stage)}
    proc = start_flow("batch-map", params, env)
    wait_until(lambda: records(state_dir, "batch-map", run_key) >= done
               and held_items(stage, done * CHUNK) >= WINDOW, proc, what=f"{done} finished chunks")
    tmpfs.remount("ro")
    set_stage_limit(stage, OPEN)
    output = finish(proc, timeout=120)

    assert proc.returncode == 1, output[-4000:]
    s = summary_in(output, RunSummary)
    assert s.state == "Failed" and s.message.startswith(
        f"stopped by a fatal error: output directory '{out}' cannot be written: Read-only file system"), s.message
    assert "remount it read-write" in s.message and "rerun with the same run_key" in s.message
    assert s.chunks_failed == WINDOW and records(state_dir, "batch-map", run_key) == done  # stopped at once
    assert sorted(p.name for p in out.iterdir()) == [f"part-{i:06d}.jsonl" for i in range(done)]  # nothing partial

    tmpfs.remount("rw")
    rerun = start_flow("batch-map", params, env)
    output = finish(rerun, timeout=120)
    assert rerun.returncode == 0, output[-4000:]
    s = summary_in(output, RunSummary)
    assert (s.total, s.succeeded, s.failed, s.skipped, s.chunks_resumed) == (N, N - 40, 20, 20, done)
    calls = Counter(int(x) for x in (stage / "calls.log").read_text().split())
    # the chunks in flight ran but could not write their outputs: their journals (in the state dir) kept every
    # item's outcome, so the rerun wrote their parts without calling the handler again
    assert calls == Counter(range(N))
    rows = jsonl_rows(out)
    assert sorted(r["item"] for r in rows) == sorted(set(range(N)) - FAILING - SKIPPED)
    assert all(r["result"] == 3 * r["item"] for r in rows)
    assert sorted(d["item"] for d in read_dead_letters(s.dead_letter_path or "")) == sorted(FAILING)


def file_transform_params(src: Path, out: Path, run_key: str, **more: Any) -> dict[str, Any]:
    return {"source": str(src), "output_dir": str(out), "schema": SCHEMA, "chunk_bytes": 4000,
            "max_concurrency": WINDOW, "run_key": run_key, "min_success_ratio": 0.5, "chunk_retries": 0, **more}


@pytest.mark.slow
def test_file_transform_output_turning_read_only_mid_run_stops_clearly_then_resumes(
        tmpfs: Tmpfs, tmp_path: Path, state_dir: Path) -> None:
    src, out, run_key, done = tmp_path / "data.csv", tmpfs.path / "out", "ro-mid-run", 4
    bad = write_csv(src, 4000)
    chunks = len(plan_chunks(resolve_inputs(str(src)), chunk_bytes=4000))
    gate = tmp_path / "gate"
    gate.mkdir()
    params = file_transform_params(src, out, run_key, transform="tests.faults.helpers:gated_chunk")
    proc = start_flow("flows.file_transform:file_transform", params,
                      {"BF_GATE_DIR": str(gate), "BF_GATE_OPEN": str(done)})
    wait_until(lambda: records(state_dir, "file-transform", run_key) >= done and passed(gate) >= done + WINDOW,
               proc, what=f"{done} finished chunks")
    tmpfs.remount("ro")
    (gate / "open").touch()
    output = finish(proc, timeout=120)

    assert proc.returncode == 1, output[-4000:]
    s = summary_in(output, RunSummary)
    assert s.state == "Failed" and s.message.startswith(
        f"stopped by a fatal error: output directory '{out}' cannot be written: Read-only file system"), s.message
    assert "rerun with the same run_key" in s.message
    assert records(state_dir, "file-transform", run_key) == done

    tmpfs.remount("rw")
    rerun = start_flow("flows.file_transform:file_transform", params)
    output = finish(rerun, timeout=120)
    assert rerun.returncode == 0, output[-4000:]
    s = summary_in(output, RunSummary)
    assert s.chunks_total == chunks and s.chunks_resumed == done
    assert s.extra["rows_in"] == 4000 and s.extra["rows_rejected"] == len(bad)
    assert good_ids(out) == sorted(set(range(4000)) - bad)  # no row twice, none missing
    assert rejected_ids(out) == sorted(bad)
    assert not list(out.rglob(".tmp-*"))


# --------------------------------------------------------------------------- disk full mid-run


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Tmpfs]:
    yield from mount_tmpfs(tmp_path / "small", "size=48k")


@pytest.mark.slow
def test_file_transform_disk_full_stops_clearly_then_resumes_after_space_is_freed(
        small_tmpfs: Tmpfs, tmp_path: Path, state_dir: Path) -> None:
    """Parquet parts of ~4 KB pages on a 48 KB tmpfs: the disk fills part way (polars reports it inside a
    ComputeError), the run stops naming the directory; with room made, the rerun completes exactly."""
    src, out, run_key = tmp_path / "data.csv", small_tmpfs.path / "out", "disk-full"
    bad = write_csv(src, 4000)
    chunks = len(plan_chunks(resolve_inputs(str(src)), chunk_bytes=4000))
    params = file_transform_params(src, out, run_key)
    proc = start_flow("flows.file_transform:file_transform", params)
    output = finish(proc, timeout=120)

    assert proc.returncode == 1, output[-4000:]
    s = summary_in(output, RunSummary)
    assert s.state == "Failed" and s.message.startswith(
        f"stopped by a fatal error: output directory '{out}' cannot be written: No space left on device"), s.message
    assert "free space on that filesystem" in s.message and "rerun with the same run_key" in s.message
    written = records(state_dir, "file-transform", run_key)
    assert 0 < written < chunks

    small_tmpfs.remount("size=8m")
    rerun = start_flow("flows.file_transform:file_transform", params)
    output = finish(rerun, timeout=120)
    assert rerun.returncode == 0, output[-4000:]
    s = summary_in(output, RunSummary)
    assert s.chunks_total == chunks and s.chunks_resumed == written
    assert good_ids(out) == sorted(set(range(4000)) - bad) and rejected_ids(out) == sorted(bad)
    assert not list(out.rglob(".tmp-*"))


# --------------------------------------------------------------------------- outputs deleted between runs


def test_batch_map_outputs_deleted_between_runs_fail_by_name_and_cache_version_redoes_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    effects, out = tmp_path / "effects.log", tmp_path / "out"
    monkeypatch.setenv("BF_SIDE_EFFECT_LOG", str(effects))

    def run(cache_version: str = "1") -> RunSummary:
        return batch_map(list(range(N)), "tests.handlers:side_effect", chunk_size=10, run_key="deleted", output=out,
                         cache_version=cache_version, raise_on_failure=False)

    assert run().ok
    gone = [out / "part-000003.jsonl", out / "part-000011.jsonl"]
    for part in gone:
        part.unlink()

    again = run()
    assert again.state == "Failed" and not again.ok
    assert again.message.startswith(f"2 output file(s) of chunks finished in an earlier attempt are missing (e.g. {gone[0]})")
    assert "new cache_version" in again.message
    assert again.chunks_resumed == N // 10 and again.succeeded == N  # counted, but not passed off as complete
    assert Counter(int(x) for x in effects.read_text().split()) == Counter(range(N))  # nothing ran again

    forced = run(cache_version="2")
    assert forced.ok and forced.chunks_resumed == 0
    assert sorted(r["item"] for r in jsonl_rows(out)) == list(range(N))  # every result once
    assert Counter(int(x) for x in effects.read_text().split()) == Counter({x: 2 for x in range(N)})


@pytest.mark.parametrize("what", ["part", "rejects", "partition"])
def test_file_transform_rewrites_exactly_the_chunks_whose_output_files_were_deleted(
        what: str, tmp_path: Path) -> None:
    src, out = tmp_path / "data.csv", tmp_path / "out"
    bad = write_csv(src, 3000)
    opts: dict[str, Any] = {"schema": SCHEMA, "chunk_bytes": 4000, "run_key": f"deleted-{what}",
                            "min_success_ratio": 0.5, "partition_by": ["day"] if what == "partition" else ()}
    first = file_transform(src, out, **opts)
    assert first.state == "Completed" and first.chunks_total > 4
    if what == "part":
        victims = sorted(out.glob("part-*.parquet"))[2:4]
    elif what == "rejects":
        victims = sorted((out / "_rejects").glob("part-*"))[1:2]
    else:
        victims = sorted(out.glob("day=*/part-00001*.parquet"))[:1]
    assert victims
    for victim in victims:
        victim.unlink()

    again = file_transform(src, out, **opts)
    assert again.state == "Completed", again.message
    assert again.chunks_resumed == first.chunks_total - len(victims)  # only the chunks that lost a file ran
    assert all(v.exists() for v in victims)
    assert good_ids(out) == sorted(set(range(3000)) - bad) and rejected_ids(out) == sorted(bad)
    assert again.extra["rows_in"] == 3000 and again.extra["rows_rejected"] == len(bad)


@pytest.mark.parametrize("exists", [True, False])
def test_the_up_front_write_check_leaves_nothing_behind(exists: bool, tmp_path: Path) -> None:
    """The probe goes into the output directory, or its nearest existing parent, and never stays."""
    out = tmp_path / "new" / "out"
    if exists:
        out.mkdir(parents=True)
    assert batch_map(list(range(20)), "tests.handlers:double", chunk_size=10, output=out).ok
    assert sorted(p.name for p in out.iterdir()) == ["part-000000.jsonl", "part-000001.jsonl"]
    assert not list(tmp_path.rglob(".batchflows-probe-*"))
