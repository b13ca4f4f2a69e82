"""Where a model looks: Grad-CAM saliency maps of P(glasses), for one network, an ensemble and a
plain Keras model a user brings, and the share of a map's mass inside a box (the glasses').

Grad-CAM (Selvaraju et al., 2017): the activations A of a network's convolutional layer (its last
with a grid of at least 8x8: `target_layer`), weighted per channel by the mean gradient of
P(glasses) over the layer's positions, summed over channels and rectified:
relu(sum_k mean(dP/dA_k) A_k). LayerCAM (Jiang et al., 2021), the other method here, weights each
position by its own positive gradient instead: relu(sum_k relu(dP/dA_k) A_k). The gradient is
taken through the sigmoid's input (the logit) where the network ends in a sigmoid Dense: the same
map up to a positive factor, which a saturated probability (exactly 1.0 in float32) would zero.

A map is upsampled (bilinear) from the layer's grid to the image, rectified, and normalised to sum
1: a distribution of "where the evidence for glasses is". Where every position's weighted sum is
negative the map is zeros ("empty"). Grad-CAM meets that on these networks more than LayerCAM: a
channel's weight is one number, so the offset of activations taken before BatchNormalization (the
blocks are Conv2D, pooling, BatchNormalization, ReLU) shifts the whole map; LayerCAM weights each
position apart. An ensemble's map is its members' maps combined as it combines their outputs: the
mean, a member counted as often as the ensemble counts it (greedy's weights; a majority vote's
members equally), renormalised.

Nothing here imports prefect; Keras and TensorFlow are imported when first needed.
"""

from __future__ import annotations

import logging
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glasses.dataset import Box
from glasses.errors import GlassesError

log = logging.getLogger(__name__)

METHODS = ("gradcam", "layercam")
METHOD_NAMES = {"gradcam": "Grad-CAM", "layercam": "LayerCAM"}
CONV_LAYERS = ("Conv2D", "SeparableConv2D", "DepthwiseConv2D")  # what Grad-CAM can take its map from
MIN_GRID = 8  # the map's layer: the last convolutional one whose grid is at least 8x8 (`target_layer`)
MAX_SIDE = 512  # maps (and overlays) of bigger images are computed at this longer side: memory stays bounded


class SaliencyError(GlassesError):
    """A model whose saliency cannot be computed here, and why."""


@dataclass(frozen=True)
class Network:
    """One network whose map is taken: a model from its input to (the target layer's activations,
    the gradient's target), how often the ensemble counts it, and which layer that is."""

    name: str
    weight: int
    probe: object  # keras.Model: input -> [activations (N, h, w, k), logit or P(glasses) (N, 1)]
    layer: str
    grid: tuple[int | None, int | None]  # the layer's spatial size (None: follows the image)
    logit: object | None  # the final sigmoid Dense when the target is its input: the logit is computed


@dataclass(frozen=True)
class Explainer:
    """A model taken apart for Grad-CAM: what feeds its networks, and the networks.

    Attributes:
        model: The whole model; its output is the probability shown.
        prefix: Raw image -> the networks' input (the ensemble's Resizing and Rescaling), or None
            when the networks take the image as the model does.
        networks: One per member (one for a plain model).
        input_size: (height, width) the networks need when fixed and no prefix resizes to it:
            images are resized (nearest) to it first, as the ensembles do inside.
        method: "gradcam" or "layercam" (METHODS).
    """

    model: object
    prefix: object | None
    networks: tuple[Network, ...]
    input_size: tuple[int, int] | None
    method: str = "gradcam"

    def describe(self) -> str:
        """One line for people: the method, and which layer of which network the maps come from."""
        parts = [f"{n.name} ({n.layer}, {n.grid[0] or '?'}x{n.grid[1] or '?'}"
                 f"{', x' + str(n.weight) if n.weight > 1 else ''})" for n in self.networks]
        return f"{METHOD_NAMES[self.method]} on {len(parts)} network{'s' * (len(parts) > 1)}: " + ", ".join(parts)


