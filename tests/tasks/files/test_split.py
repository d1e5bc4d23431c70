"""tasks/files/split.py: planning a file that is gone since it was listed gives its one chunk (which then fails
naming it), not an error that stops the plan. Real files in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.core import SourceError
from tasks.files.process import process_chunk, resolve_inputs
from tasks.files.split import iter_chunks


@pytest.mark.parametrize("name", ["b.csv", "b.jsonl"])
def test_a_big_file_deleted_before_it_is_split_is_one_chunk(tmp_path: Path, name: str) -> None:
    for stem in ("a", "b", "c"):
        path = tmp_path / f"{stem}{Path(name).suffix}"
        rows = [f'{{"id": {i}}}' for i in range(50)] if name.endswith(".jsonl") else ["id", *map(str, range(50))]
        path.write_text("\n".join(rows) + "\n")
    files = resolve_inputs(tmp_path)
    chunks = iter_chunks(files, chunk_bytes=60)
    planned = [next(chunks)]  # the first chunk of a.* runs while the rest is planned
    (tmp_path / name).unlink()
    planned += list(chunks)
    gone = [c for c in planned if c.files[0].path.endswith(name)]
    assert len(gone) == 1 and (gone[0].files[0].start, gone[0].files[0].end) == (0, None)
    assert {c.files[0].path for c in planned} == {f.path for f in files}
    assert [c.index for c in planned] == list(range(len(planned)))
    with pytest.raises(SourceError, match=rf"{name.replace('.', '[.]')} no longer exists"):
        process_chunk(gone[0], tmp_path / "out")
