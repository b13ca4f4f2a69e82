"""Benchmark: XLA, the report's CNN with augmentation in the model vs in tf.data, jit off/on: images/s, val accuracy.

    .venv/bin/python bench/xla.py --steps 600 --repeats 1

The CNN is bench/throughput.py's (3 conv layers of 32 filters, max pooling) at --size px, trained
on the built-in data (prepared and cached as bench/workers.py does), batch 32, seed 1337, for
--warmup untimed steps (tracing, XLA compilation) and then --steps timed ones; val accuracy after.

    a  today: `build_model(spec)` as is, compiled with Keras's default jit_compile="auto"
       (which resolves to off on a CPU-only host, and off anyway: Keras's random augmentation
       layers say supports_jit=False)
    b  `glasses.model.augmentation_layers()` in a tf.data map (training=True, on the batched cache),
       the model without it (`build_model(augment=False)`), jit_compile=False
    c  as b, jit_compile=True
    d  as a, jit_compile=True: Keras refuses with a warning (and trains without XLA); the script
       then forces it past that check (the private `_jit_compile`) and reports the error if XLA fails
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # a failed XLA compile logs pages otherwise

from glasses.inputs import load_subset  # noqa: E402
from glasses.model import ModelSpec, augmentation_layers, build_model  # noqa: E402
from workers import prepare  # noqa: E402

SEED = 1337
VARIANTS = {"a: aug in model (today)": (True, "auto"), "b: aug in tf.data": (False, False),
            "c: aug in tf.data + XLA": (False, True), "d: aug in model + XLA": (True, True)}


def make_model(size: int, in_model: bool, jit: bool | str):
    """The CNN, with or without its augmentation layer, compiled with `jit`.

    Returns:
        The model and a note: Keras's jit warning, and whether XLA was forced past it.
    """
    import keras

    keras.utils.set_random_seed(SEED)
    spec = ModelSpec(image_size=size, conv_layers=3, filters=(32, 32, 32), pooling=("max",) * 3)
    model = build_model(spec, compile=False, augment=in_model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.compile(optimizer=spec.optimizer, loss="binary_crossentropy", metrics=["accuracy"], jit_compile=jit)
    said = ["Keras: " + str(w.message).split(".")[0] for w in caught if "jit_compile" in str(w.message)]
    if jit is True and not model.jit_compile:
        model._jit_compile = True  # past Keras's supports_jit check: does XLA itself compile it?
        said.append("forced on")
    return model, "; ".join(said)


def datasets(cache: Path, batch: int, in_model: bool):
    """Train (shuffled, repeated; augmented in tf.data unless the model does it) and val batches."""
    import tensorflow as tf

    train = load_subset(cache, "train", batch, shuffle_seed=SEED, repeat=True)
    if not in_model:
        layers = augmentation_layers()

        def augment(x, y):
            return layers(x, training=True), y

        train = train.map(augment, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    return train, load_subset(cache, "val", batch)


def measure(cache: Path, args: argparse.Namespace, variant: str) -> dict:
    """Trains one variant: warm-up, then timed steps; returns images/s, val accuracy, jit used and notes."""
    in_model, jit = VARIANTS[variant]
    model, note = make_model(args.size, in_model, jit)
    train, val = datasets(cache, args.batch, in_model)
    try:
        model.fit(train, steps_per_epoch=args.warmup, epochs=1, verbose=0)
        started = time.perf_counter()
        model.fit(train, steps_per_epoch=args.steps, epochs=1, verbose=0)
        seconds = time.perf_counter() - started
    except Exception as error:  # XLA may not compile what Keras would not
        found = re.search(r"unsupported operations.*?: (\w+) \(", str(error))
        why = f"XLA has no kernel for {found.group(1)}" if found else str(error).splitlines()[0][:120]
        return {"rate": float("nan"), "acc": float("nan"), "jit": model.jit_compile, "note": f"{note}; failed: {why}"}
    accuracy = model.evaluate(val, verbose=0, return_dict=True)["accuracy"]
    return {"rate": args.steps * args.batch / seconds, "acc": accuracy, "jit": model.jit_compile, "note": note}


def report(results: dict[str, list[dict]]) -> None:
    """Prints the table (medians over repeats), then the best variant against today's, last."""
    rows = {v: {"rate": statistics.median(r["rate"] for r in runs), "acc": statistics.median(r["acc"] for r in runs),
                "jit": runs[-1]["jit"], "note": runs[-1]["note"]} for v, runs in results.items()}
    print(f"\n{'variant':26} {'jit asked':>9} {'jit used':>8} {'images/s':>9} {'val acc':>8}  note")
    for variant, row in rows.items():
        print(f"{variant:26} {str(VARIANTS[variant][1]):>9} {str(row['jit']):>8} {row['rate']:9.1f} "
              f"{row['acc']:8.4f}  {row['note'] or '-'}")
    today = rows["a: aug in model (today)"]
    ran = {v: r for v, r in rows.items() if r["rate"] == r["rate"] and not v.startswith("a")}  # NaN: failed
    best = max(ran, key=lambda v: ran[v]["rate"]) if ran else "a: aug in model (today)"
    print(f"\nbest variant vs today = {rows[best]['rate'] / today['rate']:.2f}x images/s "
          f"(val acc {rows[best]['acc']:.4f} vs {today['acc']:.4f}; best: {best})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=600, help="Timed training steps per variant.")
    parser.add_argument("--warmup", type=int, default=20, help="Untimed steps first (tracing, XLA).")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="glasses-bench-") as tmp:
        cache = prepare(Path(tmp), args.n, args.resolution, args.size)
        print(f"{args.warmup} + {args.steps} steps, batch {args.batch}, {args.n} images at {args.size}px", flush=True)
        results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for repeat in range(args.repeats):  # interleaved, so drift in machine load hits all alike
            for variant in VARIANTS:
                results[variant].append(measure(cache, args, variant))
                r = results[variant][-1]
                print(f"repeat {repeat}: {variant}: {r['rate']:.1f} images/s, val acc {r['acc']:.4f}", flush=True)
        report(results)


if __name__ == "__main__":
    main()
