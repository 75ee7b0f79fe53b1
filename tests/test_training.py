"""Data generation, training and evaluation on small datasets (real encoders, real files)."""

import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from modalmesh.cli import main
from modalmesh.data.generate import generate, read_manifest, task_records
from modalmesh.data.triage import GUIDANCE, LABELS, MESSAGE_TEMPLATES, MESSAGES, SCREEN_TEMPLATES, SCREENS, VAGUE, pool, wordings


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


def test_generation_never_replaces_a_users_own_manifest(tmp_path, medical_data, capsys):
    """The README invites your own manifests in the same format: `data generate` into their
    folder silently replaced them."""
    mine = tmp_path / "train.jsonl"
    mine.write_text(json.dumps({"id": "case-17", "task": "medical_report", "text": "x", "label": "normal"}) + "\n")
    assert main(["data", "generate", "--task", "medical_report", "--out", str(tmp_path), "--n", "12", "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "train.jsonl was not written by `modalmesh data generate` (its first id is 'case-17')" in err
    assert "case-17" in mine.read_text() and not (tmp_path / "val.jsonl").exists()
    # Its own earlier output is regenerated in place (as `make weights` does), with no partial file left.
    again = tmp_path / "again"
    generate("medical_report", again, n=12, seed=3)
    generate("medical_report", again, n=12, seed=4)
    assert sorted(p.name for p in again.iterdir()) == ["files", "test.jsonl", "train.jsonl", "val.jsonl"]


def test_wording_pools_are_disjoint_across_splits():
    for fixed, composed in ((SCREENS, SCREEN_TEMPLATES), (MESSAGES, MESSAGE_TEMPLATES)):
        train, val, test = ({w for label in LABELS for w in wordings(label, s, fixed, composed)} for s in ("train", "val", "test"))
        assert len(train) > 50 * len(LABELS) and len(test) > 12 * len(LABELS)  # many phrasings, not one template
        assert not (train & test) and not (train & val) and not (val & test)
    train, test = set(pool(VAGUE, "train")), set(pool(VAGUE, "test"))
    assert train and test and not (train & test)


def test_screens_carry_advice_lines_from_their_splits_pool_under_the_message():
    """An advice line ("Please try again later.") names no label; a screen shows one under its
    message about a third of the time, from its split's part of the pool, and the held-out
    sets' own advice lines are in no training pool."""
    from modalmesh.data.heldout import HELDOUT_GUIDANCE
    from modalmesh.data.triage import make_case

    train, val, test = (set(pool(GUIDANCE, s)) for s in ("train", "val", "test"))
    assert train and val and test and not (train & val) and not (train & test) and not (val & test)
    assert not set(HELDOUT_GUIDANCE) & set(GUIDANCE)
    rng = np.random.default_rng(3)
    cases = [make_case(rng, "val") for _ in range(300)]
    advised = [c for c in cases if c["guidance"] is not None]
    assert 0.25 < len(advised) / len(cases) < 0.45
    assert all(c["screen"] is not None and c["guidance"] in val for c in advised)
    assert all(c["guidance"] is None for c in cases if c["screen"] is None)


def test_triage_manifest_files_and_labels(triage_data):
    from modalmesh.common.media import sniff_image

    records = read_manifest(triage_data / "test.jsonl")
    assert len(records) == 12 and {r["split"] for r in records} == {"test"}
    for record in records:
        assert record["label"] in SCREENS
        if record.get("image"):
            assert sniff_image(open(record["image"], "rb").read()) == "image/png"
            assert record["extra"]["screen"] in wordings(record["label"], "test", SCREENS, SCREEN_TEMPLATES)
        if record.get("audio"):
            assert open(record["audio"], "rb").read(4) == b"RIFF"
        assert record.get("image") or record["text"]  # something carries the label
        # What the message alone shows: the label when it names it, another for a misleading one, none when vague.
        shown = {"specific": record["label"], "vague": None}.get(record["extra"]["message_kind"], "another")
        if not record["text"]:
            assert "alone_labels" not in record
        elif shown == "another":
            assert record["alone_labels"]["text"] in SCREENS and record["alone_labels"]["text"] != record["label"]
        else:
            assert record["alone_labels"] == {"text": shown}
    kinds = [r["extra"]["message_kind"] for r in task_records(triage_data / "train.jsonl", "screenshot_triage")]
    assert {"specific", "vague", "misleading"} <= set(kinds)  # every kind above was checked


def test_triage_training_data_holds_inputs_it_should_not_answer(triage_data):
    """Train and val end with out-of-scope records (label null): screens and messages about
    other matters, or in another language, drawn by the training renderers; test has
    none. Their wordings are split like the cases' and none is a held-out set's."""
    from modalmesh.data.generate import OUTLIER_SHARE
    from modalmesh.data.heldout import OTHER_LANGUAGE, OTHER_TOPIC
    from modalmesh.data.triage import OFF_LANGUAGE, OFF_TOPIC

    for split, cases in (("train", 12), ("val", 12), ("test", 12)):
        records = read_manifest(triage_data / f"{split}.jsonl")
        outside = task_records(triage_data / f"{split}.jsonl", "screenshot_triage", "out")
        assert len(outside) == (round(cases * OUTLIER_SHARE) if split != "test" else 0)
        assert records[cases:] == outside and all(r.get("scope", "in") == "in" for r in records[:cases])  # after the cases
        for record in outside:
            assert record["label"] is None and record["id"].startswith(f"{split}-out-") and record["extra"]["kind"] in ("topic", "language")
            pairs = pool(OFF_TOPIC if record["extra"]["kind"] == "topic" else OFF_LANGUAGE, split)
            assert any(record["extra"]["screen"] in (screen, None) and record["text"] in (text, "") for screen, text in pairs)
            assert record.get("image") or record["text"]
            if record.get("image"):
                assert open(record["image"], "rb").read(4) == b"\x89PNG"
    for pairs in (OFF_TOPIC, OFF_LANGUAGE):
        train, val, test = (set(pool(pairs, s)) for s in ("train", "val", "test"))
        assert train and val and test and not (train & val) and not (train & test) and not (val & test)
    held_out = {w for pair in OTHER_TOPIC for w in pair} | {w for pairs in OTHER_LANGUAGE.values() for _, *pair in pairs for w in pair}
    assert not held_out & {w for pair in OFF_TOPIC + OFF_LANGUAGE for w in pair}


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


def test_a_smaller_fusion_model_is_trained_served_and_a_bad_width_refused_before_training(medical_data, tmp_path, capsys):
    """`train --width --max-tokens --source-tokens`: the fusion model's size, written to its
    config and read back by the router's loader; a width the attention heads do not divide is refused at
    once, before any feature is extracted, in the caller's words."""
    from modalmesh.router.fusion import StackedEnsemble
    from modalmesh.router.tasks import TASKS, decide, load_task_folder

    small = tmp_path / "small"
    data = str(medical_data / "train.jsonl")
    assert (
        main(
            [
                "train",
                "--task",
                "medical_report",
                "--data",
                data,
                "--out",
                str(small),
                "--epochs",
                "1",
                "--width",
                "32",
                "--max-tokens",
                "8",
                "--source-tokens",
                "image=4",
            ]
        )
        == 0
    )
    config = json.loads((small / "config.json").read_text())
    assert config["width"] == 32 and config["max_tokens"] == 8 and config["source_tokens"] == {"image": 4}
    card = (small / "MODEL_CARD.md").read_text()
    assert "projections to 32-d, 2 layers of modality-aware attention over each input's features average-pooled to at most 8 tokens (image 4)" in card
    task = load_task_folder(TASKS["medical_report"], small)
    model = task.model
    assert model.config.width == 32 and not isinstance(model, StackedEnsemble)  # medical_report: one model
    features = {"image": torch.randn(49, config["input_widths"]["image"]), "text": torch.randn(30, config["input_widths"]["text"])}
    with torch.inference_mode():
        inputs = model.embed([features])
        assert inputs.tokens.shape[-2] == 4 + 8 and inputs.tokens.shape[-1] == 32  # the scan pooled to 4 tokens, the record to 8
        decided = decide(model, TASKS["medical_report"], features, {})
    assert torch.isclose(decided.probabilities.sum(), torch.tensor(1.0))
    capsys.readouterr()
    assert main(["train", "--task", "medical_report", "--data", data, "--out", str(tmp_path / "odd"), "--width", "30"]) == 2
    assert "width 30 must be a positive multiple of the 4 attention heads" in capsys.readouterr().err
    assert not (tmp_path / "odd").exists()


def test_train_and_eval_medical_end_to_end(medical_data, tmp_path, capsys, monkeypatch):
    from modalmesh.router import applicability

    monkeypatch.setattr(applicability, "MIN_VALIDATION", 10)  # 12 validation items here: enough to fit a reference
    weights = tmp_path / "medical_report"
    assert main(["train", "--task", "medical_report", "--data", str(medical_data / "train.jsonl"), "--out", str(weights), "--epochs", "3"]) == 0
    assert {p.name for p in weights.iterdir()} >= {"model.safetensors", "config.json", "MODEL_CARD.md", "train_log.json"}
    card = (weights / "MODEL_CARD.md").read_text()
    assert "not for clinical use" in card.lower() and "Gate offsets" in card and "P(a lesion found | label)" in card
    log = json.loads((weights / "train_log.json").read_text())
    assert log["train_items"] == 24 and log["val_items"] == 12 and len(log["loss_per_epoch"]) == 3
    config = json.loads((weights / "config.json").read_text())
    assert set(config["routing"]) == {"tau", "gamma", "eager", "quick"} and set(config["routing"]["eager"]) <= {"audio"}
    assert config["routing"]["quick"] == []  # no screen text to read quickly
    assert config["measurement_sigma"]["largest_diameter_mm"] > 0
    # The reference keeps the training labels (router/applicability.py), one per training input.
    reference = applicability.Applicability.load(weights).references["image"]
    assert reference.labels is not None and reference.labels.shape[0] == reference.bank.shape[0] == 24
    assert isinstance(config["neighbour_precision"], dict) and all(0 <= v <= 1 for v in config["neighbour_precision"].values())
    assert all(config["abstain_below"] < t <= 0.95 for t in config["abstain_below_alone"].values())
    assert config["regression_from"] == "image" and log["feature_noise"] == 0.0  # the task's training defaults
    # The CT measurement, counted on validation, speaks for a lesion when it finds one and against when not.
    found = config["measurement_evidence"]["found"]
    assert found["nodule"] > found["normal"] and found["mass"] > found["normal"]
    assert all(p + config["measurement_evidence"]["none"][label] == pytest.approx(1.0) for label, p in found.items())
    capsys.readouterr()
    report = tmp_path / "report"
    assert main(["eval", "--task", "medical_report", "--data", str(medical_data / "test.jsonl"), "--report", str(report), "--weights", str(weights)]) == 0
    results = json.loads((report / "report.json").read_text())
    assert results["model_version"].startswith("medical_report@") and "untrained" not in results["model_version"]
    assert 0 <= results["full"]["accuracy"] <= 1 and 0 <= results["calibration"]["ece"] <= 1
    assert {"auc_lesion_vs_normal", "nodule_vs_mass_accuracy", "diameter_mae_mm"} <= set(results["medical"])
    # Sizes measured in HU are far closer than the heads' estimate from a 7x7 grid (a 3-epoch model here).
    assert results["medical"]["diameter_mae_mm"] < 1.0 < results["medical_heads_only"]["diameter_mae_mm"]
    assert "without the CT measurement" in (report / "report.md").read_text()
    rows = [json.loads(line) for line in (report / "predictions.jsonl").read_text().splitlines()]
    test_records = read_manifest(medical_data / "test.jsonl")
    assert [r["id"] for r in rows] == [r["id"] for r in test_records] and [r["label"] for r in rows] == [r["label"] for r in test_records]
    assert sum(r["correct"] for r in rows) / len(rows) == pytest.approx(results["full"]["accuracy"])
    assert all(r["predicted"] == max(r["probabilities"], key=r["probabilities"].get) for r in rows)
    assert all(set(r["single"]) == {"text only", "image only", "audio only"} for r in rows)
    assert all((r["single"]["audio only"] is None) == (not rec.get("audio")) for r, rec in zip(rows, test_records))
    assert all(set(r["truth"]) <= set(r["regression"]) for r in rows)
    assert "side outputs asked for with the base features" in (report / "report.md").read_text()
    assert {"full", "routed", "text only", "image only"} <= set(results["modes"])
    assert results["modes"]["routed"]["tau"] == config["routing"]["tau"]  # eval routes with the tuned thresholds
    # As served in ROUTED mode: each item's early answer (fused from what had arrived) or, without one, FULL's.
    routed, full = results["honesty_routed"]["in_scope"], results["honesty"]["in_scope"]
    assert routed["items"] == full["items"] == 12 and "as served in ROUTED mode" in (report / "report.md").read_text()
    # As served from one input alone: only the scan can answer the CT task alone.
    assert set(results["honesty_alone"]) == {"image"} and results["honesty_alone"]["image"]["items"] == 12
    assert "as served from the image alone" in (report / "report.md").read_text()
    if results["modes"]["routed"]["early"] == 0:
        assert routed == full
    assert 0 <= results["modes"]["image only"]["fused_accuracy_same_items"] <= 1
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


def test_weights_appear_whole_or_not_at_all(medical_data, tmp_path, monkeypatch):
    """Written in place, a run stopped between files left new weights beside an old
    config.json, and a text-model/ of an earlier fine-tuned run stayed beside weights
    trained without it (the router would have been pointed at the wrong text model)."""
    from modalmesh.router import train as training

    out = tmp_path / "medical_report"
    training.train("medical_report", str(medical_data / "train.jsonl"), str(out), epochs=1, seed=1)
    (out / "text-model").mkdir()
    (out / "text-model" / "config.json").write_text("{}")  # as an earlier --finetune-top run leaves it
    earlier = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def stopped(*args, **kwargs):  # stands in for a crash after the first files were written
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "write_model_card", stopped)
    with pytest.raises(KeyboardInterrupt):
        training.train("medical_report", str(medical_data / "train.jsonl"), str(out), epochs=1, seed=2)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == earlier  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["medical_report"]  # no partial folder left
    monkeypatch.undo()
    training.train("medical_report", str(medical_data / "train.jsonl"), str(out), epochs=1, seed=2)
    # (a CT task reads no screens: no status-line pointer)
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "applicability.safetensors", "config.json", "model.safetensors", "train_log.json"]
    assert (out / "model.safetensors").read_bytes() != earlier["model.safetensors"]
    assert f"--weights {out}" in (out / "MODEL_CARD.md").read_text()  # the folder it ends up in


