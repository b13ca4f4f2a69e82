"""Benchmark: does another way of training the same network learn a better model? Retrains
stage-3 trials of a finished run, as its workers trained them (the stage's steps, batch,
warm-up and early stopping on val accuracy with the best epoch restored) and under variants,
and scores every model on held-out images.

    .venv/bin/python bench/retrain.py W                          # W's best stage-3 trial, as trained
    .venv/bin/python bench/retrain.py W --trials 0 2 --variants constant cosine ema --seeds 1 2
    .venv/bin/python bench/retrain.py W --steps 1080 2280        # longer training (patience scaled)
    .venv/bin/python bench/retrain.py W --size 40                # the same networks at another size
    .venv/bin/python bench/retrain.py W --bn-images 0 512        # BatchNorm statistics: Keras' or clean

Variants (the report trains with Keras' default learning rates, `constant`):
  constant  the optimizer at its default learning rate, as the search does
  cosine    that rate decayed to 0 over the trial's steps (keras CosineDecay)
  ema       an exponential moving average of the weights (momentum 0.99), evaluated each epoch

Why: one trial's val accuracy swings by 5-8 points between consecutive epochs on the built-in
data's 301 val images, so early stopping and the search's ranking both read noise; this says
whether a change of training, not of the search, would ship better models. Each model is scored
on `--heldout` images synthesized like `bench/quality.py`'s (same seed: the same 3,000 faces),
resized as the run's cache resized its images. Runs one training at a time: alone, its times
are comparable.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import HELDOUT_SEED, synth  # noqa: E402

VARIANTS = ("constant", "cosine", "ema")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path, help="the work dir of a finished `glasses run`")
    parser.add_argument("--trials", nargs="+", default=None, help="stage-3 trial ids (default: the best)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["constant"])
    parser.add_argument("--steps", type=int, nargs="+", default=None,
                        help="training steps (default: the stage's max_steps); warm-up and patience scale with them")
    parser.add_argument("--size", type=int, default=None,
                        help="train at this image size instead of the search's (the run must have cached it: "
                             "a size stage 1 tried)")
    parser.add_argument("--bn-images", type=int, nargs="+", default=None,
                        help="BatchNorm statistics from this many clean training images before each validation "
                             "(default: the stage's bn_stats_images); 0: Keras' moving averages")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="training seeds")
    parser.add_argument("--heldout", type=Path, default=None,
                        help="a labelled data dir (Kaggle layout) to score on; default: synthesized")
    parser.add_argument("--n", type=int, default=3000, help="held-out images to synthesize")
    parser.add_argument("--colour", action="store_true", help="synthesize RGB held-out images (the built-in data)")
    return parser.parse_args(argv)


def stage3(work: Path):
    """The run's stage-3 search spec and its trials table (best val accuracy first)."""
    from glasses.search.spec import SearchSpec

    specs = sorted(p for p in (work / "stages" / "stage3").glob("kt-*/size*.json") if not p.name.endswith(".chief.json"))
    if not specs:
        raise SystemExit(f"no stage-3 search under {work / 'stages' / 'stage3'}: is {work} a finished run's work dir?")
    spec = SearchSpec.load(specs[0])
    with (work / "stages" / "stage3" / "trials.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "COMPLETED" and r["image_size"] == str(spec.image_size)]
    if not rows:
        raise SystemExit(f"no completed stage-3 trial in {work / 'stages' / 'stage3' / 'trials.csv'}")
    return spec, sorted(rows, key=lambda r: float(r["val_accuracy"]), reverse=True)


def heldout_arrays(data: Path, size: int):
    """The held-out images at `size` (as the cache resizes them, in [0, 1]) and their labels."""
    import numpy as np

    from glasses.inputs import read_rgb, resize_uint8

    with (data / "train.csv").open() as f:
        rows = [(r["id"], int(r["glasses"])) for r in csv.DictReader(f)]
    images = data / "faces-spring-2020" / "faces-spring-2020"
    x = np.stack([resize_uint8(read_rgb(images / f"face-{i}.png"), size) for i, _ in rows])
    return x.astype("float32") / 255.0, np.array([label for _, label in rows])


def train(spec, values: dict, variant: str, steps: int, seed: int, bn_images: int) -> tuple:
    """One model of the trial's shape trained as the search's workers train, under `variant`.
    Returns (model, history, seconds)."""
    import keras

    from glasses.budget import epochs_for
    from glasses.files import read_json
    from glasses.inputs import load_subset
    from glasses.model import batchnorm_callback, build_model, clean_sample
    from glasses.space import spec_from_values

    stage = spec.stage.model_copy(update={
        "max_steps": steps, "min_steps": round(spec.stage.min_steps * steps / spec.stage.max_steps),
        "patience_steps": round(spec.stage.patience_steps * steps / spec.stage.max_steps)})
    train_images = read_json(spec.cache_dir / "cache.json")["counts"]["train"]
    budget = epochs_for(stage, train_images)
    keras.utils.set_random_seed(seed)
    shape = spec_from_values(values, spec.image_size)
    model = build_model(shape, compile=False)
    rate = 1e-3 if shape.optimizer == "adam" else 1e-2  # Keras' defaults, as the report
    if variant == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(rate, budget.epochs * budget.steps_per_epoch)
    optimizer = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}[shape.optimizer](
        rate, use_ema=variant == "ema", ema_momentum=0.99)
    model.compile(optimizer=optimizer, loss="binary_crossentropy", metrics=["accuracy"])
    batch = stage.batch_size
    data = load_subset(spec.cache_dir, "train", batch, shuffle_seed=seed, repeat=True, augment=True)
    # In this order: the EMA weights swapped in, then BatchNorm statistics set for them.
    callbacks = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if variant == "ema" else []
    if bn_images:
        clean = load_subset(spec.cache_dir, "train", batch, shuffle_seed=seed)  # not augmented
        callbacks.append(batchnorm_callback(clean_sample(clean, min(bn_images, train_images))))
    callbacks.append(keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=budget.patience,
                                                   restore_best_weights=True, start_from_epoch=budget.warmup_epochs))
    started = time.monotonic()
    history = model.fit(data,
                        validation_data=load_subset(spec.cache_dir, "val", batch), epochs=budget.epochs,
                        steps_per_epoch=budget.steps_per_epoch, callbacks=callbacks, verbose=0)
    return model, history, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec, rows = stage3(args.work)
    if args.size and args.size != spec.image_size:
        from glasses.inputs import cache_dir_for

        cache = cache_dir_for(spec.cache_dir.parent, args.size)
        if not (cache / "cache.json").is_file():
            raise SystemExit(f"no cache at {args.size} px in {cache.parent}: have "
                             f"{', '.join(sorted(p.name for p in cache.parent.glob('*px')))}")
        spec = spec.model_copy(update={"image_size": args.size, "cache_dir": cache})
    by_id = {r["trial_id"]: r for r in rows}
    missing = [t for t in (args.trials or []) if t not in by_id]
    if missing:
        raise SystemExit(f"no completed stage-3 trial {', '.join(missing)} at {spec.image_size} px; "
                         f"have: {', '.join(by_id)}")
    trials = args.trials or [rows[0]["trial_id"]]
    with tempfile.TemporaryDirectory(prefix="glasses-retrain-") as scratch:
        data = args.heldout
        if data is None:
            data = Path(scratch) / "heldout"
            synth(data, args.n, HELDOUT_SEED, not args.colour)
        x, y = heldout_arrays(data, spec.image_size)
    results = []
    for trial in trials:
        for steps, bn_images in [(s, b) for s in args.steps or [spec.stage.max_steps]
                                 for b in args.bn_images or [spec.stage.bn_stats_images]]:
            for variant in args.variants:
                for seed in args.seeds:
                    model, history, seconds = train(spec, by_id[trial], variant, steps, seed, bn_images)
                    p = model.predict(x, batch_size=512, verbose=0).ravel()
                    val = history.history["val_accuracy"]
                    results.append({"trial": trial, "steps": steps, "bn_images": bn_images, "variant": variant,
                                    "seed": seed,
                                    "epochs": len(val), "val_best": round(max(val), 4),
                                    "val_by_epoch": [round(v, 3) for v in val],
                                    "held_acc": round(float(((p > 0.5) == y).mean()), 4), "train_s": round(seconds, 1)})
                    print(json.dumps(results[-1]), flush=True)
    print(f"\n{len(y)} held-out images at {spec.image_size} px; stage-3 trial(s) of {args.work}")
    print("| trial | steps | BN images | variant | runs | held-out acc, median (all) | best val, median | epochs "
          "| train s, median |")
    print("|---|---|---|---|---|---|---|---|---|")
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["trial"], r["steps"], r["bn_images"], r["variant"]), []).append(r)
    for (trial, steps, bn_images, variant), rs in groups.items():
        held = [r["held_acc"] for r in rs]
        print(f"| {trial} | {steps} | {bn_images} | {variant} | {len(rs)} | {statistics.median(held):.4f} "
              f"({', '.join(f'{h:.4f}' for h in held)}) | {statistics.median(r['val_best'] for r in rs):.4f} "
              f"| {', '.join(str(r['epochs']) for r in rs)} | {statistics.median(r['train_s'] for r in rs):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
