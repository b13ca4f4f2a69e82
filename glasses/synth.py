"""A built-in synthetic stand-in for Kaggle's "Glasses or No Glasses" dataset.

The real dataset holds GAN faces, each generated from a 512-d latent vector that `train.csv`
lists beside its label. This module imitates that: every sample has a latent z ~ N(0, I_512);
the face drawn is a deterministic function of z (face, hair, eyes, background, pose, glasses
style) and the label is a linear rule on z, `z @ w > t`, like a GAN attribute direction. As in
the report, some labels are wrong: about 4% of the faces are drawn against their label, so an
image classifier tops out below 100% while a classifier on the latents does not.

It is also about as hard as the real data below that ceiling: some glasses are thin, faint
frames, some faces without glasses have dark rings around the eyes, and every image carries
its own amount of sensor noise. The report's CNNs scored about 0.81 on average and 0.89 at
best on validation; here stage 1 of `quick` measured 0.75-0.82 per size (32-64 px) and the
best model of stage 3 0.83-0.90, so single models stay below the label-noise ceiling and an
ensemble has errors to fix.

The output has exactly the layout of a Kaggle download, as `glasses.dataset` defines it, so one
code path serves both:

    <out>/train.csv   id,v1..v512,glasses
    <out>/test.csv    id,v1..v512
    <out>/faces-spring-2020/faces-spring-2020/face-<id>.png
    <out>/synth.json  the parameters (and counts) that made it
    <out>/boxes.csv   id,x0,y0,x1,y1: where each image drawn with glasses has them (`glasses_box`)

Nothing runs at import time.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
from PIL import Image, ImageDraw

from glasses.config import DataConfig
from glasses.dataset import (BOX_COLUMNS, BOXES, ID_COLUMN, IMAGE_SUBDIR, LABEL_COLUMN, LATENT_COLUMNS,
                             LATENT_DIM, face_file_name)
from glasses.errors import SynthError
from glasses.files import atomic_dir, write_text

GLASSES_FRACTION = 1.74 / 2.74  # the real data's 1.74 'glasses' per 'no glasses'
MISLABEL_RATE = 0.04
MANIFEST = "synth.json"
LABEL_MARGIN = 2.0  # latents keep this distance (in std units) from the label boundary
FORMAT_VERSION = 3  # bump when the drawing changes, so old outputs are not mistaken for new
_LABEL_AXIS_SEED = 20200415  # fixed: the "glasses direction" is the same for every dataset seed
_SUPERSAMPLE = 2
# Difficulty, set so that single models stay below the label-noise ceiling as on the real data
# (the report: best single model val 0.8931, average ensemble 0.9065).
FAINT_FRACTION = 0.3  # of the glasses: thin frames drawn at FAINT_OPACITY
FAINT_OPACITY = (0.12, 0.5)
RING_FRACTION = 0.25  # of all faces: dark rings around the eyes, with or without glasses
MAX_NOISE = 14.0  # grey levels; each image draws its sensor noise std from 0..MAX_NOISE
_CHUNK = 32


@dataclass(frozen=True)
class SynthResult:
    """What `synthesize` wrote (or found already written).

    Attributes:
        out_dir: The dataset root, in the Kaggle layout.
        train: Labelled images (rows of train.csv).
        test: Unlabelled images (rows of test.csv).
        glasses: Rows of train.csv labelled 1.
        no_glasses: Rows of train.csv labelled 0.
        mislabelled: Rows of train.csv whose image contradicts their label.
        seconds: Wall time of this call.
    """

    out_dir: Path
    train: int
    test: int
    glasses: int
    no_glasses: int
    mislabelled: int
    seconds: float


@dataclass(frozen=True)
class SynthPlan:
    """Everything about a dataset except its pixels: ids, latents, labels, what gets drawn."""

    ids: np.ndarray  # int, 1-based; the first `train` are labelled
    latents: np.ndarray  # float (count, 512), rounded to the 6 digits the CSVs hold
    labels: np.ndarray  # int 0/1, from the latents alone
    drawn: np.ndarray  # bool, glasses drawn on the image; != labels where mislabelled
    train: int

    @property
    def mislabelled(self) -> np.ndarray:
        """Bool mask of the samples whose image contradicts their label."""
        return self.drawn != self.labels.astype(bool)


# --------------------------------------------------------------------------- labels and latents


def unlabelled_count(n: int) -> int:
    """Unlabelled (test.csv) images made alongside `n` labelled ones."""
    return max(1, n // 10)


def label_axis() -> np.ndarray:
    """The fixed unit vector w of the labelling rule `z @ w > t` (independent of any seed)."""
    w = np.random.default_rng(_LABEL_AXIS_SEED).standard_normal(LATENT_DIM)
    return w / np.linalg.norm(w)


def label_threshold() -> float:
    """The t that makes P(z @ w > t) = GLASSES_FRACTION for z ~ N(0, I)."""
    return NormalDist().inv_cdf(1.0 - GLASSES_FRACTION)


def label_latents(z: np.ndarray) -> np.ndarray:
    """Labels (1 = glasses) of latents `z` of shape (count, 512) or (512,)."""
    return (np.asarray(z, dtype=np.float64) @ label_axis() > label_threshold()).astype(np.int64)


def sample_latents(count: int, seed: int) -> np.ndarray:
    """Latents z ~ N(0, I_512), rounded to 6 significant digits exactly as the CSVs store them.

    Rounding first makes labels and images functions of the numbers in the CSV themselves.
    """
    z = _with_margin(np.random.default_rng(seed).standard_normal((count, LATENT_DIM)))
    return np.array([float(f"{v:.6g}") for v in z.ravel().tolist()]).reshape(z.shape)


def _with_margin(z: np.ndarray, gap: float = LABEL_MARGIN) -> np.ndarray:
    """Moves each latent along w until it is at least `gap` from the label boundary.

    Keeps every label (the sign of z @ w - t) and the class ratio. Without the margin a dense
    512-d boundary needs far more than a few thousand rows to learn (a latent classifier
    trained on 1200 rows scored 0.75); with it the latents separate the classes, as the real
    GAN's do (the report's latent baseline: 0.9956).
    """
    offset = z @ label_axis() - label_threshold()
    target = np.where(offset >= 0, np.maximum(offset, gap), np.minimum(offset, -gap))
    return z + (target - offset)[:, None] * label_axis()


def mislabel_mask(count: int, seed: int, rate: float = MISLABEL_RATE, stream: int = 0) -> np.ndarray:
    """Bool mask choosing round(rate * count) samples to draw against their label.

    `stream` tells apart the masks of one seed's splits (0 train, 1 test).
    """
    rng = np.random.default_rng([seed, 0x6C61, stream])  # a stream of its own, apart from the latents
    mask = np.zeros(count, dtype=bool)
    mask[rng.choice(count, size=round(rate * count), replace=False)] = True
    return mask


def plan(n: int, seed: int) -> SynthPlan:
    """Draws the latents, labels and mislabelling of `n` labelled + `unlabelled_count(n)` test samples."""
    count = n + unlabelled_count(n)
    latents = sample_latents(count, seed)
    labels = label_latents(latents)
    flip = np.concatenate([mislabel_mask(n, seed), mislabel_mask(count - n, seed, stream=1)])
    drawn = labels.astype(bool) ^ flip
    return SynthPlan(np.arange(1, count + 1), latents, labels, drawn, n)


# --------------------------------------------------------------------------- appearance parameters


RGB = tuple[int, int, int]
_SKIN = np.array([(58, 36, 24), (95, 60, 38), (141, 85, 36), (198, 134, 66), (224, 172, 105),
                  (241, 194, 125), (255, 219, 172), (255, 232, 212)], dtype=np.float64)
_HAIR = [(22, 18, 16), (58, 38, 24), (105, 72, 44), (140, 62, 30), (222, 190, 120), (150, 148, 145),
         (232, 230, 224)]
_HAIR_WEIGHTS = [0.28, 0.22, 0.16, 0.08, 0.12, 0.06, 0.03]  # natural colours; 6% are dyed (see _hair)
_IRIS = [(70, 45, 25), (110, 75, 40), (60, 110, 170), (80, 130, 90), (120, 120, 130)]
_DARK_FRAMES = [(14, 14, 14), (50, 30, 20), (22, 28, 64), (58, 58, 60), (84, 20, 24)]
_LIGHT_FRAMES = [(212, 175, 55), (205, 205, 212), (246, 246, 246), (205, 40, 40), (176, 104, 42),
                 (40, 120, 225)]
_SHAPES = ("round", "rect", "oval", "aviator")


class _Dims:
    """Hands out the latent's dimensions in order, as uniforms in (0, 1) via the normal CDF."""

    def __init__(self, uniforms: np.ndarray, start: int) -> None:
        self._u = uniforms
        self._i = start

    def unit(self) -> float:
        value = float(self._u[self._i])
        self._i += 1
        return value

    def span(self, low: float, high: float) -> float:
        return low + (high - low) * self.unit()

    def pick(self, options: list | tuple, weights: list[float] | None = None):
        cumulative = np.cumsum(weights if weights is not None else [1.0] * len(options))
        index = int(np.searchsorted(cumulative / cumulative[-1], self.unit(), side="right"))
        return options[min(index, len(options) - 1)]

    def colour(self, sat: tuple[float, float], val: tuple[float, float]) -> RGB:
        h, s, v = self.unit(), self.span(*sat), self.span(*val)
        return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h, s, v))


