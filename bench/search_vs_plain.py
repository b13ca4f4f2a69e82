"""Benchmark: the same search by plain Keras Tuner in one process and by this project's chief and 1 and 2 workers.

    .venv/bin/python bench/search_vs_plain.py --trials 6 --epochs 5 --repeats 1

Built-in data as bench/workers.py prepares it (one cache). Every run trains the same trials (the
RandomSearch oracle, seed 1337) for the same epochs and steps: early stopping is off in the project
runs (patience = the whole budget) and the plain run has no callbacks. The step budget is
epochs x steps-per-epoch, where steps-per-epoch is what `glasses.budget.epochs_for` makes of it
(at least `MIN_STEPS_PER_EPOCH`, so several passes over a small train split).

- plain: `keras_tuner.RandomSearch` in this process with the project's hypermodel (`model_spec`
  + `build_model`, as `glasses.search.tuner._hypermodel`), fitting `load_subset(train, repeat)`.
  TensorFlow is already imported here; a project run pays each role's start-up (its imports).
- project: `bench/workers.py`'s `run_search` (real `python -m glasses.search chief|worker`).

Overhead of a run = 1 - sum(trial seconds) / (workers x wall), with trial seconds from the trial
records on disk (`worker.json` `seconds`: the worker's whole `run_trial`, i.e. building the model,
fit, validation and checkpoint); the plain run's trials are timed around the same `run_trial`.
What is left is process start-up, waiting for the chief, oracle calls and idle polling.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from glasses.budget import MIN_STEPS_PER_EPOCH, epochs_for  # noqa: E402
from glasses.config import StageConfig  # noqa: E402
from glasses.files import read_json  # noqa: E402
from glasses.search import trial_records  # noqa: E402
from workers import prepare, run_search  # noqa: E402

SEED = 1337
ROLE_ENV = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")


def budget(cache: Path, batch: int, epochs: int) -> tuple[int, int]:
    """Steps per epoch and total steps so that `epochs_for` gives exactly `epochs` epochs.

    Returns:
        (steps_per_epoch, max_steps), checked against `glasses.budget.epochs_for`.
    """
    train = read_json(cache / "cache.json")["counts"]["train"]
    per_epoch = max(-(-train // batch), MIN_STEPS_PER_EPOCH)
    steps = epochs * per_epoch
    planned = epochs_for(StageConfig(batch_size=batch, max_trials=1, max_steps=steps, patience_steps=steps), train)
    assert (planned.steps_per_epoch, planned.epochs) == (per_epoch, epochs), planned
    return per_epoch, steps


def timed_random_search():
    """keras_tuner.RandomSearch that appends each trial's `run_trial` seconds to `self.seconds`."""
    import keras_tuner as kt

    class Timed(kt.RandomSearch):
        def run_trial(self, trial, *a, **k):
            started = time.monotonic()
            try:
                return super().run_trial(trial, *a, **k)
            finally:
                self.seconds.append(time.monotonic() - started)

    return Timed


def run_plain(root: Path, cache: Path, args: argparse.Namespace, tag: str) -> tuple[float, list[float], list[str]]:
    """Plain RandomSearch in this process.

    Returns:
        Wall seconds, each trial's `run_trial` seconds, each trial's hyperparameters (JSON).
    """
    from glasses.inputs import load_subset
    from glasses.model import build_model
    from glasses.space import model_spec

    for name in ROLE_ENV:  # a plain search must not dial an oracle
        os.environ.pop(name, None)

    started = time.monotonic()
    tuner = timed_random_search()(lambda hp: build_model(model_spec(hp, args.size, {})), objective="val_accuracy",
                  max_trials=args.trials, seed=SEED, directory=str(root / "plain"), project_name=tag)
    tuner.seconds = []
    tuner.search(load_subset(cache, "train", args.batch, shuffle_seed=SEED, repeat=True, augment=True),
                 validation_data=load_subset(cache, "val", args.batch), epochs=args.epochs,
                 steps_per_epoch=args.steps_per_epoch, verbose=0)
    wall = time.monotonic() - started
    values = [json.dumps(t.hyperparameters.values, sort_keys=True) for t in tuner.oracle.trials.values()]
    return wall, tuner.seconds, values


def run_project(root: Path, cache: Path, workers: int, args: argparse.Namespace, tag: str
                ) -> tuple[float, list[float], list[str]]:
    """The project's chief and `workers` workers (`bench/workers.py` run_search); same returns as run_plain."""
    wall = run_search(root, cache, workers, args, tag)
    records = trial_records(root / "kt" / tag)
    return wall, [r["seconds"] or 0.0 for r in records], [json.dumps(r["values"], sort_keys=True) for r in records]


def report(results: dict[str, list[tuple]], workers: dict[str, int], same: bool) -> None:
    """Prints the table (medians), the overhead per run, and the key ratio last."""
    wall = {mode: statistics.median(r[0] for r in runs) for mode, runs in results.items()}
    print(f"\n{'mode':10} {'wall s':>8} {'trial s':>8} {'speed-up vs plain':>18}")
    for mode, runs in results.items():
        trial_s = statistics.median(sum(r[1]) for r in runs)
        print(f"{mode:10} {wall[mode]:8.1f} {trial_s:8.1f} {wall['plain'] / wall[mode]:17.2f}x")
    print(f"\nsame trials (hyperparameters) in every run: {'yes' if same else 'NO'}")
    print("overhead = 1 - sum(trial s) / (workers x wall), median over repeats:")
    for mode, runs in results.items():
        overhead = statistics.median(1 - sum(r[1]) / (workers[mode] * r[0]) for r in runs)
        print(f"  {mode:10} {overhead:6.1%}")
    two = "2 workers" if "2 workers" in wall else list(wall)[-1]
    print(f"\n{two} vs plain = {wall['plain'] / wall[two]:.2f}x (target >= 1.5x)")


def set_worker_threads(threads: int) -> None:
    """Makes every worker this process launches use `threads` TensorFlow threads."""
    from glasses.search import launch

    default = launch.worker_env

    def worker_env(*args, **kwargs):
        return {**default(*args, **kwargs), "GLASSES_THREADS": str(threads)}

    launch.worker_env = worker_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=None, help="TensorFlow threads of each worker process "
                        "(default: the project's, cores / workers).")
    args = parser.parse_args()
    if args.threads:
        set_worker_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="glasses-bench-") as tmp:
        root = Path(tmp)
        cache = prepare(root, args.n, args.resolution, args.size)
        args.steps_per_epoch, args.steps = budget(cache, args.batch, args.epochs)
        print(f"{args.trials} trials x {args.epochs} epochs x {args.steps_per_epoch} steps = {args.steps} steps "
              f"a trial, batch {args.batch}, {args.n} images at {args.size}px", flush=True)
        workers = {"plain": 1, **{f"{w} worker{'s' * (w > 1)}": w for w in args.workers}}
        results: dict[str, list[tuple]] = {mode: [] for mode in workers}
        for repeat in range(args.repeats):  # interleaved, so drift in machine load hits all alike
            for mode, count in workers.items():
                tag = f"{mode.replace(' ', '')}-r{repeat}"
                run = (run_plain(root, cache, args, tag) if mode == "plain"
                       else run_project(root, cache, count, args, tag))
                results[mode].append(run)
                print(f"repeat {repeat}: {mode}: {run[0]:.1f} s, {len(run[1])} trials", flush=True)
        same = len({tuple(sorted(r[2])) for runs in results.values() for r in runs}) == 1
        report(results, workers, same)


if __name__ == "__main__":
    main()
