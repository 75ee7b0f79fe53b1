"""Text service benchmark: per-call overhead against a raw gRPC echo, and throughput.

    .venv/bin/python benchmarks/bench_text.py            # or: make bench
    .venv/bin/python benchmarks/bench_text.py --quick    # fewer calls, for a smoke run

Everything runs on 127.0.0.1; every server is its own process, as in a deployment.

1. Overhead. The text service (bundled MiniLM, FP16 features) encodes "hello world":
   4 token rows + the pooled vector = 3,840 bytes of features, about the 4,000-byte
   payload of the target. Overhead per call = round trip - the server's own model time
   (timings_ms["model"]). It is compared with a raw gRPC echo of 4,000 bytes: unary
   (the cheapest gRPC call there is) and a bidirectional stream of the same shape as
   Encode (two messages in, two out), with no interceptors, tracing or model. Both
   of the service's paths are measured, through the project's client: EncodeOnce
   (unary) against the unary echo, Encode (stream) against the stream echo. The four
   take turns call by call, so a busy host slows them alike. Target: EncodeOnce's
   overhead p50 <= 2x the unary echo's, p99 <= 4 ms.
2. Throughput. Closed-loop clients (1, 8, 32), each sending sentences back to back for
   a bounded time, against the service with batching on (max 32) and off (max 1).
   Target: batching at 32 clients >= 3x the batch-1 throughput.
3. Several texts at once, as the router embeds a screenshot's text paragraphs: one
   EncodeBatch call against one concurrent EncodeOnce call per text (what a text service
   without EncodeBatch gets), taking turns, 3, 8 and 16 short screen texts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Callable

import grpc

from modalmesh.common.config import load_config
from modalmesh.up import free_port

REPO = Path(__file__).resolve().parent.parent
ECHO_BYTES = 4000
TARGET_OVERHEAD_RATIO = 2.0  # hop overhead p50 against the raw echo of the same bytes
TARGET_OVERHEAD_P99_MS = 4.0
SENTENCES = [
    "My card payment failed at checkout and I was charged twice.",
    "I can't log in, the app says my password is wrong.",
    "The app crashes as soon as I open the settings page.",
    "Where is my parcel? Tracking hasn't moved for a week.",
    "I returned the shoes but never got my refund.",
    "How do I change the email address on my account?",
]


SCREEN_TEXTS = [
    "Your password was locked after too many attempts",
    "Sign in to your account",
    "Forgot password?",
    "Email address",
    "Need help? Contact our support team",
    "Remember me on this device",
    "Terms of service",
    "Create an account",
]


# ------------------------------------------------------------------ raw echo server
def run_echo_server(port: int) -> None:
    """A bare gRPC server: /echo.Echo/Unary returns its request, /echo.Echo/Stream
    answers a 2-message stream with the last message twice. No interceptors."""
    identity = dict(request_deserializer=None, response_serializer=None)

    def unary(request, context):
        return request

    def stream(requests, context):
        last = b""
        for last in requests:
            pass
        yield last[:16]
        yield last

    handler = grpc.method_handlers_generic_handler(
        "echo.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary, **identity),
            "Stream": grpc.stream_stream_rpc_method_handler(stream, **identity),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    server.wait_for_termination()


def start_echo() -> tuple[subprocess.Popen, str]:
    """The raw echo server as its own process on a free port, once it answers."""
    port = free_port()

    def ready() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)

    return start_process([sys.executable, str(Path(__file__).resolve()), "--echo-server", str(port)], ready), f"127.0.0.1:{port}"


def start_process(args: list[str], ready_check) -> subprocess.Popen:
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "MODALMESH_LOG_LEVEL": "WARNING"})
    try:
        ready_check()
    except Exception:
        process.kill()
        raise RuntimeError(f"process failed to start: {' '.join(args)}\n{process.stderr.read()[-2000:]}")
    return process


def stop_process(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def start_service(name: str, *flags: str) -> tuple[subprocess.Popen, str]:
    """`modalmesh serve NAME FLAGS` as its own process on a free port, once healthy."""
    from modalmesh.common.client import connect, wait_for_serving

    port = free_port()
    address = f"127.0.0.1:{port}"

    def ready():
        with connect(address) as channel:
            wait_for_serving(channel, timeout=180)

    process = start_process([sys.executable, "-m", "modalmesh.cli", "serve", name, "--port", str(port), "--metrics-port", "0", *flags], ready)
    return process, address


def write_results(path: str, results: dict) -> None:
    """Every benchmark's figures as JSON beside the printed table."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")


