"""Router benchmark: the mesh against the same models in one process, and router overhead.

    .venv/bin/python benchmarks/bench_router.py [--quick] [--rounds 3] [--weights DIR] [--engines openvino,torch]

Request: screenshot_triage with a message, a 1024x640 screenshot and a ~4 s voice
message, FULL mode (features + OCR + transcript for every request, so both sides do
the same work).

- Mesh: `modalmesh up`-style, four processes on 127.0.0.1; latency seen by the client.
- In process: the same encoder backends (the service classes' own encode code, no gRPC),
  called one after the other in this process, then the same decision (tasks.decide).
- Router overhead per request: total - the slowest modality's latency (from the
  answer's explanation): validation, fusion, heads, description, and the fan-out itself.

Both run in one process's lifetime, in `--rounds` alternating blocks (the mesh, then the
same number of requests in process while the mesh idles): a round's ratio compares blocks
run a minute apart, and the median of the rounds is printed with the targets.

Targets: mesh p50 <= 0.8x in-process p50; router overhead p50 <= 3 ms.

`--engines`: what runs the fusion model's decisions (the router's `engine`, both sides:
openvino, the default, or torch); several run one after the other, each its own mesh, and
the router overhead of each is printed against the first's.

`--weights DIR`: a folder of <task>/ weights folders (as `modalmesh serve --weights-dir`)
served by the mesh and decided with in process, instead of the shipped weights.

`--decisions MANIFEST` (a screenshot_triage manifest, e.g. data/triage-heldout/heldout.jsonl
from `make weights`) times only the router's decision (tasks.decide, in process, one
thread) on each in-scope item's cached features, grouped by how many status-line readings
the screen gives (each reading is one row of the fusion model), with the ensemble's linear
maps in float32 and in bfloat16 (the router's `fusion_precision`; auto picks bfloat16 on a
CPU that multiplies it natively); then every item, in scope and out of it, answered as the
router would at both precisions, and how many answers are alike; with several `--engines`,
each engine's timings, and how many answers the engines give alike at `--fusion-precision`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from modalmesh.common.runtime import single_threaded_numpy_blas, sleeping_idle_threads  # noqa: E402

# The in-process side runs with the thread settings `modalmesh serve` gives each service.
sleeping_idle_threads()
single_threaded_numpy_blas()

from benchmarks.bench_text import header, machine, percentile, samples_ms, write_results  # noqa: E402
from modalmesh.common.config import DEFAULT_ENGINE, ENGINES, FUSION_PRECISIONS  # noqa: E402
from modalmesh.router.fusion import fusion_precision  # noqa: E402

PRECISIONS = FUSION_PRECISIONS[1:]  # what --decisions compares: float32, bfloat16 (router/fusion.py PRECISIONS)
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


def mesh_calls(client, inputs, calls: int) -> dict:
    """`calls` sequential requests through the mesh: latency seen by the client, and the
    router's overhead and final decision from each answer's timings."""
    totals, overheads, encode, fuse = [], [], [], []
    for _ in range(calls):
        started = time.perf_counter()
        answer = client.analyze("screenshot_triage", mode="full", **inputs)
        totals.append((time.perf_counter() - started) * 1000)
        slowest = max(m["latency_ms"] for m in answer["modalities"].values())
        overheads.append(answer["timings_ms"]["total"] - slowest)
        encode.append(answer["timings_ms"]["encode"])
        fuse.append(answer["timings_ms"]["fuse"])
    return {
        "p50_ms": statistics.median(totals),
        "p99_ms": percentile(totals, 99),
        "router_overhead_p50_ms": statistics.median(overheads),
        "router_overhead_p99_ms": percentile(overheads, 99),
        "encode_p50_ms": statistics.median(encode),
        "fuse_p50_ms": statistics.median(fuse),
    }


def in_process(inputs, precision: str = "auto", weights: str = "", engine: str = "openvino"):
    """The same work as the mesh, one step after another in this process: the services'
    own encode code (LocalEncoders, as training uses it, OCR read into paragraphs like the
    router does), then the router's decision (tasks.decide: the fusion model through the
    status-line pointer, and each modality read alone for the dissent check), on one thread.
    Returns (one request, close)."""
    import torch

    from modalmesh.router.features import LocalEncoders
    from modalmesh.router.tasks import SHIPPED_WEIGHTS
    from modalmesh.router.tasks import TASKS, FusionEngine, decide, load_task

    encoders = LocalEncoders()
    # the router's own weights, at its precision, on its engine
    task = load_task(TASKS["screenshot_triage"], weights or str(SHIPPED_WEIGHTS), precision, FusionEngine(engine))

    def one():
        item = encoders.extract(text=inputs["text"], image=inputs["image"], image_type="image/png", audio=inputs["audio"], audio_type="audio/wav")
        tags = dict(item.evidence.get("image_tags", {}))
        with torch.inference_mode():
            decide(task.model, task.spec, item.features, tags, attention=False, pointer=task.status_line)

    return one, encoders.close


def bench_rounds(inputs, calls: int, rounds: int, precision: str = "auto", weights: str = "", engine: str = "openvino") -> list[dict]:
    """`rounds` times: `calls` requests through the mesh, then `calls` in process (the mesh
    idle meanwhile); both started and warmed once. One row per round."""
    from modalmesh.client import RouterClient
    from modalmesh.up import ORDER, Mesh

    env = {"MODALMESH_ROUTER_FUSION_PRECISION": precision, "MODALMESH_ROUTER_ENGINE": engine, **({"MODALMESH_ROUTER_WEIGHTS_DIR": weights} if weights else {})}
    mesh = Mesh(ports={name: free_port() for name in ORDER}, quiet_logs=True, extra_env=env)
    mesh.start()
    one, close = None, None
    try:
        mesh.wait_healthy(timeout=300, progress=None)
        one, close = in_process(inputs, precision, weights, engine)
        results = []
        with RouterClient(mesh.address("router"), timeout=120) as client:
            for _ in range(2):
                client.analyze("screenshot_triage", mode="full", **inputs)
            for _ in range(rounds):
                through_mesh = mesh_calls(client, inputs, calls)
                local = samples_ms(one, calls, warmup=2 if not results else 0)
                results.append({"mesh": through_mesh, "in_process": {"p50_ms": statistics.median(local), "p99_ms": percentile(local, 99)}})
        return results
    finally:
        if close is not None:
            close()
        mesh.stop()


def shipped_triage_at_each_precision(engine: str = "torch") -> dict:
    """The shipped screenshot_triage weights on `engine` (one decision at a time), loaded once
    per PRECISIONS entry."""
    from modalmesh.router.tasks import SHIPPED_WEIGHTS, TASKS, FusionEngine, load_task

    return {precision: load_task(TASKS["screenshot_triage"], str(SHIPPED_WEIGHTS), precision, FusionEngine(engine, calls=1)) for precision in PRECISIONS}


def manifest_examples(spec, manifest: str, scope: str = "in") -> list:
    """The manifest's items of `scope` ("in" or "out") with their cached features."""
    from modalmesh.router.features import FeatureCache
    from modalmesh.router.train import load_examples

    cache = FeatureCache.for_task(spec, manifest)
    try:
        examples, _ = load_examples(spec, manifest, cache, "bench", scope=scope, refuse=False)
    finally:
        cache.close()
    return examples


