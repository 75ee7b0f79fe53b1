"""The router over HTTP (router/http.py): OIP v2 REST, Analyze as JSON, multipart and
Server-Sent Events, with the real curl and the unmodified tritonclient.http against a
real router and encoders on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys

import pytest

from modalmesh.up import free_port
from tests.media import image_bytes, render_screenshot

SCREENSHOT = image_bytes(render_screenshot("Error 402: Payment declined"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("curl") is None, reason="the real curl is the HTTP client of these tests: install curl"),
]


@pytest.fixture(scope="module")
def gateway(mesh):
    """A router with its HTTP port (the session's router has none)."""
    port = free_port()
    handle = mesh.start_router(http_port=port, auth_token="s3cret")
    yield f"http://127.0.0.1:{port}"
    handle.stop(grace=0.5)


def curl(*args: str, token: str = "s3cret") -> tuple[int, str]:
    """(HTTP status, body) from the real curl."""
    auth = ["-H", f"Authorization: Bearer {token}"] if token else []
    result = subprocess.run(["curl", "-s", "-o", "-", "-w", "\n%{http_code}", *auth, *args], capture_output=True, text=True, timeout=120)
    body, _, status = result.stdout.rpartition("\n")
    return int(status), body


def test_health_and_the_api_description(gateway):
    assert curl(f"{gateway}/v2/health/live", token="") == (200, '{"live":true}')  # health needs no token
    status, body = curl(f"{gateway}/v2/health/ready", token="")
    assert status == 200 and json.loads(body) == {"ready": True}
    status, body = curl(f"{gateway}/openapi.json")
    assert status == 200 and {"/v1/analyze", "/v2/models/{task}/infer"} <= set(json.loads(body)["paths"])


def test_analyze_as_json_and_as_an_upload(gateway, tmp_path):
    request = {"task": "screenshot_triage", "text": "my card was declined", "image": {"data": base64.b64encode(SCREENSHOT).decode()}}
    status, body = curl("-X", "POST", f"{gateway}/v1/analyze", "-H", "Content-Type: application/json", "-d", json.dumps(request))
    assert status == 200, body
    answer = json.loads(body)
    assert answer["task"] == "screenshot_triage" and answer["label"] in ("payment", "uncertain") and answer["explanation"]["modalities"]
    screenshot = tmp_path / "screen.png"
    screenshot.write_bytes(SCREENSHOT)
    form = ["-F", "task=screenshot_triage", "-F", "text=my card was declined", "-F", f"image=@{screenshot}"]
    status, body = curl("-X", "POST", f"{gateway}/v1/analyze/upload", *form)
    assert status == 200, body
    uploaded = json.loads(body)
    assert uploaded["label"] == answer["label"] and uploaded["confidence"] == pytest.approx(answer["confidence"], abs=1e-4)


def test_errors_keep_their_meaning_over_http(gateway):
    status, body = curl("-X", "POST", f"{gateway}/v1/analyze", "-d", json.dumps({"task": "no_such_task", "text": "hi"}))
    problem = json.loads(body)
    assert status == 400 and problem["code"] == "INVALID_ARGUMENT" and problem["field_violations"][0]["field"] == "task"
    status, body = curl("-X", "POST", f"{gateway}/v1/analyze", "-d", "{not json")
    assert status == 400 and json.loads(body)["field_violations"][0]["field"] == "body"
    status, body = curl("-X", "POST", f"{gateway}/v1/analyze", "-d", json.dumps({"task": "screenshot_triage", "colour": "red"}))
    assert status == 400 and "colour" in json.loads(body)["error"]
    status, body = curl("-X", "POST", f"{gateway}/v1/analyze", "-d", json.dumps({"task": "screenshot_triage", "text": "hi"}), token="wrong")
    assert status == 401 and json.loads(body)["code"] == "UNAUTHENTICATED"
    status, body = curl(f"{gateway}/v2/models/no_such_task")
    assert status == 404 and json.loads(body)["code"] == "NOT_FOUND"
    assert curl(f"{gateway}/v2/health/ready", token="")[0] == 200  # still healthy after all of that


def test_hostile_bodies_are_refused_in_the_error_shape_and_the_gateway_stays_up(gateway, tmp_path):
    """JSON nested deeper than the parser goes, form fields missing, of the wrong type or
    out of range, a body that is not multipart, an unknown path: 4xx with the documented
    body ({"error", "code", "field_violations"}), naming the field, never a 500."""
    nested = tmp_path / "nested.json"
    nested.write_bytes(b"[" * 100_000)
    for path in ("/v1/analyze", "/v1/analyze/stream", "/v2/models/screenshot_triage/infer"):
        status, body = curl("-X", "POST", f"{gateway}{path}", "--data-binary", f"@{nested}")
        assert status == 400 and json.loads(body)["field_violations"] == [{"field": "body", "description": "the JSON nests too deeply"}], (path, body)
    form = ["-X", "POST", f"{gateway}/v1/analyze/upload"]
    for fields, field, said in (
        (["-F", "text=hi"], "task", "Field required"),
        (["-F", "task=screenshot_triage", "-F", "deadline_ms=soon"], "deadline_ms", "valid integer"),
        (["-F", "task=screenshot_triage", "-F", "deadline_ms=99999999999999999999"], "deadline_ms", "milliseconds"),
        (["-F", "task=screenshot_triage", "-F", "image=not a file"], "image", "send it as a file part"),
    ):
        status, body = curl(*form, *fields)
        problem = json.loads(body)
        assert status == 400 and problem["code"] == "INVALID_ARGUMENT", body
        assert problem["field_violations"][0]["field"] == field and said in problem["field_violations"][0]["description"], body
        assert "<class" not in body and "UploadFile" not in body
    status, body = curl(*form, "-H", "Content-Type: multipart/form-data; boundary=b", "--data-binary", "no parts here")
    assert status == 400 and json.loads(body)["code"] == "INVALID_ARGUMENT", body
    status, body = curl(f"{gateway}/v3/nothing")
    assert status == 404 and json.loads(body)["code"] == "NOT_FOUND"
    assert curl(f"{gateway}/v2/health/ready", token="")[0] == 200


def test_analyze_stream_sends_server_sent_events(gateway):
    request = {"task": "screenshot_triage", "text": "my parcel never arrived"}
    status, body = curl("-N", "-X", "POST", f"{gateway}/v1/analyze/stream", "-d", json.dumps(request))
    assert status == 200
    events = [block.split("\n") for block in body.strip().split("\n\n")]
    kinds = [lines[0].removeprefix("event: ") for lines in events]
    assert kinds[0] == "gate" and "diagnosis" in kinds and kinds[-1] == "final"
    final = json.loads(events[-1][1].removeprefix("data: "))
    assert final["task"] == "screenshot_triage" and final["label"]


TRITON_HTTP = r"""
import sys
import numpy as np
import tritonclient.http as triton

client = triton.InferenceServerClient(sys.argv[1].removeprefix("http://"))
headers = {"Authorization": "Bearer s3cret"}
assert client.is_server_live() and client.is_server_ready()
assert client.is_model_ready("screenshot_triage", headers=headers)
metadata = client.get_model_metadata("screenshot_triage", headers=headers)
assert [i["name"] for i in metadata["inputs"]] == ["TEXT", "IMAGE", "AUDIO"], metadata
text = triton.InferInput("TEXT", [1], "BYTES")
text.set_data_from_numpy(np.array([b"My card was declined"], dtype=np.object_))
image = triton.InferInput("IMAGE", [1], "BYTES")
image.set_data_from_numpy(np.array([open(sys.argv[2], "rb").read()], dtype=np.object_))
for binary in (True, False):
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("LABEL", "PROBS", "GATE", "CONFIDENCE")]
    result = client.infer("screenshot_triage", [text, image], outputs=outputs, headers=headers)
    label = result.as_numpy("LABEL")[0]
    label = label.decode() if isinstance(label, bytes) else label
    probs = result.as_numpy("PROBS")
    assert label in ("payment", "uncertain"), label
    assert probs.shape == (6,) and abs(float(probs.sum()) - 1) < 1e-4
    assert abs(float(result.as_numpy("CONFIDENCE")[0]) - float(probs.max())) < 1e-5
try:
    client.infer("screenshot_triage", [text], headers={"Authorization": "Bearer wrong"})
except triton.InferenceServerException as exc:
    assert "401" in str(exc.status()) or "token" in exc.message(), exc
else:
    raise AssertionError("a wrong token was accepted")
print("ok", label)
"""


def test_tritonclient_http_works_unmodified(gateway, tmp_path):
    screenshot = tmp_path / "screen.png"
    screenshot.write_bytes(SCREENSHOT)
    result = subprocess.run([sys.executable, "-c", TRITON_HTTP, gateway, str(screenshot)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ok ")


def test_the_web_console_is_served_and_its_script_parses(gateway):
    """The console at /: plain HTML and JavaScript that ask /v1/tasks and stream
    /v1/analyze/stream. Its script is parsed by Node (which `make test` has, for buf)."""
    status, page = curl(f"{gateway}/", token="")
    assert status == 200 and '<form id="ask">' in page and 'fetch("v1/analyze/stream"' in page and 'fetch("v1/tasks"' in page
    script = page.split("<script>")[1].split("</script>")[0]
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the script's syntax is not checked")
    checked = subprocess.run([node, "-e", "new Function(require('fs').readFileSync(0, 'utf8'))"], input=script, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr


def test_https_with_client_certificates_as_on_the_grpc_port(mesh, tmp_path):
    """With TLS and mTLS on the router, its HTTP port is HTTPS and asks for a client
    certificate too; the HTTP server reaches the gRPC port with the router's own client
    identity (encoder_cert). Health, ListTasks and OIP metadata go through that hop."""
    from modalmesh.common.security import make_dev_certificates

    certs = tmp_path / "certs"
    make_dev_certificates(certs)
    port = free_port()
    handle = mesh.start_router(
        http_port=port,
        tls_cert=str(certs / "router.pem"),
        tls_key=str(certs / "router-key.pem"),
        tls_client_ca=str(certs / "ca.pem"),
        encoder_ca=str(certs / "ca.pem"),
        encoder_cert=str(certs / "client.pem"),
        encoder_key=str(certs / "client-key.pem"),
    )
    try:
        identity = ["--cacert", str(certs / "ca.pem"), "--cert", str(certs / "client.pem"), "--key", str(certs / "client-key.pem")]
        base = f"https://127.0.0.1:{port}"
        assert curl(*identity, f"{base}/v2/health/ready", token="") == (200, '{"ready":true}')
        status, body = curl(*identity, f"{base}/v1/tasks", token="")
        assert status == 200 and {t["name"] for t in json.loads(body)["tasks"]} >= {"screenshot_triage", "medical_report"}
        status, body = curl(*identity, f"{base}/v2/models/medical_report", token="")
        assert status == 200 and json.loads(body)["name"] == "medical_report"
        refused = subprocess.run(["curl", "-s", "--cacert", str(certs / "ca.pem"), f"{base}/v2/health/ready"], capture_output=True, timeout=60)
        assert refused.returncode != 0  # no client certificate: the handshake fails
        plain = subprocess.run(["curl", "-s", f"http://127.0.0.1:{port}/v2/health/ready"], capture_output=True, timeout=60)
        assert b'"ready":true' not in plain.stdout  # never answered in plaintext
    finally:
        handle.stop(grace=0.5)
