"""The work dir: where each stage's outputs live (one place that knows the layout), and the
rules that keep a run's outputs and the user's data apart: no overlap with the data dir, a
folder that is ours (new, empty, or carrying our marker) or refused, one run at a time (a lock
the OS frees when the process dies), no temporaries of dead runs (our own names only)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from datetime import datetime, timezone

from glasses.config import STAGES
from glasses.dataset import SPLIT_MANIFEST
from glasses.errors import OutputError
from glasses.files import TEMPORARY_SUFFIX, write_json
from glasses.search.records import CHIEF_DOWN

LOCK_FILE = ".lock"
MARKER = ".glasses-workdir"  # written when glasses makes (or adopts) a work dir: only such a dir is used
STAGE_SUMMARY = "stage.json"  # in a stage's folder, written last when the stage ends (glasses.stages)


@dataclass(frozen=True)
class WorkDir:
    """The layout of a run's work dir; every output of a run lives below `root`."""

    root: Path

    @property
    def synth(self) -> Path:
        return self.root / "data"

    @property
    def organized(self) -> Path:
        return self.root / "organized"

    @property
    def split(self) -> Path:
        return self.root / "split"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def stage(self, name: str) -> Path:
        return self.root / "stages" / name

    def stage_summary(self, name: str) -> Path:
        """What stage `name` found and chose: there once the stage has ended."""
        return self.stage(name) / STAGE_SUMMARY

    @property
    def model(self) -> Path:
        """The champion: the registry's model that serves (`glasses predict`'s default)."""
        return self.root / "model" / "ensemble.keras"

    @property
    def champion(self) -> Path:
        """Which registry entry the champion is, since when and why."""
        return self.root / "model" / "champion.json"

    @property
    def latest(self) -> Path:
        """The model the latest run built (its challenger), before the registry takes it."""
        return self.root / "latest" / "ensemble.keras"

    @property
    def models(self) -> Path:
        """The registry: one folder per run's model, and registry.csv."""
        return self.root / "models"

    @property
    def registry(self) -> Path:
        return self.models / "registry.csv"

    @property
    def predictions(self) -> Path:
        return self.root / "evaluation" / "test_predictions.csv"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def saliency(self) -> Path:
        """The saliency gallery of the shipped model (glasses.saliency.analyse)."""
        return self.figures / "saliency.png"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def plan(self) -> Path:
        """What a time budget was turned into (glasses.planner), when the run had one."""
        return self.root / "plan.json"

    @property
    def results(self) -> Path:
        """Prefect's persisted task results (what makes a finished stage Cached on a retry)."""
        return self.root / ".prefect-results"


def check_apart(data_dir: Path | None, work_dir: Path) -> None:
    """Raises OutputError unless the data dir and the work dir are apart: neither is the other
    or inside it (symlinks resolved), so no output can ever land in, or replace, the source."""
    work = Path(work_dir).resolve()
    if work.exists() and not work.is_dir():
        raise OutputError(f"work dir {work_dir} is a file; pass a directory (--work-dir)")
    if data_dir is None:
        return
    data = Path(data_dir).resolve()
    if data == work or work in data.parents or data in work.parents:
        where = ("is" if data == work else "is inside" if work in data.parents else "contains")
        raise OutputError(f"the data dir {data_dir} {where} the work dir {work_dir} ({data} vs {work}); "
                          "the source is never written to: choose a work dir outside the data dir")


def check_ours(work_dir: Path) -> None:
    """Raises OutputError unless `work_dir` is new, an empty directory, or carries MARKER: a run
    never writes into (or removes from) a folder glasses did not make."""
    root = Path(work_dir)
    if root.is_dir() and not (root / MARKER).is_file() and any(root.iterdir()):
        found = sorted(p.name for p in root.iterdir())
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        old = " It looks like a work dir of a glasses from before the marker: pass --adopt-work-dir to " \
              "use it." if {"stages", "models", "split"} & set(found) else ""
        raise OutputError(f"{work_dir} is not a glasses work dir (no {MARKER} in it; it holds {shown}): pass "
                          f"a new or empty --work-dir.{old}")


