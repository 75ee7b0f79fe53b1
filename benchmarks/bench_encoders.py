"""Vision and audio services: latency, throughput, INT8 vs FP32, OCR cost, first features.

    .venv/bin/python benchmarks/bench_encoders.py          # or: make bench
    .venv/bin/python benchmarks/bench_encoders.py --quick

1. Per-item latency (p50) and throughput at 1 and 8 concurrent clients, each service
   its own process on 127.0.0.1: vision on a 1024x640 PNG screenshot (features only),
   audio on a 3 s WAV of synthesized speech (features + VAD, no transcript).
2. FP32 vs INT8 dynamic quantization of each backbone, in process, model time only,
   and the cosine of the pooled vectors to FP32: MiniLM (real weights, 16-token
   sentence), EfficientNet-Lite0 (real weights, 224x224), a ViT-S/16-sized transformer
   (random weights: speed only). Target: INT8 >= 2x faster with cosine >= 0.98.
3. OCR cost per screenshot size (640x400, 1024x640, 1920x1080, a 390x760 phone screen),
   in process, with the engine's detection size (the default: shorter side scaled to 736,
   also up) and with the longer side capped at 960 (`ocr_det_side`), on onnxruntime and
   on OpenVINO (`ocr_engine`), and whether each reads the message.
4. Audio first-feature latency: a 5 s WAV streamed in 0.25 s chunks; time from the first
   chunk sent to the first frame features received, against the time to the full answer.
5. The text model and the image backbone on their two engines (`engine torch` /
   `openvino`), in process, one caller: p50 per batch (text: 1, 2, 8 and 32 sentences,
   the tokenizer included; image: 1 and 4 preprocessed 224x224 screenshots), and the
   lowest cosine between the engines' pooled vectors.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

from modalmesh.common.runtime import sleeping_idle_threads

sleeping_idle_threads()  # as `modalmesh serve` does, before torch loads: in-process figures as in the services

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_text import header, machine, samples_ms, start_service, stop_process, write_results  # noqa: E402
from tests.media import image_bytes, render_screenshot  # noqa: E402


def latency_and_throughput(address: str, data: bytes, media_type: str, clients: int, calls: int) -> dict:
    from modalmesh.common.client import EncoderClient, connect

    with connect(address) as channel:
        client = EncoderClient(channel)
        for _ in range(3):
            client.encode(data, media_type, pooled_only=True, timeout=120)
        latencies: list[float] = []
        lock = threading.Lock()
        per_client = max(1, calls // clients)

        def loop():
            for _ in range(per_client):
                t = time.perf_counter()
                client.encode(data, media_type, pooled_only=True, timeout=120)
                with lock:
                    latencies.append((time.perf_counter() - t) * 1000)

        started = time.perf_counter()
        threads = [threading.Thread(target=loop) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
    return {"clients": clients, "calls": len(latencies), "p50_ms": statistics.median(latencies), "per_s": len(latencies) / elapsed}


def engine_comparison(repeats: int) -> list[dict]:
    from modalmesh.common.compiled import OpenVINOSettings
    from modalmesh.text.model import TextEncoder
    from modalmesh.vision.model import ImageBackbone

    sentences = [
        "My card payment failed at checkout and I was charged twice.",
        "Where is my parcel?",
        "Order placed 22 Jul Packed 22 Jul We could not take payment for this order",
        "Password reset link expired",
    ] * 8
    threads = torch.get_num_threads()

    def compare(model: str, in_torch, converted, inputs: list, sizes: tuple[int, ...]) -> list[dict]:
        rows = []
        for size in sizes:
            batch = inputs[:size]
            a = torch.as_tensor(np.stack([np.asarray(f.pooled) for f in in_torch.encode_batch(batch)]))
            b = torch.as_tensor(np.stack([np.asarray(f.pooled) for f in converted.encode_batch(batch)]))
            row = {
                "model": model,
                "batch": size,
                "torch_ms": time_model(lambda: in_torch.encode_batch(batch), repeats),
                "openvino_ms": time_model(lambda: converted.encode_batch(batch), repeats),
                "cosine": float(torch.nn.functional.cosine_similarity(a, b, dim=1).min()),
            }
            rows.append({**row, "speedup": row["torch_ms"] / row["openvino_ms"]})
        return rows

    rows = compare(
        "all-MiniLM-L6-v2", TextEncoder(""), TextEncoder("", engine="openvino", openvino=OpenVINOSettings(threads=threads)), sentences, (1, 2, 8, 32)
    )
    image_torch = ImageBackbone("")
    screens = [image_torch.preprocess(np.asarray(render_screenshot(f"Error {400 + i}: Payment declined"))) for i in range(4)]
    return rows + compare("EfficientNet-Lite0", image_torch, ImageBackbone("", engine="openvino", openvino=OpenVINOSettings(threads=threads)), screens, (1, 4))


def time_model(fn, repeats: int) -> float:
    return statistics.median(samples_ms(fn, repeats))


def int8_comparison(repeats: int) -> list[dict]:
    from transformers import ViTConfig, ViTModel

    from modalmesh.text.model import TextEncoder
    from modalmesh.vision.model import ImageBackbone

    rows = []
    sentence = ["My card payment failed at checkout and I was charged twice."]
    full, int8 = TextEncoder(""), TextEncoder("", quantize=True)
    a, b = torch.as_tensor(full.encode_batch(sentence)[0].pooled), torch.as_tensor(int8.encode_batch(sentence)[0].pooled)
    rows.append(
        {
            "backbone": "all-MiniLM-L6-v2 (text)",
            "fp32_ms": time_model(lambda: full.encode_batch(sentence), repeats),
            "int8_ms": time_model(lambda: int8.encode_batch(sentence), repeats),
            "cosine": float(torch.nn.functional.cosine_similarity(a, b, dim=0)),
        }
    )

    rgb = np.asarray(render_screenshot("Error 402: Payment declined"))
    for label, make in (
        ("EfficientNet-Lite0 (image)", lambda q: ImageBackbone("", quantize=q)),
        ("ViT-S/16 size, random weights (image)", None),
    ):
        if make is None:
            import tempfile

            folder = tempfile.mkdtemp()
            torch.manual_seed(0)
            config = ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536)
            ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
            make = lambda q, folder=folder: ImageBackbone(folder, quantize=q)  # noqa: E731
        full, int8 = make(False), make(True)
        tensor = full.preprocess(rgb)
        a, b = full.encode_batch([tensor])[0].pooled, int8.encode_batch([tensor])[0].pooled
        rows.append(
            {
                "backbone": label,
                "fp32_ms": time_model(lambda: full.encode_batch([tensor]), repeats),
                "int8_ms": time_model(lambda: int8.encode_batch([tensor]), repeats),
                "cosine": float(torch.nn.functional.cosine_similarity(a, b, dim=0)),
            }
        )
    for row in rows:
        row["speedup"] = row["fp32_ms"] / row["int8_ms"]
    return rows


def ocr_costs(repeats: int) -> list[dict]:
    from modalmesh.common.layout import paragraphs
    from modalmesh.data.screens import render_app_screen
    from modalmesh.common.config import OCR_ENGINES
    from modalmesh.vision.ocr import CAPPED_DET_SIDE, ScreenReader

    message = "Error 402: Payment declined"
    screens = {f"{w}x{h}": render_screenshot(message, size=(w, h)) for w, h in ((640, 400), (1024, 640), (1920, 1080))}
    screens["390x760 phone"] = render_app_screen(message, np.random.default_rng(1), mobile=True, dark=False, layout="dialog")
    rows = []
    for engine in OCR_ENGINES:
        for det_side in (0, CAPPED_DET_SIDE):
            reader = ScreenReader(det_side, engine)
            for name, screen in screens.items():
                rgb = np.asarray(screen.convert("RGB"))
                lines = reader.read(rgb)
                rows.append(
                    {
                        "size": name,
                        "engine": engine,
                        "det_side": det_side,
                        "ms": time_model(lambda: reader.read(rgb), repeats),
                        "lines": len(lines),
                        "read": message in paragraphs((line.text, line.box) for line in lines),
                    }
                )
    return rows


def ocr_first_sight(count: int) -> dict:
    """OCR on screens the engine has not seen: distinct generated screens (phone and
    desktop, light and dark, each layout), each read once and then again. A screen's line
    widths are new input shapes to the runtime the first time (vision/ocr.py, REC_WIDTH_STEP)."""
    from modalmesh.data.screens import render_app_screen
    from modalmesh.vision.ocr import ScreenReader

    reader = ScreenReader()
    reader.warm_up()
    rng = np.random.default_rng(7)
    first, again = [], []
    for index in range(count):
        message = f"Error {400 + index}: request {'declined' if index % 2 else 'timed out'} for order {rng.integers(10**5, 10**6)}"
        layout = ("dialog", "banner", "toast")[index % 3]
        rgb = np.asarray(render_app_screen(message, rng, mobile=index % 2 == 0, dark=index % 4 == 1, layout=layout).convert("RGB"))
        for times in (first, again):
            started = time.perf_counter()
            reader.read(rgb)
            times.append((time.perf_counter() - started) * 1000)
    return {"screens": count, "first_mean_ms": statistics.fmean(first), "again_mean_ms": statistics.fmean(again)}


def first_features(address: str, wav: bytes, repeats: int) -> dict:
    from modalmesh.common.client import connect, encode_requests
    from modalmesh.v1 import encoder_pb2_grpc

    firsts, totals = [], []
    with connect(address) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        for _ in range(repeats):
            started = time.perf_counter()
            first = None
            for chunk in stub.Encode(encode_requests(wav, "audio/wav", chunk_bytes=8000), timeout=60):
                if first is None and chunk.WhichOneof("content") == "sequence":
                    first = (time.perf_counter() - started) * 1000
            totals.append((time.perf_counter() - started) * 1000)
            firsts.append(first)
    return {"first_features_p50_ms": statistics.median(firsts), "complete_p50_ms": statistics.median(totals)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(REPO / "bench-results" / "encoders.json"))
    args = parser.parse_args()
    calls, repeats = (16, 5) if args.quick else (48, 20)
    header("ModalMesh vision and audio benchmark")
    torch.set_num_threads(torch.get_num_threads())
    results: dict = {"machine": machine()}

    from modalmesh.audio.speech import espeak, wav_bytes

    engine = espeak()
    speech = engine.synthesize("Hello, my payment failed at checkout. Could you please refund me?", "en-us", 150)
    speech_wav = wav_bytes(speech, engine.sample_rate)
    png = image_bytes(render_screenshot("Error 402: Payment declined"))

    results["services"] = {}
    for name, data, media_type, flags in (
        ("vision", png, "image/png", ("--no-ocr",)),
        ("audio", speech_wav, "audio/wav", ("--no-transcript",)),
    ):
        process, address = start_service(name, *flags)
        try:
            results["services"][name] = [latency_and_throughput(address, data, media_type, c, calls) for c in (1, 8)]
            if name == "audio":
                five_seconds = wav_bytes(np.tile(speech, int(np.ceil(5 * engine.sample_rate / speech.size)))[: 5 * engine.sample_rate], engine.sample_rate)
                results["audio_streaming"] = first_features(address, five_seconds, repeats)
        finally:
            stop_process(process)

    results["int8"] = int8_comparison(repeats)
    results["ocr"] = ocr_costs(max(3, repeats // 4))
    results["ocr_first_sight"] = ocr_first_sight(24 if args.quick else 60)
    results["engines"] = engine_comparison(repeats)

    print(f"\n1. services ({calls} calls per point, features only, p50 latency and throughput)")
    for name, rows in results["services"].items():
        for row in rows:
            print(f"   {name:6s} {row['clients']:2d} clients: {row['p50_ms']:8.1f} ms p50, {row['per_s']:6.1f} items/s")
    print("\n2. FP32 vs INT8 dynamic quantization (model time p50, in process)")
    for row in results["int8"]:
        print(
            f"   {row['backbone']:40s} fp32 {row['fp32_ms']:7.1f} ms  int8 {row['int8_ms']:7.1f} ms  "
            f"speed-up {row['speedup']:4.2f}x  cosine {row['cosine']:.4f}   (target >= 2x, >= 0.98)"
        )
    print("\n3. OCR per screenshot (in process)")
    for row in results["ocr"]:
        rule = f"longer side <= {row['det_side']}" if row["det_side"] else "engine rule (short side 736)"
        print(f"   {row['size']:>14s}  {row['engine']:11s}  {rule:29s}: {row['ms']:7.1f} ms ({row['lines']} lines, message read: {row['read']})")
    sight = results["ocr_first_sight"]
    print(
        f"   {sight['screens']} distinct screens, default settings: {sight['first_mean_ms']:.1f} ms mean the first time, "
        f"{sight['again_mean_ms']:.1f} ms read again"
    )
    streaming = results["audio_streaming"]
    print("\n4. audio streaming, 5 s WAV in 0.25 s chunks")
    print(f"   first features after {streaming['first_features_p50_ms']:.1f} ms; complete answer after {streaming['complete_p50_ms']:.1f} ms")
    print(f"\n5. torch vs OpenVINO (p50 per batch, in process, {torch.get_num_threads()} threads)")
    for row in results["engines"]:
        print(
            f"   {row['model']:18s} batch {row['batch']:2d}: torch {row['torch_ms']:7.1f} ms  openvino {row['openvino_ms']:7.1f} ms  "
            f"speed-up {row['speedup']:4.2f}x  lowest cosine {row['cosine']:.6f}"
        )
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
