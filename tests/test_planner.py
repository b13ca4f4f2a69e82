"""The time budget: durations, and the planner on a made-up machine (no training)."""

from __future__ import annotations

import json
import os

import pytest

from glasses.config import build_config
from glasses.errors import ConfigError, GlassesError
from glasses.planner import Counts, estimate, parse_duration, plan_run, scale_search
from glasses.throughput import Throughput

# A made-up 2-core machine: 900 images/s at 32 px, slower as the pixels grow.
MACHINE = Throughput(train={"32/32": 900.0, "40/32": 600.0, "48/32": 420.0},
                     evaluate={"32/32": 2700.0, "40/32": 1800.0, "48/32": 1260.0},
                     model_s=3.0, startup_s=8.0, threads=1, decode_s=0.002)
BIG = Counts(train=2400, val=300, test=300)  # the quick preset's data: no cross-validation
SMALL = Counts(train=300, val=38, test=38)  # `glasses synth --n 380`: val under cv_below
SPENT = 40.0


@pytest.fixture(scope="module")
def quick():
    # three sizes, so that the largest-first dropping shows (quick itself may compare fewer);
    # every step at its size (test_progressive_resizing_is_planned_at_both_sizes has the rest)
    off = {f"search.stage{i}.progressive": {} for i in (1, 2, 3)}
    return build_config("quick", overrides={"search.stage1.image_sizes": [32, 40, 48], **off})


def _plan(config, budget_s, counts=BIG):
    return plan_run(config, counts, MACHINE, budget_s, SPENT, cpus=2)


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("15m", 900), ("1h", 3600), ("1h30m", 5400),
                                           ("2h5m10s", 7510), (" 10M ", 600), ("10m05s", 605)])
def test_durations_parse(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["15", "15x", "m", "1.5h", "-5m", "15 m", "1m1h", "0m"])
def test_a_bad_duration_is_one_error_naming_it(text):
    with pytest.raises(ConfigError, match=f"time budget {text!r} is"):
        parse_duration(text)


def test_no_budget_is_none():
    assert parse_duration(None) is None and parse_duration("") is None


def test_plan_fits_the_budget_and_keeps_the_minimums(quick):
    for budget in (300, 600, 900, 1800, 7200):
        sized, plan = _plan(quick, budget)
        assert plan.needed_s <= budget and plan.spent_s == SPENT
        assert plan.stages == estimate(sized, BIG, MACHINE, cpus=2)
        search = sized.search
        for stage in (search.stage1, search.stage2, search.stage3):
            assert stage.max_trials % search.workers == 0 and stage.max_trials >= search.workers
            assert stage.min_steps < stage.max_steps and stage.max_steps >= 180  # a quarter of 720
        assert search.stage3.max_trials >= sized.ensemble.fallback
        assert search.stage3.keep <= search.stage3.max_trials


def test_sizes_go_largest_first_as_the_budget_shrinks(quick):
    sizes = {budget: _plan(quick, budget)[0].search.stage1.image_sizes for budget in (300, 500, 1200)}
    assert sizes == {300: [32], 500: [32, 40], 1200: [32, 40, 48]}


def test_a_larger_budget_never_plans_less(quick):
    last = None
    for budget in range(300, 4 * 3600, 60):
        search = _plan(quick, budget)[0].search
        now = [len(search.stage1.image_sizes)] + [getattr(search, s).max_trials for s in ("stage1", "stage2", "stage3")]
        now += [getattr(search, s).max_steps for s in ("stage1", "stage2", "stage3")]
        assert last is None or all(n >= m for n, m in zip(now, last)), (budget, now, last)
        last = now
    stages = (quick.search.stage1, quick.search.stage2, quick.search.stage3)
    assert last[3] > quick.search.stage3.max_trials * 4  # hours buy many more trials than the preset's
    assert last[4:] == [stage.max_steps for stage in stages]  # but never more steps than the preset's


def test_cross_validation_raises_the_cost_of_stages_1_and_2(quick):
    without = quick.model_copy(update={"search": quick.search.model_copy(update={"cv_below": 0})})
    assert (quick.search.folds("stage1", SMALL.val), without.search.folds("stage1", SMALL.val)) == (3, 0)
    assert quick.search.folds("stage3", SMALL.val) == 0 and quick.search.folds("stage1", BIG.val) == 0
    kfold, plain = estimate(quick, SMALL, MACHINE, cpus=2), estimate(without, SMALL, MACHINE, cpus=2)
    folds = quick.search.cv_folds  # each trial trains once per fold (and is evaluated on the whole fold)
    assert kfold["stage1"] > (folds - 1) * plain["stage1"] and kfold["stage2"] > (folds - 1) * plain["stage2"]
    assert kfold["stage3"] == plain["stage3"]
    assert _plan(quick, 1800, SMALL)[1].scale < _plan(without, 1800, SMALL)[1].scale


