"""The input pipeline: decode each image once, resize it to every image size, cache uint8 on disk.

`build_caches` decodes each image of the split once (on threads: PIL releases the GIL while it
decodes), resizes it to every size asked for with nearest interpolation (exactly what
`tf.image.resize(method="nearest")` and the ensemble's own Resizing layer compute, so training
and serving see the same pixels), and writes, per size and subset, `images.npy` (uint8,
N x size x size x 3) and `labels.npy`. uint8 takes a quarter of float32's disk and memory; the
rescale to [0, 1] happens per batch when read. Readers (tuner workers in other processes or on
other hosts) load a subset into memory and shuffle indices, not images: a shuffle buffer of
integers, batches gathered in one op.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from glasses.dataset import SUBSETS, open_image, read_manifest, split_id, unreadable_image
from glasses.errors import DatasetError
from glasses.files import OUTPUT_MARKER, atomic_dir, read_json, reserve, write_json

CACHE_FORMAT = 2  # 1: float32 tf.data snapshots, one decode per size; 2: uint8 .npy, one decode for all sizes


def read_rgb(path: str | Path) -> np.ndarray:
    """Decodes any PNG/JPEG (grey, palette, RGBA, CMYK, 16-bit) to an RGB uint8 array.

    Raises:
        DatasetError: naming the file when its header claims more than
            `glasses.dataset.MAX_IMAGE_PIXELS` pixels (checked before decoding).
        OSError: when it is not a decodable image.
    """
    with open_image(Path(path)) as image:
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            image = image.point(lambda v: v / 256).convert("L")
        if image.mode != "RGB":  # (an RGB image goes to numpy as it is: one copy less)
            image = image.convert("RGB")
        return np.asarray(image, dtype=np.uint8)


def resize(images, size: int):
    """Nearest-neighbour resize to size x size and rescale to [0, 1] (the serving transform)."""
    import tensorflow as tf

    resized = tf.image.resize(images, (size, size), method="nearest")
    return tf.cast(resized, tf.float32) / 255.0


def nearest_indices(source: int, size: int) -> np.ndarray:
    """The source row (or column) of each of `size` output rows, as TensorFlow's nearest resize
    picks them (half-pixel centres, float32 arithmetic): floor((i + 0.5) * source / size)."""
    scale = np.float32(source) / np.float32(size)
    picked = np.floor((np.arange(size, dtype=np.float32) + np.float32(0.5)) * scale).astype(np.int64)
    return np.clip(picked, 0, source - 1)


def resize_uint8(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """`image` (H x W x 3 uint8) at size x size (or (height, width)), the pixels `resize` (and
    TensorFlow's nearest resize) would pick, still uint8."""
    height, width = (size, size) if isinstance(size, int) else size
    rows, cols = nearest_indices(image.shape[0], height), nearest_indices(image.shape[1], width)
    return image.take(rows, axis=0).take(cols, axis=1)  # rows first: 3x faster than one 2-D gather


def cache_dir_for(cache_root: Path, size: int) -> Path:
    return Path(cache_root) / f"{size}px"


CACHE_MANIFEST = "cache.json"  # in each size's cache, written last: what `cache_manifest` returns


def cache_manifest(cache_dir: Path) -> dict:
    """What `build_caches` recorded of a cache: the split's key, the size, the images per subset
    (`counts`) and the cache's format."""
    return read_json(Path(cache_dir) / CACHE_MANIFEST)


def unused_caches(cache_root: Path, sizes: set[int]) -> list[Path]:
    """Removes the caches of sizes not in `sizes` (each made by `build_caches`: its marker and
    cache.json inside); returns them."""
    gone = []
    for folder in sorted(Path(cache_root).glob("*px")) if Path(cache_root).is_dir() else []:
        size = folder.name.removesuffix("px")
        if (size.isdigit() and int(size) not in sizes and not folder.is_symlink()
                and (folder / OUTPUT_MARKER).is_file() and (folder / CACHE_MANIFEST).is_file()):
            shutil.rmtree(folder)
            gone.append(folder)
    return gone


def build_cache(split_dir: Path, cache_root: Path, size: int) -> Path:
    """The cache of one image size (see `build_caches`)."""
    return build_caches(split_dir, cache_root, [size])[size]


def build_caches(split_dir: Path, cache_root: Path, sizes: list[int]) -> dict[int, Path]:
    """Decodes every image of the split once and caches it at each of `sizes`.

    Returns each size's cache directory; a complete cache of the same split is reused as is, so
    only the missing sizes cost a decode (one for all of them).

    Raises:
        DatasetError: naming the first image in a subset's order that does not decode.
    """
    key = split_id(split_dir)
    targets = {size: cache_dir_for(cache_root, size) for size in dict.fromkeys(sizes)}
    missing = [size for size, target in targets.items() if not is_current(target, key)]
    if missing:
        with ExitStack() as stack:
            temporary = {size: stack.enter_context(atomic_dir(targets[size])) for size in missing}
            counts = {}
            for subset in SUBSETS:
                paths, labels = read_manifest(split_dir, subset)
                _write_subset(paths, labels, {size: tmp / subset for size, tmp in temporary.items()})
                counts[subset] = len(paths)
            for size, tmp in temporary.items():
                write_json(tmp / CACHE_MANIFEST, {"key": key, "size": size, "counts": counts, "format": CACHE_FORMAT})
    return targets


def is_current(cache_dir: Path, key: str) -> bool:
    """Whether `cache_dir` is a complete cache of this format of the split `key`."""
    if not (Path(cache_dir) / CACHE_MANIFEST).is_file():
        return False
    written = cache_manifest(cache_dir)
    return written.get("key") == key and written.get("format") == CACHE_FORMAT


def _write_subset(paths: list[str], labels: list[int], outputs: dict[int, Path]) -> None:
    """Writes images.npy (uint8) and labels.npy at each size of `outputs`, decoding each path once."""
    images = {}
    for size, folder in outputs.items():
        folder.mkdir()
        np.save(folder / "labels.npy", np.asarray(labels, dtype=np.float32).reshape(-1, 1))
        shape = (len(paths), size, size, 3)
        if not paths:  # numpy cannot memory-map an empty file
            np.save(folder / "images.npy", np.zeros(shape, np.uint8))
            continue
        images[size] = np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype=np.uint8, shape=shape)
        reserve(folder / "images.npy")  # a full disk is an error now, not a SIGBUS mid-write

    def place(index: int) -> None:
        decoded = _decode(paths[index])
        for size, array in images.items():
            array[index] = resize_uint8(decoded, size)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(place, range(len(paths))))  # the first failure in subset order is raised
    for array in images.values():
        array.flush()
    images.clear()  # unmaps the files before their folder is renamed


