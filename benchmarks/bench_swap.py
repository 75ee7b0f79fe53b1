"""A new task version lands while requests run: what it costs the callers.

    .venv/bin/python benchmarks/bench_swap.py [--callers 4] [--seconds 20] [--poll 0.5]

Starts the four services on free ports on 127.0.0.1, the router serving a temporary
model repository that holds version 1 of screenshot_triage (a copy of the shipped
weights). `--callers` closed-loop callers send the example message and screenshot (30 s
deadline each) for `--seconds`; halfway through, version 2 is published the way `modalmesh
train --repository` does it (written aside, renamed into place). Prints the failed
requests (target 0), the latency of the answers before the swap and in the two seconds
after it (median, p99: what the swap adds), and the time from the rename to the first
answer from version 2 and to the first request it answered (at most the poll interval
plus loading). Bounded: the time is
fixed and every call has its deadline.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_text import header, write_results  # noqa: E402
from modalmesh.router.repository import staged_version  # noqa: E402
from modalmesh.router.tasks import SHIPPED_WEIGHTS  # noqa: E402
from modalmesh.up import ORDER, Mesh, free_port  # noqa: E402

TASK = "screenshot_triage"
EXAMPLES = REPO / "examples"


def publish(repository: Path) -> None:
    with staged_version(repository / TASK, []) as staging:
        shutil.copytree(SHIPPED_WEIGHTS / TASK, staging, dirs_exist_ok=True)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def run(callers: int, seconds: float, poll_s: float) -> dict:
    import grpc

    from modalmesh.client import RouterClient

    screenshot, message = (EXAMPLES / "screenshot.png").read_bytes(), (EXAMPLES / "message.txt").read_text().strip()
    with tempfile.TemporaryDirectory(prefix="modalmesh-repository-") as folder:
        repository = Path(folder)
        publish(repository)
        env = {"MODALMESH_ROUTER_MODEL_REPOSITORY": str(repository), "MODALMESH_ROUTER_REPOSITORY_POLL_S": str(poll_s)}
        mesh = Mesh(ports={name: free_port() for name in ORDER}, quiet_logs=True, extra_env=env)
        mesh.start()
        try:
            mesh.wait_healthy(timeout=300, progress=None)
            with RouterClient(mesh.address("router")) as client:
                for _ in range(3):  # warm
                    client.analyze(TASK, text=message, image=screenshot, timeout=60)
                calls: list[tuple[float, float, int]] = []  # started, seconds, version answering
                failures: list[str] = []
                stop_at = time.monotonic() + seconds

                def caller() -> None:
                    while time.monotonic() < stop_at:
                        started = time.monotonic()
                        try:
                            answer = client.analyze_message(TASK, text=message, image=screenshot, timeout=30)
                        except grpc.RpcError as exc:
                            failures.append(f"{exc.code().name}: {exc.details()}")
                            continue
                        calls.append((started, time.monotonic() - started, answer.task_version))

                threads = [threading.Thread(target=caller) for _ in range(callers)]
                began = time.monotonic()
                for thread in threads:
                    thread.start()
                time.sleep(seconds / 2)
                publish(repository)
                swapped = time.monotonic()
                for thread in threads:
                    thread.join(seconds + 60)
        finally:
            mesh.stop()
    before = [s for started, s, version in calls if started < swapped]
    during = [s for started, s, version in calls if swapped <= started < swapped + 2.0]
    first_new = min((started + s for started, s, version in calls if version == 2), default=None)
    first_sent = min((started for started, s, version in calls if version == 2), default=None)
    results = {
        "callers": callers,
        "seconds": seconds,
        "poll_s": poll_s,
        "answers": len(calls),
        "failed": len(failures),
        "failures": failures[:5],
        "answers_from_version_2": sum(1 for *_, version in calls if version == 2),
        "before_swap_ms": {"count": len(before), "median": 1000 * statistics.median(before), "p99": 1000 * percentile(before, 0.99)} if before else None,
        "two_seconds_after_ms": {"count": len(during), "median": 1000 * statistics.median(during), "p99": 1000 * percentile(during, 0.99)} if during else None,
        "rename_to_first_answer_from_version_2_s": None if first_new is None else first_new - swapped,
        "rename_to_first_request_served_by_version_2_s": None if first_sent is None else first_sent - swapped,
        "wall_s": time.monotonic() - began,
    }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--poll", type=float, default=0.5, help="the router's repository_poll_s")
    parser.add_argument("--out", default="bench-results/swap.json")
    args = parser.parse_args()
    info = header("A new task version lands while requests run (model repository, live reload)")
    results = run(args.callers, args.seconds, args.poll)
    print(f"answers {results['answers']}, failed {results['failed']} {results['failures']}")
    print(f"answers from version 2: {results['answers_from_version_2']}")
    for name in ("before_swap_ms", "two_seconds_after_ms"):
        figures = results[name]
        if figures:
            print(f"{name}: {figures['count']} answers, median {figures['median']:.0f} ms, p99 {figures['p99']:.0f} ms")
    if results["before_swap_ms"] and results["two_seconds_after_ms"]:
        added = results["two_seconds_after_ms"]["p99"] - results["before_swap_ms"]["p99"]
        print(f"p99 added in the two seconds after the swap: {added:+.0f} ms")
    waited = results["rename_to_first_answer_from_version_2_s"]
    served = results["rename_to_first_request_served_by_version_2_s"]
    print(f"rename -> first answer from version 2: {'never' if waited is None else f'{waited:.2f} s'} (poll every {args.poll} s)")
    print(f"rename -> first request sent that version 2 answered: {'never' if served is None else f'{served:.2f} s'}")
    write_results(args.out, {"machine": info, **results})
    return 0 if results["failed"] == 0 and waited is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
