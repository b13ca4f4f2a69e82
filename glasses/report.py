"""The run's summary: `summary.json` and its markdown rendering."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path

import pandas as pd

from glasses.config import Config
from glasses.dataset import CLASSES
from glasses.files import read_json, write_json, write_text
from glasses.stages import beyond, describe_search, superseded_searches
from glasses.workdir import WorkDir


class Stopwatch:
    """Wall-clock seconds per named step of a run."""

    def __init__(self) -> None:
        self.started = self.last = time.monotonic()
        self.started_at = time.time()  # Unix time: a time budget's clock, shared across processes
        self.laps: dict[str, float] = {}
        self.spans: dict[str, tuple[float, float]] = {}  # name -> (start, end), Unix time

    def lap(self, name: str) -> float:
        now = time.monotonic()
        self.laps[name] = round(now - self.last, 2)
        end = time.time()
        self.spans[name] = (round(end - (now - self.last), 2), round(end, 2))
        self.last = now
        return self.laps[name]

    def durations(self) -> dict[str, float]:
        return {**self.laps, "total": round(time.monotonic() - self.started, 2)}

    def windows(self) -> dict[str, tuple[float, float]]:
        """Each step's start and end (Unix time): which trials ran in which stage of this run."""
        return dict(self.spans)


def worker_utilization(stages: list[dict], windows: dict[str, tuple[float, float]], workers: int) -> dict:
    """How busy the tuner workers were: per stage, the seconds of the trials that ended within the
    stage's window over workers x the stage's wall (start-ups, waits for the chief and a last
    round that leaves a worker idle all count against it; stage 1's includes building the image
    caches); `overall` over the three stages.
    A stage reused from an earlier run (no trial ended in its window) is left out."""
    found, busy, wall = {}, 0.0, 0.0
    for stage in stages:
        name, span = stage["stage"], windows.get(stage["stage"])
        if span is None or not Path(stage.get("table", "")).is_file():
            continue
        table = pd.read_csv(stage["table"])
        ran = table[(table["ended_at"] >= span[0]) & (table["ended_at"] <= span[1])] if len(table) else table
        if ran.empty:
            continue
        seconds, stage_wall = float(ran["seconds"].sum()), span[1] - span[0]
        found[name] = {"trial_s": round(seconds, 1), "wall_s": round(stage_wall, 1), "workers": workers,
                       "utilization": round(seconds / (workers * stage_wall), 3)}
        busy, wall = busy + seconds, wall + stage_wall
    if found:
        found["overall"] = {"trial_s": round(busy, 1), "wall_s": round(wall, 1), "workers": workers,
                            "utilization": round(busy / (workers * wall), 3)}
    return found


def write_summary(config: Config, *, dataset: dict, split: dict, stages: list[dict], shipped: dict,
                  figures: dict, latent: dict, durations: dict, plan: dict | None = None,
                  decision: dict | None = None, windows: dict | None = None, saliency: dict | None = None) -> Path:
    """Writes `<work-dir>/summary.json`: the parts of the run plus the config that made it.

    Args:
        dataset, split: What organize and split found.
        stages: The stage summaries, in order.
        shipped: What `glasses.ensemble.ship_ensemble` returned.
        figures: Figure name -> path.
        latent: The latent baseline's result.
        durations: Seconds per step of the run.
        plan: What a time budget was turned into (glasses.planner.Plan.to_dict), if the run had one.
        decision: This run's model against the champion (glasses.registry.challenge).
        windows: Each step's start and end (Stopwatch.windows), for the workers' utilization.
        saliency: Where the model looks (glasses.saliency.analyse): its gallery and, with boxes,
            the share of its maps on the glasses.
    """
    summary = {"dataset": dataset, "split": split, "workers": config.search.workers,
               "stages": {stage["stage"]: stage for stage in stages}, **shipped, "figures": figures,
               "latent": latent, "durations_s": durations, "preset": config.preset,
               "config": config.model_dump(mode="json"), "plan": plan, "champion": decision,
               "achieved_fractions": split.get("fractions"), "saliency": saliency,
               "utilization": worker_utilization(stages, windows or {}, config.search.workers),
               "superseded": kept_searches(config, stages)}
    return write_json(WorkDir(config.work_dir).summary, summary)


