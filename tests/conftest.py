"""Shared test fixtures: tiny datasets made here, one Prefect test server for the session."""

from __future__ import annotations

import os
import tempfile

# Before TensorFlow or Prefect are imported anywhere: quiet TF, no CUDA probing, and a
# throw-away Prefect home so tests never touch the user's.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="glasses-prefect-")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

NUM_SAMPLES = 48
# Kaggle's layout, spelled out here rather than taken from glasses.dataset, so that the tests
# hold the code to the real download's names.
KAGGLE_SUBDIR = "faces-spring-2020/faces-spring-2020"


def write_image(path: Path, *, size: tuple[int, int] = (24, 24), mode: str = "RGB", bar: bool = False,
                seed: int | np.random.Generator = 0) -> Path:
    """A random image, PNG or JPEG by suffix, in a PIL `mode` ("RGB", "L", "RGBA").

    Args:
        size: (width, height).
        bar: Draw a dark bar across the eyes, the tests' stand-in for glasses.
        seed: A seed, or a generator to draw the pixels from.
    """
    width, height = size
    pixels = np.random.default_rng(seed).integers(120, 220, size=(height, width, 3), dtype=np.uint8)
    if bar:
        pixels[height // 3: height // 3 + max(2, height // 6)] = 20
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    Image.fromarray(pixels).convert(mode).save(path, fmt)
    return path


def write_kaggle_dataset(root: Path, labels: list[int], *, subdir: str = KAGGLE_SUBDIR,
                         size: tuple[int, int] = (24, 24), mode: str = "RGB", latents: int = 4, seed: int = 0,
                         test_ids: int = 3) -> Path:
    """A tiny dataset in the Kaggle layout under `root`, which it returns.

    train.csv holds ids 1..N (id, v1..v<latents>, glasses), test.csv the next `test_ids` ids
    without a label, and `subdir` one image face-<id>.png per id; 'glasses' images get a dark
    bar across the eyes.
    """
    rng = np.random.default_rng(seed)
    ids = list(range(1, len(labels) + 1))
    extra = list(range(len(ids) + 1, len(ids) + 1 + test_ids))
    columns = [f"v{i}" for i in range(1, latents + 1)]
    root.mkdir(parents=True, exist_ok=True)
    for name, rows, row_labels in (("train.csv", ids, labels), ("test.csv", extra, None)):
        table = pd.DataFrame(rng.normal(size=(len(rows), latents)).round(4), columns=columns)
        table.insert(0, "id", rows)
        if row_labels is not None:
            table["glasses"] = row_labels
        table.to_csv(root / name, index=False)
    for image_id, label in zip(ids + extra, labels + [0] * len(extra)):
        write_image(root / subdir / f"face-{image_id}.png", size=size, mode=mode, bar=label == 1, seed=rng)
    return root


def balanced_labels(count: int) -> list[int]:
    """About 1.74 glasses per no-glasses, deterministic."""
    return [1 if i % 11 < 7 else 0 for i in range(count)]


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> tuple[Path, Path]:
    """A split of NUM_SAMPLES images and its 16 px tf.data cache: (split_dir, cache_dir)."""
    from glasses import dataset, inputs

    root = tmp_path_factory.mktemp("tiny")
    source = write_kaggle_dataset(root / "source", balanced_labels(NUM_SAMPLES))
    organized = dataset.organize(source, root / "organized")
    split = dataset.split(organized.dir, root / "split", (0.6, 0.2, 0.2), seed=1337)
    return split.dir, inputs.build_cache(split.dir, root / "cache", 16)


@pytest.fixture(scope="session")
def prefect_server():
    """One real Prefect test server (embedded, temporary database) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
