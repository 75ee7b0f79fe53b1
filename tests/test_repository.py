"""A model repository (router/repository.py): numbered task versions, loaded while the
router serves, on a real router and real encoders on 127.0.0.1."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time

import grpc
import pytest

from modalmesh.common.client import connect
from modalmesh.router.repository import Repository, staged_version, versions_in
from modalmesh.router.tasks import SHIPPED_WEIGHTS, TASKS
from modalmesh.v1 import inference_pb2, inference_pb2_grpc, router_pb2, router_pb2_grpc

TRIAGE = "screenshot_triage"


def copy_weights(task: str, folder) -> None:
    shutil.copytree(SHIPPED_WEIGHTS / task, folder, dirs_exist_ok=True)


def publish(repository, task: str) -> int:
    published: list = []
    with staged_version(repository / task, published) as staging:
        copy_weights(task, staging)
    return int(published[0].name)


def test_versions_are_numbered_in_order_and_a_failed_training_leaves_none(tmp_path):
    assert publish(tmp_path, TRIAGE) == 1 and publish(tmp_path, TRIAGE) == 2
    with pytest.raises(RuntimeError):
        with staged_version(tmp_path / TRIAGE, []) as staging:
            (staging / "config.json").write_text("{}")
            raise RuntimeError("training stopped")
    assert versions_in(tmp_path / TRIAGE) == [1, 2]
    assert sorted(p.name for p in (tmp_path / TRIAGE).iterdir()) == ["1", "2"]  # no partial folder left


def test_a_broken_version_is_reported_and_the_one_before_keeps_serving_until_it_is_fixed(tmp_path):
    publish(tmp_path, TRIAGE)
    broken = tmp_path / TRIAGE / "2"
    broken.mkdir()
    (broken / "config.json").write_text((SHIPPED_WEIGHTS / TRIAGE / "config.json").read_text())
    repository = Repository(tmp_path, {TRIAGE: TASKS[TRIAGE], "medical_report": TASKS["medical_report"]})
    repository.poll()
    states = {s.version: s for s in repository.states(TRIAGE)}
    assert states[1].state == "ready" and states[2].state == "failed"
    assert "missing model.safetensors" in states[2].reason and str(broken) in states[2].reason
    assert repository[TRIAGE].repository_version == 1 and list(repository) == [TRIAGE]
    assert "medical_report has no ready version" in repository.why_not("medical_report")
    assert "version 2 is not ready (failed: " in repository.why_not(f"{TRIAGE}@2") and "ready: 1" in repository.why_not(f"{TRIAGE}@2")
    time.sleep(0.01)  # a later file time
    copy_weights(TRIAGE, broken)  # fixed: tried again
    repository.poll()
    assert repository[TRIAGE].repository_version == 2 and repository[f"{TRIAGE}@1"].repository_version == 1
    repository.unload(TRIAGE, 2)
    assert repository[TRIAGE].repository_version == 1 and f"{TRIAGE}@2" not in repository
    repository.poll()  # unloaded stays unloaded
    assert repository[TRIAGE].repository_version == 1


def test_a_changed_task_file_is_applied_on_the_next_poll_or_refused_and_said(tmp_path):
    """A task of one's own (here the shipped triage weights under a task file of the same
    labels): an edited task.json serves at the next poll, requests in flight keep theirs;
    one the weights do not fit, or that does not parse, is not applied and `refused` says why."""
    import json

    labels = TASKS[TRIAGE].labels
    document = {
        "name": "helpdesk",
        "description": "first wording",
        "labels": {label: {"priority": "normal", "next_steps": "Look into it.", "reply": "Thanks."} for label in labels},
        "modalities": ["text", "image"],
    }
    task_file = tmp_path / "helpdesk" / "task.json"
    task_file.parent.mkdir()
    task_file.write_text(json.dumps(document))
    copy_weights(TRIAGE, tmp_path / "helpdesk" / "1")
    repository = Repository(tmp_path, {})
    repository.poll()
    held = repository["helpdesk"]
    assert held.spec.description == "first wording" and not repository.refused

    def rewrite(changed: str) -> None:
        time.sleep(0.01)  # a later file time
        task_file.write_text(changed)
        repository.poll()

    rewrite(json.dumps({**document, "description": "second wording"}))
    assert repository["helpdesk"].spec.description == "second wording" and held.spec.description == "first wording"
    assert repository["helpdesk"] is not held and not repository.refused
    rewrite(json.dumps({**document, "labels": {"yes": document["labels"][labels[0]], "no": document["labels"][labels[1]]}}))
    assert "version 1 does not load under it" in repository.refused["helpdesk"] and "labels" in repository.refused["helpdesk"]
    assert repository["helpdesk"].spec.description == "second wording"  # serving as before
    rewrite('{"name": "helpdesk",')
    assert "not valid JSON" in repository.refused["helpdesk"] and repository["helpdesk"].spec.description == "second wording"
    rewrite(json.dumps({**document, "description": "third wording"}))
    assert repository["helpdesk"].spec.description == "third wording" and not repository.refused


def test_a_pinned_version_serves_even_when_a_newer_one_is_ready(tmp_path):
    publish(tmp_path, TRIAGE)
    publish(tmp_path, TRIAGE)
    repository = Repository(tmp_path, {TRIAGE: TASKS[TRIAGE]}, pins={TRIAGE: 1})
    repository.poll()
    assert repository[TRIAGE].repository_version == 1 and repository[f"{TRIAGE}@2"].repository_version == 2


@pytest.mark.slow
def test_a_new_version_is_served_without_a_restart_while_requests_run(mesh, tmp_path, capsys):
    publish(tmp_path, TRIAGE)
    broken = tmp_path / "medical_report" / "1"
    copy_weights("medical_report", broken)
    (broken / "config.json").write_text("{ not json")
    handle = mesh.start_router(model_repository=str(tmp_path), repository_poll_s=0.2)
    try:
        with connect(handle.address) as channel:
            router = router_pb2_grpc.RouterStub(channel)

            def tasks():
                return {t.name: t for t in router.ListTasks(router_pb2.ListTasksRequest(), timeout=10).tasks}

            listed = tasks()
            assert [(v.version, v.state, v.serving) for v in listed[TRIAGE].versions] == [(1, "ready", True)]
            assert listed[TRIAGE].model_version and listed[TRIAGE].labels
            medical = listed["medical_report"]
            assert [(v.version, v.state) for v in medical.versions] == [(1, "failed")] and "config.json: not valid JSON" in medical.versions[0].reason
            assert not medical.model_version  # nothing serving, and it says why
            with pytest.raises(grpc.RpcError) as refused:
                router.Analyze(router_pb2.AnalyzeRequest(task="medical_report", text="smoker, 61"), timeout=30)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no ready version" in refused.value.details()

            request = router_pb2.AnalyzeRequest(task=TRIAGE, text="My card was declined at checkout.")
            assert router.Analyze(request, timeout=30).task_version == 1
            answered: list[int] = []
            failures: list[str] = []
            stop = threading.Event()

            def keep_asking():
                while not stop.is_set() and len(answered) + len(failures) < 400:
                    try:
                        answered.append(router.Analyze(request, timeout=30).task_version)
                    except grpc.RpcError as exc:
                        failures.append(f"{exc.code().name}: {exc.details()}")

            callers = [threading.Thread(target=keep_asking) for _ in range(2)]
            for caller in callers:
                caller.start()
            try:
                time.sleep(0.3)
                assert publish(tmp_path, TRIAGE) == 2
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and 2 not in answered:
                    time.sleep(0.1)
            finally:
                stop.set()
                for caller in callers:
                    caller.join(60)
            assert failures == []
            assert 1 in answered and answered[-1] == 2  # the swap happened under load, and stuck
            assert [(v.version, v.serving) for v in tasks()[TRIAGE].versions] == [(1, False), (2, True)]
            assert router.Analyze(router_pb2.AnalyzeRequest(task=f"{TRIAGE}@1", text="login fails"), timeout=30).task_version == 1
            with pytest.raises(grpc.RpcError) as missing:
                router.Analyze(router_pb2.AnalyzeRequest(task=f"{TRIAGE}@7", text="login fails"), timeout=30)
            assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "ready: 1, 2" in missing.value.details()

            oip = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert oip.ModelReady(inference_pb2.ModelReadyRequest(name=TRIAGE, version="1"), timeout=10).ready
            assert not oip.ModelReady(inference_pb2.ModelReadyRequest(name=TRIAGE, version="7"), timeout=10).ready
            assert list(oip.ModelMetadata(inference_pb2.ModelMetadataRequest(name=TRIAGE), timeout=10).versions) == ["1", "2"]
            ready = oip.RepositoryIndex(inference_pb2.RepositoryIndexRequest(ready=True), timeout=10).models
            assert [(m.name, m.version, m.state) for m in ready] == [(TRIAGE, "1", "READY"), (TRIAGE, "2", "READY")]

            from modalmesh.cli import main

            assert main(["tasks", "--router", handle.address]) == 0
            printed = capsys.readouterr().out
            assert "version 1: ready screenshot_triage@" in printed and "version 2: ready (serving)" in printed
            assert "version 1: failed (" in printed  # medical_report's broken version, with its reason
    finally:
        handle.stop(grace=0.5)


def test_weights_that_do_not_load_say_which_file_and_why(tmp_path):
    truncated, other_task = tmp_path / TRIAGE / "1", tmp_path / TRIAGE / "2"
    copy_weights(TRIAGE, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    copy_weights("medical_report", other_task)  # another task's weights: other labels
    repository = Repository(tmp_path, {TRIAGE: TASKS[TRIAGE]})
    repository.poll()
    reasons = {s.version: s.reason for s in repository.states(TRIAGE)}
    assert "model.safetensors: not a readable safetensors file" in reasons[1]
    assert "labels ('normal', 'nodule', 'mass') do not match task screenshot_triage" in reasons[2]
    assert TRIAGE not in repository


TRITON_REPOSITORY = r"""
import sys
import tritonclient.grpc as triton

