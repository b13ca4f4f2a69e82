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


def write_kaggle_dataset(root: Path, labels: list[int], size: tuple[int, int] = (24, 24),
                         mode: str = "RGB", latents: int = 4, seed: int = 0, test_ids: int = 3) -> Path:
    """A tiny dataset in the Kaggle layout; 'glasses' images get a dark bar across the eyes."""
    rng = np.random.default_rng(seed)
    images = root / "faces-spring-2020" / "faces-spring-2020"
    images.mkdir(parents=True)
    ids = list(range(1, len(labels) + 1))
    columns = [f"v{i}" for i in range(1, latents + 1)]
    train = pd.DataFrame(rng.normal(size=(len(ids), latents)).round(4), columns=columns)
    train.insert(0, "id", ids)
    train["glasses"] = labels
    train.to_csv(root / "train.csv", index=False)
    extra = list(range(len(ids) + 1, len(ids) + 1 + test_ids))
    test = pd.DataFrame(rng.normal(size=(len(extra), latents)).round(4), columns=columns)
    test.insert(0, "id", extra)
    test.to_csv(root / "test.csv", index=False)
    for image_id, label in zip(ids + extra, labels + [0] * len(extra)):
        pixels = rng.integers(120, 220, size=(size[1], size[0], 3), dtype=np.uint8)
        if label:
            pixels[size[1] // 3: size[1] // 3 + max(2, size[1] // 6)] = 20
        Image.fromarray(pixels).convert(mode).save(images / f"face-{image_id}.png")
    return root


def balanced_labels(count: int) -> list[int]:
    """About 1.74 glasses per no-glasses, deterministic."""
    return [1 if i % 11 < 7 else 0 for i in range(count)]


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> tuple[Path, Path]:
    """A split of NUM_SAMPLES images and its 16 px tf.data cache: (split_dir, cache_dir)."""
    from glasses import dataset, pipeline

    root = tmp_path_factory.mktemp("tiny")
    source = write_kaggle_dataset(root / "source", balanced_labels(NUM_SAMPLES))
    organized = dataset.organize(source, root / "organized")
    split = dataset.split(organized.dir, root / "split", (0.6, 0.2, 0.2), seed=1337)
    return split.dir, pipeline.build_cache(split.dir, root / "cache", 16)


@pytest.fixture(scope="session")
def prefect_server():
    """One real Prefect test server (embedded, temporary database) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