def test_train_refuses_an_out_folder_that_holds_other_files(medical_data, tmp_path, capsys):
    """Training replaces the whole folder: `--out .` would have replaced the working folder."""
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["train", "--task", "medical_report", "--data", str(medical_data / "train.jsonl"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "holds other files (notes.txt)" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_training_with_another_text_model_and_serving_it_with_the_wrong_one(medical_data, tmp_path, mesh, monkeypatch, tiny_bert_dir, capsys):
    from modalmesh.client import RouterClient
    from modalmesh.router.train import train
    from modalmesh.text.model import model_version

    # Training extracts with the model the text service is configured to run (32 wide here,
    # not MiniLM's 384), in features of their own: the bundled model's cache is not reused.
    monkeypatch.setenv("MODALMESH_TEXT_MODEL", str(tiny_bert_dir))
    train("medical_report", str(medical_data / "train.jsonl"), str(tmp_path / "medical_report"), epochs=1)
    config_path = tmp_path / "medical_report" / "config.json"
    config = json.loads(config_path.read_text())
    assert config["input_widths"]["text"] == 32 and config["input_widths"]["image"] == 1280
    assert config["text_model"] == model_version(str(tiny_bert_dir))  # the weights name the text model they need
    monkeypatch.delenv("MODALMESH_TEXT_MODEL")

    eval_args = [
        "eval",
        "--task",
        "medical_report",
        "--data",
        str(medical_data / "val.jsonl"),
        "--report",
        str(tmp_path / "report"),
        "--weights",
        str(tmp_path / "medical_report"),
    ]
    record = read_manifest(medical_data / "test.jsonl")[0]

    def ask_the_mesh() -> dict:  # its text service runs the bundled MiniLM
        router = mesh.start_router(weights_dir=str(tmp_path))
        try:
            with RouterClient(router.address) as client:
                return client.analyze("medical_report", text=record["text"], image=open(record["image"], "rb").read(), mode="full")
        finally:
            router.stop(grace=0.5)

    # With the bundled text model, eval stops in one line (exit 2) and the router reports
    # the text failed and why; the scan still answers.
    assert main(eval_args) == 2
    assert "trained with the text model tiny-bert" in capsys.readouterr().err
    answer = ask_the_mesh()
    text = answer["modalities"]["text"]
    assert text["status"] == "failed" and "runs all-MiniLM-L6-v2@" in text["reason"] and "trained with tiny-bert" in text["reason"]
    assert answer["modalities"]["image"]["status"] == "used" and answer["label"] in ("normal", "nodule", "mass")

    # Weights that do not name their text model (written before they did) are caught by width.
    config_path.write_text(json.dumps({k: v for k, v in config.items() if k != "text_model"}))
    assert main(eval_args) == 2
    assert "expect text features 32 wide, the encoders give 384" in capsys.readouterr().err
    text = ask_the_mesh()["modalities"]["text"]
    assert text["status"] == "failed" and "384 wide" in text["reason"] and "expect 32" in text["reason"]


def test_train_triage_with_screens_voices_and_transcripts(triage_data, tmp_path, capsys):
    from modalmesh.router.evaluate import evaluate
    from modalmesh.router.train import train

    summary = train("screenshot_triage", str(triage_data / "train.jsonl"), str(tmp_path / "w"), epochs=2)
    # The task's default: an ensemble of three, each member calibrated on its own.
    assert summary["train_items"] == 12 and summary["members"] == 3
    # The out-of-scope records teach the scope check, stored beside the weights and loaded with them.
    check = summary["scope_check"]
    assert summary["train_out_of_scope"] == 2 and summary["val_out_of_scope"] == check["val_out"] == 2 and 0 <= check["val_out_caught"] <= 2
    assert (tmp_path / "w" / "scope.safetensors").is_file() and "teach a check on the message and screen text" in (tmp_path / "w" / "MODEL_CARD.md").read_text()
    # `fit-scope` fits it again as training did and, asked to, rewrites the folder: one such line in the card.
    assert main(["fit-scope", "--task", "screenshot_triage", "--data", str(triage_data / "train.jsonl"), "--weights", str(tmp_path / "w"), "--write"]) == 0
    out = capsys.readouterr().out
    assert f"on validation it withholds {check['val_out_caught']} of 2 out of scope" in out and f"wrote {tmp_path / 'w'}" in out
    card = (tmp_path / "w" / "MODEL_CARD.md").read_text()
    assert card.count("- Out of scope: 2 training inputs") == 1 and json.loads((tmp_path / "w" / "train_log.json").read_text())["scope_check"] == check
    # `fit-status-line` fits the pointer again as training did (the same screens, the same seed: the same
    # pointer) and rewrites the folder with it, the fusion model untouched; one status-line section in the card.
    model_before = (tmp_path / "w" / "model.safetensors").read_bytes()
    pointer_before = (tmp_path / "w" / "status_line.safetensors").read_bytes()
    assert (
        main(["fit-status-line", "--task", "screenshot_triage", "--data", str(triage_data / "train.jsonl"), "--weights", str(tmp_path / "w"), "--write"]) == 0
    )
    out = capsys.readouterr().out
    assert f"status-line pointer: right on {summary['status_line']['val_accuracy']:.1%}" in out and f"wrote {tmp_path / 'w'}" in out
    assert (tmp_path / "w" / "status_line.safetensors").read_bytes() == pointer_before and (tmp_path / "w" / "model.safetensors").read_bytes() == model_before
    card = (tmp_path / "w" / "MODEL_CARD.md").read_text()
    assert card.count("- Status line (`status_line.safetensors`)") == 1 and card.count("with `modalmesh fit-status-line`") == 1
    assert card.index("with `modalmesh fit-status-line`") < card.index("- Evaluate with")
    assert json.loads((tmp_path / "w" / "train_log.json").read_text())["status_line_data"] == str(triage_data / "train.jsonl")
    assert len(summary["temperature"]) == 3 and all(t > 0 for t in summary["temperature"])
    # The status-line pointer learns from the screens whose message OCR read.
    assert summary["status_line"]["train_screens"] >= 8 and (tmp_path / "w" / "status_line.safetensors").is_file()
    # Features were cached: a second run does not encode anything again.
    again = train("screenshot_triage", str(triage_data / "train.jsonl"), str(tmp_path / "w2"), epochs=1)
    assert again["feature_seconds"] < summary["feature_seconds"] / 3
    # Evaluation says how often error_text holds the screen's message (a 2-epoch model: counted, not judged).
    results = evaluate("screenshot_triage", str(triage_data / "val.jsonl"), str(tmp_path / "report"), weights=str(tmp_path / "w"))
    found = results["screen_text"]
    assert found["items"] > 0 and 0 <= found["key_line"] <= found["items"] and 0 <= found["error_words"] <= found["items"]
    assert 0 <= found["message_alone"] <= found["key_line"]
    assert f"in {found['key_line']} of {found['items']} screenshots" in (tmp_path / "report" / "report.md").read_text()
    assert f"the message alone (no other text of the screen with it) in {found['message_alone']}" in (tmp_path / "report" / "report.md").read_text()
    assert found["by"] == "status-line pointer"
    # ... and how often the answers state it (tasks.states_error_text), given and withheld apart.
    served = found["as_served"]
    assert all(0 <= k["message_alone"] <= k["right"] <= k["stated"] for k in served.values())
    assert served["given"]["stated"] + served["withheld"]["stated"] <= found["items"] - found["withheld"]
    stated = f"error_text stated with {served['given']['stated']} given answers of {found['items']} screenshots"
    assert stated in (tmp_path / "report" / "report.md").read_text()
    # Too few validation screens to choose the familiarity check on: every pick is stated.
    assert summary["status_line"]["familiar_from"] is None and found["withheld"] == 0 and found["key_line"] == found["picked_right"]
    # Routing was tuned with the screen text also read quickly (cached like the rest), and says whether it reads it so first.
    assert set(summary["routing"]["quick"]) <= {"image"}
    assert "read quickly first (ROUTED mode): " in (tmp_path / "w" / "MODEL_CARD.md").read_text()
    # Evaluated with the quick reading: ROUTED's answers and error_text come from it where it holds.
    config = json.loads((tmp_path / "w" / "config.json").read_text())
    config["routing"] = {**config["routing"], "eager": ["image", "audio"], "quick": ["image"]}
    (tmp_path / "w" / "config.json").write_text(json.dumps(config))
    results = evaluate("screenshot_triage", str(triage_data / "val.jsonl"), str(tmp_path / "report"), weights=str(tmp_path / "w"))
    routed, quick = results["modes"]["routed"], results["screen_text_routed"]
    assert routed["quick"] == ["image"] and 0 <= routed["from_quick_reading"] == quick["from_quick_reading"] <= results["items"]
    assert quick["items"] == found["items"] and 0 <= quick["key_line"] <= quick["items"]
    assert "answered from the quick reading" in (tmp_path / "report" / "report.md").read_text()


def test_the_error_text_the_evaluation_counts_is_the_one_the_router_states(mesh, tmp_path):
    """`modalmesh eval` counts the error_text each answer states, given and withheld, by the
    router's own rule (tasks.states_error_text); the running router, asked about the same
    held-out e-mails in FULL mode, states it on exactly as many of them."""
    from modalmesh.client import RouterClient
    from modalmesh.data.heldout import heldout
    from modalmesh.router.evaluate import evaluate
    from modalmesh.router.features import media_type_of

    manifest = heldout("screenshot_triage", tmp_path / "mail", n=30, seed=21)
    counted = evaluate("screenshot_triage", str(manifest), str(tmp_path / "report"))["screen_text"]["as_served"]
    stated = {"given": 0, "withheld": 0}
    with RouterClient(mesh.router.address, timeout=60) as client:
        for record in read_manifest(manifest):
            if record.get("scope", "in") != "in" or not (record.get("extra") or {}).get("screen"):
                continue
            image = manifest.parent / record["image"]
            fields = {"text": record.get("text", ""), "image": image.read_bytes(), "image_type": media_type_of(str(image))}
            answer = client.analyze("screenshot_triage", mode="full", **fields)
            if answer["findings"]["error_text"]:
                stated["withheld" if answer["abstained"] else "given"] += 1
    assert stated == {kind: counts["stated"] for kind, counts in counted.items()}
    assert stated["given"] > 0 and stated["withheld"] > 0  # both kinds are on these e-mails


def test_the_key_screen_line_is_the_one_the_answer_comes_from():
    """The shipped triage model, real MiniLM vectors of a screen's paragraphs: the line
    that alone supports the answer is the message, not the app's name or its menu, and
    it is found where a list of error words finds nothing."""
    import torch

    from modalmesh.router.tasks import SHIPPED_WEIGHTS
    from modalmesh.router.tasks import ERROR_WORDS, TASKS, key_screen_line, load_task_folder
    from modalmesh.text.model import TextEncoder

    task = load_task_folder(TASKS["screenshot_triage"], SHIPPED_WEIGHTS / "screenshot_triage")
    encoder = TextEncoder("")
    for message, label in (("Incorrect password", "login"), ("Delivery delayed", "shipping"), ("Refund pending", "refund")):
        lines = ["ShopFast", "Home Orders Account Help", message, "OK"]
        vectors = torch.stack([torch.as_tensor(r.pooled, dtype=torch.float32) for r in encoder.encode_batch(lines)])
        assert key_screen_line(task.model, vectors, task.spec.labels.index(label)) == 2, message
        assert not any(ERROR_WORDS.search(line) for line in lines)  # the word list alone reports nothing here
    # No line supports a label at all: nothing is reported.
    vectors = torch.stack([torch.as_tensor(r.pooled, dtype=torch.float32) for r in encoder.encode_batch(["ShopFast"])])
    assert key_screen_line(task.model, vectors, task.spec.labels.index("payment")) is None


def test_an_ensemble_is_its_members_trained_alone_and_answers_with_their_mean(triage_data, tmp_path):
    from safetensors.torch import load_file

    from modalmesh.router.fusion import StackedEnsemble
    from modalmesh.router.tasks import TASKS, fuse, load_task_folder
    from modalmesh.router.train import train

    manifest = str(triage_data / "train.jsonl")
    summary = train("screenshot_triage", manifest, str(tmp_path / "pair"), epochs=1, seed=5, members=2)
    # Member 0 is what training alone from seed 5 gives, byte for byte (the run's status-line
    # pointer is fitted from its first seed, so a run alone from seed 6 may focus other paragraphs);
    # member 1 is trained from seed 6.
    train("screenshot_triage", manifest, str(tmp_path / "alone"), epochs=1, seed=5, members=1)
    pair, alone = load_file(str(tmp_path / "pair" / "model.safetensors")), load_file(str(tmp_path / "alone" / "model.safetensors"))
    assert set(alone) == {key.removeprefix("members.0.") for key in pair if key.startswith("members.0.")}
    assert all(torch.equal(pair[f"members.0.{key}"], value) for key, value in alone.items())
    assert not all(torch.equal(pair[f"members.1.{key}"], value) for key, value in alone.items())
    config = json.loads((tmp_path / "pair" / "config.json").read_text())
    assert config["members"] == 2 and len(config["gate_offsets"]) == 2 and summary["members"] == 2
    assert "Ensemble: 2 models" in (tmp_path / "pair" / "MODEL_CARD.md").read_text()

    spec = TASKS["screenshot_triage"]
    ensemble = load_task_folder(spec, tmp_path / "pair", "float32").model  # exactly its members' mean (bfloat16: to 0.01)
    assert isinstance(ensemble, StackedEnsemble) and len(ensemble.members) == 2  # loaded as one batched model
    record = read_manifest(triage_data / "val.jsonl")[0]
    features = {"text": torch.randn(6, 384), "image": torch.randn(49, 1280)}
    _, together, _, weight, _ = fuse(ensemble, spec, features, {}, outstanding=("image_text",))
    each = [fuse(member, spec, features, {}, outstanding=("image_text",)) for member in ensemble.members]
    assert torch.allclose(together, torch.stack([e.probabilities for e in each]).mean(dim=0), atol=1e-6)
    assert weight == pytest.approx(sum(e.outstanding_weight for e in each) / 2, abs=1e-6) and 0 < weight < 1
    assert record["task"] == "screenshot_triage"


def test_sizes_come_from_the_pixel_spacing_and_decide_nodule_or_mass():
    import torch

    from modalmesh.router.tasks import TASKS, field_of_view_mm

    spec = TASKS["medical_report"]
    assert field_of_view_mm({"Columns": "256", "PixelSpacing": "0.7\\0.8"}) == (pytest.approx(204.8), True)
    assert field_of_view_mm({"width": "100"}) == (pytest.approx(75.0), False)  # a PNG without a stated spacing
    probabilities = torch.tensor([0.1, 0.6, 0.3])  # normal, nodule, mass as the classifier saw them
    diameter = spec.regression.index("largest_diameter_mm")
    raw = torch.zeros(len(spec.regression))
    raw[diameter] = 0.25  # a quarter of the image's width
    for spacing, expected_mm, larger in (("0.6", 38.4, "mass"), ("0.4", 25.6, "nodule")):
        tags = {"Columns": "256", "PixelSpacing": f"{spacing}\\{spacing}"}
        finished_p, finished_r = spec.finish(probabilities, raw, tags, {"largest_diameter_mm": 2.0})
        assert float(finished_r[diameter]) == pytest.approx(expected_mm, rel=1e-5)
        assert float(finished_p[0]) == pytest.approx(0.1) and float(finished_p.sum()) == pytest.approx(1.0)
        assert spec.labels[int(finished_p.argmax())] == larger
    # Near the threshold the split is uncertain, in proportion to the measurement's error.
    tags = {"Columns": "100", "PixelSpacing": "1\\1"}
    raw[diameter] = 0.30
    near, _ = spec.finish(probabilities, raw, tags, {"largest_diameter_mm": 3.0})
    assert float(near[1]) == pytest.approx(0.45, abs=1e-4) and float(near[2]) == pytest.approx(0.45, abs=1e-4)


def test_some_ct_cases_come_with_a_dictated_note(medical_data):
    records = [r for split in ("train", "val", "test") for r in read_manifest(medical_data / f"{split}.jsonl")]
    dictated = [r for r in records if r.get("audio")]
    assert dictated and len(dictated) < len(records)
    for record in dictated[:3]:
        assert open(record["audio"], "rb").read(4) == b"RIFF" and record["extra"]["dictation"]


def test_routing_thresholds_are_tuned_for_latency_within_half_a_point():
    from modalmesh.router.routing import Checkpoint, RoutingCase, route, tune_routing

    def case(confidence, base_correct, weight=0.01, after_ocr=None):
        """Base features in at 100 ms; OCR at 1100 ms; (optionally) the transcript at 4100 ms."""
        checkpoints = [Checkpoint(100.0, confidence, base_correct, weight, False)]
        if after_ocr is not None:
            checkpoints.append(Checkpoint(1100.0, after_ocr[0], after_ocr[1], after_ocr[2], True))
        return RoutingCase(checkpoints, has_side=True, later_sides=("image",), full_correct=True, final_ms=4100.0 if after_ocr else 1100.0, full_ms=1000.0)

    # Confident base answers are right, unsure ones are wrong: answer early above 0.9.
    cases = [case(0.95, True)] * 60 + [case(0.75, False)] * 40
    tau, gamma = tune_routing(cases, max_risk=0.03)
    outcome = route(cases, tau, gamma)
    assert 0.75 < tau <= 0.95 and outcome["accuracy"] == 1.0 and outcome["side_outputs_requested"] == 40
    assert outcome["later_side_share"] == {"image": pytest.approx(0.4)}
    assert outcome["mean_latency_ms"] == pytest.approx(0.6 * 100 + 0.4 * 1100)
    # When even confident base answers are often wrong, never answer early.
    cases = [case(0.99, i % 4 != 0) for i in range(100)]
    tau, gamma = tune_routing(cases, max_risk=0.03)
    assert route(cases, tau, gamma)["accuracy"] == 1.0 and route(cases, tau, gamma)["side_outputs_requested"] == 100
    # Confident base answers wrong exactly where everything together is wrong too (a message
    # that misleads about the screen): accuracy would not tell, but those early answers would
    # be given confidently where the full answer is withheld as unsure. Never answer early.
    cases = [case(0.95, True)] * 90 + [RoutingCase([Checkpoint(100.0, 0.95, False, 0.01, False)], True, ("image",), False, 1100.0, 1000.0)] * 10
    tau, gamma = tune_routing(cases, max_risk=0.03)
    outcome = route(cases, tau, gamma)
    assert outcome["early"] == 0 and outcome["early_wrong"] == 0 and outcome["side_outputs_requested"] == 100
    # One such case in a hundred is within a 3% risk: answering early is kept.
    cases = [case(0.95, True)] * 99 + [RoutingCase([Checkpoint(100.0, 0.95, False, 0.01, False)], True, ("image",), False, 1100.0, 1000.0)]
    outcome = route(cases, *tune_routing(cases, max_risk=0.03))
    assert outcome["early"] == 100 and outcome["early_wrong"] == 1
    # A side output the gate expects to weigh a lot is waited for, whatever the confidence.
    cases = [case(0.99, True, weight=0.4)] * 10 + [case(0.99, False, weight=0.6)] * 10
    tau, gamma = tune_routing(cases, max_risk=0.03)
    assert route(cases, tau, gamma)["accuracy"] == 1.0 and route(cases, tau, gamma)["side_outputs_requested"] == 10
    # OCR is expected to matter (weight 0.6); once it is in the answer is sure and the transcript is not waited for.
    cases = [case(0.99, i % 4 != 0, weight=0.6, after_ocr=(0.97, True, 0.05)) for i in range(100)]
    tau, gamma = tune_routing(cases, max_risk=0.03)
    outcome = route(cases, tau, gamma)
    assert outcome["accuracy"] == 1.0 and outcome["mean_latency_ms"] == pytest.approx(1100.0)
    assert outcome["side_outputs_requested"] == 100


def test_the_early_answer_is_the_first_sure_checkpoint_and_names_what_it_was_fused_from():
    from modalmesh.router.routing import Checkpoint, RoutingCase, early_answer

    unsure = Checkpoint(10.0, 0.6, True, 0.1, False, ("text",))
    sure = Checkpoint(300.0, 0.95, True, 0.1, True, ("text", "image", "image_text"))
    case = RoutingCase([unsure, sure], True, (), True, 900.0, 800.0)
    assert early_answer(case, 0.9, 0.5) is sure and sure.sources == ("text", "image", "image_text")
    # A sure answer the task would withhold there (read from the screenshot alone below its own
    # threshold, say) is not given early: the router waits for what is still to come.
    withheld_there = Checkpoint(10.0, 0.95, True, 0.1, False, ("image",), served=False)
    assert early_answer(RoutingCase([withheld_there, sure], True, (), True, 900.0, 800.0), 0.9, 0.5) is sure
    assert early_answer(RoutingCase([withheld_there], True, (), True, 900.0, 800.0), 0.9, 0.5) is None
    assert early_answer(case, 0.5, 0.5) is unsure
    assert early_answer(case, 0.99, 0.5) is None  # waits for everything


def test_an_eager_side_output_arrives_with_its_base_features_in_the_routing_replay():
    """evaluate.routing_cases replays the gather loop: a deferred OCR is asked for once every
    base feature is in; an eager one comes with the image's features from one call."""
    import torch

    from modalmesh.router.routing import routing_cases
    from modalmesh.router.features import ItemFeatures
    from modalmesh.router.fusion import FusionConfig, FusionModel
    from modalmesh.router.tasks import TASKS
    from modalmesh.router.train import Example

    spec = TASKS["screenshot_triage"]
    torch.manual_seed(0)
    model = FusionModel(FusionConfig(labels=spec.labels)).eval()
    features = {"text": torch.randn(5, 384), "image": torch.randn(49, 1280), "image_text": torch.randn(2, 384)}
    example = Example(features, 0, torch.zeros(0), torch.zeros(0), {}, torch.zeros(0))
    item = ItemFeatures(features, {"text": 20.0, "image": 60.0, "image_text": 500.0})
    fuse = 5.0

    (deferred,) = routing_cases(model, spec, [example], [item], fuse, eager=())
    assert [c.at_ms for c in deferred.checkpoints] == [20.0 + fuse, 60.0 + fuse]  # text, then the image's features
    assert deferred.final_ms == 60.0 + fuse + (60.0 + 500.0) + fuse  # OCR asked for after them: a second call
    assert not any(c.side_requested for c in deferred.checkpoints)

    (eager,) = routing_cases(model, spec, [example], [item], fuse, eager=("image",))
    assert [c.at_ms for c in eager.checkpoints] == [20.0 + fuse]  # the image's features come with the OCR
    assert eager.final_ms == 60.0 + 500.0 + fuse
    assert eager.checkpoints[0].side_requested and eager.has_side
    assert eager.full_ms == deferred.full_ms == 560.0 + fuse
    # What is outstanding at the text's checkpoint includes the OCR either way.
    assert eager.checkpoints[0].outstanding_weight == pytest.approx(deferred.checkpoints[0].outstanding_weight)


def test_only_side_outputs_routing_usually_asks_for_become_eager():
    """An eager side output is started on every item: only one routing asks for on at least
    half of them anyway becomes eager, the most asked for first (a transcript asked for on
    20% of items is not started on all of them)."""
    from modalmesh.router.train import EAGER_MIN_SHARE, next_eager

    assert EAGER_MIN_SHARE == 0.5
    assert next_eager(("image", "audio"), (), {"image": 0.9, "audio": 0.6}) == "image"
    assert next_eager(("image", "audio"), ("image",), {"audio": 0.2}) is None
    assert next_eager(("image", "audio"), ("image",), {"audio": 0.5}) == "audio"
    assert next_eager(("image", "audio"), (), {"image": 0.49, "audio": 0.3}) is None
    assert next_eager(("image",), ("image",), {}) is None


def test_tuned_thresholds_in_the_weights_override_the_task_defaults(tmp_path):
    from safetensors.torch import save_file

    from modalmesh.router.fusion import FusionConfig, FusionModel
    from modalmesh.router.tasks import TASKS, load_task_folder

    spec = TASKS["screenshot_triage"]
    config = FusionConfig(labels=spec.labels, routing={"tau": 0.7, "gamma": 0.3, "eager": ["image"]})
    save_file(FusionModel(config).state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    loaded = load_task_folder(spec, tmp_path)
    assert (loaded.spec.tau, loaded.spec.gamma, loaded.spec.eager) == (0.7, 0.3, ("image",))
    assert (spec.tau, spec.gamma, spec.eager) == (0.9, 0.15, ())


def test_the_routing_setting_overrides_thresholds_and_eager_side_outputs():
    from modalmesh.router.server import apply_routing_thresholds
    from modalmesh.router.tasks import TASKS

    specs = apply_routing_thresholds(dict(TASKS), "screenshot_triage=0.8/0.2/image+audio, medical_report=0.6/0.1/none")
    assert (specs["screenshot_triage"].tau, specs["screenshot_triage"].gamma) == (0.8, 0.2)
    assert specs["screenshot_triage"].eager == ("image", "audio") and specs["medical_report"].eager == ()
    kept = apply_routing_thresholds({"screenshot_triage": dataclasses.replace(TASKS["screenshot_triage"], eager=("image",))}, "screenshot_triage=0.5/0.5")
    assert kept["screenshot_triage"].eager == ("image",)  # two parts: eager as it was
    quick = dataclasses.replace(TASKS["screenshot_triage"], quick=("image",))
    assert apply_routing_thresholds({"screenshot_triage": quick}, "screenshot_triage=0.5/0.5/image")["screenshot_triage"].quick == ("image",)
    assert apply_routing_thresholds({"screenshot_triage": quick}, "screenshot_triage=0.5/0.5/image/none")["screenshot_triage"].quick == ()
    assert apply_routing_thresholds(dict(TASKS), "screenshot_triage=0.5/0.5/image/image")["screenshot_triage"].quick == ("image",)
    for bad, complaint in (
        ("medical_report=0.7/0.1/image", "audio or none"),
        ("screenshot_triage=0.7", "tau/gamma[/eager[/quick]]"),
        ("screenshot_triage=0.7/0.1/image/audio", "image or none, not audio"),
        ("screenshot_triage=0.7/0.1/", "empty"),
        ("nope=0.1/0.1", "unknown task"),
    ):
        with pytest.raises(ValueError, match=re.escape(complaint)):
            apply_routing_thresholds(dict(TASKS), bad)


def test_feature_noise_is_relative_to_each_row_and_off_at_zero():
    import torch

    from modalmesh.router.train import add_noise

    features = {"text": torch.randn(5, 384) * 0.05, "image": torch.rand(49, 1280) * 4}
    assert add_noise(features, 0.0) is features
    torch.manual_seed(0)
    noisy = add_noise(features, 0.5)
    for source, clean in features.items():
        change = (noisy[source] - clean).pow(2).mean(dim=-1).sqrt() / clean.pow(2).mean(dim=-1).sqrt()
        assert noisy[source].shape == clean.shape and torch.allclose(change, torch.full_like(change, 0.5), atol=0.1)


def test_feature_noise_does_not_depend_on_the_order_of_sources():
    """Fresh features come in the encoders' order, cached ones by name: the same noise."""
    import torch

    from modalmesh.router.train import add_noise

    features = {"text": torch.randn(5, 384), "image": torch.randn(49, 1280), "audio": torch.randn(7, 80)}
    torch.manual_seed(3)
    forward = add_noise(features, 0.5)
    torch.manual_seed(3)
    backward = add_noise(dict(reversed(features.items())), 0.5)
    assert list(forward) == list(backward) == sorted(features)
    assert all(torch.equal(forward[s], backward[s]) for s in features)


def test_fusion_config_refuses_unknown_choices():
    from modalmesh.router.fusion import FusionConfig

    with pytest.raises(ValueError, match="regression_from 'scan'"):
        FusionConfig(labels=("a", "b"), regression_from="scan")
    with pytest.raises(ValueError, match="pooling 'max'"):
        FusionConfig(labels=("a", "b"), pooling="max")


@pytest.mark.parametrize("task", ["medical_report", "screenshot_triage"])  # triage: with feature noise
def test_training_is_deterministic_by_seed(task, request, tmp_path):
    from modalmesh.router.train import train

    data = request.getfixturevalue("medical_data" if task == "medical_report" else "triage_data")
    for name in ("a", "b"):
        train(task, str(data / "train.jsonl"), str(tmp_path / name), epochs=2, seed=4, members=1, cache_dir=str(tmp_path / "features"))
    # "a" extracted the features, "b" read them from the cache: the same bytes either way.
    first, second = ((tmp_path / n / "model.safetensors").read_bytes() for n in ("a", "b"))
    assert first == second
    configs = [json.loads((tmp_path / n / "config.json").read_text()) for n in ("a", "b")]
    for config in configs:  # routing thresholds also depend on the fusion time measured on the day
        config.pop("routing")
    assert configs[0] == configs[1]


def test_input_widths_come_from_the_features_and_must_agree():
    from modalmesh.router.fusion import DEFAULT_INPUT_WIDTHS
    from modalmesh.router.train import Example, input_widths

    def example(**features):
        return Example({s: torch.zeros(3, w) for s, w in features.items()}, 0, torch.zeros(0), torch.zeros(0), {}, torch.zeros(0))

    widths = input_widths([example(text=768), example(text=768, image=1280)], DEFAULT_INPUT_WIDTHS)
    assert widths["text"] == 768 and widths["image"] == 1280 and widths["audio_text"] == DEFAULT_INPUT_WIDTHS["audio_text"]
    with pytest.raises(ValueError, match="'text' has features 768 and 384 wide"):
        input_widths([example(text=768), example(text=384)], DEFAULT_INPUT_WIDTHS)


def test_train_refuses_and_eval_withholds_an_image_the_router_does_not_read(tmp_path, capsys):
    """An MR in a medical manifest is not learned from; eval judges it as the router does."""
    from pydicom.data import get_testdata_file

    (tmp_path / "mr.dcm").write_bytes(open(get_testdata_file("MR_small.dcm"), "rb").read())
    record = {
        "id": "mr-1",
        "task": "medical_report",
        "text": "64-year-old smoker, 30 pack-years, persistent cough.",
        "label": "normal",
        "image": "mr.dcm",
        "extra": {"lesion_count": 0, "largest_diameter_mm": 0.0, "side": "none"},
    }
    (tmp_path / "train.jsonl").write_text(json.dumps(record) + "\n")
    assert main(["train", "--task", "medical_report", "--data", str(tmp_path / "train.jsonl"), "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"mr-1: image \S*mr\.dcm: the DICOM's Modality is MR; medical_report reads axial chest CT slices", err), err
    assert main(["eval", "--task", "medical_report", "--data", str(tmp_path / "train.jsonl"), "--report", str(tmp_path / "r")]) == 0
    honesty = json.loads((tmp_path / "r" / "report.json").read_text())["honesty"]["in_scope"]
    assert honesty["answered"] == 0 and honesty["withheld_reasons"] == {"no chest CT slice was read, and the record alone is not a diagnosis": 1}
    assert (tmp_path / "r" / "reliability.png").is_file()


def test_eval_without_matplotlib_writes_the_report_and_says_the_plots_need_it(tmp_path, medical_data, monkeypatch):
    """matplotlib is the `eval` extra, not needed to serve: without it the figures stand."""
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    assert main(["eval", "--task", "medical_report", "--data", str(medical_data / "val.jsonl"), "--report", str(tmp_path / "r")]) == 0
    assert json.loads((tmp_path / "r" / "report.json").read_text())["items"] > 0
    assert "Plots not drawn: they need matplotlib (pip install 'modalmesh[eval]')." in (tmp_path / "r" / "report.md").read_text()
    assert not (tmp_path / "r" / "reliability.png").exists()


def test_fit_scope_says_when_there_is_nothing_to_learn_from(medical_data, tmp_path, capsys):
    """`fit-scope` on manifests without out-of-scope records, or without val.jsonl beside
    them: one line saying so (exit 2), nothing written."""
    from modalmesh.router.tasks import SHIPPED_WEIGHTS

    before = sorted(p.name for p in (SHIPPED_WEIGHTS / "medical_report").iterdir())
    assert main(["fit-scope", "--task", "medical_report", "--data", str(medical_data / "train.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "modalmesh fit-scope: " in err and "nothing to learn a scope check from" in err and "Traceback" not in err
    assert main(["fit-scope", "--task", "medical_report", "--data", str(tmp_path / "none.jsonl")]) == 2
    assert f"{tmp_path / 'none.jsonl'}: no such file" in capsys.readouterr().err
    alone = tmp_path / "train.jsonl"
    alone.write_text((medical_data / "train.jsonl").read_text().replace('"image": "files/', f'"image": "{medical_data}/files/'))
    assert main(["fit-scope", "--task", "medical_report", "--data", str(alone)]) == 2
    assert "threshold is chosen on val.jsonl beside it, and there is none" in capsys.readouterr().err
    assert sorted(p.name for p in (SHIPPED_WEIGHTS / "medical_report").iterdir()) == before
    # A task that reads no screen text has no status-line pointer to fit.
    assert main(["fit-status-line", "--task", "medical_report", "--data", str(medical_data / "train.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "modalmesh fit-status-line: medical_report reads no screen text" in err and "Traceback" not in err


def test_train_says_what_is_wrong_with_a_manifest_in_one_line(tmp_path, capsys):
    cases = {
        '{"id": "a", "task": "medical_report", "text": "x", "label": "tumour"}': "a: label 'tumour' is not one of",
        '{"id": "b", "task": "medical_report", "text": "x", "label": "normal", "image": "gone.dcm"}': ":1: b: image file not found",
        '{"id": "c", oops': ":1: not a JSON object",
        '{"id": "d", "task": "medical_report", "text": "x"}': ":1: missing 'label'",
        '{"id": "e", "task": "medical_report", "text": "x", "label": "normal", "alone_labels": {"txt": "normal"}}': "e: alone_labels: 'txt' is not a modality",
        '{"id": "f", "task": "medical_report", "text": "x", "label": "normal", "alone_labels": {"text": "tumour"}}': "f: alone_labels: text: label 'tumour'",
        '{"id": "g", "task": "medical_report", "text": "x", "label": "normal", "alone_labels": ["normal"]}': "g: alone_labels: an object of modality",
    }
    for number, (line, message) in enumerate(cases.items()):
        manifest = tmp_path / f"m{number}.jsonl"
        manifest.write_text(line + "\n")
        assert main(["train", "--task", "medical_report", "--data", str(manifest), "--out", str(tmp_path / "w")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("modalmesh train: ") and message in err and "Traceback" not in err
    assert main(["train", "--task", "medical_report", "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "w")]) == 2
    assert "No such file" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_untrained_fine_tuning_layers_give_the_text_services_features_again(triage_data):
    """The top layers run on the frozen states below them must reproduce what the text
    service sent (tokens; one pooled vector per screen paragraph), or fine-tuning would
    start from other features than the ones served."""
    from modalmesh.router.features import FeatureCache
    from modalmesh.router.finetune import TEXT_SOURCES, TextTop, texts_of
    from modalmesh.router.tasks import TASKS
    from modalmesh.router.train import load_examples
    from modalmesh.text.model import TextEncoder

    manifest = triage_data / "train.jsonl"
    cache = FeatureCache.for_task(TASKS["screenshot_triage"], manifest)
    try:
        examples, items = load_examples("screenshot_triage", manifest, cache, "test")
    finally:
        cache.close()
    top = TextTop(TextEncoder(), 2)
    top.prepare(examples, [texts_of(r, item) for r, item in zip(read_manifest(manifest), items)])
    with torch.no_grad():
        remade = top.eval()(examples)
    compared = 0
    for example, features in zip(examples, remade):
        for source in TEXT_SOURCES:
            if source in example.features:
                assert features[source].shape == example.features[source].shape, source
                assert torch.allclose(features[source], example.features[source].float(), atol=2e-3), source
                compared += 1
    assert compared >= len(examples)  # every example has at least one text source here
    assert {s for e in examples for s in e.features} >= {"text", "image_text"}


def test_fine_tuned_text_layers_are_trained_saved_and_served_with_their_text_model(medical_data, tmp_path, mesh, monkeypatch, capsys):
    from tests.conftest import start_service
    from modalmesh.client import RouterClient
    from modalmesh.text.model import TextEncoder

    weights = tmp_path / "medical_report"
    base = ["train", "--task", "medical_report", "--data", str(medical_data / "train.jsonl"), "--out", str(weights), "--epochs", "2", "--finetune-top", "1"]
    assert main(base + ["--members", "2"]) == 2 and "--members 1" in capsys.readouterr().err  # one text model, one member
    assert main(base) == 0  # medical_report's default is one model
    config = json.loads((weights / "config.json").read_text())
    served = TextEncoder(str(weights / "text-model"))
    assert config["text_model"].split("@")[1] == served.version.split("@")[1]
    base_model = TextEncoder()
    # The top layer moved, the ones below did not.
    top, bottom = (f"encoder.layer.{i}.output.dense.weight" for i in (5, 4))
    state, original = served.model.state_dict(), base_model.model.state_dict()
    assert torch.equal(state[bottom], original[bottom]) and not torch.equal(state[top], original[top])

    # Evaluation needs the fine-tuned text model's features, and says so.
    report = ["eval", "--task", "medical_report", "--data", str(medical_data / "val.jsonl"), "--report", str(tmp_path / "r"), "--weights", str(weights)]
    assert main(report) == 2 and "MODALMESH_TEXT_MODEL=" in capsys.readouterr().err
    monkeypatch.setenv("MODALMESH_TEXT_MODEL", str(weights / "text-model"))
    assert main(report) == 0
    monkeypatch.delenv("MODALMESH_TEXT_MODEL")

    record = read_manifest(medical_data / "test.jsonl")[0]
    request = dict(text=record["text"], image=open(record["image"], "rb").read(), mode="full")
    text_service = start_service("text", model=str(weights / "text-model"))
    routers = [
        mesh.start_router(weights_dir=str(tmp_path)),  # the mesh's text service: the bundled MiniLM
        mesh.start_router(weights_dir=str(tmp_path), text_target=text_service.address),
    ]
    try:
        answers = []
        for router in routers:
            with RouterClient(router.address) as client:
                answers.append(client.analyze("medical_report", **request))
    finally:
        for handle in (*routers, text_service):
            handle.stop(grace=0.5)
    wrong, right = answers
    assert wrong["modalities"]["text"]["status"] == "failed" and "trained with text-model@" in wrong["modalities"]["text"]["reason"]
    assert wrong["modalities"]["image"]["status"] == "used"
    assert right["modalities"]["text"]["status"] == "used" and right["modalities"]["image"]["status"] == "used"


def test_fine_tuning_refuses_more_layers_than_the_text_model_has():
    from modalmesh.router.finetune import TextTop
    from modalmesh.text.model import TextEncoder

    encoder = TextEncoder()
    for k in (0, 7):
        with pytest.raises(ValueError, match="between 1 and the text model's 6 layers"):
            TextTop(encoder, k)
    assert len(TextTop(encoder, 6).layers) == 6


def test_a_model_version_is_the_same_weights_by_digest_whatever_the_folder_or_int8():
    from modalmesh.common.models import same_weights

    assert same_weights("all-MiniLM-L6-v2@53aa51172d14", "copy-of-minilm@53aa51172d14")
    assert same_weights("all-MiniLM-L6-v2@53aa51172d14+int8", "all-MiniLM-L6-v2@53aa51172d14")  # served INT8
    assert not same_weights("text-model@4267dd25c6f0", "all-MiniLM-L6-v2@53aa51172d14")
    assert not same_weights("", "") and not same_weights("hub/model", "all-MiniLM-L6-v2@53aa51172d14")


def test_features_read_by_another_ocr_engine_or_size_are_cached_apart(tmp_path, monkeypatch):
    """OCR boxes differ by a few pixels between engines (and so, sometimes, paragraphs):
    screen-text features are cached per engine. Tasks that never OCR keep their keys."""
    from modalmesh.router.features import FeatureCache
    from modalmesh.router.tasks import TASKS

    record = {"id": "a", "text": "where is my parcel"}
    caches = {name: FeatureCache.for_task(TASKS[name], tmp_path / "m.jsonl", tmp_path / "features") for name in ("screenshot_triage", "medical_report")}
    monkeypatch.delenv("MODALMESH_VISION_OCR_ENGINE", raising=False)
    monkeypatch.delenv("MODALMESH_OCR_ENGINE", raising=False)
    monkeypatch.delenv("MODALMESH_OCR_DET_SIDE", raising=False)
    monkeypatch.delenv("MODALMESH_VISION_OCR_DET_SIDE", raising=False)
    default = {name: cache.key(record) for name, cache in caches.items()}
    monkeypatch.setenv("MODALMESH_VISION_OCR_ENGINE", "openvino")
    assert {name: cache.key(record) for name, cache in caches.items()} == default  # the default, named
    monkeypatch.setenv("MODALMESH_VISION_OCR_ENGINE", "onnxruntime")
    assert caches["screenshot_triage"].key(record) != default["screenshot_triage"]
    assert caches["medical_report"].key(record) == default["medical_report"]
    # Likewise OCR's detection size (ocr_det_side): looser boxes, other paragraphs.
    monkeypatch.delenv("MODALMESH_VISION_OCR_ENGINE")
    monkeypatch.setenv("MODALMESH_VISION_OCR_DET_SIDE", "960")
    assert caches["screenshot_triage"].key(record) != default["screenshot_triage"]
    assert caches["medical_report"].key(record) == default["medical_report"]
    monkeypatch.setenv("MODALMESH_VISION_OCR_DET_SIDE", "0")
    assert caches["screenshot_triage"].key(record) == default["screenshot_triage"]
    # The quick reading's alphabet (ocr_quick_alphabet): its cache apart from the full alphabet's.
    monkeypatch.delenv("MODALMESH_VISION_OCR_QUICK_ALPHABET", raising=False)
    monkeypatch.delenv("MODALMESH_OCR_QUICK_ALPHABET", raising=False)
    latin = FeatureCache.for_task(TASKS["screenshot_triage"], tmp_path / "m.jsonl", tmp_path / "features", quick=True)
    monkeypatch.setenv("MODALMESH_VISION_OCR_QUICK_ALPHABET", "all")
    every = FeatureCache.for_task(TASKS["screenshot_triage"], tmp_path / "m.jsonl", tmp_path / "features", quick=True)
    assert latin.ocr_alphabet == "latin" and every.ocr_alphabet == "all" and latin.key(record) != every.key(record)


def test_training_and_evaluation_read_screens_quickly_as_the_vision_service_does():
    """FeatureCache.for_task's `quick` extracts with the vision service's own 'ocr_quick'
    (detection at ocr_quick_det_side, the Latin alphabet first): the message is read, and
    the cost of that reading is what routing's simulation charges."""
    from modalmesh.data.screens import png_bytes, render_screenshot
    from modalmesh.router.features import LocalEncoders

    quick, full = LocalEncoders(transcript=False, quick=True), LocalEncoders(transcript=False)
    try:
        assert quick.screen_option == "ocr_quick" and full.screen_option == "ocr"
        assert quick.vision.reader is not None and quick.vision.reader.reads_latin
        screen = png_bytes(render_screenshot("Your card was declined (code 51)", size=(1920, 1080)))
        read = {name: encoders.extract(image=screen, image_type="image/png", side=("image",)) for name, encoders in (("quick", quick), ("full", full))}
        for item in read.values():
            assert any("card was declined" in line for line in item.evidence["screen_lines"]), item.evidence["screen_lines"]
            assert item.costs_ms["image_text"] > 0 and "image_text" in item.features
    finally:
        quick.close()
        full.close()


def test_transcripts_of_another_beam_width_are_cached_apart(tmp_path, monkeypatch):
    """Whisper's beam width (`asr_beam`) changes transcripts: tasks that read transcripts
    (both built-in ones) cache them per width; the default, named, keeps its key."""
    from modalmesh.router.features import FeatureCache
    from modalmesh.router.tasks import TASKS

    record = {"id": "a", "text": "where is my parcel"}
    cache = FeatureCache.for_task(TASKS["screenshot_triage"], tmp_path / "m.jsonl", tmp_path / "features")
    monkeypatch.delenv("MODALMESH_ASR_BEAM", raising=False)
    monkeypatch.delenv("MODALMESH_AUDIO_ASR_BEAM", raising=False)
    default = cache.key(record)
    monkeypatch.setenv("MODALMESH_AUDIO_ASR_BEAM", "5")
    assert cache.key(record) == default
    monkeypatch.setenv("MODALMESH_AUDIO_ASR_BEAM", "1")
    assert cache.key(record) != default


def test_held_out_sets_are_built_unlike_training_with_inputs_the_task_should_not_answer(tmp_path):
    """`modalmesh data heldout`: in-scope items of another anatomy or renderer, with their
    labels, and out-of-scope items (label null) of every kind the task should refuse."""
    from PIL import Image

    from modalmesh.data.heldout import heldout
    from modalmesh.router.features import media_type_of

    medical = read_manifest(heldout("medical_report", tmp_path / "medical", n=6, seed=1))
    inside = [r for r in medical if r["scope"] == "in"]
    outside = [r for r in medical if r["scope"] == "out"]
    assert len(inside) == 6 and len(outside) == 7  # at least one of each photograph
    assert all(r["label"] in ("normal", "nodule", "mass") and r["extra"]["kind"] == "phantom" for r in inside)
    for record in inside:  # 512 px slices (training's are smaller), DICOM or a 16-bit PNG with its window
        path = tmp_path / "medical" / record["image"]
        if media_type_of(str(path)) == "image/png":
            assert Image.open(path).size == (512, 512) and record["image_parameters"]["window"] == "lung"
        else:
            assert path.read_bytes()[128:132] == b"DICM"
    assert {r["extra"]["kind"] for r in outside} == {"head CT", "abdomen CT", "pydicom", "photo", "screenshot"}
    assert all(r["label"] is None and (tmp_path / "medical" / r["image"]).is_file() for r in outside)

    triage = read_manifest(heldout("screenshot_triage", tmp_path / "triage", n=6, seed=1))
    inside = [r for r in triage if r["scope"] == "in"]
    assert len(inside) == 6 and all(r["extra"]["renderer"] == "mail" and r["label"] for r in inside)
    from modalmesh.data.heldout import HELDOUT_GUIDANCE

    advice = set(HELDOUT_GUIDANCE) | set(pool(GUIDANCE, "test"))  # never a training screen's advice line
    assert all(r["extra"]["guidance"] is None or r["extra"]["guidance"] in advice for r in inside)
    assert any(r["extra"]["guidance"] for r in inside)
    assert {r["extra"]["kind"] for r in triage if r["scope"] == "out"} == {"ct", "photo", "record", "sound", "language", "topic"}
    # A screenshot with a message, about the task's matters in another language or about other matters.
    unread = [r for r in triage if r["scope"] == "out" and r["extra"]["kind"] in ("language", "topic")]
    assert all(r["text"] and (tmp_path / "triage" / r["image"]).is_file() and r["extra"]["screen"] for r in unread)
    assert all(r["extra"]["language"] != "English" and r["extra"]["meaning"] for r in unread if r["extra"]["kind"] == "language")
    # A sound as the voice message, alone: no speech in it for the audio service to find.
    from modalmesh.audio.features import VoiceActivity
    from modalmesh.audio.decode import decode_file

    sounds = [r for r in triage if r["scope"] == "out" and r["extra"]["kind"] == "sound"]
    assert sounds and all(set(r) >= {"audio"} and not r["text"] and "image" not in r for r in sounds)
    for record in sounds:
        samples, rate, _ = decode_file((tmp_path / "triage" / record["audio"]).read_bytes(), "audio/wav")
        assert rate == 16000 and VoiceActivity().segments(torch.from_numpy(samples)) == [], record["extra"]
    with pytest.raises(ValueError, match="unknown task"):
        heldout("quality_control", tmp_path / "qc", n=2, seed=1)


def test_tune_routing_chooses_a_trained_models_routing_again_and_writes_it_as_asked(medical_data, tmp_path, capsys):
    """A model whose routing never answers early (tau 1.01) gets the routing training would
    choose: faster where early answers meet the risk bound, never less accurate than half a
    point. Nothing is written unasked; --repository publishes a copy, --write replaces the folder."""
    from modalmesh.common.models import file_digest
    from modalmesh.router.train import ABSTAIN_RISK

    weights = tmp_path / "medical_report"
    assert main(["train", "--task", "medical_report", "--data", str(medical_data / "train.jsonl"), "--out", str(weights), "--epochs", "3"]) == 0
    config = json.loads((weights / "config.json").read_text())
    config["routing"] = {"tau": 1.01, "gamma": 0.0, "eager": []}
    (weights / "config.json").write_text(json.dumps(config))
    before_files = {p.name: p.read_bytes() for p in weights.iterdir() if p.is_file()}
    capsys.readouterr()
    ask = ["tune-routing", "--task", "medical_report", "--data", str(medical_data / "val.jsonl"), "--weights", str(weights)]
    assert main(ask) == 0
    out = capsys.readouterr().out
    result = json.loads(out[: out.rindex("}") + 1])
    assert result["items"] == 12 and result["written"] == "" and "nothing written" in out
    before, after = result["before"], result["after"]
    assert (before["tau"], before["gamma"], before["early"]) == (1.01, 0.0, 0)  # what the folder had: never early
    assert after["early"] >= 1 and after["mean_latency_ms"] < before["mean_latency_ms"]  # some validation items are sure early
    assert after["early_wrong"] <= ABSTAIN_RISK * after["early"] and after["accuracy"] >= before["accuracy"] - 0.005 - 1e-9
    assert {p.name: p.read_bytes() for p in weights.iterdir() if p.is_file()} == before_files  # a dry run changes nothing

    repository = tmp_path / "repo"
    assert main(ask + ["--repository", str(repository)]) == 0
    published = repository / "medical_report" / "1"
    assert str(published) in capsys.readouterr().out
    written = json.loads((published / "config.json").read_text())["routing"]
    assert written == {k: after[k] for k in ("tau", "gamma", "eager", "quick")} and written["quick"] == []
    assert json.loads((published / "train_log.json").read_text())["routing"] == written
    assert f"tau {after['tau']}, gamma {after['gamma']}," in (published / "MODEL_CARD.md").read_text()
    assert file_digest(published / "model.safetensors") == file_digest(weights / "model.safetensors")
    assert {p.name: p.read_bytes() for p in weights.iterdir() if p.is_file()} == before_files

    assert main(ask + ["--write"]) == 0
    assert json.loads((weights / "config.json").read_text())["routing"] == written
    assert (weights / "model.safetensors").read_bytes() == before_files["model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind

    capsys.readouterr()
    assert main(["tune-routing", "--task", "medical_report", "--data", str(medical_data / "val.jsonl"), "--write"]) == 2
    assert "--write needs --weights" in capsys.readouterr().err
    assert main(["tune-routing", "--task", "medical_report", "--data", str(medical_data / "val.jsonl"), "--weights", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "no model.safetensors there" in err and "Traceback" not in err


def test_the_shipped_triage_ensemble_answers_alike_in_bfloat16_and_float32():
    """The router runs the triage ensemble's linear maps in bfloat16 where the CPU
    multiplies it natively (fusion_precision auto): on real web pages (a renderer training
    never saw) and messages, read by the encoders' own code, every answer, withheld or
    given, is float32's, with its confidence within 0.01."""
    from modalmesh.data.screens import png_bytes, render_web_page
    from modalmesh.router.features import LocalEncoders
    from modalmesh.router.served import serve
    from modalmesh.router.tasks import SHIPPED_WEIGHTS, TASKS, load_task

    tasks = {precision: load_task(TASKS["screenshot_triage"], str(SHIPPED_WEIGHTS), precision) for precision in ("float32", "bfloat16")}
    assert tasks["bfloat16"].model.precision == "bfloat16"
    rng = np.random.default_rng(3)
    cases = [("payment", "I was charged twice for one order"), ("login", "it keeps saying my password is wrong"), ("shipping", "")]
    cases += [("crash", "the app closes when I open my basket"), ("refund", "where is the money for the shoes I sent back?")]
    encoders = LocalEncoders(transcript=False)
    try:
        answers = []
        for label, message in cases:
            screen = png_bytes(render_web_page(SCREENS[label][1], rng, (1280, 800), dark=False))
            item = encoders.extract(text=message, image=screen, image_type="image/png")
            tags = dict(item.evidence.get("image_tags", {}))
            answers.append({precision: serve(task, item.features, tags) for precision, task in tasks.items()})
    finally:
        encoders.close()
    for (label, _), answer in zip(cases, answers):
        exact, rounded = answer["float32"], answer["bfloat16"]
        assert (rounded.best, rounded.answered) == (exact.best, exact.answered), label
        assert abs(rounded.confidence - exact.confidence) <= 0.01, label
    assert sum(a["float32"].answered for a in answers) >= 3  # most are answered: the comparison covers given answers


def test_offline_decisions_run_at_the_routers_fusion_precision(monkeypatch):
    """`modalmesh eval` (train.open_trained) loads a task at the precision the router would
    run it at: its `fusion_precision` setting from the environment, else auto."""
    from modalmesh.router.fusion import fusion_precision
    from modalmesh.router.tasks import TASKS
    from modalmesh.router.train import open_trained

    monkeypatch.delenv("MODALMESH_FUSION_PRECISION", raising=False)
    monkeypatch.setenv("MODALMESH_ROUTER_FUSION_PRECISION", "float32")
    assert open_trained(TASKS["screenshot_triage"], "")[0].model.precision == "float32"
    monkeypatch.delenv("MODALMESH_ROUTER_FUSION_PRECISION")
    assert open_trained(TASKS["screenshot_triage"], "")[0].model.precision == fusion_precision("auto")
    monkeypatch.setenv("MODALMESH_FUSION_PRECISION", "half")
    with pytest.raises(ValueError, match="'half' is not auto or one of float32, bfloat16"):
        open_trained(TASKS["screenshot_triage"], "")
