"""Benchmark: training throughput (images/s) of the report's CNN per image size.

Trains `glasses.model.build_model` (augmented in tf.data by `glasses.inputs.augment`, as in the search) on random images
the size of the report's training split, one warm-up epoch then `--epochs` timed ones, and
prints the median images/s per size, plus what that means for the `paper` preset's three
stages (trials x epochs x 3599 images, an upper bound: early stopping ends most trials sooner).

Runs on any Keras backend (KERAS_BACKEND=tensorflow|jax), on CPU or GPU:

    .venv/bin/python bench/throughput.py --sizes 64 --images 1024 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAPER = [("stage1", 64, 16, 5, 50), ("stage1", 128, 16, 5, 50), ("stage1", 256, 16, 5, 50),
         ("stage2", 64, 64, 100, 50), ("stage3", 64, 64, 150, 100)]  # stage, size, batch, trials, epochs
TRAIN_IMAGES = 3599


class _Timer:
    def __init__(self):
        import keras

        class Epochs(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.seconds = []

            def on_epoch_begin(self, epoch, logs=None):
                self.started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self.started)

        self.callback = Epochs()


def measure(size: int, batch: int, images: int, epochs: int) -> float:
    """Median training images/s over the timed epochs (after one warm-up epoch)."""
    import keras
    import numpy as np

    from glasses.inputs import batches
    from glasses.model import ModelSpec, build_model

    keras.utils.set_random_seed(1337)
    model = build_model(ModelSpec(image_size=size, conv_layers=3, filters=(32, 32, 32), pooling=("max",) * 3))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images, size, size, 3), dtype=np.uint8)
    y = rng.integers(0, 2, (images, 1)).astype("float32")
    timer = _Timer()
    model.fit(batches(x, y, batch, augment_seed=0), epochs=epochs + 1, verbose=0, callbacks=[timer.callback])
    return images / statistics.median(timer.callback.seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=TRAIN_IMAGES)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    import keras

    rates = {size: measure(size, args.batch, args.images, args.epochs) for size in args.sizes}
    result = {"backend": keras.backend.backend(), "devices": _devices(), "batch": args.batch,
              "images": args.images, "images_per_s": {str(k): round(v, 1) for k, v in rates.items()}}
    if all(size in rates for _, size, *_ in PAPER):
        result["paper_upper_bound_h"] = round(sum(t * e * TRAIN_IMAGES / rates[s] for _, s, _, t, e in PAPER) / 3600, 2)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


def _devices() -> list[str]:
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices()]
    import tensorflow as tf

    return [d.name for d in tf.config.list_physical_devices()]


if __name__ == "__main__":
    main()
