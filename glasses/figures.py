"""Figures as PNG files: the stage plots, augmentation samples, misclassified images, the
confusion matrix (matplotlib's Agg backend: no display needed).

Each function writes one PNG atomically (a temporary name beside it, then a rename) and
returns its path, so a reader never sees half a figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from glasses.dataset import CLASSES
from glasses.files import temporary_file


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Saves `fig` as PNG under a temporary name beside `path`, renames it into place, closes it."""
    try:
        with temporary_file(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        _pyplot().close(fig)
    return Path(path)


def plot_by(table: pd.DataFrame, column: str, path: Path, title: str) -> Path:
    """Val accuracy of each trial (dots) and the mean (bar) per value of `column`."""
    plt = _pyplot()
    done = table[table["status"] == "COMPLETED"]
    groups = sorted(done[column].unique(), key=lambda v: (str(type(v)), v))
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=110)
    means = [done.loc[done[column] == g, "val_accuracy"].mean() for g in groups]
    positions = range(len(groups))
    ax.bar(positions, means, color="#9ecae1", label="mean")
    for pos, group in zip(positions, groups):
        values = done.loc[done[column] == group, "val_accuracy"]
        ax.scatter([pos] * len(values), values, color="#08519c", s=14, zorder=3)
        ax.annotate(f"{means[pos]:.3f}", (pos, means[pos]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(positions), [str(g) for g in groups])
    ax.set_xlabel(column)
    ax.set_ylabel("val accuracy")
    lowest = min(done["val_accuracy"].min(), min(means)) if len(done) else 0
    ax.set_ylim(max(0.0, lowest - 0.05), 1.0)
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_ranked(table: pd.DataFrame, kept: list[str], threshold: float, path: Path, title: str) -> Path:
    """Val accuracy of every completed trial, best first: the kept ones dark, and the ensemble
    threshold as a dashed line, so one sees which kept models can join the ensemble."""
    plt = _pyplot()
    done = table[table["status"] == "COMPLETED"].sort_values("val_accuracy", ascending=False)
    fig, ax = plt.subplots(figsize=(max(5, 0.32 * len(done) + 1.5), 3.5), dpi=110)
    colours = ["#08519c" if t in kept else "#c6dbef" for t in done["trial_id"]]
    ax.bar(range(len(done)), done["val_accuracy"], color=colours)
    line = ax.axhline(threshold, color="#cb181d", linestyle="--", linewidth=1.2, zorder=3)
    from matplotlib.patches import Patch

    ax.legend([line, Patch(color="#08519c"), Patch(color="#c6dbef")],
              [f"ensemble threshold {threshold:g}", f"kept ({len(kept)})", "pruned"], fontsize=8, loc="upper right")
    ax.set_xticks(range(len(done)), done["trial_id"].astype(str), rotation=90, fontsize=7)
    ax.set_xlabel("trial, best first")
    ax.set_ylabel("val accuracy")
    lowest = min([threshold, *done["val_accuracy"].tolist()]) if len(done) else 0
    ax.set_ylim(max(0.0, lowest - 0.05), 1.0)
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)


def _label(label: int) -> str:
    """A class name for people: 'no glasses' or 'glasses'."""
    return CLASSES[int(label)].replace("_", " ")


def _tiles(count: int, columns: int, tile: tuple[float, float]):
    """A figure with `count` image axes on a grid of `columns`; unused cells are hidden."""
    plt = _pyplot()
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(tile[0] * columns, tile[1] * rows),
                             dpi=110, squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    return fig, list(axes.flat)[:count]


def augmented_images(image: np.ndarray, size: int, samples: int, seed: int) -> np.ndarray:
    """The image resized to `size` (nearest) then `samples` seeded augmentations, all in [0, 1].

    Returns:
        An array of shape (samples + 1, size, size, 3): the original first.
    """
    from glasses.inputs import augment, resize

    original = np.asarray(resize(image[None], size), dtype=np.float32)
    # One batch, one seed: each copy draws its own flip/shift/rotation/zoom, as in training.
    batch = np.repeat(original, samples, axis=0)
    augmented = np.asarray(augment(batch, np.array([seed, 0], dtype=np.int64)), dtype=np.float32)
    return np.clip(np.concatenate([original, augmented]), 0.0, 1.0)