@dataclass(frozen=True)
class Saliency:
    """The maps of one image.

    Attributes:
        probability: The model's P(glasses).
        combined: The model's map (H x W, sums to 1, or all zeros): the networks' maps combined.
        networks: Each network's own map (n x H x W), in the order of `Explainer.networks`.
    """

    probability: float
    combined: np.ndarray
    networks: np.ndarray


# ---------------------------------------------------------------------------------------------
# Taking a model apart


def explainer(model, method: str = "gradcam", min_grid: int = MIN_GRID) -> Explainer:
    """The model taken apart for Grad-CAM (or LayerCAM: `method`), each network's map taken from
    its last convolutional layer with a grid of at least `min_grid` (`target_layer`).

    A model whose convolutional layers sit in nested models (the ensembles `glasses run` ships,
    and its best single model: Resizing and Rescaling, then members each giving P(glasses),
    then how they are combined) gets one network per member; a model with its own convolutional
    layers (a plain Keras CNN) is its one network.

    Raises:
        SaliencyError: saying why, for an unknown method, a model without a convolutional layer, with more than one
            input, an output that is not one probability, members that are not fed the same
            tensor, or a nested convolutional part that does not itself give P(glasses).
    """
    if method not in METHODS:
        raise SaliencyError(f"saliency method {method!r} is not one of {', '.join(METHODS)}")
    _require_single_io(model)
    members = [layer for layer in model.layers if _is_model(layer) and _conv_layers(layer)]
    if members:
        counts = _call_counts(model)
        prefix = _prefix(model, members)
        networks = tuple(_network(m, counts.get(m.name, 1), min_grid) for m in members)
        return Explainer(model, prefix, networks, None, method)
    if not _conv_layers(model):
        raise SaliencyError(f"model {model.name!r} has no convolutional layer ({', '.join(CONV_LAYERS)}), nested "
                            "or its own: Grad-CAM needs one to take its map from")
    shape = tuple(model.inputs[0].shape[1:3])
    fixed = shape if None not in shape else None
    return Explainer(model, None, (_network(model, 1, min_grid),), fixed, method)


def _is_model(layer) -> bool:
    import keras

    return isinstance(layer, keras.Model)


def _conv_layers(model) -> list:
    return [layer for layer in model.layers if type(layer).__name__ in CONV_LAYERS]


def _require_single_io(model) -> None:
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise SaliencyError(f"model {model.name!r} has {len(model.inputs)} inputs and {len(model.outputs)} outputs: "
                            "saliency needs one image input and one output, P(glasses)")
    shape = tuple(model.outputs[0].shape)
    if len(model.inputs[0].shape) != 4 or shape[1:] != (1,):
        raise SaliencyError(f"model {model.name!r} takes {tuple(model.inputs[0].shape)} and gives {shape}: saliency "
                            "needs images (batch, height, width, channels) in and one probability (batch, 1) out")


def _call_counts(model) -> dict[str, int]:
    """How often each layer is called in the model's graph (a member of greedy weight k: k times)."""
    return {layer["name"]: len(layer.get("inbound_nodes") or []) for layer in model.get_config().get("layers", [])}


def _prefix(model, members: list):
    """The model from the raw image to the tensor every member takes (None: the image itself)."""
    import keras

    fed = set()
    for layer in model.get_config().get("layers", []):
        if layer["name"] in {m.name for m in members}:
            for node in layer.get("inbound_nodes") or []:
                fed.update(tuple(a["config"]["keras_history"]) for a in node.get("args", [])
                           if isinstance(a, dict) and "keras_history" in a.get("config", {}))
    if len(fed) != 1:
        raise SaliencyError(f"the members of {model.name!r} are not all fed the same tensor ({sorted(fed)}): "
                            "saliency can combine only members that see the same input")
    name, node, index = next(iter(fed))
    source = model.get_layer(name)
    if type(source).__name__ == "InputLayer":
        return None
    if node != 0 or index != 0:
        raise SaliencyError(f"the members of {model.name!r} take output {index} of call {node} of layer {name!r}: "
                            "saliency needs them fed by a layer called once")
    return keras.Model(model.inputs, source.output, name="prefix")


