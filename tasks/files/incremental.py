"""file_transform incremental: each run reads only the files that are new or changed since the last run.

A file is known by its path, size, modification time and a hash of its first and last MiB (a changed file
with the same size and mtime is still caught at either end; a full hash would read every file on every
run). The manifest (tasks.core.watermarks, in the state dir) belongs to the output_dir: it maps every
processed file to its fingerprint, the output options it was processed with (transform, schema, format)
and its parts. Each incremental run writes to ``<output_dir>/run-<run_key>/`` and, in incremental mode, no
part mixes two files, so a file's parts are its own. Reading ``<output_dir>/run-*/`` gives every row of
the current files once:

* a file all of whose chunks finished is recorded with its new parts; the parts an earlier run wrote for
  it (an older version of the file, or other output options) are deleted;
* a file with a chunk that failed is not recorded and its parts of this run are deleted: the next run
  processes it again whole (no duplicates, nothing lost);
* a recorded file that the source no longer gives (deleted, renamed, or outside a narrower glob) is
  forgotten and its parts are deleted when the run that notices it ends;
* a run killed before it ended is marked pending in the manifest; a later run with another run_key
  deletes the parts in that run's directory that no recorded file owns before it starts (its files were
  not recorded, so they are processed again); a rerun with the same run_key resumes it instead;
* a run numbers its chunks after every chunk an earlier finished run of the same run_key planned, so a
  rerun of a finished run_key (new or changed files, or nothing) never writes over a recorded part, and
  after its end the parts of its directory that no recorded file owns (an earlier attempt's plan that
  shrank) are deleted;
* a reset (``reset_incremental=True``, or ``python -m tasks.core.state reset-incremental``, which keeps the
  manifest marked ``reset``) forgets every file's fingerprint but not its parts: the next run reads every
  file again and a file's old parts are deleted only once its new ones are recorded, like a changed file's.
  A reset run killed midway leaves the files it had not finished with their old parts (and its unrecorded
  new parts, dropped or resumed as above): until the next run ends a row may be there twice, never missing.
  When a reset run ends, the parts that no recorded file owns in every run directory the manifest knows
  are deleted (only ``part-*`` files batchflows wrote: other files stay).

Deletions go through a ``garbage`` list written to the manifest first, so a crash between the manifest and
the deletion is finished by the next run. Two runs of one output_dir must not run at once (give the
deployment a concurrency limit of 1).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.core import ChunkReport
from tasks.core.watermarks import read_watermark, save_watermark
from tasks.files.inputs import InputFile
from tasks.files.split import ChunkSpec, iter_chunks
from tasks.files.write import owned_parts, part_index

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
    """The processed files of one output_dir and the parts each one wrote."""

    flow: str
    stream: str
    output_dir: Path
    identity: str = ""  # the output options (transform, schema, format): a file processed with others is redone
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: str | None = None
    garbage: list[str] = field(default_factory=list)
    next_index: dict[str, int] = field(default_factory=dict)  # run dir -> first chunk index a new attempt uses
    fingerprints: dict[str, dict[str, Any]] = field(default_factory=dict)
    sweep: bool = False  # a reset's run: at its end, the run directories the manifest knows are swept

    @classmethod
    def load(cls, flow: str, stream: str, output_dir: Path, *, reset: bool, identity: str = "",
             legacy_stream: str | None = None) -> FileManifest:
        """The stored manifest of ``stream``; else the one of ``legacy_stream`` (its key before it was the
        output_dir alone), so an upgrade does not read every file again."""
        stored = read_watermark(flow, stream)
        if stored is None and legacy_stream is not None:
            stored = read_watermark(flow, legacy_stream)
        stored = stored or {}
        reset = reset or bool(stored.get("reset"))  # the CLI's reset-incremental marks the stored manifest
        m = cls(flow=flow, stream=stream, output_dir=output_dir, identity=identity, pending=stored.get("pending"),
                garbage=list(stored.get("garbage", [])), next_index=dict(stored.get("next_index", {})),
                files=dict(stored.get("files", {})), sweep=reset or bool(stored.get("sweep")))
        if reset:  # start over: every file is read again; its old parts go once its new ones are recorded
            m.files = {path: {**entry, "fingerprint": None} for path, entry in m.files.items()}
        return m

    def save(self, run_key: str) -> None:
        save_watermark(self.flow, self.stream, {"files": self.files, "pending": self.pending, "sweep": self.sweep,
                                                "garbage": self.garbage, "next_index": self.next_index},
                       run_key=run_key)

    def changed(self, inputs: Sequence[InputFile]) -> list[InputFile]:
        """The inputs that are new or differ from their recorded fingerprint or output options. ``inputs``
        are the run's files: :meth:`end` forgets every recorded file that is not among them."""
        todo = []
        self.fingerprints = {}
        for f in inputs:
            fp = self.fingerprints[file_key(f)] = file_fingerprint(f.path)
            entry = self.files.get(file_key(f), {})
            if entry.get("fingerprint") != fp or entry.get("identity", self.identity) != self.identity:
                todo.append(f)
        return todo

    def first_index(self, run_dir: str) -> int:
        """The first chunk index of a run in ``run_dir``: past every chunk a finished run there planned and
        every part a recorded file owns there, so a rerun of a finished run_key overwrites none of them."""
        owned = [part_index(Path(rel).name) for rel in self._owned() if Path(rel).parts[0] == run_dir]
        return max([self.next_index.get(run_dir, 0), *(i + 1 for i in owned if i is not None)])

    def begin(self, run_dir: str, run_key: str) -> list[str]:
        """Finish earlier deletions, delete the parts of an unfinished run of another key (those no recorded
        file owns), mark this run pending. Returns what was removed (for the log)."""
        removed = self._collect()
        if self.pending and self.pending != run_dir:
            removed += self._sweep(self.pending)
        self.pending = run_dir
        self.save(run_key)
        return removed

    def end(self, run_dir: str, run_key: str, chunk_files: dict[int, str], reports: dict[int, ChunkReport]
            ) -> tuple[int, int]:
        """Record the files whose chunks all finished and forget the files the run did not see; schedule the
        old parts of re-processed files, the parts of unfinished and of forgotten ones for deletion; delete
        them and the parts of ``run_dir`` that no recorded file owns. Returns (files recorded, forgotten)."""
        recorded = self._record(run_dir, chunk_files, reports)
        gone = [path for path in self.files if path not in self.fingerprints]
        for path in gone:
            self.garbage += self.files.pop(path).get("parts", [])
        if self.pending == run_dir:
            self.pending = None
        self.save(run_key)
        self._collect()
        swept = [part_index(Path(rel).name) or 0 for rel in self._sweep(run_dir)]
        if chunk_files or swept:  # the run's ledger may hold these chunks: a later attempt numbers past them
            self.next_index[run_dir] = max(self.next_index.get(run_dir, 0), *(i + 1 for i in [*chunk_files, *swept]))
        if self.sweep:
            for known in sorted(self._run_dirs() - {run_dir}):
                self._sweep(known)
            self.sweep = False
        self.save(run_key)
        return recorded, len(gone)

    def _run_dirs(self) -> set[str]:
        """The run directories this manifest knows: of recorded parts and of every run that ended."""
        return {Path(rel).parts[0] for rel in self._owned()} | set(self.next_index)

    def _record(self, run_dir: str, chunk_files: dict[int, str], reports: dict[int, ChunkReport]) -> int:
        by_file: dict[str, list[int]] = {}
        for index, path in chunk_files.items():
            by_file.setdefault(path, []).append(index)
        recorded = 0
        for path, indices in by_file.items():
            parts = [self._relative(o) for i in indices if i in reports for o in reports[i].extra.get("outputs", [])]
            if all(i in reports for i in indices):
                old = self.files.get(path, {}).get("parts", [])
                self.garbage += [p for p in old if p not in parts]
                self.files[path] = {"fingerprint": self.fingerprints[path], "identity": self.identity,
                                    "run": run_dir, "parts": parts}
                recorded += 1
            else:
                self.garbage += parts
        return recorded

    def _owned(self) -> set[str]:
        return {rel for entry in self.files.values() for rel in entry.get("parts", [])}

    def _relative(self, path: str | Path) -> str:
        return os.path.relpath(path, self.output_dir)

    def _collect(self) -> list[str]:
        gone = [rel for rel in self.garbage if self._unlink(rel)]
        self.garbage = []
        return gone

    def _sweep(self, run_dir: str) -> list[str]:
        """Delete the part files under ``run_dir`` that no recorded file owns: an unfinished attempt's."""
        root = self.output_dir / run_dir
        if not root.is_dir():
            return []
        owned = self._owned()
        stray = [rel for p, _ in sorted(owned_parts(root)) if (rel := self._relative(p)) not in owned]
        return [rel for rel in stray if self._unlink(rel)]

    def _unlink(self, rel: str) -> bool:
        """Delete one part and the directories it leaves empty (a partition's, the run's)."""
        target = self.output_dir / rel
        found = target.is_file()
        if found:
            target.unlink(missing_ok=True)
        parent = target.parent
        while parent != self.output_dir and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
        return found


def per_file_chunks(files: Sequence[InputFile], *, chunk_bytes: int, chunk_files: dict[int, str],
                    start: int = 0) -> Iterator[ChunkSpec]:
    """Chunks that never mix two files (a file's parts are its own), numbered across the run from ``start``;
    fills ``chunk_files`` (chunk index -> file path) as they are planned."""
    index = start
    for f in files:
        for spec in iter_chunks([f], chunk_bytes=chunk_bytes):
            chunk_files[index] = file_key(f)
            yield spec.model_copy(update={"index": index})
            index += 1


__all__ = ["FileManifest", "file_fingerprint", "file_key", "per_file_chunks"]