def kept_searches(config: Config, stages: list[dict]) -> list[dict]:
    """The searches of earlier settings or data that this run keeps (search.keep_superseded)."""
    root = WorkDir(config.work_dir).root
    old = superseded_searches(root, [Path(p) for stage in stages for p in stage.get("specs", [])])
    going = beyond(old, config.search.keep_superseded)
    return [describe_search(folder, root) for folder in old if folder not in going]


def _superseded_lines(summary: dict) -> list[str]:
    kept = summary.get("superseded") or []
    if not kept:
        return []
    listed = "; ".join(f"`{s['search']}` ({s['trials']} trials, {s['mb']} MB)" for s in kept)
    keep = summary["config"]["search"]["keep_superseded"]
    return ["## Searches kept from earlier settings", "",
            f"{listed}. A run keeps the {keep} newest of each stage (`search.keep_superseded`); "
            "`glasses prune` removes them.", ""]


def summary_markdown(path: Path) -> str:
    """A short markdown account of a summary.json, for the Prefect UI and the terminal."""
    summary = read_json(path)
    data, split, shipped, best = summary["dataset"], summary["split"], summary["ensemble"], summary["best_single"]
    lines = [
        "# glasses run", "", *_warning_block(summary),
        f"- data: {data['labelled']} labelled ({data['glasses']} glasses, {data['no_glasses']} no glasses, "
        f"{data['ratio']:.2f} : 1); split {split['train']} / {split['val']} / {split['test']}",
    ]
    for name, stage in summary.get("stages", {}).items():
        lines.append(f"- {name}: {stage['trials']} trials by {', '.join(stage['workers'])}; "
                     f"chose {stage['chosen'] or '-'}; best val {stage['best_val_accuracy']:.4f}")
    lines += [
        f"- shipped {_shipped_name(shipped)} (of {shipped['members']} members) at {shipped['image_size']}px, by "
        f"{shipped['selection']}: val **{shipped['val_accuracy']:.4f}**, test **{shipped['test_accuracy']:.4f}**",
        f"- best single model (trial {best['trial_id']}): val {best['val_accuracy']:.4f}, "
        f"test {best['test_accuracy']:.4f}",
        f"- {_baseline_text(summary['alarm'])}",
        *_champion_summary(summary.get("champion")),
        f"- total time: {summary['durations_s']['total']:.0f} s; report: {Path(path).parent / 'report.md'}",
        *_budget_summary(summary),
    ]
    return "\n".join(lines) + "\n"


def _figure(summary: dict, name: str, caption: str) -> list[str]:
    path = summary.get("figures", {}).get(name)
    return [f"![{caption}](figures/{Path(path).name})", ""] if path else []


