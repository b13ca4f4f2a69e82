"""The alarm when nothing was learned: the Wilson interval, the majority-class baseline, the verdict."""

from __future__ import annotations

import numpy as np
import pytest

from glasses.evaluate import ADVICE, check_learning, majority_baseline, wilson_interval

# 70 glasses, 30 no glasses in train; 35 and 15 on test
TRAIN = np.array([1] * 70 + [0] * 30)
TEST = np.array([1, 0] * 15 + [1] * 20)


def test_wilson_interval_on_known_numbers():
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)  # the textbook case
    assert wilson_interval(81, 100) == pytest.approx((0.7222, 0.8749), abs=1e-4)
    z2 = 1.959963984540054 ** 2
    assert wilson_interval(0, 10) == (0.0, pytest.approx(z2 / (10 + z2)))  # the closed form at 0
    assert wilson_interval(10, 10) == (pytest.approx(10 / (10 + z2)), 1.0)
    low, high = wilson_interval(7, 20)
    assert low < 7 / 20 < high and 0 < low and high < 1
    assert wilson_interval(70, 200)[1] - wilson_interval(70, 200)[0] < high - low  # more images, narrower


def test_wilson_interval_rejects_impossible_counts():
    for successes, n in ((3, 0), (-1, 5), (6, 5)):
        with pytest.raises(ValueError, match=f"successes={successes}, n={n}"):
            wilson_interval(successes, n)


def test_the_majority_class_comes_from_train_and_its_rate_from_test():
    assert majority_baseline(TRAIN, TEST) == (1, 0.7)
    # train says no glasses: its rate on the same test images is the other share
    assert majority_baseline(1 - TRAIN, TEST) == (0, 0.3)
    assert majority_baseline([0, 1], [0, 1, 1, 1]) == (1, 0.75)  # a tie in train: glasses


def test_a_constant_model_on_imbalanced_labels_raises_the_alarm():
    alarm = check_learning(np.full(len(TEST), 0.3), TEST, TRAIN)  # always "no glasses"
    assert alarm.raised
    assert alarm.majority_class == 1 and alarm.majority_rate == 0.7
    assert alarm.test_accuracy == 0.3 and alarm.test_roc_auc == 0.5
    assert alarm.accuracy_ci95[0] <= alarm.majority_rate
    assert "test ROC-AUC 0.5000 is under 0.65" in alarm.reason
    assert "always answering glasses (the train majority) scores 0.7000 on test, above" in alarm.reason
    assert alarm.advice == ADVICE
    for hint in ("max_steps", "max_trials", "image_sizes", "--time-budget", "more labelled data"):
        assert hint in alarm.message
    assert alarm.message.startswith("nothing learned: ") and not alarm.too_few and alarm.verdict == "nothing learned"


def test_a_constant_model_that_answers_the_majority_still_raises_it():
    alarm = check_learning(np.full(len(TEST), 0.8), TEST, TRAIN)  # always "glasses": accuracy = the rate
    assert alarm.raised and alarm.test_accuracy == alarm.majority_rate == 0.7
    assert "inside the test accuracy's 95% interval" in alarm.reason


def test_a_fair_model_on_too_few_test_images_raises_it_and_says_that_more_images_would_tell():
    # 40 test images, 26 glasses (the train majority: 0.65); 30 right (0.75) and a fair ranking
    labels = np.array([1] * 26 + [0] * 14)
    probabilities = np.where(labels == 1, 0.7, 0.3)
    probabilities[:5], probabilities[26:31] = 0.4, 0.6  # 5 wrong of each class
    alarm = check_learning(probabilities, labels, TRAIN)
    assert alarm.test_accuracy == 0.75 and alarm.majority_rate == 0.65 and alarm.test_roc_auc >= 0.65
    assert alarm.raised and alarm.accuracy_ci95[0] <= 0.65  # 40 images: [0.598, 0.858]
    assert alarm.reason.endswith("40 test images are too few to tell this model from the majority class")
    assert alarm.advice.startswith("score it on more labelled images (`glasses evaluate --data-dir D`")
    assert alarm.advice.endswith(ADVICE) and alarm.too_few and alarm.verdict == "not clearly learned"
    assert alarm.message.startswith("not clearly learned: ")
    # the same rates on 400 images tell: no alarm
    many = check_learning(np.tile(probabilities, 10), np.tile(labels, 10), TRAIN)
    assert not many.raised and many.accuracy_ci95[0] > 0.65


def test_a_good_model_raises_no_alarm():
    probabilities = np.where(TEST == 1, 0.8, 0.2)
    probabilities[:4] = 1 - probabilities[:4]  # 4 errors of 50: accuracy 0.92
    alarm = check_learning(probabilities, TEST, TRAIN)
    assert not alarm.raised and alarm.reason is None and alarm.advice is None
    assert alarm.test_accuracy == 0.92 and alarm.accuracy_ci95[0] > 0.7 and alarm.test_roc_auc > 0.65
    assert alarm.message.startswith("learned: test accuracy 0.9200")


def test_a_fair_accuracy_with_a_poor_ranking_still_raises_it():
    # 8 of the 15 no-glasses images confidently wrong, ranked above every glasses image:
    # accuracy 42/50 clears the majority's 0.7, but the ranking (ROC-AUC 7/15) is worse than chance
    probabilities = np.where(TEST == 1, 0.6, 0.4)
    probabilities[np.flatnonzero(TEST == 0)[:8]] = 0.99
    alarm = check_learning(probabilities, TEST, TRAIN)
    assert alarm.test_accuracy == 0.84 and alarm.accuracy_ci95[0] > alarm.majority_rate
    assert alarm.raised and alarm.test_roc_auc == round(7 / 15, 4)
    assert alarm.reason == "test ROC-AUC 0.4667 is under 0.65"


def test_the_verdict_as_a_dict_for_summary_json():
    verdict = check_learning(np.full(len(TEST), 0.3), TEST, TRAIN).to_dict()
    assert set(verdict) == {"raised", "reason", "majority_class", "majority_rate", "test_accuracy",
                            "accuracy_ci95", "test_roc_auc", "min_roc_auc", "advice", "too_few", "verdict",
                            "message"}
    assert isinstance(verdict["accuracy_ci95"], list) and len(verdict["accuracy_ci95"]) == 2
    assert verdict["raised"] is True and verdict["majority_class"] == 1
