"""Launching a search's roles as processes: the two calls the Prefect tasks, the bench scripts
and the tests all use.

    run_chief(spec_path)            # the oracle, until every trial has ended
    run_worker(spec_path, index)    # tuner<index>, until the chief says the search is over

Each role is its own process (`python -m glasses.search chief|worker ...`), because Keras
Tuner takes a role from process-wide environment variables. Its output lines go to `on_line`.
A role goes to a spare process that has done its imports already where one is at hand
(glasses.search.spares): `start_spares` at a run's start, and once a chief has handed out its
last trial, `spec.spares` more for what follows, where the chief runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from glasses import cluster
from glasses.cluster import dask_worker
from glasses.config import SearchConfig
from glasses.errors import SearchError
from glasses.search import spares
from glasses.search.records import (EXIT_PORT_IN_USE, LAST_ROUND, RELEASE_ENV, chief_card, chief_down_marker,
                                    check_state, is_complete, mark_chief_down)
from glasses.search.spec import SearchSpec
from glasses.search.tuner import NODE_ENV
from glasses.watchdog import PARENT_PID, kill_group

KILL_GRACE_S = 30  # past the chief's own timeout, its process is killed
_QUIET = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
# What a Dask nanny sets for its worker (distributed.nanny.pre-spawn-environ) and a tuner process
# must not inherit (None: unset): a fixed malloc trim threshold turns off glibc's adaptive mmap
# threshold, so TensorFlow maps and unmaps its tensors every step; one OpenMP/BLAS thread.
_NOT_FROM_DASK = {"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": None, "MKL_NUM_THREADS": None,
                  "OPENBLAS_NUM_THREADS": None}


def run_chief(spec_path: Path, on_line: Callable[[str], None] = print, release_token: str | None = None) -> Path:
    """Runs the search's chief process until every trial has ended; returns `spec_path`.

    A complete search runs nothing. The chief keeps its own time limit (the spec's
    `chief_timeout_s`); its process is killed `KILL_GRACE_S` after that as a backstop. With a
    `release_token`, `records.mark_released(spec, release_token)` tells it that every worker
    started for the search has ended, so that it waits for none (they may queue: `await_workers_s`).

    Raises:
        SearchError: the chief ended before every trial had ended (timeout, no worker left,
            a port it cannot bind); its workers are told (a marker beside the search) and stop.
    """
    spec = SearchSpec.load(Path(spec_path))
    check_state(spec)
    if is_complete(spec):
        on_line(f"search {spec.project_dir} already complete: nothing to run")
        return Path(spec_path)
    # A new chief: an earlier one's failure is past. (Its workers start seconds later, after
    # their imports, so they never see this search's old marker.)
    chief_down_marker(spec).unlink(missing_ok=True)
    chief_card(spec).unlink(missing_ok=True)
    env = {**chief_env(), RELEASE_ENV: release_token}
    on_dask = dask_worker()
    if on_dask:  # on a Dask worker: named after it, without the nanny's settings
        env = {**env, **_NOT_FROM_DASK, NODE_ENV: on_dask[0]}
    said: list[str] = []

    def note(line: str) -> None:
        if line.startswith(LAST_ROUND):  # the next search's roles import now, beside the last trials
            spares.top_up(spec.spares, _environment(env))
        elif line.startswith("chief: "):
            said[:] = [line.removeprefix("chief: ")]
        on_line(line)

    code = run_process(role_command("chief", spec_path), note, spec.chief_timeout_s + KILL_GRACE_S, env)
    if code == EXIT_PORT_IN_USE:
        reason = (f"chief of {spec.project_dir}: port {spec.port} on {spec.bind} is in use by another "
                  "process; leave search.oracle_port unset (the chief binds a free one) or pick a free one")
        mark_chief_down(spec, reason)
        raise SearchError(reason)
    if code != 0:
        reason = (f"{spec.directory.parent.name}: chief of {spec.project_dir} ended with code {code} before all "
                  f"{spec.stage.max_trials} trials ended ({said[0] if said else 'no reason given'}); "
                  "re-run to continue the search")
        mark_chief_down(spec, reason)  # workers still waiting for it fail now, not later
        raise SearchError(reason)
    return Path(spec_path)


def run_worker(spec_path: Path, index: int, on_line: Callable[[str], None] = print) -> str:
    """Runs tuner process `tuner<index>` against the chief; returns its tuner id.

    The id depends only on `index`, so a retry resumes the trial the worker had.

    Raises:
        SearchError: the worker process failed (its chief is gone, it was killed, ...).
    """
    spec = SearchSpec.load(Path(spec_path))
    tuner_id = f"tuner{index}"
    if is_complete(spec):
        return tuner_id
    on_dask = dask_worker()
    env = worker_env(spec, index, visible_gpus(), on_dask)
    code = run_process(role_command("worker", spec_path, tuner_id), on_line,
                       spec.chief_timeout_s + KILL_GRACE_S, env)
    if code != 0:
        raise SearchError(f"worker {tuner_id} of {spec.project_dir} exited with code {code}")
    return tuner_id


def start_spares(search: SearchConfig) -> int:
    """Has spare role processes ready in this process for a run's first searches: stage 1's
    chiefs and first workers, or on a Dask cluster the chiefs if they run here (`chief_on: flow`);
    starts those missing and returns how many it started. They import while Prefect starts and
    the run prepares its data."""
    sizes = len(search.stage1.image_sizes)
    chiefs = sizes if not cluster.is_dask(search.cluster) or search.chief_on == "flow" else 0
    envs = [_environment(chief_env())] * chiefs
    if not cluster.is_dask(search.cluster):
        gpus = visible_gpus()
        envs += [_environment(worker_env(search, index, gpus)) for index in range(search.workers)]
    by_start = {spares.start_key(env): env for env in envs}  # a CPU host's roles share one
    counts = Counter(spares.start_key(env) for env in envs)
    return sum(spares.top_up(count, by_start[key]) for key, count in counts.items())


def chief_env() -> dict[str, str]:
    return {**_QUIET, "CUDA_VISIBLE_DEVICES": "-1"}  # the oracle needs no GPU


def role_command(role: str, spec_path: Path, tuner_id: str | None = None) -> list[str]:
    command = [sys.executable, "-m", "glasses.search", role, "--spec", str(spec_path)]
    return command + (["--tuner-id", tuner_id] if tuner_id else [])


def worker_env(spec: SearchSpec, index: int, gpus: int, on_dask: tuple[str, int] | None = None
               ) -> dict[str, str | None]:
    """The environment of worker `index`: its GPUs (if any), its threads and where it runs.

    On this machine (`threads`), a share of its cores and GPUs by index. On a Dask worker
    (`on_dask`: its name and thread count), the Dask worker's threads, shared by as many tuner
    workers as it may run at once, and its own `CUDA_VISIBLE_DEVICES` (what it was started with).
    """
    if on_dask:
        name, threads = on_dask
        env = {**_QUIET, **_NOT_FROM_DASK, NODE_ENV: name,
               "GLASSES_THREADS": str(max(1, threads // min(threads, spec.workers)))}
        return env if gpus else {**env, "CUDA_VISIBLE_DEVICES": "-1"}
    env = {**_QUIET, "GLASSES_THREADS": str(max(1, (os.cpu_count() or 1) // spec.workers))}
    if not gpus:
        env["CUDA_VISIBLE_DEVICES"] = "-1"  # no CUDA probing (and its error lines) on a CPU host
    elif spec.gpus_per_worker != "all":
        per = int(spec.gpus_per_worker)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str((index * per + k) % gpus) for k in range(per))
    return env


def visible_gpus() -> int:
    """GPUs on this host, counted without importing TensorFlow (nvidia-smi), 0 if none."""
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def run_process(command: list[str], on_line: Callable[[str], None], timeout_s: float,
                env: dict[str, str | None] | None = None) -> int:
    """Runs a process to the end, streaming its output lines, killing it at the timeout.

    Its environment is ours with `env` on top (a None value unsets that variable).

    Returns the exit code (negative for a signal). The process group is killed if we are
    interrupted, so no tuner process outlives its caller's call. A role command goes to a spare
    started with the same environment, if there is one (glasses.search.spares).
    """
    environment = _environment(env)
    process = spares.take(command, environment) or subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment,
        start_new_session=True)
    timer = threading.Timer(timeout_s, kill_group, args=(process,))
    timer.start()
    try:
        for line in process.stdout:
            on_line(line.rstrip())
        return process.wait()
    finally:
        timer.cancel()
        kill_group(process)


def _environment(changes: dict[str, str | None] | None) -> dict[str, str]:
    merged = {**os.environ, **(changes or {}), PARENT_PID: str(os.getpid())}
    return {key: value for key, value in merged.items() if value is not None}

