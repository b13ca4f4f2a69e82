"""Scoring models: members on the cached splits, the shipped ensemble on the raw images."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from glasses.config import EnsembleConfig
from glasses.dataset import read_manifest
from glasses.ensemble import accuracy, average_ensemble, candidates, load_member, save_model, select_members
from glasses.pipeline import read_rgb, subset_arrays


def predict_images(model, paths: list[str], batch_size: int = 64) -> np.ndarray:
    """P(glasses) for image files of any size and mode, batched by shape, in input order."""
    by_shape: dict[tuple, list[int]] = defaultdict(list)
    images = [read_rgb(p) for p in paths]
    for index, image in enumerate(images):
        by_shape[image.shape].append(index)
    out = np.zeros(len(paths), dtype=np.float32)
    for indices in by_shape.values():
        stacked = np.stack([images[i] for i in indices]).astype(np.float32)
        out[indices] = model.predict(stacked, batch_size=batch_size, verbose=0).reshape(-1)
    return out


def score_split(model, split_dir: Path, subset: str) -> tuple[np.ndarray, np.ndarray]:
    """The model's probabilities and the true labels on one subset's raw image files."""
    paths, labels = read_manifest(split_dir, subset)
    return predict_images(model, paths), np.asarray(labels)


def ship_ensemble(spec_paths: list[Path], cache_dir: Path, split_dir: Path, model_path: Path,
                  settings: EnsembleConfig) -> dict:
    """Builds the average ensemble of the passing models, saves it, and scores it and its members.

    Members and the best single model are scored on the cached val/test arrays; the shipped
    ensemble is reloaded from disk and scored on the raw image files, as a user would run it.
    """
    import keras

    members, warning = select_members(candidates(spec_paths), settings.threshold, settings.fallback)
    size = members[0].image_size
    models = [load_member(c, name=f"member_{i}_trial_{c.trial_id}") for i, c in enumerate(members)]
    cached = {s: subset_arrays(cache_dir, s) for s in ("val", "test")}
    scores = {s: [accuracy(m.predict(x, verbose=0), y) for m in models] for s, (x, y) in cached.items()}
    save_model(average_ensemble(models, size), model_path)
    shipped = keras.models.load_model(model_path)
    ensemble = {s: accuracy(*score_split(shipped, split_dir, s)) for s in ("val", "test")}
    best = int(np.argmax(scores["val"]))
    return {
        "ensemble": {"members": len(members), "val_accuracy": round(ensemble["val"], 4),
                     "test_accuracy": round(ensemble["test"], 4), "image_size": size,
                     "trial_ids": [c.trial_id for c in members], "threshold": settings.threshold,
                     "warning": warning, "path": str(model_path)},
        "best_single": {"trial_id": members[best].trial_id, "val_accuracy": round(scores["val"][best], 4),
                        "test_accuracy": round(scores["test"][best], 4),
                        "search_val_accuracy": round(members[best].val_accuracy, 4)},
        "members": [{"trial_id": c.trial_id, "search_val_accuracy": round(c.val_accuracy, 4),
                     "val_accuracy": round(v, 4), "test_accuracy": round(t, 4)}
                    for c, v, t in zip(members, scores["val"], scores["test"])],
    }
