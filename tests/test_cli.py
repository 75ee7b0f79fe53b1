"""The command line: serve (as a real process), encode --json, certs."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from modalmesh.cli import main
from modalmesh.common.client import EncoderClient, connect, wait_for_serving
from modalmesh.up import free_port


def test_encode_text_json_prints_shapes_datatypes_and_the_vector(text_service, capsys):
    assert main(["encode", "text", "where is my parcel", "--json", "--target", text_service.address]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["sequence"]["datatype"] == "FP16" and printed["sequence"]["shape"][1] == 32
    assert printed["pooled"]["shape"] == [32] and len(printed["pooled"]["values"]) == 32
    assert printed["truncated"] is False
    assert printed["model_version"].startswith("tiny-bert")


def test_encode_reports_the_servers_complaint(text_service, capsys):
    assert main(["encode", "text", "   ", "--target", text_service.address]) == 1
    assert "INVALID_ARGUMENT: payload: the text is only whitespace" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [
        ["--help"],
        ["serve", "router", "--help"],
        ["serve", "text", "--help"],
        ["serve", "vision", "--help"],
        ["serve", "audio", "--help"],
        ["encode", "--help"],
        ["say", "--help"],
        ["analyze", "--help"],
        ["tasks", "--help"],
        ["data", "generate", "--help"],
        ["data", "lm", "--help"],
        ["train", "--help"],
        ["eval", "--help"],
        ["health", "--help"],
        ["certs", "--help"],
        ["demo", "--help"],
        ["up", "--help"],
        ["down", "--help"],
    ],
)
def test_every_command_prints_its_help(command, capsys):
    """`serve vision --help` once crashed: argparse %-formats help texts, and one said "40% faster"."""
    with pytest.raises(SystemExit) as exited:
        main(command)
    assert exited.value.code == 0
    assert "usage: " in capsys.readouterr().out


@pytest.mark.parametrize(
    "value, message",
    [
        ("voice=4", "argument --source-tokens: 'voice' is not one of text, image, image_text, audio, audio_text"),
        ("audio=many", "argument --source-tokens: audio: 'many' is not a number of tokens"),
        ("audio=0", "argument --source-tokens: audio: must be at least 1 token, not 0"),
    ],
)
def test_bad_per_source_token_limits_are_refused(value, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["train", "--task", "screenshot_triage", "--data", "t.jsonl", "--source-tokens", value, "--out", str(tmp_path / "out")])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "command, flag",
    [
        (["data", "generate", "--task", "screenshot_triage", "--n", "0"], "--n"),
        (["train", "--task", "medical_report", "--data", "m.jsonl", "--epochs", "0"], "--epochs"),
        (["train", "--task", "medical_report", "--data", "m.jsonl", "--members", "-1"], "--members"),
        (["train", "--task", "medical_report", "--data", "m.jsonl", "--width", "0"], "--width"),
        (["train", "--task", "medical_report", "--data", "m.jsonl", "--max-tokens", "0"], "--max-tokens"),
        (["certs", "--days", "0"], "--days"),
    ],
)
def test_counts_below_their_minimum_are_refused(command, flag, tmp_path, capsys):
    """`data generate --n 0` once wrote a dataset with an empty training split."""
    with pytest.raises(SystemExit) as exited:
        main([*command, "--out", str(tmp_path / "out")])
    assert exited.value.code == 2
    assert f"argument {flag}: must be at least" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_certs_command_writes_a_ca_and_service_certificates(tmp_path, capsys):
    assert main(["certs", "--out", str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.iterdir()} >= {"ca.pem", "text.pem", "text-key.pem", "client.pem"}
    # Run again, it keeps the CA: replacing it would untrust every certificate it had
    # issued (in a cluster's secrets, say).
    ca = (tmp_path / "ca.pem").read_bytes()
    capsys.readouterr()
    assert main(["certs", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "already holds ca.pem, ca-key.pem" in err and "--replace" in err and (tmp_path / "ca.pem").read_bytes() == ca
    assert main(["certs", "--out", str(tmp_path), "--replace"]) == 0
    assert (tmp_path / "ca.pem").read_bytes() != ca and (tmp_path / "ca-key.pem").stat().st_mode & 0o077 == 0


def test_serve_runs_as_a_process_and_drains_on_sigterm(tiny_bert_dir):
    port = free_port()
    env = {**os.environ, "MODALMESH_TEXT_MODEL": str(tiny_bert_dir), "MODALMESH_LOG_LEVEL": "INFO"}
    process = subprocess.Popen(
        [sys.executable, "-m", "modalmesh.cli", "serve", "text", "--port", str(port), "--metrics-port", "0", "--grace-seconds", "2"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with connect(f"127.0.0.1:{port}") as channel:
            wait_for_serving(channel, timeout=60)
            assert EncoderClient(channel).encode_text("hello from another process").pooled.shape == (32,)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        log = process.stderr.read()
        assert "configuration {" in log and '"auth_token": ""' in log
        assert "received SIGTERM" in log and "stopped" in log
    finally:
        if process.poll() is None:
            process.kill()


def test_serve_refuses_a_bad_configuration(capsys):
    assert main(["serve", "text", "--trace-exporter", "jaeger"]) == 2
    assert "trace_exporter must be none, console or otlp" in capsys.readouterr().err


def test_serve_with_a_missing_model_directory_fails_with_the_reason(tmp_path):
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "modalmesh.cli", "serve", "text", "--port", str(port), "--metrics-port", "0", "--model", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "not a local directory and downloads are off" in result.stderr


def test_demo_runs_both_tasks_through_four_processes(tmp_path):
    result = subprocess.run([sys.executable, "-m", "modalmesh.cli", "demo", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "mesh healthy after" in out
    assert "=== screenshot triage" in out and "error_text: Error 402: Payment declined" in out
    assert "=== medical report" in out and "not for clinical use" in out
    assert (tmp_path / "triage_reply.wav").read_bytes().startswith(b"RIFF")
    assert (tmp_path / "report_reply.wav").read_bytes().startswith(b"RIFF")
    assert "mesh stopped: router exit 0, audio exit 0, vision exit 0, text exit 0" in out


def _up_command(ports):
    command = [sys.executable, "-m", "modalmesh.cli", "up"]
    for name, port in ports.items():
        command += [f"--{name}-port", str(port)]
    return command


def test_up_starts_the_mesh_and_stops_it_on_sigterm():
    from modalmesh.client import RouterClient

    ports = {name: free_port() for name in ("router", "text", "vision", "audio")}
    process = subprocess.Popen(_up_command(ports), stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            lines.append(line)
            if "mesh is up" in line or process.poll() is not None:
                break
        assert "mesh is up" in lines[-1], "".join(lines[-20:])
        with RouterClient(f"127.0.0.1:{ports['router']}") as client:
            assert client.analyze("screenshot_triage", text="my parcel never arrived")["label"]
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=60)[1]
        assert process.returncode == 0, rest[-2000:]
        assert "stopped: router exit 0, audio exit 0, vision exit 0, text exit 0" in rest
        assert any(line.startswith("  text |") or " text |" in line for line in lines + rest.splitlines())  # prefixed logs
    finally:
        if process.poll() is None:
            process.kill()


def test_up_refuses_ports_already_in_use():
    """Checked before anything starts: a server listening there would otherwise answer
    the health checks and the mesh would be called up while its own service had failed."""
    import socket

    ports = {name: free_port() for name in ("router", "text", "vision", "audio")}
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", ports["vision"]))
    blocker.listen()
    try:
        result = subprocess.run(_up_command(ports), capture_output=True, text=True, timeout=60)
    finally:
        blocker.close()
    assert result.returncode == 1
    assert f"127.0.0.1:{ports['vision']} already in use" in result.stderr and "starting" not in result.stderr


def test_up_names_the_service_that_failed_to_start_and_why(tmp_path):
    ports = {name: free_port() for name in ("router", "text", "vision", "audio")}
    env = {**os.environ, "MODALMESH_VISION_MODEL": str(tmp_path / "no-such-model"), "MODALMESH_STATE_DIR": str(tmp_path)}
    result = subprocess.run([*_up_command(ports), "--detach"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    # Detached, the services log to files; the reason is read back from there.
    assert "vision exited with code 1 before becoming healthy" in result.stderr
    assert "no-such-model' is not a local directory" in result.stderr
    assert (tmp_path / "logs" / "vision.log").is_file() and not (tmp_path / "up.json").exists()


def test_encode_image_with_ocr_and_audio_with_transcript_and_say(tmp_path, capsys):
    """The CLI against real vision and audio services: a screenshot file, a spoken reply
    written by `modalmesh say`, then that WAV file encoded with a transcript."""
    from modalmesh.audio.server import AudioService
    from modalmesh.common.config import load_config
    from modalmesh.common.runtime import start_server
    from modalmesh.vision.server import VisionService
    from tests.media import render_screenshot

    vision_config = load_config("vision", environ={}, port=0, metrics_port=0)
    audio_config = load_config("audio", environ={}, port=0, metrics_port=0)
    vision = start_server(vision_config, VisionService(vision_config))
    audio = start_server(audio_config, AudioService(audio_config))
    try:
        screenshot = tmp_path / "screen.png"
        render_screenshot("Error 402: Payment declined").save(screenshot)
        assert main(["encode", "image", str(screenshot), "--ocr", "--json", "--target", vision.address]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["sequence"]["shape"] == [49, 1280] and printed["tags"]["grid"] == "7x7"
        assert any("Payment declined" in span["text"] for span in printed["text_spans"])

        reply = tmp_path / "reply.wav"
        assert main(["say", "Hello, I need help with my order.", "--rate", "150", "--out", str(reply), "--target", audio.address]) == 0
        assert "wrote" in capsys.readouterr().out and reply.read_bytes().startswith(b"RIFF")
        assert main(["encode", "audio", str(reply), "--transcript", "--json", "--target", audio.address]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert "order" in printed["transcript"]["text"]
        assert float(printed["tags"]["duration_s"]) > 1.0

        assert main(["encode", "image", str(tmp_path / "missing.png"), "--target", vision.address]) == 2
        assert "cannot read" in capsys.readouterr().err
    finally:
        vision.stop(grace=0.5)
        audio.stop(grace=0.5)


def test_down_never_signals_a_pid_that_is_no_longer_the_service(tmp_path):
    """After a crash or a reboot the state file's pids can belong to other processes:
    `down` leaves them alone and `up --detach` starts."""
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        state = {
            "router": {"pid": stranger.pid, "started": "1", "address": "127.0.0.1:1"},
            "text": {"pid": stranger.pid, "address": "127.0.0.1:2"},
        }  # an older state file: no start time
        (tmp_path / "up.json").write_text(json.dumps(state))
        env = {**os.environ, "MODALMESH_STATE_DIR": str(tmp_path)}
        down = subprocess.run([sys.executable, "-m", "modalmesh.cli", "down"], env=env, capture_output=True, text=True, timeout=60)
        assert down.returncode == 0 and f"router (pid {stranger.pid}) had already stopped" in down.stderr
        assert stranger.poll() is None  # still running: not ours to stop
        assert not (tmp_path / "up.json").exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_up_detach_and_down(tmp_path):
    from modalmesh.client import RouterClient

    ports = {name: free_port() for name in ("router", "text", "vision", "audio")}
    env = {**os.environ, "MODALMESH_STATE_DIR": str(tmp_path)}
    started = subprocess.run([*_up_command(ports), "--detach"], env=env, capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stderr[-2000:]
    state = json.loads((tmp_path / "up.json").read_text())
    assert set(state) == {"router", "text", "vision", "audio"}
    try:
        with RouterClient(f"127.0.0.1:{ports['router']}") as client:
            assert client.analyze("screenshot_triage", text="refund please")["label"]
        assert "ready in" in (tmp_path / "logs" / "router.log").read_text()
        other_ports = {name: free_port() for name in ports}
        twice = subprocess.run([*_up_command(other_ports), "--detach"], env=env, capture_output=True, text=True, timeout=60)
        assert twice.returncode == 1 and "a detached mesh is running" in twice.stderr
    finally:
        stopped = subprocess.run([sys.executable, "-m", "modalmesh.cli", "down"], env=env, capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 0 and "stopped router" in stopped.stderr
    assert not (tmp_path / "up.json").exists()
    for entry in state.values():
        with pytest.raises(ProcessLookupError):
            os.kill(entry["pid"], 0)
    again = subprocess.run([sys.executable, "-m", "modalmesh.cli", "down"], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "no detached mesh" in again.stderr


def test_the_command_line_and_the_clients_do_not_load_torch():
    """`modalmesh analyze`, `tasks` and `encode` make gRPC calls: importing torch for them
    took 2-4 s per command."""
    import subprocess
    import sys

    probe = (
        "import sys, modalmesh.cli, modalmesh.client, modalmesh.common.client; "
        "from modalmesh.common import codec; import numpy as np; codec.to_numpy(codec.encode(np.ones(3, 'float32'))); "
        "print('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_the_command_line_says_what_is_wrong_in_one_line_without_a_traceback(capsys):
    from modalmesh.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["analyze", "--task", "screenshot_triage", "--text", "hi", "--image-param", "lung"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --image-param: expected KEY=VALUE, got 'lung'" in err and "Traceback" not in err
    assert main(["analyze", "--task", "screenshot_triage", "--text-file", "/nonexistent/record.txt"]) == 2
    assert "cannot read /nonexistent/record.txt" in capsys.readouterr().err
    assert main(["tasks", "--router", "127.0.0.1:9", "--timeout", "2"]) == 1  # nothing listens there
    err = capsys.readouterr().err
    assert "start one with `modalmesh up`" in err and "Traceback" not in err


def test_explain_shows_gate_weights_and_attention_mass_in_the_plain_output():
    from modalmesh.client import format_answer

    answer = {
        "task": "screenshot_triage",
        "label": "payment",
        "confidence": 0.9,
        "abstained": False,
        "abstain_reason": "",
        "uncertainty": {"predictive_entropy": 0.1, "gate_entropy": 0.5},
        "model_version": "t@1",
        "top_k": [{"label": "payment", "probability": 0.9}],
        "modalities": {
            "text": {"status": "used", "reason": "", "gate_weight": 0.4, "latency_ms": 3.0, "applicability": 0.5},
            "image": {"status": "used", "reason": "with OCR text", "gate_weight": 0.6, "latency_ms": 90.0, "applicability": 0.7},
        },
        "attention": [{"query": "text", "key": "image", "mass": 0.25}],
        "findings": {"priority": "high"},
        "description": "Category: payment",
        "timings_ms": {"total": 100.0},
    }
    shown = format_answer(answer)
    assert "gate 0.60" in shown and "applicability 0.70" in shown and "text->image 0.25" in shown


def test_up_takes_metrics_ports_and_refuses_busy_ones():
    import socket

    from modalmesh.up import Mesh

    ports = {name: free_port() for name in ("router", "text", "vision", "audio")}
    assert Mesh(ports=ports, metrics_ports={"text": 0, "vision": 19999, "audio": -1}).command("vision")[-2:] == ["--metrics-port", "19999"]
    assert "--metrics-port" not in Mesh(ports=ports, metrics_ports={"audio": -1}).command("audio")
    router = Mesh(ports=ports, http_port=8123, model_repository="models").command("router")
    assert router[router.index("--http-port") + 1] == "8123" and router[router.index("--model-repository") + 1] == "models"
    assert "--model-repository" not in Mesh(ports=ports).command("router")
    metrics = free_port()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", metrics))
    blocker.listen()
    try:
        result = subprocess.run(_up_command(ports) + ["--vision-metrics-port", str(metrics)], capture_output=True, text=True, timeout=60)
    finally:
        blocker.close()
    assert result.returncode == 1 and f"127.0.0.1:{metrics} (metrics) already in use" in result.stderr


def test_the_command_lines_task_names_are_the_built_in_tasks():
    from modalmesh.router import BUILT_IN_TASKS
    from modalmesh.router.tasks import TASKS

    assert BUILT_IN_TASKS == tuple(TASKS)
