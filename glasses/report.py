"""The run's summary: `summary.json` and its markdown rendering."""

from __future__ import annotations

import time
from pathlib import Path

from glasses.config import Config
from glasses.files import read_json, write_json
from glasses.workdir import WorkDir


class Stopwatch:
    """Wall-clock seconds per named step of a run."""

    def __init__(self) -> None:
        self.started = self.last = time.monotonic()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> float:
        now = time.monotonic()
        self.laps[name] = round(now - self.last, 2)
        self.last = now
        return self.laps[name]

    def durations(self) -> dict[str, float]:
        return {**self.laps, "total": round(time.monotonic() - self.started, 2)}


def write_summary(config: Config, parts: dict) -> Path:
    """Writes `<work-dir>/summary.json`: the parts of the run plus the config that made it."""
    summary = {**parts, "preset": config.preset, "config": config.model_dump(mode="json")}
    return write_json(WorkDir(config.work_dir).summary, summary)


def summary_markdown(path: Path) -> str:
    """A short markdown account of a summary.json, for the Prefect UI and the terminal."""
    s = read_json(path)
    d, sp, e, b = s["dataset"], s["split"], s["ensemble"], s["best_single"]
    lines = [
        "# glasses run", "",
        f"- data: {d['labelled']} labelled ({d['glasses']} glasses, {d['no_glasses']} no glasses, "
        f"{d['ratio']:.2f} : 1); split {sp['train']} / {sp['val']} / {sp['test']}",
    ]
    for name, stage in s.get("stages", {}).items():
        lines.append(f"- {name}: {stage['trials']} trials by {', '.join(stage['workers'])}; "
                     f"chose {stage['chosen'] or '-'}; best val {stage['best_val_accuracy']:.4f}")
    lines += [
        f"- ensemble of {e['members']} at {e['image_size']}px: val **{e['val_accuracy']:.4f}**, "
        f"test **{e['test_accuracy']:.4f}**",
        f"- best single model (trial {b['trial_id']}): val {b['val_accuracy']:.4f}, test {b['test_accuracy']:.4f}",
        f"- total time: {s['durations_s']['total']:.0f} s",
    ]
    return "\n".join(lines) + "\n"
