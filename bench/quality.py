"""Benchmark: how good is the model a run ships? Each run is scored on its own test split and on
a large held-out set drawn by the same generator (other faces, the same 4% label noise).

    .venv/bin/python bench/quality.py                           # the small variant, three runs (~1 h)
    .venv/bin/python bench/quality.py --n 3020 --colour         # the built-in data, as `make run` (~45 min)
    .venv/bin/python bench/quality.py --n 3020 --colour --score W1 W2   # score runs already made
    .venv/bin/python bench/quality.py --n 60 --heldout 100 --seeds 1 -- --preset smoke  # self-test
    .venv/bin/python bench/quality.py --n 3020 --colour --config sizes.yaml  # quick with other settings

A run's own test split is small: 304 images on the built-in data (a 95% interval of about +-4
points), 38 on the small variant (`glasses synth --n 380 --grey`), where beating a majority rate
of ~0.65 "clearly" (the interval above it) needs ~0.83. So each shipped model is also scored by
`glasses evaluate` on `--heldout` images (3,000 by default: +-1.3 points) synthesized with another
seed: that says how good the model is; the run's own alarm says whether its test split could tell.

Each run is `glasses run --data-dir <the variant>` with the split's and the search's seed set to
one of `--seeds` (arguments after `--` are passed on), in a fresh work dir and PREFECT_HOME. The
table's "flow" is the flow's own total (summary.json), without Prefect's start-up.
`--score` instead scores the model/ensemble.keras of work dirs that runs on this variant made.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from glasses.evaluate import wilson_interval  # noqa: E402

HELDOUT_SEED = 4242  # not the variant's seed (1337): other faces, other latents


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 2, 3], help="data.seed and search.seed per run")
    parser.add_argument("--n", type=int, default=380, help="labelled images of the variant (the built-in: 3020)")
    parser.add_argument("--colour", action="store_true", help="RGB images (the built-in data); default grey")
    parser.add_argument("--heldout", type=int, default=3000, help="labelled held-out images to score each model on")
    parser.add_argument("--score", type=Path, nargs="+", help="work dirs of runs already made: score their models")
    parser.add_argument("--keep", type=Path, default=None, help="a directory to keep the data and runs in")
    parser.add_argument("--config", type=Path, default=None, help="a YAML/JSON config for every run (the seeds "
                        "are set on top of it)")
    parser.add_argument("run_args", nargs="*", help="after --: passed on to `glasses run`")
    return parser.parse_args(argv)


def glasses(*args: str, env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "glasses", *args]
    if log is None:
        return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    with log.open("w") as out:
        return subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)


def synth(out: Path, n: int, seed: int, grey: bool) -> None:
    if (out / "synth.json").is_file():
        return
    done = glasses("synth", "--out", str(out), "--n", str(n), "--seed", str(seed), *(["--grey"] * grey))
    if done.returncode != 0:
        raise SystemExit(f"glasses synth --out {out} failed:\n{done.stdout}{done.stderr}")


def one_run(root: Path, data: Path, heldout: Path, seed: int, run_args: list[str], base: Path | None = None) -> dict:
    import yaml

    work, home = root / f"run-{seed}", root / f"prefect-{seed}"
    config = root / f"seed-{seed}.json"
    settings = yaml.safe_load(base.read_text()) if base else {}
    for section in ("data", "search"):
        settings[section] = {**settings.get(section, {}), "seed": seed}
    config.write_text(json.dumps(settings))
    env = {**os.environ, "PREFECT_HOME": str(home)}
    started = time.monotonic()
    done = glasses("run", "--data-dir", str(data), "--work-dir", str(work), "--config", str(config), *run_args,
                   env=env, log=root / f"run-{seed}.log")
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"run {seed} exited {done.returncode}: see {root / f'run-{seed}.log'}")
    return {**score(work, heldout), "wall_s": wall}


def score(work: Path, heldout: Path) -> dict:
    """The run's own test scores (its summary) and its model's on the held-out images."""
    summary = json.loads((work / "summary.json").read_text())
    scored = glasses("evaluate", "--data-dir", str(heldout), "--model", str(work / "model" / "ensemble.keras"))
    if scored.returncode != 0:
        raise SystemExit(f"glasses evaluate failed:\n{scored.stdout}{scored.stderr}")
    held = json.loads(scored.stdout[scored.stdout.index("{"):])
    alarm = summary["alarm"]
    confusion = held["confusion"]  # rows: true no_glasses, glasses
    positives = sum(confusion[1])
    majority = max(positives, held["n"] - positives) / held["n"]
    return {"run": work.name, "seed": summary["config"]["data"]["seed"], "flow_s": summary["durations_s"]["total"],
            "image_size": summary["stages"]["stage1"]["chosen"].get("image_size"),
            "test_n": summary["evaluation"]["n"], "test_acc": alarm["test_accuracy"], "test_auc": alarm["test_roc_auc"],
            "test_ci": alarm["accuracy_ci95"], "test_majority": alarm["majority_rate"], "alarm": alarm["raised"],
            "held_n": held["n"], "held_acc": held["accuracy"], "held_auc": held["roc_auc"],
            "held_ci": wilson_interval(round(held["accuracy"] * held["n"]), held["n"]), "held_majority": majority}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="glasses-quality-") as scratch:
        root = args.keep or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        data, heldout = root / "variant", root / "heldout"
        if not args.score:
            synth(data, args.n, 1337, not args.colour)
        synth(heldout, args.heldout, HELDOUT_SEED, not args.colour)
        rows = []
        for seed in (args.score or args.seeds):
            rows.append(score(seed, heldout) if args.score else one_run(root, data, heldout, seed, args.run_args, args.config))
            print(json.dumps(rows[-1]), flush=True)
    print()
    print("| run | seed | flow | size | own test: acc [95% CI] (n) | AUC | majority | alarm "
          "| held-out: acc [95% CI] (n) | AUC | majority |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['seed']} | {r['flow_s']:.0f} s | {r['image_size']} px "
              f"| {r['test_acc']:.4f} [{r['test_ci'][0]:.3f}, {r['test_ci'][1]:.3f}] ({r['test_n']}) "
              f"| {r['test_auc']:.3f} | {r['test_majority']:.3f} | {'raised' if r['alarm'] else 'quiet'} "
              f"| {r['held_acc']:.4f} [{r['held_ci'][0]:.3f}, {r['held_ci'][1]:.3f}] ({r['held_n']}) "
              f"| {r['held_auc']:.3f} | {r['held_majority']:.3f} |")
    clear = sum(r["held_ci"][0] > r["held_majority"] for r in rows)
    print(f"\nheld-out accuracy's 95% interval above the majority rate in {clear} of {len(rows)} runs; "
          f"own test split's alarm quiet in {sum(not r['alarm'] for r in rows)} of {len(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