def _uniforms(z: np.ndarray) -> np.ndarray:
    return np.array([0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in np.asarray(z).tolist()])


@dataclass(frozen=True)
class _Scene:
    bg_a: RGB
    bg_b: RGB
    bg_angle: float
    blobs: tuple[tuple[float, float, float, RGB], ...]
    cloth: RGB
    light_angle: float
    light: float
    brightness: float
    contrast: float
    noise: float  # std of the sensor noise, grey levels
    noise_seed: int


@dataclass(frozen=True)
class _Head:
    cx: float  # centre, as fractions of the image side
    cy: float
    fw: float  # face width and height, fractions of the side
    fh: float
    angle: float  # degrees, in-plane head tilt
    yaw: float  # -1..1, shifts the features sideways
    jaw: float  # 0 round .. 1 square
    skin: RGB
    hair: RGB
    hair_style: str
    hairline: float  # fraction of fh from the top of the face
    beard: bool


@dataclass(frozen=True)
class _Features:
    eye_y: float  # fraction of fh above the face centre
    eye_sep: float  # fraction of fw from the centre to each eye
    eye_w: float  # fraction of fw
    eye_h: float  # fraction of eye_w
    iris: RGB
    gaze: float
    closed: bool
    brow_gap: float  # fraction of eye height above the eye
    brow_thick: float  # fraction of fw
    brow_slant: float
    nose: float
    mouth_y: float
    mouth_w: float
    smile: float
    lips: RGB
    rings: float  # opacity of dark rings around the eyes (make-up, shadows); 0 for none


