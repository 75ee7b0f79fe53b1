"""Routed vs full through the real mesh, on a test split: what `modalmesh eval` simulates, measured.

    .venv/bin/python benchmarks/bench_routing.py [--task screenshot_triage] [--limit 40]
    .venv/bin/python benchmarks/bench_routing.py --task screenshot_triage --data data/triage-browser/heldout.jsonl --limit 60

`modalmesh eval` computes routed and full latency from each source's cost recorded at
feature extraction (sources of different modalities assumed to run in parallel). This
script checks that against the running system: the four services on 127.0.0.1 with the
shipped weights, every item of the manifest (or the first --limit) sent once ROUTED and
once FULL, one request at a time (which mode goes first alternates per item), latency as
the client sees it. Prints accuracy, mean and median latency per mode, the routed/full
ratio, how many answers were early (ROUTED answered before every source was in) and how
many came from the quick reading of the screen text (not read again at the full size); on
screenshots without a voice message, the mean latency of those answered from the quick
reading and of those read again, each against FULL's on the same screens.

The aim: routed mean latency well below full (at least 30% lower on screenshots without a
voice message) at no more than 1 point of accuracy lost.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_text import header, machine, task_arguments, write_results  # noqa: E402
from modalmesh.up import free_port  # noqa: E402
from modalmesh.router.tasks import UNCERTAIN  # noqa: E402

MANIFESTS = {"screenshot_triage": REPO / "data" / "triage" / "test.jsonl", "medical_report": REPO / "data" / "medical" / "test.jsonl"}
MAX_SECONDS = 1800  # a bounded load loop: stop sending after this long, report what was measured


def request_fields(record: dict, folder: Path) -> dict:
    from modalmesh.router.features import media_type_of

    fields = {"text": record.get("text", "")}
    for name in ("image", "audio"):
        if record.get(name):
            path = folder / record[name]
            fields[name] = path.read_bytes()
            fields[f"{name}_type"] = media_type_of(str(path))
    if record.get("image_parameters"):
        fields["image_parameters"] = record["image_parameters"]
    return fields


def run(task: str, manifest: Path, limit: int) -> dict:
    from modalmesh.client import RouterClient
    from modalmesh.data.generate import read_manifest
    from modalmesh.up import ORDER, Mesh

    records = [r for r in read_manifest(manifest) if r["task"] == task and r.get("scope", "in") == "in"][: limit or None]
    mesh = Mesh(ports={name: free_port() for name in ORDER}, quiet_logs=True)
    mesh.start()
    rows = []
    try:
        mesh.wait_healthy(timeout=300, progress=None)
        with RouterClient(mesh.address("router"), timeout=120) as client:
            warm = request_fields(records[0], manifest.parent)
            for mode in ("full", "routed"):
                client.analyze(task, mode=mode, **warm)
            started_all = time.monotonic()
            for index, record in enumerate(records):
                if time.monotonic() - started_all > MAX_SECONDS:
                    print(f"   stopped after {MAX_SECONDS} s: {index} of {len(records)} items measured")
                    break
                fields = request_fields(record, manifest.parent)
                row = {"id": record["id"], "label": record["label"], "voice": bool(record.get("audio")), "screenshot": bool(record.get("image"))}
                for mode in ("full", "routed") if index % 2 == 0 else ("routed", "full"):
                    started = time.perf_counter()
                    answer = client.analyze(task, mode=mode, **fields)
                    timings = answer["timings_ms"]
                    row[mode] = {
                        "ms": (time.perf_counter() - started) * 1000,
                        # Where the router's time went: the image modality's call (with its screen
                        # text's vectors), then deciding and the answer's words after the last encoder.
                        "image_ms": answer["modalities"].get("image", {}).get("latency_ms", 0.0),
                        "after_encoders_ms": timings.get("encode", 0.0)
                        - max([m.get("latency_ms", 0.0) for m in answer["modalities"].values()] or [0.0])
                        + timings.get("fuse", 0.0)
                        + timings.get("heads", 0.0),
                        "label": answer["label"],
                        "early": any(r["status"] == "skipped" or "not requested" in r["reason"] for r in answer["modalities"].values()),
                        "quick": "read at the quick detection size" in answer["modalities"].get("image", {}).get("reason", ""),
                    }
                rows.append(row)
                if (index + 1) % 10 == 0:
                    print(f"   {index + 1}/{len(records)} items", flush=True)
    finally:
        mesh.stop()
    return {**summarize(rows), "rows": rows}  # each item's figures, for a closer look


def summarize(rows: list[dict], groups: bool = True) -> dict:
    """Accuracy and latency per mode; with `groups`, also for the items with a voice message
    and those without (where only what the screen needs can be saved)."""
    result: dict = {"items": len(rows)}
    for mode in ("full", "routed"):
        ms = [r[mode]["ms"] for r in rows]
        result[mode] = {
            "accuracy": statistics.fmean(r[mode]["label"] == r["label"] for r in rows),
            "answered": sum(r[mode]["label"] != UNCERTAIN for r in rows),
            "answered_wrong": sum(r[mode]["label"] not in (UNCERTAIN, r["label"]) for r in rows),
            "mean_ms": statistics.fmean(ms),
            "median_ms": statistics.median(ms),
            "image_ms": statistics.fmean(r[mode].get("image_ms", 0.0) for r in rows),
            # ROUTED: on the screens answered from the quick reading (a second reading would count here)
            "after_encoders_ms": statistics.fmean([r[mode].get("after_encoders_ms", 0.0) for r in rows if mode == "full" or r[mode].get("quick")] or [0.0]),
        }
    # ROUTED's screens by how their screen text was read: from the quick reading alone, or
    # read again at the full size (the quick reading did not hold), each against FULL.
    quick = [r for r in rows if r["routed"].get("quick")]
    again = [r for r in rows if r.get("screenshot") and not r["routed"].get("quick") and not r["routed"]["early"]]
    for name, chosen in (("from_quick_reading", quick), ("read_again", again)):
        if chosen:
            result[name] = {"items": len(chosen), **{mode: statistics.fmean(r[mode]["ms"] for r in chosen) for mode in ("routed", "full")}}
    result["early"] = sum(r["routed"]["early"] for r in rows)
    result["quick"] = sum(r["routed"].get("quick", False) for r in rows)
    result["ratio_mean"] = result["routed"]["mean_ms"] / result["full"]["mean_ms"]
    if groups:  # the target's measure: screenshots without a voice message (no message-only requests)
        for name, keep in (
            ("with_voice", lambda r: r.get("voice")),
            ("without_voice", lambda r: not r.get("voice")),
            ("screenshot_without_voice", lambda r: r.get("screenshot") and not r.get("voice")),
        ):
            chosen = [r for r in rows if keep(r)]
            if chosen:
                result[name] = summarize(chosen, groups=False)
    return result


def main() -> int:
    args = task_arguments(__doc__.splitlines()[0], MANIFESTS, "routing.json", "items", data=True)
    if args.data and len(args.task or ()) != 1:
        print("--data needs exactly one --task")
        return 2
    header("ModalMesh routing benchmark: routed vs full through the mesh")
    results = {}
    for task in args.task or sorted(MANIFESTS):
        manifest = Path(args.data).resolve() if args.data else MANIFESTS[task]
        if not manifest.is_file():
            print(f"{task}: {manifest} missing; `make weights` (or `modalmesh data generate`) writes it")
            return 2
        print(f"\n{task}: {manifest.relative_to(REPO)}, one request at a time", flush=True)
        result = results[task] = run(task, manifest, args.limit)
        for mode in ("full", "routed"):
            m = result[mode]
            print(
                f"   {mode:6s}  accuracy {m['accuracy']:.3f}   mean {m['mean_ms']:7.1f} ms   median {m['median_ms']:7.1f} ms   "
                f"answered {m['answered']}, {m['answered_wrong']} of them wrong"
            )
        loss = (result["full"]["accuracy"] - result["routed"]["accuracy"]) * 100
        print(
            f"   routed/full mean latency {result['ratio_mean']:.2f} ({(1 - result['ratio_mean']) * 100:.0f}% lower; "
            f"target >= 30%), accuracy loss {loss:+.1f} points (target <= 1), "
            f"{result['early']}/{result['items']} answered early, {result['quick']} from the quick screen text reading"
        )
        for name in ("with_voice", "without_voice", "screenshot_without_voice"):
            if name in result:
                part = result[name]
                print(
                    f"   {name.replace('_', ' '):24s} ({part['items']} items): routed/full mean latency {part['ratio_mean']:.2f} "
                    f"({part['routed']['mean_ms']:.0f} vs {part['full']['mean_ms']:.0f} ms), accuracy "
                    f"{part['routed']['accuracy']:.3f} vs {part['full']['accuracy']:.3f}"
                )
        if "screenshot_without_voice" in result:
            part = result["screenshot_without_voice"]
            print("   where the time went on screenshots without a voice message (means, routed vs full):")
            print(
                f"      image modality (the vision call and its screen text's vectors) {part['routed']['image_ms']:.0f} vs {part['full']['image_ms']:.0f} ms; "
                f"the router after the last encoder answered (deciding, judging the quick reading, the answer's words; "
                f"ROUTED on the screens answered from the quick reading) "
                f"{part['routed']['after_encoders_ms']:.1f} vs {part['full']['after_encoders_ms']:.1f} ms"
            )
            for name in ("from_quick_reading", "read_again"):
                if name in part:
                    group = part[name]
                    print(
                        f"      {group['items']} {name.replace('_', ' ')}: {group['routed']:.0f} vs {group['full']:.0f} ms "
                        f"({group['routed'] / group['full']:.2f})"
                    )
    write_results(args.out, {"machine": machine(), **results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
