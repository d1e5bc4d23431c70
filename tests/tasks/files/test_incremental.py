"""file_transform's manifest: fingerprints, changed files, per-file chunks, garbage after a crash."""

from __future__ import annotations

import os
from pathlib import Path

from tasks.core.outcomes import ChunkReport
from tasks.files.incremental import MIB, FileManifest, file_fingerprint, per_file_chunks
from tasks.files.inputs import resolve_inputs


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
    assert m.end("run-1", "1", chunk_files, reports) == 2
    again = FileManifest.load("file-transform", "s", out, reset=False)
    assert again.changed(files) == [] and again.pending is None

    # a crash after the manifest listed garbage but before deleting it: the next run deletes it
    again.garbage = ["run-1/part-00000.parquet"]
    again.save("2")
    third = FileManifest.load("file-transform", "s", out, reset=False)
    assert third.begin("run-3", "3") == ["run-1/part-00000.parquet"]
    assert not (out / "run-1" / "part-00000.parquet").exists() and (out / "run-1" / "part-00001.parquet").exists()
