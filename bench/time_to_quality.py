"""Benchmark: best val accuracy against wall time, this project's search against plain Keras Tuner.

Both search the report's space (`glasses.space`, the same hypermodel) on the same cached data at
one image size, for the same wall time, from a cold start (a fresh process each):

- ours: the chief and `--workers` worker processes (`glasses.search`), a trial's budget in steps
  as a stage states it, BatchNorm statistics from clean images, with the chief's median rule
  stopping trials that are behind (median) and without (off);
- plain: `keras_tuner.RandomSearch` in one process with all the cores, the same steps per trial
  and the same patience (Keras' EarlyStopping on val accuracy), as a user would write it.

A trial counts when it has ended (a trial stopped early counts with what it had reached: its
checkpoint is a model). Prints the best val accuracy at each minute and writes the curves as a
PNG (`--plot`), and the rows as JSON lines.

    .venv/bin/python bench/time_to_quality.py --data builtin --minutes 6 --plot bench/time_to_quality_builtin.png
    .venv/bin/python bench/time_to_quality.py --data small --minutes 6 --plot bench/time_to_quality_small.png
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = {"builtin": dict(n=3020, resolution=128, grey=False), "small": dict(n=380, resolution=112, grey=True)}


def prepare(root: Path, data: str, size: int) -> Path:
    from glasses import dataset, inputs, synth

    source = synth.synthesize(root / "data", seed=1337, **DATA[data]).out_dir
    organized = dataset.organize(source, root / "organized")
    split = dataset.split(organized.dir, root / "split", (0.8, 0.1, 0.1), seed=1337)
    return inputs.build_cache(split.dir, root / "cache", size)


def stage(args: argparse.Namespace):
    from glasses.config import StageConfig

    return StageConfig(batch_size=args.batch, max_trials=1000, max_steps=args.steps, min_steps=args.steps // 3,
                       patience_steps=args.steps // 4, early_stop={"rule": args.early_stop, "peers": 2})


def run_ours(root: Path, cache: Path, args: argparse.Namespace, tag: str) -> list[dict]:
    """The project's search until the wall time is up; each ended trial: seconds since start, score."""
    from glasses.errors import SearchError
    from glasses.search import SearchSpec, run_chief, run_worker, trial_records

    seconds = args.minutes * 60
    spec = SearchSpec(search_id=f"ttq-{tag}", directory=root / "kt", project_name=tag, cache_dir=cache,
                      image_size=args.size, stage=stage(args), folds=0, fixed={}, seed=1337, bind="127.0.0.1",
                      address=None, port=0, workers=args.workers, worker_timeout_s=60, chief_timeout_s=seconds,
                      await_workers_s=60, gpus_per_worker=1, precision=args.precision)
    spec_path = spec.save(root / f"{tag}.json")
    started = time.time()
    quiet = lambda line: None  # noqa: E731
    threads = [threading.Thread(target=_quietly, args=(run_worker, spec_path, i, quiet), daemon=True)
               for i in range(args.workers)]
    for thread in threads:
        thread.start()
    try:
        run_chief(spec_path, quiet)
    except SearchError:  # its timeout: the wall time is up
        pass
    for thread in threads:
        thread.join(60)
    return [{"t": r["ended_at"] - started, "score": r["score"], "status": r["status"]}
            for r in trial_records(spec.project_dir) if r["ended_at"] and r["score"] is not None
            and r["ended_at"] - started <= seconds]


def _quietly(function, *args) -> None:
    from glasses.errors import SearchError

    try:
        function(*args)
    except SearchError:  # the chief gave up at its timeout: the worker is told to stop
        pass


