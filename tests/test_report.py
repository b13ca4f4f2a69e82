"""The report: how the members were picked, the one rule that chose what shipped, the
majority-class baseline and the alarm when nothing was learned."""

from __future__ import annotations

import pytest

from glasses.files import write_json
from glasses.report import _ensemble_lines, alarm_markdown, ensembles_rows, render_report, summary_markdown
from tests.conftest import run_summary


def _summary(warning: str | None) -> dict:
    summary = run_summary(learned=True)
    summary["ensemble"]["warning"] = warning
    return summary


def test_members_above_the_threshold_are_named_so():
    text = "\n".join(_ensemble_lines(_summary(None)))
    assert "3 members (val accuracy >= 0.85) at 48 px" in text
    assert "| majority | 0.8800 | n/a (a vote share) | 0.8500 |" in text


def test_topped_up_members_are_not_claimed_to_pass_the_threshold():
    text = "\n".join(_ensemble_lines(_summary("1 model reached val accuracy 0.85; taking the best 3")))
    assert "3 members (the best 3: too few reached val accuracy 0.85)" in text
    assert "val accuracy >= 0.85" not in text
    assert "> 1 model reached val accuracy 0.85; taking the best 3" in text


def test_the_rule_that_shipped_is_one_sentence_beside_the_table():
    text = "\n".join(_ensemble_lines(run_summary(learned=True)))
    sentence = ("Shipped: **greedy**, the lowest validation log loss of the best single model, average and greedy "
                "(a majority vote gives a vote share, no probability, so no log loss); ties go to validation "
                "accuracy, then to the simpler (best single, average, majority, greedy), and test is never used "
                "to choose.")
    assert sentence in text.splitlines()
    assert text.index(sentence) < text.index("| model | val accuracy |")
    by_accuracy = "\n".join(_ensemble_lines(run_summary(learned=True, method="best_single", selection="val_accuracy")))
    assert ("Shipped: **best_single**, the highest validation accuracy of the best single model and the three "
            "ensembles; ties go to validation log loss") in by_accuracy
    assert "the best single model is shipped as `model/ensemble.keras`" in by_accuracy


def test_a_named_method_says_what_the_rule_would_have_picked():
    text = "\n".join(_ensemble_lines(run_summary(learned=True, method="average", configured="average")))
    assert ("Shipped: **average**, as ensemble.method names it; the rule of ensemble.selection (the lowest "
            "validation log loss of") in text and "would have picked greedy." in text


def test_the_shipped_row_is_marked_also_for_the_best_single_model():
    rows = ensembles_rows(run_summary(learned=True, method="best_single"))
    assert [row["model"] for row in rows if row["shipped"]] == ["best single"]


def test_a_report_of_a_model_that_learned_shows_the_baseline_and_no_warning():
    report = render_report(run_summary(learned=True))
    assert ("Test accuracy 1.0000 (95% CI, Wilson: 0.8389-1.0000) against 0.7000 for always answering glasses "
            "(the train split's majority class); test ROC-AUC 1.0000") in report
    assert "Warning" not in report and not report.splitlines()[2].startswith(">")


def test_a_report_of_a_model_that_learned_nothing_warns_at_the_top_and_says_what_to_try():
    summary = run_summary(learned=False)
    report = render_report(summary)
    lines = report.splitlines()
    assert lines[2].startswith("> **Warning: nothing learned.** test ROC-AUC 0.5000 is under 0.65; always "
                               "answering glasses (the train majority) scores 0.7000 on test")
    assert "> Try a bigger budget: more steps and trials" in report and "--time-budget" in report
    assert "Test accuracy 0.3000 (95% CI, Wilson: 0.1455-0.5190) against 0.7000" in report
    assert "## Ensembles" in report and "## Test evaluation of the shipped model" in report
    artifact = alarm_markdown(summary)
    assert artifact.startswith("# Nothing learned") and "> **Warning: nothing learned.**" in artifact
    assert alarm_markdown(run_summary(learned=True)).startswith("# The shipped model learned")


def test_a_report_of_a_fair_model_on_too_few_test_images_says_it_is_not_clear_and_how_to_tell():
    import numpy as np

    from glasses.evaluate import check_learning

    labels = np.array([1] * 14 + [0] * 6)  # run_summary's 20 test images; 16 right, a fair ranking
    probabilities = np.where(labels == 1, 0.8, 0.2)
    probabilities[[0, 1, 14, 15]] = [0.4, 0.4, 0.6, 0.6]
    summary = run_summary(learned=False)
    summary["alarm"] = check_learning(probabilities, labels, train_labels=[1] * 40 + [0] * 20).to_dict()
    report = render_report(summary)
    assert report.splitlines()[2].startswith("> **Warning: not clearly learned.** always answering glasses")
    assert "20 test images are too few to tell this model from the majority class" in report
    assert "> Score it on more labelled images (`glasses evaluate --data-dir D`" in report
    assert alarm_markdown(summary).startswith("# Not clearly learned")


