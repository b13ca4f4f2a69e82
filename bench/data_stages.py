"""Data stages: organize + cache build for all of a preset's image sizes from full-size PNGs, against the limit and the plain approach.

Synthesizes the built-in data at full size (600 labelled 1024 px PNGs by default), then times:

- limit: decoding every labelled PNG once and nothing else (the least any pipeline must do), with
  PIL over a thread pool of os.cpu_count() threads: PIL releases the GIL while it decodes, so
  threads decode in parallel without the cost of processes;
- ours: `dataset.organize`, `dataset.split`, then the caches of every size (`inputs.build_caches`
  when the library has it, else `inputs.build_cache` once per size), each part timed;
- plain: `keras.utils.image_dataset_from_directory` once per size and subset of the split,
  every batch read (what one would write without this project's cache).

Repeats are interleaved (limit, ours, plain, limit, ...) so machine-load drift hits all alike;
the medians are printed. Each repeat builds into fresh folders (organize and split reuse earlier
output), removed after it.

    .venv/bin/python bench/data_stages.py --n 600 --resolution 1024 --repeats 1 --data /tmp/glasses-1024
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glasses import dataset, inputs, synth  # noqa: E402
from glasses.config import build_config  # noqa: E402

PARTS = ("organize", "split", "caches")


def labelled_images(source: Path) -> list[Path]:
    """The labelled images of a Kaggle-layout dataset: the ones the pipeline organizes."""
    layout = dataset.find_layout(source)
    return dataset.find_images(layout, dataset.read_labels(layout.csv))


def limit(paths: list[Path]) -> float:
    """Seconds to decode every image once to an RGB array, on os.cpu_count() threads."""
    import numpy as np
    from PIL import Image

    def decode(path: Path) -> int:
        with Image.open(path) as image:
            return np.asarray(image if image.mode == "RGB" else image.convert("RGB")).shape[0]

    started = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(decode, paths))
    return time.perf_counter() - started


def ours(source: Path, work: Path, sizes: list[int]) -> dict[str, float]:
    """Seconds of each of organize, split and the caches of all sizes, into fresh folders under `work`."""
    seconds = {}
    started = time.perf_counter()
    organized = dataset.organize(source, work / "organized")
    seconds["organize"] = time.perf_counter() - started
    started = time.perf_counter()
    split = dataset.split(organized.dir, work / "split", (0.8, 0.1, 0.1), seed=1337)
    seconds["split"] = time.perf_counter() - started
    started = time.perf_counter()
    if hasattr(inputs, "build_caches"):
        inputs.build_caches(split.dir, work / "cache", sizes)
    else:
        for size in sizes:
            inputs.build_cache(split.dir, work / "cache", size)
    seconds["caches"] = time.perf_counter() - started
    return seconds


def plain(split_dir: Path, sizes: list[int]) -> float:
    """Seconds to read every subset at every size with `image_dataset_from_directory`."""
    import keras

    started = time.perf_counter()
    for size in sizes:
        for subset in dataset.SUBSETS:
            data = keras.utils.image_dataset_from_directory(
                split_dir / subset, image_size=(size, size), interpolation="nearest", batch_size=64,
                labels="inferred", shuffle=False, verbose=False)
            for _ in data:
                pass
    return time.perf_counter() - started


def megabytes(folder: Path) -> float:
    """Sum of the sizes of the files under `folder`, in MB."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def warm_up() -> None:
    """Imports TensorFlow and runs a tiny tf.data pipeline, so no measurement pays start-up costs."""
    import tensorflow as tf

    list(tf.data.Dataset.range(2).map(lambda x: x + 1, num_parallel_calls=tf.data.AUTOTUNE))


def measure(root: Path, source: Path, sizes: list[int], repeats: int) -> dict[str, list[float]]:
    """Runs limit, ours and plain `repeats` times, interleaved; seconds (and cache MB) of each run."""
    paths = labelled_images(source)
    runs: dict[str, list[float]] = {k: [] for k in ("limit", *PARTS, "ours", "plain", "cache_mb")}
    for repeat in range(repeats):
        work = root / f"repeat{repeat}"
        runs["limit"].append(limit(paths))
        parts = ours(source, work, sizes)
        for name, value in parts.items():
            runs[name].append(value)
        runs["ours"].append(sum(parts.values()))
        runs["cache_mb"].append(megabytes(work / "cache"))
        runs["plain"].append(plain(work / "split", sizes))
        print(f"repeat {repeat}: limit {runs['limit'][-1]:.1f} s, ours {runs['ours'][-1]:.1f} s, "
              f"plain {runs['plain'][-1]:.1f} s", flush=True)
        shutil.rmtree(work)
    return runs


def report(runs: dict[str, list[float]], args: argparse.Namespace, images: int) -> None:
    """Prints the table of medians, then the two ratios."""
    med = {k: statistics.median(v) for k, v in runs.items()}
    how = "inputs.build_caches" if hasattr(inputs, "build_caches") else "inputs.build_cache per size"
    print(f"\n{images} labelled images of {args.resolution} px, sizes {args.sizes}, "
          f"median of {args.repeats} run(s); caches by {how}")
    print(f"{'stage':<26}{'seconds':>10}")
    rows = [("limit (decode once)", med["limit"]), ("ours", med["ours"])]
    rows += [(f"  {part}", med[part]) for part in PARTS]
    rows += [("plain (keras, per size)", med["plain"])]
    for name, value in rows:
        print(f"{name:<26}{value:>10.2f}")
    print(f"cache on disk: {med['cache_mb']:.1f} MB")
    print(f"ours / limit = {med['ours'] / med['limit']:.2f}x (target <= 1.3x)")
    print(f"plain / ours = {med['plain'] / med['ours']:.2f}x (target >= 2.5x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600, help="Labelled images to synthesize.")
    parser.add_argument("--resolution", type=int, default=1024, help="Side of the PNGs, in pixels.")
    parser.add_argument("--preset", default="paper", help="Whose stage-1 image sizes to cache.")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="Overrides the preset's sizes.")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--data", type=Path, default=None, help="Keep the synthesized dataset here and reuse "
                        "it on the next run (600 PNGs of 1024 px take minutes to draw); default: a temp dir.")
    args = parser.parse_args()
    args.sizes = args.sizes or list(build_config(args.preset).search.stage1.image_sizes)
    warm_up()
    with tempfile.TemporaryDirectory(prefix="glasses-bench-") as tmp:
        root = Path(tmp)
        source = synth.synthesize(args.data or root / "data", n=args.n, resolution=args.resolution,
                                  seed=1337).out_dir  # reused when complete
        runs = measure(root, source, args.sizes, args.repeats)
        report(runs, args, len(labelled_images(source)))


if __name__ == "__main__":
    main()
