"""file_transform incremental: each run reads only the files that are new or changed since the last run.

A file is known by its path, size, modification time and a hash of its first and last MiB (a changed file
with the same size and mtime is still caught at either end; a full hash would read every file on every
run). The manifest (tasks.core.watermarks, in the state dir) maps every processed file to its fingerprint
and its parts. Each incremental run writes to ``<output_dir>/run-<run_key>/`` and, in incremental mode, no
part mixes two files, so a file's parts are its own:

* a file all of whose chunks finished is recorded with its new parts; the parts an earlier run wrote for
  it (an older version of the file) are deleted: readers of ``<output_dir>/run-*/`` see each file once;
* a file with a chunk that failed is not recorded and its parts of this run are deleted: the next run
  processes it again whole (no duplicates, nothing lost);
* a run killed before it ended is marked pending in the manifest; a later run with another run_key
  deletes that run's directory before it starts (its files were not recorded, so they are processed
  again); a rerun with the same run_key resumes it instead.

Deletions go through a ``garbage`` list written to the manifest first, so a crash between the manifest and
the deletion is finished by the next run. Two runs of one stream must not run at once (give the deployment
a concurrency limit of 1).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.core import ChunkReport
from tasks.core.watermarks import read_watermark, save_watermark
from tasks.files.inputs import InputFile
from tasks.files.split import ChunkSpec, iter_chunks

MIB = 1 << 20


def file_key(f: InputFile) -> str:
    """A file's key in the manifest: its absolute path."""
    return str(Path(f.path).resolve())


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """Name, size, mtime and a hash of the first and last MiB."""
    p = Path(path)
    st = p.stat()
    digest = hashlib.blake2b(digest_size=16)
    with p.open("rb") as fh:
        digest.update(fh.read(MIB))
        if st.st_size > MIB:
            fh.seek(max(MIB, st.st_size - MIB))
            digest.update(fh.read(MIB))
    return {"name": p.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "edges": digest.hexdigest()}


@dataclass
class FileManifest:
    """The processed files of one stream (source + output + transform) and the parts each one wrote."""

    flow: str
    stream: str
    output_dir: Path
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: str | None = None
    garbage: list[str] = field(default_factory=list)
    fingerprints: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, flow: str, stream: str, output_dir: Path, *, reset: bool) -> FileManifest:
        stored = read_watermark(flow, stream) or {}
        m = cls(flow=flow, stream=stream, output_dir=output_dir, pending=stored.get("pending"),
                garbage=list(stored.get("garbage", [])))
        if not reset:
            m.files = dict(stored.get("files", {}))
        else:  # start over: every part of earlier runs goes, the new run writes all files again
            m.garbage += [part for entry in stored.get("files", {}).values() for part in entry.get("parts", [])]
        return m

    def save(self, run_key: str) -> None:
        save_watermark(self.flow, self.stream, {"files": self.files, "pending": self.pending,
                                                "garbage": self.garbage}, run_key=run_key)

    def changed(self, inputs: Sequence[InputFile]) -> list[InputFile]:
        """The inputs that are new or differ from their recorded fingerprint (fingerprints kept for :meth:`end`)."""
        todo = []
        for f in inputs:
            fp = self.fingerprints[file_key(f)] = file_fingerprint(f.path)
            if self.files.get(file_key(f), {}).get("fingerprint") != fp:
                todo.append(f)
        return todo

    def begin(self, run_dir: str, run_key: str) -> list[str]:
        """Finish earlier deletions, drop the directory of an unfinished run of another key, mark this run
        pending. Returns what was removed (for the log)."""
        removed = self._collect()
        if self.pending and self.pending != run_dir:
            stale = self.output_dir / self.pending
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
                removed.append(self.pending)
        self.pending = run_dir
        self.save(run_key)
        return removed

    def end(self, run_dir: str, run_key: str, chunk_files: dict[int, str], reports: dict[int, ChunkReport]) -> int:
        """Record the files whose chunks all finished; schedule the old parts of re-processed files and the
        parts of unfinished ones for deletion; delete them. Returns the number of files recorded."""
        by_file: dict[str, list[int]] = {}
        for index, path in chunk_files.items():
            by_file.setdefault(path, []).append(index)
        recorded = 0
        for path, indices in by_file.items():
            parts = [self._relative(o) for i in indices if i in reports for o in reports[i].extra.get("outputs", [])]
            if all(i in reports for i in indices):
                old = self.files.get(path, {}).get("parts", [])
                self.garbage += [p for p in old if p not in parts]
                self.files[path] = {"fingerprint": self.fingerprints[path], "run": run_dir, "parts": parts}
                recorded += 1
            else:
                self.garbage += parts
        if self.pending == run_dir:
            self.pending = None
        self.save(run_key)
        self._collect()
        self.save(run_key)
        return recorded

    def _relative(self, path: str) -> str:
        return os.path.relpath(path, self.output_dir)

    def _collect(self) -> list[str]:
        gone = []
        for rel in self.garbage:
            target = self.output_dir / rel
            if target.is_file():
                target.unlink(missing_ok=True)
                gone.append(rel)
            parent = target.parent
            while parent != self.output_dir and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
        self.garbage = []
        return gone


def per_file_chunks(files: Sequence[InputFile], *, chunk_bytes: int, chunk_files: dict[int, str]
                    ) -> Iterator[ChunkSpec]:
    """Chunks that never mix two files (a file's parts are its own), numbered across the run; fills
    ``chunk_files`` (chunk index -> file path) as they are planned."""
    index = 0
    for f in files:
        for spec in iter_chunks([f], chunk_bytes=chunk_bytes):
            chunk_files[index] = file_key(f)
            yield spec.model_copy(update={"index": index})
            index += 1


__all__ = ["FileManifest", "file_fingerprint", "file_key", "per_file_chunks"]
