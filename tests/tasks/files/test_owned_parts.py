from __future__ import annotations

from pathlib import Path

from tasks.files.chunks import remove_stale_parts
from tasks.files.write import owned_parts


def _touch(root: Path, *rels: str) -> None:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)


def test_only_the_parts_file_transform_writes_where_it_writes_them_are_removed(tmp_path: Path) -> None:
    ours = ["part-00000.parquet", "part-00003.csv", "k=a/part-00004-1.csv", "k=a/j=b/part-00005.jsonl",
            "_rejects/part-00006.tsv"]
    users = ["part-7.csv", "part-00009.csv.bak", "notes.txt", "backup/part-00008.csv", "run-x/part-00004.parquet",
             "_rejects/part-7.tsv"]
    _touch(tmp_path, *ours, *users)
    assert sorted(str(p.relative_to(tmp_path)) for p, _ in owned_parts(tmp_path)) == sorted(ours)
    removed = remove_stale_parts(tmp_path, 3)
    assert sorted(str(p.relative_to(tmp_path)) for p in removed) == sorted(ours[1:])
    assert (tmp_path / "part-00000.parquet").exists()
    assert all((tmp_path / rel).exists() for rel in users)  # a user's files and other runs' folders stay
