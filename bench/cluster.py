"""Benchmark: a preset's stage 1 (every image size's search) under `threads` and under a Dask
LocalCluster started for it on this machine; wall time per run, median, ratio.

Both run the same searches (same data, seed, trials and steps) through the pipeline's own
`run_searches` in a Prefect flow, each in a fresh work dir; the data and the caches are made
before the clock starts. Under threads the sizes run one after another, each with every tuner
worker; on the Dask cluster they run side by side.

    .venv/bin/python bench/cluster.py --preset quick --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect import flow  # noqa: E402

from flows.pipeline import run_searches  # noqa: E402
from glasses import synth  # noqa: E402
from glasses.config import Config, build_config  # noqa: E402
from tasks import placement  # noqa: E402
from tasks import data  # noqa: E402


@flow(name="bench-stage1")
def stage1(config: Config) -> float:
    """Stage 1's searches; returns their wall time (data and caches ready before it starts)."""
    source = data.source(config)
    fingerprint = data.fingerprint(source)
    split = data.split(config, data.organize(config, source, fingerprint)["dir"], fingerprint)
    for size in config.search.stage1.image_sizes:
        data.cache(config, split["dir"], fingerprint, size)
    started = time.monotonic()
    run_searches(config, "stage1", config.search.stage1.image_sizes, {}, split, fingerprint)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--clusters", nargs="+", default=["threads", "local"])
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="glasses-bench-cluster-"))
    preset = build_config(args.preset)
    source = synth.synthesize(root / "data", n=preset.data.synth_n, resolution=preset.data.synth_resolution,
                              seed=preset.data.seed).out_dir
    seconds: dict[str, list[float]] = {kind: [] for kind in args.clusters}
    for repeat in range(args.repeats):
        for kind in args.clusters:
            config = build_config(args.preset, overrides={"data.data_dir": source, "search.cluster": kind,
                                                           "work_dir": root / f"{kind}-{repeat}"})
            run = stage1.with_options(task_runner=placement.task_runner(config))
            seconds[kind].append(run(config))
            print(f"{kind} run {repeat + 1}: {seconds[kind][-1]:.1f} s", flush=True)
    print(f"\nstage 1 of {args.preset} ({', '.join(map(str, preset.search.stage1.image_sizes))} px, "
          f"{preset.search.stage1.max_trials} trials each, {preset.search.workers} workers), {args.repeats} run(s):")
    print("| cluster | median s | runs |\n|---|---|---|")
    for kind, found in seconds.items():
        print(f"| {kind} | {statistics.median(found):.1f} | {', '.join(f'{s:.1f}' for s in found)} |")
    if len(seconds) == 2:
        (a, first), (b, second) = seconds.items()
        print(f"\nratio {a} / {b}: {statistics.median(first) / statistics.median(second):.2f}x")


if __name__ == "__main__":
    main()
