"""Peak memory and time of `glasses predict` on a folder of large photos.

Draws `--n` JPEGs of `--width` x `--height` (a colour gradient under noise, so each is a
real-size file, ~1 MB at 2000 x 1500), saves a small shipped-style model (an average of
`--members` report CNNs at `--size` px behind the ensemble's Resizing input, as `glasses run`
ships it), runs `glasses predict FOLDER --model M` as a subprocess and reports its peak RSS
(the kernel's, from wait4), its wall time, and when its first result line reached stdout.

With `--base DIR` the same runs go through the code in DIR too (a `git worktree` of the commit
before, through PYTHONPATH), alternating with this checkout's. The old code path decodes up to
256 full-size images and stacks them as float32 before predicting: at 2000 x 1500 that is
~80 MB an image, so `--base-n` (default 64) caps the images it is given, to keep it from
exhausting the machine; its peak grows linearly with the images it is given, up to 256.

    .venv/bin/python bench/predict_memory.py --n 300 --base /tmp/predict-base --base-n 32 64
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

def draw_photos(folder: Path, n: int, width: int, height: int, seed: int = 0) -> list[Path]:
    """`n` JPEGs (quality 90) of a random colour gradient under noise; kept when already there."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    paths = []
    for i in range(n):
        path = folder / f"photo-{i:04d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        a, b, c = rng.uniform(-1, 1, (3, 3))
        base = (a[:, None, None] * xs / width + b[:, None, None] * ys / height + c[:, None, None]) * 127 + 128
        noise = rng.normal(0, 24, (height, width, 1)).astype(np.float32)
        pixels = np.clip(base.transpose(1, 2, 0) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path, quality=90)
    return paths


def save_model(path: Path, size: int, members: int) -> Path:
    """An average of `members` untrained report CNNs at `size` px, as `glasses run` ships it."""
    import keras

    from glasses.ensemble import average_ensemble, save_model as save
    from glasses.model import ModelSpec, build_model

    keras.utils.set_random_seed(0)
    models = [build_model(ModelSpec(image_size=size), name=f"m{i}", compile=False) for i in range(members)]
    return save(average_ensemble(models, size), path)


def run_predict(folder: Path, model: Path, out: Path, pythonpath: str | None) -> dict:
    """Runs `glasses predict` as a child process: its peak RSS (MB), wall time and first line's time (s)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    code = "import sys; from glasses.cli import main; sys.argv[0] = 'glasses'; main()"
    command = [sys.executable, "-c", code, "predict", str(folder), "--model", str(model)]
    first: list[float] = []
    with open(out, "w") as stdout, open(out.with_suffix(".err"), "w") as stderr:
        started = time.monotonic()
        # cwd outside any checkout: `python -c` puts the cwd first on sys.path, before PYTHONPATH
        child = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, cwd=out.parent)
        watcher = threading.Thread(target=_first_output, args=(out, child, first, started), daemon=True)
        watcher.start()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.monotonic() - started
        child.returncode = os.waitstatus_to_exitcode(status)
    watcher.join()
    lines = out.read_text().splitlines()
    return {"rc": child.returncode, "peak_rss_mb": usage.ru_maxrss / 1024, "wall_s": wall, "lines": len(lines),
            "first_line_s": first[0] if first else None, "probabilities": [line.split("\t")[1] for line in lines]}


def _first_output(out: Path, child, first: list, started: float) -> None:
    while child.returncode is None:
        if out.stat().st_size:
            first.append(time.monotonic() - started)
            return
        time.sleep(0.02)


def where_glasses(pythonpath: str | None) -> str:
    """The glasses package a child process with this PYTHONPATH imports."""
    env = {**os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    return subprocess.run([sys.executable, "-c", "import glasses; print(glasses.__file__)"], env=env,
                          cwd=tempfile.gettempdir(), capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--width", type=int, default=2000)
    parser.add_argument("--height", type=int, default=1500)
    parser.add_argument("--size", type=int, default=64, help="The model's image size.")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--base", type=Path, help="A checkout of the code before (a git worktree).")
    parser.add_argument("--base-n", type=int, nargs="*", default=[64], help="Images the base code is given.")
    parser.add_argument("--keep", type=Path, help="Draw the photos and model here (reused when there).")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="predict-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    paths = draw_photos(work / "photos", args.n, args.width, args.height)
    megabytes = sum(p.stat().st_size for p in paths) / 1e6
    print(f"{len(paths)} photos of {args.width}x{args.height}, {megabytes:.0f} MB of JPEG "
          f"({time.monotonic() - started:.1f} s)", flush=True)
    model = work / "ensemble.keras"
    if not model.exists():
        save_model(model, args.size, args.members)
    cases = [("new", None, work / "photos", args.n)]
    if args.base:
        print(f"base imports {where_glasses(str(args.base))}", flush=True)
        for n in args.base_n:  # a folder of the first n photos, by links
            folder = work / f"photos-{n}"
            folder.mkdir(exist_ok=True)
            for path in paths[:n]:
                if not (folder / path.name).exists():
                    os.link(path, folder / path.name)
            cases.append(("base", str(args.base), folder, n))
            cases.append(("new", None, folder, n))
    print(f"new imports {where_glasses(None)}", flush=True)
    results: dict = {}
    for repeat in range(args.repeats):
        for name, pythonpath, folder, n in cases:
            result = run_predict(folder, model, work / f"{name}-{n}-{repeat}.out", pythonpath)
            results.setdefault((name, n), []).append(result)
            first = "-" if result["first_line_s"] is None else f"{result['first_line_s']:.1f}"
            print(f"{name:4s} n={n:4d} rc={result['rc']} lines={result['lines']} peak RSS "
                  f"{result['peak_rss_mb']:7.0f} MB  wall {result['wall_s']:6.1f} s  first line {first} s", flush=True)
    _agreement(results)


def _agreement(results: dict) -> None:
    """Whether the base and new code printed the same probabilities on the same images."""
    for (name, n), runs in results.items():
        if name == "base" and ("new", n) in results:
            same = runs[0]["probabilities"] == results[("new", n)][0]["probabilities"]
            print(f"n={n}: base and new print {'the same' if same else 'DIFFERENT'} probabilities (4 decimals)")


if __name__ == "__main__":
    main()
