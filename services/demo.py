"""`make demo` / `modalmesh demo`: the main job on the bundled models, end to end.

Starts the mesh as four processes (text, vision, audio, router), waits for their
health checks, sends a screenshot-triage request (screenshot + message + voice message)
and a medical-report request (CT DICOM + patient record) from examples/, prints the
answers, writes the spoken replies as WAV files, and stops the mesh.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _print_answer(title: str, answer: dict) -> None:
    from modalmesh.client import format_answer

    print(f"\n=== {title} ===")
    print(format_answer(answer))


def run_demo(examples: Path = EXAMPLES, out_dir: Path = Path("demo-output"), mode: str = "full") -> int:
    """`mode` applies to the triage request: FULL (default) always reads the screen, so
    the error text is shown; ROUTED may skip OCR when the label is already certain."""
    from modalmesh.client import RouterClient
    from modalmesh.up import ORDER, Mesh, free_port

    mesh = Mesh(ports={name: free_port() for name in ORDER}, quiet_logs=True)
    print("starting the mesh: " + ", ".join(f"{n} on {mesh.address(n)}" for n in ORDER), flush=True)
    started = time.perf_counter()
    mesh.start()
    try:
        mesh.wait_healthy(timeout=300)
        print(f"mesh healthy after {time.perf_counter() - started:.1f} s", flush=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        with RouterClient(mesh.address("router"), timeout=120) as client:
            triage = client.analyze(
                "screenshot_triage",
                text=(examples / "message.txt").read_text(),
                image=(examples / "screenshot.png").read_bytes(),
                audio=(examples / "voice.wav").read_bytes(),
                speech=True,
                explain=True,
                mode=mode,
            )
            _print_answer("screenshot triage: screenshot.png + message.txt + voice.wav", triage)
            report = client.analyze(
                "medical_report",
                text=(examples / "record.txt").read_text(),
                image=(examples / "ct.dcm").read_bytes(),
                image_parameters={"window": "lung"},
                speech=True,
            )
            _print_answer("medical report: ct.dcm + record.txt", report)
        for name, answer in (("triage_reply.wav", triage), ("report_reply.wav", report)):
            if answer["speech_wav"]:
                (out_dir / name).write_bytes(answer["speech_wav"])
                print(f"spoken reply written to {out_dir / name}")
        return 0
    except RuntimeError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    finally:
        codes = mesh.stop()
        print("mesh stopped: " + ", ".join(f"{n} exit {c}" for n, c in codes.items()))