def run_plain(root: Path, cache: Path, args: argparse.Namespace) -> list[dict]:
    """Plain RandomSearch in a child process, killed when the wall time is up."""
    log = root / "plain.jsonl"
    command = [sys.executable, __file__, "--plain-child", str(cache), str(log), "--size", str(args.size),
               "--batch", str(args.batch), "--steps", str(args.steps)]
    started = time.time()
    child = subprocess.Popen(command, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "STARTED": str(started)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        child.wait(args.minutes * 60)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    return [r for r in rows if r["t"] <= args.minutes * 60]


def plain_child(cache: Path, log: Path, args: argparse.Namespace) -> None:
    """What a user would write: RandomSearch over the same hypermodel, EarlyStopping on val accuracy."""
    import keras
    import keras_tuner as kt

    from glasses.budget import epochs_for
    from glasses.files import read_json
    from glasses.inputs import load_subset
    from glasses.model import build_model
    from glasses.space import model_spec

    started = float(os.environ["STARTED"])
    train_images = read_json(cache / "cache.json")["counts"]["train"]
    budget = epochs_for(stage(argparse.Namespace(**{**vars(args), "early_stop": "off"})), train_images)
    keras.utils.set_random_seed(1337)

    class Logged(kt.RandomSearch):
        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            with log.open("a") as out:
                score = self.oracle.trials[trial.trial_id].score
                out.write(json.dumps({"t": time.time() - started, "score": score, "status": "COMPLETED"}) + "\n")

    tuner = Logged(lambda hp: build_model(model_spec(hp, args.size, {})), objective="val_accuracy",
                   max_trials=1000, seed=1337, directory=str(log.parent / "plain"), project_name="plain")
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=budget.patience,
                                         restore_best_weights=True, start_from_epoch=budget.warmup_epochs)
    tuner.search(load_subset(cache, "train", args.batch, shuffle_seed=1337, repeat=True, augment=True),
                 validation_data=load_subset(cache, "val", args.batch), epochs=budget.epochs,
                 steps_per_epoch=budget.steps_per_epoch, callbacks=[stop], verbose=0)


def best_by_minute(rows: list[dict], minutes: int) -> list[float | None]:
    found = []
    for minute in range(1, minutes + 1):
        scores = [r["score"] for r in rows if r["t"] <= minute * 60]
        found.append(max(scores) if scores else None)
    return found


def plot(curves: dict[str, list[dict]], minutes: int, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for name, rows in curves.items():
        points, best = [(0.0, None)], None
        for row in sorted(rows, key=lambda r: r["t"]):
            best = row["score"] if best is None else max(best, row["score"])
            points.append((row["t"] / 60, best))
        xs = [x for x, y in points if y is not None] + [minutes]
        ys = [y for x, y in points if y is not None]
        if ys:
            axes.step(xs, ys + [ys[-1]], where="post", label=f"{name} ({len(rows)} trials)")
    axes.set(xlabel="wall time (min)", ylabel="best val accuracy so far", title=title, xlim=(0, minutes))
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=sorted(DATA), default="builtin")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=720, help="optimizer steps a trial trains at most")
    parser.add_argument("--minutes", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--modes", nargs="+", choices=["plain", "median", "off"], default=["plain", "median", "off"],
                        help="plain Keras Tuner; ours with the chief's median rule; ours without early stopping")
    parser.add_argument("--precision", choices=["float32", "bfloat16", "auto"], default="auto",
                        help="what our workers train in (plain Keras Tuner: float32, as a user would)")
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--plain-child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain_child:
        plain_child(*args.plain_child, args)
        return
    with tempfile.TemporaryDirectory(prefix="glasses-ttq-") as tmp:
        root = Path(tmp)
        cache = prepare(root, args.data, args.size)
        curves = {}
        for mode in args.modes:  # one after another, each from a cold start
            if mode == "plain":
                curves["plain Keras Tuner"] = run_plain(root, cache, args)
            else:
                name = f"glasses, {args.workers} workers, " + ("median stopping" if mode == "median" else "no early stop")
                curves[name] = run_ours(root, cache, argparse.Namespace(**{**vars(args), "early_stop": mode}), mode)
    for name, rows in curves.items():
        print(json.dumps({"mode": name, "data": args.data, "size": args.size, "minutes": args.minutes,
                          "precision": args.precision,
                          "trials": len(rows), "stopped": sum(r["status"] == "STOPPED" for r in rows),
                          "best_by_minute": best_by_minute(rows, args.minutes)}), flush=True)
    if args.plot:
        plot(curves, args.minutes, f"{args.data} data, {args.size} px: best val accuracy against time", args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
