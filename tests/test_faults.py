"""`glasses run` stopped by one SIGTERM, or killed outright (SIGKILL: no handler, no `finally`),
mid-search leaves no process behind, and a re-run on the same work dir continues the searches
with no trial run twice. The
data is a real download's layout of grey, non-square images, which must stay untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import balanced_labels, snapshot, write_kaggle_dataset

pytestmark = pytest.mark.slow


def _run(data: Path, work: Path, home: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("PREFECT_API_URL", None)  # its own embedded server, as a user's `glasses run`
    # (one stage-1 size: what is tested here is processes and files, not the choice)
    small = work.parent / "one-size.json"
    small.write_text(json.dumps({"search": {"stage1": {"image_sizes": [16]}}}))
    command = ["run", "--preset", "smoke", "--data-dir", str(data), "--work-dir", str(work), "--config", str(small)]
    return subprocess.Popen([sys.executable, "-m", "glasses", *command], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _finished_trials(work: Path) -> dict[str, int]:
    """Each completed trial and when its weights were written (a trial run again rewrites them)."""
    found = {}
    for trial in (work / "stages").rglob("trial_*/trial.json"):
        weights = trial.parent / "checkpoint.weights.h5"
        if '"status": "COMPLETED"' in trial.read_text() and weights.is_file():
            found[str(trial.parent)] = weights.stat().st_mtime_ns
    return found


def _roles(run: subprocess.Popen) -> list[psutil.Process]:
    return [p for p in psutil.Process(run.pid).children(recursive=True)
            if p.is_running() and "glasses.search" in " ".join(p.cmdline())]


def _wait_mid_search(run: subprocess.Popen, log: Path, until) -> list[psutil.Process]:
    """Waits until `until()` holds while the run's tuner roles run; returns all its processes."""
    deadline = time.monotonic() + 240
    while not (until() and _roles(run)):
        assert run.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the search did not get there in 240 s"
        time.sleep(0.5)
    return psutil.Process(run.pid).children(recursive=True)


def test_sigterm_or_sigkill_mid_search_leaves_no_process_and_a_rerun_continues(tmp_path):
    work, home = tmp_path / "work", tmp_path / "prefect"
    data = write_kaggle_dataset(tmp_path / "download", balanced_labels(40), size=(30, 20), mode="L", latents=512)
    source = snapshot(data)

    # One SIGTERM (what `kill`, systemd or a scheduler sends): the run ends within seconds. (A
    # Prefect flow swaps in its own SIGTERM handler; the run used to hang until a second one.)
    run = _run(data, work, home, tmp_path / "first.log")
    started = _wait_mid_search(run, tmp_path / "first.log", lambda: _finished_trials(work))
    run.terminate()
    assert run.wait(timeout=30) == 128 + 15, (tmp_path / "first.log").read_text()[-3000:]
    gone, alive = psutil.wait_procs(started, timeout=10)
    assert not alive, [" ".join(p.cmdline())[:120] for p in alive]

    # SIGKILL: no handler runs; the watchdog process ends what the run started.
    run = _run(data, work, home, tmp_path / "second.log")
    started = _wait_mid_search(run, tmp_path / "second.log", lambda: True)
    run.kill()
    run.wait()
    gone, alive = psutil.wait_procs(started, timeout=10)
    assert not alive, [" ".join(p.cmdline())[:120] for p in alive]

    before = _finished_trials(work)
    again = _run(data, work, home, tmp_path / "third.log")
    assert again.wait(timeout=400) == 0, (tmp_path / "third.log").read_text()[-3000:]
    after = _finished_trials(work)
    assert {k: v for k, v in after.items() if k in before} == before  # none run twice
    assert len(after) == 2 + 2 + 2  # stages 1 (one size), 2 and 3 (keeps 2): none lost
    assert (work / "model" / "ensemble.keras").is_file()
    summary = json.loads((work / "summary.json").read_text())
    assert summary["dataset"]["labelled"] == 40 and summary["latent"]["skipped"] is False
    assert snapshot(data) == source  # the download is byte for byte as it was


def test_a_role_whose_parent_died_while_it_started_exits_at_once(tmp_path):
    # The launcher names itself in GLASSES_PARENT_PID; a parent gone before the role's watch
    # began (getppid is then init's) must still end the role.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    code = "from glasses.watchdog import exit_with_parent; exit_with_parent(0.1); import time; time.sleep(60)"
    role = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "GLASSES_PARENT_PID": str(gone.pid)},
                            start_new_session=True)
    assert role.wait(timeout=20) in (137, -9)
