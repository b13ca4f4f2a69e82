"""Issue 24: a work dir is ours or refused, nothing expensive is lost unasked, bad input fails
fast and once (before Prefect starts; inside a flow, not retried and without tracebacks), a
full disk is one clear error with the previous outputs intact."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from glasses import registry
from glasses.cli import app
from glasses.errors import DatasetError, OutputError
from glasses.workdir import MARKER, WorkDir, claim, make_ours
from tests.conftest import BAD_DATASETS, balanced_labels, snapshot, write_bad_dataset, write_kaggle_dataset

ROOT = Path(__file__).resolve().parents[1]
# The CLI in a fresh interpreter that reports, as it exits, whether Prefect was ever imported.
_CLI_REPORTING_PREFECT = ("import atexit, sys; atexit.register(lambda: sys.stderr.write("
                          "'PREFECT-IMPORTED\\n' if 'prefect' in sys.modules else '')); "
                          "from glasses.cli import main; sys.argv[0] = 'glasses'; main()")


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(root.rglob("*"))}


def _foreign_folder(root: Path) -> Path:
    """A user's folder: notes, a report of their own, temporaries of their editor at depth."""
    (root / "notes" / "deep").mkdir(parents=True)
    (root / ".mine.tmp").write_text("mine")
    (root / "notes" / "deep" / ".draft.tmp").write_text("draft")
    (root / "report.md").write_text("# my own report")
    return root


