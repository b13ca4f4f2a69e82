"""Ensemble inference: images/s of ensemble.keras against its members run one after another.

Builds `--members` copies of the report's CNN (`glasses.model.build_model`, the default spec) at
`--size` with random weights: inference does the same arithmetic whatever the weights, so no
training is needed. The ensemble is built as the project ships it (`ensemble.average_ensemble`:
Resizing and Rescaling inside, Keras' Average over the members), saved with
`ensemble.save_model` and loaded back with `keras.saving.load_model`, as a user serving it does;
each member is likewise saved to its own .keras file and loaded back.

Input: random 0..255 images (float32) of `--size` px. The ensemble takes them raw; the members,
one after another, take them divided by 255 (done inside the timed part, with the mean of their
outputs). Both use `model.predict` with batch 256. One untimed pass of each over all the images
warms them up and checks that the ensemble's output is the mean of the members' outputs; then
repeats are interleaved and the median images/s printed.

    .venv/bin/python bench/ensemble_inference.py --members 5 --size 64 --images 2048 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glasses.ensemble import average_ensemble, save_model  # noqa: E402
from glasses.model import ModelSpec, build_model  # noqa: E402

BATCH = 256


def saved_models(folder: Path, count: int, size: int):
    """Builds `count` members and their average ensemble, saves each to a .keras file and loads
    them back; returns (ensemble, members) as loaded."""
    import keras

    keras.utils.set_random_seed(1337)
    members = [build_model(ModelSpec(image_size=size), name=f"member_{i}", compile=False) for i in range(count)]
    ensemble_path = save_model(average_ensemble(members, size), folder / "ensemble.keras")
    member_paths = [save_model(m, folder / f"member_{i}.keras") for i, m in enumerate(members)]
    return (keras.saving.load_model(ensemble_path),
            [keras.saving.load_model(p) for p in member_paths])


def run_ensemble(ensemble, images):
    """The ensemble's P(glasses) for raw 0..255 images."""
    return ensemble.predict(images, batch_size=BATCH, verbose=0)


def run_members(members, images):
    """The mean of the members' P(glasses), each member run in turn on images scaled to [0, 1]."""
    import numpy as np

    scaled = images / 255.0
    return np.mean([m.predict(scaled, batch_size=BATCH, verbose=0) for m in members], axis=0)


def images_per_s(run, model, images) -> float:
    """Images/s of one call of `run(model, images)`."""
    started = time.perf_counter()
    run(model, images)
    return len(images) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--size", type=int, default=64, help="The members' image size (and the input's).")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import numpy as np

    images = np.random.default_rng(0).integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8)
    images = images.astype("float32")
    with tempfile.TemporaryDirectory(prefix="glasses-bench-") as tmp:
        ensemble, members = saved_models(Path(tmp), args.members, args.size)
    same = np.allclose(run_ensemble(ensemble, images), run_members(members, images), atol=1e-5)  # and warm-up
    rates: dict[str, list[float]] = {"ensemble": [], "members": []}
    for repeat in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        rates["ensemble"].append(images_per_s(run_ensemble, ensemble, images))
        rates["members"].append(images_per_s(run_members, members, images))
        print(f"repeat {repeat}: ensemble {rates['ensemble'][-1]:.0f}, members {rates['members'][-1]:.0f} images/s",
              flush=True)
    report(rates, same, args)


def report(rates: dict[str, list[float]], same: bool, args: argparse.Namespace) -> None:
    """Prints the check, the table of median images/s, then the ratio."""
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\n{args.members} members at {args.size} px, {args.images} images, batch {BATCH}, median of {args.repeats}")
    print(f"ensemble output == mean of members' outputs (allclose, atol 1e-5): {same}")
    print(f"{'model':<26}{'images/s':>10}  runs")
    for name, label in (("ensemble", "ensemble.keras"), ("members", "members one after another")):
        print(f"{label:<26}{med[name]:>10.1f}  {[round(v) for v in rates[name]]}")
    print(f"ensemble / members one after another = {med['ensemble'] / med['members']:.2f}x")


if __name__ == "__main__":
    main()
