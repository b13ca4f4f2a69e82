"""How fast this machine trains the report's CNN, measured the way a tuner worker trains.

A time budget is turned into trials and steps (glasses.planner) from these figures. They are
taken in a child process with a worker's environment (its CPU threads or GPUs, see
`glasses.search.launch.worker_env`), so they hold for the processes that will run the trials;
a second child times the start-up every search role pays (Python, TensorFlow, Keras Tuner).

    python -m glasses.throughput --sizes 32 48 --batches 32     # one JSON line
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from glasses.config import SearchConfig
from glasses.errors import GlassesError

WARMUP_STEPS = 4  # graph tracing and the first allocations: not timed as throughput
TIMED_STEPS = 30
TIMED_MAX_S = 2.0  # per size: a big image on a slow CPU stops early, with at least 3 timed steps
EVAL_BATCHES = 6


@dataclass(frozen=True)
class Throughput:
    """One worker's speed on this machine (images/s, keyed "<size>/<batch>"), and its fixed costs."""

    train: dict[str, float]  # training images/s, augmentation included
    evaluate: dict[str, float]  # images/s of a validation pass
    model_s: float  # building, compiling and tracing one model's training and evaluation
    startup_s: float  # a role process's start: Python, TensorFlow and Keras Tuner imported
    threads: int  # the CPU threads each worker gets (0: TensorFlow's default)
    decode_s: float  # decoding one of the dataset's images (what building a cache does to each)

    def train_rate(self, size: int, batch: int) -> float:
        return self.train[key(size, batch)]

    def evaluate_rate(self, size: int, batch: int) -> float:
        return self.evaluate[key(size, batch)]

    def to_dict(self) -> dict:
        return asdict(self)


def key(size: int, batch: int) -> str:
    return f"{size}/{batch}"


def measure(sizes: list[int], batches: list[int], search: SearchConfig, images: list[str],
            timeout_s: float = 300) -> Throughput:
    """Measures in a child process with worker 0's environment (threads, GPUs) of `search`;
    `images` are a few of the dataset's files, to time their decoding.

    Raises:
        GlassesError: the child failed or did not finish within `timeout_s`.
    """
    from glasses.search.launch import visible_gpus, worker_env

    # worker_env reads only `workers` and `gpus_per_worker`, which the search config has as a spec has.
    env = {**os.environ, **worker_env(search, 0, visible_gpus())}
    command = [sys.executable, "-m", "glasses.throughput", "--sizes", *map(str, sizes),
               "--batches", *map(str, batches), "--images", *images]
    out, _ = _child(command, env, timeout_s, f"measuring the training speed at sizes {sizes}")
    found = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    # A role's start, timed apart: the first TensorFlow import after a while reads its libraries
    # from disk (seconds more than later ones, such as every search's roles).
    _, startup_s = _child([sys.executable, "-c", "import keras_tuner, tensorflow"], env, timeout_s,
                          "timing a start of TensorFlow")
    return Throughput(train=found["train"], evaluate=found["evaluate"], model_s=found["model_s"],
                      startup_s=round(startup_s, 2), threads=found["threads"], decode_s=found["decode_s"])


def _child(command: list[str], env: dict, timeout_s: float, what: str) -> tuple[str, float]:
    """The stdout of a child process and its seconds; GlassesError naming `what` if it fails."""
    started = time.perf_counter()
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as error:
        raise GlassesError(f"{what} took over {timeout_s:.0f}s; this machine is too busy or too slow "
                           "for a time budget") from error
    if done.returncode != 0 or (command[1] == "-m" and "{" not in done.stdout):
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise GlassesError(f"{what} failed (exit {done.returncode}): {why}")
    return done.stdout, time.perf_counter() - started


