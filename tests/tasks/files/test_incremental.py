"""file_transform's manifest: fingerprints, changed files, per-file chunks, garbage after a crash."""

from __future__ import annotations

import os
from pathlib import Path

from tasks.core.outcomes import ChunkReport
from tasks.files.incremental import MIB, FileManifest, file_fingerprint, per_file_chunks
from tasks.files.inputs import InputFile, resolve_inputs


def test_a_change_in_the_middle_of_a_big_file_with_the_same_size_and_mtime_is_not_seen_but_at_the_ends_it_is(
        tmp_path: Path) -> None:
    f = tmp_path / "big.bin"
    f.write_bytes(b"a" * (3 * MIB))
    st = f.stat()
    before = file_fingerprint(f)
    with f.open("r+b") as fh:
        fh.seek(3 * MIB - 10)
        fh.write(b"b")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert file_fingerprint(f) != before  # the last MiB is hashed


def test_changed_files_and_per_file_chunks(tmp_path: Path, state_dir: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a", "b"):
        (src / f"{name}.csv").write_text("id\n" + "".join(f"{i}\n" for i in range(200)))
    files = resolve_inputs(str(src))
    out = tmp_path / "out"
    m = FileManifest.load("file-transform", "s", out, reset=False)
    assert m.changed(files) == files
    chunk_files: dict[int, str] = {}
    specs = list(per_file_chunks(files, chunk_bytes=300, chunk_files=chunk_files))
    assert [s.index for s in specs] == list(range(len(specs))) and len(specs) > 2
    assert all(len({p.path for p in s.files}) == 1 for s in specs)  # no part mixes two files
    m.begin("run-1", "1")
    (out / "run-1").mkdir(parents=True)
    reports = {}
    for s in specs:
        part = out / "run-1" / f"part-{s.index:05d}.parquet"
        part.write_text("x")
        reports[s.index] = ChunkReport(index=s.index, size=1, succeeded=1, extra={"outputs": [str(part)]})
    assert m.end("run-1", "1", chunk_files, reports) == (2, 0)
    again = FileManifest.load("file-transform", "s", out, reset=False)
    assert again.changed(files) == [] and again.pending is None

    # a crash after the manifest listed garbage but before deleting it: the next run deletes it
    again.garbage = ["run-1/part-00000.parquet"]
    again.save("2")
    third = FileManifest.load("file-transform", "s", out, reset=False)
    assert third.begin("run-3", "3") == ["run-1/part-00000.parquet"]
    assert not (out / "run-1" / "part-00000.parquet").exists() and (out / "run-1" / "part-00001.parquet").exists()


def _inputs(tmp_path: Path, names: str) -> list[InputFile]:
    src = tmp_path / "in"
    src.mkdir(exist_ok=True)
    for name in names:
        (src / f"{name}.csv").write_text(f"id\n{name}\n")
    return resolve_inputs(str(src))


def _load(out: Path) -> FileManifest:
    return FileManifest.load("file-transform", "s", out, reset=False)


def _write_parts(m: FileManifest, run_dir: str, files: list[InputFile], chunk_files: dict[int, str]
                 ) -> dict[int, ChunkReport]:
    """What a run's chunks do: one part per file, numbered from the manifest's first index."""
    reports = {}
    for s in per_file_chunks(files, chunk_bytes=1 << 20, chunk_files=chunk_files, start=m.first_index(run_dir)):
        part = m.output_dir / run_dir / f"part-{s.index:05d}.parquet"
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_text(s.files[0].path)
        reports[s.index] = ChunkReport(index=s.index, size=1, succeeded=1, extra={"outputs": [str(part)]})
    return reports


def _recorded(out: Path, files: list[InputFile]) -> FileManifest:
    """A first run (run-1) that processed and recorded ``files``, one part each."""
    m = _load(out)
    m.changed(files)
    m.begin("run-1", "1")
    chunk_files: dict[int, str] = {}
    m.end("run-1", "1", chunk_files, _write_parts(m, "run-1", files, chunk_files))
    return m


def _parts(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("part-*"))


def test_a_rerun_of_a_finished_run_key_writes_past_its_parts_and_a_crash_of_it_keeps_them(
        tmp_path: Path, state_dir: Path) -> None:
    a, b = _inputs(tmp_path, "ab")
    out = tmp_path / "out"
    m = _load(out)
    m.changed([a])
    m.begin("run-1", "1")
    chunk_files: dict[int, str] = {}
    assert m.end("run-1", "1", chunk_files, _write_parts(m, "run-1", [a], chunk_files)) == (1, 0)
    assert _parts(out) == ["run-1/part-00000.parquet"]

    rerun = _load(out)  # the same key again with a new file: its chunk comes after a's part, then a crash
    assert rerun.changed([a, b]) == [b] and rerun.first_index("run-1") == 1
    rerun.begin("run-1", "1")
    _write_parts(rerun, "run-1", [b], {})
    assert _parts(out) == ["run-1/part-00000.parquet", "run-1/part-00001.parquet"]

    nxt = _load(out)  # the next key drops the unfinished run's part of b, and keeps a's
    assert nxt.pending == "run-1" and nxt.changed([a, b]) == [b]
    assert nxt.begin("run-2", "2") == ["run-1/part-00001.parquet"]
    assert _parts(out) == ["run-1/part-00000.parquet"]


def test_a_resumed_run_whose_plan_shrank_drops_the_parts_of_the_earlier_plan(tmp_path: Path, state_dir: Path) -> None:
    a, b, c = _inputs(tmp_path, "abc")
    out = tmp_path / "out"
    m = _load(out)
    m.changed([a, b, c])
    m.begin("run-1", "1")
    _write_parts(m, "run-1", [a, b, c], {})  # killed before its end

    resumed = _load(out)  # c.csv was deleted before the resume
    assert resumed.changed([a, b]) == [a, b] and resumed.first_index("run-1") == 0
    assert resumed.begin("run-1", "1") == []
    chunk_files: dict[int, str] = {}
    assert resumed.end("run-1", "1", chunk_files, _write_parts(resumed, "run-1", [a, b], chunk_files)) == (2, 0)
    assert _parts(out) == ["run-1/part-00000.parquet", "run-1/part-00001.parquet"]
    assert _load(out).first_index("run-1") == 3  # past the earlier plan's chunk 2 too (the run's ledger has it)


def test_a_file_no_longer_given_loses_its_parts_when_the_run_that_notices_it_ends(
        tmp_path: Path, state_dir: Path) -> None:
    a, b = _inputs(tmp_path, "ab")
    out = tmp_path / "out"
    _recorded(out, [a, b])

    killed = _load(out)  # b is gone; the run that notices it is killed before its end: b's part stays
    assert killed.changed([a]) == []
    killed.begin("run-2", "2")
    assert _parts(out) == ["run-1/part-00000.parquet", "run-1/part-00001.parquet"]

    nxt = _load(out)
    assert nxt.changed([a]) == []
    nxt.begin("run-3", "3")
    assert nxt.end("run-3", "3", {}, {}) == (0, 1)
    assert _parts(out) == ["run-1/part-00000.parquet"] and list(_load(out).files) == [a.path]


def test_a_manifest_stored_under_its_earlier_key_is_read(tmp_path: Path, state_dir: Path) -> None:
    (a,) = _inputs(tmp_path, "a")
    out = tmp_path / "out"
    old = FileManifest.load("file-transform", "source-and-options", out, reset=False)
    old.changed([a])
    old.begin("run-1", "1")
    chunk_files: dict[int, str] = {}
    old.end("run-1", "1", chunk_files, _write_parts(old, "run-1", [a], chunk_files))
    new = FileManifest.load("file-transform", "output-dir", out, reset=False, legacy_stream="source-and-options")
    assert new.changed([a]) == [] and new.first_index("run-1") == 1  # an upgrade reads no file again


def test_a_reset_keeps_the_old_parts_until_each_file_s_new_ones_are_recorded(tmp_path: Path, state_dir: Path) -> None:
    a, b = _inputs(tmp_path, "ab")
    out = tmp_path / "out"
    _recorded(out, [a, b])

    killed = FileManifest.load("file-transform", "s", out, reset=True)
    assert killed.changed([a, b]) == [a, b]
    assert killed.begin("run-2", "2") == []  # nothing is deleted before the new parts are recorded
    _write_parts(killed, "run-2", [a], {})  # killed after a's new part: a twice, b once, nothing missing
    assert _parts(out) == ["run-1/part-00000.parquet", "run-1/part-00001.parquet", "run-2/part-00000.parquet"]

    nxt = _load(out)  # the reset survives the kill: every file is read again, the killed run's part dropped
    assert nxt.sweep and nxt.changed([a, b]) == [a, b]
    assert nxt.begin("run-3", "3") == ["run-2/part-00000.parquet"]
    chunk_files = {}
    assert nxt.end("run-3", "3", chunk_files, _write_parts(nxt, "run-3", [a, b], chunk_files)) == (2, 0)
    assert _parts(out) == ["run-3/part-00000.parquet", "run-3/part-00001.parquet"]
    assert not _load(out).sweep and _load(out).changed([a, b]) == []


def test_a_reset_run_sweeps_the_run_directories_its_manifest_knows(tmp_path: Path, state_dir: Path) -> None:
    (a,) = _inputs(tmp_path, "a")
    out = tmp_path / "out"
    _recorded(out, [a])
    (out / "run-1" / "part-00007.parquet").write_text("a part no file owns")
    (out / "run-1" / "notes.txt").write_text("not a part")
    (out / "other").mkdir()
    (out / "other" / "part-00000.parquet").write_text("not in a run directory the manifest knows")

    reset = FileManifest.load("file-transform", "s", out, reset=True)
    reset.changed([a])
    reset.begin("run-2", "2")
    chunk_files = {}
    assert reset.end("run-2", "2", chunk_files, _write_parts(reset, "run-2", [a], chunk_files)) == (1, 0)
    assert _parts(out) == ["other/part-00000.parquet", "run-2/part-00000.parquet"]
    assert (out / "run-1" / "notes.txt").exists()