def test_the_terminal_summary_names_what_shipped_and_the_alarm(tmp_path):
    path = write_json(tmp_path / "summary.json", run_summary(learned=False, method="best_single"))
    text = summary_markdown(path)
    assert "> **Warning: nothing learned.**" in text
    assert "- shipped the best single model (of 3 members) at 48px, by val_log_loss: val **0.8800**" in text
    assert "against 0.7000 for always answering glasses" in text


def test_each_stage_choice_says_whether_the_difference_or_the_tie_break_decided():
    import pandas as pd

    from glasses.report import _stage_lines
    from glasses.stages import choose_image_size

    rows = [(32, 0.42, 0.80), (32, 0.50, 0.76), (48, 0.40, 0.83), (48, 0.44, 0.80)]
    table = pd.DataFrame([{"image_size": s, "val_loss": lo, "val_accuracy": a, "status": "COMPLETED"} for s, lo, a in rows])
    chosen, choices = choose_image_size(table)
    stage = {"trials": 4, "completed": 4, "failed": 0, "trials_by_worker": {"tuner0": 4}, "best_val_accuracy": 0.83,
             "chosen": chosen, "choices": choices, "means": {"image_size": {"32": 0.78, "48": 0.815}},
             "folds": 5, "kept": None}
    text = "\n".join(_stage_lines({"stages": {"stage1": stage}, "figures": {}}))
    assert "Each trial scored by 5-fold cross-validation over train+val" in text
    assert "| val log loss | 0.4600 ± 0.0316 | 0.4200 ± 0.0316 |" in text
    assert ("Chose image_size 32 by the tie-break: 32, 48 are within one standard error of the lowest loss (48) "
            "(compared on val loss).") in text

    counted = {**stage, "evidence": {"stage": "stage1", "trials": 2, "ids": ["stage1/0", "stage1/1"]}}
    text = "\n".join(_stage_lines({"stages": {"stage2": counted}, "figures": {}}))
    assert "The choice counts 2 trials of stage1 at this size too (stage1/0, stage1/1)" in text
    none = {**stage, "evidence": {"stage": "stage1", "trials": 0, "ids": [], "why": "stage1 trained otherwise: x"}}
    assert "No trial of stage1 counts in the choice: stage1 trained otherwise: x." in "\n".join(
        _stage_lines({"stages": {"stage2": none}, "figures": {}}))
    rows = [(64, "adam", 0.3119), (64, "sgd", 0.4853), (32, "adam", 0.3948), (32, "sgd", 0.5070)]
    pairs = pd.DataFrame([{"image_size": s, "optimizer": o, "val_loss": lo, "val_accuracy": 0.8, "status": "COMPLETED"}
                          for s, o, lo in rows])
    paired = {**stage, "choices": choose_image_size(pairs)[1]}
    assert ("Chose image_size 64: better than the others by more than the standard error; compared in pairs, each "
            "trial against its twin at 64 (the same other hyperparameters), so their spread cancels: 32 against 64: "
            "+0.0523 ± 0.0306 over 2 pairs (compared on val loss).") in "\n".join(
        _stage_lines({"stages": {"stage1": paired}, "figures": {}}))
    held = {**stage, "fixed": {"conv_layers": 3}}
    assert "Held fixed in every trial: conv_layers 3." in "\n".join(_stage_lines({"stages": {"stage1": held}, "figures": {}}))
    assert "Held fixed" not in text
    started = {**stage, "progressive": {"64": {"size": 32, "steps": 900, "of": 1080}}}
    assert ("Trials at 64 px trained their first 900 of 1,080 steps at 32 px (`progressive`), then at 64 px; "
            "validation, checkpoints and early stopping saw only those at 64 px.") in "\n".join(
        _stage_lines({"stages": {"stage3": started}, "figures": {}}))
    assert "progressive" not in text


def test_worker_utilization_is_trial_time_over_workers_times_each_stage_wall(tmp_path):
    import pandas as pd

    from glasses.report import Stopwatch, worker_utilization

    def table(name: str, rows: list[tuple[float, float]]) -> dict:
        path = tmp_path / f"{name}.csv"
        pd.DataFrame([{"seconds": s, "ended_at": e} for s, e in rows]).to_csv(path, index=False)
        return {"stage": name, "table": str(path)}

    windows = {"stage1": (1000.0, 1100.0), "stage2": (1100.0, 1150.0), "stage3": (1150.0, 1400.0)}
    stages = [table("stage1", [(60, 1070), (70, 1095), (50, 990)]),  # the last ended in an earlier run
              table("stage2", [(40, 900)]),  # reused from an earlier run: left out
              table("stage3", [(200, 1390), (210, 1395)])]
    found = worker_utilization(stages, windows, workers=2)
    assert found["stage1"] == {"trial_s": 130.0, "wall_s": 100.0, "workers": 2, "utilization": 0.65}
    assert "stage2" not in found and found["stage3"]["utilization"] == pytest.approx(410 / 500, abs=1e-3)
    assert found["overall"]["utilization"] == pytest.approx(540 / 700, abs=1e-3)
    clock = Stopwatch()
    clock.lap("data")
    (start, end), = clock.windows().values()
    assert start <= end and end - start < 5
