"""Data generation, training and evaluation on small datasets (real encoders, real files)."""

import json

import numpy as np
import pytest

from modalmesh.cli import main
from modalmesh.data.generate import generate, read_manifest
from modalmesh.data.triage import MESSAGES, SCREENS, pool


@pytest.fixture(scope="module")
def medical_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("medical")
    generate("medical_report", folder, n=24, seed=3)
    return folder


@pytest.fixture(scope="module")
def triage_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("triage")
    generate("screenshot_triage", folder, n=12, seed=5)
    return folder


def test_generation_is_deterministic_by_seed(tmp_path, medical_data):
    generate("medical_report", tmp_path, n=24, seed=3)
    assert (tmp_path / "train.jsonl").read_text() == (medical_data / "train.jsonl").read_text()
    assert (tmp_path / "files" / "train-00003.dcm").read_bytes() == (medical_data / "files" / "train-00003.dcm").read_bytes()


def test_wording_pools_are_disjoint_across_splits():
    for table in (SCREENS, MESSAGES):
        for phrases in table.values():
            train, val, test = (set(pool(phrases, s)) for s in ("train", "val", "test"))
            assert train and val and test
            assert not (train & test) and not (train & val) and not (val & test)


def test_triage_manifest_files_and_labels(triage_data):
    from modalmesh.vision.decode import sniff_media_type

    records = read_manifest(triage_data / "test.jsonl")
    assert len(records) == 12 and {r["split"] for r in records} == {"test"}
    for record in records:
        assert record["label"] in SCREENS
        if record.get("image"):
            assert sniff_media_type(open(record["image"], "rb").read()) == "image/png"
            assert record["extra"]["screen"] in pool(SCREENS[record["label"]], "test")
        if record.get("audio"):
            assert open(record["audio"], "rb").read(4) == b"RIFF"
        assert record.get("image") or record["text"]  # something carries the label


def test_ct_phantoms_match_their_labels(medical_data):
    from modalmesh.vision.decode import decode_image

    for record in read_manifest(medical_data / "train.jsonl")[:8]:
        extra = record["extra"]
        decoded = decode_image(open(record["image"], "rb").read(), "application/dicom", {}, 10**8)
        hu = decoded.hounsfield
        assert (hu < -700).mean() > 0.2 and (hu > 500).any()  # air and lungs, bone
        assert float(decoded.tags["PixelSpacing"].split("\\")[0]) == pytest.approx(extra["pixel_spacing_mm"], abs=1e-3)
        expected = "normal" if extra["lesion_count"] == 0 else ("mass" if extra["largest_diameter_mm"] > 30 else "nodule")
        assert record["label"] == expected


def test_train_and_eval_medical_end_to_end(medical_data, tmp_path, capsys):
    weights = tmp_path / "medical_report"
    assert main(["train", "--task", "medical_report", "--data", str(medical_data / "train.jsonl"), "--out", str(weights),
                 "--epochs", "3"]) == 0
    assert {p.name for p in weights.iterdir()} >= {"model.safetensors", "config.json", "MODEL_CARD.md", "train_log.json"}
    assert "not for clinical use" in (weights / "MODEL_CARD.md").read_text().lower()
    log = json.loads((weights / "train_log.json").read_text())
    assert log["train_items"] == 24 and log["val_items"] == 12 and len(log["loss_per_epoch"]) == 3
    capsys.readouterr()
    report = tmp_path / "report"
    assert main(["eval", "--task", "medical_report", "--data", str(medical_data / "test.jsonl"), "--report", str(report),
                 "--weights", str(weights)]) == 0
    results = json.loads((report / "report.json").read_text())
    assert results["model_version"].startswith("medical_report@") and "untrained" not in results["model_version"]
    assert 0 <= results["full"]["accuracy"] <= 1 and 0 <= results["calibration"]["ece"] <= 1
    assert {"auc_lesion_vs_normal", "nodule_vs_mass_accuracy", "diameter_mae_mm"} <= set(results["medical"])
    assert {"full", "routed", "text only", "image only"} <= set(results["modes"])
    assert np.array(results["full"]["confusion"]).sum() == 12
    for plot in ("reliability.png", "confusion.png", "gate_by_label.png"):
        assert (report / plot).read_bytes().startswith(b"\x89PNG")


def test_a_trained_model_is_served_by_the_router(medical_data, tmp_path, mesh):
    from modalmesh.client import RouterClient
    from modalmesh.router.train import train

    train("medical_report", str(medical_data / "train.jsonl"), str(tmp_path / "medical_report"), epochs=2)
    router = mesh.start_router(weights_dir=str(tmp_path))
    try:
        with RouterClient(router.address) as client:
            versions = {t.name: t.model_version for t in client.list_tasks()}
            record = read_manifest(medical_data / "test.jsonl")[0]
            answer = client.analyze("medical_report", text=record["text"], image=open(record["image"], "rb").read())
    finally:
        router.stop(grace=0.5)
    assert versions["medical_report"].startswith("medical_report@") and "untrained" not in versions["medical_report"]
    assert answer["model_version"] == versions["medical_report"]


def test_train_triage_with_screens_voices_and_transcripts(triage_data, tmp_path):
    from modalmesh.router.train import train

    summary = train("screenshot_triage", str(triage_data / "train.jsonl"), str(tmp_path / "w"), epochs=2)
    assert summary["train_items"] == 12 and summary["temperature"] > 0
    # Features were cached: a second run does not encode anything again.
    again = train("screenshot_triage", str(triage_data / "train.jsonl"), str(tmp_path / "w2"), epochs=1)
    assert again["feature_seconds"] < summary["feature_seconds"] / 3
