"""The labelled dataset: find it, validate it, organise it into class folders and split it.

The source dataset is read-only to us: images are hard-linked (copied where links are
impossible) into the work dir, and every output directory is built under a temporary name
and renamed into place, so an interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from glasses.errors import DatasetError
from glasses.files import atomic_dir, read_json, write_json

log = logging.getLogger(__name__)

CLASSES = ("no_glasses", "glasses")  # index = label: 1 means glasses
SUBSETS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# The Kaggle layout, which `glasses.synth` writes too: train.csv (id, v1..v512, glasses),
# test.csv (id, v1..v512) and the images as IMAGE_SUBDIR/face-<id>.png.
IMAGE_SUBDIR = "faces-spring-2020/faces-spring-2020"
IMAGE_DIR_CANDIDATES = (IMAGE_SUBDIR, "faces-spring-2020", "faces", ".")
FACE_PREFIX = "face-"
ID_COLUMN = "id"
LABEL_COLUMN = "glasses"
LATENT_DIM = 512
LATENT_COLUMNS = tuple(f"v{i}" for i in range(1, LATENT_DIM + 1))
ROW_COLUMN = "row"  # added on reading: the CSV line number, for error messages
_PLAIN_INT = re.compile(r"^[0-9]+$")


@dataclass(frozen=True)
class Layout:
    """Where a dataset's labels and images are."""

    csv: Path
    image_dir: Path
    has_latents: bool


@dataclass(frozen=True)
class Organized:
    """Class folders under the work dir and the class balance."""

    dir: Path
    labelled: int
    glasses: int
    no_glasses: int
    ratio: float


@dataclass(frozen=True)
class Split:
    """Train/val/test folders (each with class folders) and their sizes."""

    dir: Path
    train: int
    val: int
    test: int


def find_layout(data_dir: Path) -> Layout:
    """Finds `train.csv` and the folder holding `face-<id>` images in a dataset download.

    Raises:
        DatasetError: when `train.csv` or any folder of face images is missing.
    """
    data_dir = Path(data_dir)
    csv = data_dir / "train.csv"
    if not csv.is_file():
        raise DatasetError(f"no train.csv in {data_dir}: expected the Kaggle layout "
                           "(train.csv with id and glasses columns, images face-<id>.png)")
    for candidate in IMAGE_DIR_CANDIDATES:
        folder = (data_dir / candidate).resolve()
        if folder.is_dir() and any(_is_face_file(p) for p in folder.iterdir()):
            return Layout(csv=csv, image_dir=folder, has_latents=has_latent_columns(csv))
    tried = ", ".join(str(data_dir / c) for c in IMAGE_DIR_CANDIDATES)
    raise DatasetError(f"no face-<id>.png/.jpg images found for {csv}; looked in {tried}")


def face_file_name(image_id: int, ext: str = ".png") -> str:
    """The file name of an id's image: `face-<id><ext>`."""
    return f"{FACE_PREFIX}{image_id}{ext}"


def _is_face_file(path: Path) -> bool:
    return path.name.startswith(FACE_PREFIX) and path.suffix.lower() in IMAGE_EXTENSIONS


def read_header(csv: Path) -> list[str]:
    with open(csv, newline="", encoding="utf-8-sig") as handle:  # -sig: drop a BOM (Excel's CSVs)
        return [name.strip() for name in handle.readline().split(",")]


def has_latent_columns(csv: Path) -> bool:
    """Whether the CSV's header names every one of v1..v512."""
    return set(LATENT_COLUMNS) <= set(read_header(csv))


def read_columns(csv: Path, names: Iterable[str]) -> pd.DataFrame:
    """Reads the named columns of a CSV with Dask, every cell as the string written there.

    Only these columns are parsed. Names match stripped ("id, glasses" names " glasses"), a
    BOM (Excel's CSVs) is dropped and no cell becomes NaN, so a bad value can be reported as is.

    Returns:
        The columns in the order of `names`, plus `row`: the CSV line number of each row.
    """
    import dask.dataframe as dd  # heavy; only needed here

    names = list(names)
    wanted = set(names)
    frame = dd.read_csv(csv, usecols=lambda name: name.strip() in wanted, dtype=str,
                        keep_default_na=False, encoding="utf-8-sig").compute()
    frame = frame.rename(columns=str.strip).reset_index(drop=True)[names]
    return frame.assign(**{ROW_COLUMN: frame.index + 2})  # line 1 is the header


