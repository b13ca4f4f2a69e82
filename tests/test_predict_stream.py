"""`glasses predict` and `glasses evaluate` in bounded memory: images decoded one at a time and
resized to the model's input at once, predicted a batch at a time, each batch printed as soon as
it is predicted, in input order, with the probabilities of the model run on the whole images.
"""

from __future__ import annotations

import io
import json
import sys
import tracemalloc

import keras
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from glasses import evaluate
from glasses.cli import app
from glasses.dataset import MAX_IMAGE_PIXELS
from glasses.ensemble import average_ensemble, save_model
from glasses.errors import DatasetError
from glasses.evaluate import (PREDICT_BATCH, READ_THREADS, iter_predictions, metrics, model_input_size,
                              predict_arrays, predict_files)
from glasses.inputs import read_rgb
from glasses.model import ModelSpec, build_model
from glasses.progress import ProgressBar
from tests.conftest import write_image, write_png_header

runner = CliRunner()
SIZE = 16  # the tiny ensemble's input size


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """An ensemble of two tiny CNNs behind the shipped Resizing input, saved as `glasses run` saves it."""
    keras.utils.set_random_seed(0)
    members = [build_model(ModelSpec(image_size=SIZE, conv_layers=1, filters=(8,), pooling=("max",)),
                           name=f"m{i}", compile=False) for i in range(2)]
    return save_model(average_ensemble(members, SIZE), tmp_path_factory.mktemp("model") / "ensemble.keras")


@pytest.fixture(scope="module")
def network(model_path):
    return keras.models.load_model(model_path)


def photos(folder, count: int, sizes=((24, 24), (40, 30), (13, 77))) -> list:
    """`count` images, PNG and JPEG, of a few sizes (width, height), named in sorted order."""
    return [write_image(folder / f"img-{i:03d}.{'png' if i % 3 else 'jpg'}", size=sizes[i % len(sizes)], seed=i)
            for i in range(count)]


def whole(network, paths) -> np.ndarray:
    """The non-streamed probabilities: whole decoded images into the model, its own Resizing layer."""
    return predict_arrays(network, [read_rgb(p) for p in paths])


def printed(result) -> list[tuple[str, float, str]]:
    return [(path, float(p), label) for path, p, label in (line.split("\t") for line in result.stdout.splitlines())]


def test_the_input_size_is_read_from_the_model(network):
    assert model_input_size(network) == (SIZE, SIZE)
    fixed = keras.Sequential([keras.Input((20, 30, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1)])
    assert model_input_size(fixed) == (20, 30)
    first = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Resizing(12, 10, interpolation="nearest"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1)])
    assert model_input_size(first) == (12, 10)
    for other in (keras.layers.Resizing(12, 12, interpolation="bilinear"), keras.layers.Rescaling(1 / 255)):
        model = keras.Sequential([keras.Input((None, None, 3)), other, keras.layers.GlobalAveragePooling2D()])
        assert model_input_size(model) is None  # its pixels cannot be picked before it: images go in whole


def test_many_images_stream_in_order_batch_by_batch_with_the_whole_images_probabilities(network, tmp_path,
                                                                                           monkeypatch):
    paths = photos(tmp_path, 21)
    read, yielded = [], []
    original = evaluate.read_rgb
    monkeypatch.setattr(evaluate, "read_rgb", lambda p: read.append(p) or original(p))
    stream = iter_predictions(network, paths, batch_size=4, threads=2)
    for batch in stream:
        yielded.append(batch)
        # streamed: a batch comes out before the files after it (beyond the read-ahead) are read
        assert len(read) <= 4 * len(yielded) + 2
    assert [len(b) for b in yielded] == [4, 4, 4, 4, 4, 1]
    assert [path for b in yielded for path, _ in b] == paths
    streamed = np.array([p for b in yielded for _, p in b])
    np.testing.assert_allclose(streamed, whole(network, paths), atol=1e-5)
    assert len({round(p, 6) for p in streamed}) > 3  # the probabilities differ: a wrong order would show


