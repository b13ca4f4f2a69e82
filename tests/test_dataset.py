"""glasses.dataset: layout detection, label validation, organising, splitting, and bad input.

Every dataset here is written by the test itself (`tests.conftest.write_kaggle_dataset`, a few
dozen tiny images) in the Kaggle layout: train.csv (id, v1..vK, glasses), test.csv (id, v1..vK)
and faces-spring-2020/faces-spring-2020/face-<id>.png.

The tests run as root, where a read-only chmod does not stop writes, so "nothing was written into
the source" is proven by comparing a snapshot (every path, its type, mode, mtime, size and
SHA-256) before and after, not by the chmod alone.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import ImageFile

from glasses import dataset
from glasses.dataset import (
    CLASSES,
    SUBSETS,
    Organized,
    Split,
    find_layout,
    organize,
    read_labels,
    read_manifest,
    split,
    stable_subsets,
)
from glasses.errors import DatasetError
from glasses.files import OUTPUT_MARKER
from tests.conftest import (
    BAD_DATASETS,
    CSV_DIALECTS,
    DATASET_LABELS,
    KAGGLE_SUBDIR,
    set_cell,
    snapshot,
    write_bad_dataset,
    write_image,
    write_kaggle_dataset,
    write_odd_dataset,
    write_png_header,
)

FRACTIONS = (0.8, 0.1, 0.1)
# the class folders spelled out, not taken from dataset.CLASSES, so that a swapped mapping fails
FOLDER = {1: "glasses", 0: "no_glasses"}
# 20 glasses, 12 no glasses, interleaved so that neither class is a contiguous block of ids
LABELS = DATASET_LABELS


# ---------------------------------------------------------------------------------------------
# helpers: temporaries, read-only sources, what landed where (editing and snapshots: conftest)


def temp_leftovers(root: Path) -> list[Path]:
    """Temporary files or folders that an atomic write left behind anywhere under `root`."""
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture
def read_only():
    """Makes a tree read-only (0o555 dirs, 0o444 files); restores it after the test for cleanup."""
    trees = []

    def make(root: Path) -> Path:
        trees.append(root)
        for path in sorted(root.rglob("*"), reverse=True):
            path.chmod(0o555 if path.is_dir() else 0o444)
        root.chmod(0o555)
        return root

    yield make
    for root in trees:
        root.chmod(0o755)
        for path in root.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)


def organized_labels(out: Path) -> dict[str, int]:
    """File name -> label (1 glasses, 0 no glasses) of every file in an organised dir's class folders."""
    found = {}
    for label, name in FOLDER.items():
        for path in (out / name).iterdir():
            assert path.name not in found, f"{path.name} is in both class folders"
            found[path.name] = label
    return found


def split_labels(split_dir: Path) -> dict[str, tuple[str, int]]:
    """File name -> (subset, label) of every image in a split dir."""
    found = {}
    for subset in SUBSETS:
        for label, name in FOLDER.items():
            folder = split_dir / subset / name
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                assert path.name not in found, f"{path.name} is in more than one subset or class"
                found[path.name] = (subset, label)
    return found


def exact_floor(count: int, fraction: float) -> int:
    """floor(count * fraction) computed exactly on the decimal the fraction was written as."""
    return math.floor(Fraction(repr(fraction)) * count)


# ---------------------------------------------------------------------------------------------
# layout detection


@pytest.mark.parametrize("subdir", [KAGGLE_SUBDIR, "faces-spring-2020", "faces", "."])
def test_find_layout_finds_each_supported_image_folder(tmp_path, subdir):
    data = tmp_path / "data"
    write_kaggle_dataset(data, LABELS, subdir=subdir)
    layout = find_layout(data)
    assert layout.csv == data / "train.csv"
    assert layout.image_dir == (data / subdir).resolve()
    assert layout.has_latents is False  # only 4 of the 512 latent columns


def test_find_layout_prefers_the_kaggle_nesting_and_ignores_non_face_files(tmp_path):
    data = tmp_path / "data"
    write_kaggle_dataset(data, LABELS)
    write_image(data / "faces" / "portrait-1.png")  # not a face-<id> file
    (data / "faces" / "face-1.txt").write_text("not an image extension")
    assert find_layout(data).image_dir == (data / KAGGLE_SUBDIR).resolve()
    write_image(data / "faces" / "face-1.jpg")
    # the nested Kaggle folder still wins over faces/
    assert find_layout(data).image_dir == (data / KAGGLE_SUBDIR).resolve()


def test_find_layout_reports_full_latents(tmp_path):
    data = tmp_path / "data"
    write_kaggle_dataset(data, LABELS, latents=512)
    assert find_layout(data).has_latents is True


def test_find_layout_without_train_csv_names_the_file_and_dir(tmp_path):
    data = tmp_path / "data"
    write_kaggle_dataset(data, LABELS)
    (data / "train.csv").unlink()
    with pytest.raises(DatasetError) as info:
        find_layout(data)
    assert "train.csv" in str(info.value)
    assert str(data) in str(info.value)