def test_more_workers_than_cores_train_slower(quick):
    four = quick.model_copy(update={"search": quick.search.model_copy(update={"workers": 4})})
    two = estimate(quick, BIG, MACHINE, cpus=2)
    # Twice the workers run the same trials in half the rounds, each twice as slow: no gain, more start-up.
    assert estimate(four, BIG, MACHINE, cpus=2)["stage3"] >= two["stage3"]
    assert estimate(four, BIG, MACHINE, cpus=4)["stage3"] < two["stage3"]


def test_too_small_a_budget_names_the_least_that_fits(quick):
    with pytest.raises(GlassesError, match=r"time budget 1m30s is too small") as caught:
        _plan(quick, 90)
    least = str(caught.value).rsplit("give at least ", 1)[1]
    sized, _ = _plan(quick, parse_duration(least))
    # the smallest run: one size, a trial per worker (stage 3: enough for the ensemble), about the
    # fewest steps (the budget is named in whole seconds: what that rounding leaves may buy a few steps)
    least_run = scale_search(quick.search, 1e-6, quick.ensemble.fallback)
    for stage in ("stage1", "stage2", "stage3"):
        got, fewest = getattr(sized.search, stage), getattr(least_run, stage)
        assert (got.image_sizes, got.max_trials, got.keep) == (fewest.image_sizes, fewest.max_trials, fewest.keep)
        assert fewest.max_steps <= got.max_steps <= 1.1 * fewest.max_steps, stage
    assert sized.search.stage1.image_sizes == [32]
    assert [s.max_trials for s in (sized.search.stage1, sized.search.stage2, sized.search.stage3)] == [2, 2, 4]
    with pytest.raises(GlassesError, match=f"give at least {least}"):
        _plan(quick, parse_duration(least) - 2)


def test_a_long_plan_lifts_the_chief_time_limit_and_a_short_keeps_it(quick):
    short, _ = _plan(quick, 600)
    long, plan = _plan(quick, 10 * 3600)
    assert short.search.chief_timeout_s == quick.search.chief_timeout_s == 3600
    assert long.search.chief_timeout_s >= 2 * max(plan.stages.values()) > 3600


def test_the_flow_parses_its_budget_and_hands_it_to_the_stages(monkeypatch, tmp_path):
    import flows.pipeline as flow
    from tasks import caching, data, shipping

    config = build_config("smoke", overrides={"work_dir": str(tmp_path)})
    handed = []

    class Stages:
        def with_options(self, **options):
            return lambda *args: handed.append(args) or "summary.json"

    monkeypatch.setattr(flow, "stages", Stages())
    monkeypatch.setattr(data, "configure", lambda *args: config)
    monkeypatch.setattr(caching, "result_storage", lambda config: "storage")
    monkeypatch.setattr(shipping, "outcome", lambda summary, strict: summary)
    assert flow.pipeline.fn(preset="smoke", time_budget="1h30m", budget_started_at=123.0) == "summary.json"
    assert handed[-1] == (config, 5400.0, 123.0, {"id": "", "flow_run": "", "mode": "resume"})
    flow.pipeline.fn(preset="smoke", mode="retune")
    assert handed[-1][1] is None and handed[-1][2] > 123.0  # no budget; the clock from the run's start
    assert handed[-1][3]["mode"] == "retune"
    with pytest.raises(ConfigError, match="time budget '90' is not a duration"):
        flow.pipeline.fn(preset="smoke", time_budget="90")
    assert len(handed) == 2


@pytest.mark.slow
def test_the_budget_task_measures_this_machine_and_writes_its_plan(tiny_cache, tmp_path):
    import time

    from prefect.logging import disable_run_logger

    from tasks.planning import size

    split_dir, _ = tiny_cache
    config = build_config("smoke", overrides={"work_dir": str(tmp_path)})
    split = {"dir": str(split_dir), "train": 24, "val": 8, "test": 8}
    started = time.time()
    with disable_run_logger():
        sized, plan = size.fn(config, split, 600.0, started)
    spent = time.time() - started
    throughput = plan["throughput"]
    assert set(throughput["train"]) == {"16/8", "24/8"} and all(v > 0 for v in throughput["train"].values())
    assert 0 < throughput["startup_s"] < spent and 0 < throughput["decode_s"] < spent
    assert throughput["threads"] == (os.cpu_count() or 1) // config.search.workers
    assert 0 < plan["spent_s"] <= spent and plan["total_s"] <= 600
    assert sized.search.stage3.max_trials >= config.search.stage3.max_trials
    assert json.loads((tmp_path / "plan.json").read_text())["search"] == sized.search.model_dump(mode="json")
    assert size.fn(config, split, None, started) == (config, None)
    assert not (tmp_path / "plan.json").exists()  # a run without a budget leaves no plan of another's