@dataclass(frozen=True)
class _Glasses:
    shape: str
    width: float  # lens width, fraction of fw
    aspect: float  # lens height / width
    thick: float  # frame width, fraction of the image side
    frame: RGB
    lens: tuple[int, int, int, int] | None  # RGBA tint, None for clear lenses
    dy: float  # lens centre below the eye, fraction of lens height
    highlight: bool
    opacity: float  # of the frame: 1 for most, low for the thin, faint frames that are hard to see


@dataclass(frozen=True)
class FaceParams:
    """Everything that decides how one face looks; a pure function of its latent."""

    scene: _Scene
    head: _Head
    features: _Features
    glasses: _Glasses | None


def _sample_scene(d: _Dims) -> _Scene:
    bg_a = d.colour((0.0, 0.75), (0.2, 1.0))
    bg_b = d.colour((0.0, 0.75), (0.2, 1.0))
    angle = d.span(0, 2 * math.pi)
    blobs = tuple((d.span(0, 1), d.span(0, 1), d.span(0.05, 0.3), d.colour((0, 0.8), (0.2, 1.0)))
                  for _ in range(3))
    blobs = blobs[: int(d.span(0, 3.999))]
    cloth = d.colour((0.0, 0.9), (0.1, 0.95))
    return _Scene(bg_a, bg_b, angle, blobs, cloth, d.span(0, 2 * math.pi), d.span(0.0, 0.6),
                  d.span(0.8, 1.15), d.span(0.8, 1.15), d.span(0.0, MAX_NOISE), int(d.unit() * 2**31))


def _skin(d: _Dims) -> RGB:
    position = d.unit() * (len(_SKIN) - 1)
    low = int(position)
    high = min(low + 1, len(_SKIN) - 1)
    base = _SKIN[low] + (_SKIN[high] - _SKIN[low]) * (position - low)
    jitter = np.array([d.span(-12, 12), d.span(-10, 10), d.span(-10, 10)])
    return tuple(int(c) for c in np.clip(base + jitter, 0, 255))


def _hair(d: _Dims) -> RGB:
    dyed = d.colour((0.5, 0.9), (0.4, 0.9))
    if d.unit() < 0.06:
        return dyed
    return d.pick(_HAIR, _HAIR_WEIGHTS)


def _sample_head(d: _Dims) -> _Head:
    fh = d.span(0.54, 0.7)
    fw = fh * d.span(0.7, 0.84)
    cx, cy = 0.5 + d.span(-0.12, 0.12), 0.45 + d.span(-0.07, 0.07)
    angle, yaw, jaw = d.span(-16, 16), d.span(-1, 1), d.span(0, 1)
    skin, hair = _skin(d), _hair(d)
    style = d.pick(("bald", "short", "long", "curly", "bun", "fringe"), [0.08, 0.3, 0.28, 0.12, 0.08, 0.14])
    return _Head(cx, cy, fw, fh, angle, yaw, jaw, skin, hair, style, d.span(0.14, 0.3), d.unit() < 0.15)


def _sample_features(d: _Dims, skin: RGB) -> _Features:
    lips = tuple(int(c) for c in np.clip(np.array(skin) * [0.8, 0.55, 0.55] + [30, 0, 0], 0, 255))
    return _Features(
        eye_y=d.span(0.0, 0.1), eye_sep=d.span(0.19, 0.235), eye_w=d.span(0.14, 0.19),
        eye_h=d.span(0.42, 0.65), iris=d.pick(_IRIS), gaze=d.span(-0.25, 0.25), closed=d.unit() < 0.05,
        brow_gap=d.span(0.9, 1.9), brow_thick=d.span(0.02, 0.055), brow_slant=d.span(-0.15, 0.2),
        nose=d.span(0.1, 0.2), mouth_y=d.span(0.22, 0.31), mouth_w=d.span(0.24, 0.4),
        smile=d.span(-0.3, 1.0), lips=lips, rings=d.span(0.2, 0.65) if d.unit() < RING_FRACTION else 0.0,
    )


def _luma(colour: RGB) -> float:
    return 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]


def _frame_colour(d: _Dims, skin: RGB) -> RGB:
    dark, light = d.pick(_DARK_FRAMES), d.pick(_LIGHT_FRAMES)
    frame = light if d.unit() < 0.35 else dark
    # Real frames are meant to be seen; keep every frame clearly off the skin it sits on.
    if abs(_luma(frame) - _luma(skin)) < 90:
        frame = dark if _luma(skin) > 128 else (235, 235, 235)
    return frame