def samples_ms(fn, repeats: int, warmup: int = 3, pause_s: float = 0.0) -> list[float]:
    """`fn()` timed `repeats` times after `warmup` untimed calls, in ms; `pause_s`: sleep
    that long before each timed call (the CPU idles, as between a service's requests)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if pause_s:
            time.sleep(pause_s)
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


# ------------------------------------------------------------------ measurements
def interleaved_overhead(calls: dict, count: int, warmup: int = 30) -> dict:
    """Sequential calls, every caller taking its turn call by call, so that each sees the
    same machine (load on a shared host moves all of them alike): per caller, p50 and p99
    of round trip - model time. `calls`: name -> a function making one call and returning
    the server's model ms (0 for an echo). The order rotates every round, so each caller
    follows each other one equally often (a server whose threads spin on after its call
    slows whichever call comes next)."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        for _ in range(warmup):
            call()
    order = list(calls.items())
    for round_ in range(count):
        shift = round_ % len(order)
        for name, call in order[shift:] + order[:shift]:
            started = time.perf_counter()
            model_ms = call()
            samples[name].append((time.perf_counter() - started) * 1000 - model_ms)
    return {name: {"p50_ms": statistics.median(values), "p99_ms": percentile(values, 99)} for name, values in samples.items()}


def echo_calls(address: str) -> tuple[grpc.Channel, dict]:
    """The raw echo's two calls on a bare channel (no interceptors): unary and 2-in/2-out stream."""
    payload = os.urandom(ECHO_BYTES)
    header = os.urandom(64)
    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=30)
    unary = channel.unary_unary("/echo.Echo/Unary")
    stream = channel.stream_stream("/echo.Echo/Stream")

    def call_unary() -> float:
        assert unary(payload) == payload
        return 0.0

    def call_stream() -> float:
        assert len(list(stream(iter([header, payload])))) == 2
        return 0.0

    return channel, {"echo_unary": call_unary, "echo_stream": call_stream}


def text_calls(address: str) -> tuple[grpc.Channel, dict, Callable[[], int]]:
    """The text service's two paths through the project's client ("hello world"):
    EncodeOnce (unary) and Encode (stream); and how many bytes of features one call sends."""
    from modalmesh.common.client import EncoderClient, connect

    channel = connect(address)
    client = EncoderClient(channel)

    def call(stream: bool) -> Callable[[], float]:
        return lambda: client.encode_text("hello world", stream=stream).pooled_message.timings_ms["model"]

    def feature_bytes() -> int:
        return sum(c.ByteSize() for c in client.encode_text("hello world", stream=False).chunks)

    return channel, {"encode_once": call(False), "encode_stream": call(True)}, feature_bytes


def batch_against_calls(address: str, repeats: int) -> dict:
    """p50 ms of N texts in one EncodeBatch call and as N concurrent EncodeOnce calls, for N = 3, 8, 16."""
    from modalmesh.common.client import EncoderClient, connect

    found = {}
    with connect(address) as channel, futures.ThreadPoolExecutor(16) as pool:
        client = EncoderClient(channel)
        for count in (3, 8, 16):
            texts = [text.encode() for text in (SCREEN_TEXTS * 2)[:count]]
            calls = {
                "batch": lambda texts=texts: client.encode_batch(texts, "text/plain", pooled_only=True),
                "calls": lambda texts=texts: list(pool.map(lambda text: client.encode(text, "text/plain", pooled_only=True), texts)),
            }
            times: dict[str, list[float]] = {name: [] for name in calls}
            for index in range(repeats + 5):
                for name, call in calls.items() if index % 2 else reversed(calls.items()):
                    started = time.perf_counter()
                    call()
                    if index >= 5:  # the first rounds warm up
                        times[name].append((time.perf_counter() - started) * 1000)
            found[str(count)] = {name: statistics.median(values) for name, values in times.items()}
    return found


