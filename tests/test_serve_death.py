"""`glasses serve` leaves nothing behind: killed outright (SIGKILL: no handler, no `finally`) mid-search,
its run's processes end and the work dir's lock frees within 15 s, and the run ends Orphaned (a Cancelled
state) saying why, which a later Cancel leaves Cancelled, a Retry resumes and the notifications hear;
a served run cancelled (as the UI's Cancel does) ends Cancelled with its processes gone, whether or not
its serve is alive. A real `glasses serve` against the session's Prefect test server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.responses import SetStateStatus
from prefect.states import AwaitingRetry, Cancelling

from deployments.guard import ORPHANED
from deployments.notify import RUN_ENDED_BADLY
from glasses.workdir import status

ROOT = Path(__file__).resolve().parents[1]
GONE_WITHIN_S = 15  # the bound, from the kill (or the Cancel)
SUPERVISED = """
import subprocess, sys, time
from pathlib import Path
from glasses.watchdog import supervise
out = Path(sys.argv[2])
role = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
supervise(int(sys.argv[1]), lambda: (out / "stop").exists(), lambda gone: (out / "ended").write_text(str(gone)),
          poll_s=0.1, ask_every_s=0.2)
(out / "role").write_text(str(role.pid))
time.sleep(120)
"""


def _supervised(parent: int, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SUPERVISED, str(parent), str(out)], cwd=ROOT)


def _wait_file(path: Path, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)
    return path.read_text()


def test_a_supervised_process_ends_its_processes_when_its_parent_dies_or_it_is_asked_to_stop(tmp_path):
    asked, killed = tmp_path / "asked", tmp_path / "killed"
    asked.mkdir(), killed.mkdir()
    # Asked to stop (a Cancel): its role ends, it reports (parent_gone False) and exits 0.
    run = _supervised(os.getpid(), asked)
    role = psutil.Process(int(_wait_file(asked / "role")))
    (asked / "stop").touch()
    assert run.wait(timeout=30) == 0
    assert not psutil.wait_procs([role], timeout=5)[1]
    assert (asked / "ended").read_text() == "False"

    # Its parent killed outright (serve's SIGKILL): the same, reported as parent_gone.
    code = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {SUPERVISED!r}, "
            f"str(__import__('os').getpid()), {str(killed)!r}]); time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    role = psutil.Process(int(_wait_file(killed / "role")))
    supervised = [p for p in psutil.Process(parent.pid).children() if p.pid != role.pid]
    parent.kill()
    parent.wait()
    assert not psutil.wait_procs([role, *supervised], timeout=10)[1]
    assert _wait_file(killed / "ended") == "True"


# ---------------------------------------------------------------------------------------------
# A real `glasses serve`


def _serve(tmp_path: Path, name: str) -> tuple[subprocess.Popen, Path]:
    """`glasses serve` of a search slow enough to be killed mid-way (50 trials of 200 steps)."""
    from prefect.settings import PREFECT_API_URL

    work, slow = tmp_path / "work", tmp_path / "slow.yaml"
    slow.write_text(yaml.safe_dump({"search": {"workers": 1, "stage1": {
        "image_sizes": [16], "max_trials": 50, "max_steps": 200}}}))
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_HOME": str(tmp_path / "home"),
           "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    serve = subprocess.Popen([sys.executable, "-m", "glasses", "serve", "--preset", "smoke", "--work-dir", str(work),
                              "--config", str(slow), "--name", name], cwd=ROOT, env=env,
                             stdout=(tmp_path / "serve.log").open("w"), stderr=subprocess.STDOUT,
                             start_new_session=True)
    deadline = time.monotonic() + 180
    with get_client(sync_client=True) as client:
        while True:
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                client.read_deployment_by_name(f"glasses-pipeline/{name}")
                return serve, work
            except Exception:
                assert time.monotonic() < deadline, f"glasses-pipeline/{name} was never registered"
                time.sleep(1)


def _start_mid_search(serve: subprocess.Popen, name: str, work: Path, log: Path) -> tuple[str, list[psutil.Process]]:
    """Starts a run of the served deployment and waits until its chief and worker run and a trial
    has begun; returns the run's id and every process below serve (the run's process, its roles,
    multiprocessing's resource tracker)."""
    from prefect.deployments import run_deployment

    run_id = str(run_deployment(f"glasses-pipeline/{name}", timeout=0).id)
    deadline = time.monotonic() + 300
    while len(_roles(serve)) < 2 or not any((work / "stages").rglob("trial_*")):
        assert serve.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the search did not start in 300 s: " + log.read_text()[-3000:]
        time.sleep(0.5)
    return run_id, psutil.Process(serve.pid).children(recursive=True)


def _roles(serve: subprocess.Popen) -> list[psutil.Process]:
    try:
        below = psutil.Process(serve.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in below if _cmdline(p).count("glasses.search")]


