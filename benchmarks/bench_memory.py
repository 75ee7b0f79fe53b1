"""The whole mesh's memory after warm-up, and the CPU each kind of request costs, per service.

    .venv/bin/python benchmarks/bench_memory.py [--settle 5] [--calls 6]

Starts the four services with their defaults on free ports on 127.0.0.1, sends each
built-in task its example once (the triage screenshot, message and voice message with a
spoken reply; the CT slice and its record), waits `--settle` seconds, and prints for
each service's process (with its children: the health-only probe) the resident set
(RSS, what `top` shows; libraries shared between services counted in each) and the
proportional set (PSS: shared pages split between the processes that map them, so the
services' PSS add up to what the mesh takes). Target: the whole mesh's idle memory after
warm-up at most 3 GB.

Then the CPU time each service spends per request (user + system, its process and
children: the transcript worker, from /proc/<pid>/stat), over `--calls` sequential
screenshot_triage requests of each kind: screenshot and message (ROUTED), with the voice
message too (ROUTED, and FULL: it waits for the transcript), and the screenshot alone.
What the sum comes to bounds the answers per second 2 cores can give.

Then `--sizes` more requests (FULL, so every one is read at the full detection size),
each with the example screenshot scaled to another random size (300-1900 px a side, seed
0), and each service's memory again, at once and once OCR has been idle long enough to
release its buffers (vision/ocr.py, IDLE_RELEASE_S): what a stream of screenshots of many
sizes leaves behind (OpenVINO keeps what it prepared per input shape, up to
`openvino_shapes`, and its buffers at the largest input run).
Bounded: two warm-up requests, the reading, 4 x `--calls` requests, `--sizes` requests.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_text import header, write_results  # noqa: E402
from modalmesh.common.runtime import GPU_LIBRARIES  # noqa: E402
from modalmesh.up import ORDER, Mesh, free_port  # noqa: E402
from modalmesh.vision.ocr import IDLE_RELEASE_S  # noqa: E402

EXAMPLES = REPO / "examples"
TARGET_GB = 3.0


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def memory_kib(pid: int) -> dict[str, int]:
    """{'rss': KiB, 'pss': KiB, 'gpu': KiB} of one process, from /proc/<pid>/smaps: 'gpu'
    is the RSS of the GPU libraries torch's CUDA build loads (runtime.GPU_LIBRARIES)."""
    figures = {"rss": 0, "pss": 0, "gpu": 0}
    gpu = False
    try:
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            key, _, value = line.partition(":")
            if " " in key:  # a mapping's header line: address range, permissions, ..., path
                gpu = any(name in line for name in GPU_LIBRARIES)
            elif key in ("Rss", "Pss"):
                figures[key.lower()] += int(value.split()[0])
                if key == "Rss" and gpu:
                    figures["gpu"] += int(value.split()[0])
    except OSError:
        pass
    return figures


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (children that were waited for
    are counted by their parent)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


REQUEST_KINDS = {  # name: (with message, with voice, mode)
    "screenshot + message, routed": (True, False, "routed"),
    "screenshot + message + voice, routed": (True, True, "routed"),
    "screenshot + message + voice, full": (True, True, "full"),
    "screenshot alone, routed": (False, False, "routed"),
}


def cpu_per_request(client, mesh, calls: int) -> dict:
    """CPU ms per request by service, per REQUEST_KINDS entry."""
    message = (EXAMPLES / "message.txt").read_text().strip()
    screenshot, voice = (EXAMPLES / "screenshot.png").read_bytes(), (EXAMPLES / "voice.wav").read_bytes()
    kinds = {}
    for kind, (with_message, with_voice, mode) in REQUEST_KINDS.items():
        trees = {name: process_tree(mesh.members[name].running.pid) for name in ORDER}
        before = {name: cpu_seconds(pids) for name, pids in trees.items()}
        started = time.perf_counter()
        for _ in range(calls):
            client.analyze(
                "screenshot_triage", text=message if with_message else "", image=screenshot, audio=voice if with_voice else b"", mode=mode, timeout=120
            )
        wall = (time.perf_counter() - started) / calls
        kinds[kind] = {
            "wall_ms": wall * 1000,
            "cpu_ms": {name: (cpu_seconds(trees[name]) - before[name]) / calls * 1000 for name in ORDER},
        }
    return kinds


def services_memory(mesh) -> dict:
    """Per service: processes, RSS and PSS (MiB) of its process tree."""
    services = {}
    for name in ORDER:
        pids = process_tree(mesh.members[name].running.pid)
        parts = [memory_kib(pid) for pid in pids]
        services[name] = {"processes": len(pids), **{f"{key}_mib": sum(p[key] for p in parts) / 1024 for key in ("rss", "pss", "gpu")}}
    return services