def closed_loop(call, clients: int, seconds: float, max_calls: int) -> tuple[list[float], list, float]:
    """`clients` threads each calling `call(sentence)` back to back until `seconds` or
    `max_calls` in all run out: (latencies in ms, the calls' results, elapsed seconds)."""
    stop_at = time.perf_counter() + seconds
    latencies: list[list[float]] = [[] for _ in range(clients)]
    results: list = []
    budget = threading.Semaphore(max_calls)

    def loop(index: int) -> None:
        i = index
        while time.perf_counter() < stop_at and budget.acquire(blocking=False):
            t = time.perf_counter()
            results.append(call(SENTENCES[i % len(SENTENCES)]))
            latencies[index].append((time.perf_counter() - t) * 1000)
            i += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [v for per in latencies for v in per], results, time.perf_counter() - started


def measure_throughput(address: str, clients: int, seconds: float, max_calls: int) -> dict:
    """Closed loop: each client sends back to back until time or the call cap runs out."""
    from modalmesh.common.client import EncoderClient, connect

    channel = connect(address)
    client = EncoderClient(channel)
    for s in SENTENCES:
        client.encode_text(s, pooled_only=True)
    flat, results, elapsed = closed_loop(lambda text: client.encode_text(text, pooled_only=True, timeout=60), clients, seconds, max_calls)
    channel.close()
    return {
        "clients": clients,
        "calls": len(flat),
        "seconds": round(elapsed, 2),
        "throughput_per_s": len(flat) / elapsed,
        "latency_p50_ms": statistics.median(flat),
        "latency_p99_ms": percentile(flat, 99),
        "mean_batch_size": statistics.fmean(r.pooled_message.timings_ms["batch_size"] for r in results),
    }


