"""`make demo` / `modalmesh demo`: the main job on the bundled default models.

Today the mesh has its text encoder: the demo starts it as its own process, waits for
its health check, encodes example sentences through it over gRPC, shows which pairs
mean the same, and stops it with SIGTERM (a graceful drain).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np

EXAMPLES = [
    "My card payment failed at checkout.",
    "The checkout page declined my credit card.",
    "I can't log in, it says my password is wrong.",
    "The app crashes as soon as I open it.",
    "Where is my parcel? Tracking hasn't moved for a week.",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_demo(port: int = 0) -> int:
    from modalmesh.common.client import EncoderClient, connect, wait_for_serving

    port = port or free_port()
    command = [sys.executable, "-m", "modalmesh.cli", "serve", "text", "--port", str(port), "--metrics-port", "0"]
    print(f"starting the text encoder: {' '.join(command[2:])}", flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(command, env={**os.environ, "MODALMESH_LOG_LEVEL": "WARNING"})
    try:
        with connect(f"127.0.0.1:{port}") as channel:
            wait_for_serving(channel, timeout=120)
            print(f"text encoder SERVING on 127.0.0.1:{port} after {time.perf_counter() - started:.1f} s\n")
            client = EncoderClient(channel)
            info = client.info()
            print(f"model {info.model_version}: {info.feature_width}-d features, max {info.limits.max_tokens} tokens\n")
            vectors = []
            for sentence in EXAMPLES:
                result = client.encode_text(sentence)
                vectors.append(result.pooled.astype(np.float32))
                print(f"  {sentence!r}\n    tokens {result.sequence.dtype}{list(result.sequence.shape)}, "
                      f"pooled {result.pooled.dtype}{list(result.pooled.shape)}, "
                      f"model {result.pooled_message.timings_ms['model']:.1f} ms")
            similarity = np.stack(vectors) @ np.stack(vectors).T
            print("\ncosine similarity (rows and columns in the order above):")
            for i, row in enumerate(similarity):
                print(f"  [{i}] " + "  ".join(f"{v:5.2f}" for v in row))
            best = max(((i, j) for i in range(len(EXAMPLES)) for j in range(i + 1, len(EXAMPLES))), key=lambda p: similarity[p])
            print(f"\nclosest pair: [{best[0]}] and [{best[1]}] ({similarity[best]:.2f})")
        return 0
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=30)
            print(f"text encoder stopped (exit {code})")
        except subprocess.TimeoutExpired:
            process.kill()
            print("text encoder did not stop in 30 s; killed", file=sys.stderr)
