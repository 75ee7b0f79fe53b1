"""Overload: many concurrent callers with a gRPC deadline, through the real mesh.

    .venv/bin/python benchmarks/bench_overload.py [--concurrency 16] [--requests 32] [--deadline 2.0]

Starts the four services on free ports on 127.0.0.1 (shipped weights), then sends
`--requests` screenshot_triage requests from `--concurrency` threads: the example
screenshot and message, the example voice message on every second one, FULL mode on
every third (it waits for the transcript). Each call has a gRPC deadline of
`--deadline` seconds. Prints how many got an answer (and how many of those were
degraded: a modality TIMED_OUT or FAILED), how many DEADLINE_EXCEEDED (from the router, or from
the client's own clock when the reply came too late), anything else, and the answered
latencies. Bounded: the requests are counted and every call has its deadline.

Meanwhile another process checks every service's health four times a second (5-s
timeout, as a Kubernetes probe would) and prints the slowest answer and any failure: health checks
must not queue behind work (`worker_threads`, `max_waiting_calls`).

What it checks: under a deadline the router answers from the encoders that made it (a
margin before the deadline) instead of failing every late call, a busy service still
answers its health checks, and no service is wedged afterwards (the same run again
gives the same picture).

    .venv/bin/python benchmarks/bench_overload.py --concurrency 110 --requests 110 --deadline 60
        past worker_threads + max_waiting_calls (96): RESOURCE_EXHAUSTED at once
    .venv/bin/python benchmarks/bench_overload.py --concurrency 384 --seconds 90 --deadline 20
        4x overload (the router's 96 places, four times over), closed loop for 90 s: of the
        calls admitted (not RESOURCE_EXHAUSTED), the share answered inside their deadline,
        and answers per second. A refused caller waits as the refusal asks (half to all of
        the time its retry hint names; else exponential backoff, 50 ms doubling to 2 s,
        full jitter); --no-backoff sends again at once, a retry storm in which refusals
        take the CPU the answers need

Prints the admitted-answered ratio: admission weighs the expected answer time against
each caller's deadline, so what it admits it should answer.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import random
import re
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_memory import cpu_seconds, process_tree  # noqa: E402
from benchmarks.bench_text import header, machine, write_results  # noqa: E402
from modalmesh.up import ORDER, Mesh, free_port  # noqa: E402

EXAMPLES = REPO / "examples"


BACKOFF_BASE_S, BACKOFF_CAP_S = 0.05, 2.0


def run(concurrency: int, requests: int, deadline: float, seconds: float = 0.0, backoff: bool = True) -> dict:
    import grpc

    from modalmesh.client import RouterClient
    from modalmesh.common.errors import retry_after

    screenshot, voice = (EXAMPLES / "screenshot.png").read_bytes(), (EXAMPLES / "voice.wav").read_bytes()
    message = (EXAMPLES / "message.txt").read_text().strip()
    mesh = Mesh(ports={name: free_port() for name in ORDER}, quiet_logs=True, health_ports={name: free_port() for name in ORDER})
    mesh.start()
    try:
        mesh.wait_healthy(timeout=300, progress=None)
        with RouterClient(mesh.address("router")) as client:
            client.analyze("screenshot_triage", text=message, image=screenshot, audio=voice, mode="full", timeout=60)  # warm

            hints: dict[int, float | None] = {}  # by call: the wait a refusal asked for
            shortfalls: collections.Counter = collections.Counter()  # what degraded answers went without
            misses: collections.Counter = collections.Counter()  # why admitted calls got no answer (the status, numbers left out)

            def one(index: int) -> tuple[str, float, float]:
                started = time.perf_counter()
                try:
                    answer = client.analyze(
                        "screenshot_triage",
                        text=message,
                        image=screenshot,
                        audio=voice if index % 2 else b"",
                        mode="full" if index % 3 == 0 else "routed",
                        timeout=deadline,
                    )
                except grpc.RpcError as exc:
                    hints[index] = retry_after(exc)
                    source = "router" if "before the deadline" in (exc.details() or "") else "client clock"
                    outcome = f"{exc.code().name} ({source})" if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED else exc.code().name
                    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        misses[f"{exc.code().name}: " + re.sub(r"[0-9.]+", "N", exc.details() or "")[:90]] += 1
                    return outcome, time.perf_counter() - started, started - began
                missed = [
                    f"{name} {m['status']} {m.get('error_code', '')}".strip()
                    for name, m in answer["modalities"].items()
                    if m["status"] in ("timed_out", "failed")
                ]
                degraded = bool(missed)
                shortfalls.update(missed)
                return ("answered, degraded" if degraded else "answered, complete"), time.perf_counter() - started, started - began

            # Kubelet probes from another process: so do these, so that they time the services,
            # not this process's own callers.
            spawn = multiprocessing.get_context("spawn")
            here, there = spawn.Pipe()
            targets = {
                **{name: mesh.address(name) for name in ORDER},
                **{f"{name} (probe port)": f"{mesh.host}:{port}" for name, port in mesh.health_ports.items()},
            }
            probes = spawn.Process(target=poll_health, args=(targets, there), daemon=True)
            probes.start()
            here.recv()  # the prober is up
            trees = {name: process_tree(mesh.members[name].running.pid) for name in ORDER}
            cpu_before = {name: cpu_seconds(pids) for name, pids in trees.items()}
            own_before = sum(os.times()[:2])
            began = started = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                if seconds:  # closed loop: every caller sends again as soon as it has an answer, until the time is up
                    stop_at = time.monotonic() + seconds

                    def caller(first: int) -> list:
                        done, index, refused = [], first, 0
                        jitter = random.Random(first)
                        while time.monotonic() < stop_at:
                            done.append(one(index))
                            index += concurrency
                            refused = refused + 1 if done[-1][0] == "RESOURCE_EXHAUSTED" else 0
                            hint = hints.pop(index - concurrency, None)
                            if refused and backoff:  # as the refusal asks: after the time it names, else exponential backoff
                                wait = jitter.uniform(0.5, 1.0) * hint if hint else jitter.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (refused - 1)))
                                time.sleep(max(0.0, min(wait, stop_at - time.monotonic())))  # not past the end
                        return done

                    outcomes = [o for batch in pool.map(caller, range(concurrency)) for o in batch]
                    requests = len(outcomes)
                else:
                    outcomes = list(pool.map(one, range(requests)))
            wall = time.perf_counter() - started
            cpu_used = {name: cpu_seconds(process_tree(mesh.members[name].running.pid)) - cpu_before[name] for name in ORDER}
            cpu_used["callers"] = sum(os.times()[:2]) - own_before  # this benchmark's own threads, on the same cores
            here.send("stop")
            health = here.recv() if here.poll(30) else {}
            probes.join(10)
    finally:
        mesh.stop()
    counts = collections.Counter(outcome for outcome, _, _ in outcomes)
    answered = [seconds for outcome, seconds, _ in outcomes if outcome.startswith("answered")]
    admitted = requests - counts.get("RESOURCE_EXHAUSTED", 0)
    # Admitted but not answered, by when the call was sent: the first deadline's worth of
    # calls arrive before anything is known of how long a call takes.
    unanswered = [at for outcome, _, at in outcomes if not outcome.startswith("answered") and outcome != "RESOURCE_EXHAUSTED"]
    first = sum(at < deadline for at in unanswered)
    return {
        "concurrency": concurrency,
        "requests": requests,
        "backoff": bool(seconds and backoff),
        "deadline_s": deadline,
        "wall_s": wall,
        "outcomes": dict(counts),
        "admitted": admitted,
        "degraded_by": dict(shortfalls),
        "not_answered_by": dict(misses),
        "admitted_answered_ratio": len(answered) / admitted if admitted else None,
        "unanswered_sent_in_first_deadline": first,
        "unanswered_sent_later": len(unanswered) - first,
        "answers_per_s": len(answered) / wall if wall else None,
        "answered_latency_median_s": statistics.median(answered) if answered else None,
        "answered_latency_max_s": max(answered) if answered else None,
        "cpu_s": cpu_used,
        "cores": os.cpu_count(),
        "health": health,
    }


def poll_health(addresses: dict[str, str], pipe) -> None:
    """In its own process: every service's grpc.health.v1 Check, four times a second, until
    told to stop; then sends back per service the number of checks, the slowest (ms) and
    the failures."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stubs = {name: health_pb2_grpc.HealthStub(grpc.insecure_channel(address)) for name, address in addresses.items()}
    health = {name: {"checks": 0, "slowest_ms": 0.0, "failed": 0} for name in addresses}
    pipe.send("ready")
    while not pipe.poll(0.25):
        for name, stub in stubs.items():
            started = time.perf_counter()
            try:
                ok = stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                ok = False
            record = health[name]
            record["checks"] += 1
            record["slowest_ms"] = max(record["slowest_ms"], (time.perf_counter() - started) * 1000)
            record["failed"] += not ok
    pipe.send(health)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--deadline", type=float, default=2.0, help="gRPC deadline per call, seconds")
    parser.add_argument("--seconds", type=float, default=0.0, help="closed loop for this long (each caller sends again once answered) instead of --requests")
    parser.add_argument(
        "--no-backoff", dest="backoff", action="store_false", help="with --seconds: a refused caller sends again at once instead of backing off"
    )
    parser.add_argument("--out", default="bench-results/overload.json")
    args = parser.parse_args()
    header("ModalMesh overload benchmark: concurrent callers with a gRPC deadline")
    results = run(args.concurrency, args.requests, args.deadline, args.seconds, args.backoff)
    print(f"\n{results['requests']} requests, {results['concurrency']} at a time, deadline {results['deadline_s']:g} s: {results['wall_s']:.1f} s in all")
    for outcome, count in sorted(results["outcomes"].items()):
        print(f"  {outcome:32s} {count}")
    for shortfall, count in sorted(results["degraded_by"].items()):
        print(f"    degraded: {shortfall:26s} {count}")
    if results["admitted_answered_ratio"] is not None:
        print(
            f"  admitted {results['admitted']}, answered inside the deadline {results['admitted_answered_ratio']:.1%}; {results['answers_per_s']:.2f} answers/s"
        )
        print(
            f"  admitted, not answered: {results['unanswered_sent_in_first_deadline']} sent in the first "
            f"{results['deadline_s']:g} s, {results['unanswered_sent_later']} later"
        )
        for why, count in sorted(results["not_answered_by"].items(), key=lambda item: -item[1]):
            print(f"    {count:5d}  {why}")
    if results["answered_latency_median_s"] is not None:
        print(f"  answered latency: median {results['answered_latency_median_s']:.2f} s, max {results['answered_latency_max_s']:.2f} s")
    cpu, answers = results["cpu_s"], round(results["answers_per_s"] * results["wall_s"]) if results["answers_per_s"] else 0
    busy = sum(cpu.values()) / results["wall_s"]
    print(f"  CPU busy {busy:.2f} of {results['cores']} cores: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in cpu.items()))
    if answers:
        mesh_cpu = sum(seconds for name, seconds in cpu.items() if name != "callers") / answers
        print(
            f"  mesh CPU per answer {mesh_cpu:.2f} s (refusals included): at most {results['cores'] / mesh_cpu:.2f} answers/s on "
            f"{results['cores']} cores with nothing else running"
        )
    for name, record in results["health"].items():
        print(f"  health {name:20s} {record['checks']} checks, slowest {record['slowest_ms']:.0f} ms, failed {record['failed']}")
    write_results(args.out, {"machine": machine(), **results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
