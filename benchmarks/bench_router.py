"""Router benchmark: the mesh against the same models in one process, and router overhead.

    .venv/bin/python benchmarks/bench_router.py [--quick]

Request: screenshot_triage with a message, a 1024x640 screenshot and a ~4 s voice
message, FULL mode (features + OCR + transcript for every request, so both sides do
the same work).

- Mesh: `modalmesh up`-style, four processes on 127.0.0.1; latency seen by the client.
- In process: the same encoder backends (the service classes' own encode code, no gRPC),
  called one after the other in this process, then the same fusion model.
- Router overhead per request: total - the slowest modality's latency (from the
  answer's explanation): validation, fusion, heads, description, and the fan-out itself.

Targets: mesh p50 <= 0.8x in-process p50; router overhead p50 <= 2 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_text import machine, percentile, write_results  # noqa: E402
from modalmesh.up import free_port  # noqa: E402


def make_inputs():
    from modalmesh.audio.speech import espeak, wav_bytes
    from modalmesh.data.screens import png_bytes, render_screenshot

    engine = espeak()
    voice = engine.synthesize("Hello, my payment failed at checkout. Could you please refund me?", "en-us", 150)
    return {
        "text": "I tried to pay three times and it keeps failing. Was I charged?",
        "image": png_bytes(render_screenshot("Error 402: Payment declined")),
        "audio": wav_bytes(voice, engine.sample_rate),
    }


def bench_mesh(inputs, calls: int) -> dict:
    from modalmesh.client import RouterClient
    from modalmesh.up import ORDER, Mesh

    mesh = Mesh(ports={name: free_port() for name in ORDER}, quiet_logs=True)
    mesh.start()
    try:
        mesh.wait_healthy(timeout=300, progress=None)
        with RouterClient(mesh.address("router"), timeout=120) as client:
            for _ in range(2):
                client.analyze("screenshot_triage", mode="full", **inputs)
            totals, overheads, encode = [], [], []
            for _ in range(calls):
                started = time.perf_counter()
                answer = client.analyze("screenshot_triage", mode="full", **inputs)
                totals.append((time.perf_counter() - started) * 1000)
                slowest = max(m["latency_ms"] for m in answer["modalities"].values())
                overheads.append(answer["timings_ms"]["total"] - slowest)
                encode.append(answer["timings_ms"]["encode"])
    finally:
        mesh.stop()
    return {"p50_ms": statistics.median(totals), "p99_ms": percentile(totals, 99),
            "router_overhead_p50_ms": statistics.median(overheads), "router_overhead_p99_ms": percentile(overheads, 99),
            "encode_p50_ms": statistics.median(encode)}


def bench_in_process(inputs, calls: int) -> dict:
    import numpy as np
    import torch

    from modalmesh.audio.server import AudioService
    from modalmesh.common.config import load_config
    from modalmesh.common.client import collect
    from modalmesh.common.encoder import EncodeRequest
    from modalmesh.router.server import SHIPPED_WEIGHTS
    from modalmesh.router.tasks import TASKS, load_task
    from modalmesh.text.server import TextService
    from modalmesh.vision.server import VisionService

    services = {}
    for name, cls in (("text", TextService), ("vision", VisionService), ("audio", AudioService)):
        service = cls(load_config(name, environ={}))
        service.initialize()
        services[name] = service
    task = load_task(TASKS["screenshot_triage"], str(SHIPPED_WEIGHTS))  # the router's own weights

    def encode(service, data, media_type, options=()):
        request = EncodeRequest("bench", media_type, frozenset(options), "FP16", False, {}, data)
        return collect(iter(list(service.encode(request))))

    def one():
        features = {}
        text = encode(services["text"], inputs["text"].encode(), "text/plain")
        features["text"] = torch.from_numpy(text.sequence.astype(np.float32))
        image = encode(services["vision"], inputs["image"], "image/png", ["ocr"])
        features["image"] = torch.from_numpy(image.sequence.astype(np.float32))
        lines = [span.text for span in image.side.text_spans]
        if lines:
            features["image_text"] = torch.from_numpy(np.stack([encode(services["text"], l.encode(), "text/plain").pooled.astype(np.float32) for l in lines]))
        audio = encode(services["audio"], inputs["audio"], "audio/wav", ["transcript"])
        features["audio"] = torch.from_numpy(audio.sequence.astype(np.float32))
        if audio.side.transcript.text:
            features["audio_text"] = torch.from_numpy(encode(services["text"], audio.side.transcript.text.encode(), "text/plain").sequence.astype(np.float32))
        with torch.inference_mode():
            task.model(task.model.embed([features]))

    try:
        for _ in range(2):
            one()
        totals = []
        for _ in range(calls):
            started = time.perf_counter()
            one()
            totals.append((time.perf_counter() - started) * 1000)
    finally:
        for service in services.values():
            service.finalize()
    return {"p50_ms": statistics.median(totals), "p99_ms": percentile(totals, 99)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(REPO / "bench-results" / "router.json"))
    args = parser.parse_args()
    calls = 6 if args.quick else 20
    print("ModalMesh router benchmark")
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print("machine:", json.dumps(machine()))
    inputs = make_inputs()
    mesh = bench_mesh(inputs, calls)
    local = bench_in_process(inputs, calls)
    ratio = mesh["p50_ms"] / local["p50_ms"]
    print(f"\nscreenshot_triage, text + screenshot + voice message, FULL mode, {calls} sequential requests")
    print(f"   in process, sequential   p50 {local['p50_ms']:8.1f} ms   p99 {local['p99_ms']:8.1f} ms")
    print(f"   mesh, 4 processes        p50 {mesh['p50_ms']:8.1f} ms   p99 {mesh['p99_ms']:8.1f} ms")
    print(f"   mesh / in process (p50)  {ratio:.2f}x   (target <= 0.8x)")
    print(f"   router overhead (total - slowest modality): p50 {mesh['router_overhead_p50_ms']:.2f} ms, "
          f"p99 {mesh['router_overhead_p99_ms']:.2f} ms   (target <= 2 ms p50)")
    write_results(args.out, {"machine": machine(), "mesh": mesh, "in_process": local, "ratio": ratio})
    return 0


if __name__ == "__main__":
    sys.exit(main())