def _side(layer) -> float:
    """The shorter side of a layer's grid (a side that follows the image counts as long)."""
    return min(float("inf") if side is None else side for side in layer.output.shape[1:3])


def target_layer(model, min_grid: int = MIN_GRID):
    """The convolutional layer a network's map is taken from: the last one whose grid is at least
    `min_grid` on its shorter side, else the one with the finest grid (the first).

    Why not simply the last: a map is no finer than its layer's grid. quick's networks at 32 px
    have 3-5 blocks, so a last grid of 8x8 down to 2x2, and a 2x2 map cannot tell the glasses from
    the forehead: over the members of three quick runs, Grad-CAM's share inside the glasses' boxes
    read 1.2-1.3x the even share on 2x2 layers, 0.9-3.5x on 4x4 and 2.1-5.5x on the 8x8 and 10x10
    layers of the same networks (bench/saliency.py, bench/RESULTS.md). `min_grid=1` takes the last
    convolutional layer.

    Raises:
        SaliencyError: every convolutional layer's grid is 1x1 (its map would be uniform).
    """
    convs = _conv_layers(model)
    if max(map(_side, convs)) <= 1:
        raise SaliencyError(f"every convolutional layer of {model.name!r} outputs a 1x1 grid at its input size "
                            f"{tuple(model.inputs[0].shape[1:3])}: its map would be uniform; give it bigger images")
    fine = [c for c in convs if _side(c) >= min_grid]
    return fine[-1] if fine else max(convs, key=_side)


def _network(model, weight: int, min_grid: int = MIN_GRID) -> Network:
    """One network: the layer its map is taken from (`target_layer`) and the target of the gradient."""
    _require_single_io(model)
    layer = target_layer(model, min_grid)
    last = model.layers[-1]
    sigmoid = (type(last).__name__ == "Dense" and getattr(last.activation, "__name__", "") == "sigmoid"
               and last.output is model.outputs[0])
    probe = _probe(model, layer, last if sigmoid else None)
    return Network(model.name, int(weight), probe, layer.name, tuple(layer.output.shape[1:3]),
                   last if sigmoid else None)


def _probe(model, layer, logit_layer):
    """A model from `model`'s input to [`layer`'s activations, the input of `logit_layer` or, with
    None, the output], sharing `model`'s weights."""
    import keras

    if not isinstance(model, keras.Sequential):
        target = logit_layer.input if logit_layer is not None else model.outputs[0]
        return keras.Model(model.inputs, [layer.output, target], name=f"{model.name}_probe")
    # A loaded Sequential's layers may hold the tensors of more than one build: call them anew.
    x = inputs = keras.Input(tuple(model.inputs[0].shape[1:]))
    activations = None
    for each in model.layers:
        if each is logit_layer:
            break  # x is its input: the target
        x = each(x)
        if each is layer:
            activations = x
    return keras.Model(inputs, [activations, x], name=f"{model.name}_probe")


# ---------------------------------------------------------------------------------------------
# Maps


