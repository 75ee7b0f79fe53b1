"""`modalmesh data generate`: deterministic synthetic datasets in the manifest format.

    modalmesh data generate --task screenshot_triage --out data/triage --n 300 --seed 1

writes train.jsonl (n cases), val.jsonl and test.jsonl (n/4 each, at least 12), and their
files under files/. Splits use disjoint random streams and disjoint wording pools. For
screenshot_triage, train and val also hold out-of-scope records (OUTLIER_SHARE of the
split's size, after its cases: screens and messages about other matters or in another
language, "scope": "out", label null), which training teaches the task not to answer.

Manifest format (one JSON object per line; your own data uses the same):
    {"id": "train-00001", "task": "screenshot_triage", "split": "train",
     "text": "...", "image": "files/train-00001.png", "audio": "files/train-00001.wav",
     "label": "payment", "image_parameters": {"window": "lung"}, "extra": {...},
     "alone_labels": {"text": "login"}}
`image` and `audio` are paths relative to the manifest (or absent); `"scope": "out"` marks
an input the task should not answer (label null; absent means "in"); `alone_labels`
(optional) says what an input shows when it is all a caller sends (a label, or null where it
shows none: a vague message), where that is not the record's label; for
medical_report, `extra` holds lesion_count, largest_diameter_mm, side and
pixel_spacing_mm (the regression targets). `qc_line` (a task of one's own, see data/qc.py)
also writes its task.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from modalmesh.common.progress import progress

SPLITS = ("train", "val", "test")


def split_sizes(n: int) -> dict[str, int]:
    return {"train": n, "val": max(12, n // 4), "test": max(12, n // 4)}


def generate(task: str, out: str | Path, n: int, seed: int) -> dict[str, Path]:
    out = Path(out)
    writer = {"screenshot_triage": _triage_item, "medical_report": _medical_item, "qc_line": _qc_item}.get(task)
    outlier_writer = {"screenshot_triage": _triage_outlier}.get(task)
    if writer is None:
        raise ValueError(f"unknown task {task!r}; one of screenshot_triage, medical_report, qc_line")
    for split in SPLITS:
        refuse_foreign_manifest(out / f"{split}.jsonl")
    (out / "files").mkdir(parents=True, exist_ok=True)
    manifests = {}
    for index, (split, count) in enumerate(split_sizes(n).items()):
        rng = np.random.default_rng([seed, index, 7919])  # one stream per split: disjoint
        path = out / f"{split}.jsonl"
        partial = path.with_suffix(".jsonl.partial")  # a stopped run leaves the earlier manifest whole
        with partial.open("w") as manifest:
            for i in progress(range(count), count, f"{task} {split:5s}"):
                item_id = f"{split}-{i:05d}"
                record = {"id": item_id, "task": task, "split": split, **writer(rng, split, out, item_id)}
                manifest.write(json.dumps(record) + "\n")
            if outlier_writer is not None and split in OUTLIER_SPLITS:
                # After the cases, from a stream of their own: the cases are the same with or without them.
                outlier_rng = np.random.default_rng([seed, index, 104729])
                outliers = round(count * OUTLIER_SHARE)
                for i in progress(range(outliers), outliers, f"{task} {split:5s} out of scope"):
                    item_id = f"{split}-out-{i:05d}"
                    record = {"id": item_id, "task": task, "split": split, "scope": "out", "label": None, **outlier_writer(outlier_rng, split, out, item_id)}
                    manifest.write(json.dumps(record) + "\n")
        partial.replace(path)
        manifests[split] = path
    if task == "qc_line":  # not a built-in task: it comes with its task file, as a user's own does
        from modalmesh.data.qc import TASK_FILE

        (out / "task.json").write_text(json.dumps(TASK_FILE, indent=2) + "\n")
    return manifests


def refuse_foreign_manifest(path: Path) -> None:
    """ValueError if `path` is a manifest this generator did not write (its first record is
    not `<split>-00000` of split `<split>`): generating would replace a user's own data."""
    if not path.is_file():
        return
    with path.open() as manifest:
        first = manifest.readline().strip()
    if not first:
        return
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        record = None
    split = path.stem
    if not (isinstance(record, dict) and record.get("split") == split and record.get("id") == f"{split}-00000"):
        found = f"its first id is {record.get('id')!r}" if isinstance(record, dict) else "its first line is not a record"
        raise ValueError(f"{path} was not written by `modalmesh data generate` ({found}); generating would replace it: pick another --out")