def _decode(path: str) -> np.ndarray:
    try:
        return read_rgb(path)
    except DatasetError:
        raise
    except Exception as error:  # any decoder failure on a user's file names the file
        raise unreadable_image(Path(path), error) from error


def subset_arrays(cache_dir: Path, subset: str, rescale: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A cached subset as (images, labels) arrays in file order: images in [0, 1] as float32
    (uint8 as stored with `rescale=False`), labels as ints."""
    images, labels = _stored(cache_dir, subset)
    return (images.astype(np.float32) / 255.0 if rescale else images), labels.reshape(-1).astype(int)


def _stored(cache_dir: Path, subset: str) -> tuple[np.ndarray, np.ndarray]:
    """A subset as written: uint8 images, float32 labels of shape (N, 1)."""
    folder = Path(cache_dir) / subset
    return np.load(folder / "images.npy"), np.load(folder / "labels.npy").reshape(-1, 1)


def load_subset(cache_dir: Path, subset: str, batch_size: int, shuffle_seed: int | None = None,
                repeat: bool = False, augment: bool = False):
    """Loads a cached subset as batches of images in [0, 1]: shuffled each pass when a seed is
    given, prefetched.

    Args:
        cache_dir: A directory made by `build_caches`.
        subset: "train", "val" or "test".
        batch_size: Global batch size.
        shuffle_seed: Shuffle with this seed (reshuffled every pass); None keeps file order.
        repeat: Repeat for ever (the caller says how many steps an epoch is).
        augment: Augment each batch (`augment`), seeded by `shuffle_seed`: for training.
    """
    return batches(*_stored(cache_dir, subset), batch_size, shuffle_seed, repeat,
                   augment_seed=(shuffle_seed or 0) if augment else None)


def batches(images: np.ndarray, labels: np.ndarray, batch_size: int, shuffle_seed: int | None = None,
            repeat: bool = False, augment_seed: int | None = None):
    """uint8 `images` and their `labels` in memory as a tf.data pipeline of rescaled batches,
    augmented (`augment`, batch i seeded by (augment_seed, i)) unless `augment_seed` is None.

    Shuffles indices, not images: the shuffle buffer holds integers whatever the image size, and
    each batch is one gather, one cast and, augmented, one resampling (cheaper than a map per image).
    """
    import tensorflow as tf

    pixels, targets = tf.constant(images), tf.constant(labels)
    order = tf.data.Dataset.range(len(images))
    if shuffle_seed is not None:
        order = order.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    if repeat:
        order = order.repeat()

    def gather(step, index):
        x = tf.cast(tf.gather(pixels, index), tf.float32) / 255.0
        if augment_seed is not None:
            x = augment(x, tf.stack([tf.constant(augment_seed, tf.int64), step]))
        return x, tf.gather(targets, index)

    return (order.batch(batch_size).enumerate().map(gather, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


# The report's augmentation (Keras's RandomFlip("horizontal"), RandomTranslation(0.2, 0.2),
# RandomRotation(0.125) and RandomZoom(0.25), reflect fill), each image drawing its own values.
FLIP_P, SHIFT, TURN, ZOOM = 0.5, 0.2, 0.125, 0.25


def augment(images, seed):
    """The report's augmentation of a batch (float, N x H x W x C), as one resampling.

    Each image is flipped left-right with probability FLIP_P, shifted by up to SHIFT of its side
    each way, rotated by up to TURN of a turn (45 degrees) about its centre and zoomed by a factor
    in [1 - ZOOM, 1 + ZOOM], all drawn uniformly, with reflected borders and bilinear
    interpolation. The four maps are composed into one affine transform, so the image is resampled
    once, where Keras's four layers (`glasses.model.augmentation_layers`, in the model) resample it
    three times: a training run takes 0.79x the CPU time at 32 px, 0.85x at 64 px
    (bench/augmentation.py), and the saved models have no random layers. Workers on GPUs keep
    the layers (`glasses.search.tuner.augments_in_model`): there the device computes them.

    Args:
        images: A float batch.
        seed: Two int64 values (a stateless seed): the same seed, the same augmentation.
    """
    import math

    import tensorflow as tf

    shape = tf.shape(images)
    n, height, width = shape[0], tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, 5)

    def uniform(i, bound):
        return tf.random.stateless_uniform([n], seeds[i], -bound, bound)

    flip = tf.cast(uniform(0, 1.0) < 2 * FLIP_P - 1, tf.float32)
    shift_x, shift_y = uniform(1, SHIFT) * width, uniform(2, SHIFT) * height
    angle, zoom = uniform(3, TURN) * 2 * math.pi, 1.0 + uniform(4, ZOOM)
    # Output pixel (x, y) -> input point: about the centre, zoom then rotate, then undo the shift,
    # then mirror x (ImageProjectiveTransformV3 maps output coordinates to input ones).
    cx, cy = (width - 1) / 2, (height - 1) / 2
    a0, a1, b0, b1 = zoom * tf.cos(angle), -zoom * tf.sin(angle), zoom * tf.sin(angle), zoom * tf.cos(angle)
    a2, b2 = cx - a0 * cx - a1 * cy - shift_x, cy - b0 * cx - b1 * cy - shift_y
    mirror = 1 - 2 * flip
    zeros = tf.zeros([n])
    transforms = tf.stack([mirror * a0, mirror * a1, mirror * a2 + flip * (width - 1), b0, b1, b2, zeros, zeros], 1)
    return tf.raw_ops.ImageProjectiveTransformV3(images=images, transforms=transforms, output_shape=shape[1:3],
                                                 fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")


def fold_ids(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each image's fold, 0 to folds-1: stratified (each class spread evenly over the folds, in a
    seeded order), so every fold keeps the dataset's class ratio and folds differ by at most one."""
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    ids, start = np.empty(len(labels), dtype=np.int64), 0
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        ids[members] = (start + np.arange(len(members))) % folds
        start += len(members)
    return ids


def cross_validation_folds(cache_dir: Path, folds: int, batch_size: int, seed: int,
                           augment: bool = False) -> list[tuple]:
    """k stratified folds over the cached train and val subsets together (the training folds
    augmented when `augment`, as `load_subset`).

    Returns:
        One (train, val, train_images) per fold: the other folds as shuffled batches, repeated
        for ever, this fold as batches in file order, and how many images the fold trains on.
    """
    parts = [_stored(cache_dir, subset) for subset in ("train", "val")]
    images, labels = (np.concatenate([part[k] for part in parts]) for k in (0, 1))
    assigned = fold_ids(labels, folds, seed)
    result = []
    for fold in range(folds):
        inside, outside = assigned == fold, assigned != fold
        result.append((batches(images[outside], labels[outside], batch_size, seed + fold, repeat=True,
                               augment_seed=seed + fold if augment else None),
                       batches(images[inside], labels[inside], batch_size), int(outside.sum())))
    return result