def _stage_lines(summary: dict) -> list[str]:
    lines = ["## Search stages", ""]
    for name, stage in summary["stages"].items():
        by_worker = ", ".join(f"{w}: {n}" for w, n in stage["trials_by_worker"].items())
        by_node = ", ".join(f"{w}: {n}" for w, n in stage.get("trials_by_node", {}).items())
        outcome = f"chose {stage['chosen']}" if stage["chosen"] else f"kept the {len(stage['kept'] or [])} best models"
        kept = ([f"Kept from {stage['kept_from']}, the champion (retune.keep_choices: the data changed and this "
                 "stage was not searched again); its numbers:", ""] if stage.get("kept_from") else [])
        stopped = f", {stage['stopped']} stopped early" if stage.get("stopped") else ""
        busy = summary.get("utilization", {}).get(name)
        busy = (f" Workers busy in trials {busy['utilization']:.0%} of the stage's {busy['wall_s']:.0f} s "
                f"({busy['trial_s']:.0f} trial-seconds, {busy['workers']} workers)." if busy else "")
        lines += [f"### {name}", "", *kept,
                  f"{stage['trials']} trials ({stage['completed']} completed{stopped}, {stage['failed']} failed; by tuner "
                  f"{by_worker}; by node {by_node or '-'}); "
                  f"best val accuracy {stage['best_val_accuracy']:.4f}; {outcome}. Table: `stages/{name}/trials.csv`."
                  f"{busy}", ""]
        if stage.get("fixed"):
            lines += ["Held fixed in every trial: " + ", ".join(f"{k} {v}" for k, v in stage["fixed"].items())
                      + ".", ""]
        for size, how in stage.get("progressive", {}).items():
            lines += [f"Trials at {size} px trained their first {how['steps']:,} of {how['of']:,} steps at {how['size']} px "
                      f"(`progressive`), then at {size} px; validation, checkpoints and early stopping saw only "
                      f"those at {size} px.", ""]
        if stage.get("tied_best"):
            tie = stage["tied_best"]
            lines += [f"The val split could not tell the best apart: {len(tie['trials'])} trials at val accuracy "
                      f"{tie['val_accuracy']:.4f} ({', '.join(tie['trials'])}); they are ranked by val log loss.", ""]
        if stage.get("stopped"):
            lines += [f"Trials stopped early were behind the median of the others at the same evaluation "
                      f"(`early_stop`); they are counted, not averaged, in the choice, and never kept.", ""]
        evidence = stage.get("evidence")
        if evidence and evidence["trials"]:
            lines += [f"The choice counts {evidence['trials']} trials of {evidence['stage']} at this size too "
                      f"({', '.join(evidence['ids'])}): they drew these hyperparameters at random and trained "
                      "alike; `trials.csv` holds this stage's own.", ""]
        elif evidence:
            lines += [f"No trial of {evidence['stage']} counts in the choice: {evidence['why']}.", ""]
        if stage.get("folds"):
            lines += [f"Each trial scored by {stage['folds']}-fold cross-validation over train+val (a val "
                      "split this small would make the choice noise).", ""]
        choices = {choice["column"]: choice for choice in stage.get("choices", [])}
        for column, means in stage["means"].items():
            choice = choices.get(column)
            if choice is None:  # a summary from before the rule compared losses
                lines += [f"| {column} | " + " | ".join(means) + " |", "|---|" + "---|" * len(means),
                          "| mean val accuracy | " + " | ".join(f"{v:.4f}" for v in means.values()) + " |", ""]
            else:
                lines += _choice_lines(choice)
            lines += _figure(summary, f"{name}_val_accuracy_by_{column}", f"{name}: val accuracy by {column}")
        lines += _figure(summary, f"{name}_val_accuracy_by_rank", f"{name}: every trial, kept ones dark")
    return lines


def _choice_lines(choice: dict) -> list[str]:
    """One compared column: per value its trials, mean ± standard error of val loss and accuracy,
    and which decided, the difference or the tie-break."""
    values = choice["values"]

    def cell(row: dict, name: str) -> str:
        return "-" if row[name] is None else f"{row[name]:.4f} ± {row[name + '_se']:.4f}"

    how = (f"{choice['chosen']}: better than the others by more than the standard error"
           if choice["decided_by"] == "difference" else
           f"{choice['chosen']} by the tie-break: {', '.join(map(str, choice['within_noise']))} are within "
           f"one standard error of the lowest loss ({choice['best']})")
    paired = [f"{value} against {choice['best']}: {row['paired']['difference']:+.4f} ± "
              f"{row['paired']['difference_se']:.4f} over {row['paired']['pairs']} pairs"
              for value, row in values.items() if row.get("paired")]
    if paired:
        how += (f"; compared in pairs, each trial against its twin at {choice['best']} (the same other "
                f"hyperparameters), so their spread cancels: {'; '.join(paired)}")
    return [f"| {choice['column']} | " + " | ".join(map(str, values)) + " |", "|---|" + "---|" * len(values),
            "| trials | " + " | ".join(str(row["trials"]) for row in values.values()) + " |",
            "| val log loss | " + " | ".join(cell(row, "val_loss") for row in values.values()) + " |",
            "| val accuracy | " + " | ".join(cell(row, "val_accuracy") for row in values.values()) + " |", "",
            f"Chose {choice['column']} {how} (compared on {choice['metric'].replace('_', ' ')}).", ""]


def _membership(shipped: dict) -> str:
    if shipped.get("warning"):
        return f"the best {shipped['members']}: too few reached val accuracy {shipped['threshold']}"
    return f"val accuracy >= {shipped['threshold']}"


