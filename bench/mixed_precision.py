"""Benchmark: bfloat16 mixed precision against float32 for the report's CNN on this CPU.

Trains the network quick's stage 3 fixes (3 conv layers of 32 filters, max pooling, adam; the
report's augmentation in the input pipeline; BatchNorm statistics from 512 clean images before each
validation, as the workers train) on the built-in data at each size, once per policy and seed,
each in its own process with one compute thread (what a tuner worker gets with 2 workers on
2 cores). Prints the training images/s (after the first epoch) and the accuracy and log loss on
the val + test splits (605 images) of the trained network, and the medians and ratios.

    .venv/bin/python bench/mixed_precision.py --sizes 32 64 --seeds 1 2 --steps 720 --keep /tmp/mp

The two policies alternate within each (size, seed), so a slow patch of the machine hits both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

POLICIES = ("float32", "mixed_bfloat16")


def prepare(keep: Path, n: int, sizes: list[int]) -> dict[int, Path]:
    """The built-in data (n images, seed 1337), split and cached at `sizes` (reused when kept)."""
    from glasses import dataset, inputs, synth

    source = keep / "data"
    if not (source / "train.csv").is_file():
        synth.synthesize(source, n=n, resolution=128, seed=1337)
    organized = dataset.organize(source, keep / "organized")
    split = dataset.split(organized.dir, keep / "split", (0.8, 0.1, 0.1), seed=1337)
    return inputs.build_caches(split.dir, keep / "cache", sizes)


def one(cache_dir: Path, policy: str, seed: int, steps: int, batch: int) -> dict:
    """Trains one network under `policy` in this process; its speed and scores."""
    import keras
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.mixed_precision.set_global_policy(policy)
    from glasses.budget import MIN_STEPS_PER_EPOCH
    from glasses.inputs import load_subset, subset_arrays
    from glasses.model import ModelSpec, batchnorm_callback, build_model, clean_sample

    keras.utils.set_random_seed(seed)
    size = int(cache_dir.name.removesuffix("px"))
    model = build_model(ModelSpec(image_size=size, conv_layers=3, filters=(32,) * 3, pooling=("max",) * 3))
    train = load_subset(cache_dir, "train", batch, shuffle_seed=seed, repeat=True, augment=True)
    val = load_subset(cache_dir, "val", batch)
    per_epoch = max(MIN_STEPS_PER_EPOCH, 76)
    epochs = max(2, steps // per_epoch)
    clock = _EpochClock()
    model.fit(train, validation_data=val, epochs=epochs, steps_per_epoch=per_epoch, verbose=0,
              callbacks=[batchnorm_callback(clean_sample(load_subset(cache_dir, "train", batch, shuffle_seed=seed), 512)),
                         clock.callback()])
    x = np.concatenate([subset_arrays(cache_dir, s)[0] for s in ("val", "test")])
    y = np.concatenate([subset_arrays(cache_dir, s)[1] for s in ("val", "test")]).astype("float32")
    p = model.predict(x, batch_size=256, verbose=0).reshape(-1).astype("float64")
    eps = 1e-7
    loss = float(-np.mean(y * np.log(np.clip(p, eps, 1)) + (1 - y) * np.log(np.clip(1 - p, eps, 1))))
    images_s = per_epoch * batch / statistics.median(clock.seconds[1:])
    return {"size": size, "policy": policy, "seed": seed, "steps": epochs * per_epoch,
            "images_s": round(images_s, 1), "accuracy": round(float(np.mean((p > 0.5) == (y > 0.5))), 4),
            "log_loss": round(loss, 4), "images": len(y), "output_dtype": str(model.output.dtype)}


class _EpochClock:
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def callback(self):
        import keras

        clock = self

        class Clock(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                clock.started = time.perf_counter()

            def on_test_begin(self, logs=None):  # training of the epoch is over: validation is not timed
                clock.seconds.append(time.perf_counter() - clock.started)

        return Clock()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=720)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--n", type=int, default=3020, help="built-in images (quick's 3,020)")
    parser.add_argument("--keep", type=Path, default=None, help="a folder for the data and caches (reused)")
    parser.add_argument("--one", nargs=3, metavar=("CACHE", "POLICY", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        cache, policy, seed = args.one
        print(json.dumps(one(Path(cache), policy, int(seed), args.steps, args.batch)), flush=True)
        return
    keep = args.keep or Path(tempfile.mkdtemp(prefix="glasses-mp-"))
    caches = prepare(keep, args.n, args.sizes)
    rows = []
    for seed in args.seeds:
        for size in args.sizes:
            order = POLICIES if (seed + size) % 2 == 0 else POLICIES[::-1]  # alternate which goes first
            for policy in order:
                done = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--batch",
                                       str(args.batch), "--one", str(caches[size]), policy, str(seed)],
                                      capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
                if done.returncode:
                    sys.exit(f"{size}px {policy} seed {seed} failed:\n{done.stderr[-3000:]}")
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
    for size in args.sizes:
        by = {p: [r for r in rows if r["size"] == size and r["policy"] == p] for p in POLICIES}
        speed = {p: statistics.median(r["images_s"] for r in by[p]) for p in POLICIES}
        accuracy = {p: statistics.median(r["accuracy"] for r in by[p]) for p in POLICIES}
        loss = {p: statistics.median(r["log_loss"] for r in by[p]) for p in POLICIES}
        print(f"{size}px: images/s float32 {speed['float32']:.0f}, bf16 {speed['mixed_bfloat16']:.0f} "
              f"({speed['mixed_bfloat16'] / speed['float32']:.2f}x); accuracy {accuracy['float32']:.4f} vs "
              f"{accuracy['mixed_bfloat16']:.4f}; log loss {loss['float32']:.4f} vs {loss['mixed_bfloat16']:.4f} "
              f"(medians of {len(args.seeds)} seeds)")


if __name__ == "__main__":
    main()