@pytest.mark.parametrize("case", sorted(BAD_DATASETS))
def test_run_on_a_bad_dataset_is_one_error_line_and_no_prefect(tmp_path, case):
    data_dir, fragments = write_bad_dataset(tmp_path / "data", case)
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    done = subprocess.run([sys.executable, "-c", _CLI_REPORTING_PREFECT, "run", "--preset", "smoke",
                           "--data-dir", str(data_dir), "--work-dir", str(tmp_path / "work")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr  # one line, no traceback
    assert all(fragment in done.stderr for fragment in fragments), (fragments, done.stderr)
    assert not (tmp_path / "work").exists() and not (tmp_path / "prefect-home").exists()


def test_a_foreign_folder_is_refused_by_run_and_promote_and_left_unchanged(tmp_path):
    folder = _foreign_folder(tmp_path / "mine")
    before = _tree(folder)
    data = write_kaggle_dataset(tmp_path / "data", balanced_labels(12))
    ran = CliRunner().invoke(app, ["run", "--preset", "smoke", "--data-dir", str(data), "--work-dir", str(folder)])
    promoted = CliRunner().invoke(app, ["promote", "x", "--work-dir", str(folder)])
    pruned = CliRunner().invoke(app, ["prune", "--work-dir", str(folder)])
    for result in (ran, promoted, pruned):
        assert result.exit_code == 1
        assert result.stderr.startswith(f"error: {folder} is not a glasses work dir (no {MARKER} in it; it holds "
                                        ".mine.tmp, notes, report.md)"), result.stderr
    assert _tree(folder) == before


def test_a_new_or_empty_dir_becomes_ours_and_an_old_one_is_adopted_only_when_asked(tmp_path):
    with claim(tmp_path / "new") as work:  # new: made, with the marker
        assert (work.root / MARKER).is_file()
    (tmp_path / "empty").mkdir()
    make_ours(tmp_path / "empty")
    assert (tmp_path / "empty" / MARKER).is_file()

    old = tmp_path / "old"  # a work dir from before the marker
    (old / "stages" / "stage1").mkdir(parents=True)
    (old / "models").mkdir()
    with pytest.raises(OutputError, match="pass --adopt-work-dir to use it"), claim(old):
        pass
    assert not (old / MARKER).exists()
    make_ours(old, adopt=True)
    with claim(old):
        pass


def test_make_clean_keeps_the_registry_and_the_serving_model(tmp_path):
    # make is a stated requirement (README: "with Python 3.11 and make"; .ci/run installs it)
    work = tmp_path / "work"
    for name in ("models/run-1/ensemble.keras", "models/registry.csv", "model/ensemble.keras",
                 "model/champion.json", "stages/stage1/stage.json", "cache/16px/cache.json", "report.md", MARKER):
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(name)
    done = subprocess.run(["make", "-f", str(ROOT / "Makefile"), "clean"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in work.iterdir()) == [MARKER, "model", "models"]
    assert (work / "models" / "registry.csv").read_text() == "models/registry.csv"
    assert "rm -rf work" in done.stdout


def _search(root: Path, stage: str, key: str, trials: int, at: float) -> Path:
    """A finished-looking search of ours: its spec, `trials` trial folders, written at time `at`."""
    folder = root / "stages" / stage / f"kt-{key}"
    for trial in range(trials):
        (folder / "size16" / f"trial_{trial}").mkdir(parents=True)
        (folder / "size16" / f"trial_{trial}" / "trial.json").write_text(
            '{"trial_id": "%d", "status": "COMPLETED", "metrics": {"metrics": {}}, "hyperparameters": {"values": {}}}'
            % trial)
    spec = folder / "size16.json"
    spec.write_text("{}")
    os.utime(spec, (at, at))
    return spec


def test_a_changed_search_keeps_the_old_ones_up_to_the_setting_and_prune_removes_them(tmp_path):
    from glasses.stages import beyond, prune, superseded_searches

    work = WorkDir(tmp_path / "w")
    specs = [_search(work.root, "stage2", f"old{i}", 2, at=1000 + i) for i in range(4)]
    current = _search(work.root, "stage2", "new", 3, at=2000)
    (work.stage("stage2") / "stage.json").write_text('{"specs": ["%s"]}' % current)
    os.utime(work.stage("stage2") / "stage.json", (2001, 2001))
    old = superseded_searches(work.root, [current])
    assert old == [s.parent for s in reversed(specs)]  # newest first
    assert beyond(old, 3) == [specs[0].parent]  # a run keeps search.keep_superseded (3) of them

    resumed = _search(work.root, "stage2", "begun-later", 1, at=3000)  # an interrupted run's search: in use
    assert [item["search"] for item in prune(work, keep=1, dry_run=True)] == [
        f"stages/stage2/kt-old{i}" for i in (2, 1, 0)]
    assert all(s.is_file() for s in specs)  # a dry run removes nothing
    removed = prune(work, keep=0)
    assert {item["search"] for item in removed} == {f"stages/stage2/kt-old{i}" for i in range(4)}
    assert removed[0]["trials"] == 2 and removed[0]["mb"] >= 0
    assert current.is_file() and resumed.is_file() and not any(s.exists() for s in specs)


def test_promote_names_only_registry_entries(tmp_path):
    work = WorkDir(tmp_path / "w")
    make_ours(work.root)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "ensemble.keras").write_text("not a registry entry")
    for name in ("../../x", "../x", str(tmp_path / "x")):
        with pytest.raises(OutputError, match="no registry entry"):
            registry.promote(work, name)
    assert not work.model.exists()


def _limited(limit_bytes: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return apply


_BUILD_CACHES = ("import sys; from pathlib import Path; from glasses.inputs import build_caches; "
                 "from glasses.errors import GlassesError\n"
                 "try:\n    build_caches(Path(sys.argv[1]), Path(sys.argv[2]), [int(sys.argv[3])])\n"
                 "except GlassesError as error:\n    print(f'error: {error}', file=sys.stderr); sys.exit(1)")


def test_a_full_disk_while_caching_is_one_error_and_the_old_cache_is_intact(tiny_cache, tmp_path):
    split_dir, _ = tiny_cache
    cache_root = tmp_path / "cache"
    ok = subprocess.run([sys.executable, "-c", _BUILD_CACHES, str(split_dir), str(cache_root), "16"],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    before = _tree(cache_root)
    # a file-size limit stands in for a full disk (no root needed): 64 px images of the split do not fit
    full = subprocess.run([sys.executable, "-c", _BUILD_CACHES, str(split_dir), str(cache_root), "64"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, preexec_fn=_limited(40_000))
    assert full.returncode == 1, full.stderr
    assert full.stderr.startswith("error: no space left to write") and "64px" in full.stderr
    assert full.stderr.count("\n") == 1 and "previous outputs are intact" in full.stderr
    assert _tree(cache_root) == before  # the 16 px cache as it was, no 64 px one, no temporary


def test_a_full_disk_while_writing_a_file_keeps_the_old_one(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text('{"old": true}')
    script = ("import sys; from pathlib import Path; from glasses.files import write_text; from glasses.errors import "
              "OutputError\ntry:\n    write_text(Path(sys.argv[1]), 'x' * 100_000)\nexcept OutputError as error:\n"
              "    print(error, file=sys.stderr); sys.exit(1)")
    done = subprocess.run([sys.executable, "-c", script, str(target)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, preexec_fn=_limited(10_000))
    assert done.returncode == 1 and done.stderr.startswith(f"no space left to write {target}")
    assert target.read_text() == '{"old": true}' and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


@pytest.mark.slow
def test_a_flow_run_on_a_bad_dataset_fails_once_with_one_error_line_and_no_traceback(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    from flows.pipeline import pipeline

    data_dir, fragments = write_bad_dataset(tmp_path / "data", "no id column")
    state = pipeline(preset="smoke", data_dir=str(data_dir), work_dir=str(tmp_path / "work"), return_state=True)
    APILogHandler().flush()  # the run's logs reach the API in batches
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    assert run.state.is_failed() and run.run_count == 1 and run.empirical_policy.retries == 0  # not retried
    assert all(fragment in run.state.message for fragment in fragments)
    errors = [log.message for log in logs if log.level >= 40]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "missing column 'id'" in errors[0], errors
    assert not any("Traceback" in log.message for log in logs)
    assert not (tmp_path / "work").exists()  # the check came before the work dir was made