def make_ours(work_dir: Path, adopt: bool = False) -> Path:
    """Creates the work dir with its MARKER (or writes the marker into an empty dir, or with
    `adopt` into any dir: one made by glasses before the marker); returns the marker's path.

    Raises:
        OutputError: the dir is someone else's (see `check_ours`) or cannot be written.
    """
    root = Path(work_dir)
    if not adopt:
        check_ours(root)
    marker = root / MARKER
    if marker.is_file():
        return marker
    try:
        root.mkdir(parents=True, exist_ok=True)
        write_json(marker, {"made_by": "glasses", "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "adopted": adopt})
    except OSError as error:
        raise OutputError(f"cannot write the work dir {work_dir}: {error.strerror}; pass a writable "
                          "--work-dir") from error
    return marker


def check_free(work_dir: Path) -> None:
    """Raises OutputError when another run holds the work dir (what `claim` would refuse)."""
    holder = _holder(Path(work_dir)) if Path(work_dir).is_dir() else None
    if holder:
        raise OutputError(f"work dir {work_dir} is in use by {holder}; wait for that run to end or pass "
                          "another --work-dir")


@contextmanager
def claim(work_dir: Path, data_dir: Path | None = None) -> Iterator[WorkDir]:
    """Holds the work dir for one run: checks it is apart from the data and ours (`make_ours`),
    takes its lock (the holder's pid and host in `.lock`) and removes what dead runs left
    half-written.

    Raises:
        OutputError: the dirs overlap, the work dir is not ours or cannot be written, or another
            run holds it.
    """
    check_apart(data_dir, work_dir)
    root = Path(work_dir)
    make_ours(root)
    try:
        handle = open(root / LOCK_FILE, "a+")
    except OSError as error:
        raise OutputError(f"cannot write the work dir {work_dir}: {error.strerror}; pass a writable "
                          "--work-dir") from error
    with handle:
        _lock(handle, root)
        remove_stale_temporaries(root)
        try:
            yield WorkDir(root)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _lock(handle, root: Path) -> None:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        raise OutputError(f"work dir {root} is in use by {holder}; wait for that run to end or pass "
                          "another --work-dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")
    handle.flush()


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Removes the temporaries of runs that died mid-write (`.<name>.<random>` + TEMPORARY_SUFFIX:
    glasses.files' names, no one else's); returns them.

    Call only while holding the work dir's lock: then no live run is writing them.
    """
    pattern = f".*{TEMPORARY_SUFFIX}*"  # `.ensemble.x1y2.glasses-tmp.keras` too: Keras wants its suffix
    stale = [p for p in Path(root).rglob(pattern) if not any(TEMPORARY_SUFFIX in q.name for q in p.parents)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return stale


def status(root: Path) -> dict[str, str]:
    """Each step of a work dir's run: done, running, failed or not started (read from its files
    and its lock), plus who holds it."""
    work = WorkDir(Path(root))
    holder = _holder(work.root)
    steps = {"data": (work.split / SPLIT_MANIFEST).is_file()}
    steps.update({stage: work.stage_summary(stage).is_file() for stage in STAGES})
    steps.update({"ensemble": work.model.is_file(), "analyses": work.report.is_file()})
    found, first_open = {}, True
    for step, done in steps.items():
        failed = step.startswith("stage") and any(work.stage(step).glob(f"kt-*/*{CHIEF_DOWN}"))
        if done:
            found[step] = "done"
        elif first_open:  # the step a run is at, or stopped at
            found[step] = "running" if holder else "failed" if failed else "not started"
        else:
            found[step] = "not started"
        first_open = first_open and done
    return {**found, "held by": holder or "nobody"}


def _holder(root: Path) -> str | None:
    """Who holds the work dir's lock now (its pid and host), or None."""
    lock = root / LOCK_FILE
    if not lock.is_file():
        return None
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            return handle.read().strip() or "another process"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None
