"""Saliency maps (glasses.saliency): where a model looks, for made-up and tiny trained models, an
ensemble against its members, every network of the search space and plain Keras models; the
glasses' boxes that `glasses synth` records; a run's saliency analyses and their report section.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from glasses import saliency, synth
from glasses.dataset import BOXES, DatasetError, face_id, read_boxes
from glasses.ensemble import average_ensemble, save_model, single_model
from glasses.model import ModelSpec, build_model
from glasses.report import saliency_lines
from glasses.saliency import SaliencyError

QUADRANTS = {"top-left": (slice(0, 16), slice(0, 16)), "bottom-right": (slice(16, 32), slice(16, 32))}


def quadrant_model(quadrant: str):
    """A made-up model that sees only one 16x16 quadrant of a 32x32 image: the rest is cropped
    away and padded back with zeros before its convolutions (positive weights, no biases, so its
    evidence is where the quadrant's pixels are)."""
    top = 0 if quadrant == "top-left" else 16
    keep = ((top, 16 - top), (top, 16 - top))  # rows, columns cropped (before, after)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Cropping2D(keep)(x)
    x = keras.layers.ZeroPadding2D(keep)(x)
    positive = keras.initializers.Constant(0.05)
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, kernel_initializer=positive, activation="relu")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, kernel_initializer=positive, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", kernel_initializer="ones")(x)
    return keras.Model(inputs, outputs, name=f"sees_{quadrant.replace('-', '_')}")


def random_images(count: int, shape: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(count)]


@pytest.mark.parametrize("method", saliency.METHODS)
@pytest.mark.parametrize("quadrant", QUADRANTS)
def test_a_model_that_sees_one_quadrant_puts_its_mass_there(quadrant, method):
    found = saliency.explain_arrays(saliency.explainer(quadrant_model(quadrant), method), random_images(4, (32, 32)))
    rows, cols = QUADRANTS[quadrant]
    for each in found:
        assert each.combined.shape == (32, 32)
        assert each.combined.sum() == pytest.approx(1.0, abs=1e-4)
        assert each.combined[rows, cols].sum() > 0.8  # a quarter of the image holds most of the mass
        assert 0.0 <= each.probability <= 1.0


def test_images_of_another_size_are_resized_to_a_fixed_input_and_mapped_back():
    """A plain model with a fixed input size takes a 64x48 image resized (nearest) to 32x32; the
    map comes back at the image's own size, its mass still in the same quadrant."""
    found = saliency.explain_arrays(saliency.explainer(quadrant_model("top-left")), random_images(2, (64, 48)))
    assert [f.combined.shape for f in found] == [(64, 48), (64, 48)]
    assert all(f.combined[:32, :24].sum() > 0.8 for f in found)


