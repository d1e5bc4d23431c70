"""Reading a finished run's output back in Python: :meth:`RunSummary.results` and ``collect=True``.

Every flow that writes outputs writes one part file per chunk (or per group of pages), named by its
index: ``part-000017.jsonl|parquet`` (``part-%06d``: batch_map, replay, api_bulk, api_extract) or
``part-00017.parquet|csv|jsonl`` (``part-%05d``: file_transform, also ``part-00017-1.csv`` and below
``col=value/`` folders with ``partition_by``; rejects in ``_rejects/``). Only those names, and for
file_transform only its partition folders, are read: other files and folders in the output (another run's
output nested in it, the user's notes, ``part-7.jsonl``) are neither read nor removed. Reading the parts in
index order gives the rows in input order, one part in memory at a time. Parts whose index is not below the
run's chunk count belong to an earlier run with a different layout and are left out.

Formats: JSON lines are read with :func:`json.loads` (the rows exactly as written), Parquet with pyarrow
batch by batch (types kept; a column typed differently in different parts, such as api_extract's int64 and
double, is read as their common type where that keeps every value), CSV with polars (types inferred over the whole part: CSV carries none;
rejected rows keep every field as the text it was).
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Collection, Iterable, Iterator, Mapping, Sized
from itertools import islice
from pathlib import Path
from typing import Any, Literal

from tasks.core.errors import ConfigError, TooManyToCollect
from tasks.core.objstore import is_url
from tasks.core.sources import jsonl_records

COLLECT_MAX_ROWS = 100_000
"""``collect=True`` holds at most this many rows in memory; above it, set ``output`` and iterate
``summary.results()`` (it reads one part at a time)."""

REJECTS_DIR = "_rejects"
FILE_TRANSFORM = "file-transform"
Layout = Literal["chunks", "files", "rejects"]
"""``chunks``: ``part-%06d.jsonl|parquet`` directly in the folder (tasks.core.items, tasks.api.outputs);
``files``: file_transform's ``part-%05d[-n].<fmt>``, also in ``col=value/`` partition folders (tasks.files.write);
``rejects``: file_transform's ``_rejects/part-%05d.<input format>``."""
_PARTS: dict[str, re.Pattern[str]] = {
    "chunks": re.compile(r"^part-(\d{6}|[1-9]\d{6,})\.(?:jsonl|parquet)$"),
    "files": re.compile(r"^part-(\d{5}|[1-9]\d{5,})(?:-\d+)?\.(?:parquet|csv|jsonl)$"),
    "rejects": re.compile(r"^part-(\d{5}|[1-9]\d{5,})\.(?:parquet|csv|tsv|jsonl)$"),
}


def part_index(name: str, layout: Layout = "chunks") -> int | None:
    """The chunk index of a part file's name as ``layout`` writes it (``part-000017.jsonl`` -> 17); None for any
    other name (``part-7.jsonl``, ``part-000017.jsonl.bak``, ``notes.txt``)."""
    match = _PARTS[layout].match(name)
    return int(match.group(1)) if match else None


def layout_of(flow: str) -> Layout:
    """The part layout ``flow`` writes: ``files`` for file_transform, ``chunks`` for every other flow."""
    return "files" if flow == FILE_TRANSFORM else "chunks"


def _is_partition(name: str) -> bool:
    """A hive partition folder (``col=value``) as file_transform's ``partition_by`` writes them."""
    return "=" in name and not name.startswith((".", "_"))


def _local_parts(base: Path, layout: Layout) -> list[tuple[str, Path]]:
    """``(relative path, path)`` of the candidate files directly in ``base`` and, for ``files``, in its
    partition folders (nested: one level per partition column)."""
    found: list[tuple[str, Path]] = []
    folders = [base] if base.is_dir() else []
    while folders:
        folder = folders.pop()
        for path in folder.iterdir():
            if path.is_file():
                found.append((path.relative_to(base).as_posix(), path))
            elif layout == "files" and _is_partition(path.name) and path.is_dir():
                folders.append(path)
    return found


