"""Shared test fixtures: tiny datasets made here, one Prefect test server for the session."""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import stat
import struct
import tempfile
import zlib

# Before TensorFlow or Prefect are imported anywhere: quiet TF, no CUDA probing, and a
# throw-away Prefect home so tests never touch the user's.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="glasses-prefect-")
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from collections.abc import Callable  # noqa: E402
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


def write_asymmetric_image(path: Path, seed: int = 0) -> Path:
    """A 32x32 RGB image with no symmetry (a gradient, noise and a dark block in one corner): a
    flip or a rotation of it always shows."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(40, 220, 32, dtype=np.float32)
    pixels = np.stack([ramp[None, :].repeat(32, 0), ramp[:, None].repeat(32, 1),
                       rng.integers(0, 255, (32, 32))], axis=-1).astype(np.uint8)
    pixels[2:10, 2:12] = 10
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
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


def pytest_collection_modifyitems(config, items):
    """The slow tests first, so that with `-n 2` (pytest-xdist) the long ones do not meet at the
    end with one worker idle. Stable and the same on every worker, as xdist requires."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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


# ---------------------------------------------------------------------------------------------
# Editing a dataset, snapshots, and the catalogues of odd-but-valid and bad datasets


def edit_train(root: Path, edit) -> None:
    """Rewrites train.csv through `edit(frame) -> frame`, every cell read as a string."""
    frame = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    edit(frame).to_csv(root / "train.csv", index=False)


def set_cell(root: Path, line: int, column: str, value: str) -> None:
    """Sets one cell of train.csv, on CSV line `line` (line 1 is the header)."""

    def edit(frame):
        frame.loc[line - 2, column] = value
        return frame

    edit_train(root, edit)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under `root` (and root itself) with type, mode, mtime, and size + hash of files."""
    state = {}
    if not root.exists():
        return state
    for path in [root, *sorted(root.rglob("*"))]:
        info = path.lstat()
        key = str(path.relative_to(root))
        if stat.S_ISDIR(info.st_mode):
            state[key] = ("dir", info.st_mode, info.st_mtime_ns)
        elif stat.S_ISREG(info.st_mode):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            state[key] = ("file", info.st_mode, info.st_mtime_ns, info.st_size, digest)
        else:
            state[key] = ("other", info.st_mode)
    return state


def write_png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (1-bit grey) and whose pixel data is cut short:
    what a decompression bomb looks like to a reader that checks only the header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


# 20 glasses, 12 no glasses, interleaved; ids 1..32, id k on CSV line k + 1
DATASET_LABELS = [1, 0, 1, 1, 0, 1, 1, 0] * 4


def _csv_rows(root: Path) -> list[list[str]]:
    """train.csv as rows of strings, the header first."""
    frame = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    return [list(frame.columns), *frame.values.tolist()]


def _write_rows(root: Path, rows: list[list[str]], *, sep: str = ",", quote: bool = False, newline: str = "\n",
                encoding: str = "utf-8", bom: bool = False) -> None:
    cell = (lambda v: f'"{v}"') if quote else str
    text = newline.join(sep.join(cell(v) for v in row) for row in rows) + newline
    (root / "train.csv").write_bytes(("\ufeff" if bom else "").encode(encoding) + text.encode(encoding))


def _with_names(rows: list[list[str]], names=("José", "Müller", "Zoë", "Ångström")) -> list[list[str]]:
    """A `name` column, which glasses does not read, of accented names."""
    return [rows[0][:1] + ["name"] + rows[0][1:]] + [
        row[:1] + [names[i % len(names)]] + row[1:] for i, row in enumerate(rows[1:])]


def _with_blank_lines(rows: list[list[str]]) -> list[list[str]]:
    """Blank lines and empty spreadsheet rows (",,,") between the rows, and at the end."""
    width = len(rows[0])
    out = [rows[0], []]
    for i, row in enumerate(rows[1:]):
        out += [row] + ([[""] * width] if i % 5 == 4 else [])
    return out + [[], []]


CSV_DIALECTS = {
    "quoted header, CRLF, UTF-8 BOM": lambda root, rows: _write_rows(root, rows, quote=True, newline="\r\n", bom=True),
    "latin-1 in an unused column": lambda root, rows: _write_rows(root, _with_names(rows), encoding="latin-1"),
    "cp1252 in an unused column": lambda root, rows: _write_rows(
        root, _with_names(rows, ("“Bee”", "Ångström – Jr")), encoding="cp1252"),
    "UTF-16 tab-separated (Excel Unicode text)": lambda root, rows: _write_rows(
        root, _with_names(rows), sep="\t", newline="\r\n", encoding="utf-16-le", bom=True),
    "semicolons": lambda root, rows: _write_rows(root, rows, sep=";"),
    "blank lines and empty rows": lambda root, rows: _write_rows(root, _with_blank_lines(rows)),
}


def write_odd_dataset(root: Path, dialect: str) -> Path:
    """A valid dataset (DATASET_LABELS) whose train.csv is written in `dialect` (a key of
    CSV_DIALECTS) and whose first images are odd kinds: 16-bit grey PNG, CMYK JPEG, a 2000x50
    strip, a palette PNG and grey + alpha."""
    write_kaggle_dataset(root, DATASET_LABELS)
    CSV_DIALECTS[dialect](root, _csv_rows(root))
    images = root / KAGGLE_SUBDIR
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 65535, (24, 24), dtype=np.uint16)).save(images / "face-1.png")
    (images / "face-2.png").unlink()
    Image.new("CMYK", (16, 16), (10, 200, 30, 40)).save(images / "face-2.jpg")
    write_image(images / "face-3.png", size=(2000, 50), seed=3)
    write_image(images / "face-4.png", seed=4, mode="P")
    write_image(images / "face-5.png", seed=5, mode="LA")
    return root


def _unlink_images(root: Path) -> None:
    for path in (root / KAGGLE_SUBDIR).iterdir():
        path.unlink()


def _insert_lines(root: Path, edits: dict[int, str]) -> None:
    """Rewrites train.csv's text: line k (1-based, as written) becomes edits[k] (which may hold \\n)."""
    lines = (root / "train.csv").read_text().splitlines()
    (root / "train.csv").write_text("\n".join(edits.get(k, line) for k, line in enumerate(lines, 1)) + "\n")