WEB_SHARE = 0.35  # screenshots drawn as a web page (screens.render_web_page) rather than an app screen
OUTLIER_SHARE, OUTLIER_SPLITS = 0.15, ("train", "val")  # out-of-scope records per case of a split, and the splits that hold them


def _triage_item(rng, split: str, out: Path, item_id: str) -> dict:
    from modalmesh.audio.speech import espeak, wav_bytes
    from modalmesh.data.triage import make_case

    case = make_case(rng, split)
    record = {
        "text": case["text"],
        "label": case["label"],
        "extra": {k: case[k] for k in ("message_kind", "screen", "guidance", "voice", "mobile", "dark", "layout")},
    }
    if case["text"]:  # what the message shows when it is all a caller sends
        record["alone_labels"] = {"text": case["message_label"]}
    if case["screen"] is not None:
        record["image"], web = _draw_screen(rng, case, out, item_id)
        if web:
            record["extra"]["layout"] = "web"
    if case["voice"] is not None:
        engine = espeak()
        samples = engine.synthesize(case["voice"], "en-us", int(rng.integers(130, 180)))
        (out / "files" / f"{item_id}.wav").write_bytes(wav_bytes(samples, engine.sample_rate))
        record["audio"] = f"files/{item_id}.wav"
    return record


def _triage_outlier(rng, split: str, out: Path, item_id: str) -> dict:
    """An out-of-scope triage record (triage.make_outlier), drawn as training draws its cases."""
    from modalmesh.data.triage import make_outlier

    case = make_outlier(rng, split)
    record: dict = {"text": case["text"], "extra": {"kind": case["kind"], "screen": case["screen"]}}
    if case["screen"] is not None:
        record["image"], _ = _draw_screen(rng, case, out, item_id)
    return record


def _draw_screen(rng, case: dict, out: Path, item_id: str) -> tuple[str, bool]:
    """A triage case's screen drawn by a training renderer (a web page WEB_SHARE of the time,
    else an app screen) into files/: its manifest path, and whether it is a web page."""
    from modalmesh.data.screens import WEB_SIZES, png_bytes, render_app_screen, render_web_page

    web = rng.random() < WEB_SHARE
    if web:
        image = render_web_page(case["screen"], rng, WEB_SIZES[int(rng.integers(len(WEB_SIZES)))], case["dark"], case.get("guidance"))
    else:
        image = render_app_screen(case["screen"], rng, case["mobile"], case["dark"], case["layout"], case.get("guidance"))
    (out / "files" / f"{item_id}.png").write_bytes(png_bytes(image))
    return f"files/{item_id}.png", web


def _qc_item(rng, split: str, out: Path, item_id: str) -> dict:
    from modalmesh.audio.speech import wav_bytes
    from modalmesh.data.qc import SAMPLE_RATE, qc_item
    from modalmesh.data.screens import png_bytes

    record, photo, sound = qc_item(rng, item_id)
    (out / "files" / f"{item_id}.png").write_bytes(png_bytes(photo))
    (out / "files" / f"{item_id}.wav").write_bytes(wav_bytes(sound, SAMPLE_RATE))
    return {"image": f"files/{item_id}.png", "audio": f"files/{item_id}.wav", **record}


PHANTOM_SIZE = 384  # at 0.6-0.9 mm an adult-sized chest (body 190-330 mm wide) whose lungs hold a 60 mm mass

SYMPTOMS = ("persistent cough", "shortness of breath", "chest pain", "weight loss", "haemoptysis", "fatigue", "no symptoms")