def part_files(root: str | Path, *, below: int | None = None, layout: Layout = "chunks") -> list[Path | str]:
    """The part files ``layout`` writes in ``root`` (file_transform's partition folders included) in chunk order;
    ``below``: only indices < it. Under an object storage URL, the parts' URLs. Other files and folders (a
    nested output of another run, the user's files) are not parts."""
    found: list[tuple[int, str, Path | str]] = []
    if is_url(str(root)):
        from tasks.core.objoutput import list_parts

        base_url = str(root).rstrip("/") + "/"
        candidates: list[tuple[str, Path | str]] = [(url.removeprefix(base_url), url) for url in list_parts(str(root))]
    else:
        candidates = list(_local_parts(Path(root), layout))
    for rel, path in candidates:
        *folders, name = rel.split("/")
        index = part_index(name, layout)
        if index is None or not all(layout == "files" and _is_partition(f) for f in folders):
            continue
        if below is None or index < below:
            found.append((index, rel, path))
    return [path for _, _, path in sorted(found, key=lambda f: (f[0], f[1]))]


def clear_parts(root: str | Path, *, keep: Collection[str] = ()) -> int:
    """Delete the part files batch_map, api_bulk and api_extract write (``part-%06d.jsonl|parquet``) directly in
    ``root`` (not in its subfolders; other files stay, ``part-7.jsonl`` too) but those named in ``keep``; how
    many went.

    A fresh run's part files are named by chunk index, like those an earlier run left in the same folder: a
    chunk that fails as a whole, or one the run never reaches, would leave the earlier run's part in its place,
    and :func:`iter_results` would hand back rows the run never made."""
    if is_url(str(root)):
        from tasks.core.objoutput import delete_parts, list_parts

        base_url = str(root).rstrip("/") + "/"
        names = [name for url in list_parts(str(root))
                 if "/" not in (name := url.removeprefix(base_url)) and part_index(name) is not None
                 and name not in keep]
        if names:
            delete_parts(str(root), names)
        return len(names)
    folder = Path(root)
    if not folder.is_dir():
        return 0
    found = [p for p in folder.iterdir() if part_index(p.name) is not None and p.name not in keep and p.is_file()]
    for path in found:
        path.unlink(missing_ok=True)
    return len(found)