def test_the_report_shows_each_step_planned_against_taken(tmp_path):
    from glasses.files import write_json
    from glasses.report import planned_vs_actual, render_report, summary_markdown
    from tests.conftest import run_summary

    summary = run_summary(learned=True)
    assert planned_vs_actual(summary) == [] and "Time budget" not in render_report(summary)
    summary["durations_s"] = {"data": 30.0, "plan": 20.0, "stage1": 100.0, "stage2": 150.0, "stage3": 210.5,
                              "ensemble": 9.0, "analyses": 14.0, "total": 533.5}
    summary["plan"] = {"budget_s": 600.0, "spent_s": 62.0, "scale": 0.42, "total_s": 581.0, "throughput": {},
                       "stages": {"analyses": 15.0, "ensemble": 12.0, "stage1": 120.0, "stage2": 160.0,
                                  "stage3": 200.0}}  # sorted, as summary.json keeps them
    rows = planned_vs_actual(summary)
    assert [row["step"] for row in rows] == ["before the plan", "stage1", "stage2", "stage3", "ensemble",
                                             "analyses", "total"]
    assert rows[0] == {"step": "before the plan", "planned_s": 62.0, "actual_s": 62.0}
    assert rows[3] == {"step": "stage3", "planned_s": 200.0, "actual_s": 210.5}
    assert rows[-1] == {"step": "total", "planned_s": 569.0, "actual_s": 545.5}
    report = render_report(summary)
    assert "## Time budget: planned vs actual" in report and "| stage3 | 200 | 210 |" in report
    assert "| total | 569 | 546 |" in report
    text = summary_markdown(write_json(tmp_path / "summary.json", summary))
    assert "- time budget 600 s: planned 569 s, took 546 s" in text


def test_a_smaller_image_is_never_measured_slower_than_a_larger_one():
    from glasses.throughput import _monotone

    measured = {"32/32": 570.0, "40/32": 164.0, "48/32": 266.0, "32/64": 700.0, "40/64": 500.0, "48/64": 300.0}
    assert _monotone(measured, [32, 40, 48], [32, 64]) == {**measured, "40/32": 266.0}


def test_progressive_resizing_is_planned_at_both_sizes():
    # quick's first 5/6 of each trial at 32 px: cheaper than every step at 48, dearer than at 32
    sizes = {"search.stage1.image_sizes": [32, 48]}
    on = build_config("quick", overrides=sizes)
    off = build_config("quick", overrides={**sizes, **{f"search.stage{i}.progressive": {} for i in (1, 2, 3)}})
    at32 = build_config("quick", overrides={"search.stage1.image_sizes": [32]})
    costs = {name: estimate(config, BIG, MACHINE, cpus=2) for name, config in
             (("on", on), ("off", off), ("at32", at32))}
    for stage in ("stage2", "stage3"):
        assert costs["at32"][stage] < costs["on"][stage] < costs["off"][stage], (stage, costs)
    # a smaller budget scales the steps at 32 px with the rest, and keeps some at 48
    for budget in (300, 600, 1200):
        search = _plan(on, budget)[0].search
        for name in ("stage2", "stage3"):
            stage, preset = search.stage(name), on.search.stage(name)
            assert 0 < stage.progressive.steps < stage.max_steps
            assert stage.progressive.steps / stage.max_steps == pytest.approx(
                preset.progressive.steps / preset.max_steps, abs=0.02)


def test_stage_1_is_planned_at_full_size_where_it_cross_validates():
    # quick's stage 1 trains every step at its size under cross-validation (small data) only
    sizes = {"search.stage1.image_sizes": [32, 48]}
    on = build_config("quick", overrides=sizes)
    off = build_config("quick", overrides={**sizes, "search.stage1.progressive": {}})
    small_on, small_off = (estimate(c, SMALL, MACHINE, cpus=2)["stage1"] for c in (on, off))
    big_on, big_off = (estimate(c, BIG, MACHINE, cpus=2)["stage1"] for c in (on, off))
    assert small_on == small_off and big_on < big_off
