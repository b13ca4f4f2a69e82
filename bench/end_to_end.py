"""Benchmark: end to end, wall time and peak memory (RSS of all processes) of `glasses run --preset quick`, by stage.

    .venv/bin/python bench/end_to_end.py                      # add `-- --preset smoke` for a quick self-test
    .venv/bin/python bench/end_to_end.py --keep W             # keep the work dir (bench/quality.py --score W)

Runs `<this python> -m glasses run --preset quick --work-dir <tmp>/work` (arguments after `--` are
passed on; a `--preset` there replaces quick) with PREFECT_HOME in the temporary dir too, so every
run starts Prefect's embedded server on a fresh database, as a fresh clone does. Every 0.5 s it sums
the RSS of that process and all its descendants (Prefect server, tuner chiefs and workers, the
watchdog) and keeps the samples with their times. A sum of RSS counts the pages processes share
(TensorFlow's libraries) once per process: an upper bound on the memory used.

Stages: the run's `summary.json` holds `durations_s`, consecutive laps of one stopwatch (data,
plan, stage1, stage2, stage3, ensemble, analyses: flows/pipeline.py's order, as summary.json sorts
its keys) and their total. Their boundaries are recovered by ending that total at summary.json's
mtime (written just after the last lap, plus a Prefect task's start-up, which shifts every
boundary later by that much); before it is start-up (imports, Prefect's server, the flow), after
it the finish (tidy, report, shutdown). The peak RSS of a stage is the highest sample inside its
window. Without a summary (a failed run) only the overall figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_S = 0.5
TARGET_S = 480
LAPS = ("data", "plan", "stage1", "stage2", "stage3", "ensemble", "analyses")  # flows/pipeline.py's order


def tree_rss(process: psutil.Process) -> int:
    """Bytes of RSS of `process` and all its descendants (those that vanish meanwhile count 0)."""
    total = 0
    try:
        family = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for member in family:
        try:
            total += member.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run(command: list[str], env: dict[str, str], log: Path) -> tuple[int, list[tuple[float, int]], float, float]:
    """Runs `command`, its output (timestamped) into `log`, sampling the RSS of its process tree.

    Returns:
        Exit code, samples (Unix time, bytes), start and end (Unix time).
    """
    started = time.time()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)

    def copy() -> None:
        with log.open("w") as out:
            for line in child.stdout:
                out.write(f"{time.time() - started:8.1f} {line}")

    reader = threading.Thread(target=copy, daemon=True)
    reader.start()
    watched, samples = psutil.Process(child.pid), []
    while child.poll() is None:
        samples.append((time.time(), tree_rss(watched)))
        time.sleep(SAMPLE_S)
    reader.join(timeout=10)
    return child.returncode, samples, started, time.time()


def stage_windows(work: Path, started: float, ended: float) -> list[tuple[str, float, float]] | None:
    """(stage, start, end) in Unix time, from summary.json's durations_s and mtime; None without one."""
    summary = work / "summary.json"
    if not summary.is_file():
        return None
    durations = dict(json.loads(summary.read_text())["durations_s"])  # keys sorted on disk
    clock = summary.stat().st_mtime - durations.pop("total")
    windows = [("start-up", started, clock)]
    for name in sorted(durations, key=lambda n: LAPS.index(n) if n in LAPS else len(LAPS)):
        seconds = durations[name]
        windows.append((name, clock, clock + seconds))
        clock += seconds
    return windows + [("finish", clock, ended)]


def peak(samples: list[tuple[float, int]], start: float, end: float) -> float:
    """The highest RSS sample in [start, end), in MB (NaN when no sample fell there)."""
    inside = [rss for t, rss in samples if start <= t < end]
    return max(inside) / 2**20 if inside else float("nan")


def search_start_ups(log: Path) -> list[tuple[str, float]]:
    """(search, seconds) from its plan task's end to its chief's first trial: the start-up of its
    chief and worker processes (Python, TensorFlow, the oracle), read from the timestamped log."""
    planned, start_ups = {}, []
    for line in log.read_text().splitlines():
        elapsed, _, text = line.strip().partition(" ")
        if found := re.search(r"Task run 'plan-(stage\d)-(\d+)px' - Finished", text):
            planned[found.groups()] = float(elapsed)
        elif (found := re.search(r"Task run 'chief-(stage\d)-size(\d+)' - Search: Running Trial #1$", text)) \
                and found.groups() in planned:
            start_ups.append((f"{found[1]} {found[2]} px", float(elapsed) - planned.pop(found.groups())))
    return start_ups


def report(samples: list[tuple[float, int]], windows, started: float, ended: float, preset: str,
           start_ups: list[tuple[str, float]]) -> None:
    """Prints the stage table (or says there is none), the totals, and the target line last."""
    if windows:
        print("\nstages from summary.json durations_s, ended at its mtime")
        print(f"{'stage':10} {'seconds':>8} {'peak RSS MB':>12}")
        for name, start, end in windows:
            print(f"{name:10} {end - start:8.1f} {peak(samples, start, end):12.0f}")
    else:
        print("\nno summary.json (the run failed?): overall figures only")
    if start_ups:
        total = sum(seconds for _, seconds in start_ups)
        print("\nsearch start-ups (plan done -> first trial): " +
              ", ".join(f"{name} {seconds:.1f} s" for name, seconds in start_ups) +
              f"; {total:.1f} s in all, {100 * total / (ended - started):.1f}% of the wall")
    top_time, top = max(samples, key=lambda s: s[1]) if samples else (started, 0)
    where = next((f", in {n}" for n, s, e in windows or [] if s <= top_time < e), "")
    print(f"\ntotal wall {ended - started:.1f} s, peak RSS {top / 2**20:.0f} MB (sum over the process tree) "
          f"at {top_time - started:.0f} s{where}")
    print(f"{preset} end to end: {ended - started:.0f} s (target < {TARGET_S} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, default=None, help="keep the run's timestamped output here")
    parser.add_argument("--keep", type=Path, default=None, help="copy the run's work dir here (e.g. for bench/quality.py --score)")
    parser.add_argument("passed", nargs=argparse.REMAINDER, help="after --: more `glasses run` options")
    args = parser.parse_args()
    extra = args.passed[1:] if args.passed[:1] == ["--"] else args.passed
    preset = extra[extra.index("--preset") + 1] if "--preset" in extra else "quick"
    with tempfile.TemporaryDirectory(prefix="glasses-bench-") as tmp:
        work = Path(tmp) / "work"
        command = [sys.executable, "-m", "glasses", "run", "--work-dir", str(work),
                   *([] if "--preset" in extra else ["--preset", "quick"]), *extra]
        env = {**os.environ, "PREFECT_HOME": str(Path(tmp) / "prefect"), "PYTHONUNBUFFERED": "1"}
        print(" ".join(command), flush=True)
        log = args.log or Path(tmp) / "run.log"
        code, samples, started, ended = run(command, env, log)
        if code != 0:
            print(f"exit code {code}; the run's last lines ({log}):\n" + "".join(log.read_text().splitlines(True)[-8:]))
        report(samples, stage_windows(work, started, ended), started, ended, preset, search_start_ups(log))
        if args.keep:
            shutil.copytree(work, args.keep, symlinks=True)
            print(f"work dir kept: {args.keep}")


if __name__ == "__main__":
    main()
