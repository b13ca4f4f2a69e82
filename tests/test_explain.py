"""`glasses explain` as a user runs it: one overlay PNG per image, in chunks; bad inputs end in one
line `error: ...` and exit code 1, with nothing written."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from glasses import saliency
from glasses.cli import app
from glasses.ensemble import average_ensemble, save_model
from glasses.model import ModelSpec, build_model
from tests.conftest import write_image

runner = CliRunner()


def assert_error(result, *fragments: str) -> None:
    """Exit 1 and one stderr line `error: ...` naming each fragment (no traceback)."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    keras.utils.set_random_seed(0)
    members = [build_model(ModelSpec(16, conv_layers=2, filters=(8, 8), pooling=("max", "avg")), name=f"m{i}",
                           compile=False) for i in range(2)]
    return save_model(average_ensemble(members, 16), tmp_path_factory.mktemp("model") / "ensemble.keras")


@pytest.fixture
def photos(tmp_path):
    """Three images of different kinds and sizes in a folder and a subfolder, and a text file."""
    folder = tmp_path / "photos"
    write_image(folder / "a.png", size=(40, 30), seed=1)
    write_image(folder / "b.jpg", size=(24, 24), seed=2)
    write_image(folder / "sub" / "a.png", size=(33, 50), mode="L", seed=3)
    (folder / "notes.txt").write_text("not an image, and not named like one: left alone")
    return folder


def test_explain_writes_one_overlay_per_image(model_path, photos, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["explain", str(photos), "--model", str(model_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.strip().splitlines()]
    assert [row[0] for row in rows] == [str(photos / "a.png"), str(photos / "b.jpg"), str(photos / "sub" / "a.png")]
    assert [row[3] for row in rows] == [str(out / name) for name in ("a.saliency.png", "b.saliency.png",
                                                                     "a-2.saliency.png")]
    assert sorted(p.name for p in out.iterdir()) == ["a-2.saliency.png", "a.saliency.png", "b.saliency.png"]
    model = keras.models.load_model(model_path)
    for path, probability, label, png in rows:
        with Image.open(png) as overlay:
            assert overlay.format == "PNG" and min(overlay.size) > 200
        image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)[None]
        assert float(probability) == pytest.approx(float(model(image, training=False)[0, 0]), abs=1e-4)
        assert label == ("glasses" if float(probability) >= 0.5 else "no_glasses")


def test_explain_keeps_a_bounded_number_of_images_in_memory(model_path, photos, tmp_path, monkeypatch):
    seen, explain = [], saliency.explain_arrays
    monkeypatch.setattr(saliency, "explain_arrays", lambda found, images, **kw: seen.append(len(images)) or
                        explain(found, images, **kw))
    files = sorted(p for p in photos.rglob("*") if p.suffix in (".png", ".jpg"))
    done = saliency.explain_files(saliency.load_explainer(model_path), files, tmp_path / "out", chunk=2)
    assert seen == [2, 1] and [path for path, _, _ in done] == files


@pytest.mark.parametrize("bad, fragments", [
    ("garbage-model", ["is not a Keras model", "not a zip archive"]),
    ("dense-model", ["has no convolutional layer", "Grad-CAM needs one"]),
    ("non-image", ["x.png: not an image", "pass PNG or JPEG files"]),
    ("missing", ["gone.png: no such file"]),
])
def test_bad_inputs_end_in_one_clear_error(model_path, photos, tmp_path, bad, fragments):
    model, inputs = model_path, [str(photos)]
    if bad == "garbage-model":
        (model := tmp_path / "ensemble.keras").write_text("not a model")
    elif bad == "dense-model":
        dense = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
                                  keras.layers.Dense(1, activation="sigmoid")])
        model = save_model(dense, tmp_path / "dense.keras")
    elif bad == "non-image":
        (photos / "x.png").write_text("a text file named like an image")
    else:
        inputs.append(str(photos / "gone.png"))
    out = tmp_path / "out"
    result = runner.invoke(app, ["explain", *inputs, "--model", str(model), "--out", str(out)])
    assert_error(result, *fragments)
    assert not out.exists()  # checked before anything was written


def test_an_overlay_never_overwrites_an_image(model_path, tmp_path):
    folder = tmp_path / "photos"
    write_image(folder / "a.png", size=(20, 20))
    write_image(folder / "a.saliency.png", size=(20, 20), seed=1)
    before = (folder / "a.saliency.png").read_bytes()
    result = runner.invoke(app, ["explain", str(folder), "--model", str(model_path), "--out", str(folder)])
    assert_error(result, "would overwrite an input image", "a.saliency.png")
    assert (folder / "a.saliency.png").read_bytes() == before