@pytest.mark.parametrize("count", [PREDICT_BATCH - 1, PREDICT_BATCH, PREDICT_BATCH + 1])
def test_predict_prints_every_image_across_a_batch_boundary(model_path, network, tmp_path, count):
    paths = photos(tmp_path, count)
    result = runner.invoke(app, ["predict", str(tmp_path), "--model", str(model_path)])
    assert result.exit_code == 0, result.output
    lines = printed(result)
    assert [path for path, _, _ in lines] == [str(p) for p in paths]
    np.testing.assert_allclose([p for _, p, _ in lines], whole(network, paths), atol=1e-4)  # printed to 4 decimals
    assert all(label == ("glasses" if p >= 0.5 else "no_glasses") for _, p, label in lines)
    assert result.stderr == ""  # no progress bar when stderr is no terminal


def test_predict_prints_the_first_batch_before_it_reads_past_it(model_path, tmp_path, monkeypatch):
    """The command prints each batch as it is predicted: the images after the first batch and the
    read-ahead are decoded only once the first batch's lines are out."""
    paths = photos(tmp_path, PREDICT_BATCH + READ_THREADS + 2)
    lines_at_read = {}
    original = evaluate.read_rgb

    def reading(path):
        sys.stdout.flush()
        lines_at_read[path] = sys.stdout.buffer.getvalue().count(b"\n")
        return original(path)

    monkeypatch.setattr(evaluate, "read_rgb", reading)
    result = runner.invoke(app, ["predict", str(tmp_path), "--model", str(model_path)])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == len(paths)
    assert all(lines_at_read[p] == 0 for p in paths[:PREDICT_BATCH])
    assert all(lines_at_read[p] >= PREDICT_BATCH for p in paths[PREDICT_BATCH + READ_THREADS - 1:])


def test_large_photos_give_the_probabilities_of_copies_resized_beforehand(network, tmp_path):
    import tensorflow as tf

    rng = np.random.default_rng(1)
    big, small = [], []
    for i, (name, shape) in enumerate([("a.jpg", (1500, 2000)), ("b.png", (2000, 1500)), ("c.jpg", (1501, 1999))]):
        pixels = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / name, quality=90)
        big.append(tmp_path / name)
        # the copy: TensorFlow's own nearest resize of the decoded photo, saved losslessly
        resized = tf.image.resize(read_rgb(tmp_path / name), (SIZE, SIZE), method="nearest").numpy()
        Image.fromarray(resized.astype(np.uint8)).save(tmp_path / f"small-{i}.png")
        small.append(tmp_path / f"small-{i}.png")
    streamed = [p for _, p in predict_files(network, big)]
    np.testing.assert_allclose(streamed, [p for _, p in predict_files(network, small)], atol=1e-5)
    np.testing.assert_allclose(streamed, whole(network, big), atol=1e-5)


def test_memory_holds_the_read_ahead_of_full_size_images_not_the_batch(network, tmp_path):
    """numpy's and Python's allocations (which tracemalloc sees): the full-size decodes of the
    read-ahead only, where stacking the batch's 12 whole images as float32, as before, took
    12 x 4 x 3 MB. One decode peaks at twice the image (PIL hands numpy a bytes copy)."""
    paths = [tmp_path / f"p{i:02d}.jpg" for i in range(12)]
    rng = np.random.default_rng(2)
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (1000, 1000, 3), dtype=np.uint8)).save(path, quality=80)
    one_image = 1000 * 1000 * 3
    list(iter_predictions(network, paths[:1]))  # the model's first call traces outside the measurement
    tracemalloc.start()
    try:
        batches = list(iter_predictions(network, paths, batch_size=12, threads=2))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(map(len, batches)) == 12
    assert peak < (2 * 2 + 1) * one_image, f"peak {peak / 1e6:.1f} MB of numpy arrays"


