"""How long `glasses run` takes to refuse a bad dataset: every bad dataset of the test suite
(tests/conftest.py BAD_DATASETS), each in a fresh process, as a user would meet it.

    .venv/bin/python bench/fail_fast.py                      # this checkout, every case
    .venv/bin/python bench/fail_fast.py --base /tmp/base --cases 3   # another checkout (git worktree), 3 cases

Prints per case: seconds, exit code, stderr lines, tracebacks; then the median and the maximum.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import BAD_DATASETS, write_bad_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="run the glasses of this checkout instead (PYTHONPATH)")
    parser.add_argument("--cases", type=int, help="only the first N cases (sorted by name)")
    args = parser.parse_args()
    code = args.base or ROOT
    rows = []
    for case in sorted(BAD_DATASETS)[:args.cases]:
        with tempfile.TemporaryDirectory() as tmp:
            data_dir, _ = write_bad_dataset(Path(tmp) / "data", case)
            env = {**os.environ, "PYTHONPATH": str(code), "PREFECT_HOME": str(Path(tmp) / "prefect")}
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "glasses", "run", "--preset", "smoke", "--data-dir",
                                   str(data_dir), "--work-dir", str(Path(tmp) / "work")],
                                  cwd=code, env=env, capture_output=True, text=True, timeout=600)
            seconds = time.perf_counter() - started
        output = done.stdout + done.stderr
        rows.append(seconds)
        print(f"{case:40} {seconds:6.1f} s  exit {done.returncode}  {output.count(chr(10)):4} lines  "
              f"{output.count('Traceback')} tracebacks", flush=True)
    print(f"{len(rows)} cases: median {statistics.median(rows):.1f} s, max {max(rows):.1f} s ({code})")


if __name__ == "__main__":
    main()