def map_size(height: int, width: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """The size a map of an image is computed at: the image's, or scaled so its longer side is `max_side`."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def grad_cam(network: Network, images, size: tuple[int, int], method: str = "gradcam") -> np.ndarray:
    """Each image's Grad-CAM (or LayerCAM) map of `network` at `size` (N x H x W): rectified, each
    summing to 1 (or all zeros where every position's weighted sum is negative: "empty").

    Args:
        network: From `explainer`.
        images: The network's input batch (N x h x w x c), as it takes it.
        size: (H, W) the maps are upsampled to.
        method: "gradcam" (each channel weighted by its mean gradient) or "layercam" (each
            position by its own positive gradient).
    """
    import tensorflow as tf

    images = tf.convert_to_tensor(images, dtype=tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(images)  # records the ops even of a model whose weights are frozen
        activations, target = network.probe(images, training=False)
        if network.logit is not None:
            target = tf.matmul(tf.cast(target, tf.float32), tf.cast(network.logit.kernel, tf.float32))
            target = target + tf.cast(network.logit.bias, tf.float32) if network.logit.use_bias else target
        total = tf.reduce_sum(tf.cast(target, tf.float32))
    gradients = tape.gradient(total, activations)
    gradients = tf.cast(gradients, tf.float32)
    weights = tf.nn.relu(gradients) if method == "layercam" else tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * tf.cast(activations, tf.float32), axis=-1, keepdims=True))
    cam = tf.nn.relu(tf.image.resize(cam, size, method="bilinear"))[..., 0].numpy()
    return normalise(cam)


def normalise(maps: np.ndarray) -> np.ndarray:
    """Each map (the leading axis) divided by its sum; an all-zero map stays zeros."""
    maps = np.asarray(maps, dtype=np.float32)
    sums = maps.reshape(len(maps), -1).sum(axis=1).reshape(-1, *([1] * (maps.ndim - 1)))
    return np.divide(maps, sums, out=np.zeros_like(maps), where=sums > 0)


def combine(maps: np.ndarray, weights: list[int]) -> np.ndarray:
    """The networks' maps (n x N x H x W) combined as the ensemble combines outputs: their weighted
    mean, renormalised (a network whose map is empty adds nothing)."""
    w = np.asarray(weights, dtype=np.float32).reshape(-1, *([1] * (maps.ndim - 1)))
    return normalise((maps * w).sum(axis=0) / w.sum())


def _network_input(explainer_: Explainer, batch: np.ndarray):
    import tensorflow as tf

    if explainer_.prefix is not None:
        return explainer_.prefix(batch, training=False)
    if explainer_.input_size is not None and tuple(batch.shape[1:3]) != explainer_.input_size:
        return tf.image.resize(batch, explainer_.input_size, method="nearest")
    return batch


def explain_batch(explainer_: Explainer, batch: np.ndarray, max_side: int = MAX_SIDE) -> list[Saliency]:
    """The maps of a batch of images of one shape (N x H x W x 3, values 0..255, as `predict` takes them)."""
    batch = np.asarray(batch, dtype=np.float32)
    size = map_size(*batch.shape[1:3], max_side=max_side)
    with warnings.catch_warnings():  # Keras warns that a bare tensor is not the list ['image'] it expects
        warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match")
        fed = _network_input(explainer_, batch)
        whole = explainer_.model(fed if explainer_.input_size is not None else batch, training=False)
        maps = np.stack([grad_cam(network, fed, size, explainer_.method) for network in explainer_.networks])
    probabilities = np.asarray(whole, dtype=np.float32).reshape(-1)
    combined = combine(maps, [n.weight for n in explainer_.networks])
    return [Saliency(float(p), combined[i], maps[:, i]) for i, p in enumerate(probabilities)]


def explain_arrays(explainer_: Explainer, images: list[np.ndarray], batch_size: int = 32,
                   max_side: int = MAX_SIDE) -> list[Saliency]:
    """The maps of RGB uint8 arrays of any sizes, batched by shape, in input order."""
    by_shape: dict[tuple, list[int]] = defaultdict(list)
    for index, image in enumerate(images):
        by_shape[image.shape].append(index)
    out: list[Saliency | None] = [None] * len(images)
    for indices in by_shape.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            for index, found in zip(chunk, explain_batch(explainer_, np.stack([images[i] for i in chunk]), max_side)):
                out[index] = found
    return out


# ---------------------------------------------------------------------------------------------
# How much of a map lies inside a box


def scale_box(box: Box, image_shape: tuple[int, int], map_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """A box in an image's pixels (x0, y0, x1, y1; x1, y1 exclusive) in the pixels of a map of
    another size over the same image, clipped to it (at least one pixel)."""
    (h, w), (mh, mw) = image_shape, map_shape
    x0, y0 = int(np.floor(box[0] * mw / w)), int(np.floor(box[1] * mh / h))
    x1, y1 = int(np.ceil(box[2] * mw / w)), int(np.ceil(box[3] * mh / h))
    x0, y0 = min(max(x0, 0), mw - 1), min(max(y0, 0), mh - 1)
    return x0, y0, min(max(x1, x0 + 1), mw), min(max(y1, y0 + 1), mh)


def mass_inside(saliency_map: np.ndarray, box: Box, image_shape: tuple[int, int]) -> float | None:
    """The share of the map's mass inside `box` (in the image's pixels); None for an all-zero map."""
    total = float(saliency_map.sum())
    if total <= 0:
        return None
    x0, y0, x1, y1 = scale_box(box, image_shape, saliency_map.shape)
    return float(saliency_map[y0:y1, x0:x1].sum()) / total


def box_share(box: Box, image_shape: tuple[int, int]) -> float:
    """The share of the image the box covers: what a map spread evenly everywhere would put inside it."""
    h, w = image_shape
    x0, y0, x1, y1 = max(box[0], 0), max(box[1], 0), min(box[2], w), min(box[3], h)
    return max(0, x1 - x0) * max(0, y1 - y0) / float(h * w)


def load_explainer(path: Path, method: str = "gradcam", min_grid: int = MIN_GRID) -> Explainer:
    """The Keras model at `path` (safe mode) taken apart for Grad-CAM (`explainer`)."""
    import keras

    return explainer(keras.models.load_model(path), method, min_grid)


# ---------------------------------------------------------------------------------------------
# A run's analyses: the saliency gallery, and how much of the map lies on the glasses


def gallery_indices(labels: list[int], probabilities: list[float], wrong: int = 18,
                    right: int = 3) -> list[tuple[int, str]]:
    """Which test images the gallery shows: the `wrong` most confident mistakes, then the `right`
    most confident correct images of each class; (index, group) pairs."""
    from glasses.figures import misclassified

    chosen = [(i, "misclassified") for i in misclassified(labels, probabilities)[:wrong]]
    for label in (1, 0):
        correct = [i for i, (y, p) in enumerate(zip(labels, probabilities))
                   if int(y) == label and int(p >= 0.5) == label]
        correct.sort(key=lambda i: -abs(probabilities[i] - 0.5))
        chosen += [(i, "correct") for i in correct[:right]]
    return chosen


def draw_gallery(explainer_: Explainer, paths: list[str], labels: list[int], probabilities: list[float], out: Path,
                 boxes: dict[int, Box] | None = None) -> Path:
    """The saliency gallery of a run's test images (`gallery_indices`), each with its map and,
    with `boxes`, its glasses' box."""
    from glasses.dataset import face_id
    from glasses.figures import saliency_gallery
    from glasses.inputs import read_rgb

    chosen = gallery_indices(labels, probabilities)
    images = [read_rgb(paths[i]) for i, _ in chosen]
    found = explain_arrays(explainer_, images)
    tiles = [{"image": image, "map": s.combined, "label": labels[i], "probability": s.probability, "group": group,
              "box": (boxes or {}).get(face_id(paths[i]))} for (i, group), image, s in zip(chosen, images, found)]
    wrong = sum(1 for i, p in enumerate(probabilities) if int(p >= 0.5) != int(labels[i]))
    shown = sum(1 for _, group in chosen if group == "misclassified")
    title = (f"{METHOD_NAMES[explainer_.method]} of P(glasses) on the test images: {shown} of the {wrong} "
             "misclassified, then the most confident correct ones of each class"
             + ("; dashed: the glasses' box" if boxes else ""))
    return saliency_gallery(tiles, out, title)


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def attention(explainer_: Explainer, items: list[tuple[str, Box]], chunk: int = 64) -> dict:
    """How much of each network's map, and of the model's, lies inside the glasses' boxes.

    Args:
        explainer_: The model taken apart (`explainer`).
        items: (image path, its glasses' box) pairs.
        chunk: Images decoded at a time (memory stays bounded).

    Returns:
        images, uniform_share (the mean share of the image the boxes cover: what a map spread
        evenly would score), model (share: the mean share of the model's map inside the box;
        ratio: share / uniform_share; empty: maps that are zeros everywhere, left out of both
        means) and networks (the same per network, with its name, weight and layer).
    """
    from glasses.inputs import read_rgb

    model: list[tuple[float, float]] = []
    networks: list[list[tuple[float, float]]] = [[] for _ in explainer_.networks]
    for start in range(0, len(items), chunk):
        part = items[start:start + chunk]
        images = [read_rgb(path) for path, _ in part]
        for (_, box), image, found in zip(part, images, explain_arrays(explainer_, images)):
            shape, uniform = image.shape[:2], box_share(box, image.shape[:2])
            model.append((mass_inside(found.combined, box, shape), uniform))
            for own, network_map in zip(networks, found.networks):
                own.append((mass_inside(network_map, box, shape), uniform))
    rows = [dict(name=n.name, weight=n.weight, layer=n.layer, **_shares(own))
            for n, own in zip(explainer_.networks, networks)]
    return {"images": len(items), "uniform_share": _mean([u for _, u in model]), "model": _shares(model),
            "networks": rows}


def _shares(pairs: list[tuple[float | None, float]]) -> dict:
    """The mean share inside the boxes and its ratio to the mean uniform share, over the maps
    with any mass (each image's box counted once per map it is compared with)."""
    kept = [(share, uniform) for share, uniform in pairs if share is not None]
    share, uniform = _mean([s for s, _ in kept]), _mean([u for _, u in kept])
    return {"share": share, "uniform_share": uniform, "ratio": round(share / uniform, 3) if kept and uniform else None,
            "empty": len(pairs) - len(kept)}


NO_BOXES = ("no {boxes} beside {csv}: the number needs the glasses' boxes, which `glasses synth` records (a "
            "dataset of photos has none; a built-in dataset synthesized before boxes were recorded gains them "
            "when `glasses synth` or a run on it meets it again)")


def looks_at_glasses(explainer_: Explainer, paths: list[str], data_dir: Path) -> dict:
    """`attention` on the test images that have a glasses' box in `data_dir`'s boxes.csv (looked
    up by the id in each image's name), or why there is no number."""
    from glasses.dataset import BOXES, face_id, find_layout, read_boxes

    boxes = read_boxes(Path(data_dir))
    if boxes is None:
        return {"available": False,
                "reason": NO_BOXES.format(boxes=BOXES, csv=find_layout(Path(data_dir)).csv)}
    items = [(path, boxes[face_id(path)]) for path in paths if face_id(path) in boxes]
    if not items:
        return {"available": False,
                "reason": f"none of the {len(paths)} test images has a box in {Path(data_dir) / BOXES}"}
    return {"available": True, "boxes": str(Path(data_dir) / BOXES), **attention(explainer_, items)}


def analyse(model_path: Path, predictions_csv: Path, data_dir: Path, gallery: Path, method: str = "gradcam") -> dict:
    """A run's saliency analyses: the gallery of its test images (misclassified and a few correct
    of each class) and, where the data has the glasses' boxes, how much of the maps lies on them.

    Args:
        model_path: The run's shipped model.
        predictions_csv: Its test predictions (path, label, probability), which name the images.
        data_dir: The run's dataset (its boxes.csv, if any, beside train.csv).
        gallery: The PNG to write.
        method: "gradcam" or "layercam".

    Returns:
        method (which layer of which network), gallery (its path) and glasses (`looks_at_glasses`).
    """
    import pandas as pd

    from glasses.dataset import read_boxes

    found = load_explainer(Path(model_path), method)
    predictions = pd.read_csv(predictions_csv)
    paths, labels = predictions["path"].astype(str).tolist(), predictions["label"].astype(int).tolist()
    drawn = draw_gallery(found, paths, labels, predictions["probability"].tolist(), Path(gallery),
                         read_boxes(Path(data_dir)))
    glasses = looks_at_glasses(found, paths, Path(data_dir))
    return {"method": found.describe(), "gallery": str(drawn), "glasses": glasses}


# ---------------------------------------------------------------------------------------------
# `glasses explain`: one overlay PNG per image


def overlay_names(files: list[Path]) -> list[str]:
    """The overlay file name of each image: `<stem>.saliency.png`, `-2`, `-3`... after a stem met before."""
    seen: dict[str, int] = defaultdict(int)
    names = []
    for path in map(Path, files):
        seen[path.stem] += 1
        count = seen[path.stem]
        names.append(f"{path.stem}{'' if count == 1 else f'-{count}'}.saliency.png")
    return names


def _require_image(path: Path) -> None:
    """Raises DatasetError naming `path` unless it is a file whose header an image decoder reads."""
    from glasses.dataset import open_image
    from glasses.errors import DatasetError

    if not path.is_file():
        raise DatasetError(f"{path}: no such file; pass image files or directories of them")
    try:
        with open_image(path):
            pass
    except DatasetError:
        raise
    except Exception as error:  # whatever PIL says about a file that is no image
        raise DatasetError(f"{path}: not an image ({type(error).__name__}: {error}); pass PNG or JPEG files") from error


def _decode(path: Path) -> np.ndarray:
    from glasses.errors import DatasetError
    from glasses.inputs import read_rgb

    try:
        return read_rgb(path)
    except DatasetError:
        raise
    except Exception as error:  # a header that reads but pixels that do not (a cut file)
        raise DatasetError(f"{path}: unreadable image ({type(error).__name__}: {error}); fix or remove it") from error


def explain_files(explainer_: Explainer, files: list[Path], out_dir: Path, threshold: float = 0.5, chunk: int = 16,
                  on_written=None) -> list[tuple[Path, float, Path]]:
    """Writes one overlay PNG per image into `out_dir` (the image, its map, P(glasses) and the
    label in the title), `chunk` images in memory at a time.

    Every file's header is read first, so a file that is no image ends it before anything is
    written. `on_written(path, probability, png)` is called after each PNG.

    Returns:
        (image, P(glasses), PNG) per image, in order.

    Raises:
        DatasetError: naming the first file that is missing, no image, or does not decode.
        OutputError: when an overlay would overwrite one of the images.
    """
    from glasses.errors import OutputError
    from glasses.figures import overlay_figure

    files = [Path(f) for f in files]
    for path in files:
        _require_image(path)
    targets = [Path(out_dir) / name for name in overlay_names(files)]
    clash = {t.resolve() for t in targets} & {f.resolve() for f in files}
    if clash:
        raise OutputError(f"the overlay {sorted(clash)[0]} would overwrite an input image; pass another --out")
    done = []
    for start in range(0, len(files), chunk):
        part = files[start:start + chunk]
        images = [_decode(path) for path in part]
        for path, image, found, target in zip(part, images, explain_arrays(explainer_, images), targets[start:]):
            label = "glasses" if found.probability >= threshold else "no glasses"
            overlay_figure(image, found.combined, f"{path.name}: P(glasses) = {found.probability:.3f}, {label}\n"
                           f"{METHOD_NAMES[explainer_.method]} of P(glasses)", target)
            done.append((path, found.probability, target))
            if on_written:
                on_written(path, found.probability, target)
    return done