def _lens(d: _Dims) -> tuple[int, int, int, int] | None:
    kind, tint, opacity = d.unit(), d.colour((0.2, 0.8), (0.2, 0.7)), d.unit()
    if kind < 0.6:
        return None
    if kind < 0.85:  # tinted
        return (*tint, int(70 + 70 * opacity))
    return (*(int(c * 0.25) for c in tint), int(225 + 25 * opacity))  # sunglasses


def _sample_glasses(d: _Dims, skin: RGB) -> _Glasses:
    shape = d.pick(_SHAPES, [0.3, 0.3, 0.2, 0.2])
    aspect = {"round": 1.0, "rect": 0.7, "oval": 0.75, "aviator": 0.85}[shape] * d.span(0.9, 1.1)
    width, thick, frame = d.span(0.32, 0.42), d.span(0.035, 0.058), _frame_colour(d, skin)
    lens, dy, highlight = _lens(d), d.span(-0.15, 0.3), d.unit() < 0.5
    faint, opacity, thin = d.unit() < FAINT_FRACTION, d.span(*FAINT_OPACITY), d.span(0.022, 0.035)
    if faint:  # thin metal or rimless: clear lenses, a frame that barely shows
        return _Glasses(shape, width, aspect, thin, frame, None, dy, False, opacity)
    return _Glasses(shape, width, aspect, thick, frame, lens, dy, highlight, 1.0)


def face_params(z: np.ndarray, glasses: bool) -> FaceParams:
    """The appearance of the face with latent `z` (512,), with or without glasses.

    Scene and face come from dims 0..~80, glasses from dims 256.. so that drawing glasses
    or not never changes the rest of the face.
    """
    u = _uniforms(z)
    d = _Dims(u, 0)
    scene, head = _sample_scene(d), _sample_head(d)
    features = _sample_features(d, head.skin)
    spec = _sample_glasses(_Dims(u, 256), head.skin) if glasses else None
    return FaceParams(scene, head, features, spec)


# --------------------------------------------------------------------------- drawing


def _shade(colour: RGB, factor: float) -> RGB:
    return tuple(int(min(255, max(0, c * factor))) for c in colour)


def _background(scene: _Scene, size: int) -> Image.Image:
    ramp = np.linspace(-0.5, 0.5, 8)
    x, y = np.meshgrid(ramp, ramp)
    t = np.clip(0.5 + x * math.cos(scene.bg_angle) + y * math.sin(scene.bg_angle), 0, 1)[..., None]
    small = np.array(scene.bg_a) * (1 - t) + np.array(scene.bg_b) * t
    image = Image.fromarray(small.astype(np.uint8)).resize((size, size), Image.BILINEAR)
    draw = ImageDraw.Draw(image)
    for bx, by, radius, colour in scene.blobs:
        draw.ellipse(_box(bx * size, by * size, radius * size, radius * size), fill=colour)
    return image


def _box(cx: float, cy: float, rx: float, ry: float) -> tuple[float, float, float, float]:
    return (cx - rx, cy - ry, cx + rx, cy + ry)


def _chord(cx: float, cy: float, rx: float, ry: float, start: float, end: float) -> list:
    """Points of an ellipse's chord from `start` to `end` degrees (clockwise, 0 at 3 o'clock).

    ImageDraw.chord misdraws some float boxes (it can fill a band across the image), so the
    outline is computed here and drawn as a polygon.
    """
    steps = 24
    angles = [math.radians(start + (end - start) * k / steps) for k in range(steps + 1)]
    return [(cx + rx * math.cos(t), cy + ry * math.sin(t)) for t in angles]


def _body(draw: ImageDraw.ImageDraw, head: _Head, cloth: RGB, size: int) -> None:
    cx, cy, fw, fh = head.cx * size, head.cy * size, head.fw * size, head.fh * size
    draw.rectangle((cx - 0.2 * fw, cy, cx + 0.2 * fw, cy + 0.75 * fh), fill=_shade(head.skin, 0.82))
    draw.ellipse((cx - 1.15 * fw, cy + 0.66 * fh, cx + 1.15 * fw, cy + 1.9 * fh), fill=cloth)


def _hair_back(draw: ImageDraw.ImageDraw, head: _Head, face: _FacePixels) -> None:
    if head.hair_style == "long":
        top = face.cy - 0.55 * face.fh
        draw.rounded_rectangle((face.cx - 0.62 * face.fw, top, face.cx + 0.62 * face.fw,
                                face.cy + 0.62 * face.fh), radius=0.45 * face.fw, fill=head.hair)
    elif head.hair_style == "bun":
        draw.ellipse(_box(face.cx, face.cy - 0.55 * face.fh, 0.22 * face.fw, 0.17 * face.fh), fill=head.hair)


def _face_shape(draw: ImageDraw.ImageDraw, head: _Head, face: _FacePixels) -> None:
    cx, cy, fw, fh, s = face.cx, face.cy, face.fw, face.fh, head.skin
    ear_y, ear_rx, ear_ry = cy - 0.02 * fh, 0.09 * fw, 0.13 * fh
    for side in (-1, 1):
        shrink = 1 - 0.35 * max(0.0, side * head.yaw)  # the ear turned away looks smaller
        draw.ellipse(_box(cx + side * 0.49 * fw, ear_y, ear_rx * shrink, ear_ry), fill=_shade(s, 0.92))
    draw.ellipse(_box(cx, cy, fw / 2, fh / 2), fill=s)
    jaw_half = (0.3 + 0.16 * head.jaw) * fw
    draw.rounded_rectangle((cx - jaw_half, cy, cx + jaw_half, cy + 0.47 * fh), radius=0.22 * fw, fill=s)
    if head.beard:
        draw.polygon(_chord(cx, cy + 0.1 * fh, 0.46 * fw, 0.4 * fh, 22, 158), fill=head.hair)


