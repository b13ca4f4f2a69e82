"""Atomic writes: all or nothing, and outputs readable by others like any new file."""

from __future__ import annotations

import os
import stat

import pytest

from glasses.files import OUTPUT_MARKER, atomic_dir, temporary_file, write_json, write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_and_dirs_get_the_umask_permissions_not_mkstemps(tmp_path, umask_022):
    assert _mode(write_text(tmp_path / "report.md", "# hi\n")) == 0o644
    assert _mode(write_json(tmp_path / "sub" / "summary.json", {"a": 1})) == 0o644
    with atomic_dir(tmp_path / "cache") as tmp:
        (tmp / "x").write_text("x")
    assert _mode(tmp_path / "cache") == 0o755


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = write_text(tmp_path / "model.keras", "old")
    with pytest.raises(RuntimeError), temporary_file(target, suffix=".keras") as tmp:
        assert tmp.suffix == ".keras" and tmp.parent == tmp_path
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]


def test_a_failed_directory_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "out") as tmp:
        (tmp / "part").write_text("x")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_a_full_target_only_when_asked(tmp_path):
    target = tmp_path / "data"
    target.mkdir()
    (target / "theirs").write_text("another writer's output")
    (target / OUTPUT_MARKER).touch()  # even one of ours stays without replace
    with pytest.raises(OSError), atomic_dir(target, replace=False) as tmp:
        (tmp / "ours").write_text("x")
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
    assert sorted(p.name for p in target.iterdir()) == [OUTPUT_MARKER, "theirs"]
    with atomic_dir(target) as tmp:
        (tmp / "ours").write_text("x")
    assert sorted(p.name for p in target.iterdir()) == [OUTPUT_MARKER, "ours"]


def test_atomic_dir_fills_an_empty_target_without_replace(tmp_path):
    target = tmp_path / "data"
    target.mkdir()
    with atomic_dir(target, replace=False) as tmp:
        (tmp / "ours").write_text("x")
    assert sorted(p.name for p in target.iterdir()) == [OUTPUT_MARKER, "ours"]
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
