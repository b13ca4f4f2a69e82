"""The stage choice rules, on made-up trial tables."""

from __future__ import annotations

import pandas as pd
import pytest

from glasses.errors import SearchError
from glasses.stages import best_mean, choose_depth_and_optimizer, choose_image_size, smallest_within


def _table(column: str, groups: dict) -> pd.DataFrame:
    rows = [{column: value, "val_accuracy": acc, "status": "COMPLETED"}
            for value, accs in groups.items() for acc in accs]
    rows.append({column: 999, "val_accuracy": 1.0, "status": "FAILED"})  # never counts
    return pd.DataFrame(rows)


def test_size_rule_takes_the_smallest_size_within_tolerance_of_the_best():
    # The report: 64 ~0.81, 128 ~0.82, 256 ~0.81 -> no real gain from size -> 64.
    table = _table("image_size", {64: [0.80, 0.82], 128: [0.815, 0.825], 256: [0.81, 0.81]})
    assert choose_image_size(table, 0.01) == {"image_size": 64}
    assert choose_image_size(table, 0.0) == {"image_size": 128}


def test_size_rule_takes_a_bigger_size_when_it_truly_helps():
    table = _table("image_size", {64: [0.70, 0.72], 128: [0.85, 0.86], 256: [0.86, 0.86]})
    assert smallest_within(table, "image_size", 0.01) == 128


def test_layers_rule_reproduces_the_reports_choice_of_three():
    # The report: 1 ~0.70, 2 ~0.83, 3 ~0.85, 4 ~0.85, 5 ~0.86 -> 3 conv layers.
    table = _table("conv_layers", {1: [0.70], 2: [0.83], 3: [0.85], 4: [0.85], 5: [0.86]})
    assert smallest_within(table, "conv_layers", 0.01) == 3


def test_optimizer_rule_takes_the_best_mean():
    table = _table("optimizer", {"adam": [0.85, 0.86], "sgd": [0.80, 0.82, 0.90]})
    assert best_mean(table, "optimizer") == "adam"


def test_stage2_choice_of_depth_and_optimizer():
    table = pd.concat([_table("conv_layers", {1: [0.7], 3: [0.85], 5: [0.86]}).assign(optimizer="adam"),
                       _table("conv_layers", {2: [0.6]}).assign(optimizer="sgd")])
    assert choose_depth_and_optimizer(table, 0.01) == {"conv_layers": 3, "optimizer": "adam"}
    assert choose_depth_and_optimizer(table, 0.0) == {"conv_layers": 5, "optimizer": "adam"}


def test_no_completed_trial_is_an_error():
    table = pd.DataFrame([{"image_size": 64, "val_accuracy": None, "status": "FAILED"}])
    with pytest.raises(SearchError, match="no completed trial"):
        smallest_within(table, "image_size", 0.01)


def test_optimizer_is_compared_at_the_chosen_depth():
    # Marginally sgd looks better only because adam drew the shallow, bad trials.
    rows = [(1, "adam", 0.55), (1, "adam", 0.57), (3, "adam", 0.93), (3, "sgd", 0.86), (5, "sgd", 0.85)]
    table = pd.DataFrame([{"conv_layers": c, "optimizer": o, "val_accuracy": v, "status": "COMPLETED"}
                          for c, o, v in rows])
    assert best_mean(table, "optimizer") == "sgd"
    assert choose_depth_and_optimizer(table, 0.01) == {"conv_layers": 3, "optimizer": "adam"}
