"""The work dir keeps apart from the data, is held by one run at a time, and never replaces
what glasses did not make."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from glasses.cli import app
from glasses.errors import OutputError
from glasses.files import OUTPUT_MARKER, atomic_dir
from glasses.workdir import MARKER, check_apart, claim, make_ours
from tests.conftest import balanced_labels, write_kaggle_dataset


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("work", ["data", "data/work", "data/faces-spring-2020/out", ".", "link-to-data/w"])
def test_a_work_dir_in_or_around_the_data_is_refused_and_the_data_untouched(tmp_path, monkeypatch, work):
    monkeypatch.chdir(tmp_path)
    data = write_kaggle_dataset(tmp_path / "data", balanced_labels(12))
    (tmp_path / "link-to-data").symlink_to(data)
    before = _snapshot(data)
    result = CliRunner().invoke(app, ["run", "--preset", "smoke", "--data-dir", "data", "--work-dir", work])
    assert result.exit_code != 0
    assert result.stderr.startswith("error: the data dir data") and "choose a work dir outside" in result.stderr
    assert _snapshot(data) == before


def test_the_data_dir_inside_an_output_folder_is_refused(tmp_path):
    with pytest.raises(OutputError, match="is inside the work dir"):
        check_apart(tmp_path / "work" / "organized", tmp_path / "work")
    check_apart(tmp_path / "data", tmp_path / "work")  # apart: fine


def test_a_work_dir_that_is_a_file_or_cannot_be_written_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        check_apart(None, tmp_path / "file")
    with pytest.raises(OutputError, match="cannot write the work dir .*file/w"), claim(tmp_path / "file" / "w"):
        pass


def test_a_second_run_on_a_held_work_dir_fails_at_once_naming_the_holder(tmp_path):
    with claim(tmp_path / "w"):
        with pytest.raises(OutputError, match=f'in use by .*"pid": {os.getpid()}.*{socket.gethostname()}'):
            with claim(tmp_path / "w"):
                pass
    with claim(tmp_path / "w"):  # released: the next run may start
        pass


def test_the_lock_of_a_killed_run_is_freed_by_the_os(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from glasses.workdir import claim\n"
        f"with claim({str(tmp_path / 'w')!r}):\n    print('held', flush=True); time.sleep(600)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(OutputError, match=f'"pid": {holder.pid}'):
        with claim(tmp_path / "w"):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with claim(tmp_path / "w"):
        assert json.loads((tmp_path / "w" / ".lock").read_text())["pid"] == os.getpid()


def test_temporaries_of_dead_runs_are_removed_at_start_and_nothing_else(tmp_path):
    make_ours(tmp_path / "w")
    (tmp_path / "w" / "split" / ".train.abc.glasses-tmp").mkdir(parents=True)
    (tmp_path / "w" / ".summary.x1.glasses-tmp").write_text("half")
    (tmp_path / "w" / "model" / ".ensemble.x2.glasses-tmp.keras").parent.mkdir()
    (tmp_path / "w" / "model" / ".ensemble.x2.glasses-tmp.keras").write_text("half")
    (tmp_path / "w" / "keep.txt").write_text("mine")
    (tmp_path / "w" / "notes" / "deep").mkdir(parents=True)
    (tmp_path / "w" / "notes" / "deep" / ".draft.tmp").write_text("a user's")  # not our name: kept
    with claim(tmp_path / "w"):
        assert sorted(str(p.relative_to(tmp_path / "w")) for p in (tmp_path / "w").rglob("*")) == [
            ".glasses-workdir", ".lock", "keep.txt", "model", "notes", "notes/deep", "notes/deep/.draft.tmp", "split"]


def test_an_output_folder_without_the_marker_is_never_replaced(tmp_path):
    theirs = tmp_path / "organized"
    theirs.mkdir()
    (theirs / "train.csv").write_text("id,glasses\n1,1\n")
    with pytest.raises(OutputError, match="glasses did not make it"), atomic_dir(theirs) as tmp:
        (tmp / "new").write_text("x")
    assert (theirs / "train.csv").read_text() == "id,glasses\n1,1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["organized"]  # no temporary left
    with atomic_dir(tmp_path / "ours") as tmp:
        (tmp / "a").write_text("1")
    with atomic_dir(tmp_path / "ours") as tmp:  # ours carries the marker: replaced
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == [OUTPUT_MARKER, "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["organized", "ours"]
