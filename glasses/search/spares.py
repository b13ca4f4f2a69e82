"""Spare role processes: started ahead of need, each imports TensorFlow, Keras and Keras Tuner
(about 4 s of a core, and 0.6 GB) and then waits on its stdin for the role it is to play.

A search's start-up used to be its roles' imports, three processes at once on two cores: 5-9 s
before the first trial, four times a quick run. `launch.run_process` now hands a role to a spare
started with the same environment, so the imports happen earlier, while a core is idle (the
data stage, a stage's last round), and a search starts in about a second.

    start(count, env)   # count spares, with `env` on top of this process's environment
    top_up(count, env)  # start as many as needed to have `count` alive
    take(command, env)  # a live spare for a role command with this environment, or None
    retire()            # kill this process's spares (the end of a run)

A spare plays at most one role. One that gets none within IDLE_S exits by itself, and none
outlives the process that started it (`watchdog.exit_with_parent`).

    python -m glasses.search spare    # a spare; reads {"argv": [...], "env": {...}} on stdin
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Mapping

from glasses.search.records import RELEASE_ENV
from glasses.search.tuner import NODE_ENV
from glasses.watchdog import kill_group

IDLE_S = 600.0  # a spare that gets no role within this exits (a stage's last round can be long)
# A spare this close to its IDLE_S is not handed a role: it may be exiting without reading it.
TAKE_WITHIN_S = IDLE_S - 60.0
# Read by a role only once it plays, so a spare started without them can take them on: the
# role's ids and settings. Every other variable is read at start-up (glibc's, OpenMP's,
# TensorFlow's, Python's) and must match.
LATE = frozenset({RELEASE_ENV, NODE_ENV, "GLASSES_THREADS", "GLASSES_FAULT",  # the last: chief.FAULT_ENV
                  "KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"})
ROLE_MODULE = "glasses.search"
SPARE = "spare"

_lock = threading.Lock()
_spares: list[tuple[subprocess.Popen, frozenset[tuple[str, str]]]] = []
_started: dict[int, float] = {}  # pid: time.monotonic() at its start
_retire_at_exit = threading.Event()


def start_key(env: Mapping[str, str]) -> frozenset[tuple[str, str]]:
    """What a spare started with environment `env` and a role it plays must share: all but LATE."""
    return frozenset((key, value) for key, value in env.items() if key not in LATE)


def start(count: int, env: Mapping[str, str]) -> None:
    """Starts `count` spares whose environment is `env` (a whole environment)."""
    if count > 0 and not _retire_at_exit.is_set():
        _retire_at_exit.set()
        atexit.register(retire)
    for _ in range(count):
        process = subprocess.Popen([sys.executable, "-m", ROLE_MODULE, SPARE], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=dict(env), start_new_session=True)
        with _lock:
            _spares.append((process, start_key(env)))
            _started[process.pid] = time.monotonic()


def top_up(count: int, env: Mapping[str, str]) -> int:
    """Starts spares with environment `env` until `count` of them are alive; returns how many it started."""
    with _lock:
        _spares[:] = [(p, e) for p, e in _spares if p.poll() is None]
        for pid in set(_started) - {p.pid for p, _ in _spares}:
            del _started[pid]
        missing = max(0, count - sum(1 for _, e in _spares if e == start_key(env)))
    start(missing, env)
    return missing


def take(command: list[str], env: Mapping[str, str]) -> subprocess.Popen | None:
    """A live spare now playing `command` (a role: `python -m glasses.search ...`) with the whole
    environment `env`, or None when no spare's environment matches (the caller starts one cold)."""
    if command[:3] != [sys.executable, "-m", ROLE_MODULE]:
        return None
    key = start_key(env)
    while True:
        with _lock:
            found = next(((p, e) for p, e in _spares if e == key and p.poll() is None), None)
            if found is None:
                return None
            _spares.remove(found)
        process = found[0]
        if time.monotonic() - _started.pop(process.pid, 0.0) > TAKE_WITHIN_S:
            _kill(process)
            continue
        try:
            process.stdin.write(json.dumps({"argv": command[3:], "env": dict(env)}) + "\n")
            process.stdin.close()
            return process
        except (BrokenPipeError, OSError):  # it exited (idle) in between: try the next
            _kill(process)


def retire() -> None:
    """Kills this process's spares (each in its own session, with whatever it started)."""
    with _lock:
        retired, _spares[:] = list(_spares), []
        _started.clear()
    for process, _ in retired:
        _kill(process)


def count() -> int:
    """Spares of this process alive now."""
    with _lock:
        return sum(1 for p, _ in _spares if p.poll() is None)


def _kill(process: subprocess.Popen) -> None:
    kill_group(process)
    for stream in (process.stdin, process.stdout):
        try:
            if stream:
                stream.close()
        except OSError:
            pass


def await_role(idle_s: float = IDLE_S) -> list[str] | None:
    """A spare's wait (`python -m glasses.search spare`): imports what the roles use, then waits
    for a role; returns its arguments, with the role's environment set, or None when none came
    within `idle_s` (or it was retired)."""
    from glasses.watchdog import exit_with_parent

    exit_with_parent()
    import glasses.budget  # noqa: F401
    import glasses.inputs  # noqa: F401
    import glasses.search.chief  # noqa: F401  TensorFlow, Keras, Keras Tuner, gRPC
    import glasses.search.worker  # noqa: F401

    ready, _, _ = select.select([sys.stdin], [], [], idle_s)
    line = sys.stdin.readline() if ready else ""
    if not line:
        return None
    request = json.loads(line)
    os.environ.clear()
    os.environ.update(request["env"])
    return request["argv"]
