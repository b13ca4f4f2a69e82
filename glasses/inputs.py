"""The tf.data input pipeline: decode, resize, rescale once per image size, cache on disk.

Each subset is decoded from the split folders (any size, PNG or JPEG, grey, RGB or RGBA),
resized with nearest interpolation (as the report, and as the ensemble's own Resizing layer,
so training and serving see the same pixels), rescaled to [0, 1] and saved with
`tf.data.Dataset.save` into a directory keyed by the size. Readers (the tuner workers, in
other processes or on other hosts) load it with `tf.data.Dataset.load`, which needs no
upstream pipeline and no lock, unlike an in-process `Dataset.cache(file)`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from glasses.dataset import SUBSETS, open_image, read_manifest, split_id
from glasses.files import OUTPUT_MARKER, atomic_dir, read_json, write_json


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
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def resize(images, size: int):
    """Nearest-neighbour resize to size x size and rescale to [0, 1] (the serving transform)."""
    import tensorflow as tf

    resized = tf.image.resize(images, (size, size), method="nearest")
    return tf.cast(resized, tf.float32) / 255.0


def _decoded(paths: list[str], labels: list[int], size: int):
    import tensorflow as tf

    def load(path):
        return read_rgb(path.decode() if isinstance(path, bytes) else path)

    def decode(path, label):
        image = tf.numpy_function(load, [path], tf.uint8)
        image.set_shape([None, None, 3])
        return resize(image, size), tf.cast(label, tf.float32)[None]

    data = tf.data.Dataset.from_tensor_slices((paths, labels))
    return data.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def cache_dir_for(cache_root: Path, size: int) -> Path:
    return Path(cache_root) / f"{size}px"


def unused_caches(cache_root: Path, sizes: set[int]) -> list[Path]:
    """Removes the caches of sizes not in `sizes` (each made by `build_cache`: its marker and
    cache.json inside); returns them."""
    gone = []
    for folder in sorted(Path(cache_root).glob("*px")) if Path(cache_root).is_dir() else []:
        size = folder.name.removesuffix("px")
        if (size.isdigit() and int(size) not in sizes and not folder.is_symlink()
                and (folder / OUTPUT_MARKER).is_file() and (folder / "cache.json").is_file()):
            shutil.rmtree(folder)
            gone.append(folder)
    return gone


def build_cache(split_dir: Path, cache_root: Path, size: int) -> Path:
    """Decodes, resizes and rescales every subset once and saves it on disk.

    Returns the cache directory; a complete cache of the same split is reused as is.
    """
    target = cache_dir_for(cache_root, size)
    key = split_id(split_dir)
    marker = target / "cache.json"
    if marker.is_file() and read_json(marker).get("key") == key:
        return target
    with atomic_dir(target) as tmp:
        counts = {}
        for subset in SUBSETS:
            paths, labels = read_manifest(split_dir, subset)
            _decoded(paths, labels, size).save(str(tmp / subset))
            counts[subset] = len(paths)
        write_json(tmp / "cache.json", {"key": key, "size": size, "counts": counts})
    return target


def load_subset(cache_dir: Path, subset: str, batch_size: int, shuffle_seed: int | None = None,
                repeat: bool = False):
    """Loads a cached subset as batches: shuffled each epoch when a seed is given, prefetched.

    Args:
        cache_dir: A directory made by `build_cache`.
        subset: "train", "val" or "test".
        batch_size: Global batch size.
        shuffle_seed: Shuffle with this seed (reshuffled every pass); None keeps file order.
        repeat: Repeat for ever (the caller says how many steps an epoch is).
    """
    import tensorflow as tf

    data = tf.data.Dataset.load(str(Path(cache_dir) / subset))
    if shuffle_seed is not None:
        count = read_json(Path(cache_dir) / "cache.json")["counts"][subset]
        data = data.shuffle(count, seed=shuffle_seed, reshuffle_each_iteration=True)
    if repeat:
        data = data.repeat()
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def subset_arrays(cache_dir: Path, subset: str) -> tuple[np.ndarray, np.ndarray]:
    """A cached subset as (images, labels) arrays in file order, for evaluation."""
    images, labels = [], []
    for x, y in load_subset(cache_dir, subset, batch_size=256):
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels).reshape(-1).astype(int)


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


def cross_validation_folds(cache_dir: Path, folds: int, batch_size: int, seed: int) -> list[tuple]:
    """k stratified folds over the cached train and val subsets together.

    Returns:
        One (train, val, train_images) per fold: the other folds as shuffled batches, repeated
        for ever, this fold as batches in file order, and how many images the fold trains on.
    """
    import tensorflow as tf

    counts = read_json(Path(cache_dir) / "cache.json")["counts"]
    data = tf.data.Dataset.load(str(Path(cache_dir) / "train")).concatenate(
        tf.data.Dataset.load(str(Path(cache_dir) / "val")))
    labels = np.concatenate([y.numpy().reshape(-1) for _, y in data.batch(1024)])
    if len(labels) != counts["train"] + counts["val"]:
        raise ValueError(f"{cache_dir} holds {len(labels)} train+val images, its cache.json says "
                         f"{counts['train'] + counts['val']}: rebuild the cache")
    assigned = fold_ids(labels, folds, seed)
    table = tf.constant(assigned)
    indexed = data.enumerate()

    def part(fold: int, inside: bool):
        chosen = indexed.filter(lambda i, _: tf.equal(tf.gather(table, i) == fold, inside))
        return chosen.map(lambda i, xy: xy)

    result = []
    for fold in range(folds):
        train, val = part(fold, False), part(fold, True)
        size = int((assigned != fold).sum())
        train = train.shuffle(size, seed=seed + fold, reshuffle_each_iteration=True).repeat()
        result.append((train.batch(batch_size).prefetch(tf.data.AUTOTUNE),
                       val.batch(batch_size).prefetch(tf.data.AUTOTUNE), size))
    return result