def _line(root: Path, k: int) -> str:
    return (root / "train.csv").read_text().splitlines()[k - 1]


def _truncate(path: Path, share: float) -> list[str]:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * share)])
    return [str(path.resolve()), "unreadable image"]


def _truncated_jpeg(root: Path) -> list[str]:
    (root / KAGGLE_SUBDIR / "face-9.png").unlink()
    bad = write_image(root / KAGGLE_SUBDIR / "face-9.jpg", size=(32, 32), seed=9)
    return _truncate(bad, 0.75)  # headers intact, scan data cut: only decoding finds it


# case -> function(root) that breaks the good dataset at root: (the data dir to pass, the
# fragments the error must name)
BAD_DATASETS: dict[str, Callable[[Path], tuple[Path, list[str]]]] = {}


def _bad(case: str):
    def register(breaker):
        BAD_DATASETS[case] = breaker
        return breaker
    return register


@_bad("no train.csv")
def _(root: Path) -> tuple[Path, list[str]]:
    (root / "train.csv").unlink()
    return root, ["train.csv", str(root)]


@_bad("data dir does not exist")
def _(root: Path) -> tuple[Path, list[str]]:
    return root / "nowhere", [str(root / "nowhere"), "does not exist"]


@_bad("data dir is a file")
def _(root: Path) -> tuple[Path, list[str]]:
    return root / "test.csv", [str(root / "test.csv"), "is not a folder"]


@_bad("no images at all")
def _(root: Path) -> tuple[Path, list[str]]:
    _unlink_images(root)
    return root, [str(root / "train.csv"), "face-"]


@_bad("no id column")
def _(root: Path) -> tuple[Path, list[str]]:
    edit_train(root, lambda frame: frame.rename(columns={"id": "ident"}))
    return root, [str(root / "train.csv"), "missing column 'id'"]


@_bad("no glasses column")
def _(root: Path) -> tuple[Path, list[str]]:
    edit_train(root, lambda frame: frame.drop(columns=["glasses"]))
    return root, [str(root / "train.csv"), "missing column 'glasses'"]


@_bad("id column twice")
def _(root: Path) -> tuple[Path, list[str]]:
    edit_train(root, lambda frame: frame.rename(columns={"v2": "id"}))
    return root, [str(root / "train.csv"), "row 1", "'id' appears 2 times", "columns 1, 3"]


@_bad("id without an image")
def _(root: Path) -> tuple[Path, list[str]]:
    (root / KAGGLE_SUBDIR / "face-7.png").unlink()
    return root, [str(root / "train.csv"), "row 8", "no image for id 7", "face-7"]


@_bad("duplicate ids")
def _(root: Path) -> tuple[Path, list[str]]:
    set_cell(root, 9, "id", "5")
    return root, [str(root / "train.csv"), "rows 6, 9", "duplicate id 5"]


@_bad("duplicate ids 7 and 007")
def _(root: Path) -> tuple[Path, list[str]]:
    set_cell(root, 9, "id", "007")
    return root, [str(root / "train.csv"), "rows 8, 9", "duplicate id 7", "'7', '007'"]


@_bad("label other than 0 or 1")
def _(root: Path) -> tuple[Path, list[str]]:
    set_cell(root, 6, "glasses", "2")
    return root, [str(root / "train.csv"), "row 6", "glasses must be 0 or 1", "'2'"]


@_bad("empty class")
def _(root: Path) -> tuple[Path, list[str]]:
    edit_train(root, lambda frame: frame.assign(glasses="1"))
    return root, [str(root / "train.csv"), "glasses=0", "no_glasses"]