def test_find_layout_on_a_missing_dir_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match=f"data dir {tmp_path / 'nowhere'} does not exist"):
        find_layout(tmp_path / "nowhere")


def test_an_unreadable_data_dir_is_one_error_naming_it(tmp_path, monkeypatch):
    # the tests run as root, whom a chmod does not stop: the refusal is simulated at the OS call
    real_scandir = os.scandir

    def refuse(path):
        if Path(path) == tmp_path:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(dataset.os, "scandir", refuse)
    with pytest.raises(DatasetError, match=f"cannot read {tmp_path}: Permission denied"):
        find_layout(tmp_path)


def test_find_layout_without_images_is_an_error(tmp_path):
    data = tmp_path / "data"
    write_kaggle_dataset(data, LABELS)
    for path in (data / KAGGLE_SUBDIR).iterdir():
        path.rename(path.with_name(path.name.replace("face-", "img-")))
    with pytest.raises(DatasetError) as info:
        find_layout(data)
    message = str(info.value)
    assert str(data / "train.csv") in message
    assert "face-" in message


# ---------------------------------------------------------------------------------------------
# read_labels


def test_read_labels_returns_ids_labels_and_csv_line_numbers(tmp_path):
    data = tmp_path / "data"
    write_kaggle_dataset(data, LABELS, latents=512)
    frame = read_labels(data / "train.csv")
    assert list(frame.columns) == ["id", "glasses", "row", "id_text"]
    assert frame["id"].tolist() == list(range(1, len(LABELS) + 1))
    assert frame["glasses"].tolist() == LABELS
    assert frame["row"].tolist() == list(range(2, len(LABELS) + 2))
    assert frame["id_text"].tolist() == [str(i) for i in range(1, len(LABELS) + 1)]
    assert all(np.issubdtype(frame[c].dtype, np.integer) for c in ("id", "glasses", "row"))


def test_read_labels_accepts_float_labels_and_padded_ids(tmp_path):
    data = tmp_path / "data"
    write_kaggle_dataset(data, LABELS)
    set_cell(data, 2, "glasses", "1.0")
    set_cell(data, 3, "glasses", "0.0")
    set_cell(data, 4, "id", " 3 ")
    frame = read_labels(data / "train.csv")
    assert frame["glasses"].tolist()[:3] == [1, 0, 1]
    assert frame["id"].tolist()[:3] == [1, 2, 3]


@pytest.mark.parametrize("header, newline, bom", [
    ("id,v1,glasses", "\n", ""),
    ("id, v1, glasses", "\n", ""),  # spaces after the commas
    (" id ,v1, glasses ", "\r\n", ""),
    ("id,v1,glasses", "\r\n", "\ufeff"),  # Excel's "CSV UTF-8": a BOM and CRLF
])
def test_read_labels_tolerates_header_spacing_crlf_and_bom(tmp_path, header, newline, bom):
    csv = tmp_path / "train.csv"
    lines = [header, "10,0.5,1", "11,-0.5,0", "12,0.1,1"]
    csv.write_text(bom + newline.join(lines) + newline, encoding="utf-8", newline="")
    frame = read_labels(csv)
    assert list(frame.columns) == ["id", "glasses", "row", "id_text"]
    assert frame["id"].tolist() == [10, 11, 12]
    assert frame["glasses"].tolist() == [1, 0, 1]
    assert frame["row"].tolist() == [2, 3, 4]


@pytest.mark.parametrize("dialect", CSV_DIALECTS)
def test_read_labels_reads_every_spreadsheet_dialect(tmp_path, dialect):
    data = write_odd_dataset(tmp_path / "data", dialect)
    frame = read_labels(data / "train.csv")
    assert frame["id"].tolist() == list(range(1, len(LABELS) + 1))
    assert frame["glasses"].tolist() == LABELS
    text = (data / "train.csv").read_bytes().decode("utf-16" if dialect.startswith("UTF-16") else "latin-1")
    lines = text.splitlines()
    for image_id, row in zip(frame["id"], frame["row"]):  # each row number is the line that holds the id
        assert re.split(r"[,;\t]", lines[row - 1])[0].strip('"') == str(image_id), (image_id, row)


