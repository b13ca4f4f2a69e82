"""Input pipeline: training images/s of one model fed by the on-disk cache, against the same model fed from arrays in memory.

Builds the cache of the built-in data at one size as a run does (synthesize, organize, split,
`inputs.build_cache`), then trains the report's CNN (`glasses.model.build_model`; neither way
augments, so only the feeding differs) two ways on the same train subset, with the same batch and the same steps an epoch:

- cache: `inputs.load_subset(cache, "train", batch, shuffle_seed=1, repeat=True)` with
  `model.fit(steps_per_epoch=S)`, as a tuner worker feeds its trials (glasses/search/worker.py);
- arrays: `inputs.subset_arrays(cache, "train")` loaded into memory once, then
  `model.fit(x, y, batch_size=batch, shuffle=True)` on the first S x batch images (S full batches).

Each measurement is a fresh model: one warm-up epoch not timed, then `--epochs` timed epochs
(from epoch begin to epoch end, so neither fit's set-up counts). Repeats are interleaved; the
median images/s of each is printed.

    .venv/bin/python bench/input_pipeline.py --size 64 --batch 32 --epochs 3 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from glasses import inputs  # noqa: E402
from workers import prepare  # noqa: E402


def epoch_timer():
    """A Keras callback recording each epoch's seconds in its `seconds` list."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.started)

    return EpochTimer()


def fresh_model(size: int):
    """The report's CNN at `size`, same seed every time."""
    import keras

    from glasses.model import ModelSpec, build_model

    keras.utils.set_random_seed(1337)
    return build_model(ModelSpec(image_size=size, conv_layers=3, filters=(32,) * 5))


def fed_by_cache(cache: Path, size: int, batch: int, steps: int, epochs: int) -> float:
    """Training images/s of a fresh model fed by the cache, over the timed epochs."""
    timer = epoch_timer()
    data = inputs.load_subset(cache, "train", batch, shuffle_seed=1, repeat=True)
    model = fresh_model(size)  # shuffle=False: the dataset shuffles itself (Keras warns otherwise)
    model.fit(data, steps_per_epoch=steps, epochs=epochs + 1, shuffle=False, verbose=0, callbacks=[timer])
    return steps * batch * epochs / sum(timer.seconds[1:])


def fed_by_arrays(x, y, size: int, batch: int, epochs: int) -> float:
    """Training images/s of a fresh model fed from arrays in memory, over the timed epochs."""
    timer = epoch_timer()
    fresh_model(size).fit(x, y, batch_size=batch, epochs=epochs + 1, shuffle=True, verbose=0, callbacks=[timer])
    return len(x) * epochs / sum(timer.seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1500, help="Labelled images to synthesize.")
    parser.add_argument("--resolution", type=int, default=128, help="Side of the PNGs, in pixels.")
    parser.add_argument("--size", type=int, default=64, help="Image size of the cache and the model.")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="Timed epochs, after one warm-up epoch.")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="glasses-bench-") as tmp:
        cache = prepare(Path(tmp), args.n, args.resolution, args.size)
        x, y = inputs.subset_arrays(cache, "train")
        steps = len(x) // args.batch
        x, y = x[:steps * args.batch], y[:steps * args.batch].reshape(-1, 1).astype("float32")
        rates: dict[str, list[float]] = {"cache": [], "arrays": []}
        for repeat in range(args.repeats):  # interleaved, so drift in machine load hits both alike
            rates["cache"].append(fed_by_cache(cache, args.size, args.batch, steps, args.epochs))
            rates["arrays"].append(fed_by_arrays(x, y, args.size, args.batch, args.epochs))
            print(f"repeat {repeat}: cache {rates['cache'][-1]:.0f}, arrays {rates['arrays'][-1]:.0f} images/s",
                  flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\n{steps} steps x batch {args.batch} an epoch, {args.epochs} timed epoch(s), {args.size} px, "
          f"median of {args.repeats}")
    print(f"{'fed by':<10}{'images/s':>10}  runs")
    for name, values in rates.items():
        print(f"{name:<10}{med[name]:>10.1f}  {[round(v) for v in values]}")
    print(f"cache / arrays = {med['cache'] / med['arrays']:.2f} (target >= 0.95)")


if __name__ == "__main__":
    main()