client = triton.InferenceServerClient(sys.argv[1])
assert "model_repository" in client.get_server_metadata().extensions
index = {(m.name, m.version): (m.state, m.reason) for m in client.get_model_repository_index().models}
assert index[("screenshot_triage", "1")] == ("READY", ""), index
assert index[("medical_report", "1")][0] == "UNAVAILABLE" and "config.json" in index[("medical_report", "1")][1], index
client.unload_model("screenshot_triage")
assert not client.is_model_ready("screenshot_triage")
assert {m.state for m in client.get_model_repository_index().models} == {"UNAVAILABLE"}
client.load_model("screenshot_triage")
assert client.is_model_ready("screenshot_triage") and client.is_model_ready("screenshot_triage", "1")
try:
    client.load_model("medical_report")
except triton.InferenceServerException as exc:
    assert "FAILED_PRECONDITION" in str(exc.status()) and "not valid JSON" in exc.message(), exc
else:
    raise AssertionError("a version that cannot load was reported loaded")
try:
    client.load_model("screenshot_triage", config="{}")
except triton.InferenceServerException as exc:
    assert "INVALID_ARGUMENT" in str(exc.status()), exc
else:
    raise AssertionError("a configuration sent with the request was accepted")
print("ok")
"""


@pytest.mark.slow
def test_tritonclient_lists_loads_and_unloads_task_versions(mesh, tmp_path):
    """The unmodified tritonclient's repository calls, in its own process (its generated
    code and ours both define package `inference`)."""
    publish(tmp_path, TRIAGE)
    broken = tmp_path / "medical_report" / "1"
    copy_weights("medical_report", broken)
    (broken / "config.json").write_text("{ not json")
    handle = mesh.start_router(model_repository=str(tmp_path), repository_poll_s=0)
    try:
        result = subprocess.run([sys.executable, "-c", TRITON_REPOSITORY, handle.address], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip() == "ok"
        with connect(handle.address) as channel:  # unloaded and loaded again: it answers
            answer = router_pb2_grpc.RouterStub(channel).Analyze(router_pb2.AnalyzeRequest(task=TRIAGE, text="login fails"), timeout=30)
        assert answer.task_version == 1
    finally:
        handle.stop(grace=0.5)