def corner_data(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """24x24 noise; every other image has a bright 5x5 patch in its top-left corner (label 1)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 120, (count, 24, 24, 3)).astype("float32")
    labels = (np.arange(count) % 2).astype("float32")
    for i in np.flatnonzero(labels):
        row, col = rng.integers(1, 6, 2)
        images[i, row:row + 5, col:col + 5] = 255
    return images, labels


def test_a_trained_model_looks_at_the_bright_corner_that_makes_the_label():
    keras.utils.set_random_seed(3)
    images, labels = corner_data(192, seed=3)
    inputs = keras.Input((24, 24, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    model.fit(images, labels, epochs=8, batch_size=32, verbose=0)
    assert model.evaluate(images, labels, verbose=0)[1] > 0.95  # it learned the patch
    patched = [image.astype(np.uint8) for image in images[labels == 1][:16]]
    found = saliency.explain_arrays(saliency.explainer(model), patched)
    shares = [each.combined[:12, :12].sum() for each in found]
    assert np.mean(shares) > 0.6, shares  # the quadrant is a quarter of the image


def report_network(name: str, size: int = 24, seed: int = 0):
    keras.utils.set_random_seed(seed)
    return build_model(ModelSpec(size, conv_layers=2), name=name, compile=False)


def test_the_ensemble_of_identical_members_maps_as_one_member(tmp_path):
    first = report_network("member_0")
    twin = report_network("member_1", seed=1)
    twin.set_weights(first.get_weights())
    ensemble = save_model(average_ensemble([first, twin], 24), tmp_path / "ensemble.keras")
    single = single_model(first, 24)
    images = random_images(3, (40, 30), seed=1)
    for method in saliency.METHODS:
        together = saliency.explain_arrays(saliency.load_explainer(ensemble, method), images)
        alone = saliency.explain_arrays(saliency.explainer(single, method), images)
        assert any(each.combined.sum() > 0.99 for each in alone)  # not zeros against zeros
        for mixed, one in zip(together, alone):
            assert mixed.combined.shape == (40, 30)
            np.testing.assert_allclose(mixed.combined, one.combined, atol=1e-6)
            np.testing.assert_allclose(mixed.networks[0], mixed.networks[1], atol=1e-6)
            assert mixed.probability == pytest.approx(one.probability, abs=1e-6)


def test_members_count_as_often_as_the_ensemble_counts_them(tmp_path):
    """Greedy's weights: a member entered twice in the Average counts twice in the map."""
    members = [report_network("member_0", seed=0), report_network("member_1", seed=5)]
    path = save_model(average_ensemble(members, 24, [2, 1]), tmp_path / "greedy.keras")
    found = saliency.load_explainer(path, "layercam")
    assert [(n.name, n.weight, n.layer) for n in found.networks] == [("member_0", 2, "conv_1"),
                                                                     ("member_1", 1, "conv_1")]
    each = saliency.explain_arrays(found, random_images(1, (24, 24), seed=2))[0]
    expected = saliency.normalise((2 * each.networks[0] + each.networks[1])[None] / 3)[0]
    np.testing.assert_allclose(each.combined, expected, atol=1e-6)


SPACE = [(1, ("max",), "max"), (2, ("avg", "max"), "avg"), (3, ("max", "avg", "avg"), "max"),
         (4, ("avg",) * 4, "avg"), (5, ("max",) * 5, "max"), (5, ("avg", "max", "avg", "max", "avg"), "avg")]


@pytest.mark.parametrize("size", [16, 32])
@pytest.mark.parametrize("layers, pooling, global_pooling", SPACE)
def test_every_network_of_the_search_space_has_maps(layers, pooling, global_pooling, size):
    spec = ModelSpec(size, conv_layers=layers, filters=(8,) * layers, pooling=pooling, global_pooling=global_pooling)
    found = saliency.explainer(single_model(build_model(spec, name="member", compile=False), size))
    network = found.networks[0]
    # the last conv layer whose grid is at least 8x8 (a 2x2 or 4x4 map cannot place glasses), else the first
    grid = {i: size // 2 ** i for i in range(layers)}
    expected = max([i for i in range(layers) if grid[i] >= 8], default=0)
    assert (network.layer, network.grid) == (f"conv_{expected}", (grid[expected], grid[expected]))
    for each in saliency.explain_arrays(found, random_images(2, (37, 29))):
        assert each.combined.shape == (37, 29) and np.isfinite(each.combined).all()
        assert each.combined.min() >= 0
        assert each.combined.sum() == pytest.approx(1.0, abs=1e-4) or each.combined.sum() == 0


def test_a_plain_sequential_model_of_any_input_size():
    model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.MaxPooling2D(),
                              keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(1, activation="sigmoid")])
    found = saliency.explainer(model)
    assert found.input_size is None and found.networks[0].logit is model.layers[-1]
    each = saliency.explain_arrays(found, random_images(1, (45, 33)))[0]
    assert each.combined.shape == (45, 33)
    assert each.probability == pytest.approx(float(model(np.asarray(random_images(1, (45, 33)), "float32"))[0, 0]),
                                             abs=1e-5)


@pytest.mark.parametrize("build, fragments", [
    (lambda: keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(1)]),
     ["no convolutional layer"]),
    (lambda: keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3), keras.layers.Flatten(),
                               keras.layers.Dense(3)]),
     ["gives (None, 3)", "one probability"]),
    (lambda: keras.Sequential([keras.Input((2, 2, 3)), keras.layers.Conv2D(2, 2), keras.layers.Flatten(),
                               keras.layers.Dense(1, activation="sigmoid")]),
     ["1x1 grid", "uniform"]),
])
def test_a_model_saliency_cannot_read_says_why(build, fragments):
    with pytest.raises(SaliencyError) as error:
        saliency.explainer(build())
    for fragment in fragments:
        assert fragment in str(error.value)