_RULES = {"val_log_loss": ("the lowest validation log loss of the best single model, average and greedy "
                           "(a majority vote gives a vote share, no probability, so no log loss)",
                           "validation accuracy"),
          "val_accuracy": ("the highest validation accuracy of the best single model and the three ensembles",
                           "validation log loss")}


def _shipped_name(shipped: dict) -> str:
    return "the best single model" if shipped["method"] == "best_single" else f"the {shipped['method']} ensemble"


def selection_sentence(shipped: dict) -> str:
    """The one sentence that says what shipped and by which rule (`summary["ensemble"]`)."""
    rule, tie = _RULES[shipped["selection"]]
    if shipped["configured_method"] != "auto":
        return (f"Shipped: **{shipped['method']}**, as ensemble.method names it; the rule of "
                f"ensemble.selection ({rule}) would have picked {shipped['selected']}.")
    return (f"Shipped: **{shipped['method']}**, {rule}; ties go to {tie}, then to the simpler "
            "(best single, average, majority, greedy), and test is never used to choose.")


def _ensemble_lines(summary: dict) -> list[str]:
    table, shipped = summary["ensembles"], summary["ensemble"]
    lines = ["## Ensembles", "",
             f"{shipped['members']} members ({_membership(shipped)}) at {shipped['image_size']} px; "
             f"{_shipped_name(shipped)} is shipped as `model/ensemble.keras`.", "",
             selection_sentence(shipped), "",
             "| model | val accuracy | val log loss | test accuracy |", "|---|---|---|---|"]
    for name in ("best_single", "average", "majority", "greedy"):
        row = table[name]
        loss = f"{row['val_log_loss']:.4f}" if row.get("val_log_loss") is not None else "n/a (a vote share)"
        lines.append(f"| {name.replace('_', ' ')} | {row['val_accuracy']:.4f} | {loss} | {row['test_accuracy']:.4f} |")
    lines += ["", f"Greedy weights (times each member is counted): {table['greedy']['weights']}."]
    if shipped.get("warning"):
        lines += ["", f"> {shipped['warning']}"]
    return lines + [""]


def _baseline_text(alarm: dict) -> str:
    """The shipped model against always answering the majority class, in one sentence."""
    low, high = alarm["accuracy_ci95"]
    auc = "n/a" if alarm["test_roc_auc"] is None else f"{alarm['test_roc_auc']:.4f}"
    return (f"Test accuracy {alarm['test_accuracy']:.4f} (95% CI, Wilson: {low:.4f}-{high:.4f}) against "
            f"{alarm['majority_rate']:.4f} for always answering {CLASSES[alarm['majority_class']]} (the train "
            f"split's majority class); test ROC-AUC {auc}. The alarm is raised when the "
            f"ROC-AUC is under {alarm['min_roc_auc']} or that majority rate is not below the interval.")


def _warning_block(summary: dict) -> list[str]:
    """A quoted warning when the alarm was raised; nothing otherwise."""
    alarm = summary["alarm"]
    if not alarm["raised"]:
        return []
    advice = alarm["advice"][:1].upper() + alarm["advice"][1:]
    return [f"> **Warning: {alarm.get('verdict', 'nothing learned')}.** {alarm['reason']}.", ">", f"> {advice}.", ""]


def alarm_markdown(summary: dict) -> str:
    """The alarm's verdict for the Prefect UI: a warning or an all-clear, and the numbers."""
    verdict = summary["alarm"].get("verdict", "nothing learned")  # summaries before it had none
    title = f"# {verdict.capitalize()}" if summary["alarm"]["raised"] else "# The shipped model learned"
    return "\n".join([title, "", *_warning_block(summary), _baseline_text(summary["alarm"]), ""])