def measure_here(sizes: list[int], batches: list[int], images: list[str]) -> dict:
    """Measures in this process (after limiting its threads as a worker does); see `measure`."""
    from glasses.search.worker import limit_threads  # the workers' own thread settings, not a copy

    limit_threads()
    train, evaluate, model_s = {}, {}, []
    for size in sizes:
        for batch in batches:
            rates = _one(size, batch)
            train[key(size, batch)], evaluate[key(size, batch)] = rates[0], rates[1]
            model_s.append(rates[2])
    return {"train": _monotone(train, sizes, batches), "evaluate": _monotone(evaluate, sizes, batches),
            "model_s": round(max(model_s), 2), "decode_s": _decode_s(images),
            "threads": int(os.environ.get("GLASSES_THREADS", "0"))}


def _monotone(rates: dict[str, float], sizes: list[int], batches: list[int]) -> dict[str, float]:
    """The rates with a smaller image never slower than a larger one: a step the machine spent on
    something else (a busy neighbour) would otherwise make one size look dearer than a bigger one."""
    fixed = dict(rates)
    for batch in batches:
        ordered = sorted(sizes, reverse=True)
        for larger, size in zip(ordered, ordered[1:]):
            fixed[key(size, batch)] = max(fixed[key(size, batch)], fixed[key(larger, batch)])
    return fixed


def _decode_s(images: list[str]) -> float:
    """Seconds to decode one image (the mean over `images`; 0 without any)."""
    from glasses.inputs import read_rgb

    started = time.perf_counter()
    for path in images:
        read_rgb(path)
    return round((time.perf_counter() - started) / max(1, len(images)), 5)


def _one(size: int, batch: int) -> tuple[float, float, float]:
    """Training and evaluation images/s at one size and batch, and the model's fixed cost (s)."""
    import keras
    import numpy as np

    from glasses.inputs import batches
    from glasses.model import ModelSpec, build_model

    rng = np.random.default_rng(0)  # uint8 images through the workers' own pipeline, augmentation included
    x = rng.integers(0, 256, (batch * 4, size, size, 3), dtype=np.uint8)
    y = rng.integers(0, 2, (batch * 4, 1)).astype("float32")
    started = time.perf_counter()
    keras.utils.set_random_seed(0)
    model = build_model(ModelSpec(image_size=size, conv_layers=3, filters=(32, 32, 32), pooling=("max",) * 3))
    clock = _StepClock()
    model.fit(batches(x, y, batch, repeat=True, augment_seed=0), epochs=1, steps_per_epoch=WARMUP_STEPS + TIMED_STEPS,
              verbose=0, callbacks=[clock.callback()])
    step_s = (clock.times[-1] - clock.times[WARMUP_STEPS - 1]) / (len(clock.times) - WARMUP_STEPS)
    traced = time.perf_counter()
    data = batches(x, y, batch, repeat=True)
    model.evaluate(data, steps=1, verbose=0)  # traces the evaluation
    warm = time.perf_counter()
    model.evaluate(data, steps=EVAL_BATCHES, verbose=0)
    eval_s = (time.perf_counter() - warm) / EVAL_BATCHES
    fixed = (clock.times[WARMUP_STEPS - 1] - started - WARMUP_STEPS * step_s) + (warm - traced - eval_s)
    return round(batch / step_s, 1), round(batch / eval_s, 1), max(0.0, fixed)


class _StepClock:
    """The time at the end of each training step; stops training once the timed steps took
    TIMED_MAX_S (at least 3 of them)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def callback(self):
        import keras

        clock = self

        class Clock(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                clock.times.append(time.perf_counter())
                timed = len(clock.times) - WARMUP_STEPS
                if timed >= 3 and clock.times[-1] - clock.times[WARMUP_STEPS - 1] > TIMED_MAX_S:
                    self.model.stop_training = True

        return Clock()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Training images/s of the report's CNN, as one JSON line.")
    parser.add_argument("--sizes", type=int, nargs="+", required=True)
    parser.add_argument("--batches", type=int, nargs="+", required=True)
    parser.add_argument("--images", nargs="*", default=[], help="a few of the dataset's images")
    args = parser.parse_args(argv)
    print(json.dumps(measure_here(args.sizes, args.batches, args.images)), flush=True)


if __name__ == "__main__":
    main()