def many_sizes(client, count: int) -> None:
    """`count` FULL screenshot_triage requests, the example screenshot at random sizes."""
    import io
    import random

    from PIL import Image

    message = (EXAMPLES / "message.txt").read_text().strip()
    screenshot = Image.open(EXAMPLES / "screenshot.png").convert("RGB")
    sizes = random.Random(0)
    for _ in range(count):
        scaled = io.BytesIO()
        screenshot.resize((sizes.randint(300, 1900), sizes.randint(300, 1900))).save(scaled, format="PNG")
        client.analyze("screenshot_triage", text=message, image=scaled.getvalue(), mode="full", timeout=120)


def run(settle: float, calls: int, sizes: int = 0) -> dict:
    from modalmesh.client import RouterClient

    mesh = Mesh(ports={name: free_port() for name in ORDER}, quiet_logs=True)
    mesh.start()
    try:
        mesh.wait_healthy(timeout=300, progress=None)
        with RouterClient(mesh.address("router")) as client:
            client.analyze(
                "screenshot_triage",
                text=(EXAMPLES / "message.txt").read_text().strip(),
                image=(EXAMPLES / "screenshot.png").read_bytes(),
                audio=(EXAMPLES / "voice.wav").read_bytes(),
                speech=True,
                timeout=120,
            )
            client.analyze("medical_report", text=(EXAMPLES / "record.txt").read_text().strip(), image=(EXAMPLES / "ct.dcm").read_bytes(), timeout=120)
        time.sleep(settle)
        services = services_memory(mesh)
        with RouterClient(mesh.address("router")) as client:
            cpu = cpu_per_request(client, mesh, calls) if calls else {}
            if sizes:
                many_sizes(client, sizes)
        after_sizes = services_memory(mesh) if sizes else {}
        if sizes:  # and once OCR has been idle long enough to release its buffers
            time.sleep(IDLE_RELEASE_S + settle)
        idle_after_sizes = services_memory(mesh) if sizes else {}
    finally:
        mesh.stop()
    return {
        "settle_s": settle,
        "services": services,
        "total_rss_gib": sum(s["rss_mib"] for s in services.values()) / 1024,
        "total_pss_gib": sum(s["pss_mib"] for s in services.values()) / 1024,
        "target_gib": TARGET_GB,
        "cpu_per_request": cpu,
        "sizes": sizes,
        "after_sizes": after_sizes,
        "idle_after_sizes": idle_after_sizes,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait after the warm-up requests")
    parser.add_argument("--calls", type=int, default=6, help="sequential requests of each kind for the CPU figures (0: none)")
    parser.add_argument("--sizes", type=int, default=60, help="then this many screenshots of random sizes, and the memory again (0: none)")
    parser.add_argument("--out", default="bench-results/memory.json")
    args = parser.parse_args()
    info = header("The mesh's memory after warm-up (defaults, both built-in tasks asked once), and CPU per request")
    results = run(args.settle, args.calls, args.sizes)
    print(f"{'service':8s} {'processes':>9s} {'RSS MiB':>9s} {'PSS MiB':>9s} {'of RSS: GPU libraries':>22s}")
    for name, figures in results["services"].items():
        print(f"{name:8s} {figures['processes']:9d} {figures['rss_mib']:9.0f} {figures['pss_mib']:9.0f} {figures['gpu_mib']:22.0f}")
    rss, pss = results["total_rss_gib"], results["total_pss_gib"]
    print(
        f"whole mesh: RSS {rss:.2f} GiB = {rss * 1.073741824:.2f} GB (shared libraries counted per service), "
        f"PSS {pss:.2f} GiB = {pss * 1.073741824:.2f} GB (target {TARGET_GB} GB)"
    )
    if results["cpu_per_request"]:
        print(f"\nCPU ms per request, by service ({args.calls} sequential screenshot_triage requests of each kind)")
        print(f"{'request':38s} {'wall':>7s} " + " ".join(f"{name:>7s}" for name in ORDER) + f" {'all':>7s}")
        for kind, figures in results["cpu_per_request"].items():
            cpu = figures["cpu_ms"]
            print(f"{kind:38s} {figures['wall_ms']:7.0f} " + " ".join(f"{cpu[name]:7.0f}" for name in ORDER) + f" {sum(cpu.values()):7.0f}")
    for key, when in (("after_sizes", "at once"), ("idle_after_sizes", f"then {IDLE_RELEASE_S + args.settle:.0f} s idle")):
        if not results[key]:
            continue
        print(f"\nafter {args.sizes} more screenshots of random sizes (FULL), {when}")
        print(f"{'service':8s} {'RSS MiB':>9s} {'PSS MiB':>9s} {'RSS grew':>9s}")
        for name, figures in results[key].items():
            print(f"{name:8s} {figures['rss_mib']:9.0f} {figures['pss_mib']:9.0f} {figures['rss_mib'] - results['services'][name]['rss_mib']:9.0f}")
        total = sum(f["pss_mib"] for f in results[key].values()) / 1024
        print(f"whole mesh: PSS {total:.2f} GiB")
    write_results(args.out, {"machine": info, **results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