def read_labels(csv: Path) -> pd.DataFrame:
    """Reads and validates `id` and `glasses` from a labels CSV with Dask, lazily.

    Only the two columns are parsed; the 512 latent columns are never materialised.

    Returns:
        A frame with int columns `id`, `glasses` and `row` (the CSV line number).

    Raises:
        DatasetError: naming the file and row of a missing column, a bad id, a duplicate id,
            a label other than 0/1, or an empty class.
    """
    header = read_header(csv)
    for column in (ID_COLUMN, LABEL_COLUMN):
        if column not in header:
            raise DatasetError(f"{csv}: missing column {column!r} (found {', '.join(header[:5])}"
                               f"{', ...' if len(header) > 5 else ''})")
    return _validate_labels(csv, read_columns(csv, (ID_COLUMN, LABEL_COLUMN)))


def _validate_labels(csv: Path, frame: pd.DataFrame) -> pd.DataFrame:
    ids = frame[ID_COLUMN].str.strip()
    bad_id = ~ids.str.match(_PLAIN_INT)
    if bad_id.any():
        row = frame[bad_id].iloc[0]
        raise DatasetError(f"{csv} row {row[ROW_COLUMN]}: id {row[ID_COLUMN]!r} is not a plain integer")
    labels = frame[LABEL_COLUMN].str.strip()
    bad_label = ~labels.isin(["0", "1", "0.0", "1.0"])
    if bad_label.any():
        row = frame[bad_label].iloc[0]
        raise DatasetError(f"{csv} row {row[ROW_COLUMN]}: glasses must be 0 or 1, got {row[LABEL_COLUMN]!r}")
    frame = pd.DataFrame({ID_COLUMN: ids.astype(int), LABEL_COLUMN: labels.astype(float).astype(int),
                          ROW_COLUMN: frame[ROW_COLUMN]})
    duplicated = frame[ID_COLUMN].duplicated(keep=False)
    if duplicated.any():
        rows = frame[duplicated]
        first = rows.iloc[0][ID_COLUMN]
        lines = rows[rows[ID_COLUMN] == first][ROW_COLUMN].tolist()
        raise DatasetError(f"{csv} rows {', '.join(map(str, lines))}: duplicate id {first}")
    for label, name in enumerate(CLASSES):
        if not (frame[LABEL_COLUMN] == label).any():
            raise DatasetError(f"{csv}: no row has glasses={label} ({name}); both classes are needed")
    return frame


def image_path(image_dir: Path, image_id: int) -> Path | None:
    """The image file of an id, whatever its extension's case, or None."""
    for ext in IMAGE_EXTENSIONS:
        for candidate in (face_file_name(image_id, ext), face_file_name(image_id, ext.upper())):
            if (image_dir / candidate).is_file():
                return image_dir / candidate
    return None


def check_image(path: Path) -> None:
    """Raises DatasetError naming `path` when it is not a decodable image."""
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:  # verify() leaves the image unusable; decode for real
            image.load()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        raise DatasetError(f"{path}: unreadable image ({error}); fix or remove it and its CSV row") from error


def require_image(layout: Layout, image_id: int, row: int) -> Path:
    """The image file of the id on line `row` of the layout's CSV.

    Raises:
        DatasetError: naming the CSV, row and id when the id has no image.
    """
    path = image_path(layout.image_dir, image_id)
    if path is None:
        raise DatasetError(f"{layout.csv} row {row}: no image for id {image_id} in "
                           f"{layout.image_dir} (looked for face-{image_id}.png/.jpg/.jpeg)")
    return path


