"""Resolve the ``source`` of file_transform into a sorted list of typed input files.

Format comes from the suffix *and* the first bytes: magic bytes decide compression (gzip ``1f 8b``)
and Parquet (``PAR1``), because a ``.csv`` that is really gzip, or a ``.gz`` that is not, is common in
real drops. An explicit ``input_format`` overrides the text format; compression is still sniffed.
"""

from __future__ import annotations

import glob as _glob
import gzip
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from tasks.core import ConfigError, InputFormat, SourceError
from tasks.core.errors import InputNotFound

FileFormat = Literal["csv", "tsv", "jsonl", "parquet"]
Compression = Literal["none", "gzip"]

_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"
_SUFFIX_FORMATS: dict[str, FileFormat] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_GLOB_CHARS = frozenset("*?[")


class InputFile(BaseModel):
    """One input file as planned: enough to read it and to notice when it changed (size, mtime)."""

    model_config = ConfigDict(frozen=True)

    path: str
    format: FileFormat
    compression: Compression = "none"
    size: int
    mtime_ns: int = 0


def _is_glob(source: str) -> bool:
    return any(ch in _GLOB_CHARS for ch in source)


def _sniff_text_format(head: bytes) -> FileFormat:
    first = head.split(b"\n", 1)[0].strip()
    if first.startswith(b"{"):
        return "jsonl"
    if b"\t" in first and b"," not in first:
        return "tsv"
    return "csv"


def detect_format(path: str | Path, input_format: InputFormat = "auto") -> InputFile:
    """Describe one file: its text format and compression, from suffix and magic bytes.

    Raises SourceError when the file is missing or claims to be Parquet without the ``PAR1`` magic.
    """
    p = Path(path)
    try:
        stat = p.stat()
        with p.open("rb") as fh:
            magic = fh.read(4)
    except FileNotFoundError:
        msg = f"input file {str(p)!r} does not exist; check the path (relative paths start at {Path.cwd()})"
        raise InputNotFound(msg) from None
    except IsADirectoryError:
        msg = f"input {str(p)!r} is a directory; pass the directory itself as source or a glob of its files"
        raise SourceError(msg) from None
    compression: Compression = "gzip" if magic.startswith(_GZIP_MAGIC) else "none"
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".gzip"):
        suffixes = suffixes[:-1]
    by_suffix = _SUFFIX_FORMATS.get(suffixes[-1]) if suffixes else None
    fmt: FileFormat
    if input_format != "auto":
        fmt = input_format
    elif compression == "none" and magic == _PARQUET_MAGIC:
        fmt = "parquet"
    elif by_suffix is not None:
        fmt = by_suffix
    else:
        head = b""
        try:
            opener = gzip.open if compression == "gzip" else open
            with opener(p, "rb") as fh:
                head = fh.read(4096)
        except (OSError, EOFError):
            head = b""
        fmt = _sniff_text_format(head)
    if fmt == "parquet" and stat.st_size > 0 and magic != _PARQUET_MAGIC:
        msg = (
            f"{str(p)!r} is treated as Parquet but does not start with the PAR1 magic bytes; "
            "fix the file or pass input_format='csv'|'tsv'|'jsonl'"
        )
        raise SourceError(msg)
    return InputFile(path=str(p), format=fmt, compression=compression, size=stat.st_size, mtime_ns=stat.st_mtime_ns)


def _expand(source: str) -> list[Path]:
    if _is_glob(source):
        return [Path(m) for m in _glob.glob(source, recursive=True) if Path(m).is_file()]
    p = Path(source)
    if p.is_dir():
        return [c for c in p.iterdir() if c.is_file() and not c.name.startswith((".", "_"))]
    if not p.exists():
        msg = (
            f"input {source!r} does not exist; check the path (relative paths start at {Path.cwd()}) "
            "or pass a glob such as 'data/in/*.csv.gz'"
        )
        raise InputNotFound(msg)
    return [p]


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Glob semantics of ``glob.glob(recursive=True)``: ``*`` stays in one directory, ``**/`` spans many."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape("["))
                i += 1
            else:
                body = pattern[i + 1 : end]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _resolved_pattern(pattern: str) -> str:
    """A glob as the real paths it matches: its directories before the first wildcard resolved (symlinks, ``..``),
    as the probes are; a ``..`` after a wildcard collapsed by name."""
    parts = Path(pattern).absolute().parts
    first = next(i for i, part in enumerate(parts) if _is_glob(part))
    return os.path.normpath(os.path.join(os.path.realpath(Path(*parts[:first])), *parts[first:]))


def _check_output_dir(
    sources: Sequence[str], output_dir: str | Path, matches: Mapping[str, Sequence[str]] | None = None
) -> None:
    """Refuse an output_dir the source would read back: a glob that matches its part files, a folder that holds
    it, or (a safety net for what the pattern cannot show, e.g. a symlink behind a wildcard) a glob that already
    matched a file inside it (``matches``: a source's files, resolved). Paths are compared resolved."""
    out = Path(output_dir).resolve()
    probes = [out / "part-00000.parquet", out / "part-00000.csv", out / "_rejects" / "part-00000.csv"]
    for source in sources:
        src = Path(source)
        inside = False
        if _is_glob(source):
            pattern = _glob_regex(_resolved_pattern(source))
            inside = any(pattern.match(str(probe)) for probe in probes) or \
                any(out in Path(m).parents for m in (matches or {}).get(source, ()))
        elif src.is_dir():
            inside = out == src.resolve() or src.resolve() in out.parents
        if inside:
            msg = (
                f"output_dir {str(output_dir)!r} is inside the input {source!r}: the next run would read this "
                "run's outputs as inputs; choose an output_dir outside the input folder or glob"
            )
            raise ConfigError(msg)


def resolve_inputs(
    source: str | Path | Sequence[str | Path],
    *,
    input_format: InputFormat = "auto",
    output_dir: str | Path | None = None,
) -> list[InputFile]:
    """Expand a file, a directory (its visible files), a glob, or a list of them into sorted InputFiles.

    Sorted by path so chunk indices are stable across reruns, which is what makes resume by run_key
    work. Refuses an ``output_dir`` that the source would match, so outputs never feed the next run.
    """
    sources = [str(source)] if isinstance(source, (str, Path)) else [str(s) for s in source]
    if not sources:
        msg = "source is empty; pass a file, a directory or a glob such as 'data/in/*.csv'"
        raise ConfigError(msg)
    found: dict[str, Path] = {}
    resolved: dict[str, list[str]] = {}
    for s in sources:
        try:
            matches = _expand(s)
        except OSError as exc:  # a name too long, a path through a file, no permission
            msg = f"source {s[:200]!r} cannot be read: {exc.strerror or exc}; pass a file, a directory or a glob"
            raise SourceError(msg) from None
        if not matches:
            msg = (
                f"source {s!r} matched no files; check the pattern (relative to {Path.cwd()}), "
                "and quote it so the shell does not expand it"
            )
            raise SourceError(msg)
        resolved[s] = [str(m.resolve()) for m in matches]
        for key, m in zip(resolved[s], matches, strict=True):
            found.setdefault(key, m)
    paths = [found[k] for k in sorted(found)]
    if output_dir is not None:
        _check_output_dir(sources, output_dir, resolved)
    return [detect_format(p, input_format) for p in paths]


__all__ = ["Compression", "FileFormat", "InputFile", "InputFormat", "detect_format", "resolve_inputs"]