def _evaluation_lines(summary: dict) -> list[str]:
    metrics = summary["evaluation"]
    auc = f"{metrics['roc_auc']:.4f}" if metrics["roc_auc"] is not None else "n/a"
    return ["## Test evaluation of the shipped model", "",
            f"On {metrics['n']} test images: accuracy {metrics['accuracy']:.4f}, precision {metrics['precision']:.4f}, "
            f"recall {metrics['recall']:.4f}, F1 {metrics['f1']:.4f}, ROC-AUC {auc}.", "",
            _baseline_text(summary["alarm"]), "", *_warning_block(summary),
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
    data, split = summary["dataset"], summary["split"]
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in summary["durations_s"].items())
    overall = summary.get("utilization", {}).get("overall")
    if overall:
        timings += (f"; tuner workers busy in trials {overall['utilization']:.0%} of stages 1-3's "
                    f"{overall['wall_s']:.0f} s")
    lines = ["# glasses: run report", "", *_warning_block(summary),
             f"Preset `{summary['preset']}`, {summary['workers']} tuner workers per search.", "",
             "## Data", "",
             f"{data['labelled']} labelled images: {data['glasses']} glasses, {data['no_glasses']} no glasses "
             f"({data['ratio']:.2f} glasses per no-glasses). Split {split['train']} / {split['val']} / {split['test']} "
             "(train / val / test, stratified, seeded).", "",
             "Augmentation during training (flip, translation, rotation, zoom):", "",
             *_figure(summary, "augmentation", "augmentation samples"),
             *_stage_lines(summary), *_ensemble_lines(summary), *_evaluation_lines(summary), *saliency_lines(summary),
             *_latent_lines(summary), *_champion_lines(summary.get("champion")), "## Timings", "", timings, "", *_budget_lines(summary),
             *_superseded_lines(summary)]
    return "\n".join(lines)


def _champion_summary(decision: dict | None) -> list[str]:
    if not decision:
        return []
    verdict = "promoted: it serves now" if decision["promoted"] else f"not promoted: {decision['serving']} serves"
    return [f"- registry: this run's model is {decision['challenger']['run']}, {verdict} ({decision['reason']})"]


def _champion_table(decision: dict) -> list[str]:
    lines = ["| model | run | val accuracy | test accuracy |", "|---|---|---|---|"]
    for role in ("challenger", "champion"):
        row = decision.get(role)
        if row:
            lines.append(f"| {role} | {row['run']} | {row['val']:.4f} | {row['test']:.4f} |")
    return lines


def _champion_lines(decision: dict | None) -> list[str]:
    """The champion and this run's model (the challenger), scored now on the same images."""
    if not decision:
        return []
    verdict = "promoted" if decision["promoted"] else "not promoted"
    return ["## Champion", "",
            "This run's model (the challenger) and the model serving before it (the champion), both scored "
            "now on this run's val and test images:", "", *_champion_table(decision), "",
            f"The challenger was {verdict}: {decision['reason']}. The rule: promoted when at least as good on "
            f"val and not worse on test by more than {decision['margin']:g}. Serving now: {decision['serving']} "
            "(`model/ensemble.keras`; the registry: `glasses models`, `models/registry.csv`).", ""]


def champion_markdown(decision: dict) -> str:
    """The decision as a Prefect artifact."""
    verdict = "**promoted**" if decision["promoted"] else "**not promoted**"
    return "\n".join(["# Champion and challenger", "", *_champion_table(decision), "",
                      f"Challenger {decision['challenger']['run']} {verdict}: {decision['reason']}.", "",
                      f"Serving now: **{decision['serving']}**."]) + "\n"


RUN_STEPS = ("data", "plan", "stage1", "stage2", "stage3", "ensemble", "analyses")  # the flow's laps, in order


def planned_vs_actual(summary: dict) -> list[dict]:
    """A budgeted run's steps: seconds planned and taken; first what went before the plan (start-up,
    data, measuring), last the total to the summary. Empty without a budget."""
    plan, actual = summary.get("plan"), summary["durations_s"]
    if not plan:
        return []
    rows = [{"step": "before the plan", "planned_s": plan["spent_s"], "actual_s": plan["spent_s"]}]
    # in the run's order (summary.json sorts its keys)
    steps = sorted(plan["stages"], key=lambda step: RUN_STEPS.index(step) if step in RUN_STEPS else len(RUN_STEPS))
    rows += [{"step": step, "planned_s": plan["stages"][step], "actual_s": actual.get(step)} for step in steps]
    taken = plan["spent_s"] + sum(actual.get(step, 0.0) for step in plan["stages"])
    rows.append({"step": "total", "planned_s": plan["spent_s"] + sum(plan["stages"].values()), "actual_s": taken})
    return [{k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items()} for row in rows]


