"""Figures as PNG files (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

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
