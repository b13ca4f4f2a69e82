"""The labelled dataset: find it, validate it, organise it into class folders and split it.

The source dataset is read-only to us: images are hard-linked (copied where links are
impossible) into the work dir, and every output directory is built under a temporary name
and renamed into place, so an interrupted run leaves nothing half-written.

Every check of the input lives here, in one path (`validate`) that both `organize` and the
write-nothing `check` run, so `glasses check` finds exactly what a run would stop on.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
import re
import shutil
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from csv import Error as CsvError
from csv import reader as csv_reader
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

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
ORGANIZED_MANIFEST = "organized.json"  # in the organized dir, written last: its source stamp and counts
SPLIT_MANIFEST = "split.json"  # in the split dir, written last: what it was made of, its id and counts
BOXES = "boxes.csv"  # optional, beside train.csv: where the glasses are in an image (`glasses synth` writes it)
BOX_COLUMNS = ("x0", "y0", "x1", "y1")  # pixels of the image file; x1, y1 exclusive
ROW_COLUMN = "row"  # added on reading: the physical line of the file the row starts on, for errors
ID_TEXT_COLUMN = "id_text"  # the id as written ("007"): its image may be face-007.png
MAX_ID = 2**63 - 1  # ids are int64 everywhere downstream (numpy, the latent table)
# Checked from the header, before any pixel is decoded: 8192 x 8192 is far beyond a face photo
# and decodes to 192 MiB of RGB; above it a file is a mistake or a decompression bomb. Kept
# below PIL's own Image.MAX_IMAGE_PIXELS (89 M), so this limit, with its clearer message, wins.
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
# Each class must reach every subset: val and test metrics (recall, ROC-AUC) and the ensemble's
# choice on val are undefined without both classes. More would reject the tiny datasets of the
# tests and the smoke preset without making 2-image subsets any less noisy.
MIN_PER_CLASS_AND_SUBSET = 1
_PLAIN_INT = re.compile(r"^[0-9]+$")
# The delimiters spreadsheets write: "," (CSV), ";" (CSV in decimal-comma locales), tab
# (Excel's "Unicode text"). The one that splits the header into the most names wins.
_DELIMITERS = (",", ";", "\t")
# Byte-order marks a spreadsheet writes; without one the file is read as UTF-8.
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


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


@dataclass(frozen=True)
class ImageInfo:
    """What an image's header says: format ("PNG", "JPEG"), PIL mode and size."""

    format: str
    mode: str
    width: int
    height: int


@dataclass(frozen=True)
class Validated:
    """A dataset that passed every check: its labels and, row for row, its image files."""

    layout: Layout
    labels: pd.DataFrame
    paths: list[Path]
    images: list[ImageInfo]


@dataclass(frozen=True)
class CheckReport:
    """What `check` found in a dataset that passed every check.

    Attributes:
        layout: Where the labels and images are.
        per_class: Labelled images per class name.
        kinds: ((format, mode, width, height), count) of the images, the most common first.
        fractions: The train/val/test fractions the split was planned with.
        seed: The split's seed.
        split: Subset -> class name -> images the split would place there.
    """

    layout: Layout
    per_class: dict[str, int]
    kinds: list[tuple[tuple[str, str, int, int], int]]
    fractions: tuple[float, float, float]
    seed: int
    split: dict[str, dict[str, int]]


# ---------------------------------------------------------------------------------------------
# The layout: the data dir, train.csv and the image folder


def require_data_dir(data_dir: Path) -> Path:
    """The data dir, if it is a folder that can be listed.

    Raises:
        DatasetError: naming the path when it does not exist, is not a folder or cannot be read.
    """
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise DatasetError(f"data dir {data_dir} does not exist; pass the folder that holds train.csv")
    if not data_dir.is_dir():
        raise DatasetError(f"data dir {data_dir} is not a folder; pass the folder that holds train.csv")
    _list_dir(data_dir)
    return data_dir


