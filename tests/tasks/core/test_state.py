from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.core.errors import ConfigError
from tasks.core.runlock import RunLock
from tasks.core.settings import EngineSettings
from tasks.core.state import FLOWS, RunDir, atomic_write, cleanup_state, validate_run_key
from tasks.core.state import _main as state_cli
from tests.fixtures.s3 import S3State


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


def _aged(run: RunDir, days: float) -> None:
    (run.root / "summary.json").write_text("{}")
    past = time.time() - days * 86400
    for p in [run.root / "summary.json", run.root]:
        os.utime(p, (past, past))


def test_cleanup_by_age_and_by_run_key(state_dir: Path) -> None:
    old = RunDir.for_run("batch-map", "old", state_dir)
    new = RunDir.for_run("batch-map", "new", state_dir)
    _aged(old, 40)
    _aged(new, 0)
    assert cleanup_state(older_than_days=30, state_dir=state_dir) == [old.root]
    assert not old.root.exists() and new.root.exists()
    assert cleanup_state(run_key="new", state_dir=state_dir) == [new.root]


def test_cleanup_refuses_a_negative_age_which_would_remove_every_run(state_dir: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    today = RunDir.for_run("batch-map", "today", state_dir)
    _aged(today, 0)
    for days in (-1, float("nan")):
        with pytest.raises(ConfigError, match="older_than_days must be 0 or more"):
            cleanup_state(older_than_days=days, state_dir=state_dir)
    with pytest.raises(SystemExit):
        state_cli(["cleanup", "--older-than-days", "-5"])
    assert "older_than_days must be 0 or more" in capsys.readouterr().err
    assert today.root.exists()


def test_cleanup_defaults_to_the_retention_setting_and_spares_live_runs(
        state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = {days: RunDir.for_run("batch-map", f"aged-{days}", state_dir) for days in (5, 12, 40)}
    for days, run in runs.items():
        _aged(run, days)
    live = RunLock(runs[40].root / "lock", flow="batch-map", run_key="aged-40", flow_run_id=None).acquire()
    _aged(runs[40], 40)
    assert cleanup_state(state_dir=state_dir) == []  # 30 days by default; the 40-day-old run is live
    live.release()
    for f in (runs[40].root / "lock", runs[40].root):
        os.utime(f, (time.time() - 40 * 86400,) * 2)
    monkeypatch.setenv("BATCHFLOWS_STATE_RETENTION_DAYS", "10")
    assert cleanup_state(state_dir=state_dir) == [runs[12].root, runs[40].root]


def test_cleanup_refuses_a_flow_that_cannot_be_meant_naming_the_flows(state_dir: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """--flow batch_map (the Python name) or a typo reported "removed 0 run directories" and removed nothing."""
    old = RunDir.for_run("batch-map", "old", state_dir)
    mine = RunDir.for_run("my-own-flow", "old", state_dir)
    _aged(old, 40)
    _aged(mine, 40)
    with pytest.raises(ConfigError, match=r"unknown flow 'batch_map' \(did you mean 'batch-map'\?\).*db-migrate"):
        cleanup_state(flow="batch_map", state_dir=state_dir)
    for argv in (["cleanup", "--flow", "nope"], ["cleanup", "--flow", "../runs", "--dry-run"]):
        with pytest.raises(SystemExit):
            state_cli(argv)
        err = capsys.readouterr().err
        assert "unknown flow" in err and "batch-map" in err and "my-own-flow" in err
    assert old.root.exists() and mine.root.exists()
    assert cleanup_state(flow="etl-demo", state_dir=state_dir) == []  # a flow of ours without runs: nothing to do
    assert cleanup_state(flow="my-own-flow", state_dir=state_dir) == [mine.root]


def test_the_flow_names_cleanup_knows_are_those_of_the_flows() -> None:
    import flows

    names = {importlib.import_module(f"flows.{m.name}").FLOW_NAME for m in pkgutil.iter_modules(flows.__path__)}
    assert set(FLOWS) == names


def test_the_cleanup_cli_names_each_live_run_it_skips(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    live_run, done = RunDir.for_run("batch-map", "live", state_dir), RunDir.for_run("batch-map", "done", state_dir)
    live = RunLock(live_run.root / "lock", flow="batch-map", run_key="live", flow_run_id=None).acquire()
    try:
        _aged(live_run, 40)
        _aged(done, 40)
        os.utime(live_run.root / "lock", (time.time() - 40 * 86400,) * 2)  # old, but held
        assert state_cli(["cleanup", "--older-than-days", "30"]) == 0
    finally:
        live.release()
    out = capsys.readouterr().out.splitlines()
    assert out == [f"removed {done.root}", f"skipped {live_run.root}: a live run holds its run_key",
                   "removed 1 run directories; skipped 1 held by a live run"]
    assert live_run.root.exists() and not done.root.exists()


def test_the_documented_command_prints_no_warning(state_dir: Path) -> None:
    """Every python -m tasks.core.state printed runpy's RuntimeWarning (the package imports the module first)."""
    _aged(RunDir.for_run("batch-map", "old", state_dir), 40)
    done = subprocess.run([sys.executable, "-m", "tasks.core.state", "cleanup", "--flow", "batch-map", "--dry-run"],
                          capture_output=True, text=True, check=False, timeout=120,
                          cwd=Path(__file__).resolve().parents[3])
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.splitlines()[-1] == "would remove 1 run directories"


def test_the_default_state_dir_is_absolute_and_the_same_from_any_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_HOME, temporary_settings

    monkeypatch.delenv("BATCHFLOWS_STATE_DIR")
    seen = set()
    # Prefect's current settings (what PREFECT_HOME was when the process started, or a profile) decide
    with temporary_settings(updates={PREFECT_HOME: str(tmp_path / "prefect-home")}):
        for cwd in (tmp_path, tmp_path / "elsewhere"):
            cwd.mkdir(exist_ok=True)
            monkeypatch.chdir(cwd)
            seen.add(EngineSettings().resolved_state_dir())
    assert seen == {tmp_path / "prefect-home" / "batchflows"}


def test_cleanup_removes_stored_runs_but_never_one_a_live_lease_holds(s3_state: S3State) -> None:
    from tasks.core.lease import LeaseLock
    from tasks.core.objstore import ObjectStore

    store = ObjectStore.from_url(s3_state.url)
    for key in ("done", "live", "other"):
        run_dir = RunDir.for_run("batch-map", key, store=store)
        run_dir.write_checkpoint({"k": key})
    LeaseLock(store, "runs/batch-map/done/lease", flow="batch-map", run_key="done", flow_run_id=None).acquire().release()
    live = LeaseLock(store, "runs/batch-map/live/lease", flow="batch-map", run_key="live", flow_run_id=None).acquire()
    try:
        would = cleanup_state(older_than_days=0, dry_run=True)
        assert f"{s3_state.url}/runs/batch-map/done" in would and f"{s3_state.url}/runs/batch-map/other" in would
        assert f"{s3_state.url}/runs/batch-map/live" not in would  # held on another machine
        assert len(s3_state.objects("state/runs/")) == 5  # a dry run removes nothing
        assert f"{s3_state.url}/runs/batch-map/other" in cleanup_state(run_key="other")
        cleanup_state(older_than_days=0)
        assert s3_state.objects("state/runs/") == ["state/runs/batch-map/live/checkpoint.json",
                                                   "state/runs/batch-map/live/lease"]
    finally:
        live.release()


def test_cleanup_by_age_removes_old_output_locks_but_never_a_live_or_recent_one(state_dir: Path) -> None:
    from tasks.core.runlock import OutputLock

    def lock(name: str) -> OutputLock:
        return OutputLock(str(state_dir.parent / name), state_dir=state_dir, flow="batch-map", run_key=name,
                          flow_run_id=None).acquire()

    old, recent, live = lock("old-out"), lock("recent-out"), lock("live-out")
    old.release()
    recent.release()
    for held in (old, live):
        os.utime(held.path, (time.time() - 40 * 86400,) * 2)
    try:
        assert cleanup_state(run_key="old-out", state_dir=state_dir) == []  # by key: runs only
        assert cleanup_state(older_than_days=30, state_dir=state_dir, dry_run=True) == [old.path]
        assert old.path.exists()
        assert cleanup_state(older_than_days=30, state_dir=state_dir) == [old.path]
        assert not old.path.exists() and recent.path.exists() and live.path.exists()
        again = lock("old-out")  # the output can be written again: a new lock file
        assert again.path == old.path and old.path.exists()
        again.release()
    finally:
        live.release()


def test_a_run_that_opened_a_lock_file_cleanup_removed_locks_the_new_file(tmp_path: Path) -> None:
    from tasks.core.runlock import names_file

    path = tmp_path / "lock"
    path.write_text("{}")
    fd = os.open(path, os.O_RDWR)
    try:
        assert names_file(path, fd)
        path.unlink()
        assert not names_file(path, fd)
        path.write_text("{}")  # another run's new lock file at the same path
        assert not names_file(path, fd)
    finally:
        os.close(fd)
    first = RunLock(path, flow="batch-map", run_key="k", flow_run_id=None).acquire()
    with pytest.raises(Exception, match="held by a live run"):
        RunLock(path, flow="batch-map", run_key="k", flow_run_id=None).acquire()
    first.release()


def test_cleanup_removes_stored_output_leases_no_live_run_holds(s3_state: S3State) -> None:
    from tasks.core.objstore import ObjectStore
    from tasks.core.runlock import OutputLock

    store = ObjectStore.from_url(s3_state.url)

    def lease(name: str) -> OutputLock:
        return OutputLock(f"s3://{s3_state.bucket}/{name}", state_dir=s3_state.cache, store=store, flow="api-bulk",
                          run_key=name, flow_run_id=None).acquire()

    done = lease("done-out")
    done.release()
    live = lease("live-out")
    try:
        leases = s3_state.objects("state/outputs/")
        assert len(leases) == 2
        assert cleanup_state(older_than_days=1) == []  # released today: kept for 30 days, like a run
        assert cleanup_state(run_key="done-out") == []
        removed = cleanup_state(older_than_days=0)
        assert len(removed) == 1 and removed[0].startswith(f"{s3_state.url}/outputs/")
        assert len(s3_state.objects("state/outputs/")) == 1  # the live run's lease stays
        again = lease("done-out")  # the output folder can be written again
        again.release()
    finally:
        live.release()


def _journal(run: RunDir, outcomes: dict[int, str]) -> Path:
    """Append ``outcomes`` (position -> "s" or "f") to the journal of chunk "c" of ``run``, as a chunk does."""
    from tasks.core.journal import ChunkJournal

    path = run.journal / "c.jsonl"
    with ChunkJournal(path, "h1") as journal:
        for position, kind in outcomes.items():
            journal.record(position, kind, json.dumps({"n": position}) if kind == "f" else "")
    return path


def _finished(path: Path) -> dict[int, str]:
    from tasks.core.journal import ChunkJournal

    return {p: e.kind for p, e in ChunkJournal(path, "h1").load().items()}


def test_pull_keeps_the_freshest_journal_of_each_chunk_when_machines_alternate(s3_state: S3State,
                                                                                tmp_path: Path) -> None:
    """A -> B -> A with the same plan: B continued the chunk after A died, so A's older journal must not win."""
    from tasks.core.objstore import ObjectStore

    store = ObjectStore.from_url(s3_state.url)
    a = RunDir.for_run("batch-map", "aba", tmp_path / "a", store=store)
    a.plan.write_text("20\n")
    a.push(a.plan)
    a.push(_journal(a, dict.fromkeys(range(3), "s")))  # A's last push: items 0-2
    _journal(a, {3: "s"})  # finished on A, then A is killed before its next push

    b = RunDir.for_run("batch-map", "aba", tmp_path / "b", store=store)
    b.pull()
    assert sorted(_finished(b.journal / "c.jsonl")) == [0, 1, 2]
    b.push(_journal(b, {p: "f" if p == 3 else "s" for p in range(3, 14)}))  # B pushed 0-13, then is killed

    a.pull()  # A again, with its own cache
    assert _finished(a.journal / "c.jsonl") == {p: "f" if p == 3 else "s" for p in range(14)}

    a.push(_journal(a, {14: "s"}))
    _journal(a, {15: "s", 16: "s"})  # this machine's journal is the newer one now: it stays
    a.pull()
    assert sorted(_finished(a.journal / "c.jsonl")) == list(range(17))


def test_pull_merges_journals_that_each_hold_items_the_other_lacks(s3_state: S3State, tmp_path: Path) -> None:
    from tasks.core.objstore import ObjectStore

    store = ObjectStore.from_url(s3_state.url)
    a = RunDir.for_run("batch-map", "both", tmp_path / "a", store=store)
    a.plan.write_text("20\n")
    a.push(a.plan)
    a.push(_journal(a, {0: "s", 1: "s"}))
    _journal(a, {5: "s", 2: "s"})  # items run in parallel finish out of order; killed before the next push
    b = RunDir.for_run("batch-map", "both", tmp_path / "b", store=store)
    b.pull()
    b.push(_journal(b, {2: "f", 3: "s", 4: "s", 6: "s"}))  # B had not reached 5 when it was killed
    a.pull()
    merged = a.journal / "c.jsonl"
    assert _finished(merged) == {0: "s", 1: "s", 2: "f", 3: "s", 4: "s", 5: "s", 6: "s"}
    from tasks.core.journal import ChunkJournal

    assert ChunkJournal(merged, "h1").load()[2].payload == '{"n": 2}'  # the stored (later) outcome, whole


def test_a_run_dir_whose_lease_was_taken_over_writes_and_deletes_nothing_in_storage(s3_state: S3State) -> None:
    """Its guard (the lease) is asked before each PUT and DELETE: once another machine holds the key, records,
    checkpoints, journals and deletions stay in this machine's cache and the stored state is the taker's."""
    from tasks.core.journal_sync import JournalPusher
    from tasks.core.lease import LeaseLock
    from tasks.core.objstore import ObjectStore

    store = ObjectStore.from_url(s3_state.url)
    holder = LeaseLock(store, "runs/batch-map/k/lease", flow="batch-map", run_key="k", flow_run_id=None,
                       lease_s=2.0).acquire()
    run = RunDir.for_run("batch-map", "k", store=store, guard=holder.confirmed)
    pusher = JournalPusher(run, 3600, before_push=lambda: None)
    try:
        run.write_checkpoint({"page": 1})
        (run.chunks / "c").parent.mkdir(parents=True, exist_ok=True)
        (run.chunks / "c").write_text("record")
        run.push(run.chunks / "c")
        journal = _journal(run, {0: "s"})
        assert pusher.push_changed() == 1
        client = s3_state.client()
        client.put_object(Bucket=s3_state.bucket, Key="state/runs/batch-map/k/lease", Body=b'{"host": "b"}')
        stored = {key: client.get_object(Bucket=s3_state.bucket, Key=key)["Body"].read() for key in s3_state.objects()}
        time.sleep(1.2)  # past half the lease: only a renewal confirms it, and the taker's PUT refuses that

        run.write_checkpoint({"page": 2})
        run.discard(run.chunks / "c")
        assert not run.put("summary.json", b"{}") and not run.delete("checkpoint.json")
        _journal(run, {1: "s"})
        assert pusher.push_changed() == 0
        pusher.drop(journal)
        assert holder.lost is not None and "another run took the lease over" in holder.lost
        assert {key: client.get_object(Bucket=s3_state.bucket, Key=key)["Body"].read()
                for key in s3_state.objects()} == stored
        assert run.read_checkpoint() == {"page": 2}  # this machine's cache is still written
    finally:
        pusher.stop()
        holder.release()
