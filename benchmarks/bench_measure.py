"""CT lung-lesion measurement (services/vision/measure.py) against the phantoms' truth.

    .venv/bin/python benchmarks/bench_measure.py            # 300 phantoms, ~1 min
    .venv/bin/python benchmarks/bench_measure.py --n 60
    .venv/bin/python benchmarks/bench_measure.py --anatomy heldout   # the held-out sets' phantoms

Phantoms as the medical dataset makes them (384x384, 0-3 lesions, the largest 4-30 or
31-60 mm, spacing 0.6-0.9 mm; seeds disjoint from the dataset's). Prints the largest
diameter's absolute error (mean, median, 90th percentile), lesion-count accuracy, the
largest lesion's side where it is unambiguous (one lesion), false lesions on normal
slices, and the time per slice: from the slice's HU (a CT DICOM), and from the same slice
exported as an 8-bit lung-window PNG (-600/1500) and read back with its window stated.
`--anatomy heldout`: the phantoms of `modalmesh data heldout` instead (a heart and an aorta
between squarer lungs, 512 px, spacing 0.5-1.0 mm, noise 20-45 HU, lesions 5-55 mm).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_text import machine, write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--anatomy", choices=("training", "heldout"), default="training")
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    from modalmesh.data.ct import make_phantom
    from modalmesh.data.generate import PHANTOM_SIZE
    from modalmesh.data.heldout import heldout_phantom
    from modalmesh.vision.measure import measure_lung_lesions

    from modalmesh.data.ct import windowed_png
    from modalmesh.vision.decode import decode_image

    def from_png(phantom) -> np.ndarray:
        """The slice exported as an 8-bit lung-window PNG and read back as the service does."""
        parameters = {"pixel_spacing": f"{phantom.pixel_spacing_mm}", "window": "lung"}
        return decode_image(windowed_png(phantom.hounsfield, -600, 1500), "image/png", parameters, 40_000_000).hounsfield

    sources = {"ct_hu": lambda phantom: phantom.hounsfield, "png_lung_window_8bit": from_png}
    scores = {name: {"errors": [], "times": [], "count_ok": 0, "side_ok": 0, "false_on_normal": 0} for name in sources}
    rng = np.random.default_rng(args.seed)
    single = normals = 0
    for _ in range(args.n):
        if args.anatomy == "training":
            count = int(rng.choice([0, 1, 2, 3], p=[0.34, 0.33, 0.2, 0.13]))
            diameter = float(rng.uniform(4, 30)) if rng.random() < 0.5 else float(rng.uniform(31, 60))
            phantom = make_phantom(int(rng.integers(1 << 31)), size=PHANTOM_SIZE, lesion_count=count, diameter_mm=diameter if count else None)
        else:  # the held-out set's anatomy (modalmesh data heldout)
            phantom, count = heldout_phantom(rng)
        spacing = (phantom.pixel_spacing_mm, phantom.pixel_spacing_mm)
        normals += count == 0
        single += count == 1
        for name, densities in sources.items():
            score, hounsfield = scores[name], densities(phantom)
            started = time.perf_counter()
            lesions = measure_lung_lesions(hounsfield, spacing) or []
            score["times"].append((time.perf_counter() - started) * 1000)
            score["count_ok"] += len(lesions) == count
            if count == 0:
                score["false_on_normal"] += bool(lesions)
                continue
            score["errors"].append(abs((lesions[0].diameter_mm if lesions else 0.0) - phantom.largest_mm))
            if count == 1:
                score["side_ok"] += bool(lesions) and lesions[0].side == phantom.side

    results = {"machine": machine(), "command": " ".join(sys.argv), "phantoms": args.n, "anatomy": args.anatomy}
    for name, score in scores.items():
        errors = score["errors"]
        results[name] = {
            "largest_diameter_abs_error_mm": {
                "mean": round(statistics.fmean(errors), 3),
                "median": round(statistics.median(errors), 3),
                "p90": round(float(np.percentile(errors, 90)), 3),
            },
            "lesion_count_accuracy": round(score["count_ok"] / args.n, 3),
            "side_accuracy_single_lesion": round(score["side_ok"] / max(single, 1), 3),
            "normal_slices_with_a_false_lesion": f"{score['false_on_normal']}/{normals}",
            "ms_per_slice_p50": round(statistics.median(score["times"]), 1),
        }
    for key, value in results.items():
        print(f"{key:36s} {value}")
    write_results(args.out or f"bench-results/measure-{args.anatomy}.json", results)


if __name__ == "__main__":
    main()
