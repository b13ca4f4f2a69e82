"""Benchmark: does the model look at the glasses? For each run's work dir (built-in data, so its
boxes.csv), the share of saliency mass inside the glasses' boxes on the test images with glasses,
against the share of the image the boxes cover (what a map that looks everywhere would score):

- "shipped": what the run itself measured (summary.json's `saliency`: the shipped model, which may
  be the best single model);
- per member of the run's ensemble (`ensemble.trial_ids`), and their average ensemble built here
  (the shipped ensemble's rule when it is an average: the same members, counted once each),
  for each method (Grad-CAM, LayerCAM) and each rule for the map's layer (`--min-grids`: the last
  convolutional layer with a grid of at least that side; 1: the last convolutional layer).

    .venv/bin/python bench/saliency.py W1 W2 W3            # work dirs of `glasses run`
    .venv/bin/python bench/saliency.py W1 --methods gradcam --min-grids 8
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from glasses import saliency  # noqa: E402
from glasses.dataset import face_id, read_boxes  # noqa: E402
from glasses.ensemble import average_ensemble, candidates, load_member  # noqa: E402


def members(summary: dict) -> tuple[list, int]:
    """The run's ensemble members (loaded from their checkpoints) and their image size."""
    wanted = summary["ensemble"]["trial_ids"]
    found = {c.trial_id: c for c in candidates([Path(p) for p in summary["stages"]["stage3"]["specs"]])}
    return [load_member(found[t], name=f"member_{i}_trial_{t}") for i, t in enumerate(wanted)], \
        summary["ensemble"]["image_size"]


def measure(work: Path, methods: list[str], min_grids: list[int]) -> dict:
    summary = json.loads((work / "summary.json").read_text())
    data = Path(summary["config"]["data"]["data_dir"] or work / "data")  # the built-in data: in the work dir
    boxes = read_boxes(data)
    import pandas as pd

    paths = pd.read_csv(work / "evaluation" / "test_predictions.csv")["path"].astype(str).tolist()
    items = [(p, boxes[face_id(p)]) for p in paths if face_id(p) in boxes]
    models, size = members(summary)
    model = average_ensemble(models, size)
    result = {"run": str(work), "seed": summary["config"]["data"]["seed"], "shipped": summary["ensemble"]["method"],
              "image_size": size, "conv_layers": summary["stages"]["stage2"]["chosen"]["conv_layers"],
              "test_accuracy": summary["ensemble"]["test_accuracy"],
              "run_saliency": (summary.get("saliency") or {}).get("glasses")}
    result["measured"] = [{"method": method, "min_grid": grid,
                           **saliency.attention(saliency.explainer(model, method, grid), items)}
                          for grid in min_grids for method in methods]
    return result


def row(name: str, found: dict) -> str:
    ratio = "-" if found["ratio"] is None else f"{found['ratio']:.2f}x"
    return f"{name} {found['share']:.3f} / {found['uniform_share']:.3f} = {ratio} ({found['empty']} empty)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work_dirs", type=Path, nargs="+")
    parser.add_argument("--methods", nargs="+", default=list(saliency.METHODS), choices=saliency.METHODS)
    parser.add_argument("--min-grids", type=int, nargs="+", default=[saliency.MIN_GRID, 1])
    parser.add_argument("--json", type=Path, default=None, help="also write every number here")
    args = parser.parse_args(argv)
    results = [measure(work, args.methods, args.min_grids) for work in args.work_dirs]
    for r in results:
        shipped = r["run_saliency"]
        print(f"{r['run']} (seed {r['seed']}; {r['image_size']} px, {r['conv_layers']} conv layers; shipped "
              f"{r['shipped']}, test {r['test_accuracy']:.4f}); {len(r['measured'][0]['networks'])} members")
        if shipped and shipped.get("available"):
            print(f"  the run's own (the shipped model): {row('model', shipped['model'])}")
        for found in r["measured"]:
            print(f"  {found['method']}, min grid {found['min_grid']}, on {found['images']} test images with glasses: "
                  f"{row('average', found['model'])}")
            for network in found["networks"]:
                print(f"    {row(network['name'] + ' ' + network['layer'], network)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