@_bad("id not an integer")
def _(root: Path) -> tuple[Path, list[str]]:
    set_cell(root, 5, "id", "1.5")
    return root, [str(root / "train.csv"), "row 5", "'1.5'", "not a plain integer"]


@_bad("id beyond int64")
def _(root: Path) -> tuple[Path, list[str]]:
    set_cell(root, 5, "id", "99999999999999999999")
    return root, [str(root / "train.csv"), "row 5", "'99999999999999999999'", "too large"]


@_bad("extra value after blank lines")
def _(root: Path) -> tuple[Path, list[str]]:
    # a blank line before and after line 3 moves line 10, with its extra value, to line 12
    _insert_lines(root, {3: "\n" + _line(root, 3) + "\n", 10: _line(root, 10) + ",9"})
    return root, [str(root / "train.csv"), "row 12", "7 values", "header names 6 columns"]


@_bad("missing value")
def _(root: Path) -> tuple[Path, list[str]]:
    _insert_lines(root, {4: _line(root, 4).rsplit(",", 2)[0]})
    return root, [str(root / "train.csv"), "row 4", "only 4 values", "'glasses'"]


@_bad("undecodable id")
def _(root: Path) -> tuple[Path, list[str]]:
    text = (root / "train.csv").read_bytes().replace(b"\n5,", b"\n5\xe9,", 1)
    (root / "train.csv").write_bytes(text)
    return root, [str(root / "train.csv"), "row 6", "id value", "not valid utf-8 text"]


@_bad("image of garbage bytes")
def _(root: Path) -> tuple[Path, list[str]]:
    (root / KAGGLE_SUBDIR / "face-5.png").write_bytes(b"this is not a PNG file" * 10)
    return root, [str((root / KAGGLE_SUBDIR / "face-5.png").resolve()), "unreadable image"]


@_bad("truncated PNG")
def _(root: Path) -> tuple[Path, list[str]]:
    return root, _truncate(write_image(root / KAGGLE_SUBDIR / "face-9.png", size=(32, 32), seed=9), 2 / 3)


@_bad("truncated JPEG")
def _(root: Path) -> tuple[Path, list[str]]:
    return root, _truncated_jpeg(root)


@_bad("decompression bomb")
def _(root: Path) -> tuple[Path, list[str]]:
    bomb = write_png_header(root / KAGGLE_SUBDIR / "face-4.png", 20000, 20000)
    return root, [str(bomb.resolve()), "too large", "400000000 pixels", str(64 * 1024 * 1024)]


def write_bad_dataset(root: Path, case: str) -> tuple[Path, list[str]]:
    """The dataset of DATASET_LABELS (ids 1..32, v1..v4) broken as `case` (one of BAD_DATASETS) says.

    Returns:
        The path to pass as the data dir, and the fragments the error must name.
    """
    write_kaggle_dataset(root, DATASET_LABELS)
    return BAD_DATASETS[case](root)


# ---------------------------------------------------------------------------------------------
# A run's summary.json, made up: what the report and the CLI read


def run_summary(*, learned: bool, method: str = "greedy", configured: str = "auto",
                selection: str = "val_log_loss") -> dict:
    """The summary of a run on 20 test images (14 glasses, the train majority): its model either
    perfect (`learned`) or constant at P(glasses) 0.3, its alarm computed by glasses."""
    from glasses.evaluate import check_learning, metrics

    labels = np.array([1] * 14 + [0] * 6)
    probabilities = np.where(labels == 1, 0.9, 0.1) if learned else np.full(20, 0.3)
    row = {"val_accuracy": 0.88, "val_log_loss": 0.3, "test_accuracy": 0.85}
    evaluation = metrics(probabilities, labels)
    return {
        "dataset": {"labelled": 100, "glasses": 70, "no_glasses": 30, "ratio": 70 / 30},
        "split": {"train": 60, "val": 20, "test": 20}, "workers": 2, "preset": "smoke", "stages": {},
        "ensemble": {"method": method, "selection": selection, "configured_method": configured,
                     "selected": "greedy", "members": 3, "val_accuracy": 0.88,
                     "test_accuracy": evaluation["accuracy"], "image_size": 48, "threshold": 0.85,
                     "warning": None, "trial_ids": ["01", "02", "03"], "path": "model/ensemble.keras"},
        "best_single": {"trial_id": "01", "val_accuracy": 0.86, "test_accuracy": 0.8},
        "ensembles": {"best_single": {"member": 0, **row}, "average": row, "majority": {**row, "val_log_loss": None},
                      "greedy": {**row, "weights": [2, 1, 0]}},
        "evaluation": evaluation,
        "alarm": check_learning(probabilities, labels, train_labels=[1] * 40 + [0] * 20).to_dict(),
        "figures": {}, "latent": {}, "durations_s": {"total": 12.0},
    }
