"""The router's Python client (sync and asyncio) and `modalmesh analyze`."""

import asyncio
import json

import pytest

from modalmesh.cli import main
from modalmesh.client import AsyncRouterClient, RouterClient
from tests.media import image_bytes, render_screenshot

JSON_KEYS = {"task", "label", "confidence", "uncertainty", "top_k", "description", "findings", "gate", "modalities", "timings_ms", "model_version"}


def test_sync_client(mesh):
    with RouterClient(mesh.router.address) as client:
        assert {t.name for t in client.list_tasks()} == {"screenshot_triage", "medical_report"}
        answer = client.analyze("screenshot_triage", text="I never got my parcel", speech=True)
    assert JSON_KEYS <= set(answer)
    assert answer["modalities"]["text"]["status"] == "used" and answer["modalities"]["image"]["status"] == "absent"
    assert answer["gate"]["text"] == pytest.approx(1.0)
    assert answer["speech_wav"].startswith(b"RIFF")


def test_async_client(mesh):
    async def ask():
        async with AsyncRouterClient(mesh.router.address) as client:
            return await asyncio.gather(*(client.analyze("screenshot_triage", text=t) for t in ("refund please", "app crashed")))

    answers = asyncio.run(ask())
    assert len(answers) == 2 and all(a["label"] for a in answers)


def test_analyze_command_json_and_speech(mesh, tmp_path, capsys):
    screenshot = tmp_path / "screen.png"
    screenshot.write_bytes(image_bytes(render_screenshot("Login failed: wrong password")))
    reply = tmp_path / "reply.wav"
    code = main(
        [
            "analyze",
            "--task",
            "screenshot_triage",
            "--text",
            "I cannot sign in",
            "--image",
            str(screenshot),
            "--mode",
            "full",
            "--speech-out",
            str(reply),
            "--json",
            "--router",
            mesh.router.address,
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert JSON_KEYS <= set(printed)
    assert "Login failed" in printed["findings"]["error_text"]
    assert sum(printed["gate"].values()) == pytest.approx(1.0, abs=1e-4)
    assert reply.read_bytes().startswith(b"RIFF")


def test_analyze_command_readable_output_and_errors(mesh, capsys):
    assert main(["analyze", "--task", "screenshot_triage", "--text", "help", "--router", mesh.router.address]) == 0
    out = capsys.readouterr().out
    assert "screenshot_triage:" in out and "priority:" in out and "text  used" in out
    assert main(["analyze", "--task", "nope", "--text", "help", "--router", mesh.router.address]) == 1
    assert "INVALID_ARGUMENT: task: unknown task 'nope'" in capsys.readouterr().err


def test_tasks_command_lists_labels_versions_and_routing(mesh, capsys):
    assert main(["tasks", "--router", mesh.router.address]) == 0
    out = capsys.readouterr().out
    assert "screenshot_triage (screenshot_triage@" in out and "medical_report (medical_report@" in out
    assert "labels: payment, login, crash, shipping, refund, other; inputs: text+image+audio" in out
    assert "side outputs with the features: image" in out and "side outputs with the features: none" in out
    assert out.count("text model: all-MiniLM-L6-v2@") == 2
    assert main(["tasks", "--router", "127.0.0.1:1", "--timeout", "2"]) == 1
    assert "modalmesh tasks: UNAVAILABLE" in capsys.readouterr().err
