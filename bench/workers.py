"""Benchmark: the same search with 1 worker and with N workers; wall time, median, ratio.

Runs the real roles (`python -m glasses.search chief|worker`) as the Prefect tasks do, on the
built-in data, with early stopping off (patience = the whole budget) so every trial trains the same
number of steps and both runs do the same work (same seed, same trials).

    .venv/bin/python bench/workers.py --trials 8 --steps 200 --repeats 3 --workers 1 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glasses import dataset, inputs, synth  # noqa: E402
from glasses.config import StageConfig  # noqa: E402
from glasses.search import SearchSpec, run_chief, run_worker  # noqa: E402


def prepare(root: Path, n: int, resolution: int, size: int) -> Path:
    source = synth.synthesize(root / "data", n=n, resolution=resolution, seed=1337).out_dir
    organized = dataset.organize(source, root / "organized")
    split = dataset.split(organized.dir, root / "split", (0.8, 0.1, 0.1), seed=1337)
    return inputs.build_cache(split.dir, root / "cache", size)


def run_search(root: Path, cache: Path, workers: int, args: argparse.Namespace, tag: str) -> float:
    stage = StageConfig(batch_size=args.batch, max_trials=args.trials, max_steps=args.steps, patience_steps=args.steps)
    spec = SearchSpec(search_id=tag, directory=root / "kt", project_name=tag, cache_dir=cache, image_size=args.size, stage=stage,
                      folds=0, fixed={}, seed=1337, bind="127.0.0.1", address=None, port=0, workers=workers,
                      worker_timeout_s=120, chief_timeout_s=3600, gpus_per_worker=1,
                      await_workers_s=120)
    spec_path = spec.save(root / f"{tag}.json")
    started = time.monotonic()
    quiet = lambda line: None  # noqa: E731
    workers_ = [threading.Thread(target=run_worker, args=(spec_path, i, quiet)) for i in range(workers)]
    for thread in workers_:
        thread.start()
    run_chief(spec_path, quiet)  # raises SearchError unless every trial ended
    for thread in workers_:
        thread.join()
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200, help="Optimizer steps per trial.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="glasses-bench-") as tmp:
        root = Path(tmp)
        cache = prepare(root, args.n, args.resolution, args.size)
        times: dict[int, list[float]] = {w: [] for w in args.workers}
        for repeat in range(args.repeats):  # interleaved, so drift in machine load hits both alike
            for workers in args.workers:
                seconds = run_search(root, cache, workers, args, f"w{workers}-r{repeat}")
                times[workers].append(seconds)
                print(f"repeat {repeat}: {workers} worker(s): {seconds:.1f} s", flush=True)
    base = statistics.median(times[args.workers[0]])
    print(f"\n{args.trials} trials x {args.steps} steps, {args.n} images at {args.size}px, batch {args.batch}")
    for workers, values in times.items():
        median = statistics.median(values)
        print(f"workers={workers}: median {median:.1f} s over {len(values)} runs {[round(v, 1) for v in values]}"
              f"  speed-up vs {args.workers[0]}: {base / median:.2f}x")


if __name__ == "__main__":
    main()
