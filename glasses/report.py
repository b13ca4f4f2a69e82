"""The run's summary: `summary.json` and its markdown rendering."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path

from glasses.config import Config
from glasses.files import read_json, write_json, write_text
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


def write_summary(config: Config, *, dataset: dict, split: dict, stages: list[dict], shipped: dict,
                  figures: dict, latent: dict, durations: dict) -> Path:
    """Writes `<work-dir>/summary.json`: the parts of the run plus the config that made it.

    Args:
        dataset, split: What organize and split found.
        stages: The stage summaries, in order.
        shipped: What `glasses.ensemble.ship_ensemble` returned.
        figures: Figure name -> path.
        latent: The latent baseline's result.
        durations: Seconds per step of the run.
    """
    summary = {"dataset": dataset, "split": split, "workers": config.search.workers,
               "stages": {stage["stage"]: stage for stage in stages}, **shipped, "figures": figures,
               "latent": latent, "durations_s": durations, "preset": config.preset,
               "config": config.model_dump(mode="json")}
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
        f"- {e['method']} ensemble of {e['members']} at {e['image_size']}px: val **{e['val_accuracy']:.4f}**, "
        f"test **{e['test_accuracy']:.4f}**",
        f"- best single model (trial {b['trial_id']}): val {b['val_accuracy']:.4f}, test {b['test_accuracy']:.4f}",
        f"- total time: {s['durations_s']['total']:.0f} s; report: {Path(path).parent / 'report.md'}",
    ]
    return "\n".join(lines) + "\n"


def _figure(summary: dict, name: str, caption: str) -> list[str]:
    path = summary.get("figures", {}).get(name)
    return [f"![{caption}](figures/{Path(path).name})", ""] if path else []


def _stage_lines(summary: dict) -> list[str]:
    lines = ["## Search stages", ""]
    for name, stage in summary["stages"].items():
        by_worker = ", ".join(f"{w}: {n}" for w, n in stage["trials_by_worker"].items())
        outcome = f"chose {stage['chosen']}" if stage["chosen"] else f"kept the {len(stage['kept'] or [])} best models"
        lines += [f"### {name}", "",
                  f"{stage['trials']} trials ({stage['completed']} completed, {stage['failed']} failed; {by_worker}); "
                  f"best val accuracy {stage['best_val_accuracy']:.4f}; {outcome}. Table: `stages/{name}/trials.csv`.",
                  ""]
        for column, means in stage["means"].items():
            lines += [f"| {column} | " + " | ".join(means) + " |", "|---|" + "---|" * len(means),
                      "| mean val accuracy | " + " | ".join(f"{v:.4f}" for v in means.values()) + " |", ""]
            lines += _figure(summary, f"{name}_val_accuracy_by_{column}", f"{name}: val accuracy by {column}")
        lines += _figure(summary, f"{name}_val_accuracy_by_rank", f"{name}: every trial, kept ones dark")
    return lines


def _membership(shipped: dict) -> str:
    if shipped.get("warning"):
        return f"the best {shipped['members']}: too few reached val accuracy {shipped['threshold']}"
    return f"val accuracy >= {shipped['threshold']}"


def _ensemble_lines(summary: dict) -> list[str]:
    table, shipped = summary["ensembles"], summary["ensemble"]
    lines = ["## Ensembles", "",
             f"{shipped['members']} members ({_membership(shipped)}) at {shipped['image_size']} px. "
             f"Shipped: **{shipped['method']}** (chosen on validation only) as `model/ensemble.keras`.", "",
             "| model | val accuracy | val log loss | test accuracy |", "|---|---|---|---|"]
    for name in ("best_single", "average", "majority", "greedy"):
        row = table[name]
        loss = f"{row['val_log_loss']:.4f}" if row.get("val_log_loss") is not None else "n/a (a vote share)"
        lines.append(f"| {name.replace('_', ' ')} | {row['val_accuracy']:.4f} | {loss} | {row['test_accuracy']:.4f} |")
    lines += ["", "Ties in val accuracy are broken by val log loss. Greedy weights (times each member "
              f"is counted): {table['greedy']['weights']}."]
    if shipped.get("warning"):
        lines += ["", f"> {shipped['warning']}"]
    return lines + [""]


def _evaluation_lines(summary: dict) -> list[str]:
    e = summary["evaluation"]
    auc = f"{e['roc_auc']:.4f}" if e["roc_auc"] is not None else "n/a"
    return ["## Test evaluation of the shipped model", "",
            f"On {e['n']} test images: accuracy {e['accuracy']:.4f}, precision {e['precision']:.4f}, "
            f"recall {e['recall']:.4f}, F1 {e['f1']:.4f}, ROC-AUC {auc}.", "",
            *_figure(summary, "confusion", "confusion matrix"),
            "### Misclassified test images", "", *_figure(summary, "misclassified", "misclassified test images")]


def _latent_lines(summary: dict) -> list[str]:
    latent = summary.get("latent") or {}
    if not latent or latent.get("skipped"):
        return ["## Latent vectors", "", latent.get("reason") or "Not run.", ""]
    return ["## Latent vectors", "",
            f"A Dense 128-16-1 network on the 512-d latents (train {latent['train']}, val {latent['val']}, "
            f"test {latent['test']}): val accuracy {latent['val_accuracy']:.4f}, "
            f"test accuracy **{latent['test_accuracy']:.4f}**, against {summary['ensemble']['test_accuracy']:.4f} "
            "for the image ensemble: the labels follow the latents, the images carry labelling errors.", ""]


def render_report(summary: dict) -> str:
    """The run as a human-readable markdown report; figures are linked relative to the work dir."""
    d, sp = summary["dataset"], summary["split"]
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in summary["durations_s"].items())
    lines = ["# glasses: run report", "",
             f"Preset `{summary['preset']}`, {summary['workers']} tuner workers per search.", "",
             "## Data", "",
             f"{d['labelled']} labelled images: {d['glasses']} glasses, {d['no_glasses']} no glasses "
             f"({d['ratio']:.2f} glasses per no-glasses). Split {sp['train']} / {sp['val']} / {sp['test']} "
             "(train / val / test, stratified, seeded).", "",
             "Augmentation during training (flip, translation, rotation, zoom):", "",
             *_figure(summary, "augmentation", "augmentation samples"),
             *_stage_lines(summary), *_ensemble_lines(summary), *_evaluation_lines(summary),
             *_latent_lines(summary), "## Timings", "", timings, ""]
    return "\n".join(lines)


def embed_figures(markdown: str, root: Path) -> str:
    """The report with each linked PNG (`](figures/x.png)`) inlined as a data URI, for a viewer
    that cannot read the work dir (the Prefect UI renders these)."""

    def inline(match: re.Match) -> str:
        path = Path(root) / match.group(1)
        if not path.is_file():
            return match.group(0)
        return f"](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"

    return re.sub(r"\]\((figures/[^)]+\.png)\)", inline, markdown)


def ensembles_rows(summary: dict) -> list[dict]:
    """The best single model and each ensemble method: val and test accuracy, one row each."""
    shipped = summary["ensemble"]["method"]
    return [{"model": name.replace("_", " "), "val_accuracy": row["val_accuracy"],
             "val_log_loss": row.get("val_log_loss"), "test_accuracy": row["test_accuracy"],
             "shipped": name == shipped} for name, row in summary["ensembles"].items()]


def metrics_rows(summary: dict) -> list[dict]:
    """The shipped model's test metrics and confusion matrix as rows."""
    e = summary["evaluation"]
    (tn, fp), (fn, tp) = e["confusion"]
    keys = ("n", "accuracy", "precision", "recall", "f1", "roc_auc")
    return ([{"metric": k, "value": e[k]} for k in keys]
            + [{"metric": f"confusion: {name}", "value": value}
               for name, value in (("true no glasses", tn), ("false glasses", fp), ("missed glasses", fn),
                                   ("true glasses", tp))])


def write_report(config: Config) -> Path:
    """Writes `<work-dir>/report.md` from `summary.json`."""
    work = WorkDir(config.work_dir)
    return write_text(work.report, render_report(read_json(work.summary)))
