"""Benchmark: the report's augmentation as Keras's four layers in the model against one fused
resampling in the input pipeline (`glasses.inputs.augment`): training speed, CPU time, accuracy.

Trains the network of stage 1's first quick trial (4 conv layers of 56/24/56/32 filters, adam)
on the built-in data at each size, in mixed bfloat16 where the CPU has it (quick's `auto`),
one compute thread per process, BatchNorm statistics from 512 clean images before each
validation, as the workers train. Each round runs two processes at once (seeds s and s + 1,
like quick's two workers on two cores), in the order layers, fused, fused, layers, so a slow
patch of the machine hits both forms. Prints, per process, the training images/s (median
epoch, validation excluded), the CPU seconds of the whole fit, its wall time, and the accuracy
and log loss on the val + test splits (605 images); then medians and ratios per size.

    .venv/bin/python bench/augmentation.py --sizes 32 64 --steps 720 --keep /tmp/aug
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

FORMS = ("layers", "fused")


def network(size: int, form: str):
    """The CNN, with the report's Keras layers first for "layers" (`build_model(augment=True)`)."""
    from glasses.model import ModelSpec, build_model

    return build_model(ModelSpec(image_size=size, conv_layers=4, filters=(56, 24, 56, 32),
                                 pooling=("avg", "max", "max", "max"), global_pooling="avg"), augment=form == "layers")


def one(cache_dir: Path, form: str, seed: int, steps: int, batch: int) -> dict:
    """Trains one network with the augmentation in `form`, in this process; its speed and scores."""
    import keras
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from glasses.budget import MIN_STEPS_PER_EPOCH
    from glasses.inputs import load_subset, subset_arrays
    from glasses.model import batchnorm_callback, clean_sample
    from glasses.search.worker import resolve_precision
    from mixed_precision import _EpochClock

    if resolve_precision("auto") == "bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(seed)
    size = int(cache_dir.name.removesuffix("px"))
    model = network(size, form)
    train = load_subset(cache_dir, "train", batch, shuffle_seed=seed, repeat=True, augment=form == "fused")
    per_epoch = max(MIN_STEPS_PER_EPOCH, 76)
    clock, cpu, started = _EpochClock(), _cpu_s(), time.perf_counter()
    model.fit(train, validation_data=load_subset(cache_dir, "val", batch), epochs=max(2, steps // per_epoch),
              steps_per_epoch=per_epoch, verbose=0,
              callbacks=[batchnorm_callback(clean_sample(load_subset(cache_dir, "train", batch), 512)),
                         clock.callback()])
    wall, cpu = time.perf_counter() - started, _cpu_s() - cpu
    x = np.concatenate([subset_arrays(cache_dir, s)[0] for s in ("val", "test")])
    y = np.concatenate([subset_arrays(cache_dir, s)[1] for s in ("val", "test")]).astype("float32")
    p = np.clip(model.predict(x, batch_size=256, verbose=0).reshape(-1).astype("float64"), 1e-7, 1 - 1e-7)
    return {"size": size, "form": form, "seed": seed, "policy": keras.mixed_precision.global_policy().name,
            "images_s": round(per_epoch * batch / statistics.median(clock.seconds[1:]), 1),
            "fit_s": round(wall, 2), "cpu_s": round(cpu, 2), "epoch_s": [round(s, 2) for s in clock.seconds],
            "accuracy": round(float(np.mean((p > 0.5) == (y > 0.5))), 4),
            "log_loss": round(float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))), 4), "images": len(y)}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pair(cache: Path, form: str, seeds: tuple[int, int], args: argparse.Namespace) -> list[dict]:
    """Two processes of `form` at once; their rows."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    running = [subprocess.Popen([sys.executable, __file__, "--steps", str(args.steps), "--batch", str(args.batch),
                                 "--one", str(cache), form, str(seed)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env) for seed in seeds]
    rows = []
    for process, seed in zip(running, seeds):
        out, err = process.communicate()
        if process.returncode:
            sys.exit(f"{cache.name} {form} seed {seed} failed:\n{err[-3000:]}")
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    from mixed_precision import prepare

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--steps", type=int, default=720)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--n", type=int, default=3020, help="built-in images (quick's 3,020)")
    parser.add_argument("--keep", type=Path, default=None, help="a folder for the data and caches (reused)")
    parser.add_argument("--one", nargs=3, metavar=("CACHE", "FORM", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        cache, form, seed = args.one
        print(json.dumps(one(Path(cache), form, int(seed), args.steps, args.batch)), flush=True)
        return
    keep = args.keep or Path(tempfile.mkdtemp(prefix="glasses-aug-"))
    caches = prepare(keep, args.n, args.sizes)
    rows = []
    for size in args.sizes:
        for form, seeds in zip(("layers", "fused", "fused", "layers"), ((1, 2), (1, 2), (3, 4), (3, 4))):
            rows += pair(caches[size], form, seeds, args)
    for size in args.sizes:
        by = {f: [r for r in rows if r["size"] == size and r["form"] == f] for f in FORMS}
        median = {f: {k: statistics.median(r[k] for r in by[f]) for k in ("images_s", "fit_s", "cpu_s", "accuracy",
                                                                          "log_loss")} for f in FORMS}
        layers, fused = median["layers"], median["fused"]
        print(f"{size}px (medians of {len(by['fused'])}): images/s layers {layers['images_s']:.0f}, fused "
              f"{fused['images_s']:.0f} ({fused['images_s'] / layers['images_s']:.2f}x); fit {layers['fit_s']:.1f} s "
              f"vs {fused['fit_s']:.1f} s ({fused['fit_s'] / layers['fit_s']:.2f}x); CPU {layers['cpu_s']:.1f} s vs "
              f"{fused['cpu_s']:.1f} s ({fused['cpu_s'] / layers['cpu_s']:.2f}x); accuracy {layers['accuracy']:.4f} vs "
              f"{fused['accuracy']:.4f}; log loss {layers['log_loss']:.4f} vs {fused['log_loss']:.4f}", flush=True)


if __name__ == "__main__":
    main()
