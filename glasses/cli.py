"""The `glasses` command line; each command builds the config and calls the library (or flow)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import zipfile
from pathlib import Path
from typing import Optional

import typer

from glasses.config import PRESETS, RETUNE_CRON, build_config, default_home, read_config_file
from glasses.errors import GlassesError
from glasses.planner import parse_duration
from glasses.workdir import check_apart

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Train and ship a CNN ensemble that tells faces with glasses from faces without.")


NOTHING_LEARNED_EXIT = 3  # `glasses run --strict` when the shipped model learned nothing


def _fail(error: Exception) -> None:
    """One line `error: ...` on stderr and exit code 1 (2 is typer's, for usage errors)."""
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@app.command()
def synth(out: Path = typer.Option(..., "--out", help="Directory to write the dataset into."),
          n: int = typer.Option(1500, "--n", help="Labelled images."),
          resolution: int = typer.Option(128, "--resolution", help="Image side in px."),
          seed: int = typer.Option(1337, "--seed"),
          grey: bool = typer.Option(False, "--grey", help="Single-channel (greyscale) PNGs.")) -> None:
    """Write the built-in dataset in the Kaggle download's layout (e.g. `--n 380 --grey`: the
    small-data case, a val split under search.cv_below, in one channel)."""
    from glasses.synth import synthesize

    try:
        result = synthesize(out, n=n, resolution=resolution, seed=seed, grey=grey)
    except GlassesError as error:
        _fail(error)
    typer.echo(f"{out}: {result.train} labelled + {result.test} test images at {resolution}px{' grey' * grey} "
               f"({result.glasses} glasses, {result.no_glasses} no glasses) in {result.seconds:.1f}s")


_DATA_DIR = typer.Option(None, "--data-dir", help="A dataset in the Kaggle layout; default: synthesize the "
                         "built-in one into the work dir.")
_WORK_DIR = typer.Option(None, "--work-dir", help="Where every output goes (default: work).")
_PRESET = typer.Option("quick", "--preset", help=f"One of {', '.join(PRESETS)}.")
_CONFIG = typer.Option(None, "--config", help="YAML/JSON overrides.")
_WORKERS = typer.Option(None, "--workers", help="Tuner workers per search.")
_DASK = typer.Option(None, "--dask-address", help="An existing Dask scheduler (tcp://host:8786): tuner workers "
                     "run on its workers, which must see the work dir at the same path.")
_STRICT = typer.Option(False, "--strict", help=f"Exit with code {NOTHING_LEARNED_EXIT} (not 0) when the shipped "
                       "model learned nothing (1 is an error, 2 a usage error); without it the run warns and exits 0.")
_ADOPT = typer.Option(False, "--adopt-work-dir", help="Use a non-empty work dir that has no glasses marker (one "
                      "made by a glasses from before the marker): mark it as glasses'. Without it such a dir is refused.")
_BUDGET = typer.Option(None, "--time-budget", help="e.g. 90s, 15m, 1h30m: size the searches to this machine's "
                       "measured speed and the data so the run ends within it (the preset's shape, scaled).")


@app.command()
def run(data_dir: Optional[Path] = _DATA_DIR, work_dir: Optional[Path] = _WORK_DIR, preset: str = _PRESET,
        config_file: Optional[Path] = _CONFIG, workers: Optional[int] = _WORKERS,
        dask_address: Optional[str] = _DASK, strict: bool = _STRICT, time_budget: Optional[str] = _BUDGET,
        adopt_work_dir: bool = _ADOPT) -> None:
    """Run the whole pipeline as a Prefect flow (resuming what the work dir has) and print the
    ensemble's test accuracy; warn when the shipped model does not clearly beat always answering
    the majority class. Its model replaces the champion only if better."""
    _pipeline("resume", data_dir, work_dir, preset, config_file, workers, dask_address, strict, time_budget,
              adopt_work_dir)


@app.command()
def retune(data_dir: Optional[Path] = _DATA_DIR, work_dir: Optional[Path] = _WORK_DIR, preset: str = _PRESET,
           config_file: Optional[Path] = _CONFIG, workers: Optional[int] = _WORKERS,
           dask_address: Optional[str] = _DASK, strict: bool = _STRICT,
           time_budget: Optional[str] = _BUDGET, adopt_work_dir: bool = _ADOPT) -> None:
    """Like run, and stage 3's search gets search.stage3.retune_trials more trials (on changed
    data every stage runs anew); the ensemble is rebuilt from the best of all, and replaces the
    champion only if better on val and not worse on test beyond registry.margin."""
    _pipeline("retune", data_dir, work_dir, preset, config_file, workers, dask_address, strict, time_budget,
              adopt_work_dir)


def _pipeline(mode: str, data_dir: Path | None, work_dir: Path | None, preset: str, config_file: Path | None,
              workers: int | None, dask_address: str | None, strict: bool, time_budget: str | None,
              adopt_work_dir: bool = False) -> None:
    started = time.time()  # a time budget counts from here: Prefect's start-up is part of the run
    from glasses.preflight import check_run

    try:  # what would fail however often it is retried is one error line before Prefect starts
        parse_duration(time_budget)
        config = build_config(preset, config_file, {"data.data_dir": data_dir, "work_dir": work_dir,
                                                    "search.workers": workers, "search.dask_address": dask_address})
        check_run(config, adopt_work_dir)  # the work dir and the dataset; the flow checks again
    except GlassesError as error:
        _fail(error)
    # The embedded server's telemetry heartbeat only logs sqlite lock errors here; opt out unless set.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "glasses")  # the library's lines in the run's logs
    # A new embedded server migrates its database first: on a busy 2-core machine that can take
    # longer than Prefect's default 20 s.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if time_budget is None:  # stage 1's roles import while Prefect starts (a budget measures speed first)
        from glasses.search.launch import start_spares

        start_spares(config.search)
    from flows.pipeline import pipeline  # imports prefect; only this command needs it
    from glasses.report import summary_markdown
    from glasses.watchdog import reap_on_death, say_goodbye

    watcher = reap_on_death()  # if this process is killed outright, it ends what the run started
    try:
        summary = Path(pipeline(preset=config.preset, data_dir=_text(config.data.data_dir),
                                work_dir=str(config.work_dir.resolve()),
                                overrides=config.model_dump(mode="json", exclude={"work_dir", "preset"}),
                                time_budget=time_budget, budget_started_at=started, mode=mode))
    except GlassesError as error:
        _fail(error)
    finally:
        say_goodbye(watcher)
    typer.echo(summary_markdown(summary))
    result = json.loads(summary.read_text())
    shipped = result["ensemble"]
    low, high = result["alarm"]["accuracy_ci95"]  # on a few hundred images a point or two is noise
    typer.echo(f"shipped model ({shipped['method']}) test accuracy: {shipped['test_accuracy']:.4f} "
               f"(95% CI {low:.4f}-{high:.4f}, {result['evaluation']['n']} test images)  ({summary})")
    _warn_if_nothing_learned(result["alarm"], strict)


@app.command()
def models(work_dir: Optional[Path] = _WORK_DIR) -> None:
    """List the model registry: every run's model, its scores, whether it was promoted and why;
    the one serving (the champion, model/ensemble.keras) marked with *."""
    from glasses import registry
    from glasses.workdir import WorkDir

    work = WorkDir(_work_dir(work_dir))
    table = registry.listing(work)
    if table.empty:
        typer.echo(f"no models registered in {work.models} yet: run `glasses run` first")
        return
    typer.echo(f"{'':1} {'run':24} {'date (UTC)':25} {'data':16} {'method':11} {'members':>7} {'val':>6} "
               f"{'test':>6}  promoted: why")
    for row in table.itertuples():
        mark = "*" if row.serving else " "
        typer.echo(f"{mark} {row.run:24} {row.date:25} {row.data_fingerprint:16} {row.method:11} {row.members:>7} "
                   f"{row.val_accuracy:>6.4f} {row.test_accuracy:>6.4f}  {_yes(row.promoted)}: {row.reason}")
    holder = registry.champion(work)
    if holder:
        typer.echo(f"serving: {holder['run']} since {holder['since']} ({holder['reason']})")


@app.command()
def promote(run_name: str = typer.Argument(..., metavar="RUN", help="A run in `glasses models`."),
            work_dir: Optional[Path] = _WORK_DIR) -> None:
    """Make an earlier run's model the champion again (what `glasses predict` serves)."""
    from glasses import registry
    from glasses.workdir import WorkDir, claim

    root = _work_dir(work_dir)
    try:
        if not root.is_dir():
            raise GlassesError(f"no work dir at {root}: run `glasses run` first or pass --work-dir")
        with claim(root, None):  # not while a run is using the work dir
            holder = registry.promote(WorkDir(root), run_name)
    except GlassesError as error:
        _fail(error)
    typer.echo(f"serving: {holder['run']} ({WorkDir(root).model})")


@app.command()
def prune(work_dir: Optional[Path] = _WORK_DIR,
          keep: int = typer.Option(0, "--keep", min=0, help="Searches of earlier settings kept per stage, the newest."),
          dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be removed; remove nothing.")) -> None:
    """Remove the searches no stage of the work dir uses any more (earlier settings or data; a
    run keeps search.keep_superseded of them per stage) and the caches none kept uses; say what
    that frees. The searches the stages use, runs in progress, the registry and the serving
    model are never removed."""
    from glasses.stages import prune as prune_searches
    from glasses.workdir import WorkDir, claim

    root = _work_dir(work_dir)
    try:
        if not root.is_dir():
            raise GlassesError(f"no work dir at {root}: nothing to prune")
        with claim(root, None):  # not while a run is using the work dir
            found = prune_searches(WorkDir(root), keep, dry_run)
    except GlassesError as error:
        _fail(error)
    verb = "would remove" if dry_run else "removed"
    for item in found:
        typer.echo(f"{verb} {item['search']}" + (f" ({item['trials']} trials, {item['mb']} MB)" if item["mb"] is not None
                                                 else " (a cache no kept search uses)"))
    freed = sum(item["mb"] or 0 for item in found)
    typer.echo(f"{verb} {len(found)} folders, {freed:.1f} MB of searches" if found else f"nothing to prune in {root}")


def _work_dir(work_dir: Path | None) -> Path:
    return (work_dir or build_config("quick").work_dir).resolve()


def _yes(value) -> str:
    return "yes" if str(value).lower() == "true" else "no"


def _warn_if_nothing_learned(alarm: dict, strict: bool) -> None:
    """One `warning: ...` line on stderr (what failed, what to try) when the alarm of
    `summary["alarm"]` was raised; with `strict` then exit code NOTHING_LEARNED_EXIT."""
    if not alarm["raised"]:
        return
    typer.secho(f"warning: {alarm['message']}", fg=typer.colors.YELLOW, err=True)
    if strict:
        raise typer.Exit(NOTHING_LEARNED_EXIT)


def _text(path: Path | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


@app.command()
def serve(preset: str = typer.Option("quick", "--preset", help=f"One of {', '.join(PRESETS)}."),
          data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Default: the built-in dataset."),
          work_dir: Optional[Path] = typer.Option(None, "--work-dir", help="Default: $GLASSES_HOME or ~/.glasses."),
          config_file: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON overrides."),
          name: str = typer.Option("weekly-retune", "--name", help="The deployment's name."),
          cron: str = typer.Option(RETUNE_CRON, "--cron", help="When to re-tune (UTC)."),
          mode: str = typer.Option("retune", "--mode", help="What its runs do: retune (add stage-3 trials, "
                                   "promote only a better model) or resume."),
          notify: Optional[str] = typer.Option(None, "--notify", help="Be told when a run fails, learns nothing or "
                                               "promotes a model: a webhook URL, or a saved Prefect notification "
                                               "block as TYPE/NAME (e.g. slack-webhook/team)."),
          notify_test: bool = typer.Option(False, "--notify-test", help="Send one test notification (to --notify, "
                                           "else to the URL an earlier --notify saved) and exit.")) -> None:
    """Serve the pipeline as a Prefect deployment on a schedule, one run at a time (needs a
    Prefect server: set PREFECT_API_URL). Runs can be started and retried from the UI. With
    --notify, Prefect automations on the server notify its failed, nothing-learned and
    promoting runs (created or updated, never duplicated)."""
    if mode not in ("retune", "resume"):
        _fail(GlassesError(f"--mode {mode!r} is not retune or resume"))
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "glasses")
    try:
        overrides = read_config_file(config_file) if config_file else None
        build_config(preset, settings=overrides, overrides={"data.data_dir": data_dir})
        if data_dir is not None:
            check_apart(data_dir, work_dir or default_home())
    except GlassesError as error:
        _fail(error)
    if notify_test:
        _notify_test(name, notify)
        return
    from deployments.serve import serve as serve_deployment  # imports prefect; only this command needs it

    parameters = {"preset": preset, "data_dir": _text(data_dir), "work_dir": _text(work_dir), "overrides": overrides,
                  "mode": mode}
    # a run's own preset and mode are added to its tags by the flow (a run may not use the defaults)
    serve_deployment(name, cron, parameters, tags=["glasses"], notify=notify)


def _notify_test(name: str, target: str | None) -> None:
    """`glasses serve --notify-test`: one test notification, sent from here; its error on failure."""
    from deployments.notify import send_test  # imports prefect

    try:
        typer.echo(f"sent: {send_test(name, target)}")
    except Exception as error:  # the block's own (an HTTP status, an unreachable URL, no such block)
        _fail(GlassesError(f"the test notification was not sent: {error}"))


@app.command()
def status(work_dir: Path = typer.Option(None, "--work-dir", help="Default: $GLASSES_HOME or ~/.glasses.")) -> None:
    """Which steps of a work dir's run are done, running, failed or not started."""
    from glasses.workdir import status as read_status

    root = work_dir or default_home()
    if not Path(root).is_dir():
        _fail(GlassesError(f"no work dir at {root}: nothing has run there"))
    for step, state in read_status(Path(root)).items():
        typer.echo(f"{step:9} {state}")


@app.command("config")
def show_config(preset: str = typer.Option("quick", "--preset"),
                config_file: Optional[Path] = typer.Option(None, "--config")) -> None:
    """Print the full config a preset (and file) gives, as JSON."""
    try:
        typer.echo(build_config(preset, config_file).model_dump_json(indent=2))
    except GlassesError as error:
        _fail(error)


@app.command("check")
def check_data(data_dir: Path = typer.Option(..., "--data-dir", help="A dataset in the Kaggle layout."),
               preset: str = typer.Option("quick", "--preset", help="Whose data.fractions and seed plan the split."),
               config_file: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON overrides.")) -> None:
    """Check a dataset as a run would, writing nothing: classes, image kinds, latents, the split."""
    from glasses.dataset import check

    try:
        config = build_config(preset, config_file)
        report = check(data_dir, config.data.fractions, config.data.seed)
    except GlassesError as error:
        _fail(error)
    typer.echo("\n".join(_report_lines(report)))


def _report_lines(report, kinds_shown: int = 5) -> list[str]:
    """`glasses check`'s output: one line per finding, the split as a small table."""
    layout, total = report.layout, sum(report.per_class.values())
    kinds = [f"{count} {fmt} {mode} {width}x{height}" for (fmt, mode, width, height), count in report.kinds]
    more = f"; and {len(kinds) - kinds_shown} more" if len(kinds) > kinds_shown else ""
    lines = [f"labels: {layout.csv}",
             f"images: {layout.image_dir}",
             f"labelled: {total} images: " + ", ".join(f"{n} {name}" for name, n in report.per_class.items()),
             f"image kinds (format mode size): {'; '.join(kinds[:kinds_shown])}{more}",
             f"latents v1..v512: {'present' if layout.has_latents else 'absent (the latent baseline is skipped)'}",
             f"split {'/'.join(f'{f:g}' for f in report.fractions)}, seed {report.seed}:",
             f"  {'':<5}" + "".join(f"  {name:>10}" for name in report.per_class)]
    lines += [f"  {subset:<5}" + "".join(f"  {n:>10}" for n in counts.values())
              for subset, counts in report.split.items()]
    return lines + ["ok: a run would accept this dataset"]


def _load_model(path: Path):
    """The Keras model at `path` (safe mode: no code in it runs), or one error line."""
    if not path.exists():
        _fail(GlassesError(f"no model at {path}: run `glasses run` first or pass --model"))
    import keras

    try:
        return keras.models.load_model(path)
    except Exception as error:  # a text file, a truncated zip, a folder, another format: one line, no traceback
        _fail(GlassesError(f"{path} is not a Keras model ({_why_not_a_model(path, error)}); "
                           "pass the .keras file `glasses run` wrote"))


def _why_not_a_model(path: Path, error: Exception) -> str:
    """Keras says "File not found" for a folder or a file that is no zip; say what it is instead."""
    if path.is_dir():
        return "a directory"
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        return "not a zip archive, which every .keras file is"
    why = next((line for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {why}"


@app.command()
def predict(inputs: list[Path] = typer.Argument(..., help="Image files and/or directories (searched recursively)."),
            model: Path = typer.Option(Path("work/model/ensemble.keras"), "--model"),
            threshold: float = typer.Option(0.5, "--threshold", min=0.0, max=1.0)) -> None:
    """Print one line per image: path, P(glasses), label. Unreadable files are skipped with a message."""
    from glasses.evaluate import image_files

    files = image_files(inputs)
    missing = [f for f in files if not f.exists()]
    for path in missing:
        typer.echo(f"skipped {path}: no such file", err=True)
    network = _load_model(model)
    printed = 0
    for batch in _predictions(network, [f for f in files if f.exists()], "predicting"):
        for path, probability in batch:
            label = "glasses" if probability >= threshold else "no_glasses"
            typer.echo(f"{path}\t{probability:.4f}\t{label}")
        printed += len(batch)
    if not printed:
        raise typer.Exit(1)


def _predictions(network, files: list[Path], label: str):
    """Each batch of (path, P(glasses)) as soon as it is predicted, in bounded memory
    (`glasses.evaluate.iter_predictions`); an unreadable file is one `skipped` line on stderr.
    A progress bar on stderr when it is a terminal; the caller's lines print above it."""
    from glasses.evaluate import iter_predictions
    from glasses.progress import ProgressBar

    with ProgressBar(len(files), label) as bar:
        def skip(path: Path, why: str) -> None:
            with bar.aside():
                typer.echo(f"skipped {path}: {why}", err=True)
            bar.advance()

        for batch in iter_predictions(network, files, on_skip=skip):
            with bar.aside():
                yield batch
            bar.advance(len(batch))


@app.command()
def evaluate(data_dir: Path = typer.Option(..., "--data-dir", help="Kaggle layout, or glasses/ + no_glasses/ folders."),
             model: Path = typer.Option(Path("work/model/ensemble.keras"), "--model"),
             threshold: float = typer.Option(0.5, "--threshold", min=0.0, max=1.0)) -> None:
    """Score a model on a labelled dataset: accuracy, precision, recall, F1, ROC-AUC, confusion."""
    from glasses.evaluate import labelled_images, metrics

    from glasses.dataset import require_data_dir

    try:
        pairs = labelled_images(require_data_dir(data_dir))
    except GlassesError as error:
        _fail(error)
    labels = {path: label for path, label in pairs}
    network = _load_model(model)
    results = [pair for batch in _predictions(network, list(labels), "evaluating") for pair in batch]
    if not results:
        _fail(GlassesError(f"no readable labelled image in {data_dir}"))
    scores = metrics([p for _, p in results], [labels[path] for path, _ in results], threshold)
    scores["skipped"] = len(pairs) - len(results)
    typer.echo(json.dumps(scores, indent=2))


@app.command()
def explain(inputs: list[Path] = typer.Argument(..., help="Image files and/or directories (searched recursively)."),
            model: Path = typer.Option(Path("work/model/ensemble.keras"), "--model"),
            out: Path = typer.Option(Path("explained"), "--out", help="Where the overlay PNGs go."),
            method: str = typer.Option("gradcam", "--method", help="gradcam, or layercam (each position weighted "
                                       "by its own gradient)."),
            threshold: float = typer.Option(0.5, "--threshold", min=0.0, max=1.0)) -> None:
    """Write, per image, where the model looks: an overlay PNG (the image, its saliency map on top,
    P(glasses) and the label in the title) into --out; one line per image: path, P(glasses), label, PNG."""
    from glasses.evaluate import image_files
    from glasses.saliency import explain_files, explainer

    files = image_files(inputs)
    if not files:
        _fail(GlassesError(f"no image files in {', '.join(map(str, inputs))}"))
    try:
        found = explainer(_load_model(model), method)
        explain_files(found, files, out, threshold, on_written=lambda path, p, png: typer.echo(
            f"{path}\t{p:.4f}\t{'glasses' if p >= threshold else 'no_glasses'}\t{png}"))
    except GlassesError as error:
        _fail(error)


@app.command()
def download(out: Path = typer.Option(Path("data/glasses"), "--out")) -> None:
    """Fetch the real Kaggle dataset (needs `pip install glasses[download]` and Kaggle access)."""
    try:
        import kagglehub
    except ImportError:
        _fail(GlassesError("kagglehub is not installed: pip install 'glasses[download]'"))
    try:
        path = kagglehub.dataset_download("jeffheaton/glasses-or-no-glasses")
    except Exception as error:  # offline, no credentials, ...: one line, not a traceback
        _fail(GlassesError(f"cannot download jeffheaton/glasses-or-no-glasses: "
                           f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"))
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        out.symlink_to(Path(path).resolve(), target_is_directory=True)
    typer.echo(f"downloaded to {path}; use --data-dir {out}")


def _terminate(signum, frame) -> None:
    """Ctrl-C, SIGTERM or a closed terminal (SIGHUP): end every process this run started (the
    tuner roles, the embedded Prefect server) and exit at once. The OS frees the work dir's
    lock; the next run removes what was half-written and continues the searches. `glasses serve`
    only exits: each of its runs then ends itself and records why (deployments/guard.py)."""
    from glasses.watchdog import serving, terminate_descendants

    typer.echo(f"interrupted ({signal.Signals(signum).name}): stopping the run's processes", err=True)
    if not serving():
        terminate_descendants()
    os._exit(128 + signum)


_STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _stop_on_signals() -> None:
    """Makes Ctrl-C, SIGTERM and SIGHUP end the run at once, whatever the main thread is doing.

    A Python signal handler runs only when the main thread runs Python, and a Prefect flow swaps
    in its own SIGTERM handler that raises in the main thread, which then waits for task threads
    that wait for the tuner processes: the run hung until a second signal. The C-level handler
    also writes each signal's number to a wakeup file descriptor, whoever's Python handler is
    installed; a thread reading it stops the run.
    """
    for signum in _STOPPING:
        signal.signal(signum, _terminate)
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    def watch() -> None:
        while True:
            for number in os.read(read_end, 64):
                if number in _STOPPING:
                    _terminate(number, None)

    threading.Thread(target=watch, name="stop-on-signals", daemon=True).start()


def main() -> None:
    _stop_on_signals()
    app()
