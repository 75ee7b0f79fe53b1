"""ModalMesh's text service beside PyTriton serving the same model, measured in one run.

    .venv/bin/python benchmarks/bench_peers.py --peer-python /path/to/venv/bin/python [--quick]

Both serve the bundled all-MiniLM-L6-v2 in FP32 on 2 threads with dynamic batching up to
32, each in its own process on 127.0.0.1; the client is the same process for both. PyTriton
runs it in torch; ModalMesh with each `--engines` (the text service's `engine` setting:
openvino, its default, and torch), each a column of its own.
Prints:

    hop overhead p50 / p99   round trip - the server's own model time, sequential calls
                             ("hello world"); each server A/B interleaved call by call
                             with the raw gRPC echo of 4,000 bytes, one server after the
                             other (a server's threads that spin on after its call would
                             slow the next server's call)
    throughput               closed-loop clients (1, 8, 32) for --seconds each, pooled
                             vectors of the same sentences; p99 latency

and the ratios (ModalMesh / PyTriton; overhead / echo). The pooled vectors of both are
compared on the sentences (max abs difference), so the two serve the same numbers.

PyTriton (`pip install nvidia-pytriton`, with torch and transformers) pins numpy < 2, so it
usually lives in a virtual environment of its own: `--peer-python` names its interpreter
(default: this one, if it has PyTriton). Its Python backend needs the interpreter's own
libpython on LD_LIBRARY_PATH, which this script sets. Without PyTriton it says how to get
it and measures the echo and the text service alone. Bounded: fixed calls and seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_text import (  # noqa: E402
    ECHO_BYTES,
    SENTENCES,
    closed_loop,
    echo_calls,
    header,
    interleaved_overhead,
    percentile,
    start_echo,
    start_process,
    start_service,
    stop_process,
    write_results,
)
from modalmesh.up import free_port  # noqa: E402

HOW_TO_INSTALL = "python -m venv peer && peer/bin/pip install nvidia-pytriton torch==2.9.1 transformers; then --peer-python peer/bin/python"


def has_pytriton(python: str) -> bool:
    """Whether `python` runs and imports PyTriton, torch and transformers (False for a path that is not a Python)."""
    try:
        return subprocess.run([python, "-c", "import pytriton, torch, transformers"], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def start_peer(python: str) -> tuple[subprocess.Popen, str]:
    """PyTriton with MiniLM on free ports, once the model is ready; (process, gRPC address)."""
    import tritonclient.grpc as triton

    from modalmesh.text.model import default_model_dir

    ports = {name: free_port() for name in ("grpc", "http", "metrics")}
    where = [python, "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"]
    libdir = subprocess.run(where, capture_output=True, text=True, timeout=60).stdout.strip()
    address = f"127.0.0.1:{ports['grpc']}"

    def ready() -> None:
        client = triton.InferenceServerClient(address)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if client.is_model_ready("minilm"):
                    return
            except Exception:  # not listening yet
                pass
            time.sleep(0.5)
        raise TimeoutError("PyTriton's model was not ready in 300 s")

    command = [python, str(REPO / "benchmarks" / "peer_pytriton.py"), "--model", default_model_dir(), "--threads", "2"]
    command += ["--grpc-port", str(ports["grpc"]), "--http-port", str(ports["http"]), "--metrics-port", str(ports["metrics"])]
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH", "")]))
    return start_process(command, ready), address


class PeerCalls:
    """One text to PyTriton: (pooled vector, the server's model ms)."""

    def __init__(self, address: str) -> None:
        import tritonclient.grpc as triton

        self.triton, self.client = triton, triton.InferenceServerClient(address)

    def __call__(self, text: str, timeout: float = 60.0) -> tuple[np.ndarray, float]:
        value = self.triton.InferInput("TEXT", [1, 1], "BYTES")
        value.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
        result = self.client.infer("minilm", [value], client_timeout=timeout)
        return result.as_numpy("POOLED")[0], float(result.as_numpy("MODEL_MS")[0, 0])


class MeshCalls:
    """One text to the text service's EncodeOnce: (pooled vector, the service's model ms)."""

    def __init__(self, address: str) -> None:
        from modalmesh.common.client import EncoderClient, connect

        self.channel = connect(address)
        self.client = EncoderClient(self.channel)

    def __call__(self, text: str, timeout: float = 60.0) -> tuple[np.ndarray, float]:
        result = self.client.encode_text(text, pooled_only=True, timeout=timeout)
        return np.asarray(result.pooled, dtype=np.float32), float(result.pooled_message.timings_ms["model"])


def throughput(call, clients: int, seconds: float, max_calls: int = 50_000) -> dict:
    flat, _, elapsed = closed_loop(call, clients, seconds, max_calls)
    return {"clients": clients, "calls": len(flat), "per_s": len(flat) / elapsed, "p50_ms": statistics.median(flat), "p99_ms": percentile(flat, 99)}


NAMES = {"openvino": "modalmesh", "torch": "modalmesh-torch"}  # column names by engine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer-python", default=os.environ.get("MODALMESH_PEER_PYTHON", sys.executable), help="a Python with nvidia-pytriton")
    parser.add_argument("--calls", type=int, default=1000, help="sequential calls per server for the overhead")
    parser.add_argument("--seconds", type=float, default=15.0, help="per throughput point and server")
    parser.add_argument("--quick", action="store_true", help="200 calls and 5 s per point")
    parser.add_argument("--engines", default="openvino,torch", help="the text service's engines to run, comma-separated")
    parser.add_argument("--out", default=str(REPO / "bench-results" / "peers.json"))
    args = parser.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    calls_n, seconds = (200, 5.0) if args.quick else (args.calls, args.seconds)
    info = header("ModalMesh's text service beside PyTriton, the same MiniLM (FP32, 2 threads, batches up to 32)")
    peer = has_pytriton(args.peer_python)
    if not peer:
        print(f"PyTriton is not importable by {args.peer_python}: measuring the echo and ModalMesh alone. To compare: {HOW_TO_INSTALL}")

    echo, echo_address = start_echo()
    processes = [echo]
    try:
        servers = {}
        for engine in engines:
            mesh_process, mesh_address = start_service("text", "--max-batch-size", "32", "--max-queue", "1024", "--engine", engine)
            processes.append(mesh_process)
            servers[NAMES.get(engine, f"modalmesh-{engine}")] = MeshCalls(mesh_address)
        if peer:
            peer_process, peer_address = start_peer(args.peer_python)
            processes.append(peer_process)
            servers["pytriton"] = PeerCalls(peer_address)
        same = None
        if peer:
            same = max(float(np.abs(servers[name](s)[0] - servers["pytriton"](s)[0]).max()) for s in SENTENCES for name in servers if name != "pytriton")
        echo_channel, calls_of_echo = echo_calls(echo_address)
        turns = {name: (lambda call=call: call("hello world")[1]) for name, call in servers.items()}
        # Each server against the echo alone: a server whose threads spin on after a call
        # (PyTriton's do) slows whatever call comes next, so servers never follow each other.
        hop = {}
        for name, turn in turns.items():
            pair = interleaved_overhead({"echo": calls_of_echo["echo_unary"], name: turn}, calls_n)
            hop[name] = {**pair[name], "echo_p50_ms": pair["echo"]["p50_ms"]}
        echo_channel.close()
        echo_ms = statistics.median(figures["echo_p50_ms"] for figures in hop.values())
        points = {name: [throughput(call, clients, seconds) for clients in (1, 8, 32)] for name, call in servers.items()}
    finally:
        for process in processes:
            stop_process(process)

    print(f"\nhop overhead (round trip - model time, {calls_n} calls each; each server interleaved call by call with the raw echo of {ECHO_BYTES} B)")
    for name, figures in hop.items():
        print(
            f"   {name:16s} p50 {figures['p50_ms']:6.2f} ms  p99 {figures['p99_ms']:6.2f} ms  "
            f"(echo beside it {figures['echo_p50_ms']:.2f} ms p50: {figures['p50_ms'] / figures['echo_p50_ms']:.1f}x)"
        )
    print(f"\nthroughput, closed loop, {seconds:g} s per point (req/s, p99 ms)")
    print("   clients " + "".join(f"{name:>24s}" for name in points))
    for i, clients in enumerate((1, 8, 32)):
        print(f"   {clients:7d} " + "".join(f"{points[name][i]['per_s']:14.1f} ({points[name][i]['p99_ms']:6.1f} ms)" for name in points))
    ratios = {}
    ours = [name for name in servers if name != "pytriton"]
    if peer:
        print(f"\npooled vectors: max abs difference {same:.2e} over {len(SENTENCES)} sentences")
        for name in ours:
            ratios[f"overhead_p50_{name}_vs_pytriton"] = hop[name]["p50_ms"] / hop["pytriton"]["p50_ms"]
            for i, c in enumerate((1, 8, 32)):
                ratios[f"throughput_{c}_clients_{name}_vs_pytriton"] = points[name][i]["per_s"] / points["pytriton"][i]["per_s"]
                ratios[f"p99_{c}_clients_{name}_vs_pytriton"] = points[name][i]["p99_ms"] / points["pytriton"][i]["p99_ms"]
    for name in ours:
        ratios[f"overhead_p50_{name}_vs_echo"] = hop[name]["p50_ms"] / hop[name]["echo_p50_ms"]
    for name, value in ratios.items():
        print(f"   {name}: {value:.2f}")
    figures = {"echo_unary_p50_ms": echo_ms, "overhead": hop, "throughput": points, "max_abs_difference": same, "ratios": ratios}
    write_results(args.out, {"machine": info, **figures})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
