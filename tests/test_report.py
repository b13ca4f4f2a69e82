"""The report's ensemble section says how the members were picked."""

from __future__ import annotations

from glasses.report import _ensemble_lines


def _summary(warning: str | None) -> dict:
    row = {"val_accuracy": 0.88, "val_log_loss": 0.3, "test_accuracy": 0.85}
    return {"ensemble": {"members": 3, "threshold": 0.85, "image_size": 48, "method": "greedy", "warning": warning},
            "ensembles": {"best_single": row, "average": row, "majority": {**row, "val_log_loss": None},
                          "greedy": {**row, "weights": [2, 1, 1]}}}


def test_members_above_the_threshold_are_named_so():
    text = "\n".join(_ensemble_lines(_summary(None)))
    assert "3 members (val accuracy >= 0.85) at 48 px" in text
    assert "| majority | 0.8800 | n/a (a vote share) | 0.8500 |" in text


def test_topped_up_members_are_not_claimed_to_pass_the_threshold():
    text = "\n".join(_ensemble_lines(_summary("1 model reached val accuracy 0.85; taking the best 3")))
    assert "3 members (the best 3: too few reached val accuracy 0.85)" in text
    assert "val accuracy >= 0.85" not in text
    assert "> 1 model reached val accuracy 0.85; taking the best 3" in text
