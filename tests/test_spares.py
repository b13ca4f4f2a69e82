"""Spare role processes (glasses.search.spares): real processes that import first and play the
role handed to them later."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from glasses.search import SearchSpec, spares, trial_records
from glasses.search.launch import _environment, chief_env, role_command
from test_search import Role, _join, _spec

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def no_spares_before():
    """Each test starts with this process's pool empty: a search run by another test in the same
    process (its chief's last-round top-up) may have left spares in it."""
    spares.retire()
    yield
    spares.retire()


def _spare_pids() -> set[int]:
    return {p.pid for p in psutil.Process().children() if p.cmdline()[-2:] == ["glasses.search", "spare"]}


def test_a_search_plays_its_roles_in_spares_and_its_last_round_starts_the_next_ones(tiny_cache, tmp_path,
                                                                                   monkeypatch):
    spares.start(3, _environment(chief_env()))  # the chief and two workers of a CPU host match it
    ready = _spare_pids()
    assert len(ready) == 3
    taken = []
    take = spares.take
    monkeypatch.setattr(spares, "take", lambda *a: taken.append(take(*a)) or taken[-1])
    spec_path = _spec(tmp_path, tiny_cache[1], spares=2)
    chief = Role(spec_path, "chief")
    tuners = [Role(spec_path, "worker", i) for i in range(2)]
    for role in (chief, *tuners):
        role.start()
    _join(chief, *tuners)
    assert chief.ok and [t.ok for t in tuners] == [True, True], chief.lines
    assert {p.pid for p in taken} == ready  # every role went to a spare, none started cold
    assert sorted(r["trial_id"] for r in trial_records(SearchSpec.load(spec_path).project_dir)) == ["0", "1", "2", "3"]
    # The role's own settings reached the spare: its thread share, not the spare's (it had none).
    assert any("tuner0: 1 replica(s), batch 8, 1 threads" in line for line in tuners[0].lines), tuners[0].lines
    # Its last trial handed out, the chief said so, and two spares for what follows started.
    assert any(line.startswith("chief: every trial handed out (4)") for line in chief.lines)
    after = _spare_pids()
    assert len(after) == 2 == spares.count() and not after & ready
    spares.retire()
    assert spares.count() == 0
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in after)


def test_a_spare_plays_only_a_role_started_with_its_environment(tmp_path):
    env = _environment(chief_env())
    spares.start(1, env)
    try:
        command = role_command("worker", tmp_path / "missing.json", "tuner0")
        assert spares.take(command, {**env, "TF_CPP_MIN_LOG_LEVEL": "0"}) is None  # read at start-up: differs
        assert spares.take([sys.executable, "-c", "pass"], env) is None  # not a role
        process = spares.take(command, {**env, "GLASSES_THREADS": "7"})  # read by the role: may differ
        assert process is not None and spares.count() == 0
        out = process.stdout.read()
        assert process.wait(timeout=120) != 0 and "missing.json" in out  # it played the role it was handed
    finally:
        spares.retire()


def test_a_spare_never_outlives_the_process_that_started_it():
    code = ("import time; from glasses.search import spares; from glasses.search.launch import _environment, "
            "chief_env; spares.start(1, _environment(chief_env())); print('started', flush=True); time.sleep(300)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "started"
        (spare,) = psutil.Process(parent.pid).children()
        parent.kill()  # SIGKILL: no atexit, no finally
        parent.wait()
        spare.wait(timeout=15)  # raises if it is still there
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_spare_near_its_idle_limit_is_not_handed_a_role(tmp_path):
    # It may be exiting without reading the role: the role would end "successfully" unplayed.
    env = _environment(chief_env())
    spares.start(1, env)
    (pid,) = _spare_pids()
    spares._started[pid] -= spares.TAKE_WITHIN_S + 1
    try:
        assert spares.take(role_command("worker", tmp_path / "spec.json", "tuner0"), env) is None
        assert spares.count() == 0 and not psutil.pid_exists(pid)
    finally:
        spares.retire()


def test_stage_1s_roles_are_made_ready_once_however_often_asked():
    # `glasses run` asks before Prefect starts, the flow again: the second finds them there.
    from glasses.config import build_config
    from glasses.search.launch import start_spares

    search = build_config("smoke").search  # two sizes, two workers: two chiefs and two workers
    try:
        assert start_spares(search) == 4 and spares.count() == 4
        assert start_spares(search) == 0 and spares.count() == 4
        assert start_spares(search.model_copy(update={"cluster": "tcp://10.0.0.1:8786"})) == 0  # chiefs on Dask
    finally:
        spares.retire()
    assert spares.count() == 0 and _spare_pids() == set()