def read_rows(path: Path | str, *, typed: bool = True, types: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """The rows of one part file, lazily where the format allows it; ``typed=False`` keeps CSV fields as text.
    A part in object storage (a URL) is read whole, then the same way. ``types`` (pyarrow types by column, from
    :func:`relaxed_types`): a Parquet part's columns are cast to them where the cast keeps every value."""
    if is_url(str(path)):
        from tasks.core.objoutput import read_part

        source: Any = io.BytesIO(read_part(str(path)))
        suffix = "." + str(path).rsplit(".", 1)[-1]
    else:
        source = path = Path(path)
        suffix = path.suffix
    if suffix == ".jsonl":
        with (io.TextIOWrapper(source, encoding="utf-8") if not isinstance(source, Path)
              else source.open(encoding="utf-8")) as fh:
            for _, row in jsonl_records(fh, str(path)):
                yield row
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(source).iter_batches(batch_size=10_000):
            yield from (_relaxed(batch, types) if types else batch).to_pylist()
    else:
        import polars as pl

        frame = pl.read_csv(source, separator="\t" if suffix == ".tsv" else ",", infer_schema=typed,
                            infer_schema_length=None)
        yield from frame.iter_rows(named=True)


def iter_results(output_path: str | None, *, flow: str, chunks_total: int | None, what: str = "results") -> Iterator[Any]:
    """The rows of every part under ``output_path`` in input order (see the module docstring).

    A run without outputs is a ConfigError now, not an empty iterator later."""
    if output_path and chunks_total == 0:  # an empty source: no chunk, no part, no folder
        return iter(())
    root = _output_root(output_path, flow=flow, what=what)
    return _rows(part_files(root, below=chunks_total, layout=layout_of(flow)), typed=True)


def iter_rejects(output_path: str | None, *, flow: str) -> Iterator[Any]:
    """file_transform's rejected rows (``<output>/_rejects/part-*``) in input order, each with its reason."""
    root = _output_root(output_path, flow=flow, what="rejects")
    if is_url(str(root)):
        return _rows(part_files(f"{root}/{REJECTS_DIR}", layout="rejects"), typed=False)
    root = root / REJECTS_DIR
    return _rows(part_files(root, layout="rejects") if root.is_dir() else [], typed=False)


def _rows(paths: list[Path | str], *, typed: bool) -> Iterator[Any]:
    types = relaxed_types(paths) if typed else None
    for path in paths:
        yield from read_rows(path, typed=typed, types=types)


def relaxed_types(paths: Iterable[Path | str]) -> dict[str, Any]:
    """The common pyarrow type of each column of the local Parquet parts among ``paths`` (from their footers):
    each part's types come from its own rows (``amount`` int64 in one, double in another; a column of nulls
    beside one of text), so reading the parts as one casts to the supertype, as polars' ``how="diagonal_relaxed"``
    does. Only columns whose types differ are named; a column without a common type keeps each part's own."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    seen: dict[str, set[Any]] = {}
    for path in paths:
        if not is_url(str(path)) and str(path).endswith(".parquet"):
            for field in pq.read_schema(path):
                seen.setdefault(field.name, set()).add(field.type)
    types = {}
    for name, found in seen.items():
        if len(found) > 1:
            try:
                types[name] = pa.unify_schemas([pa.schema([(name, t)]) for t in found],
                                               promote_options="permissive").field(name).type
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                continue
    return types


def _relaxed(batch: Any, types: Mapping[str, Any]) -> Any:
    """``batch`` with its columns cast to ``types``; a column the cast would change (an integer past 2**53 as a
    float) stays as it is."""
    import pyarrow as pa

    columns = []
    for field, column in zip(batch.schema, batch.columns, strict=True):
        target = types.get(field.name)
        if target is not None and target != field.type:
            with contextlib.suppress(pa.ArrowInvalid, pa.ArrowNotImplementedError):
                column = column.cast(target, safe=True)
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def prepare_collect(flow: str, values: dict[str, Any], sources: Iterable[str], *, has_output: bool = True) -> None:
    """``collect=True`` before the run: refuse a source known to be too big, and without ``output`` keep the
    parts in the run's state folder (``<state>/runs/<flow>/<run_key>/results``, a run_key is chosen if none
    was given) so a rerun with the same run_key finds the parts of its resumed chunks."""
    for name in sources:
        value = values.get(name)
        if isinstance(value, Sized) and not isinstance(value, str | bytes | Mapping) and len(value) > COLLECT_MAX_ROWS:
            msg = (f"collect=True holds at most {COLLECT_MAX_ROWS:,} rows in memory and {name} has {len(value):,} "
                   "items: pass output=<folder> instead and iterate summary.results() (one part at a time)")
            raise ConfigError(msg)
    if has_output and values.get("output") is None:
        from tasks.core.settings import EngineSettings
        from tasks.core.state import RunDir, new_run_key, validate_run_key

        run_key = values.get("run_key") or new_run_key()
        values["run_key"] = validate_run_key(run_key)
        values["output"] = str(RunDir.for_run(flow, run_key, EngineSettings().resolved_state_dir()).root / "results")


def collect_rows(summary: Any) -> None:
    """``collect=True`` after the run: the rows into ``summary.collected``, or TooManyToCollect past the cap."""
    rows = list(islice(summary.results(), COLLECT_MAX_ROWS + 1))
    if len(rows) > COLLECT_MAX_ROWS:
        msg = (f"collect=True holds at most {COLLECT_MAX_ROWS:,} rows and this {summary.flow} run wrote more: "
               f"they are in {summary.output_path}; iterate summary.results() (this error's .summary) instead")
        raise TooManyToCollect(msg, summary)
    summary._collected = rows


def _output_root(output_path: str | None, *, flow: str, what: str) -> Any:
    if not output_path:
        msg = (f"this {flow} run kept no outputs, so there are no {what} to read: run it with output=<folder> "
               "(or collect=True from Python for small runs) and read them with summary.results()")
        raise ConfigError(msg)
    if is_url(output_path):
        return output_path
    root = Path(output_path)
    if not root.is_dir():
        msg = (f"{flow} output {output_path!r} is not a folder of part files (a table or a missing folder): "
               f"summary.{what}() reads part files; query the table instead, or check the path")
        raise ConfigError(msg)
    return root


__all__ = [
    "COLLECT_MAX_ROWS",
    "FILE_TRANSFORM",
    "Layout",
    "TooManyToCollect",
    "clear_parts",
    "collect_rows",
    "iter_rejects",
    "iter_results",
    "layout_of",
    "part_files",
    "part_index",
    "prepare_collect",
    "read_rows",
    "relaxed_types",
]
