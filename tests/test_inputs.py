"""The tf.data cache: shapes, value range, labels, counts, reuse."""

from __future__ import annotations

import numpy as np

from glasses import dataset, inputs
from glasses.files import read_json
from tests.conftest import NUM_SAMPLES, balanced_labels, write_kaggle_dataset


def test_cache_has_every_subset_at_the_size_in_unit_range(tiny_cache):
    split_dir, cache_dir = tiny_cache
    counts = read_json(cache_dir / "cache.json")["counts"]
    assert sum(counts.values()) == NUM_SAMPLES
    for subset in ("train", "val", "test"):
        images, labels = inputs.subset_arrays(cache_dir, subset)
        assert images.shape == (counts[subset], 16, 16, 3)
        assert images.dtype == np.float32
        assert 0.0 <= images.min() and images.max() <= 1.0 and images.max() > 0.5
        _, manifest_labels = dataset.read_manifest(split_dir, subset)
        assert labels.tolist() == manifest_labels


def test_training_batches_are_shuffled_each_epoch(tiny_cache):
    _, cache_dir = tiny_cache
    data = inputs.load_subset(cache_dir, "train", batch_size=8, shuffle_seed=1)
    first = np.concatenate([y.numpy() for _, y in data]).ravel()
    ordered = np.concatenate([y.numpy() for _, y in inputs.load_subset(cache_dir, "train", 8)]).ravel()
    assert sorted(first) == sorted(ordered) and len(first) == len(ordered)
    images_a = np.concatenate([x.numpy() for x, _ in data])
    images_b = np.concatenate([x.numpy() for x, _ in data])
    assert not np.array_equal(images_a, images_b)


def test_grey_rgba_and_non_square_images_become_rgb_at_the_size(tmp_path):
    labels = balanced_labels(20)
    source = write_kaggle_dataset(tmp_path / "grey", labels, size=(40, 24), mode="L")
    organized = dataset.organize(source, tmp_path / "organized")
    split = dataset.split(organized.dir, tmp_path / "split", (0.8, 0.1, 0.1), seed=1)
    cache = inputs.build_cache(split.dir, tmp_path / "cache", 12)
    images, _ = inputs.subset_arrays(cache, "train")
    assert images.shape[1:] == (12, 12, 3)
    assert np.allclose(images[..., 0], images[..., 1])  # grey stays grey in RGB
    rgba = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGBA", (7, 5), (10, 20, 30, 40)).save(rgba)
    assert inputs.read_rgb(rgba).shape == (5, 7, 3)


def test_a_complete_cache_is_reused(tiny_cache):
    split_dir, cache_dir = tiny_cache
    marker = cache_dir / "cache.json"
    before = marker.stat().st_mtime_ns
    assert inputs.build_cache(split_dir, cache_dir.parent, 16) == cache_dir
    assert marker.stat().st_mtime_ns == before
    assert not [p for p in cache_dir.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
