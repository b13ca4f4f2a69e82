"""No orphans: processes started for a run end within seconds when the run's process dies,
however it dies (SIGKILL included, where no handler or `finally` runs).

Two guards, Linux first (both use /proc or getppid; elsewhere they do nothing):
- `exit_with_parent()`, called inside each tuner role process: a thread that ends the process
  (and its process group) once its parent is gone, i.e. once it has been re-parented.
- `reap_on_death()`, called by `glasses run`: a small watcher process that notes the run's
  descendants every second (the embedded Prefect server among them) and, if the run dies
  without saying goodbye, terminates them. A normal exit says goodbye and nothing is killed.
- `terminate_descendants()`: what `glasses run` does on SIGINT, SIGTERM and SIGHUP before it
  exits (the tuner processes sit in their own sessions: a terminal's signal does not reach them).
- `supervise()`, started inside each run of `glasses serve` (deployments/guard.py): threads that
  end the run (its processes, then the run process, which frees the work dir's lock) once its
  serve process is gone or the run is asked to stop (cancelled), after reporting how it ended.

    python -m glasses.watchdog PID    # the watcher; reads its goodbye on stdin
"""

from __future__ import annotations

import atexit
import contextvars
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

POLL_S = 1.0
GOODBYE = "bye"
ASK_EVERY_S = 2.0  # how often a supervised run asks whether it is to stop (an API call)
REPORT_S = 8.0  # how long a supervised run may take to report its end before it exits anyway


PARENT_PID = "GLASSES_PARENT_PID"  # set by the launcher: the process a role must not outlive
SERVE_PID = "GLASSES_SERVE_PID"  # set by `glasses serve`: the process its runs must not outlive


def exit_with_parent(poll_s: float = POLL_S) -> None:
    """Starts a daemon thread that kills this process's group once its parent has gone.

    The parent is the one the launcher named in $GLASSES_PARENT_PID: a parent killed while this
    process was still starting has already handed it to another (init), which `getppid` would
    then take for the parent, and the role would run on, orphaned.
    """
    parent = int(os.environ.get(PARENT_PID) or os.getppid())

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        try:
            os.killpg(os.getpgrp(), signal.SIGKILL)
        finally:
            os._exit(137)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def reap_on_death() -> subprocess.Popen | None:
    """Starts the watcher of this process; returns it (None where /proc is missing).

    Call `say_goodbye(watcher)` on a normal exit, or the watcher takes the exit for a death.
    """
    if not Path("/proc/self/task").is_dir():
        return None
    return subprocess.Popen([sys.executable, "-m", "glasses.watchdog", str(os.getpid())],
                            stdin=subprocess.PIPE, text=True, start_new_session=True)


def say_goodbye(watcher: subprocess.Popen | None) -> None:
    """Tells the watcher this process ends normally: it leaves the descendants alone."""
    if watcher is None or watcher.poll() is not None:
        return
    try:
        watcher.stdin.write(GOODBYE + "\n")
        watcher.stdin.close()
    except OSError:
        pass
    watcher.wait(timeout=10)


def kill_group(process: subprocess.Popen) -> None:
    """Kills a process started in its own session (`start_new_session`) with its whole group,
    at once, and reaps it."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (children, their children, ...), read from /proc."""
    found, todo = set(), [pid]
    while todo:
        for child in _children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _children(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            pass
    return children


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")


def terminate_descendants(grace_s: float = 3.0) -> None:
    """Ends every process below this one: SIGTERM, then SIGKILL after `grace_s`."""
    _terminate(descendants(os.getpid()), grace_s)


def _terminate(pids: set[int], grace_s: float = 3.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace_s
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)


def serving() -> bool:
    """Whether this process is a `glasses serve` (its runs end themselves when it is gone)."""
    return os.environ.get(SERVE_PID) == str(os.getpid())


_supervised = threading.Lock()


def supervise(parent: int, stop_asked: Callable[[], bool], on_stop: Callable[[bool], object],
              poll_s: float = POLL_S, ask_every_s: float = ASK_EVERY_S, report_s: float = REPORT_S) -> bool:
    """Ends this process, and every process below it, once `parent` is gone or it is asked to stop.

    Two daemon threads: one notes every `poll_s` whether `parent` is still this process's parent
    (a parent that died has handed it to another); one calls `stop_asked()` every `ask_every_s`
    (an error counts as no: a server that does not answer stops nothing). On either, every
    process below this one is ended (SIGTERM, then SIGKILL), `on_stop(parent_gone)` reports how
    the run ended (whether `parent` is gone by then, whichever thread noticed first; given
    `report_s` at most), and this process exits: 1 if its parent is gone, else 0. Its exit frees
    what it held (a work dir's lock).

    The callbacks run in a copy of the caller's context (contextvars: its settings). A second
    call in the same process starts nothing; returns whether this call started the threads.
    """
    if not _supervised.acquire(blocking=False):
        return False
    stopping = threading.Lock()

    def stop() -> None:
        if not stopping.acquire(blocking=False):
            return  # the other thread is ending the process
        # A main thread that ends meanwhile (a Ctrl-C reached it too) must not finish the
        # interpreter, daemon threads and all, before the report: it waits here at exit.
        atexit.register(threading.Event().wait, report_s + 10)
        end_descendants()
        parent_gone = os.getppid() != parent
        report = threading.Thread(target=contextvars.copy_context().run, args=(on_stop, parent_gone),
                                  name="report-end", daemon=True)
        report.start()
        report.join(report_s)
        os._exit(1 if parent_gone else 0)

    def watch_parent() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        stop()

    def ask() -> None:
        while True:
            time.sleep(ask_every_s)
            try:
                asked = stop_asked()
            except Exception:  # an unreachable server is not a request to stop
                asked = False
            if asked:
                stop()

    for target, name in ((watch_parent, "watch-serve"), (ask, "ask-stop")):
        context = contextvars.copy_context()
        threading.Thread(target=context.run, args=(target,), name=name, daemon=True).start()
    return True


def end_descendants(grace_s: float = 3.0, rounds: int = 3) -> None:
    """Ends every process below this one, and any started meanwhile (a retried task's new role)."""
    for _ in range(rounds):
        found = descendants(os.getpid())
        if not found:
            return
        _terminate(found, grace_s)


def watch(pid: int) -> int:
    """Notes `pid`'s descendants until it ends; terminates them unless it said goodbye."""
    said = threading.Event()

    def listen() -> None:
        if sys.stdin.readline().strip() == GOODBYE:
            said.set()

    threading.Thread(target=listen, daemon=True).start()
    known: set[int] = set()
    while _alive(pid) and not said.is_set():
        known = {p for p in known if _alive(p)} | (descendants(pid) - {os.getpid()})
        time.sleep(POLL_S)
    if not said.wait(timeout=0.5):
        _terminate({p for p in known if _alive(p)})
    return 0


if __name__ == "__main__":
    sys.exit(watch(int(sys.argv[1])))