def _cmdline(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return ""


def _left(started: list[psutil.Process], work: Path) -> list[str]:
    """What is still alive of `started`, and any role of a search in the work dir (one started later)."""
    alive = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    later = [p for p in psutil.process_iter() if str(work / "stages") in _cmdline(p) and p not in alive]
    return [f"{p.pid} {_cmdline(p)[:120]}" for p in alive + later]


def _wait_all_gone(started: list[psutil.Process], work: Path, since: float) -> float:
    """Seconds from `since` until nothing of `started` is left and the work dir's lock is free;
    fails past GONE_WITHIN_S."""
    while _left(started, work) or status(work)["held by"] != "nobody":
        assert time.monotonic() - since < GONE_WITHIN_S, (
            f"{GONE_WITHIN_S} s on: left {_left(started, work)}, lock held by {status(work)['held by']}")
        time.sleep(0.2)
    return time.monotonic() - since


def _final_state(run_id: str, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(run_id).state
            if state.is_final():
                return state
            assert time.monotonic() < deadline, f"run {run_id} still {state.name} after {timeout_s} s"
            time.sleep(0.5)


def _stop(serve: subprocess.Popen, started: list[psutil.Process]) -> None:
    """Kills what a failed test left: serve's group and its runs' processes (a role sits in its own session)."""
    if serve.poll() is None:
        os.killpg(serve.pid, signal.SIGKILL)
    for process in started:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def _cancel(run_id: str):
    """What the UI's Cancel does: propose Cancelling (not forced)."""
    with get_client(sync_client=True) as client:
        return client.set_flow_run_state(run_id, Cancelling())


def _events(run_id: str, name: str, timeout_s: float = 30) -> list[dict]:
    """The server's events `name` of flow run `run_id`, waiting for the first (events are written
    in batches)."""
    deadline = time.monotonic() + timeout_s
    query = {"filter": {"event": {"name": [name]}, "resource": {"id": [f"prefect.flow-run.{run_id}"]},
                        "any_resource": None, "order": "DESC"}, "limit": 10}
    with get_client(sync_client=True) as client:
        while True:
            found = client._client.post("/events/filter", json=query).raise_for_status().json()["events"]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(1)


@pytest.mark.slow
def test_a_sigkilled_serve_leaves_no_process_nor_lock_and_its_run_ends_orphaned(prefect_server, tmp_path):
    serve, work = _serve(tmp_path, "killed-serve")
    started = []
    try:
        run_id, started = _start_mid_search(serve, "killed-serve", work, tmp_path / "serve.log")
        serve.kill()
        killed_at = time.monotonic()
        serve.wait()
        took = _wait_all_gone(started, work, killed_at)
        print(f"SIGKILL of serve -> no process, lock free: {took:.1f} s")
        state = _final_state(run_id)
        assert state.is_cancelled() and state.name == ORPHANED, (state.name, state.message)
        assert f"`glasses serve` (pid {serve.pid}) ended" in state.message and "retry the run" in state.message
        # The why in the run's logs too, not only in its state's message.
        with get_client(sync_client=True) as client:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        assert any(log.message.startswith(f"{ORPHANED}: its `glasses serve` (pid {serve.pid}) ended") for log in logs)
        # Its own event, which the "run failed" automation expects (a user's Cancel sends Cancelled).
        assert f"prefect.flow-run.{ORPHANED}" in RUN_ENDED_BADLY
        assert _events(run_id, f"prefect.flow-run.{ORPHANED}"), "no prefect.flow-run.Orphaned event"

        # The UI's Cancel, 5 s after the kill (as in the issue): the run is already final, so Prefect
        # refuses the Cancelling it proposes, and the run reads Cancelled; never stuck Cancelling.
        time.sleep(max(0.0, killed_at + 5 - time.monotonic()))
        assert _cancel(run_id).status == SetStateStatus.ABORT
        assert _final_state(run_id).is_cancelled()

        # The UI's Retry (AwaitingRetry, not forced) is accepted, for a serve started again to resume.
        with get_client(sync_client=True) as client:
            assert client.set_flow_run_state(run_id, AwaitingRetry()).status == SetStateStatus.ACCEPT
    finally:
        _stop(serve, started)


@pytest.mark.slow
def test_a_cancel_ends_a_served_run_cancelled_with_its_processes_gone_serve_alive_or_not(prefect_server, tmp_path):
    serve, work = _serve(tmp_path, "cancelled-serve")
    log, started = tmp_path / "serve.log", []
    try:
        # Serve alive: the runner and the run's own guard both act; the roles end with the run.
        run_id, started = _start_mid_search(serve, "cancelled-serve", work, log)
        assert _cancel(run_id).status == SetStateStatus.ACCEPT
        cancelled_at = time.monotonic()
        took = _wait_all_gone([p for p in started if "resource_tracker" not in _cmdline(p)], work, cancelled_at)
        print(f"Cancel, serve alive -> no process of the run, lock free: {took:.1f} s")
        state = _final_state(run_id)
        print(f"Cancel, serve alive -> {state.name}: {time.monotonic() - cancelled_at:.1f} s")
        assert state.is_cancelled(), (state.name, state.message)
        assert serve.poll() is None  # serve serves on

        # Serve killed, and the Cancel lands before the run noticed (its process stopped meanwhile):
        # the run still ends Cancelled, saying its serve had ended.
        run_id, started = _start_mid_search(serve, "cancelled-serve", work, log)
        run_process = psutil.Process(_roles(serve)[0].ppid())
        run_process.suspend()
        serve.kill()
        killed_at = time.monotonic()
        serve.wait()
        assert _cancel(run_id).status == SetStateStatus.ACCEPT
        run_process.resume()
        took = _wait_all_gone(started, work, killed_at)
        print(f"SIGKILL of serve, then Cancel -> no process, lock free: {took:.1f} s")
        state = _final_state(run_id)
        print(f"SIGKILL of serve, then Cancel -> {state.name}: {time.monotonic() - killed_at:.1f} s")
        assert state.is_cancelled(), (state.name, state.message)
        assert f"`glasses serve` (pid {serve.pid}) had ended" in state.message
    finally:
        _stop(serve, started)