def locate_images(layout: Layout, labels: pd.DataFrame) -> list[Path]:
    """Finds and decodes each labelled image, failing on the first missing or unreadable one."""
    paths = [require_image(layout, image_id, row)
             for image_id, row in zip(labels[ID_COLUMN], labels[ROW_COLUMN])]
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        list(pool.map(check_image, paths))
    return paths


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-links `source` to `target`, copying where a link is impossible (other device, ...)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _source_stamp(layout: Layout) -> dict:
    stat = layout.csv.stat()
    return {"csv": str(layout.csv.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "image_dir": str(layout.image_dir)}


def organize(data_dir: Path, out_dir: Path) -> Organized:
    """Validates a dataset and places each labelled image into `glasses/` or `no_glasses/`.

    Test-set images (ids only in `test.csv`) are left out. Re-running on an unchanged source
    returns the existing result without work.

    Raises:
        DatasetError: for any bad input, before anything is written.
    """
    layout = find_layout(data_dir)
    stamp = _source_stamp(layout)
    manifest = Path(out_dir) / "organized.json"
    if manifest.is_file() and read_json(manifest).get("source") == stamp:
        return Organized(dir=Path(out_dir), **read_json(manifest)["counts"])
    labels = read_labels(layout.csv)
    paths = locate_images(layout, labels)
    with atomic_dir(out_dir) as tmp:
        for name in CLASSES:
            (tmp / name).mkdir()
        for path, label in zip(paths, labels[LABEL_COLUMN]):
            link_or_copy(path, tmp / CLASSES[label] / path.name)
        result = _count(Path(out_dir), labels)
        write_json(tmp / "organized.json", {"source": stamp, "counts": _counts_dict(result)})
    log.info("organized %d images: %d glasses, %d no glasses (%.2f : 1)",
             result.labelled, result.glasses, result.no_glasses, result.ratio)
    return result


def _count(out_dir: Path, labels: pd.DataFrame) -> Organized:
    glasses = int(labels[LABEL_COLUMN].sum())
    no_glasses = len(labels) - glasses
    return Organized(dir=out_dir, labelled=len(labels), glasses=glasses, no_glasses=no_glasses,
                     ratio=round(glasses / no_glasses, 4))


def _counts_dict(result: Organized) -> dict:
    counts = asdict(result)
    counts.pop("dir")
    return counts


def class_files(folder: Path) -> dict[str, list[Path]]:
    """The image files of each class folder under `folder`, sorted by name."""
    return {name: sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            for name in CLASSES}


def assign_subsets(count: int, fractions: tuple[float, float, float], seed: int) -> np.ndarray:
    """Subset index (0 train, 1 val, 2 test) of each of `count` sorted items of one class.

    Train and val sizes are rounded down and the rest goes to test, as in the report
    (3599 / 449 / 452 of 4500).
    """
    order = np.random.default_rng(seed).permutation(count)
    # the epsilon keeps float error from flooring an exact product down: 90 * 0.7 is 62.99999999999999
    n_train = int(count * fractions[0] + 1e-9)
    n_val = int(count * fractions[1] + 1e-9)
    subsets = np.full(count, 2)
    subsets[order[:n_train]] = 0
    subsets[order[n_train:n_train + n_val]] = 1
    return subsets


def split(organized_dir: Path, out_dir: Path, fractions: tuple[float, float, float], seed: int) -> Split:
    """Splits class folders into stratified train/val/test folders, seeded.

    The same inputs give the same split, and a re-run with them does no work.
    """
    files = class_files(Path(organized_dir))
    key = {"fractions": list(fractions), "seed": seed,
           "files": {name: [p.name for p in paths] for name, paths in files.items()}}
    manifest = Path(out_dir) / "split.json"
    if manifest.is_file() and read_json(manifest).get("key") == key:
        return Split(dir=Path(out_dir), **read_json(manifest)["counts"])
    rows = []
    with atomic_dir(out_dir) as tmp:
        for label, name in enumerate(CLASSES):
            for path, subset in zip(files[name], assign_subsets(len(files[name]), fractions, seed)):
                target = tmp / SUBSETS[subset] / name / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                link_or_copy(path, target)
                rows.append((f"{SUBSETS[subset]}/{name}/{path.name}", label, SUBSETS[subset]))
        table = pd.DataFrame(rows, columns=["path", "label", "subset"])
        table.to_csv(tmp / "manifest.csv", index=False)
        counts = {s: int((table["subset"] == s).sum()) for s in SUBSETS}
        write_json(tmp / "split.json", {"key": key, "counts": counts})
    return Split(dir=Path(out_dir), **counts)


def read_manifest(split_dir: Path, subset: str) -> tuple[list[str], list[int]]:
    """Absolute image paths and labels of one subset, in a stable order."""
    table = pd.read_csv(Path(split_dir) / "manifest.csv")
    table = table[table["subset"] == subset].sort_values("path")
    return [str(Path(split_dir) / p) for p in table["path"]], table["label"].astype(int).tolist()
