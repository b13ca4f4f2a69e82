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

    python -m glasses.watchdog PID    # the watcher; reads its goodbye on stdin
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

POLL_S = 1.0
GOODBYE = "bye"


PARENT_PID = "GLASSES_PARENT_PID"  # set by the launcher: the process a role must not outlive


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