def test_min_grid_one_takes_the_last_convolutional_layer():
    model = single_model(build_model(ModelSpec(32, conv_layers=5, filters=(8,) * 5), name="member", compile=False), 32)
    assert [n.layer for n in saliency.explainer(model).networks] == ["conv_2"]  # 8x8
    assert [(n.layer, n.grid) for n in saliency.explainer(model, min_grid=1).networks] == [("conv_4", (2, 2))]


def test_an_unknown_method_is_refused():
    with pytest.raises(SaliencyError, match="'smoothgrad' is not one of gradcam, layercam"):
        saliency.explainer(quadrant_model("top-left"), "smoothgrad")


def test_mass_inside_a_box_at_any_map_size():
    image_map = np.zeros((8, 8), np.float32)
    image_map[2, 3], image_map[6, 6] = 0.75, 0.25
    assert saliency.mass_inside(image_map, (3, 2, 4, 3), (8, 8)) == pytest.approx(0.75)
    # the same box given in the pixels of a 16x16 image over this 8x8 map
    assert saliency.mass_inside(image_map, (6, 4, 8, 6), (16, 16)) == pytest.approx(0.75)
    assert saliency.mass_inside(np.zeros((8, 8)), (0, 0, 4, 4), (8, 8)) is None
    assert saliency.box_share((0, 0, 4, 2), (8, 8)) == pytest.approx(8 / 64)


# ---------------------------------------------------------------------------------------------
# The glasses' boxes


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A small built-in dataset: 16 labelled + 1 test image at 48 px."""
    return synth.synthesize(tmp_path_factory.mktemp("synth") / "data", n=16, resolution=48, seed=5, workers=2).out_dir


def test_synth_records_the_box_of_every_image_drawn_with_glasses(synthetic):
    boxes = read_boxes(synthetic)
    plan = synth.plan(16, 5)
    assert set(boxes) == {int(i) for i, drawn in zip(plan.ids, plan.drawn) if drawn}  # test.csv's ids too
    for image_id, (x0, y0, x1, y1) in boxes.items():
        z = plan.latents[image_id - 1]
        drawn = np.asarray(Image.open(synthetic / synth.IMAGE_SUBDIR / f"face-{image_id}.png"), float)
        assert np.array_equal(drawn, np.asarray(synth.render_face(z, True, 48), float))
        changed = np.abs(drawn - np.asarray(synth.render_face(z, False, 48), float)).max(axis=2)
        inside = np.zeros(changed.shape, bool)
        inside[y0:y1, x0:x1] = True
        assert changed[inside].sum() >= 0.99 * changed.sum()  # the glasses change the image there
        assert changed[~inside].max(initial=0) <= 32  # (resampling of the tilted head spills a little)
        assert 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 48


def test_an_older_output_without_boxes_gains_them(synthetic, tmp_path):
    copy = tmp_path / "data"
    copy.mkdir()
    for path in synthetic.rglob("*"):
        target = copy / path.relative_to(synthetic)
        target.mkdir(parents=True, exist_ok=True) if path.is_dir() else target.write_bytes(path.read_bytes())
    (copy / BOXES).unlink()
    synth.synthesize(copy, n=16, resolution=48, seed=5, workers=1)
    assert (copy / BOXES).read_text() == (synthetic / BOXES).read_text()


@pytest.mark.parametrize("text, fragments", [
    ("id,x0,y0,x1,y1\n1,2,3,4,5\n2,5,5,5,9\n", ["row 3", "empty box (5,5)-(5,9)"]),
    ("id,x0,y0,x1,y1\n1,2,3,4,5\n1,2,3,4,5\n", ["row 3", "duplicate id 1"]),
    ("id,x0,y0,x1,y1\n1,2,-3,4,5\n", ["row 2", "'1,2,-3,4,5'", "four whole pixel numbers"]),
    ("id,left,top\n1,2,3\n", ["no column x0, y0, x1, y1"]),
])
def test_a_bad_boxes_file_names_its_row(tmp_path, text, fragments):
    (tmp_path / BOXES).write_text(text)
    with pytest.raises(DatasetError) as error:
        read_boxes(tmp_path)
    for fragment in [str(tmp_path / BOXES), *fragments]:
        assert fragment in str(error.value)


def test_face_ids_from_file_names():
    assert [face_id(p) for p in ("a/face-12.png", "face-007.JPG", "img-3.png", "face-x.png")] == [12, 7, None, None]


# ---------------------------------------------------------------------------------------------
# A run's analyses


def predictions_of(model_path, data_dir, tmp_path) -> tuple:
    """The test predictions file a run writes (path, label, probability), over the dataset's images."""
    import glob

    paths = sorted(glob.glob(str(data_dir / synth.IMAGE_SUBDIR / "face-*.png")))
    labels = [1 if face_id(p) in (read_boxes(data_dir) or {}) else 0 for p in paths]
    images = np.stack([np.asarray(Image.open(p).convert("RGB"), "float32") for p in paths])
    probabilities = np.asarray(keras.models.load_model(model_path)(images, training=False)).reshape(-1).tolist()
    csv = tmp_path / "test_predictions.csv"
    pd.DataFrame({"path": paths, "label": labels, "probability": probabilities}).to_csv(csv, index=False)
    return csv, paths