def _hair_top(draw: ImageDraw.ImageDraw, head: _Head, face: _FacePixels) -> None:
    if head.hair_style == "bald":
        return
    cx, cy, fw, fh = face.cx, face.cy, face.fw, face.fh
    rx, ry = 0.54 * fw, 0.53 * fh
    lift = min(0.98, (0.5 - head.hairline) * fh / ry)  # chord height, as sin of its angle
    a = math.degrees(math.asin(lift))
    draw.polygon(_chord(cx, cy, rx, ry, 180 + a, 360 - a), fill=head.hair)
    if head.hair_style == "curly":
        for k in range(9):
            t = math.pi * (1.05 + 0.9 * k / 8)
            draw.ellipse(_box(cx + rx * math.cos(t), cy + ry * math.sin(t), 0.12 * fw, 0.12 * fw),
                         fill=head.hair)
    elif head.hair_style == "fringe":
        line_y = cy - lift * ry
        side = 1 if head.yaw >= 0 else -1
        draw.polygon([(cx - side * rx * 0.9, line_y), (cx + side * 0.2 * fw, line_y),
                      (cx - side * rx * 0.85, line_y + 0.16 * fh)], fill=head.hair)


def _eye_centres(head: _Head, f: _Features, face: _FacePixels) -> list[tuple[float, float]]:
    shift = head.yaw * 0.06 * face.fw
    y = face.cy - f.eye_y * face.fh
    return [(face.cx + shift + side * f.eye_sep * face.fw, y) for side in (-1, 1)]


def _eye(draw: ImageDraw.ImageDraw, f: _Features, ex: float, ey: float, ew: float, eh: float) -> None:
    if f.closed:
        lid = _chord(ex, ey - eh * 0.5, ew, eh, 20, 160)
        draw.line(lid, fill=(30, 20, 20), width=max(1, int(eh * 0.3)), joint="curve")
        return
    draw.ellipse(_box(ex, ey, ew, eh), fill=(240, 238, 232), outline=(40, 30, 30), width=max(1, int(eh * 0.15)))
    ix = ex + f.gaze * ew
    draw.ellipse(_box(ix, ey, eh * 0.8, eh * 0.8), fill=f.iris)
    draw.ellipse(_box(ix, ey, eh * 0.35, eh * 0.35), fill=(10, 10, 10))


def _eyes(draw: ImageDraw.ImageDraw, head: _Head, f: _Features, face: _FacePixels) -> None:
    ew, brow_colour = f.eye_w * face.fw / 2, _shade(head.hair, 0.7)
    eh = ew * f.eye_h
    for side, (ex, ey) in zip((-1, 1), _eye_centres(head, f, face)):
        _eye(draw, f, ex, ey, ew, eh)
        by = ey - eh * (1 + f.brow_gap)
        thick = max(1, int(f.brow_thick * face.fw))
        tilt = f.brow_slant * ew * side
        draw.line([(ex - 1.1 * ew, by + tilt), (ex, by - 0.25 * eh), (ex + 1.1 * ew, by - tilt)],
                  fill=brow_colour, width=thick, joint="curve")


def _nose_mouth(draw: ImageDraw.ImageDraw, head: _Head, f: _Features, face: _FacePixels) -> None:
    cx, cy, fw, fh = face.cx + head.yaw * 0.08 * face.fw, face.cy, face.fw, face.fh
    line = _shade(head.skin, 0.7)
    tip = cy + f.nose * fh
    draw.line([(cx, cy - 0.02 * fh), (cx - 0.05 * fw, tip), (cx + 0.04 * fw, tip)], fill=line,
              width=max(1, int(0.02 * fw)), joint="curve")
    my, mw = cy + f.mouth_y * fh, f.mouth_w * fw / 2
    if f.smile > 0.6:
        draw.polygon(_chord(cx, my - 0.04 * fh, mw, 0.09 * fh, 0, 180), fill=(120, 30, 35))
    else:
        bend = 0.06 * fh * f.smile
        draw.line([(cx - mw, my - bend), (cx, my + bend), (cx + mw, my - bend)], fill=f.lips,
                  width=max(2, int(0.035 * fh)), joint="curve")


def _lens_outline(shape: str, cx: float, cy: float, rx: float, ry: float, inner: int) -> list:
    steps = 28
    points = []
    for k in range(steps):
        t = 2 * math.pi * k / steps
        x, y = math.cos(t), math.sin(t)
        if shape == "aviator":  # flat top, drooping towards the nose
            y = y * (1.0 + 0.35 * max(0.0, x * inner)) if y > 0 else y * 0.75
        points.append((cx + rx * x, cy + ry * y))
    return points


