"""What HTTP costs beside gRPC: the same Analyze through the router's two ports.

    .venv/bin/python benchmarks/bench_http.py [--calls 100]

Starts the four services on free ports on 127.0.0.1 with the router's HTTP port on. The
same text-only screenshot_triage request (the cheapest full answer: one text encoding
and one fusion) is sent `--calls` times each way, interleaved one by one so that both
see the same machine: the gRPC client, and HTTP/1.1 with keep-alive (`http.client`,
`POST /v1/analyze` with the JSON body). Prints the median and p99 of each, and the HTTP
call's added cost (median difference and ratio). Bounded: a fixed number of calls, each
with a deadline.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_text import header, write_results  # noqa: E402
from modalmesh.up import ORDER, Mesh, free_port  # noqa: E402

TEXT = "My card was declined at checkout and I was still charged."


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def run(calls: int) -> dict:
    from modalmesh.client import RouterClient

    http_port = free_port()
    mesh = Mesh(ports={name: free_port() for name in ORDER}, quiet_logs=True, http_port=http_port)
    mesh.start()
    try:
        mesh.wait_healthy(timeout=300, progress=None)
        body = json.dumps({"task": "screenshot_triage", "text": TEXT})
        connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=60)

        def over_http() -> float:
            started = time.perf_counter()
            connection.request("POST", "/v1/analyze", body=body, headers={"Content-Type": "application/json"})
            reply = connection.getresponse()
            answer = json.loads(reply.read())
            if reply.status != 200 or not answer.get("label"):
                raise RuntimeError(f"HTTP {reply.status}: {answer}")
            return (time.perf_counter() - started) * 1000

        with RouterClient(mesh.address("router"), timeout=60) as client:

            def over_grpc() -> float:
                started = time.perf_counter()
                client.analyze_message("screenshot_triage", text=TEXT)
                return (time.perf_counter() - started) * 1000

            for _ in range(5):  # warm both paths
                over_grpc(), over_http()
            grpc_ms, http_ms = [], []
            for _ in range(calls):
                grpc_ms.append(over_grpc())
                http_ms.append(over_http())
        connection.close()
    finally:
        mesh.stop()
    return {
        "calls": calls,
        "grpc_ms": {"median": statistics.median(grpc_ms), "p99": percentile(grpc_ms, 0.99)},
        "http_ms": {"median": statistics.median(http_ms), "p99": percentile(http_ms, 0.99)},
        "http_added_median_ms": statistics.median(http_ms) - statistics.median(grpc_ms),
        "http_over_grpc": statistics.median(http_ms) / statistics.median(grpc_ms),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--out", default="bench-results/http.json")
    args = parser.parse_args()
    info = header("Analyze over HTTP and over gRPC, interleaved (text-only screenshot_triage)")
    results = run(args.calls)
    for name in ("grpc_ms", "http_ms"):
        print(f"{name[:-3]:5s} median {results[name]['median']:.1f} ms, p99 {results[name]['p99']:.1f} ms")
    print(f"HTTP adds {results['http_added_median_ms']:.1f} ms at the median ({results['http_over_grpc']:.2f}x gRPC)")
    write_results(args.out, {"machine": info, **results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
