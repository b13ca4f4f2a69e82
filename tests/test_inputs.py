"""The tf.data cache: shapes, value range, labels, counts, reuse, and the images it decodes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from glasses import dataset, inputs
from glasses.errors import DatasetError
from glasses.files import read_json
from tests.conftest import (
    KAGGLE_SUBDIR,
    NUM_SAMPLES,
    balanced_labels,
    write_image,
    write_kaggle_dataset,
    write_odd_dataset,
    write_png_header,
)


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


def _augmented(images, seed=7, **ranges):
    """`inputs.augment` of `images` with some of its ranges changed (all at the report's otherwise)."""
    saved = {name: getattr(inputs, name) for name in ranges}
    try:
        for name, value in ranges.items():
            setattr(inputs, name, value)
        return np.asarray(inputs.augment(images, np.array([seed, 0], dtype=np.int64)))
    finally:
        for name, value in saved.items():
            setattr(inputs, name, value)


def _dot(size=15, at=(7, 7), batch=64) -> np.ndarray:
    images = np.zeros((batch, size, size, 3), np.float32)
    images[:, at[0], at[1], :] = 1.0
    return images


def test_augmentation_with_nothing_drawn_is_the_identity_and_a_flip_mirrors():
    rng = np.random.default_rng(0)
    images = rng.random((8, 12, 10, 3), dtype=np.float32)
    still = dict(SHIFT=0.0, TURN=0.0, ZOOM=0.0)
    np.testing.assert_allclose(_augmented(images, FLIP_P=0.0, **still), images, atol=1e-5)
    np.testing.assert_allclose(_augmented(images, FLIP_P=1.0, **still), images[:, :, ::-1], atol=1e-5)
    flipped = _augmented(images, **still)  # the report's p = 0.5: some of each, per image
    mirrored = [np.allclose(f, i[:, ::-1], atol=1e-5) for f, i in zip(flipped, images)]
    same = [np.allclose(f, i, atol=1e-5) for f, i in zip(flipped, images)]
    assert all(m or s for m, s in zip(mirrored, same)) and any(mirrored) and any(same)


def test_rotation_and_zoom_keep_the_centre_and_a_shift_moves_at_most_a_fifth():
    centre = _dot()
    turned = _augmented(centre, FLIP_P=0.0, SHIFT=0.0)  # rotate up to 45 degrees, zoom 0.75-1.25
    assert np.all(turned[:, 7, 7, 0] > 0.5)
    moved = _augmented(_dot(at=(7, 7)), FLIP_P=0.0, TURN=0.0, ZOOM=0.0)
    rows, cols = np.nonzero(moved[..., 0] > 0.2)[1:]
    assert np.abs(rows - 7).max() <= 0.2 * 15 + 1 and np.abs(cols - 7).max() <= 0.2 * 15 + 1
    assert np.abs(rows - 7).max() >= 2  # 64 images: some shift by two or more pixels
    corner = _augmented(_dot(at=(1, 1)), FLIP_P=0.0, SHIFT=0.0, ZOOM=0.0)  # rotation alone moves it
    assert (corner[:, 1, 1, 0] < 0.5).mean() > 0.5


def test_each_drawn_transform_is_distributed_as_keras_layers_draw_it():
    """The report's Keras layers (facts.md), one at a time, against the fused form with only that
    transform left on: quartiles of a square's area (zoom), a dot's shift and its angle."""
    import keras

    n, side = 600, 33
    ys, xs = np.mgrid[0:side, 0:side]

    def square(rows, cols):
        images = np.zeros((n, side, side, 3), np.float32)
        images[:, rows, cols] = 1.0
        return images

    def quartiles(values):
        return np.percentile(values, [25, 50, 75])

    def centre(x):  # the dot's centre of mass (x, y)
        w = x[..., 0]
        return (w * xs).sum((1, 2)) / w.sum((1, 2)), (w * ys).sum((1, 2)) / w.sum((1, 2))

    def area(x):
        return x[..., 0].sum((1, 2))

    def angle(x):
        cx, cy = centre(x)
        return np.degrees(np.arctan2(cy - 16, cx - 16))

    def shift(x):
        return np.concatenate(centre(x)) - 16

    checks = [  # (images, Keras layer, what is left on, measure, tolerance)
        (square(slice(12, 21), slice(12, 21)), keras.layers.RandomZoom(0.25, seed=1), "ZOOM", area, 4.0),
        (square(slice(14, 19), slice(14, 19)), keras.layers.RandomTranslation(0.2, 0.2, fill_mode="reflect", seed=1),
         "SHIFT", shift, 0.6),
        (square(slice(14, 19), slice(26, 31)), keras.layers.RandomRotation(0.125, fill_mode="reflect", seed=1),
         "TURN", angle, 4.0),
    ]
    for images, layer, kept, measure, tolerance in checks:
        off = {name: 0.0 for name in ("SHIFT", "TURN", "ZOOM") if name != kept}
        ours = measure(_augmented(images, FLIP_P=0.0, **off))
        theirs = measure(np.asarray(layer(images, training=True)))
        np.testing.assert_allclose(quartiles(ours), quartiles(theirs), atol=tolerance, err_msg=kept)


def test_augmentation_is_seeded_in_range_and_differs_per_image():
    images = np.random.default_rng(1).random((16, 20, 20, 3), dtype=np.float32)
    first, again, other = _augmented(images, seed=3), _augmented(images, seed=3), _augmented(images, seed=4)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    assert first.shape == images.shape and first.dtype == np.float32
    assert 0.0 <= first.min() and first.max() <= 1.0
    same_image = _augmented(np.repeat(images[:1], 4, axis=0))
    assert not np.allclose(same_image[0], same_image[1])


def test_training_batches_augment_when_asked_and_only_then(tiny_cache):
    _, cache_dir = tiny_cache

    def first_batch(**kw):
        return next(iter(inputs.load_subset(cache_dir, "train", 8, shuffle_seed=2, **kw)))[0].numpy()

    plain, augmented = first_batch(), first_batch(augment=True)
    assert plain.shape == augmented.shape and not np.allclose(plain, augmented)
    np.testing.assert_array_equal(augmented, first_batch(augment=True))
    val = next(iter(inputs.load_subset(cache_dir, "val", 8)))[0].numpy()
    np.testing.assert_array_equal(val, inputs.subset_arrays(cache_dir, "val")[0][:len(val)])


def test_grey_rgba_and_non_square_images_become_rgb_at_the_size(tmp_path):
    labels = balanced_labels(20)
    source = write_kaggle_dataset(tmp_path / "grey", labels, size=(40, 24), mode="L")
    organized = dataset.organize(source, tmp_path / "organized")
    split = dataset.split(organized.dir, tmp_path / "split", (0.6, 0.2, 0.2), seed=1)  # 6 no glasses: 1 in val
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


def test_odd_images_decode_to_rgb_uint8(tmp_path):
    images = write_odd_dataset(tmp_path / "data", "semicolons") / KAGGLE_SUBDIR
    grey16, cmyk, strip = (inputs.read_rgb(images / name) for name in ("face-1.png", "face-2.jpg", "face-3.png"))
    assert (grey16.shape, cmyk.shape, strip.shape) == ((24, 24, 3), (16, 16, 3), (50, 2000, 3))
    assert all(a.dtype == np.uint8 for a in (grey16, cmyk, strip))
    expected = np.asarray(Image.open(images / "face-1.png"), dtype=np.uint16) >> 8  # 16 bits -> the top 8
    assert np.abs(grey16[..., 0].astype(int) - expected).max() <= 1
    assert np.array_equal(grey16[..., 0], grey16[..., 2])
    assert cmyk.reshape(-1, 3).std(axis=0).max() < 3  # one flat colour, whatever the CMYK -> RGB rule


def test_read_rgb_refuses_an_image_over_the_pixel_limit_before_decoding(tmp_path, monkeypatch):
    bomb = write_png_header(tmp_path / "bomb.png", 20000, 20000)
    with pytest.raises(DatasetError, match=f"{bomb}: too large to decode .*at most 67108864 pixels"):
        inputs.read_rgb(bomb)
    monkeypatch.setattr(dataset, "MAX_IMAGE_PIXELS", 100)
    small = write_image(tmp_path / "small.png", size=(11, 10))
    with pytest.raises(DatasetError, match=f"{small}: 11x10 is 110 pixels, more than the limit of 100"):
        inputs.read_rgb(small)


def test_a_replaced_image_under_an_unchanged_csv_rebuilds_organize_split_and_cache(tmp_path):
    source = write_kaggle_dataset(tmp_path / "source", balanced_labels(20))
    csv_bytes = (source / "train.csv").read_bytes()

    def build() -> tuple[dict, dict, dict]:
        organized = dataset.organize(source, tmp_path / "organized")
        split = dataset.split(organized.dir, tmp_path / "split", (0.6, 0.2, 0.2), seed=1)
        cache = inputs.build_cache(split.dir, tmp_path / "cache", 8)
        return (read_json(organized.dir / "organized.json"), read_json(split.dir / "split.json")["id"],
                read_json(cache / "cache.json")["key"])

    first = build()
    assert build() == first  # unchanged: everything reused
    image = source / KAGGLE_SUBDIR / "face-4.png"
    write_image(image, size=(24, 24), seed=404)  # same name and size class, other pixels, a new mtime
    second = build()
    assert (source / "train.csv").read_bytes() == csv_bytes
    assert second[0]["source"]["images"] != first[0]["source"]["images"]
    assert second[1] != first[1] and second[2] != first[2]
    assert second[2] == second[1]  # the cache is keyed on the split it was built from
    organized_copy = next((tmp_path / "organized").rglob("face-4.png"))
    assert organized_copy.read_bytes() == image.read_bytes()


def test_folds_are_stratified_disjoint_and_cover_train_and_val(tiny_cache):
    labels = np.array([1] * 29 + [0] * 11)
    ids = inputs.fold_ids(labels, 5, seed=1)
    assert sorted(np.bincount(ids)) == [8, 8, 8, 8, 8]
    assert all(np.bincount(labels[ids == fold], minlength=2).tolist() in ([2, 6], [3, 6], [2, 5], [3, 5])
               for fold in range(5))
    assert np.array_equal(ids, inputs.fold_ids(labels, 5, seed=1))
    assert not np.array_equal(ids, inputs.fold_ids(labels, 5, seed=2))

    counts = read_json(tiny_cache[1] / "cache.json")["counts"]
    folds = inputs.cross_validation_folds(tiny_cache[1], 3, batch_size=4, seed=0)
    seen = []
    for train, val, size in folds:
        train_images = np.stack([x.numpy() for x, _ in train.unbatch().take(size + 1)])  # repeats for ever
        val_images = np.concatenate([x.numpy() for x, _ in val])
        assert size + len(val_images) == counts["train"] + counts["val"]
        assert len({img.tobytes() for img in train_images[:size]}) == size  # one pass: each image once
        seen.append(val_images.reshape(len(val_images), -1).sum(axis=1))
    assert sorted(np.concatenate(seen).round(3)) == sorted(_train_and_val_sums(tiny_cache[1]).round(3))


def _train_and_val_sums(cache_dir) -> np.ndarray:
    sums = [inputs.subset_arrays(cache_dir, subset)[0] for subset in ("train", "val")]
    images = np.concatenate(sums)
    return images.reshape(len(images), -1).sum(axis=1)


@pytest.mark.parametrize("source, size", [(24, 16), (17, 5), (1024, 48), (112, 40), (7, 20), (40, 40)])
def test_the_cache_resize_picks_the_pixels_tensorflow_and_serving_pick(source, size):
    import tensorflow as tf

    image = np.random.default_rng(source).integers(0, 256, size=(source, source + 3, 3), dtype=np.uint8)
    expected = tf.image.resize(image, (size, size), method="nearest").numpy()
    assert np.array_equal(inputs.resize_uint8(image, size), expected)


def test_every_size_is_cached_from_one_decode_in_uint8(tmp_path, monkeypatch):
    source = write_kaggle_dataset(tmp_path / "source", balanced_labels(20), size=(30, 26))
    split = dataset.split(dataset.organize(source, tmp_path / "o").dir, tmp_path / "split", (0.6, 0.2, 0.2), seed=1)
    decoded = []
    monkeypatch.setattr(inputs, "read_rgb", lambda path, read=inputs.read_rgb: decoded.append(path) or read(path))
    caches = inputs.build_caches(split.dir, tmp_path / "cache", [8, 16, 12])
    assert sorted(caches) == [8, 12, 16] and len(decoded) == 20  # each image once for three sizes
    for size, folder in caches.items():
        stored, labels = inputs.subset_arrays(folder, "val", rescale=False)
        paths, expected = dataset.read_manifest(split.dir, "val")
        assert stored.dtype == np.uint8 and stored.shape == (len(paths), size, size, 3)
        images, _ = inputs.subset_arrays(folder, "val")
        assert np.array_equal(images, stored.astype(np.float32) / 255)
        assert labels.tolist() == expected
        assert np.array_equal(stored[0], inputs.resize_uint8(inputs.read_rgb(paths[0]), size))
    decoded.clear()
    assert inputs.build_caches(split.dir, tmp_path / "cache", [16, 20])[20].is_dir()
    assert len(decoded) == 20  # 16 px was current: one decode, for 20 px only


def test_a_png_with_good_checksums_that_does_not_decode_is_named_by_the_cache(tmp_path):
    import struct
    import zlib

    source = write_kaggle_dataset(tmp_path / "source", balanced_labels(20))
    bad = source / KAGGLE_SUBDIR / "face-3.png"
    idat = b"\x78\x9c" + b"\xff" * 50  # a zlib header, then a stream that does not inflate
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))  # noqa: E731
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 24, 24, 8, 2, 0, 0, 0))
                    + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    organized = dataset.organize(source, tmp_path / "organized")  # every checksum holds: organize passes it
    split = dataset.split(organized.dir, tmp_path / "split", (0.6, 0.2, 0.2), seed=1)
    with pytest.raises(DatasetError, match="face-3.png: unreadable image"):
        inputs.build_caches(split.dir, tmp_path / "cache", [8, 16])
    assert not list((tmp_path / "cache").iterdir())  # no partial cache, no temp dir left