def _draw_lens(draw: ImageDraw.ImageDraw, spec: _Glasses, box: tuple, fill, width: int, inner: int):
    outline = spec.frame if width else None
    cx, cy, rx, ry = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
    if spec.shape == "rect":
        draw.rounded_rectangle(box, radius=0.3 * ry, fill=fill, outline=outline, width=width)
    elif spec.shape == "aviator":
        draw.polygon(_lens_outline("aviator", cx, cy, rx, ry, inner), fill=fill, outline=outline, width=width)
    else:
        draw.ellipse(box, fill=fill, outline=outline, width=width)


def _lens_boxes(head: _Head, f: _Features, spec: _Glasses, face: _FacePixels) -> list[tuple]:
    gap = 0.04 * face.fw
    rx = min(spec.width * face.fw, 2 * f.eye_sep * face.fw - gap) / 2
    ry = rx * spec.aspect
    return [_box(ex, ey + spec.dy * ry, rx, ry) for ex, ey in _eye_centres(head, f, face)]


def _glasses(layer: Image.Image, head: _Head, f: _Features, spec: _Glasses, face: _FacePixels) -> None:
    boxes = _lens_boxes(head, f, spec, face)
    if spec.lens is not None or spec.highlight:
        tint = Image.new("RGBA", layer.size, (0, 0, 0, 0))
        tint_draw = ImageDraw.Draw(tint)
        for side, box in zip((1, -1), boxes):
            _draw_lens(tint_draw, spec, box, spec.lens or (255, 255, 255, 30), 0, side)
            if spec.highlight:
                w, h = box[2] - box[0], box[3] - box[1]
                tint_draw.line([(box[0] + 0.3 * w, box[1] + 0.25 * h), (box[0] + 0.55 * w, box[1] + 0.12 * h)],
                               fill=(255, 255, 255, 150), width=max(1, int(0.08 * h)))
        layer.alpha_composite(tint)
    if spec.opacity >= 1.0:
        _frame(ImageDraw.Draw(layer), spec, boxes, face)
        return
    frame = Image.new("RGBA", layer.size, (0, 0, 0, 0))
    _frame(ImageDraw.Draw(frame), spec, boxes, face)
    frame.putalpha(frame.getchannel("A").point(lambda a: int(a * spec.opacity + 0.5)))
    layer.alpha_composite(frame)