def augmentation_grid(image_path: Path, out: Path, size: int = 96, samples: int = 8,
                      seed: int = 1337) -> Path:
    """The image and `samples` outputs of the report's augmentation (as training draws it), in a grid.

    Args:
        image_path: any PNG/JPEG the input pipeline reads.
        out: the PNG to write.
        size: the side the image is resized to (nearest), as the input pipeline does.
        samples: how many augmented versions to show.
        seed: seeds the augmentation, so the figure is the same for the same seed.

    Returns:
        `out`.
    """
    from glasses.inputs import read_rgb

    images = augmented_images(read_rgb(image_path), size, samples, seed)
    fig, axes = _tiles(len(images), math.ceil(math.sqrt(len(images))), (1.8, 1.95))
    for i, (ax, image) in enumerate(zip(axes, images)):
        ax.imshow(image, interpolation="nearest")
        ax.set_title("original" if i == 0 else f"augmented {i}", fontsize=9)
    fig.suptitle(f"augmentation (as in training), seed {seed}", fontsize=10)
    return save_figure(fig, out)


def misclassified(labels: Sequence[int], probabilities: Sequence[float],
                  threshold: float = 0.5) -> list[int]:
    """Indices of the wrong predictions (glasses when p >= threshold), most confident first.

    Confidence is how far p lies on the wrong side of the threshold; ties keep input order.
    """
    if len(labels) != len(probabilities):
        raise ValueError(f"{len(labels)} labels but {len(probabilities)} probabilities: "
                         "pass one probability per labelled image")
    wrong = [i for i, (y, p) in enumerate(zip(labels, probabilities)) if int(p >= threshold) != int(y)]
    return sorted(wrong, key=lambda i: -abs(probabilities[i] - threshold))


def _empty_figure(text: str):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 1.5), dpi=110)
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=12)
    return fig


def misclassified_gallery(paths: list[str], labels: list[int], probabilities: list[float], out: Path,
                          threshold: float = 0.5, limit: int = 24, columns: int = 6) -> Path:
    """The misclassified images, most confident mistakes first, titled true / pred / P(glasses).

    Args:
        paths: one image per prediction.
        labels: the true labels, 1 for glasses.
        probabilities: P(glasses) for each image.
        out: the PNG to write; says "no misclassified images" when there are none.
        threshold: glasses is predicted when p >= threshold.
        limit: at most this many images are shown.
        columns: images per row.

    Returns:
        `out`.
    """
    from glasses.inputs import read_rgb

    if len(paths) != len(labels):
        raise ValueError(f"{len(paths)} paths but {len(labels)} labels: pass one label per image")
    wrong = misclassified(labels, probabilities, threshold)
    if not wrong:
        return save_figure(_empty_figure("no misclassified images"), out)
    shown = wrong[:limit]
    fig, axes = _tiles(len(shown), columns, (1.9, 2.5))
    for ax, i in zip(axes, shown):
        ax.imshow(read_rgb(paths[i]), interpolation="nearest")
        ax.set_title(f"true: {_label(labels[i])}\npred: {_label(1 - int(labels[i]))}\n"
                     f"p={probabilities[i]:.2f}", fontsize=8)
    fig.suptitle(f"{len(wrong)} of {len(labels)} misclassified (threshold {threshold:g})"
                 + (f", {len(shown)} most confident shown" if len(shown) < len(wrong) else ""),
                 fontsize=10)
    return save_figure(fig, out)


