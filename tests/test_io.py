"""Atomic writes: a file appears whole under its name or not at all, with the process's usual permissions."""

from __future__ import annotations

import os
import stat

import pytest

from melanet.io import atomic_open, atomic_path, write_bytes, write_text


def test_atomic_writes_land_whole_with_usual_permissions(tmp_path):
    target = tmp_path / "new" / "folder" / "a.txt"  # folders are made when missing
    write_text(target, "hello")
    write_bytes(tmp_path / "b.bin", b"\x00\x01")
    with atomic_path(tmp_path / "c.txt") as tmp:
        tmp.write_text("via path")
    assert target.read_text() == "hello" and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c.txt").read_text() == "via path"
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.bin"
    write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write(b"half of the new")
            raise RuntimeError("killed midway")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"x")
            raise RuntimeError("killed midway")
    assert target.read_bytes() == b"old" and not (tmp_path / "b.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