def test_a_run_s_analyses_draw_the_gallery_and_measure_the_boxes(synthetic, tmp_path):
    keras.utils.set_random_seed(0)
    members = [build_model(ModelSpec(24, conv_layers=2), name=f"member_{i}", compile=False) for i in range(2)]
    model = save_model(average_ensemble(members, 24), tmp_path / "ensemble.keras")
    csv, paths = predictions_of(model, synthetic, tmp_path)
    result = saliency.analyse(model, csv, synthetic, tmp_path / "figures" / "saliency.png", method="layercam")
    assert Image.open(result["gallery"]).size[0] > 400
    glasses, boxes = result["glasses"], read_boxes(synthetic)
    assert glasses["available"] and glasses["images"] == len(boxes) == sum(face_id(p) in boxes for p in paths)
    uniform = np.mean([saliency.box_share(box, (48, 48)) for box in boxes.values()])
    assert glasses["uniform_share"] == pytest.approx(uniform, abs=1e-4)
    assert [n["name"] for n in glasses["networks"]] == ["member_0", "member_1"]
    for row in [glasses["model"], *glasses["networks"]]:
        assert 0 <= row["share"] <= 1 and row["ratio"] == pytest.approx(row["share"] / row["uniform_share"], rel=1e-2)
    assert "LayerCAM on 2 networks" in result["method"]

    (plain := tmp_path / "photos").mkdir()
    for name in ("train.csv", synth.IMAGE_SUBDIR):
        (plain / name).parent.mkdir(parents=True, exist_ok=True)
        (plain / name).symlink_to(synthetic / name)
    without = saliency.analyse(model, csv, plain, tmp_path / "figures" / "again.png")
    assert without["glasses"] == {"available": False,
                                  "reason": saliency.NO_BOXES.format(boxes=BOXES, csv=plain / "train.csv")}


def test_the_report_shows_the_gallery_and_the_share_or_why_not():
    summary = json.loads(json.dumps({
        "saliency": {"method": "Grad-CAM on 1 network: member_0 (conv_2, 8x8)", "gallery": "/w/figures/saliency.png",
                     "glasses": {"available": True, "boxes": "/d/boxes.csv", "images": 190, "uniform_share": 0.0978,
                                 "model": {"share": 0.2286, "uniform_share": 0.0988, "ratio": 2.314, "empty": 3},
                                 "networks": [{"name": "member_0", "weight": 1, "layer": "conv_2", "share": 0.2286,
                                               "uniform_share": 0.0988, "ratio": 2.314, "empty": 3}]}}}))
    text = "\n".join(saliency_lines(summary))
    assert "![saliency gallery](figures/saliency.png)" in text
    assert "| the model | 0.2286 | 0.0988 | **2.31x** | 3 |" in text and "| member_0 (conv_2) | 0.2286" in text
    summary["saliency"]["glasses"] = {"available": False, "reason": "no boxes.csv beside /d/train.csv: ..."}
    assert "no boxes.csv beside /d/train.csv" in "\n".join(saliency_lines(summary))
    assert saliency_lines({}) == []