def confusion_figure(matrix: list[list[int]], out: Path, classes: Sequence[str] | None = None) -> Path:
    """A confusion-matrix heatmap with the count in each cell: rows true, columns predicted.

    Args:
        matrix: counts, `matrix[true][predicted]`, one row and column per class.
        out: the PNG to write.
        classes: the class names, in label order (default: glasses' two classes).

    Returns:
        `out`.
    """
    classes = classes or [_label(label) for label in range(len(CLASSES))]
    counts = np.asarray(matrix, dtype=int)
    if counts.shape != (len(classes), len(classes)):
        raise ValueError(f"confusion matrix of shape {counts.shape} for {len(classes)} classes: "
                         f"expected {len(classes)}x{len(classes)} counts")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.6), dpi=110)
    ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(1, counts.max()))
    for (row, col), count in np.ndenumerate(counts):
        dark = count > counts.max() / 2
        ax.text(col, row, str(count), ha="center", va="center", fontsize=14,
                color="white" if dark else "black")
    ticks = list(range(len(classes)))
    ax.set_xticks(ticks, list(classes))
    ax.set_yticks(ticks, list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = counts.sum()
    accuracy = np.trace(counts) / total if total else float("nan")
    ax.set_title(f"confusion matrix (n={total}, accuracy {accuracy:.3f})", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out)


CONFUSION = "confusion.png"  # drawn by every run's `render_figures`: its figures are there once it is


def render_figures(figures_dir: Path, predictions_csv: Path, shipped: dict, stages: list[dict],
                   seed: int = 1337) -> dict[str, str]:
    """Every figure of a run under `figures_dir`: augmentation samples, the misclassified test
    images, the confusion matrix, and a copy of each stage plot.

    Args:
        figures_dir: Where the PNGs go.
        predictions_csv: The shipped model's test predictions (path, label, probability).
        shipped: What `glasses.ensemble.ship_ensemble` returned (its confusion matrix and size).
        stages: The stage summaries (`glasses.stages.finish_stage`), for their plots.
        seed: Seeds the augmentation samples.

    Returns:
        Figure name -> path.
    """
    figures_dir, image_size = Path(figures_dir), shipped["ensemble"]["image_size"]
    confusion = shipped["evaluation"]["confusion"]
    predictions = pd.read_csv(predictions_csv)
    made = {
        "augmentation": augmentation_grid(Path(predictions["path"].iloc[0]), figures_dir / "augmentation.png",
                                          size=max(image_size, 64), seed=seed),
        "misclassified": misclassified_gallery(predictions["path"].tolist(), predictions["label"].tolist(),
                                               predictions["probability"].tolist(),
                                               figures_dir / "misclassified.png"),
        "confusion": confusion_figure(confusion, figures_dir / CONFUSION),
    }
    for stage in stages:
        for plot in map(Path, stage["plots"]):
            target = figures_dir / f"{stage['stage']}_{plot.name}"
            with temporary_file(target) as tmp:
                tmp.write_bytes(plot.read_bytes())
            made[target.stem] = target
    return {name: str(path) for name, path in made.items()}


# ---------------------------------------------------------------------------------------------
# Saliency: where the model looks (maps from glasses.saliency)


def _shown(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """`image` at `shape` (height, width) for display under a map of that size."""
    if tuple(image.shape[:2]) == tuple(shape):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((shape[1], shape[0]), Image.BILINEAR))


def draw_overlay(ax, image: np.ndarray, saliency_map: np.ndarray, box=None) -> None:
    """The image with its saliency map on top (jet, more opaque where the map is higher) and,
    when given, the glasses' box (x0, y0, x1, y1 in the image's pixels) as a dashed white frame."""
    ax.imshow(_shown(image, saliency_map.shape), interpolation="nearest")
    peak = float(saliency_map.max())
    if peak > 0:
        level = saliency_map / peak
        heat = _pyplot().get_cmap("jet")(level)
        heat[..., 3] = 0.65 * level
        ax.imshow(heat, interpolation="bilinear")
    if box is not None:
        from matplotlib.patches import Rectangle

        sy, sx = saliency_map.shape[0] / image.shape[0], saliency_map.shape[1] / image.shape[1]
        ax.add_patch(Rectangle((box[0] * sx - 0.5, box[1] * sy - 0.5), (box[2] - box[0]) * sx, (box[3] - box[1]) * sy,
                               fill=False, edgecolor="white", linestyle="--", linewidth=0.8))
    ax.axis("off")


def overlay_figure(image: np.ndarray, saliency_map: np.ndarray, title: str, out: Path) -> Path:
    """One image with its saliency map on top and `title` above (the probability and label), as a PNG."""
    plt = _pyplot()
    height, width = saliency_map.shape
    side = 4.0
    fig, ax = plt.subplots(figsize=(side * min(1.0, width / height) + 0.2, side * min(1.0, height / width) + 0.6),
                           dpi=110, layout="constrained")
    draw_overlay(ax, image, saliency_map)
    if saliency_map.max() <= 0:
        title += "\n(an empty map: the weighted activations are negative everywhere)"
    ax.set_title(title, fontsize=9)
    return save_figure(fig, out)


def saliency_gallery(tiles: list[dict], out: Path, title: str, columns: int = 6) -> Path:
    """Images with their saliency maps in a grid.

    Args:
        tiles: One dict per image: image (RGB uint8), map (from glasses.saliency), label (true,
            1 glasses), probability (P(glasses)), box (the glasses' box or None), group (a short
            line above the title, e.g. "misclassified").
        out: The PNG to write; says "no images" when there are none.
        title: The figure's title.
        columns: Images per row.

    Returns:
        `out`.
    """
    if not tiles:
        return save_figure(_empty_figure("no images"), out)
    fig, axes = _tiles(len(tiles), columns, (1.9, 2.6))
    for ax, tile in zip(axes, tiles):
        draw_overlay(ax, tile["image"], tile["map"], tile.get("box"))
        predicted = int(tile["probability"] >= 0.5)
        empty = ", empty map" if tile["map"].max() <= 0 else ""
        ax.set_title(f"{tile['group']}\ntrue: {_label(tile['label'])}\npred: {_label(predicted)}\n"
                     f"p={tile['probability']:.2f}{empty}", fontsize=7.5,
                     color="#b2182b" if predicted != int(tile["label"]) else "black")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, out)