def _list_dir(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as error:
        raise DatasetError(f"cannot read {folder}: {error.strerror or error}; check its permissions") from error


def find_layout(data_dir: Path) -> Layout:
    """Finds `train.csv` and the folder holding `face-<id>` images in a dataset download.

    Raises:
        DatasetError: when the data dir is unusable, or `train.csv` or any folder of face
            images is missing.
    """
    data_dir = require_data_dir(data_dir)
    csv = data_dir / "train.csv"
    if not csv.is_file():
        raise DatasetError(f"no train.csv in {data_dir}: expected the Kaggle layout "
                           "(train.csv with id and glasses columns, images face-<id>.png)")
    for candidate in IMAGE_DIR_CANDIDATES:
        folder = (data_dir / candidate).resolve()
        if folder.is_dir() and any(_is_face_name(e.name) for e in _list_dir(folder)):
            return Layout(csv=csv, image_dir=folder, has_latents=has_latent_columns(csv))
    tried = ", ".join(str(data_dir / c) for c in IMAGE_DIR_CANDIDATES)
    raise DatasetError(f"no face-<id>.png/.jpg images found for {csv}; looked in {tried}")


def face_file_name(image_id: int | str, ext: str = ".png") -> str:
    """The file name of an id's image: `face-<id><ext>`."""
    return f"{FACE_PREFIX}{image_id}{ext}"


def _is_face_name(name: str) -> bool:
    return name.startswith(FACE_PREFIX) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


# ---------------------------------------------------------------------------------------------
# The CSV: any dialect a spreadsheet writes, errors by physical line


@dataclass(frozen=True)
class CsvFormat:
    """How a CSV is written: its encoding, delimiter and header (names stripped)."""

    encoding: str
    delimiter: str
    header: list[str]


@contextmanager
def _open_text(csv: Path, encoding: str) -> Iterator:
    """The CSV as text; undecodable bytes become U+FFFD, so that only the cells we use can fail."""
    try:
        with open(csv, newline="", encoding=encoding, errors="replace") as handle:
            yield handle
    except OSError as error:
        raise DatasetError(f"cannot read {csv}: {error.strerror or error}; check its permissions") from error


def csv_format(csv: Path) -> CsvFormat:
    """Sniffs a CSV's encoding (a BOM, else UTF-8), delimiter and header.

    Raises:
        DatasetError: when the file cannot be read or its header holds NUL characters (a
            binary file, or UTF-16 without a BOM).
    """
    try:
        with open(csv, "rb") as handle:
            start = handle.read(4)
    except OSError as error:
        raise DatasetError(f"cannot read {csv}: {error.strerror or error}; check its permissions") from error
    encoding = next((name for bom, name in _BOMS if start.startswith(bom)), "utf-8")
    with _open_text(csv, encoding) as handle:
        line = handle.readline()
    if "\0" in line:
        raise DatasetError(f"{csv} row 1: the header holds NUL characters; save the file as CSV (UTF-8)")
    splits = {d: next(csv_reader([line], delimiter=d), []) for d in _DELIMITERS}
    delimiter = max(_DELIMITERS, key=lambda d: len(splits[d]))  # a tie keeps ","
    return CsvFormat(encoding, delimiter, [name.strip() for name in splits[delimiter]])


def read_header(csv: Path) -> list[str]:
    """The column names of a CSV, stripped, quotes removed."""
    return csv_format(csv).header


def has_latent_columns(csv: Path) -> bool:
    """Whether the CSV's header names every one of v1..v512."""
    return set(LATENT_COLUMNS) <= set(read_header(csv))


def _column_indices(csv: Path, header: list[str], names: list[str]) -> list[int]:
    """The position of each named column; a DatasetError when one is missing or repeated."""
    indices = []
    for name in names:
        found = [i for i, column in enumerate(header) if column == name]
        if not found:
            shown = ", ".join(repr(n[:20]) for n in header[:5]) + (", ..." if len(header) > 5 else "")
            raise DatasetError(f"{csv}: missing column {name!r} (found {shown or 'no header'})")
        if len(found) > 1:
            raise DatasetError(f"{csv} row 1: column {name!r} appears {len(found)} times "
                               f"(columns {', '.join(str(i + 1) for i in found)}); keep one")
        indices.append(found[0])
    return indices


def _record_lines(csv: Path, form: CsvFormat, needed: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """The physical line each record after the header starts on, and whether it is blank.

    Blank means no value at all (an empty line, or a spreadsheet's empty row ",,,"). A record
    spans several lines when a quoted value holds a line break, so lines are counted here
    rather than derived from the record's index.

    Raises:
        DatasetError: naming the line of a record with more values than the header has names,
            or too few to reach a column we read (`needed`: name -> position).
    """
    starts, blank = [], []
    reach = max(needed.values()) + 1
    with _open_text(csv, form.encoding) as handle:
        records = csv_reader(handle, delimiter=form.delimiter)
        try:
            next(records, None)
            end = records.line_num
            for record in records:
                start, end = end + 1, records.line_num
                starts.append(start)
                blank.append(not any(value.strip() for value in record))
                if not blank[-1] and not reach <= len(record) <= len(form.header):
                    _width_error(csv, start, len(record), len(form.header), needed)
        except CsvError as error:
            raise DatasetError(f"{csv} row {records.line_num}: {error}; fix the row") from error
    return np.asarray(starts, dtype=int), np.asarray(blank, dtype=bool)


def _width_error(csv: Path, line: int, values: int, names: int, needed: dict[str, int]) -> None:
    if values > names:
        raise DatasetError(f"{csv} row {line}: {values} values but the header names {names} columns; "
                           "remove the extra values (a value holding the delimiter needs quotes)")
    missing = min((i, name) for name, i in needed.items() if i >= values)
    raise DatasetError(f"{csv} row {line}: only {values} values, so no {missing[1]!r} (column {missing[0] + 1}); "
                       "fill in the row or remove it")


def read_columns(csv: Path, names: Iterable[str]) -> pd.DataFrame:
    """Reads the named columns of a CSV with Dask, every cell as the string written there.

    Only these columns are parsed. Names match stripped and unquoted; the encoding (a BOM, else
    UTF-8) and delimiter (",", ";" or tab) are sniffed; blank rows are skipped; no cell becomes
    NaN, so a bad value can be reported as is.

    Returns:
        The columns in the order of `names`, plus `row`: the physical line each row starts on.

    Raises:
        DatasetError: naming the file, and the row where there is one, of a missing or repeated
            column, a row with too many or too few values, or a value that is not valid text.
    """
    names = list(names)
    form = csv_format(csv)
    indices = _column_indices(csv, form.header, names)
    starts, blank = _record_lines(csv, form, dict(zip(names, indices)))
    frame = _dask_columns(csv, form, names)
    if len(frame) != len(starts):  # two parsers of one file disagree: a quoting they read differently
        raise DatasetError(f"{csv}: {len(starts)} rows by line but {len(frame)} by value; check its quotes")
    frame = frame.assign(**{ROW_COLUMN: starts})[~blank].reset_index(drop=True)
    _require_text(csv, frame, names, form.encoding)
    return frame


def _dask_columns(csv: Path, form: CsvFormat, names: list[str]) -> pd.DataFrame:
    import dask.dataframe as dd  # heavy; only needed here

    wanted = set(names)
    # Dask cuts a file into blocks at b"\n", which is half a character in UTF-16: one block then.
    blocksize = "default" if form.encoding.startswith("utf-8") else None
    try:
        frame = dd.read_csv(csv, sep=form.delimiter, usecols=lambda name: name.strip() in wanted, dtype=str,
                            keep_default_na=False, skip_blank_lines=False, encoding=form.encoding,
                            encoding_errors="replace", blocksize=blocksize).compute()
    except (ValueError, OSError) as error:  # pandas' ParserError is a ValueError
        raise DatasetError(f"cannot parse {csv}: {str(error).strip().splitlines()[0]}") from error
    return frame.rename(columns=str.strip).reset_index(drop=True)[names]


def _require_text(csv: Path, frame: pd.DataFrame, names: list[str], encoding: str) -> None:
    """A DatasetError naming the first row (then column) holding a value we read that was not valid text."""
    bad = np.column_stack([frame[name].str.contains("\ufffd", regex=False).to_numpy(bool) for name in names])
    if bad.any():
        index, column = np.argwhere(bad)[0]  # row-major: the first bad row, then its first bad column
        name, row = names[column], frame[ROW_COLUMN].iat[index]
        raise DatasetError(f"{csv} row {row}: the {name} value {frame[name].iat[index]!r} is not valid "
                           f"{encoding} text; save the file as CSV UTF-8")


def read_labels(csv: Path) -> pd.DataFrame:
    """Reads and validates `id` and `glasses` from a labels CSV with Dask.

    Only the two columns are parsed; the 512 latent columns are never materialised.

    Returns:
        A frame with int columns `id`, `glasses` and `row` (the physical line), and `id_text`
        (the id as written, stripped: "007" for 7).

    Raises:
        DatasetError: naming the file and row of a missing column, a bad or too large id, a
            duplicate id (compared as integers: 7 and 007 are one id), a label other than
            0/1, or an empty class.
    """
    frame = read_columns(csv, (ID_COLUMN, LABEL_COLUMN))
    if frame.empty:
        raise DatasetError(f"{csv}: no rows below the header; add one row (id, glasses) per labelled image")
    texts = _require_ids(csv, frame)
    labels = _require_labels(csv, frame)
    ids = np.array([int(text) for text in texts], dtype=np.int64)
    frame = pd.DataFrame({ID_COLUMN: ids, LABEL_COLUMN: labels.to_numpy(),
                          ROW_COLUMN: frame[ROW_COLUMN].astype(int), ID_TEXT_COLUMN: texts})
    _require_unique_ids(csv, frame)
    for label, name in enumerate(CLASSES):
        if not (frame[LABEL_COLUMN] == label).any():
            raise DatasetError(f"{csv}: no row has glasses={label} ({name}); both classes are needed")
    return frame


def _first_bad(frame: pd.DataFrame, bad: pd.Series) -> pd.Series:
    return frame[bad].iloc[0]


def _require_ids(csv: Path, frame: pd.DataFrame) -> pd.Series:
    """The ids as written, stripped, each a plain integer that fits in int64."""
    texts = frame[ID_COLUMN].str.strip()
    bad = ~texts.str.match(_PLAIN_INT)
    if bad.any():
        row = _first_bad(frame, bad)
        raise DatasetError(f"{csv} row {row[ROW_COLUMN]}: id {row[ID_COLUMN]!r} is not a plain integer")
    too_large = np.array([int(text) > MAX_ID for text in texts], dtype=bool)  # Python ints: no overflow
    if too_large.any():
        row = _first_bad(frame, too_large)
        raise DatasetError(f"{csv} row {row[ROW_COLUMN]}: id {row[ID_COLUMN]!r} is too large "
                           f"(at most {MAX_ID}); fix the id")
    return texts


def _require_labels(csv: Path, frame: pd.DataFrame) -> pd.Series:
    labels = frame[LABEL_COLUMN].str.strip()
    bad = ~labels.isin(["0", "1", "0.0", "1.0"])
    if bad.any():
        row = _first_bad(frame, bad)
        raise DatasetError(f"{csv} row {row[ROW_COLUMN]}: glasses must be 0 or 1, got {row[LABEL_COLUMN]!r}")
    return labels.astype(float).astype(int)


def _require_unique_ids(csv: Path, frame: pd.DataFrame) -> None:
    duplicated = frame[ID_COLUMN].duplicated(keep=False)
    if not duplicated.any():
        return
    first = frame[duplicated].iloc[0][ID_COLUMN]
    rows = frame[frame[ID_COLUMN] == first]
    spellings = list(dict.fromkeys(rows[ID_TEXT_COLUMN]))
    written = f" (written {', '.join(map(repr, spellings))})" if len(spellings) > 1 else ""
    raise DatasetError(f"{csv} rows {', '.join(map(str, rows[ROW_COLUMN]))}: duplicate id {first}{written}")


# ---------------------------------------------------------------------------------------------
# Images: found by id, size checked from the header, then decoded


def image_path(image_dir: Path, image_id: int, spelled: str | None = None) -> Path | None:
    """The image file of an id, whatever its extension's case, or None.

    An id written with leading zeros ("007") is looked for as written (face-007.png), then as
    the number (face-7.png, as the Kaggle files are named).
    """
    for stem in dict.fromkeys(s for s in (spelled, str(image_id)) if s):
        for ext in IMAGE_EXTENSIONS:
            for candidate in (face_file_name(stem, ext), face_file_name(stem, ext.upper())):
                if (image_dir / candidate).is_file():
                    return image_dir / candidate
    return None


def require_image(layout: Layout, image_id: int, row: int, spelled: str | None = None) -> Path:
    """The image file of the id on line `row` of the layout's CSV.

    Raises:
        DatasetError: naming the CSV, row and id when the id has no image.
    """
    path = image_path(layout.image_dir, image_id, spelled)
    if path is None:
        names = " or ".join(dict.fromkeys(f"face-{s}.png/.jpg/.jpeg" for s in (spelled, str(image_id)) if s))
        raise DatasetError(f"{layout.csv} row {row}: no image for id {image_id} in "
                           f"{layout.image_dir} (looked for {names})")
    return path


def unreadable_image(path: Path, error: BaseException) -> DatasetError:
    """The error for an image a decoder refused: its path, the decoder's reason, what to do."""
    why = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return DatasetError(f"{path}: unreadable image ({why}); fix or remove it and its CSV row")


@contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
    """Opens an image and checks its size from the header, before any pixel is decoded.

    Raises:
        DatasetError: naming the file, its size and the limit when it has more than
            MAX_IMAGE_PIXELS pixels (or more than PIL's own decompression-bomb limit).
    """
    try:
        image = Image.open(path)
    except Image.DecompressionBombError as error:  # PIL refuses before we see a size
        raise DatasetError(f"{path}: too large to decode ({error}); glasses reads at most {MAX_IMAGE_PIXELS} pixels "
                           "(glasses.dataset.MAX_IMAGE_PIXELS): shrink it or remove it and its CSV row") from error
    with image:
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise DatasetError(f"{path}: {width}x{height} is {width * height} pixels, more than the limit of "
                               f"{MAX_IMAGE_PIXELS} (glasses.dataset.MAX_IMAGE_PIXELS); shrink it or remove it "
                               "and its CSV row")
        yield image


def read_image_info(path: Path) -> ImageInfo:
    """Format, mode and size from an image's header, checked against MAX_IMAGE_PIXELS.

    Raises:
        DatasetError: naming the file when it is too large or not an image.
    """
    try:
        with open_image(path) as image:
            return ImageInfo(image.format or "?", image.mode, *image.size)
    except DatasetError:
        raise
    except Exception as error:  # any failure of a decoder on a user's file is a bad image, not a crash
        raise unreadable_image(path, error) from error


def check_image(path: Path) -> None:
    """Raises DatasetError naming `path` when it is not a whole, decodable image.

    Cheaper than a full decode where the format allows, since the cache build decodes every
    image once anyway (and names any file that fails there): a PNG's chunk checksums cover all
    its pixel data, so a truncated or altered PNG fails them; a JPEG is decoded at 1/8 scale
    (every byte of its scan is still read, so a cut one fails); other formats are decoded whole.
    """
    try:
        with open_image(path) as image:
            image.verify()  # checksums (PNG CRCs) that load() does not look at
        with open_image(path) as image:  # verify() leaves the image unusable; open it again
            if image.format == "PNG":
                return
            if image.format == "JPEG":
                image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except DatasetError:
        raise
    except Exception as error:  # any failure of a decoder on a user's file is a bad image, not a crash
        raise unreadable_image(path, error) from error


def find_images(layout: Layout, labels: pd.DataFrame) -> list[Path]:
    """The image file of each labelled row, in row order; a DatasetError for the first id without one."""
    return [require_image(layout, image_id, row, spelled)
            for image_id, row, spelled in zip(labels[ID_COLUMN], labels[ROW_COLUMN], labels[ID_TEXT_COLUMN])]


def inspect_images(paths: list[Path]) -> list[ImageInfo]:
    """Checks every image: its header (size limit first, in file order), then a full decode.

    Raises:
        DatasetError: naming the first image that is too large, or not decodable.
    """
    with warnings.catch_warnings():  # PIL warns above its limit; ours is lower and says it in the error
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        infos = [read_image_info(path) for path in paths]
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        list(pool.map(check_image, paths))  # the first failure in file order is raised
    return infos


def validate(layout: Layout) -> Validated:
    """Runs every check of a dataset's labels and images (`find_layout` checked the rest), reading only.

    Raises:
        DatasetError: for the first bad input, naming its file and row or value.
    """
    labels = read_labels(layout.csv)
    paths = find_images(layout, labels)
    return Validated(layout=layout, labels=labels, paths=paths, images=inspect_images(paths))


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-links `source` to `target`, copying where a link is impossible (other device, ...)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _source_stamp(layout: Layout) -> dict:
    """What organize's output depends on: the CSV's and every face image's stat (no reads).

    An image replaced under an unchanged CSV changes its size, mtime or inode (a copy with a
    preserved mtime still gets a new inode), so a stale organized dir is never reused.
    """
    stat = layout.csv.stat()
    images = hashlib.sha256()
    for entry in sorted(_list_dir(layout.image_dir), key=lambda e: e.name):
        if _is_face_name(entry.name) and entry.is_file():
            info = entry.stat()
            images.update(f"{entry.name}\0{info.st_size}\0{info.st_mtime_ns}\0{info.st_ino}\n".encode())
    return {"csv": str(layout.csv.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "image_dir": str(layout.image_dir), "images": images.hexdigest()}


def fingerprint(data_dir: Path) -> str:
    """A short hash of the dataset as organize sees it: train.csv and every face image (size,
    mtime, inode). Cheap (one stat a file); it changes whenever an input does."""
    from glasses.config import fingerprint as digest

    return digest(_source_stamp(find_layout(data_dir)), length=16)


def organize(data_dir: Path, out_dir: Path) -> Organized:
    """Validates a dataset and places each labelled image into `glasses/` or `no_glasses/`.

    Test-set images (ids only in `test.csv`) are left out. Re-running on an unchanged source
    (the CSV and every image, by size, mtime and inode) returns the existing result without work.

    Raises:
        DatasetError: for any bad input, before anything is written.
    """
    layout = find_layout(data_dir)
    stamp = _source_stamp(layout)
    manifest = Path(out_dir) / ORGANIZED_MANIFEST
    if manifest.is_file() and read_json(manifest).get("source") == stamp:
        return Organized(dir=Path(out_dir), **read_json(manifest)["counts"])
    valid = validate(layout)
    with atomic_dir(out_dir) as tmp:
        for name in CLASSES:
            (tmp / name).mkdir()
        for path, label in zip(valid.paths, valid.labels[LABEL_COLUMN]):
            link_or_copy(path, tmp / CLASSES[label] / path.name)
        result = _count(Path(out_dir), valid.labels)
        write_json(tmp / ORGANIZED_MANIFEST, {"source": stamp, "counts": _counts_dict(result)})
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


# ---------------------------------------------------------------------------------------------
# The split: planned from class sizes, checked before anything is written


def class_files(folder: Path) -> dict[str, list[Path]]:
    """The image files of each class folder under `folder`, sorted by name."""
    return {name: sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            for name in CLASSES}


def subset_sizes(count: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Train, val and test sizes of a class of `count` items.

    Train and val sizes are rounded down and the rest goes to test, as in the report
    (3599 / 449 / 452 of 4500).
    """
    # the epsilon keeps float error from flooring an exact product down: 90 * 0.7 is 62.99999999999999
    n_train = int(count * fractions[0] + 1e-9)
    n_val = int(count * fractions[1] + 1e-9)
    return n_train, n_val, count - n_train - n_val


def _hash_order(names: list[str], seed: int) -> list[str]:
    """`names` in the order of a hash of (seed, name): seeded, and the same for a name whatever
    else is in the list."""
    return sorted(names, key=lambda name: hashlib.sha256(f"{seed}\0{name}".encode()).digest())


def stable_subsets(classes: dict[str, list[str]], fractions: tuple[float, float, float], seed: int,
                   earlier: dict[str, int] | None = None) -> dict[str, int]:
    """Subset index (0 train, 1 val, 2 test) of each item name, stratified by class, that keeps
    every earlier item where it was.

    Items in `earlier` (name -> subset, an earlier split with the same seed and fractions) keep
    their subset, even when their class changed. The others, per class in the order of a hash of
    (seed, name), each go to the subset furthest below its size for the class's new count
    (`subset_sizes`). So with no earlier split the sizes are exactly `subset_sizes`, and when rows
    are added the old images never move and the fractions stay those sizes (unless rows were
    removed from a subset, which the new ones then refill).
    """
    earlier = earlier or {}
    found: dict[str, int] = {}
    for names in classes.values():
        targets = subset_sizes(len(names), fractions)
        kept = {name: earlier[name] for name in names if name in earlier}
        counts = [sum(1 for s in kept.values() if s == subset) for subset in range(3)]
        found.update(kept)
        for name in _hash_order([n for n in names if n not in kept], seed):
            subset = max(range(3), key=lambda i: (targets[i] - counts[i], -i))
            counts[subset] += 1
            found[name] = subset
    return found


def plan_split(per_class: dict[str, int], fractions: tuple[float, float, float]) -> dict[str, dict[str, int]]:
    """Subset -> class -> images that `split` would place there (`subset_sizes`; the seed only
    decides which images).

    Raises:
        DatasetError: when a class would leave a subset with fewer than
            MIN_PER_CLASS_AND_SUBSET images, with the numbers and what to change.
    """
    plan = {subset: {} for subset in SUBSETS}
    for name, count in per_class.items():
        for subset, size in zip(SUBSETS, subset_sizes(count, fractions)):
            plan[subset][name] = size
            if size < MIN_PER_CLASS_AND_SUBSET:
                shown = "/".join(f"{f:g}" for f in fractions)
                raise DatasetError(f"class {name} has {count} images: the split {shown} gives {subset} {size}, "
                                   f"need at least {MIN_PER_CLASS_AND_SUBSET}; add images or change data.fractions")
    return plan


def check(data_dir: Path, fractions: tuple[float, float, float], seed: int) -> CheckReport:
    """Runs every check a run would make of a dataset, and plans its split, writing nothing.

    Raises:
        DatasetError: for the first bad input (as `organize` and `split` would raise it).
    """
    valid = validate(find_layout(data_dir))
    labels = valid.labels[LABEL_COLUMN]
    per_class = {name: int((labels == label).sum()) for label, name in enumerate(CLASSES)}
    kinds = Counter((i.format, i.mode, i.width, i.height) for i in valid.images).most_common()
    return CheckReport(layout=valid.layout, per_class=per_class, kinds=kinds, fractions=tuple(fractions),
                       seed=seed, split=plan_split(per_class, fractions))


def _organized_source(organized_dir: Path) -> dict | None:
    """The source stamp organize wrote, so that a split of since-replaced images is not reused."""
    manifest = Path(organized_dir) / ORGANIZED_MANIFEST
    return read_json(manifest).get("source") if manifest.is_file() else None


ASSIGNMENTS = "assignments.csv"  # in the split dir: name,subset of every image it ever placed


def split(organized_dir: Path, out_dir: Path, fractions: tuple[float, float, float], seed: int) -> Split:
    """Splits class folders into stratified train/val/test folders, seeded (`stable_subsets`).

    An image the previous split in `out_dir` placed (same seed and fractions) keeps its subset,
    so when data grows no image moves between train, val and test; `assignments.csv` remembers
    every image ever placed, also those since removed. The same inputs (file names, and the
    source stamp of the organized dir) give the same split, and a re-run with them does no work.

    Raises:
        DatasetError: when a class is too small for the fractions (see `plan_split`), before
            anything is written.
    """
    files = class_files(Path(organized_dir))
    key = {"fractions": list(fractions), "seed": seed, "source": _organized_source(organized_dir),
           "files": {name: [p.name for p in paths] for name, paths in files.items()}}
    manifest = Path(out_dir) / SPLIT_MANIFEST
    if manifest.is_file() and read_json(manifest).get("key") == key and "id" in read_json(manifest):
        return Split(dir=Path(out_dir), **read_json(manifest)["counts"])
    plan_split({name: len(paths) for name, paths in files.items()}, fractions)
    earlier = _earlier_assignments(Path(out_dir), fractions, seed)
    subsets = stable_subsets({name: [p.stem for p in paths] for name, paths in files.items()}, fractions, seed,
                             earlier)
    with atomic_dir(out_dir) as tmp:
        table = _place_subsets(files, tmp, subsets)
        table.to_csv(tmp / "manifest.csv", index=False)
        remembered = {**earlier, **subsets}
        pd.DataFrame({"name": list(remembered), "subset": [SUBSETS[s] for s in remembered.values()]}).to_csv(
            tmp / ASSIGNMENTS, index=False)
        counts = {s: int((table["subset"] == s).sum()) for s in SUBSETS}
        # what it was made of and where it placed each image: caches are keyed on this
        placed = hashlib.sha256((json.dumps(key, sort_keys=True) + table.to_csv(index=False)).encode()).hexdigest()[:16]
        write_json(tmp / SPLIT_MANIFEST, {"key": key, "id": placed, "counts": counts, "fractions": _achieved(table),
                                        "kept": sum(1 for name in subsets if name in earlier)})
    return Split(dir=Path(out_dir), **counts)


def _earlier_assignments(out_dir: Path, fractions: tuple[float, float, float], seed: int) -> dict[str, int]:
    """name -> subset of the split already in `out_dir`, if it was made with this seed and these
    fractions (else none: a new split)."""
    manifest, table = out_dir / SPLIT_MANIFEST, out_dir / ASSIGNMENTS
    if not (manifest.is_file() and table.is_file()):
        return {}
    key = read_json(manifest).get("key", {})
    if key.get("seed") != seed or key.get("fractions") != list(fractions):
        return {}
    found = pd.read_csv(table, dtype=str, keep_default_na=False)
    return {name: SUBSETS.index(subset) for name, subset in zip(found["name"], found["subset"])}


def _achieved(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per class, the fraction of its images in each subset (what the split achieved)."""
    out = {}
    for label, name in enumerate(CLASSES):
        rows = table[table["label"] == label]
        out[name] = {s: round(float((rows["subset"] == s).mean()), 4) if len(rows) else 0.0 for s in SUBSETS}
    return out


def _place_subsets(files: dict[str, list[Path]], tmp: Path, subsets: dict[str, int]) -> pd.DataFrame:
    """Links each class's files into tmp/<subset>/<class>/; the manifest rows (path, label, subset)."""
    rows = []
    for label, name in enumerate(CLASSES):
        for path in files[name]:
            subset = SUBSETS[subsets[path.stem]]
            target = tmp / subset / name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(path, target)
            rows.append((f"{subset}/{name}/{path.name}", label, subset))
    return pd.DataFrame(rows, columns=["path", "label", "subset"])


def split_id(split_dir: Path) -> str:
    """What identifies the split in `split_dir`: a hash of what it was made of (the organized
    images, seed, fractions) and where it placed each image; the caches and searches built on
    it are keyed by it."""
    return read_json(Path(split_dir) / SPLIT_MANIFEST)["id"]


def split_assignments(split_dir: Path) -> dict[str, str]:
    """Image name (file stem, `face-<id>`) -> subset of every image the split in `split_dir` placed."""
    table = pd.read_csv(Path(split_dir) / "manifest.csv")
    return {Path(path).stem: subset for path, subset in zip(table["path"], table["subset"])}


def read_manifest(split_dir: Path, subset: str) -> tuple[list[str], list[int]]:
    """Absolute image paths and labels of one subset, in a stable order."""
    table = pd.read_csv(Path(split_dir) / "manifest.csv")
    table = table[table["subset"] == subset].sort_values("path")
    return [str(Path(split_dir) / p) for p in table["path"]], table["label"].astype(int).tolist()


# ---------------------------------------------------------------------------------------------
# The boxes sidecar: where the glasses are (the Kaggle layout itself has no such file)


Box = tuple[int, int, int, int]


def read_boxes(data_dir: Path) -> dict[int, Box] | None:
    """id -> (x0, y0, x1, y1) of `boxes.csv` beside the dataset's train.csv: the box of the
    glasses in that id's image, in its pixels (x1, y1 exclusive); None when there is no such file.

    Raises:
        DatasetError: naming the file, row and value of a box that is not four whole numbers with
            x0 < x1 and y0 < y1 (none negative), or of a missing column or a duplicate id.
    """
    csv = Path(data_dir) / BOXES
    if not csv.is_file():
        return None
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DatasetError(f"{csv}: not a CSV of id,{','.join(BOX_COLUMNS)} ({error})") from error
    missing = [c for c in (ID_COLUMN, *BOX_COLUMNS) if c not in table.columns]
    if missing:
        raise DatasetError(f"{csv}: no column {', '.join(missing)}; expected id,{','.join(BOX_COLUMNS)}")
    boxes: dict[int, Box] = {}
    for row, values in enumerate(table[[ID_COLUMN, *BOX_COLUMNS]].itertuples(index=False), start=2):
        if not all(_PLAIN_INT.match(v.strip()) for v in values):
            raise DatasetError(f"{csv} row {row}: {','.join(values)!r} is not an id and four whole pixel numbers")
        image_id, x0, y0, x1, y1 = (int(v) for v in values)
        if x0 >= x1 or y0 >= y1 or image_id in boxes:
            why = f"duplicate id {image_id}" if image_id in boxes else f"empty box ({x0},{y0})-({x1},{y1})"
            raise DatasetError(f"{csv} row {row}: {why}; each id once, with x0 < x1 and y0 < y1")
        boxes[image_id] = (x0, y0, x1, y1)
    return boxes


def face_id(path: str | Path) -> int | None:
    """The id of an image named `face-<id>.<ext>` (as organize and split keep them), or None."""
    stem = Path(path).stem
    number = stem[len(FACE_PREFIX):] if stem.startswith(FACE_PREFIX) else ""
    return int(number) if _PLAIN_INT.match(number) else None