def task_arguments(description: str, tasks, out_name: str, items: str, data: bool = False) -> argparse.Namespace:
    """The shared flags of the per-task dataset benchmarks: --task (repeatable; default
    every one), --limit N (first N `items` of each split) and --out (bench-results/...);
    with `data`, --data MANIFEST (another manifest than the task's test split)."""
    parser = argparse.ArgumentParser(description=description)
    if data:
        parser.add_argument("--data", default="", help="a manifest to use instead of the test split (give one --task)")
    parser.add_argument("--task", choices=sorted(tasks), action="append", help="repeat for several; default all")
    parser.add_argument("--limit", type=int, default=0, help=f"first N {items} of each split (default: all)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "bench-results" / out_name))
    return parser.parse_args()


def header(title: str) -> dict:
    """Every benchmark's first lines: what it is, the command that ran it, the machine."""
    info = machine()
    print(title)
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print("machine:", json.dumps(info))
    return info


def machine() -> dict:
    import torch

    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads_in_service": {
            name: load_config(name, environ=os.environ).torch_threads or os.cpu_count() for name in ("text", "vision", "audio", "router")
        },
        "grpcio": grpc.__version__,
        "platform": platform.platform(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and shorter runs")
    parser.add_argument("--echo-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(REPO / "bench-results" / "text.json"))
    args = parser.parse_args()
    if args.echo_server:
        run_echo_server(args.echo_server)
        return 0

    calls = 200 if args.quick else 1000
    seconds = 5.0 if args.quick else 15.0
    info = header("ModalMesh text service benchmark")

    echo, echo_address = start_echo()
    results: dict = {"machine": info, "throughput": {}}
    try:
        for label, batch in (("batching_on", 32), ("batching_off", 1)):
            process, address = start_service("text", "--max-batch-size", str(batch), "--max-queue", "1024")
            try:
                if label == "batching_on":
                    echo_channel, calls_of_echo = echo_calls(echo_address)
                    text_channel, calls_of_text, feature_bytes = text_calls(address)
                    results["overhead"] = interleaved_overhead({**calls_of_echo, **calls_of_text}, calls)
                    results["feature_bytes_on_wire"] = feature_bytes()
                    results["several_texts"] = batch_against_calls(address, 50 if args.quick else 200)
                    echo_channel.close()
                    text_channel.close()
                results["throughput"][label] = [measure_throughput(address, clients, seconds, max_calls=20_000) for clients in (1, 8, 32)]
            finally:
                stop_process(process)
    finally:
        stop_process(echo)

    overhead = results["overhead"]
    ratio_unary = overhead["encode_once"]["p50_ms"] / overhead["echo_unary"]["p50_ms"]
    ratio_stream = overhead["encode_stream"]["p50_ms"] / overhead["echo_stream"]["p50_ms"]
    on = {r["clients"]: r for r in results["throughput"]["batching_on"]}
    off = {r["clients"]: r for r in results["throughput"]["batching_off"]}
    speedup_32 = on[32]["throughput_per_s"] / off[1]["throughput_per_s"]
    results["ratios"] = {
        "overhead_vs_unary_echo": ratio_unary,
        "stream_overhead_vs_stream_echo": ratio_stream,
        "batching_32_clients_vs_batch1_1_client": speedup_32,
        "batching_32_vs_off_32": on[32]["throughput_per_s"] / off[32]["throughput_per_s"],
    }

    print(f"\n1. per-call overhead, round trip - model time ({results['feature_bytes_on_wire']} bytes of features; {calls} calls each, interleaved)")
    names = {
        "echo_unary": f"raw gRPC echo, unary, {ECHO_BYTES} B",
        "echo_stream": f"raw gRPC echo, 2-in/2-out stream, {ECHO_BYTES} B",
        "encode_once": "text service, EncodeOnce (unary)",
        "encode_stream": "text service, Encode (stream)",
    }
    for key, name in names.items():
        print(f"   {name:42s} p50 {overhead[key]['p50_ms']:6.3f} ms   p99 {overhead[key]['p99_ms']:6.3f} ms")
    target = f"p50 <= {TARGET_OVERHEAD_RATIO:g}x the echo, p99 <= {TARGET_OVERHEAD_P99_MS:g} ms"
    print(f"   EncodeOnce overhead / unary echo    {ratio_unary:5.2f}x   (target: {target})")
    print(f"   Encode overhead / stream echo       {ratio_stream:5.2f}x")
    print(f"\n2. throughput, MiniLM, {seconds:.0f} s per point, pooled vectors, sentences of 12-16 tokens")
    print("   clients   batching on (req/s, mean batch, p50 ms)   batching off (req/s, p50 ms)")
    for clients in (1, 8, 32):
        a, b = on[clients], off[clients]
        print(
            f"   {clients:7d}   {a['throughput_per_s']:8.1f}  {a['mean_batch_size']:5.1f}  {a['latency_p50_ms']:8.1f}"
            f"              {b['throughput_per_s']:8.1f}  {b['latency_p50_ms']:8.1f}"
        )
    print(f"   batching on at 32 clients / batch-1 (off, 1 client): {speedup_32:.2f}x   (target >= 3x)")
    print(f"   batching on / off, both at 32 clients:               {results['ratios']['batching_32_vs_off_32']:.2f}x")

    print("\n3. several screen texts at once, p50 ms")
    print("   texts   one EncodeBatch call   one EncodeOnce call each, concurrently   ratio")
    for count, row in results["several_texts"].items():
        print(f"   {int(count):5d}   {row['batch']:20.2f}   {row['calls']:39.2f}   {row['calls'] / row['batch']:5.2f}x")

    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
