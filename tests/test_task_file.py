"""Tasks of your own: a task file (router/task_file.py) checked, trained into a model
repository and served, with the real text encoder and a real router on 127.0.0.1."""

from __future__ import annotations

import json
import random
import re
import time

import grpc
import pytest

from modalmesh.cli import main
from modalmesh.common.client import connect
from modalmesh.router.task_file import TaskFileError, load_task_file
from modalmesh.v1 import inference_pb2, inference_pb2_grpc, router_pb2, router_pb2_grpc

TASK = {
    "name": "ticket_urgency",
    "description": "How urgent a support ticket is, from its text.",
    "labels": {
        "urgent": {"priority": "high", "next_steps": "Page the on-call engineer.", "reply": "We are on it right now."},
        "routine": {"priority": "low", "next_steps": "Answer within two days.", "reply": "Thanks, we will get back to you."},
    },
    "modalities": ["text"],
    "training": {"members": 1, "feature_noise": 0.0},
    "description_template": "Urgency: {label} ({confidence:.2f}), priority {priority}. {next_steps}",
}
URGENT = ["the whole site is down", "production database is deleted", "every payment fails right now", "all customers are locked out", "servers on fire"]
ROUTINE = ["please update my billing address", "how do I change my avatar", "a typo on the about page", "last year's invoice", "feature idea for later"]
OPENERS = ["", "hello, ", "hi team, ", "quick note: ", "fyi "]