def test_blank_lines_are_skipped_and_rows_keep_their_physical_line(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_text("id,glasses\n7,1\n\n,\n  \n8,0\n\n\n9,1\n\n")  # "," and "  ": rows with no value
    frame = read_labels(csv)
    assert frame["id"].tolist() == [7, 8, 9]
    assert frame["row"].tolist() == [2, 6, 9]


def test_latin_1_in_a_column_we_read_is_an_error_naming_the_row(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_bytes("id,name,glasses\n1,José,1\n2,Zoë,0\n3,x,1é\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"row 4: the glasses value '1\ufffd' is not valid utf-8 text"):
        read_labels(csv)


def test_a_utf_16_file_without_a_bom_is_an_error_saying_how_to_save_it(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_bytes("id,glasses\n1,1\n2,0\n".encode("utf-16-le"))
    with pytest.raises(DatasetError, match="row 1: the header holds NUL characters; save the file as CSV"):
        read_labels(csv)


@pytest.mark.parametrize("text, fragment", [
    (b"", "missing column 'id' (found no header)"),
    (b"id,glasses\n", "no rows below the header"),
    (b"id,glasses\n\n,\n\n", "no rows below the header"),
    (b"\x89PNG\r\n\x1a\nIHDR", "missing column 'id' (found '\ufffdPNG')"),
    (b"id,note,glasses\n1,x,1\n2," + b"x" * 200_000 + b",0\n", "row 3: field larger than field limit"),
    (b'id,note,glasses\n1,x,1\n2,"open,0\n3,x,1\n', "row 3: only 2 values, so no 'glasses'"),
])
def test_broken_csv_text_is_one_error_naming_the_file(tmp_path, text, fragment):
    csv = tmp_path / "train.csv"
    csv.write_bytes(text)
    with pytest.raises(DatasetError) as info:
        read_labels(csv)
    assert str(info.value).startswith(str(csv)) and fragment in str(info.value)


def test_a_csv_that_cannot_be_opened_is_one_error_naming_it(tmp_path, monkeypatch):
    csv = tmp_path / "train.csv"
    csv.write_text("id,glasses\n1,1\n2,0\n")

    def refuse(*args, **kwargs):  # the tests run as root, whom a chmod does not stop
        raise PermissionError(13, "Permission denied", str(csv))

    monkeypatch.setattr(dataset, "open", refuse, raising=False)
    with pytest.raises(DatasetError, match=f"cannot read {csv}: Permission denied"):
        read_labels(csv)


# ---------------------------------------------------------------------------------------------
# ids written with leading zeros


@pytest.mark.parametrize("image_name", ["face-007.png", "face-7.png"])
def test_an_id_with_leading_zeros_is_its_number_and_finds_either_image_name(kaggle, tmp_path, image_name):
    set_cell(kaggle, 8, "id", "007")
    (kaggle / KAGGLE_SUBDIR / "face-7.png").rename(kaggle / KAGGLE_SUBDIR / image_name)
    frame = read_labels(kaggle / "train.csv")
    assert frame.loc[6, ["id", "id_text", "row"]].tolist() == [7, "007", 8]
    found = organized_labels(organize(kaggle, tmp_path / "organized").dir)
    assert found[image_name] == LABELS[6] and len(found) == len(LABELS)


def test_the_image_named_as_written_wins_over_the_number(kaggle, tmp_path):
    set_cell(kaggle, 8, "id", "007")
    write_image(kaggle / KAGGLE_SUBDIR / "face-007.png", seed=70)
    assert "face-007.png" in organized_labels(organize(kaggle, tmp_path / "organized").dir)


def test_an_id_with_leading_zeros_and_no_image_names_both_spellings(kaggle):
    set_cell(kaggle, 8, "id", "007")
    (kaggle / KAGGLE_SUBDIR / "face-7.png").unlink()
    with pytest.raises(DatasetError, match=r"row 8: no image for id 7 .*face-007\.png/\.jpg/\.jpeg or face-7\.png"):
        organize(kaggle, kaggle.parent / "organized")


# ---------------------------------------------------------------------------------------------
# organize


@pytest.fixture
def kaggle(tmp_path) -> Path:
    data = tmp_path / "data"
    write_kaggle_dataset(data, LABELS)
    return data


def test_organize_counts_labels_and_ratio(kaggle, tmp_path):
    assert CLASSES == ("no_glasses", "glasses")  # index = label
    out = tmp_path / "work" / "organized"
    result = organize(kaggle, out)
    glasses, no_glasses = LABELS.count(1), LABELS.count(0)
    assert result == Organized(dir=out, labelled=len(LABELS), glasses=glasses, no_glasses=no_glasses,
                               ratio=round(glasses / no_glasses, 4))
    assert result.ratio == pytest.approx(1.6667)
    expected = {f"face-{i}.png": label for i, label in enumerate(LABELS, start=1)}
    assert organized_labels(out) == expected
    assert (out / "organized.json").is_file()
    assert sorted(p.name for p in out.iterdir()) == sorted([OUTPUT_MARKER, "glasses", "no_glasses", "organized.json"])
    assert temp_leftovers(tmp_path) == []


def test_organize_puts_each_image_in_glasses_iff_its_label_is_1(tmp_path):
    data = tmp_path / "data"
    rng = np.random.default_rng(7)
    labels = rng.permutation([1] * 17 + [0] * 10).tolist()
    write_kaggle_dataset(data, labels, latents=2)
    out = tmp_path / "organized"
    organize(data, out)
    csv = pd.read_csv(data / "train.csv").set_index("id")["glasses"]
    found = organized_labels(out)
    assert len(found) == len(labels)
    for name, label in found.items():
        image_id = int(name.removeprefix("face-").removesuffix(".png"))
        assert (label == 1) == (csv[image_id] == 1), name
        assert (out / FOLDER[label] / name).read_bytes() == (data / KAGGLE_SUBDIR / name).read_bytes()


def test_organize_leaves_out_test_csv_ids(kaggle, tmp_path):
    out = tmp_path / "organized"
    organize(kaggle, out)
    test_ids = pd.read_csv(kaggle / "test.csv")["id"].tolist()
    assert test_ids and all((kaggle / KAGGLE_SUBDIR / f"face-{i}.png").is_file() for i in test_ids)
    names = set(organized_labels(out))
    assert names.isdisjoint({f"face-{i}.png" for i in test_ids})
    assert len(names) == len(LABELS)


def test_organize_with_the_full_512_latent_columns(tmp_path):
    data = tmp_path / "data"
    write_kaggle_dataset(data, LABELS, latents=512)
    header = (data / "train.csv").read_text().splitlines()[0].split(",")
    assert header == ["id", *[f"v{k}" for k in range(1, 513)], "glasses"]
    result = organize(data, tmp_path / "organized")
    assert (result.labelled, result.glasses, result.no_glasses) == (32, 20, 12)


def test_organize_accepts_jpeg_grey_rgba_and_non_square_images(tmp_path):
    data = tmp_path / "data"
    image_dir = write_kaggle_dataset(data, [1, 0, 1, 0, 1, 0]) / KAGGLE_SUBDIR
    for path in image_dir.glob("face-[1-6].png"):
        path.unlink()
    write_image(image_dir / "face-1.jpg", size=(16, 16), seed=1)
    write_image(image_dir / "face-2.jpeg", size=(12, 20), seed=2)
    write_image(image_dir / "face-3.png", size=(8, 8), mode="L", seed=3)
    write_image(image_dir / "face-4.png", size=(32, 16), mode="RGBA", seed=4)
    write_image(image_dir / "face-5.JPG", size=(10, 30), mode="L", seed=5)
    write_image(image_dir / "face-6.png", size=(31, 9), seed=6)
    result = organize(data, tmp_path / "organized")
    assert (result.labelled, result.glasses, result.no_glasses) == (6, 3, 3)
    assert organized_labels(tmp_path / "organized") == {
        "face-1.jpg": 1, "face-2.jpeg": 0, "face-3.png": 1, "face-4.png": 0, "face-5.JPG": 1, "face-6.png": 0}


def test_organize_hard_links_on_the_same_filesystem(kaggle, tmp_path):
    out = tmp_path / "organized"
    organize(kaggle, out)
    for name, label in organized_labels(out).items():
        source = (kaggle / KAGGLE_SUBDIR / name).stat()
        target = (out / FOLDER[label] / name).stat()
        assert (target.st_dev, target.st_ino) == (source.st_dev, source.st_ino), name
        assert source.st_nlink >= 2


def test_organize_and_split_leave_the_source_byte_for_byte_unchanged(kaggle, tmp_path):
    before = snapshot(kaggle)
    organize(kaggle, tmp_path / "organized")
    split(tmp_path / "organized", tmp_path / "split", FRACTIONS, seed=3)
    read_manifest(tmp_path / "split", "train")
    assert snapshot(kaggle) == before


def test_organize_rerun_returns_the_same_result_without_rewriting(kaggle, tmp_path, monkeypatch):
    out = tmp_path / "organized"
    first = organize(kaggle, out)
    before = snapshot(out)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a re-run on an unchanged source re-read the labels")

    monkeypatch.setattr(dataset, "read_labels", must_not_run)
    second = organize(kaggle, out)
    assert second == first
    assert snapshot(out) == before  # organized.json's mtime included
    assert temp_leftovers(tmp_path) == []


def test_organize_rebuilds_when_the_labels_change(kaggle, tmp_path):
    out = tmp_path / "organized"
    organize(kaggle, out)

    set_cell(kaggle, 2, "glasses", "0")  # id 1 was glasses
    result = organize(kaggle, out)
    assert (result.glasses, result.no_glasses) == (LABELS.count(1) - 1, LABELS.count(0) + 1)
    assert organized_labels(out)["face-1.png"] == 0
    assert temp_leftovers(tmp_path) == []


def replace_image(path: Path, seed: int) -> None:
    """New pixels under the same name, with a new size or mtime, as an edited photo has."""
    before = path.stat()
    write_image(path, seed=seed, size=(24, 25))
    assert (path.stat().st_size, path.stat().st_mtime_ns) != (before.st_size, before.st_mtime_ns)


def test_organize_and_split_rebuild_when_an_image_is_replaced_under_an_unchanged_csv(kaggle, tmp_path):
    organize(kaggle, tmp_path / "organized")
    split(tmp_path / "organized", tmp_path / "split", FRACTIONS, seed=1)
    split_key = json.loads((tmp_path / "split" / "split.json").read_text())["key"]
    csv_before = snapshot(kaggle)["train.csv"]

    replace_image(kaggle / KAGGLE_SUBDIR / "face-3.png", seed=33)
    organize(kaggle, tmp_path / "organized")
    split(tmp_path / "organized", tmp_path / "split", FRACTIONS, seed=1)
    assert snapshot(kaggle)["train.csv"] == csv_before
    new_bytes = (kaggle / KAGGLE_SUBDIR / "face-3.png").read_bytes()
    assert (tmp_path / "organized" / "glasses" / "face-3.png").read_bytes() == new_bytes
    assert [p.read_bytes() for p in (tmp_path / "split").rglob("face-3.png")] == [new_bytes]
    assert json.loads((tmp_path / "split" / "split.json").read_text())["key"] != split_key


@pytest.mark.parametrize("dialect", CSV_DIALECTS)
def test_organize_accepts_every_spreadsheet_dialect_and_odd_images(tmp_path, dialect):
    data = write_odd_dataset(tmp_path / "data", dialect)
    before = snapshot(data)
    out = tmp_path / "organized"
    result = organize(data, out)
    assert (result.labelled, result.glasses, result.no_glasses) == (32, 20, 12)
    names = {i: f"face-{i}.{'jpg' if i == 2 else 'png'}" for i in range(1, 33)}
    assert organized_labels(out) == {names[i]: label for i, label in enumerate(LABELS, start=1)}
    assert snapshot(data) == before


def test_check_reports_classes_image_kinds_latents_and_the_split_and_writes_nothing(tmp_path, monkeypatch):
    data = write_odd_dataset(tmp_path / "data", "quoted header, CRLF, UTF-8 BOM")
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    report = dataset.check(data, FRACTIONS, seed=1337)
    assert snapshot(tmp_path) == before
    assert report.layout == find_layout(data) and report.layout.has_latents is False
    assert report.per_class == {"no_glasses": 12, "glasses": 20}
    assert report.kinds[0] == (("PNG", "RGB", 24, 24), 27)
    assert {kind for kind, count in report.kinds[1:]} == {
        ("PNG", "I;16", 24, 24), ("JPEG", "CMYK", 16, 16), ("PNG", "RGB", 2000, 50), ("PNG", "P", 24, 24),
        ("PNG", "LA", 24, 24)}
    assert report.split == {"train": {"no_glasses": 9, "glasses": 16}, "val": {"no_glasses": 1, "glasses": 2},
                            "test": {"no_glasses": 2, "glasses": 2}}
    assert (report.fractions, report.seed) == (FRACTIONS, 1337)


# test takes what the floors of train and val leave, so only those two can come out empty
@pytest.mark.parametrize("fractions, subset, size", [((0.8, 0.1, 0.1), "val", 0), ((0.9, 0.05, 0.05), "val", 0),
                                                     ((0.05, 0.5, 0.45), "train", 0)])
def test_a_class_too_small_for_the_split_is_an_error_before_anything_is_written(tmp_path, fractions, subset, size):
    data = tmp_path / "data"
    write_kaggle_dataset(data, [1] * 12 + [0] * 9)  # 9 no glasses: 0.1 of 9 floors to 0
    organize(data, tmp_path / "organized")
    shown = "/".join(f"{f:g}" for f in fractions)
    message = (f"class no_glasses has 9 images: the split {shown} gives {subset} {size}, need at least 1; "
               "add images or change data.fractions")
    with pytest.raises(DatasetError, match=re.escape(message)):
        dataset.check(data, fractions, seed=1)
    with pytest.raises(DatasetError, match=re.escape(message)):
        split(tmp_path / "organized", tmp_path / "split", fractions, seed=1)
    assert not (tmp_path / "split").exists()
    assert temp_leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# bad input: each a DatasetError naming the file and the row or value, nothing written anywhere


@pytest.fixture
def work(tmp_path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def assert_rejected(data: Path, work: Path, read_only, *fragments: str, data_dir: Path | None = None) -> str:
    """organize() on `data_dir` (default `data`) raises DatasetError naming each fragment, and
    nothing is written: `data` is byte for byte the same and the work dir stays empty."""
    read_only(data)
    before = snapshot(data)
    out = work / "organized"
    with pytest.raises(DatasetError) as info:
        organize(data if data_dir is None else data_dir, out)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "\n" not in message
    assert snapshot(data) == before, "the source directory changed"
    assert not out.exists()
    assert list(work.iterdir()) == [], "something was left in the work dir"
    assert temp_leftovers(data.parent) == []
    return message


@pytest.mark.parametrize("case", BAD_DATASETS)
def test_bad_dataset_is_rejected_naming_the_file_and_row(tmp_path, work, read_only, case):
    data_dir, fragments = write_bad_dataset(tmp_path / "data", case)
    assert_rejected(tmp_path / "data", work, read_only, *fragments, data_dir=data_dir)


@pytest.mark.parametrize("value", ["2", "yes", "-1", ""])
def test_bad_label_other_than_0_or_1(kaggle, work, read_only, value):
    set_cell(kaggle, 6, "glasses", value)
    assert_rejected(kaggle, work, read_only, str(kaggle / "train.csv"), "row 6", repr(value))


@pytest.mark.parametrize("label", [1, 0])
def test_bad_empty_class(tmp_path, work, read_only, label):
    data = tmp_path / "data"
    write_kaggle_dataset(data, [label] * 10)
    missing = 1 - label
    assert_rejected(data, work, read_only, str(data / "train.csv"), f"glasses={missing}", FOLDER[missing])


@pytest.mark.parametrize("value", ["../x", "-3", "1.5", "1e3", "", "x7", "0x10", "٣"])
def test_bad_id_not_a_plain_integer(kaggle, work, read_only, value):
    set_cell(kaggle, 5, "id", value)
    assert_rejected(kaggle, work, read_only, str(kaggle / "train.csv"), "row 5", repr(value))


@pytest.mark.parametrize("value", ["9223372036854775808", "99999999999999999999", "1" + "0" * 40])
def test_bad_id_beyond_int64_names_the_row_and_value(kaggle, work, read_only, value):
    set_cell(kaggle, 5, "id", value)
    assert_rejected(kaggle, work, read_only, str(kaggle / "train.csv"), "row 5", repr(value), "too large")


def test_the_largest_int64_id_is_accepted(kaggle, tmp_path):
    set_cell(kaggle, 5, "id", "9223372036854775807")
    (kaggle / KAGGLE_SUBDIR / "face-4.png").rename(kaggle / KAGGLE_SUBDIR / "face-9223372036854775807.png")
    assert "face-9223372036854775807.png" in organized_labels(organize(kaggle, tmp_path / "organized").dir)


def test_bad_image_over_the_pixel_limit_names_its_size_and_the_limit(kaggle, work, read_only, monkeypatch):
    monkeypatch.setattr(dataset, "MAX_IMAGE_PIXELS", 24 * 24 - 1)  # the images are 24x24
    bad = (kaggle / KAGGLE_SUBDIR / "face-1.png").resolve()
    assert_rejected(kaggle, work, read_only, str(bad), "24x24", "576 pixels", "limit of 575")


def test_the_pixel_limit_is_read_from_the_header_before_decoding(tmp_path, monkeypatch):
    bomb = write_png_header(tmp_path / "bomb.png", 9000, 9000)  # 81 M: under PIL's limit, over ours

    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoded an image over the limit")

    monkeypatch.setattr(ImageFile.ImageFile, "load", must_not_decode)  # every PNG/JPEG decodes through it
    with pytest.raises(DatasetError, match=r"9000x9000 is 81000000 pixels, more than the limit of 67108864"):
        dataset.check_image(bomb)  # the decoding check stops at the header


@pytest.mark.parametrize("errors", ["a cell", "a whole row"])
def test_blank_lines_keep_errors_on_the_physical_line(kaggle, work, read_only, errors):
    lines = (kaggle / "train.csv").read_text().splitlines()
    lines[5] = lines[5].replace("5,", "5x,", 1) if errors == "a cell" else lines[5] + ",1,2"
    # 3 blank lines and an empty spreadsheet row before the bad line, which is line 6 as written
    text = "\n".join(lines[:2] + ["", "", ",,,,,", ""] + lines[2:]) + "\n"
    (kaggle / "train.csv").write_text(text)
    assert_rejected(kaggle, work, read_only, str(kaggle / "train.csv"), "row 10")


def test_a_quoted_value_over_two_lines_counts_both(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_text('id,note,glasses\n1,"two\nlines",1\n2,x,0\nbad,x,1\n')
    with pytest.raises(DatasetError, match="row 5: id 'bad'"):
        read_labels(csv)


def test_bad_input_keeps_a_previous_good_result_intact(kaggle, tmp_path):
    out = tmp_path / "organized"
    organize(kaggle, out)
    before = snapshot(out)

    set_cell(kaggle, 3, "id", "1")
    with pytest.raises(DatasetError, match="duplicate id 1"):
        organize(kaggle, out)
    assert snapshot(out) == before
    assert temp_leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# stable_subsets: the split arithmetic


def _assign(count: int, fractions, seed: int, earlier=None) -> np.ndarray:
    names = [f"face-{i}" for i in range(1, count + 1)]
    found = stable_subsets({"glasses": names}, fractions, seed, earlier)
    return np.array([found[n] for n in names], dtype=int)


@pytest.mark.parametrize("glasses, no_glasses", [(2858, 1642), (2854, 1646)])
def test_stable_subsets_gives_the_reports_3599_449_452_of_4500(glasses, no_glasses):
    totals = np.zeros(3, dtype=int)
    for count in (glasses, no_glasses):
        sizes = np.bincount(_assign(count, FRACTIONS, seed=1337), minlength=3)
        assert sizes[0] == exact_floor(count, 0.8)
        assert sizes[1] == exact_floor(count, 0.1)
        assert sizes.sum() == count
        totals += sizes
    assert totals.tolist() == [3599, 449, 452]


@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.1), (0.7, 0.15, 0.15), (0.7, 0.2, 0.1),
                                       (0.6, 0.2, 0.2), (0.5, 0.25, 0.25), (0.9, 0.05, 0.05)])
def test_stable_subsets_floors_train_and_val_exactly(fractions):
    for count in [0, 1, 2, 7, 10, 90, 170, 333, 1000, 4321]:
        sizes = np.bincount(_assign(count, fractions, seed=0), minlength=3)
        expected_train, expected_val = exact_floor(count, fractions[0]), exact_floor(count, fractions[1])
        assert sizes.tolist() == [expected_train, expected_val, count - expected_train - expected_val], count


def test_stable_subsets_is_seeded():
    a = _assign(500, FRACTIONS, seed=5)
    assert np.array_equal(a, _assign(500, FRACTIONS, seed=5))
    assert not np.array_equal(a, _assign(500, FRACTIONS, seed=6))
    assert set(np.unique(a)) == {0, 1, 2}


@pytest.mark.parametrize("seed", [1337, 7])
def test_added_rows_never_move_an_old_one_and_the_fractions_hold(seed):
    """1,000 images, then 300 and 1,200 more, in two classes (29% / 71%): no old name changes
    subset, and per class each subset stays within one point of its fraction."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(2500) < 0.29).astype(int)
    names = [f"face-{i}" for i in range(1, 2501)]
    earlier: dict[str, int] = {}
    for upto in (1000, 1300, 2500):
        classes = {c: [n for n, label in zip(names[:upto], labels[:upto]) if label == k]
                   for k, c in enumerate(CLASSES)}
        found = stable_subsets(classes, FRACTIONS, seed, earlier)
        assert {n: found[n] for n in earlier} == earlier
        for members in classes.values():
            shares = np.bincount([found[n] for n in members], minlength=3) / len(members)
            assert np.all(np.abs(shares - np.array(FRACTIONS)) <= 0.01), (upto, shares)
        earlier = found


def test_a_label_that_changed_keeps_its_subset():
    first = stable_subsets({"glasses": ["a", "b", "c"], "no_glasses": ["d", "e"]}, FRACTIONS, 1)
    again = stable_subsets({"glasses": ["a", "b"], "no_glasses": ["c", "d", "e"]}, FRACTIONS, 1, first)
    assert again == first


# ---------------------------------------------------------------------------------------------
# split

GLASSES_N, NO_GLASSES_N = 47, 29  # floors matter: 47 -> 37/4/6, 29 -> 23/2/4


@pytest.fixture(scope="module")
def organized(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("organized-src")
    labels = np.random.default_rng(11).permutation([1] * GLASSES_N + [0] * NO_GLASSES_N).tolist()
    write_kaggle_dataset(root / "data", labels, latents=1)
    result = organize(root / "data", root / "organized")
    assert (result.glasses, result.no_glasses) == (GLASSES_N, NO_GLASSES_N)
    return root / "organized"


def test_split_sizes_floor_train_and_val(organized, tmp_path):
    result = split(organized, tmp_path / "split", FRACTIONS, seed=1)
    assert result == Split(dir=tmp_path / "split", train=37 + 23, val=4 + 2, test=6 + 4)
    for name, count in (("glasses", GLASSES_N), ("no_glasses", NO_GLASSES_N)):
        train = exact_floor(count, 0.8)
        val = exact_floor(count, 0.1)
        sizes = [len(list((tmp_path / "split" / s / name).iterdir())) for s in SUBSETS]
        assert sizes == [train, val, count - train - val], name


def test_split_is_stratified(organized, tmp_path):
    split(organized, tmp_path / "split", FRACTIONS, seed=2)
    overall = GLASSES_N / (GLASSES_N + NO_GLASSES_N)
    for subset in SUBSETS:
        glasses = len(list((tmp_path / "split" / subset / "glasses").iterdir()))
        no_glasses = len(list((tmp_path / "split" / subset / "no_glasses").iterdir()))
        assert glasses > 0 and no_glasses > 0
        assert abs(glasses / (glasses + no_glasses) - overall) < 0.1, subset


def test_split_is_disjoint_and_covers_every_image_in_its_class(organized, tmp_path):
    before = snapshot(organized)
    split(organized, tmp_path / "split", FRACTIONS, seed=3)
    assigned = split_labels(tmp_path / "split")
    assert {name: label for name, (_, label) in assigned.items()} == organized_labels(organized)
    for name, (subset, label) in assigned.items():
        target = (tmp_path / "split" / subset / FOLDER[label] / name).stat()
        assert target.st_ino == (organized / FOLDER[label] / name).stat().st_ino  # hard link
    assert snapshot(organized) == before
    assert temp_leftovers(tmp_path) == []


def test_split_is_deterministic_per_seed(organized, tmp_path):
    split(organized, tmp_path / "a", FRACTIONS, seed=4)
    split(organized, tmp_path / "b", FRACTIONS, seed=4)
    split(organized, tmp_path / "c", FRACTIONS, seed=5)
    a, b, c = (split_labels(tmp_path / x) for x in "abc")
    assert a == b
    assert a != c
    assert (tmp_path / "a" / "manifest.csv").read_bytes() == (tmp_path / "b" / "manifest.csv").read_bytes()


def test_split_rerun_does_no_work(organized, tmp_path, monkeypatch):
    out = tmp_path / "split"
    first = split(organized, out, FRACTIONS, seed=6)
    before = snapshot(out)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a re-run with the same inputs re-split")

    monkeypatch.setattr(dataset, "stable_subsets", must_not_run)
    assert split(organized, out, FRACTIONS, seed=6) == first
    assert snapshot(out) == before  # split.json's mtime included


def test_after_rows_are_added_every_old_image_keeps_its_subset(tmp_path):
    """A dataset grows from 60 to 100 labelled rows (the same ids and images, 40 new): organize
    and split again into the same folders; the 60 stay where they were, the 40 new are split by
    the fractions (per class, with the old ones, to the floored sizes)."""
    labels = np.random.default_rng(3).permutation([1] * 63 + [0] * 37).tolist()
    grown = write_kaggle_dataset(tmp_path / "grown", labels, size=(8, 8), latents=0, test_ids=0)
    first = tmp_path / "first"
    shutil.copytree(grown, first)
    frame = pd.read_csv(first / "train.csv")
    frame.iloc[:60].to_csv(first / "train.csv", index=False)
    for image_id in range(61, 101):
        (first / KAGGLE_SUBDIR / f"face-{image_id}.png").unlink()

    organize(first, tmp_path / "organized")
    split(tmp_path / "organized", tmp_path / "split", (0.6, 0.2, 0.2), seed=7)
    before = split_labels(tmp_path / "split")
    organize(grown, tmp_path / "organized")
    result = split(tmp_path / "organized", tmp_path / "split", (0.6, 0.2, 0.2), seed=7)
    after = split_labels(tmp_path / "split")
    assert len(before) == 60 and len(after) == 100
    assert {name: after[name] for name in before} == before
    for label, count in ((1, 63), (0, 37)):
        sizes = [sum(1 for subset, lab in after.values() if lab == label and subset == s) for s in SUBSETS]
        assert sizes == [exact_floor(count, 0.6), exact_floor(count, 0.2),
                         count - exact_floor(count, 0.6) - exact_floor(count, 0.2)], label
    achieved = json.loads((tmp_path / "split" / "split.json").read_text())
    assert achieved["kept"] == 60 and achieved["fractions"]["glasses"]["train"] == round(37 / 63, 4)
    assert result.train + result.val + result.test == 100


def test_split_redoes_the_split_when_the_seed_changes(organized, tmp_path):
    out = tmp_path / "split"
    split(organized, out, FRACTIONS, seed=7)
    first = split_labels(out)
    split(organized, out, FRACTIONS, seed=8)
    second = split_labels(out)
    assert first != second
    assert set(first) == set(second)
    assert temp_leftovers(tmp_path) == []


def test_manifest_agrees_with_the_folders(organized, tmp_path):
    out = tmp_path / "split"
    result = split(organized, out, FRACTIONS, seed=9)
    table = pd.read_csv(out / "manifest.csv")
    assert list(table.columns) == ["path", "label", "subset"]
    assert table["path"].is_unique
    on_disk = {f"{subset}/{FOLDER[label]}/{name}": (label, subset)
               for name, (subset, label) in split_labels(out).items()}
    in_manifest = {row.path: (row.label, row.subset) for row in table.itertuples()}
    assert in_manifest == on_disk
    counts = table["subset"].value_counts().to_dict()
    assert counts == {"train": result.train, "val": result.val, "test": result.test}


def test_read_manifest_returns_sorted_absolute_paths_and_labels(organized, tmp_path):
    out = tmp_path / "split"
    split(organized, out, FRACTIONS, seed=10)
    seen = set()
    for subset in SUBSETS:
        paths, labels = read_manifest(out, subset)
        assert paths == sorted(paths)
        assert len(paths) == len(labels) > 0
        for path, label in zip(paths, labels):
            assert os.path.isabs(path) and Path(path).is_file()
            assert Path(path).parent.name == FOLDER[label]
            assert Path(path).parent.parent.name == subset
            assert isinstance(label, int)
        seen.update(Path(p).name for p in paths)
    assert seen == set(organized_labels(organized))
