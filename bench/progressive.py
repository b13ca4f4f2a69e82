"""Benchmark: progressive resizing (the first steps of a trial at 32 px, the rest at 64) against
every step at 64 px, every step at 32 px, and half the steps at 64 px.

Trains two networks of quick's stage-3 space (3 conv layers + adam; filters and pooling as a
search draws them) on the built-in data (or the small grey variant: `--n 380 --grey`) with
quick's stage-3 budget (1,080 steps, batch 32; the
report's augmentation in the input pipeline), per schedule and seed, in this process with two
compute threads (the machine alone). After training, BatchNorm statistics are set from 512 clean
training images at the final size, as a worker does before each validation. Prints each run's
training seconds, val log loss and accuracy (the 301-image val split) and its accuracy on 3,000
held-out images of the same generator (another seed), then the mean of each schedule.

    .venv/bin/python bench/progressive.py --keep /tmp/prog                 # ~20 min on 2 cores
    .venv/bin/python bench/progressive.py --schedules 64 "32>64 1/6" --seeds 1
    .venv/bin/python bench/progressive.py --n 380 --grey --keep /tmp/prog-grey  # the small grey variant

The schedules alternate within each (network, seed), so a slow patch of the machine hits all.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STEPS = 1080  # quick's stage 3
SCHEDULES = {"64": [(64, STEPS)], "32": [(32, STEPS)], "32>64 1/3": [(32, 720), (64, 360)],
             "32>64 1/6": [(32, 900), (64, 180)], "32>64 1/12": [(32, 990), (64, 90)], "64 half": [(64, STEPS // 2)]}
# (filters, pooling, global pooling) of two draws of quick's stage-3 space
NETWORKS = [((32, 16, 48), ("max", "avg", "max"), "max"), ((16, 40, 24), ("avg", "max", "max"), "avg")]
HELDOUT_SEED = 4242  # as bench/quality.py


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=list(SCHEDULES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--n", type=int, default=3020, help="labelled images of the data (the small variant: 380)")
    parser.add_argument("--grey", action="store_true", help="grey images, as bench/quality.py's small variant")
    parser.add_argument("--heldout", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="a directory to keep the data in")
    return parser.parse_args(argv)


def prepare(root: Path, n: int, heldout: int, grey: bool = False):
    """The data (built-in, or bench/quality.py's small grey variant), split and cached at 32 and 64 px,
    and the held-out images of the same generator at both sizes."""
    import numpy as np

    from glasses import dataset, inputs, synth
    from glasses.evaluate import labelled_images

    for name, count, seed in (("data", n, 1337), ("heldout", heldout, HELDOUT_SEED)):
        if not (root / name / "train.csv").is_file():
            synth.synthesize(root / name, n=count, resolution=128, seed=seed, grey=grey)
    organized = dataset.organize(root / "data", root / "organized")
    split = dataset.split(organized.dir, root / "split", (0.8, 0.1, 0.1), seed=1337)
    caches = inputs.build_caches(split.dir, root / "cache", [32, 64])
    arrays = root / "heldout.npz"
    if not arrays.is_file():
        pairs = labelled_images(root / "heldout")
        images = [inputs.read_rgb(path) for path, _ in pairs]
        np.savez(arrays, x32=np.stack([inputs.resize_uint8(i, 32) for i in images]),
                 x64=np.stack([inputs.resize_uint8(i, 64) for i in images]), y=np.array([label for _, label in pairs]))
    return caches, dict(np.load(arrays))


def one(caches: dict, held: dict, network: int, phases: list[tuple[int, int]], seed: int) -> dict:
    """Trains one network through `phases` ((size, steps), in order, one optimizer) and scores it."""
    import keras
    import numpy as np

    from glasses.evaluate import log_loss
    from glasses.inputs import load_subset, subset_arrays
    from glasses.model import ModelSpec, build_model, clean_sample, set_batchnorm_statistics

    keras.utils.set_random_seed(seed)
    filters, pooling, global_pooling = NETWORKS[network]
    model = build_model(ModelSpec(None, 3, filters, pooling, global_pooling, "adam"), any_size=True)
    seconds = []
    for size, steps in phases:
        train = load_subset(caches[size], "train", 32, shuffle_seed=seed, repeat=True, augment=True)
        started = time.monotonic()
        model.fit(train, steps_per_epoch=steps, epochs=1, verbose=0)
        seconds.append(round(time.monotonic() - started, 1))
    size = phases[-1][0]
    set_batchnorm_statistics(model, clean_sample(load_subset(caches[size], "train", 32, shuffle_seed=seed), 512))
    images, labels = subset_arrays(caches[size], "val")
    val = model.predict(images, verbose=0, batch_size=256).ravel()
    heldout = model.predict(held[f"x{size}"].astype("float32") / 255, verbose=0, batch_size=256).ravel()
    return {"network": network, "seed": seed, "phases": phases, "train_s": seconds, "total_s": round(sum(seconds), 1),
            "val_loss": round(log_loss(val, labels), 4), "val_acc": round(float(np.mean((val > 0.5) == labels)), 4),
            "held_acc": round(float(np.mean((heldout > 0.5) == held["y"])), 4)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="glasses-progressive-") as scratch:
        root = args.keep or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        caches, held = prepare(root, args.n, args.heldout, args.grey)
        rows = []
        for network in range(len(NETWORKS)):
            for seed in args.seeds:
                for name in args.schedules:
                    rows.append({"schedule": name, **one(caches, held, network, SCHEDULES[name], seed)})
                    print(json.dumps(rows[-1]), flush=True)
    print("\n| schedule | runs | training s (median) | val log loss (mean) | held-out accuracy (mean) |")
    print("|---|---|---|---|---|")
    for name in args.schedules:
        mine = [r for r in rows if r["schedule"] == name]
        print(f"| {name} | {len(mine)} | {statistics.median(r['total_s'] for r in mine):.1f} "
              f"| {statistics.mean(r['val_loss'] for r in mine):.3f} | {statistics.mean(r['held_acc'] for r in mine):.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