def write_split(folder, split: str, n: int, seed: int) -> None:
    rng = random.Random(seed)
    lines = []
    for index in range(n):
        label = "urgent" if index % 2 else "routine"
        text = rng.choice(OPENERS) + rng.choice(URGENT if label == "urgent" else ROUTINE)
        lines.append(json.dumps({"id": f"{split}-{index:03d}", "task": TASK["name"], "text": text, "label": label}))
    (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")


def test_a_task_file_is_checked_field_by_field(tmp_path):
    path = tmp_path / "task.json"
    path.write_text(json.dumps(TASK, indent=2))
    spec = load_task_file(path)
    assert spec.labels == ("urgent", "routine") and spec.modalities == ("text",) and spec.members == 1
    broken = {**TASK, "labels": {"urgent": {"priority": "soon"}}, "modalities": ["text", "smell"], "side_output": ["image"]}
    broken["description_template"] = "{label} {confidence.real}"
    path.write_text(json.dumps(broken, indent=2))
    with pytest.raises(TaskFileError) as raised:
        load_task_file(path)
    problems = "\n".join(raised.value.problems)
    for expected in ("side_output: not a task file field", "labels: an object with two labels or more", "'smell': each must be one of", "{confidence.real}"):
        assert expected in problems, problems
    assert all(problem.startswith(f"{path}:") for problem in raised.value.problems)  # the file and the line
    path.write_text('{"name": "x",\n  "labels": }')
    with pytest.raises(TaskFileError, match=r"task.json:2:\d+: not valid JSON"):
        load_task_file(path)
    assert main(["task", "check", str(path)]) == 2


def test_a_task_whose_audio_is_spoken_says_so_and_reads_no_audio_without_speech(tmp_path, capsys):
    """`speech`: what the task's audio holds, in words. Set, audio in which the audio
    service's speech detection found none is not applicable; the built-in tasks set it."""
    from modalmesh.router.tasks import TASKS

    path = tmp_path / "task.json"
    path.write_text(json.dumps({**TASK, "modalities": ["text", "audio"], "speech": "phone calls"}))
    spec = load_task_file(path)
    assert spec.speech == "phone calls"
    assert spec.inapplicable_audio({"speech_seconds": "0.00"}) == "no speech in the audio (speech detection found none); ticket_urgency reads phone calls"
    assert spec.inapplicable_audio({"speech_seconds": "1.20"}) is None and spec.inapplicable_audio({}) is None  # speech, or detection off
    plain = {**TASK, "modalities": ["text", "audio"]}  # machine sounds, say: no speech asked for
    path.write_text(json.dumps(plain))
    assert load_task_file(path).inapplicable_audio({"speech_seconds": "0.00"}) is None
    for bad, why in ((3, "what the audio holds"), ("", "what the audio holds"), ("x" * 101, "at most 100")):
        path.write_text(json.dumps({**plain, "speech": bad}))
        with pytest.raises(TaskFileError, match=why):
            load_task_file(path)
    path.write_text(json.dumps({**TASK, "speech": "voice messages"}))
    with pytest.raises(TaskFileError, match="speech: the task has no audio modality"):
        load_task_file(path)
    path.write_text(json.dumps({**TASK, "modalities": ["text", "audio"], "speech": "phone calls"}))
    assert main(["task", "check", str(path)]) == 0
    assert "reads text+audio (audio: phone calls; audio without speech is not read); ok" in capsys.readouterr().out
    assert TASKS["screenshot_triage"].speech == "voice messages" and TASKS["medical_report"].speech == "dictated notes"


def test_the_built_in_tasks_are_task_files_with_plug_ins_a_user_can_reuse(tmp_path):
    """router/builtin/<name>.json: the wording (priorities, next steps, replies) is in the
    file, the code a file names is a plug-in. A help desk's own task reuses the triage
    plug-in with its own categories; a plug-in written for other labels is refused."""
    from modalmesh.router.tasks import BUILT_IN_FOLDER, TASKS, Answer, Evidence

    triage = json.loads((BUILT_IN_FOLDER / "screenshot_triage.json").read_text())
    assert triage["plugin"] == "screen_triage" and TASKS["screenshot_triage"].labels == tuple(triage["labels"])
    assert TASKS["medical_report"].size_rule is not None and TASKS["medical_report"].reports == ("fhir", "dicom_sr")
    billing = {"priority": "high", "next_steps": "Open the invoice.", "reply": "Checking your bill."}
    own = {**triage, "name": "store_desk", "labels": {"billing": billing, "other": triage["labels"]["other"]}}
    path = tmp_path / "task.json"
    path.write_text(json.dumps(own, indent=2))
    spec = load_task_file(path)
    assert spec.labels == ("billing", "other") and spec.reports == ("ticket",)
    description, findings, reply = spec.write(Answer("billing", 0.9, 0.1, {"billing": 0.9}, {}), Evidence(text="charged twice", screen_lines=["Invoice 12"]))
    assert reply == "Checking your bill." and findings["priority"] == "high" and description.startswith("Category: billing (confidence 0.90), priority high.")
    path.write_text(json.dumps({**own, "labels": {"billing": {}, "returns": {}}}, indent=2))
    with pytest.raises(TaskFileError, match="plug-in screen_triage needs the label\\(s\\) other"):
        load_task_file(path)
    path.write_text(json.dumps({**own, "plugin": "chest_ct"}, indent=2))
    with pytest.raises(TaskFileError, match="written for the labels normal, nodule, mass"):
        load_task_file(path)
    path.write_text(json.dumps({**own, "plugin": "ocr_magic"}, indent=2))
    with pytest.raises(TaskFileError, match="plugin: one of screen_triage, chest_ct"):
        load_task_file(path)
    path.write_text(json.dumps({**triage}, indent=2))
    with pytest.raises(TaskFileError, match="is a built-in task; choose another name"):
        load_task_file(path)


def test_task_init_writes_a_file_that_checks(tmp_path, capsys):
    assert main(["task", "init", "qc_line", "--labels", "ok,surface_defect", "--modalities", "image,audio", "--out", str(tmp_path / "qc")]) == 0
    assert main(["task", "check", str(tmp_path / "qc" / "task.json")]) == 0
    assert "task qc_line: 2 labels (ok, surface_defect); reads image+audio; ok" in capsys.readouterr().out
    example = [json.loads(line) for line in (tmp_path / "qc" / "train.example.jsonl").read_text().splitlines()]
    assert [e["label"] for e in example] == ["ok", "surface_defect"] and example[0]["image"] != example[1]["image"]
    assert main(["task", "init", "qc_line", "--labels", "ok,surface_defect", "--modalities", "image", "--out", str(tmp_path / "qc")]) == 2  # never over a file


@pytest.mark.slow
def test_a_task_of_your_own_is_trained_into_a_repository_and_served(mesh, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    write_split(data, "train", 40, 1)
    write_split(data, "val", 20, 2)
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps(TASK, indent=2))
    repository = tmp_path / "models"
    assert main(["train", "--task-file", str(task_file), "--data", str(data / "train.jsonl"), "--repository", str(repository), "--epochs", "8"]) == 0
    assert (repository / "ticket_urgency" / "task.json").read_bytes() == task_file.read_bytes()  # kept beside its versions
    assert (repository / "ticket_urgency" / "1" / "model.safetensors").is_file()
    broken = repository / "broken_task"
    broken.mkdir()
    (broken / "task.json").write_text('{"name": "broken_task", "labels": []}')
    capsys.readouterr()
    version = repository / "ticket_urgency" / "1"
    report = tmp_path / "report"
    assert main(["eval", "--task-file", str(task_file), "--data", str(data / "val.jsonl"), "--report", str(report), "--weights", str(version)]) == 0
    assert json.loads((tmp_path / "report" / "report.json").read_text())["items"] == 20

    handle = mesh.start_router(model_repository=str(repository), repository_poll_s=0)
    try:
        with connect(handle.address) as channel:
            router = router_pb2_grpc.RouterStub(channel)
            tasks = {t.name: t for t in router.ListTasks(router_pb2.ListTasksRequest(), timeout=10).tasks}
            assert list(tasks["ticket_urgency"].labels) == ["urgent", "routine"] and tasks["ticket_urgency"].versions[0].state == "ready"
            assert "broken_task" in tasks and "description: required" in tasks["broken_task"].problem
            assert not tasks["screenshot_triage"].versions and not tasks["screenshot_triage"].model_version  # nothing of it in this repository
            answer = router.Analyze(router_pb2.AnalyzeRequest(task="ticket_urgency", text="hi team, the whole site is down"), timeout=60)
            assert answer.task_version == 1 and answer.label == "urgent" and not answer.abstained  # a wording it was trained on
            findings = {f.key: f.value for f in answer.findings}
            assert re.fullmatch(r"Urgency: urgent \([01]\.\d\d\), priority high\. Page the on-call engineer\.", answer.description), answer.description
            assert findings["priority"] == "high" and findings["reply"] == "We are on it right now."
            with pytest.raises(grpc.RpcError) as refused:
                router.Analyze(router_pb2.AnalyzeRequest(task="broken_task", text="x"), timeout=30)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "task file does not load" in refused.value.details()

            # A changed task file is read again (on the next poll, or on an OIP load as here)
            # and serves without a restart; one the weights do not fit is refused and said.
            oip = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            served = repository / "ticket_urgency" / "task.json"
            edited = json.loads(served.read_text())
            edited["labels"]["urgent"]["reply"] = "Paging the on-call engineer now."
            time.sleep(0.01)  # a later file time
            served.write_text(json.dumps(edited))
            oip.RepositoryModelLoad(inference_pb2.RepositoryModelLoadRequest(model_name="ticket_urgency"), timeout=30)
            answer = router.Analyze(router_pb2.AnalyzeRequest(task="ticket_urgency", text="hi team, the whole site is down"), timeout=60)
            assert {f.key: f.value for f in answer.findings}["reply"] == "Paging the on-call engineer now." and answer.task_version == 1
            edited["labels"] = {"urgent": edited["labels"]["urgent"], "later": edited["labels"]["routine"]}  # the weights know "routine"
            time.sleep(0.01)
            served.write_text(json.dumps(edited))
            oip.RepositoryModelLoad(inference_pb2.RepositoryModelLoadRequest(model_name="ticket_urgency"), timeout=30)
            info = {t.name: t for t in router.ListTasks(router_pb2.ListTasksRequest(), timeout=10).tasks}["ticket_urgency"]
            assert "not applied" in info.problem and "version 1 does not load under it" in info.problem and "labels" in info.problem, info.problem
            assert list(info.labels) == ["urgent", "routine"] and info.versions[0].state == "ready"  # serving as before
            answer = router.Analyze(router_pb2.AnalyzeRequest(task="ticket_urgency", text="hi team, the whole site is down"), timeout=60)
            assert {f.key: f.value for f in answer.findings}["reply"] == "Paging the on-call engineer now."
    finally:
        handle.stop(grace=0.5)


@pytest.mark.slow
def test_the_quality_control_task_trains_serves_and_swaps_versions_under_requests(mesh, tmp_path):
    """qc_line comes as a user's task does (a task file and data), and its second version
    replaces the first while requests run, none failing."""
    import threading
    import time

    from modalmesh.data.generate import generate

    data = tmp_path / "qc"
    generate("qc_line", data, n=12, seed=4)
    repository = tmp_path / "models"
    train = ["train", "--task-file", str(data / "task.json"), "--data", str(data / "train.jsonl"), "--repository", str(repository), "--epochs", "2"]
    assert main(train) == 0
    config = json.loads((repository / "qc_line" / "1" / "config.json").read_text())
    assert isinstance(config["dissent_precision"], dict)  # measured on validation, read by tasks.decide
    handle = mesh.start_router(model_repository=str(repository), repository_poll_s=0.2)
    record = json.loads((data / "test.jsonl").read_text().splitlines()[0])
    request = router_pb2.AnalyzeRequest(
        task="qc_line",
        image=router_pb2.MediaInput(data=(data / record["image"]).read_bytes()),
        audio=router_pb2.MediaInput(data=(data / record["audio"]).read_bytes()),
    )
    try:
        with connect(handle.address) as channel:
            router = router_pb2_grpc.RouterStub(channel)
            first = router.Analyze(request, timeout=60)
            assert first.task_version == 1 and first.label in ("ok", "surface_defect", "bearing_noise", "both", "uncertain")
            used = {router_pb2.Modality.Name(r.modality): router_pb2.ModalityStatus.Name(r.status) for r in first.explanation.modalities}
            assert used["MODALITY_IMAGE"] == "MODALITY_STATUS_USED" and used["MODALITY_AUDIO"] == "MODALITY_STATUS_USED"
            versions, failures, stop = [], [], threading.Event()

            def keep_asking():
                while not stop.is_set() and len(versions) < 300:
                    try:
                        versions.append(router.Analyze(request, timeout=60).task_version)
                    except grpc.RpcError as exc:
                        failures.append(f"{exc.code().name}: {exc.details()}")

            caller = threading.Thread(target=keep_asking)
            caller.start()
            try:
                assert main(train + ["--seed", "1"]) == 0  # the second version, trained while the first serves
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and 2 not in versions:
                    time.sleep(0.1)
            finally:
                stop.set()
                caller.join(60)
            assert failures == [] and versions[-1] == 2
    finally:
        handle.stop(grace=0.5)


def test_the_quality_control_held_out_set_is_other_parts_and_machines_and_out_of_scope_inputs(tmp_path):
    from PIL import Image

    from modalmesh.data.heldout import heldout
    from modalmesh.data.qc import PHOTO_SIZE

    path = heldout("qc_line", tmp_path, n=4, seed=2)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    inside = [r for r in records if r["scope"] == "in"]
    assert len(inside) == 4 and all(r["label"] in ("ok", "surface_defect", "bearing_noise", "both") for r in inside)
    assert all(Image.open(tmp_path / r["image"]).size != PHOTO_SIZE for r in inside)  # not the training photos' size
    outside = [r for r in records if r["scope"] == "out"]
    assert outside and all(r["label"] is None and (tmp_path / r["audio"]).is_file() for r in outside)