def _medical_item(rng, split: str, out: Path, item_id: str) -> dict:
    from modalmesh.data.ct import make_phantom, write_ct_dicom

    count = int(rng.choice([0, 1, 2, 3], p=[0.34, 0.33, 0.2, 0.13]))
    diameter = float(rng.uniform(4, 30)) if rng.random() < 0.5 else float(rng.uniform(31, 60))
    phantom = make_phantom(int(rng.integers(1 << 31)), size=PHANTOM_SIZE, lesion_count=count)
    if count:  # resize the largest lesion so nodule and mass are balanced
        phantom = make_phantom(int(rng.integers(1 << 31)), size=PHANTOM_SIZE, lesion_count=count, diameter_mm=diameter)
    spacing = (phantom.pixel_spacing_mm, phantom.pixel_spacing_mm)
    uid_seed = f"modalmesh-{split}-{item_id}-{phantom.hounsfield[PHANTOM_SIZE // 2, PHANTOM_SIZE // 2]:.3f}"
    (out / "files" / f"{item_id}.dcm").write_bytes(write_ct_dicom(phantom.hounsfield, spacing, uid_seed=uid_seed))
    # The record correlates only weakly with the label (smoking and symptoms a bit more likely with lesions).
    age = int(rng.integers(35, 85))
    smoker = rng.random() < (0.6 if count else 0.35)
    symptom = str(rng.choice(SYMPTOMS[:5] if (count and rng.random() < 0.6) else SYMPTOMS))
    record_text = (
        f"{age}-year-old {'man' if rng.random() < 0.5 else 'woman'}, "
        f"{'smoker, ' + str(int(rng.integers(5, 50))) + ' pack-years' if smoker else 'never smoker'}, {symptom}."
    )
    record: dict = {
        "text": record_text if rng.random() > 0.1 else "",
        "image": f"files/{item_id}.dcm",
        "image_parameters": {"window": "lung"},
        "label": phantom.label,
        "extra": {
            "lesion_count": len(phantom.lesions),
            "largest_diameter_mm": round(phantom.largest_mm, 2),
            "side": phantom.side,
            "pixel_spacing_mm": round(phantom.pixel_spacing_mm, 4),
        },
    }
    if rng.random() < 0.3:  # a dictated note, as weak as the record: history and the reason for the scan
        from modalmesh.audio.speech import espeak, wav_bytes

        note = str(rng.choice(DICTATIONS)).format(symptom=symptom, history="smoker" if smoker else "non-smoker")
        engine = espeak()
        samples = engine.synthesize(note, "en-us", int(rng.integers(130, 170)))
        (out / "files" / f"{item_id}.wav").write_bytes(wav_bytes(samples, engine.sample_rate))
        record["audio"] = f"files/{item_id}.wav"
        record["extra"]["dictation"] = note
    return record


DICTATIONS = (
    "Chest scan requested for {symptom}. Patient is a {history}.",
    "Referral note: {symptom}, {history}, please assess the lungs.",
    "Follow-up imaging for {symptom}. History: {history}.",
)


def record_scope(record: dict) -> str:
    """A manifest record's scope: "out" for an input the task should not answer, else "in"
    (the default for a record without one)."""
    return record.get("scope", "in")


def task_records(path: str | Path, task: str, scope: str = "in") -> list[dict]:
    """The manifest's records of `task` and `scope` ("in" or "out", record_scope), in the
    manifest's order."""
    return [r for r in read_manifest(path) if r["task"] == task and record_scope(r) == scope]


def read_manifest(path: str | Path) -> list[dict]:
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not a JSON object: {exc}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: not a JSON object")
        for key in ("id", "task", "label"):
            if key not in record:
                raise ValueError(f"{path}:{number}: missing {key!r}")
        for key in ("image", "audio"):
            if record.get(key):
                record[key] = str((path.parent / record[key]).resolve())
                if not Path(record[key]).is_file():
                    raise ValueError(f"{path}:{number}: {record['id']}: {key} file not found: {record[key]}")
        records.append(record)
    return records
