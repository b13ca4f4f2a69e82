"""Report figures: PNGs written atomically, deterministic augmentation, the right mistakes shown."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glasses import figures
from tests.conftest import write_asymmetric_image


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def assert_only(out_dir: Path, names: set[str]) -> None:
    """Nothing but the finished figures in the out dir: no temporary files left behind."""
    assert {p.name for p in out_dir.iterdir()} == names


def test_augmentation_grid_is_deterministic_and_augments(tmp_path):
    image = write_asymmetric_image(tmp_path / "face.png")
    first = figures.augmentation_grid(image, tmp_path / "a" / "aug.png", size=32, samples=3, seed=7)
    again = figures.augmentation_grid(image, tmp_path / "b" / "aug.png", size=32, samples=3, seed=7)
    assert first == tmp_path / "a" / "aug.png"
    height, width, _ = pixels(first).shape
    assert 200 < width < 2000 and 200 < height < 2000
    np.testing.assert_array_equal(pixels(first), pixels(again))
    assert_only(tmp_path / "a", {"aug.png"})


def test_augmented_tiles_differ_from_the_nearest_resized_original(tmp_path):
    from glasses.inputs import read_rgb

    rgb = read_rgb(write_asymmetric_image(tmp_path / "face.png"))
    images = figures.augmented_images(rgb, size=64, samples=4, seed=3)
    assert images.shape == (5, 64, 64, 3)
    assert images.min() >= 0.0 and images.max() <= 1.0
    # Nearest resizing by 2 repeats every pixel: the original tile is the image, unblurred.
    np.testing.assert_allclose(images[0], rgb.repeat(2, 0).repeat(2, 1) / 255.0, atol=1e-6)
    for tile in images[1:]:
        assert np.abs(tile - images[0]).mean() > 0.01
    np.testing.assert_array_equal(images, figures.augmented_images(rgb, size=64, samples=4, seed=3))


def test_misclassified_picks_the_wrong_ones_most_confident_first():
    labels = [1, 1, 0, 0, 1, 0, 1, 0]
    probabilities = [0.9, 0.1, 0.2, 0.95, 0.49, 0.5, 0.3, 0.7]
    # wrong: 1 (p=.1, glasses), 3 (p=.95, none), 4 (p=.49), 5 (p=.5 predicts glasses), 6, 7
    assert figures.misclassified(labels, probabilities) == [3, 1, 6, 7, 4, 5]
    assert figures.misclassified(labels, probabilities, threshold=0.25) == [3, 7, 5, 1]
    assert figures.misclassified([0, 1], [0.2, 0.8]) == []
    with pytest.raises(ValueError, match="2 labels but 1 probabilities"):
        figures.misclassified([0, 1], [0.3])


def test_gallery_shows_the_mistakes(tmp_path):
    paths = [str(write_asymmetric_image(tmp_path / "images" / f"{i}.png", seed=i)) for i in range(8)]
    labels = [1, 1, 0, 0, 1, 0, 1, 0]
    probabilities = [0.9, 0.1, 0.2, 0.95, 0.49, 0.5, 0.3, 0.7]
    out = tmp_path / "out" / "mistakes.png"
    few = tmp_path / "out" / "few.png"
    assert figures.misclassified_gallery(paths, labels, probabilities, out, columns=3) == out
    figures.misclassified_gallery(paths, labels, probabilities, few, limit=2, columns=3)
    height, width, _ = pixels(out).shape
    assert 300 < width < 2000 and 300 < height < 3000
    # Six mistakes on rows of three are two rows; the two most confident fit on one.
    assert pixels(few).shape[0] < height * 0.7
    assert_only(tmp_path / "out", {"mistakes.png", "few.png"})


def test_gallery_without_mistakes_still_writes_a_png(tmp_path):
    paths = [str(write_asymmetric_image(tmp_path / "images" / f"{i}.png", seed=i)) for i in range(2)]
    out = figures.misclassified_gallery(paths, [0, 1], [0.1, 0.9], tmp_path / "out" / "none.png")
    height, width, _ = pixels(out).shape
    assert width > 100 and height > 50
    assert (pixels(out) < 128).any()  # the "no misclassified images" text, not a blank page
    assert_only(tmp_path / "out", {"none.png"})


def test_confusion_figure_writes_a_heatmap(tmp_path):
    out = figures.confusion_figure([[40, 7], [3, 90]], tmp_path / "out" / "confusion.png")
    image = pixels(out)
    assert 200 < image.shape[1] < 2000 and 200 < image.shape[0] < 2000
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10  # cells shaded, not blank
    assert_only(tmp_path / "out", {"confusion.png"})
    with pytest.raises(ValueError, match="expected 2x2"):
        figures.confusion_figure([[1, 2, 3]], tmp_path / "bad.png")


def test_stage3_ranking_marks_the_kept_trials_and_the_threshold(tmp_path):
    import pandas as pd

    from glasses.figures import plot_ranked

    table = pd.DataFrame({"trial_id": ["00", "01", "02", "03", "04"], "val_accuracy": [0.8, 0.92, 0.85, 0.95, None],
                          "status": ["COMPLETED"] * 4 + ["FAILED"]})
    out = plot_ranked(table, ["03", "01"], 0.9, tmp_path / "val_accuracy_by_rank.png", "stage3")
    rgb = pixels(out).astype(int)
    dark = np.all(np.abs(rgb - [8, 81, 156]) < 8, axis=-1)  # kept bars
    light = np.all(np.abs(rgb - [198, 219, 239]) < 8, axis=-1)  # the others
    red = (rgb[..., 0] > 180) & (rgb[..., 1] < 120) & (rgb[..., 2] < 120)  # the threshold line
    assert dark.sum() > 500 and light.sum() > 500 and red.sum() > 50
    # Two kept bars left of two others: in the lower part (below the legend) the dark columns
    # all lie left of the light ones.
    low = slice(int(0.6 * rgb.shape[0]), None)
    assert np.flatnonzero(dark[low].any(axis=0)).max() < np.flatnonzero(light[low].any(axis=0)).min()
    assert_only(tmp_path, {"val_accuracy_by_rank.png"})
