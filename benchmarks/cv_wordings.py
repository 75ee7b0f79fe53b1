"""Wording-held-out cross-validation for screenshot_triage: a second opinion besides the test split.

    .venv/bin/python benchmarks/cv_wordings.py [--folds 4] [--epochs 60] [--seed 0]

The validation split scores 1.000 with the shipped recipe, so it cannot tell a better
recipe from a worse one, and choosing by the test split would fit the test. This script
splits the *training* manifest by screen wording family (a fixed phrase, or a template
such as "{x} was declined" with all of its nouns), so every fold's screens are worded in
ways the other folds never show; it trains one fusion model per fold (the same
`train_member` as `modalmesh train`, gate offsets and temperature fitted on the val
split), and scores the held-out fold: accuracy, ECE, and accuracy on the cases whose
screen carries the label. Needs data/triage from `make weights` (features cached).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_text import header, machine, write_results  # noqa: E402

TASK = "screenshot_triage"
MANIFEST = REPO / "data" / "triage" / "train.jsonl"


def wording_families() -> dict[str, str]:
    """Every training screen wording -> its family (the fixed phrase, or its template)."""
    from modalmesh.data.triage import SCREEN_TEMPLATES, SCREENS, pool

    family = {}
    for label, phrases in SCREENS.items():
        family.update({phrase: phrase for phrase in pool(phrases, "train")})
        nouns, templates = SCREEN_TEMPLATES[label]
        for template in pool(templates, "train"):
            for noun in nouns:
                made = template.format(x=noun)
                family[made[0].upper() + made[1:]] = template
    return family


def fold_of(key: str, folds: int) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % folds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "bench-results" / "cv_wordings.json"))
    args = parser.parse_args()
    if not MANIFEST.is_file():
        print(f"{MANIFEST} missing: `make weights` (or `modalmesh data generate`) writes it")
        return 2

    import numpy as np

    from modalmesh.data.generate import read_manifest
    from modalmesh.router.served import expected_calibration_error
    from modalmesh.router.features import FeatureCache
    from modalmesh.router.fusion import FusionConfig
    from modalmesh.router.tasks import TASKS
    from modalmesh.router.train import load_examples, predict, train_member

    header("ModalMesh wording-held-out cross-validation (screenshot_triage)")
    spec = TASKS[TASK]
    cache = FeatureCache.for_task(spec, MANIFEST)
    try:
        examples, _ = load_examples(TASK, MANIFEST, cache, "train")
        val_set, _ = load_examples(TASK, MANIFEST.with_name("val.jsonl"), cache, "val")
    finally:
        cache.close()
    records = [r for r in read_manifest(MANIFEST) if r["task"] == TASK]
    families = wording_families()
    unknown = {r["extra"]["screen"] for r in records if r["extra"].get("screen") and r["extra"]["screen"] not in families}
    if unknown:
        print(f"{len(unknown)} training screens match no training wording (was the generator changed?): {sorted(unknown)[:3]}")
        return 1
    # A case without a screen goes with its message's fold; its text is not a screen wording.
    keys = [families[r["extra"]["screen"]] if r["extra"].get("screen") else r["text"] for r in records]
    config = FusionConfig(labels=spec.labels, regression=spec.regression, **spec.fusion)
    rows = []
    for fold in range(args.folds):
        held = [i for i, key in enumerate(keys) if fold_of(key, args.folds) == fold]
        kept = [i for i in range(len(examples)) if i not in set(held)]
        started = time.perf_counter()
        model, _, _ = train_member(
            config,
            spec,
            [examples[i] for i in kept],
            val_set,
            args.seed,
            args.epochs,
            32,
            2e-3,
            1e-2,
            0.35,
            1.0,
            spec.feature_noise,
            0.05,
            label=f"fold {fold + 1}/{args.folds}  ",
        )
        probabilities, _, _ = predict(model.eval(), spec, [examples[i] for i in held])
        p = probabilities.numpy()
        labels = np.array([examples[i].label for i in held])
        right = p.argmax(1) == labels
        screened = np.array([bool(records[i]["extra"].get("screen")) for i in held])
        rows.append(
            {
                "fold": fold,
                "train": len(kept),
                "held_out": len(held),
                "families_held_out": len({keys[i] for i in held}),
                "accuracy": float(right.mean()),
                "accuracy_with_screen": float(right[screened].mean()),
                "ece": expected_calibration_error(p, labels),
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        r = rows[-1]
        print(
            f"   fold {fold + 1}: train {r['train']}, held out {r['held_out']} ({r['families_held_out']} wording families): "
            f"accuracy {r['accuracy']:.3f} (with a screen {r['accuracy_with_screen']:.3f}), ECE {r['ece']:.3f}, {r['seconds']} s",
            flush=True,
        )
    mean = {k: statistics.fmean(r[k] for r in rows) for k in ("accuracy", "accuracy_with_screen", "ece")}
    print(f"\nmean over {args.folds} folds: accuracy {mean['accuracy']:.3f} (with a screen {mean['accuracy_with_screen']:.3f}), ECE {mean['ece']:.3f}")
    write_results(args.out, {"machine": machine(), "folds": rows, "mean": mean, "epochs": args.epochs, "seed": args.seed})
    return 0


if __name__ == "__main__":
    sys.exit(main())
