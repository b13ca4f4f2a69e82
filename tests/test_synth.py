"""The built-in synthetic dataset: Kaggle layout, labels from latents, determinism, safe writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from glasses import synth
from glasses.dataset import IMAGE_SUBDIR, LATENT_COLUMNS, LATENT_DIM, face_file_name, find_layout, read_labels
from glasses.errors import DatasetError, SynthError
from glasses.synth import (
    GLASSES_FRACTION,
    face_params,
    label_axis,
    label_latents,
    label_threshold,
    mislabel_mask,
    plan,
    render_face,
    synthesize,
)

N = 40
RESOLUTION = 32
V_COLUMNS = list(LATENT_COLUMNS)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, synth.SynthResult]:
    out = tmp_path_factory.mktemp("synth") / "data"
    return out, synthesize(out, n=N, resolution=RESOLUTION, seed=1, workers=1)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_is_kaggles(tiny):
    out, result = tiny
    train, test = pd.read_csv(out / "train.csv"), pd.read_csv(out / "test.csv")
    assert list(train.columns) == ["id", *V_COLUMNS, "glasses"]
    assert list(test.columns) == ["id", *V_COLUMNS]
    assert train["id"].tolist() == list(range(1, N + 1))
    assert test["id"].tolist() == list(range(N + 1, N + 1 + result.test))
    assert set(train["glasses"]) <= {0, 1}
    images = sorted((out / IMAGE_SUBDIR).glob("face-*.png"))
    assert len(images) == N + result.test == N + N // 10
    for image_id in range(1, N + result.test + 1):
        with Image.open(out / IMAGE_SUBDIR / face_file_name(image_id)) as image:
            assert image.format == "PNG" and image.mode == "RGB"
            assert image.size == (RESOLUTION, RESOLUTION)


def test_dataset_reads_what_synth_writes(tiny):
    out, result = tiny
    layout = find_layout(out)
    assert layout.image_dir == (out / IMAGE_SUBDIR).resolve() and layout.has_latents
    labels = read_labels(layout.csv)
    assert (len(labels), int(labels["glasses"].sum())) == (result.train, result.glasses)


def test_result_counts_match_files(tiny):
    out, result = tiny
    labels = pd.read_csv(out / "train.csv")["glasses"]
    assert (result.out_dir, result.train, result.test) == (out, N, N // 10)
    assert (result.glasses, result.no_glasses) == (int(labels.sum()), int(N - labels.sum()))
    assert result.mislabelled == round(0.04 * N)
    assert result.seconds > 0


def test_labels_are_a_linear_rule_on_the_csv_latents(tiny):
    out, _ = tiny
    train = pd.read_csv(out / "train.csv")
    scores = train[V_COLUMNS].to_numpy() @ label_axis()
    assert np.array_equal((scores > label_threshold()).astype(int), train["glasses"].to_numpy())


def test_same_seed_same_bytes_whatever_the_workers(tiny, tmp_path):
    out, _ = tiny
    again = tmp_path / "again"
    synthesize(again, n=N, resolution=RESOLUTION, seed=1, workers=2)
    assert _files(again) == _files(out)


def test_other_seed_other_data(tiny, tmp_path):
    out, _ = tiny
    other = tmp_path / "other"
    synthesize(other, n=N, resolution=RESOLUTION, seed=2, workers=1)
    assert (other / "train.csv").read_bytes() != (out / "train.csv").read_bytes()
    face = Path(IMAGE_SUBDIR, face_file_name(1))
    assert (other / face).read_bytes() != (out / face).read_bytes()


def test_class_ratio_is_the_real_datas():
    z = np.random.default_rng(0).standard_normal((20000, LATENT_DIM))
    assert abs(label_latents(z).mean() - GLASSES_FRACTION) < 0.015
    small = plan(400, seed=5)
    assert 0.55 < small.labels[:400].mean() < 0.72


def test_label_axis_does_not_depend_on_the_dataset_seed():
    axis = label_axis()
    assert axis.shape == (LATENT_DIM,) and np.isclose(np.linalg.norm(axis), 1.0)
    assert np.array_equal(plan(30, seed=1).labels, label_latents(plan(30, seed=1).latents))


def test_about_four_percent_are_drawn_against_their_label():
    assert mislabel_mask(5000, seed=3).sum() == 200
    assert not np.array_equal(mislabel_mask(500, seed=3), mislabel_mask(500, seed=4))
    p = plan(400, seed=3)
    assert p.mislabelled[:400].sum() == 16
    assert np.array_equal(p.drawn, p.labels.astype(bool) ^ p.mislabelled)


def test_glasses_change_only_part_of_the_face():
    z = plan(6, seed=9).latents
    for row in z:
        bare = np.asarray(render_face(row, False, 64), dtype=int)
        worn = np.asarray(render_face(row, True, 64), dtype=int)
        changed = np.any(bare != worn, axis=-1).mean()
        assert 0.01 < changed < 0.3


def test_hard_cases_come_with_either_label():
    """Faint frames are a share of the glasses; eye rings and noise are drawn from the face alone."""
    p = plan(1500, seed=11)
    worn = [face_params(z, True) for z in p.latents[:1500]]
    faint = np.array([f.glasses.opacity < 1 for f in worn])
    assert abs(faint.mean() - synth.FAINT_FRACTION) < 0.04
    assert all(synth.FAINT_OPACITY[0] <= f.glasses.opacity <= synth.FAINT_OPACITY[1] for f in np.array(worn)[faint])
    rings = np.array([f.features.rings > 0 for f in worn])
    noise = np.array([f.scene.noise for f in worn])
    for label in (0, 1):
        assert abs(rings[p.labels[:1500] == label].mean() - synth.RING_FRACTION) < 0.05
        assert abs(noise[p.labels[:1500] == label].mean() - synth.MAX_NOISE / 2) < 1.0
    bare = face_params(p.latents[0], False)
    assert (bare.scene, bare.head, bare.features) == (worn[0].scene, worn[0].head, worn[0].features)


def test_faint_frames_change_the_face_less_than_plain_ones():
    p = plan(200, seed=12)
    change = {True: [], False: []}
    for z in p.latents[:200]:
        spec = face_params(z, True).glasses
        if len(change[spec.opacity < 1]) < 5:
            diff = np.abs(np.asarray(render_face(z, True, 64), float) - np.asarray(render_face(z, False, 64), float))
            change[spec.opacity < 1].append(diff.sum())
    assert len(change[True]) == len(change[False]) == 5
    assert np.median(change[True]) < 0.5 * np.median(change[False])


def test_rerun_with_same_parameters_does_nothing(tiny):
    out, first = tiny
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    result = synthesize(out, n=N, resolution=RESOLUTION, seed=1)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps
    assert (result.train, result.test, result.glasses, result.mislabelled) == (
        first.train, first.test, first.glasses, first.mislabelled)


def test_refuses_a_foreign_directory(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SynthError, match=str(out)) as caught:
        synthesize(out, n=N, resolution=RESOLUTION)
    assert isinstance(caught.value, DatasetError)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_refuses_a_synth_output_of_other_parameters(tiny):
    out, _ = tiny
    with pytest.raises(SynthError, match="not a complete synthetic dataset"):
        synthesize(out, n=N, resolution=RESOLUTION, seed=2)


def test_refuses_an_incomplete_output(tmp_path):
    out = tmp_path / "data"
    synthesize(out, n=N, resolution=RESOLUTION, seed=1, workers=1)
    (out / IMAGE_SUBDIR / face_file_name(3)).unlink()
    with pytest.raises(SynthError):
        synthesize(out, n=N, resolution=RESOLUTION, seed=1)


def test_fills_an_empty_directory_and_leaves_no_temporaries(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    synthesize(out, n=N, resolution=RESOLUTION, seed=1, workers=1)
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
    assert (out / "synth.json").is_file()


def test_a_failed_run_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(synth, "_render_all", broken)
    with pytest.raises(OSError, match="disk full"):
        synthesize(tmp_path / "data", n=N, resolution=RESOLUTION)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("theirs, wins", [("same", True), ("foreign", False)])
def test_a_lost_race_returns_the_winners_dataset_if_it_is_the_same(tmp_path, monkeypatch, theirs, wins):
    out = tmp_path / "data"
    write = synth._write_dataset

    def racing(root, *args):
        manifest = write(root, *args)
        # another writer finishes first, with the same dataset or with something else
        if theirs == "same":
            shutil.copytree(root, out)
        else:
            out.mkdir()
            (out / "notes.txt").write_text("x")
        return manifest

    monkeypatch.setattr(synth, "_write_dataset", racing)
    if wins:
        result = synthesize(out, n=N, resolution=RESOLUTION, seed=1, workers=1)
        assert (result.out_dir, result.train) == (out, N) and (out / "synth.json").is_file()
    else:
        with pytest.raises(SynthError, match="could not move"):
            synthesize(out, n=N, resolution=RESOLUTION, seed=1, workers=1)
        assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"resolution": 4}, {"seed": -1}])
def test_rejects_bad_sizes(tmp_path, kwargs):
    with pytest.raises(SynthError, match="need n >= 1"):
        synthesize(tmp_path / "data", **{"n": N, "resolution": RESOLUTION, **kwargs})


def test_grey_is_the_same_faces_in_one_channel_and_deterministic(tiny, tmp_path):
    out, first = tiny
    grey = synthesize(tmp_path / "grey", n=N, resolution=RESOLUTION, seed=1, workers=2, grey=True)
    again = synthesize(tmp_path / "again", n=N, resolution=RESOLUTION, seed=1, workers=1, grey=True)
    assert _files(grey.out_dir) == _files(again.out_dir)
    assert (grey.train, grey.test, grey.glasses) == (first.train, first.test, first.glasses)
    assert (grey.out_dir / "train.csv").read_bytes() == (out / "train.csv").read_bytes()
    for image_id in (1, N + 1):
        face = Path(IMAGE_SUBDIR, face_file_name(image_id))
        with Image.open(grey.out_dir / face) as image, Image.open(out / face) as colour:
            assert (image.format, image.mode, image.size) == ("PNG", "L", (RESOLUTION, RESOLUTION))
            assert np.array_equal(np.asarray(image), np.asarray(colour.convert("L")))
    assert find_layout(grey.out_dir).has_latents


def test_grey_and_colour_never_stand_in_for_each_other(tiny, tmp_path):
    out, _ = tiny
    with pytest.raises(SynthError, match="'grey': True"):
        synthesize(out, n=N, resolution=RESOLUTION, seed=1, grey=True)
    grey = tmp_path / "grey"
    synthesize(grey, n=N, resolution=RESOLUTION, seed=1, workers=1, grey=True)
    with pytest.raises(SynthError, match="'grey': False"):
        synthesize(grey, n=N, resolution=RESOLUTION, seed=1)
    stamps = {p: p.stat().st_mtime_ns for p in grey.rglob("*")}
    assert synthesize(grey, n=N, resolution=RESOLUTION, seed=1, grey=True).train == N
    assert {p: p.stat().st_mtime_ns for p in grey.rglob("*")} == stamps


def test_an_output_from_before_grey_existed_counts_as_colour(tmp_path):
    out = tmp_path / "data"
    synthesize(out, n=N, resolution=RESOLUTION, seed=1, workers=1)
    manifest = json.loads((out / "synth.json").read_text())
    del manifest["grey"]
    (out / "synth.json").write_text(json.dumps(manifest))
    assert synthesize(out, n=N, resolution=RESOLUTION, seed=1).train == N
    with pytest.raises(SynthError, match="not a complete synthetic dataset"):
        synthesize(out, n=N, resolution=RESOLUTION, seed=1, grey=True)