def answers_alike(tasks: dict, manifest: str) -> dict:
    """Every item of the manifest, in scope and out of it, answered as the router would
    (served.serve: withheld or given) by the two task models of `tasks` (two precisions, or
    two engines): how many get the same answer (label, and given or withheld), and the
    largest difference in confidence."""
    from modalmesh.router.served import serve

    first, second = list(tasks.values())[:2]
    alike, gap, items = 0, 0.0, 0
    for scope in ("in", "out"):
        for example in manifest_examples(first.spec, manifest, scope):
            exact, rounded = (serve(task, example.features, example.tags, audio_tags=example.audio_tags) for task in (first, second))
            items += 1
            alike += (exact.best, exact.answered) == (rounded.best, rounded.answered)
            gap = max(gap, abs(exact.confidence - rounded.confidence))
    return {"items": items, "alike": alike, "max_confidence_gap": gap}


def bench_decisions(tasks: dict, manifest: str, repeats: int, pause_ms: float = 0.0) -> dict:
    """p50 decision time (ms) per number of status-line readings, on the manifest's items,
    for each task model of `tasks` (by name: "<engine> <precision>"), each item timed on
    every one of them, one after the other; `pause_ms`: the CPU idles that long before each
    timed decision."""
    import torch

    from modalmesh.router import status_line
    from modalmesh.router.tasks import decide

    torch.set_num_threads(1)  # the router's own setting
    first = next(iter(tasks.values()))
    spec, pointer = first.spec, first.status_line
    examples = manifest_examples(spec, manifest)
    by_readings: dict[int, dict[str, list[float]]] = {}
    with torch.inference_mode():
        for example in examples:
            count = len(status_line.readings(pointer, example.features))
            row = by_readings.setdefault(min(count, 4), {name: [] for name in tasks})
            for name, task in tasks.items():

                def one(example=example, model=task.model):
                    decide(model, spec, example.features, example.tags, attention=False, pointer=pointer)

                row[name].append(statistics.median(samples_ms(one, repeats, warmup=1, pause_s=pause_ms / 1000)))
    return {
        str(k): {"items": len(next(iter(v.values()))), **{name: statistics.median(times) for name, times in v.items()}} for k, v in sorted(by_readings.items())
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(REPO / "bench-results" / "router.json"))
    parser.add_argument("--rounds", type=int, default=3, help="mesh and in-process blocks, alternating, in one run (default 3)")
    parser.add_argument("--fusion-precision", default="auto", choices=FUSION_PRECISIONS, help="the router's fusion_precision, both sides (default auto)")
    parser.add_argument("--pause-ms", type=float, default=0.0, help="with --decisions: idle this long before each timed decision")
    parser.add_argument("--weights", default="", metavar="DIR", help="a folder of <task>/ weights folders for both sides (default: the shipped ones)")
    parser.add_argument(
        "--engines",
        default=DEFAULT_ENGINE,
        help=f"what runs the fusion model (the router's engine), both sides; several, comma-separated, one after the other (default {DEFAULT_ENGINE})",
    )
    parser.add_argument("--decisions", metavar="MANIFEST", help="time only the decision on this screenshot_triage manifest's items")
    args = parser.parse_args()
    calls = 6 if args.quick else 20
    header("ModalMesh router benchmark")
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        parser.error(f"--engines: each must be one of {', '.join(ENGINES)}")
    if args.decisions:
        loaded = {engine: shipped_triage_at_each_precision(engine) for engine in engines}
        tasks = {f"{engine} {precision}": task for engine, by_precision in loaded.items() for precision, task in by_precision.items()}
        decisions = bench_decisions(tasks, args.decisions, 3 if args.quick else 7, args.pause_ms)
        paused = f", each after {args.pause_ms:g} ms idle" if args.pause_ms else ""
        print(f"\nthe router's decision (tasks.decide, in process, 1 thread{paused}) on {args.decisions}, p50 by status-line readings")
        reference = next(iter(tasks))
        for count, row in decisions.items():
            times = ", ".join(f"{name} {row[name]:6.2f} ms ({row[name] / row[reference]:.2f}x)" for name in tasks)
            print(f"   {count if count != '4' else '4+'} reading(s): {row['items']:4d} items: {times}")
        results: dict = {"decisions": decisions}
        for engine, by_precision in loaded.items():
            alike = answers_alike(by_precision, args.decisions)
            print(
                f"   {engine}: answers alike in float32 and bfloat16 (label, given or withheld; items in and out of scope): {alike['alike']} of "
                f"{alike['items']}, confidence within {alike['max_confidence_gap']:.4f}"
            )
            results[f"alike_{engine}"] = alike
        if len(engines) > 1:
            chosen = fusion_precision(args.fusion_precision)
            across = answers_alike({engine: by_precision[chosen] for engine, by_precision in loaded.items()}, args.decisions)
            alike_line = f"{across['alike']} of {across['items']}, confidence within {across['max_confidence_gap']:.4f}"
            print(f"   answers alike on {' and '.join(engines)} in {chosen}: {alike_line}")
            results["alike_across_engines"] = across
        write_results(args.out, {"machine": machine(), **results})
        return 0
    inputs = make_inputs()
    results, overheads, medians = {}, {}, {}
    for engine in engines:
        rounds = bench_rounds(inputs, calls, args.rounds, args.fusion_precision, args.weights, engine)
        print(
            f"\nscreenshot_triage, text + screenshot + voice message, FULL mode, {calls} sequential requests a round, {args.rounds} round(s), "
            f"fusion_precision {args.fusion_precision}, engine {engine}, weights {args.weights or 'shipped'}"
        )
        ratios = []
        for index, row in enumerate(rounds, 1):
            mesh, local = row["mesh"], row["in_process"]
            ratios.append(mesh["p50_ms"] / local["p50_ms"])
            print(
                f"   round {index}: in process p50 {local['p50_ms']:7.1f} ms (p99 {local['p99_ms']:7.1f})   "
                f"mesh p50 {mesh['p50_ms']:7.1f} ms (p99 {mesh['p99_ms']:7.1f})"
            )
            print(
                f"            mesh / in process {ratios[-1]:.2f}x;   router overhead (total - slowest modality) p50 "
                f"{mesh['router_overhead_p50_ms']:.2f} ms (p99 {mesh['router_overhead_p99_ms']:.2f}), of which the final decision "
                f"(timings_ms.fuse) {mesh['fuse_p50_ms']:.2f} ms"
            )
        overheads[engine] = statistics.median(row["mesh"]["router_overhead_p50_ms"] for row in rounds)
        medians[engine] = statistics.median(ratios)
        print(f"   mesh / in process (p50), median of the rounds  {medians[engine]:.2f}x   (target <= 0.8x)")
        print(f"   router overhead p50, median of the rounds      {overheads[engine]:.2f} ms   (target <= 3 ms p50)")
        results[engine] = {"rounds": rounds, "ratios": ratios, "ratio": medians[engine], "router_overhead_p50_ms": overheads[engine]}
    if len(engines) > 1:
        first = engines[0]
        print("\nrouter overhead p50 by engine: " + ", ".join(f"{e} {overheads[e]:.2f} ms ({overheads[e] / overheads[first]:.2f}x {first})" for e in engines))
    write_results(args.out, {"machine": machine(), "engines": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