def _eye_rings(layer: Image.Image, head: _Head, f: _Features, face: _FacePixels) -> None:
    """Dark rings around the eyes, on faces with and without glasses alike: the look-alikes of a frame."""
    rings = Image.new("RGBA", layer.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(rings)
    rx = 1.35 * f.eye_w * face.fw / 2
    colour = (*_shade(head.skin, 0.45), int(255 * f.rings))
    for ex, ey in _eye_centres(head, f, face):
        draw.ellipse(_box(ex, ey + 0.1 * rx, rx, 0.8 * rx), outline=colour, width=max(1, int(0.035 * face.size)))
    layer.alpha_composite(rings)


def _frame(draw: ImageDraw.ImageDraw, spec: _Glasses, boxes: list, face: _FacePixels) -> None:
    width = max(1, int(round(spec.thick * face.size)))
    for side, box in zip((1, -1), boxes):
        _draw_lens(draw, spec, box, None, width, side)
    (l0, t0, r0, b0), (l1, t1, r1, b1) = boxes
    bridge_y = t0 + 0.3 * (b0 - t0)
    arch = bridge_y - 0.1 * (b0 - t0)
    bridge = [(r0 - width / 2, bridge_y), ((r0 + l1) / 2, arch), (l1 + width / 2, bridge_y)]
    draw.line(bridge, fill=spec.frame, width=width, joint="curve")
    temple_y = t0 + 0.3 * (b0 - t0)
    for x_lens, x_ear in ((l0, face.cx - 0.49 * face.fw), (r1, face.cx + 0.49 * face.fw)):
        draw.line([(x_lens, temple_y), (x_ear, temple_y - 0.02 * face.fh)], fill=spec.frame,
                  width=max(1, int(width * 0.8)))


@dataclass(frozen=True)
class _FacePixels:
    """The head's centre and face size in pixels of a `size` canvas."""

    cx: float
    cy: float
    fw: float
    fh: float
    size: int


def _face_pixels(head: _Head, size: int) -> _FacePixels:
    return _FacePixels(cx=head.cx * size, cy=head.cy * size, fw=head.fw * size, fh=head.fh * size, size=size)


def _tilt(layer: Image.Image, head: _Head, face: _FacePixels) -> Image.Image:
    pivot = (face.cx, face.cy + 0.5 * face.fh)  # tilt about the neck
    return layer.rotate(head.angle, resample=Image.BICUBIC, center=pivot)


def _head_layer(p: FaceParams, size: int) -> Image.Image:
    head = p.head
    face = _face_pixels(head, size)
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    _hair_back(draw, head, face)
    _face_shape(draw, head, face)
    _hair_top(draw, head, face)
    _eyes(draw, head, p.features, face)
    _nose_mouth(draw, head, p.features, face)
    if p.features.rings > 0:
        _eye_rings(layer, head, p.features, face)
    if p.glasses is not None:
        _glasses(layer, head, p.features, p.glasses, face)
    return _tilt(layer, head, face)


def glasses_box(params: FaceParams, resolution: int) -> tuple[int, int, int, int] | None:
    """Where `render_params(params, resolution)` draws the glasses: the box (x0, y0, x1, y1; x1
    and y1 exclusive, pixels of the written image) around every pixel of their frames, bridge,
    temples and lenses, after the head's tilt; None without glasses.

    Drawn as `render_params` draws them, alone on a clear layer, so the box is exactly theirs.
    """
    if params.glasses is None:
        return None
    size = resolution * _SUPERSAMPLE
    face = _face_pixels(params.head, size)
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    _glasses(layer, params.head, params.features, params.glasses, face)
    found = _tilt(layer, params.head, face).getchannel("A").getbbox()
    if found is None:
        return None
    x0, y0, x1, y1 = found
    return x0 // _SUPERSAMPLE, y0 // _SUPERSAMPLE, -(-x1 // _SUPERSAMPLE), -(-y1 // _SUPERSAMPLE)


def _lighting(image: Image.Image, scene: _Scene) -> Image.Image:
    size = image.size[0]
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    x, y = np.meshgrid(ramp, ramp)
    gain = 1 + scene.light * (x * math.cos(scene.light_angle) + y * math.sin(scene.light_angle))
    pixels = np.asarray(image, dtype=np.float32) * (gain[..., None] * scene.brightness)
    pixels = (pixels - 128) * scene.contrast + 128
    if scene.noise > 0:
        pixels += np.random.default_rng(scene.noise_seed).normal(0.0, scene.noise, pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


def render_params(params: FaceParams, resolution: int) -> Image.Image:
    """Draws `params` as an RGB image of `resolution` x `resolution` pixels."""
    size = resolution * _SUPERSAMPLE
    image = _background(params.scene, size)
    _body(ImageDraw.Draw(image), params.head, params.scene.cloth, size)
    image = image.convert("RGBA")
    image.alpha_composite(_head_layer(params, size))
    image = image.convert("RGB").reduce(_SUPERSAMPLE)
    return _lighting(image, params.scene)


def render_face(z: np.ndarray, glasses: bool, resolution: int) -> Image.Image:
    """The face of latent `z` (512,), drawn with or without glasses, as an RGB image."""
    return render_params(face_params(z, glasses), resolution)


# --------------------------------------------------------------------------- writing


def _render_chunk(root: Path, ids: np.ndarray, latents: np.ndarray, drawn: np.ndarray, resolution: int,
                  grey: bool) -> int:
    for image_id, z, glasses in zip(ids.tolist(), latents, drawn.tolist()):
        image = render_face(z, glasses, resolution)
        # Single-channel PNGs, as many real datasets are: the readers must take mode "L" too.
        (image.convert("L") if grey else image).save(root / IMAGE_SUBDIR / face_file_name(image_id), format="PNG")
    return len(ids)


def _render_all(root: Path, p: SynthPlan, resolution: int, workers: int, grey: bool) -> None:
    (root / IMAGE_SUBDIR).mkdir(parents=True)
    starts = range(0, len(p.ids), _CHUNK)
    jobs = [(root, p.ids[s:s + _CHUNK], p.latents[s:s + _CHUNK], p.drawn[s:s + _CHUNK], resolution, grey)
            for s in starts]
    if workers <= 1 or len(jobs) == 1:
        for job in jobs:
            _render_chunk(*job)
        return
    # Threads, not processes: PIL and NumPy release the GIL for the heavy parts, and no process
    # is forked from a parent that may already run TensorFlow. Every image is a pure function of
    # its own latent, so the result does not depend on the schedule.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(lambda job: _render_chunk(*job), jobs):
            pass


def boxes_csv(p: SynthPlan, resolution: int, workers: int = 1) -> str:
    """The text of boxes.csv: `glasses_box` of every image of `p` drawn with glasses (train.csv's
    and test.csv's ids), one row each, in id order."""
    drawn = [(image_id, z) for image_id, z, glasses in zip(p.ids.tolist(), p.latents, p.drawn.tolist()) if glasses]

    def box(item: tuple) -> tuple | None:
        return glasses_box(face_params(item[1], True), resolution)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # PIL draws without the GIL
        boxes = list(pool.map(box, drawn))
    lines = [",".join((ID_COLUMN, *BOX_COLUMNS))]
    lines += [",".join(map(str, (image_id, *found))) for (image_id, _), found in zip(drawn, boxes) if found]
    return "\n".join(lines) + "\n"


def _add_boxes(out_dir: Path, manifest: dict, workers: int) -> None:
    """Writes boxes.csv into a complete output made before it had one (the images are unchanged:
    the boxes follow from its n, seed and resolution)."""
    if not (out_dir / BOXES).is_file():
        write_text(out_dir / BOXES, boxes_csv(plan(manifest["n"], manifest["seed"]), manifest["resolution"], workers))


def _write_csv(path: Path, ids: np.ndarray, latents: np.ndarray, labels: np.ndarray | None) -> None:
    header = [ID_COLUMN, *LATENT_COLUMNS] + ([] if labels is None else [LABEL_COLUMN])
    lines = [",".join(header)]
    for row, image_id in enumerate(ids.tolist()):
        fields = [str(image_id)] + [f"{v:.6g}" for v in latents[row].tolist()]
        lines.append(",".join(fields + ([] if labels is None else [str(int(labels[row]))])))
    path.write_text("\n".join(lines) + "\n")


def _parameters(n: int, resolution: int, seed: int, grey: bool) -> dict:
    return {"generator": "glasses.synth", "format": FORMAT_VERSION, "n": n, "resolution": resolution,
            "seed": seed, "grey": grey}


def _manifest(p: SynthPlan, parameters: dict) -> dict:
    labels = p.labels[: p.train]
    return {**parameters, "train": p.train, "test": len(p.ids) - p.train,
            "glasses": int(labels.sum()), "no_glasses": int(p.train - labels.sum()),
            "mislabelled": int(p.mislabelled[: p.train].sum())}


def _complete_manifest(out_dir: Path, parameters: dict) -> dict | None:
    """The manifest of `out_dir` if it is a complete synth output made with `parameters`."""
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    manifest = {"grey": False, **manifest}  # written before grey outputs existed: RGB
    if any(manifest.get(k) != v for k, v in parameters.items()):
        return None
    count = manifest.get("train", 0) + manifest.get("test", 0)
    files = [out_dir / "train.csv", out_dir / "test.csv"]
    files += [out_dir / IMAGE_SUBDIR / face_file_name(i) for i in range(1, count + 1)]
    return manifest if count and all(f.is_file() for f in files) else None


def _result(out_dir: Path, manifest: dict, started: float) -> SynthResult:
    keys = ("train", "test", "glasses", "no_glasses", "mislabelled")
    return SynthResult(out_dir, *(int(manifest[k]) for k in keys), time.perf_counter() - started)


def _check_target(out_dir: Path, parameters: dict) -> dict | None:
    """The manifest if `out_dir` already holds this dataset; raises if it holds anything else."""
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        raise SynthError(f"{out_dir} exists and is not a directory; pass a new or empty directory")
    manifest = _complete_manifest(out_dir, parameters)
    if manifest is None and any(out_dir.iterdir()):
        raise SynthError(
            f"{out_dir} is not empty and is not a complete synthetic dataset with {parameters}; "
            "pass a new or empty directory, or remove it")
    return manifest


def synthesize(out_dir: Path, n: int = 1500, resolution: int = 128, seed: int = 1337,
               workers: int | None = None, grey: bool = False) -> SynthResult:
    """Writes a synthetic "Glasses or No Glasses" dataset in the Kaggle layout.

    Args:
        out_dir: Dataset root to create. It must not exist, be empty, or already hold the
            complete output of the same `n`, `resolution`, `seed` and `grey` (then nothing is redone).
        n: Labelled images (train.csv); `unlabelled_count(n)` unlabelled ones follow (test.csv).
        resolution: Side of the square RGB PNGs, in pixels.
        seed: Seed of the latents and of which samples are mislabelled.
        workers: Drawing threads; None uses os.cpu_count(). The bytes written do not depend on it.
        grey: Save single-channel (mode "L") PNGs instead of RGB ones.

    Returns:
        The counts written (or found) and the time taken.

    Raises:
        SynthError: `out_dir` holds something else, or a bad `n` or `resolution`.
    """
    started = time.perf_counter()
    if n < 1 or resolution < 8 or seed < 0:
        raise SynthError(f"need n >= 1, resolution >= 8 and seed >= 0, got n={n}, resolution={resolution}, "
                         f"seed={seed}")
    out_dir, parameters = Path(out_dir), _parameters(n, resolution, seed, grey)
    existing = _check_target(out_dir, parameters)
    if existing is not None:
        _add_boxes(out_dir, existing, workers or os.cpu_count() or 1)
        return _result(out_dir, existing, started)
    manifest = None
    try:
        # replace=False: only an empty directory may be replaced; _check_target refused the rest
        with atomic_dir(out_dir, replace=False) as tmp:
            manifest = _write_dataset(tmp, parameters, workers or os.cpu_count() or 1)
    except OSError as error:
        if manifest is None:  # the writing failed, not the move
            raise
        # Lost a race with another writer of the same dataset: theirs is as good as ours.
        done = _complete_manifest(out_dir, parameters)
        if done is None:
            raise SynthError(f"could not move the synthetic dataset into {out_dir}: {error}") from error
        return _result(out_dir, done, started)
    return _result(out_dir, manifest, started)


def _write_dataset(root: Path, parameters: dict, workers: int) -> dict:
    n = parameters["n"]
    p = plan(n, parameters["seed"])
    _render_all(root, p, parameters["resolution"], workers, parameters["grey"])
    _write_csv(root / "train.csv", p.ids[:n], p.latents[:n], p.labels[:n])
    _write_csv(root / "test.csv", p.ids[n:], p.latents[n:], None)
    (root / BOXES).write_text(boxes_csv(p, parameters["resolution"], workers))
    manifest = _manifest(p, parameters)
    # Written last: its presence (with every listed file) is what marks the output complete.
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def source_dir(data: DataConfig, builtin_dir: Path) -> Path:
    """The dataset a run reads: `data.data_dir`, or else the built-in dataset written (once)
    into `builtin_dir` with `data.synth_n` images at `data.synth_resolution` px."""
    if data.data_dir is not None:
        return Path(data.data_dir)
    return synthesize(builtin_dir, n=data.synth_n, resolution=data.synth_resolution, seed=data.seed).out_dir