def _budget_summary(summary: dict) -> list[str]:
    rows = planned_vs_actual(summary)
    if not rows:
        return []
    total = rows[-1]
    return [f"- time budget {summary['plan']['budget_s']:.0f} s: planned {total['planned_s']:.0f} s, "
            f"took {total['actual_s']:.0f} s from the start to the summary (per step: report.md)"]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _budget_lines(summary: dict) -> list[str]:
    rows = planned_vs_actual(summary)
    if not rows:
        return []
    plan = summary["plan"]
    lines = ["## Time budget: planned vs actual", "",
             f"Budget {plan['budget_s']:.0f} s, sized at scale {plan['scale']:g} of the preset from the speed "
             "measured at the start (each trial planned at its max_steps, stages 2-3 at the largest size).", "",
             "| step | planned s | actual s |", "|---|---|---|"]
    lines += [f"| {r['step']} | {r['planned_s']:.0f} | {_seconds(r['actual_s'])} |" for r in rows]
    return lines + [""]


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
    metrics = summary["evaluation"]
    (tn, fp), (fn, tp) = metrics["confusion"]
    keys = ("n", "accuracy", "precision", "recall", "f1", "roc_auc")
    return ([{"metric": k, "value": metrics[k]} for k in keys]
            + [{"metric": f"confusion: {name}", "value": value}
               for name, value in (("true no glasses", tn), ("false glasses", fp), ("missed glasses", fn),
                                   ("true glasses", tp))])


def write_report(config: Config) -> Path:
    """Writes `<work-dir>/report.md` from `summary.json`."""
    work = WorkDir(config.work_dir)
    return write_text(work.report, render_report(read_json(work.summary)))


def _share_row(name: str, row: dict) -> str:
    share = "-" if row["share"] is None else f"{row['share']:.4f}"
    uniform = "-" if row["uniform_share"] is None else f"{row['uniform_share']:.4f}"
    ratio = "-" if row["ratio"] is None else f"**{row['ratio']:.2f}x**"
    return f"| {name} | {share} | {uniform} | {ratio} | {row['empty']} |"


def saliency_lines(summary: dict, heading: str = "### Where the model looks") -> list[str]:
    """The saliency gallery and the share of the maps on the glasses (or why there is no number)."""
    found = summary.get("saliency")
    if not found:
        return []
    lines = [heading, "", f"{found['method']}: the gradient of P(glasses) weighs the activations of that layer "
             "(each network's last convolutional layer with a grid of at least 8x8); red is where the evidence for "
             "glasses is. The misclassified test images, most confident first, then the most confident correct ones "
             "of each class:", "",
             f"![saliency gallery](figures/{Path(found['gallery']).name})", ""]
    glasses = found["glasses"]
    if not glasses["available"]:
        return lines + [f"No number for \"does it look at the glasses\": {glasses['reason']}.", ""]
    lines += [f"On the {glasses['images']} test images with glasses (their boxes: `{glasses['boxes']}`), the share of "
              "each map's mass inside the glasses' box, against the share of the image the box covers (what a map "
              "that looks everywhere would score); the ratio is the one over the other, 1 for a map spread evenly:",
              "", "| map | mass inside the box | box's share of the image | ratio | empty maps |",
              "|---|---|---|---|---|",
              _share_row("the model", glasses["model"])]
    for network in glasses["networks"]:
        counted = f", counted {network['weight']} times" if network["weight"] > 1 else ""
        lines.append(_share_row(f"{network['name']} ({network['layer']}{counted})", network))
    return lines + ["", "An empty map (zeros everywhere: no position's weighted activation is positive) has no mass to "
                    "share; it is left out of its row's means and counted.", ""]


def saliency_markdown(summary: dict) -> str:
    """Where the model looks, for the Prefect UI (figures linked as in the report: `embed_figures`)."""
    lines = saliency_lines(summary, "# Where the model looks") or ["# Where the model looks", "", "Not run."]
    return "\n".join(lines) + "\n"
