"""Progressive resizing: a trial's first steps on smaller images, the rest at the search's size."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from glasses.budget import epochs_for
from glasses.config import ProgressiveConfig, StageConfig, build_config
from glasses.errors import ConfigError


def _stage(**kw) -> StageConfig:
    return StageConfig(**{"batch_size": 32, "max_trials": 2, "max_steps": 1080, "patience_steps": 300,
                          "min_steps": 360, **kw})


def test_the_first_steps_are_one_pass_and_the_rest_keep_their_epochs():
    # quick's stage 3 on the built-in data: 76 steps an epoch, 15 epochs of 1,080 steps
    plain = epochs_for(_stage(), 2415)
    assert (plain.steps_per_epoch, plain.epochs, plain.warmup_epochs, plain.start_steps) == (76, 15, 4, 0)
    started = epochs_for(_stage(progressive={"size": 32, "steps": 900}), 2415, start_steps=900)
    # 180 steps left: 3 epochs at the search's size, numbered 13-15 as in a plain trial
    assert (started.start_steps, started.first_epoch, started.epochs) == (900, 12, 15)
    assert started.warmup_epochs == 12  # early stopping waits for the search's size
    assert (started.epochs - started.first_epoch) * started.steps_per_epoch >= 1080 - 900
    assert started.patience == plain.patience
    with pytest.raises(ValueError, match="start_steps 1080"):
        epochs_for(_stage(), 2415, start_steps=1080)


@pytest.mark.parametrize("progressive, fragment", [
    ({"size": 32}, "set both"),
    ({"steps": 100}, "set both"),
    ({"size": 32, "steps": 1080}, "progressive.steps 1080 must be below max_steps 1080"),
    ({"size": 4, "steps": 10}, "greater than or equal to 8"),
])
def test_a_half_or_oversized_setting_is_refused(progressive, fragment):
    with pytest.raises(ConfigError, match="search.stage3") as error:
        build_config("quick", overrides={"search.stage3.progressive": progressive})
    assert fragment in str(error.value)


def test_it_applies_only_to_searches_at_a_bigger_size():
    on = ProgressiveConfig(size=32, steps=10)
    assert on.applies(64) and not on.applies(32) and not on.applies(24)
    assert not ProgressiveConfig().applies(64)


def test_without_with_cv_it_applies_only_to_trials_scored_on_the_val_split():
    assert ProgressiveConfig(size=32, steps=10).applies(64, folds=3)
    off_under_cv = ProgressiveConfig(size=32, steps=10, with_cv=False)
    assert off_under_cv.applies(64, folds=0) and not off_under_cv.applies(64, folds=3)
    assert not off_under_cv.applies(32, folds=0)


def test_quick_trains_first_at_32_px_and_paper_as_the_report():
    quick, paper = build_config("quick").search, build_config("paper").search
    for stage in ("stage1", "stage2", "stage3"):
        section = quick.stage(stage)
        assert section.progressive.size == 32 and section.progressive.steps == round(section.max_steps * 5 / 6)
        # stage 1's size comparison sees every step at each size where it cross-validates (small data)
        assert section.progressive.with_cv == (stage != "stage1")
        assert not paper.stage(stage).progressive.on


def _plan(tmp_path: Path, size: int, overrides: dict, stage: str = "stage3", val: int = 400):
    from glasses.files import write_json
    from glasses.search import SearchSpec
    from glasses.stages import plan_search
    from glasses.workdir import WorkDir

    cache = tmp_path / f"cache-{val}" / f"{size}px"
    write_json(cache / "cache.json", {"key": "k", "size": size, "counts": {"train": 8 * val, "val": val, "test": val}})
    search = build_config("quick", overrides=overrides).search
    return SearchSpec.load(plan_search(WorkDir(tmp_path / f"w-{val}"), stage, search, size, {}, cache))


def test_quick_stage_1_trains_every_step_at_its_size_where_it_cross_validates(tmp_path):
    on_val = _plan(tmp_path, 64, {}, stage="stage1")  # 400 val images: scored on them
    assert on_val.folds == 0 and on_val.start_size == 32 and on_val.start_steps == 600
    small = _plan(tmp_path, 64, {}, stage="stage1", val=38)  # 38: under cv_below
    assert small.folds == 3 and small.start_size is None and small.start_steps == 0
    assert small.start_cache_dir is None and small.sizes() == {64}
    # the same search as with the setting off there; where it applies, with_cv does not define the trials
    assert small.directory == _plan(tmp_path, 64, {"search.stage1.progressive": {}}, stage="stage1", val=38).directory
    assert on_val.directory == _plan(tmp_path, 64, {"search.stage1.progressive.with_cv": True},
                                     stage="stage1").directory
    # stages 2-3 keep it under cross-validation
    assert _plan(tmp_path, 64, {}, stage="stage2", val=38).start_steps == 600


def test_a_search_bigger_than_the_start_size_reads_that_cache_too(tmp_path):
    spec = _plan(tmp_path, 64, {})
    assert spec.start_size == 32 and spec.start_steps == 900
    assert spec.start_cache_dir == (tmp_path / "cache-400" / "32px").resolve() and spec.sizes() == {32, 64}
    at32 = _plan(tmp_path, 32, {})
    assert at32.start_cache_dir is None and at32.start_steps == 0 and at32.sizes() == {32}


def test_the_search_key_changes_only_where_the_setting_applies(tmp_path):
    off = {"search.stage3.progressive": {}}
    other = {"search.stage3.progressive": {"size": 32, "steps": 600}}
    # at 32 px nothing trains smaller: the same search as with the setting off
    assert _plan(tmp_path, 32, {}).directory == _plan(tmp_path, 32, off).directory
    assert len({_plan(tmp_path, 64, o).directory for o in ({}, off, other)}) == 3


def test_the_start_size_cache_is_kept_while_a_search_reads_it(tmp_path):
    from glasses import stages
    from glasses.files import OUTPUT_MARKER
    from glasses.inputs import unused_caches

    spec = _plan(tmp_path, 64, {})  # stage 3 at 64 px, its first steps at 32
    assert stages._sizes([spec.directory]) == {32, 64}
    for size in (32, 48, 64):
        folder = tmp_path / "cache" / f"{size}px"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cache.json").write_text("{}")
        (folder / OUTPUT_MARKER).touch()
    assert unused_caches(tmp_path / "cache", stages._sizes([spec.directory])) == [tmp_path / "cache" / "48px"]


def test_a_run_caches_the_start_size_too():
    from glasses.stages import sizes_to_cache

    search = build_config("quick", overrides={"search.stage1.image_sizes": [48, 64]}).search
    assert sizes_to_cache(search, {}) == [48, 64, 32]
    assert sizes_to_cache(search, {"stage1": {"chosen": {"image_size": 64}}}) == [64, 32]
    plain = build_config("paper").search
    assert sizes_to_cache(plain, {}) == [64, 128, 256]


class _Recorder:
    """A model that records its fits (what the hypermodel asks of Keras), with a history."""

    def __init__(self, loss: float = 0.5):
        self.fits, self.loss = [], loss

    def fit(self, *args, **kwargs):
        import keras

        self.fits.append((args, kwargs))
        history = keras.callbacks.History()
        history.history = {"loss": [self.loss]}
        return history


def _hypermodel(tmp_path: Path, start_steps: int):
    from glasses.search import SearchSpec
    from glasses.search.tuner import _hypermodel as make

    stage = _stage(**({"progressive": {"size": 16, "steps": start_steps}} if start_steps else {}))
    spec = SearchSpec(search_id="s", directory=tmp_path, project_name="size32", cache_dir=tmp_path, image_size=32,
                      stage=stage, folds=0, fixed={}, seed=1, bind="127.0.0.1", address=None, port=0, workers=1,
                      worker_timeout_s=30, chief_timeout_s=60, await_workers_s=30, gpus_per_worker=1,
                      start_cache_dir=tmp_path if start_steps else None, start_size=16 if start_steps else None)
    return make(spec, augment=False)


def test_a_trial_fits_the_small_images_first_then_goes_on_at_its_epoch(tmp_path):
    import keras_tuner as kt

    model, hypermodel = _Recorder(), _hypermodel(tmp_path, 900)
    hypermodel.fit(kt.HyperParameters(), model, "full", epochs=15, steps_per_epoch=76, callbacks=["cb"],
                   start="small", first_epoch=12, verbose=2)
    (small_args, small), (full_args, full) = model.fits
    assert small_args == ("small",) and small["steps_per_epoch"] == 900 and small["epochs"] == 1
    assert "validation_data" not in small and [type(c).__name__ for c in small["callbacks"]] == ["TerminateOnNaN"]
    assert full_args == ("full",) and full["initial_epoch"] == 12 and full["callbacks"] == ["cb"]
    assert full["epochs"] == 15 and full["steps_per_epoch"] == 76

    # without the smaller images: one fit, as Keras Tuner's own
    plain = _Recorder()
    _hypermodel(tmp_path, 0).fit(kt.HyperParameters(), plain, "full", epochs=15)
    assert len(plain.fits) == 1 and "initial_epoch" not in plain.fits[0][1]


def test_a_trial_that_diverges_on_the_small_images_fails_there(tmp_path):
    import keras_tuner as kt

    model = _Recorder(loss=math.nan)
    with pytest.raises(kt.errors.FailedTrialError, match="loss became nan at epoch 1"):
        _hypermodel(tmp_path, 900).fit(kt.HyperParameters(), model, "full", start="small", first_epoch=12)
    assert len(model.fits) == 1  # never trained on at the search's size


def test_its_models_take_any_size_and_their_weights_load_at_the_search_size(tmp_path):
    import keras_tuner as kt

    from glasses.model import ModelSpec, build_model

    hp = kt.HyperParameters()
    model = _hypermodel(tmp_path, 900).build(hp)
    assert model.input_shape == (None, None, None, 3)
    assert _hypermodel(tmp_path, 0).build(kt.HyperParameters()).input_shape == (None, 32, 32, 3)
    for side in (16, 32):
        assert model.predict(np.zeros((2, side, side, 3), "float32"), verbose=0).shape == (2, 1)
    path = tmp_path / "w.weights.h5"
    model.save_weights(path)
    spec = ModelSpec(32, hp.get("conv_layers"), tuple(hp.get(f"filters_{i}") for i in range(hp.get("conv_layers"))),
                     tuple(hp.get(f"pooling_{i}") for i in range(hp.get("conv_layers"))), hp.get("global_pooling"),
                     hp.get("optimizer"))
    fixed = build_model(spec, compile=False)
    fixed.load_weights(path)
    images = np.random.default_rng(0).random((3, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(fixed.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-5)


@pytest.mark.slow
def test_a_real_search_trains_first_at_the_start_size(tiny_cache, tmp_path):
    """A chief and a worker on loopback, 50 steps at 8 px then an epoch at 16 px per trial."""
    from glasses import inputs
    from glasses.ensemble import Candidate, load_member
    from glasses.search import SearchSpec, run_chief, run_worker, trial_records
    from glasses.search.early_stop import load_progress

    caches = inputs.build_caches(tiny_cache[0], tmp_path / "cache", [8, 16])
    stage = StageConfig(batch_size=8, max_trials=2, max_steps=100, patience_steps=50, min_steps=0,
                        progressive={"size": 8, "steps": 50}, early_stop={"rule": "median", "peers": 5})
    spec_path = SearchSpec(search_id="p", directory=tmp_path / "kt", project_name="size16", cache_dir=caches[16],
                           image_size=16, stage=stage, folds=0, fixed={}, seed=3, bind="127.0.0.1", address=None,
                           port=0, workers=1, worker_timeout_s=30, chief_timeout_s=300, await_workers_s=30,
                           gpus_per_worker=1, start_size=8, start_cache_dir=caches[8]).save(tmp_path / "spec.json")
    import threading

    chief_lines, worker_lines = [], []
    chief = threading.Thread(target=run_chief, args=(spec_path, chief_lines.append), daemon=True)
    chief.start()
    run_worker(spec_path, 0, worker_lines.append)
    chief.join(120)
    assert not chief.is_alive()
    assert any("the first 50 steps at 8px, then epochs 2-2 at 16px" in line for line in worker_lines), worker_lines
    spec = SearchSpec.load(spec_path)
    records = trial_records(spec.project_dir)
    assert [r["status"] for r in records] == ["COMPLETED", "COMPLETED"] and {r["epochs"] for r in records} == {2}
    # the chief heard one evaluation a trial: after the steps at 16 px, at the full budget's step 100
    progress = load_progress(spec.project_dir)
    assert {tid: [e["steps"] for e in p["evaluations"]] for tid, p in progress.items()} == {"0": [100], "1": [100]}
    record = records[0]
    member = load_member(Candidate(trial_id=record["trial_id"], values=record["values"], image_size=16,
                                   checkpoint=Path(record["checkpoint"]), cache_dir=caches[16],
                                   val_accuracy=record["score"]), "m")
    assert member.input_shape == (None, 16, 16, 3)
