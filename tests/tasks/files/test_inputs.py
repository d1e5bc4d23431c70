"""tasks/files/inputs.py: an output_dir the source would read back is refused, whatever way the glob names the
folder (a symlink, ``..``). Real folders and symlinks in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tasks.core import ConfigError
from tasks.files.inputs import resolve_inputs


def _folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "in").mkdir(parents=True)
    (root / "in" / "a.csv").write_text("id,x\n1,a\n")
    return root


def test_a_glob_through_a_symlink_is_compared_by_its_real_path(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    os.symlink(root, tmp_path / "link")
    with pytest.raises(ConfigError, match="inside the input"):
        resolve_inputs(str(tmp_path / "link" / "**" / "*.csv"), output_dir=root / "out")
    with pytest.raises(ConfigError, match="inside the input"):  # the output named through the link, the input not
        resolve_inputs(str(root / "**" / "*.csv"), output_dir=tmp_path / "link" / "out")
    assert len(resolve_inputs(str(tmp_path / "link" / "in" / "*.csv"), output_dir=root / "out")) == 1


def test_a_glob_with_dot_dot_is_compared_by_its_real_path(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    (root / "in" / "sub").mkdir()
    with pytest.raises(ConfigError, match="inside the input"):
        resolve_inputs(str(root / "in" / ".." / "**" / "*.csv"), output_dir=root / "out")
    with pytest.raises(ConfigError, match="inside the input"):
        resolve_inputs(str(root / "in" / "*" / ".." / ".." / "**" / "*.csv"), output_dir=root / "out")
    (root / "out").mkdir()
    assert len(resolve_inputs(str(root / "out" / ".." / "in" / "*.csv"), output_dir=root / "out")) == 1


def test_a_symlink_behind_a_wildcard_is_refused_once_it_shows_outputs(tmp_path: Path) -> None:
    """A pattern cannot tell where a symlinked folder it walks into leads; the files it matched can."""
    root = _folder(tmp_path)
    (root / "elsewhere" / "out").mkdir(parents=True)
    os.symlink(root / "elsewhere", root / "in" / "linked")
    assert len(resolve_inputs(str(root / "in" / "**" / "*.csv"), output_dir=root / "elsewhere" / "out")) == 1
    (root / "elsewhere" / "out" / "part-00000.csv").write_text("id,x\n1,a\n")
    with pytest.raises(ConfigError, match="inside the input"):
        resolve_inputs(str(root / "in" / "**" / "*.csv"), output_dir=root / "elsewhere" / "out")