def test_an_image_over_the_pixel_limit_is_skipped_with_the_limit_named(model_path, tmp_path):
    folder = tmp_path / "photos"
    write_image(folder / "a.png", seed=1)
    side = int(MAX_IMAGE_PIXELS ** 0.5) + 8  # a real bomb: a few kB of PNG, 200 MB as RGB
    Image.new("L", (side, side)).save(folder / "b_bomb.png")
    write_png_header(folder / "c_header.png", 100_000, 100_000)  # 30 GB as RGB: PIL's own limit first
    write_image(folder / "d.jpg", seed=2)
    assert (folder / "b_bomb.png").stat().st_size < 1_000_000
    result = runner.invoke(app, ["predict", str(folder), "--model", str(model_path)])
    assert result.exit_code == 0, result.output
    assert [p.rsplit("/", 1)[1] for p, _, _ in printed(result)] == ["a.png", "d.jpg"]
    skipped = result.stderr.splitlines()
    assert len(skipped) == 2 and all(line.startswith("skipped ") for line in skipped), result.stderr
    assert skipped[0].startswith(f"skipped {folder / 'b_bomb.png'}: {side}x{side} is {side * side} pixels, more "
                                 f"than the limit of {MAX_IMAGE_PIXELS}")
    assert skipped[1].startswith(f"skipped {folder / 'c_header.png'}: too large to decode")
    assert f"at most {MAX_IMAGE_PIXELS} pixels" in skipped[1]


def test_without_a_skip_callback_an_unreadable_image_raises(network, tmp_path):
    write_png_header(tmp_path / "bomb.png", 9000, 9000)
    with pytest.raises(DatasetError, match="more than the limit"):
        list(iter_predictions(network, [tmp_path / "bomb.png"]))


def test_a_model_that_takes_whole_images_gets_them_whole(tmp_path):
    """No Resizing layer on the input: nothing is resized, and a batch of different sizes is
    predicted a shape at a time, in input order."""
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Conv2D(4, 3), keras.layers.GlobalMaxPooling2D(),
                              keras.layers.Dense(1, activation="sigmoid")])
    paths = photos(tmp_path, 7)
    streamed = [p for _, p in predict_files(model, paths, batch_size=3)]
    expected = [float(model.predict(read_rgb(p)[None].astype("float32"), verbose=0)[0, 0]) for p in paths]
    np.testing.assert_allclose(streamed, expected, atol=1e-5)


def test_evaluate_streams_to_the_metrics_of_the_whole_images(model_path, network, tmp_path):
    root = tmp_path / "data"
    labelled = [(write_image(root / name / f"{name}-{i}.png", size=(30 + i, 24), bar=name == "glasses", seed=i), label)
                for label, name in enumerate(["no_glasses", "glasses"]) for i in range(PREDICT_BATCH // 2 + 3)]
    (root / "glasses" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    result = runner.invoke(app, ["evaluate", "--data-dir", str(root), "--model", str(model_path)])
    assert result.exit_code == 0, result.output
    expected = metrics(whole(network, [p for p, _ in labelled]), [label for _, label in labelled])
    assert json.loads(result.stdout) == {**expected, "skipped": 1}
    assert result.stderr.startswith(f"skipped {root / 'glasses' / 'corrupt.png'}: ")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_draws_only_on_a_terminal_and_steps_aside_for_lines(capsys):
    screen = Terminal()
    with ProgressBar(10, "predicting", stream=screen) as bar:
        bar.advance(3)
        assert screen.getvalue().endswith("\x1b[K") and "3/10" in bar.text() and "30%" in bar.text()
        with bar.aside():
            print("a line")
        assert screen.getvalue().count("\r\x1b[K") == 1  # erased once for the line, then drawn again
        bar.advance(7)
    assert screen.getvalue().endswith("\r\x1b[K")  # closed: nothing left on the terminal's line
    assert capsys.readouterr().out == "a line\n"
    pipe = io.StringIO()
    with ProgressBar(10, "predicting", stream=pipe) as bar:
        bar.advance(10)
    assert pipe.getvalue() == ""
