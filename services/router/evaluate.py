"""`modalmesh eval`: how good, how calibrated, and how cheap the router's answers are.

    modalmesh eval --task screenshot_triage --data data/triage/test.jsonl --report reports/triage

Writes report.json, report.md and plots (reliability diagram, confusion matrix, gate
weights per label) to the report folder. Metrics: accuracy, macro-F1, per-class
precision/recall/F1, expected calibration error (15 bins), confusion matrix; for
medical_report also AUC (lesion vs normal), nodule-vs-mass accuracy on lesion cases and
the diameter's mean absolute error.

Routed vs full: each test item is answered (a) FULL, from every source; (b) ROUTED, as
the router's gather loop does it (simulated by router/routing.py from each source's
measured cost); (c) from each single modality, on the items that have it, next to FULL
on those same items (the fair comparison). The latency model assumes modalities overlap
perfectly, which two cores do not give: benchmarks/bench_routing.py times routed and full
through the running mesh.
"""

from __future__ import annotations

import dataclasses

import json
import time
from typing import Any
from pathlib import Path

import numpy as np

from modalmesh.data.generate import task_records
from modalmesh.router.features import FeatureCache
from modalmesh.router.fusion import MODALITIES, MODALITY_SOURCES, SOURCES, modality_gate_weights
from modalmesh.router.served import expected_calibration_error, honesty_metrics, serve
from modalmesh.router.tasks import TaskSpec, decide, spec_of
from modalmesh.router.routing import with_quick_reading, early_answer, route, routing_cases
from modalmesh.router.train import check_input_widths, load_examples, open_trained, quick_readings

SINGLE = {f"{modality} only": sources for modality, sources in MODALITY_SOURCES.items()}


def evaluate(task: str | TaskSpec, data: str, report: str, weights: str = "", cache_dir: str = "") -> dict:
    """`task`: a built-in task's name, or a task file's TaskSpec (`weights` then names its folder)."""
    spec = spec_of(task)
    task = spec.name
    task_model, folder = open_trained(spec, weights)
    model = task_model.model
    manifest = Path(data)
    cache = FeatureCache.for_task(spec, manifest, cache_dir)
    try:  # images the task does not read are kept: they are judged below as the router judges them
        examples, items = load_examples(spec, manifest, cache, "eval", refuse=False)
        outside, _ = load_examples(spec, manifest, cache, "out", scope="out", refuse=False)
    finally:
        cache.close()
    quick = quick_readings(spec, manifest, cache_dir) if task_model.spec.quick else None
    check_input_widths(folder, model, examples)
    read_whole = examples  # every screen paragraph: decide reads them through the status-line pointer
    pointer = task_model.status_line
    labels = np.array([e.label for e in examples])

    def predict(subset, use_measured=True):
        chosen = [{s: f for s, f in e.features.items() if s in subset} for e in examples]
        keep = [i for i, c in enumerate(chosen) if c]
        probabilities = np.full((len(examples), len(spec.labels)), np.nan, dtype=np.float32)
        regression = np.zeros((len(examples), len(spec.regression)), dtype=np.float32)
        gate = np.zeros((len(examples), len(MODALITIES)), dtype=np.float32)
        started = time.perf_counter()
        for i in keep:
            tags = examples[i].tags if "image" in subset else {}  # no scan, no measurement from it
            out, finished_p, finished_r, _, _ = decide(model, spec, chosen[i], tags, use_measured=use_measured, attention=False, pointer=pointer)
            probabilities[i] = finished_p.numpy()
            regression[i] = finished_r.numpy()
            gate[i] = modality_gate_weights(out.gate_weights)[0].numpy()
        fuse_ms = (time.perf_counter() - started) * 1000 / max(1, len(keep))
        return probabilities, regression, gate, keep, fuse_ms

    full_p, full_r, full_gate, _, fuse_ms = predict(SOURCES)
    results: dict[str, Any] = {"task": task, "items": len(examples), "model_version": task_model.version}
    results["full"] = classification_metrics(full_p, labels, spec.labels)
    results["calibration"] = {"ece": expected_calibration_error(full_p, labels)}
    # As served: inputs the task does not read left out, unsure answers withheld (router/served.py).
    served_full = [serve(task_model, e.features, e.tags, audio_tags=e.audio_tags) for e in examples]
    outside_kinds = [(r.get("extra") or {}).get("kind", "") for r in task_records(manifest, task, "out")]  # load_examples' order
    served_outside = [serve(task_model, e.features, e.tags, audio_tags=e.audio_tags) for e in outside]
    results["honesty"] = honesty_metrics(task_model, served_full, labels, served_outside, outside_kinds)
    if "image" in spec.side_outputs:
        results["screen_text"] = screen_text_found(task_model, manifest, task, items, read_whole, full_p, served_full)
    if task == "medical_report":
        results["medical"] = medical_metrics(full_p, full_r, examples, spec)
        # The heads alone, the measurement unused: what a scan without one (a PNG) is answered with.
        heads_p, heads_r, _, _, _ = predict(SOURCES, use_measured=False)
        results["medical_heads_only"] = {
            "accuracy": classification_metrics(heads_p, labels, spec.labels)["accuracy"],
            **medical_metrics(heads_p, heads_r, examples, spec),
        }

    # Routed vs full vs single modality: accuracy and simulated latency.
    cases = routing_cases(model, task_model.spec, examples, items, fuse_ms, pointer=pointer, task=task_model, quick=quick)
    modes = {
        "full": {"accuracy": results["full"]["accuracy"], "mean_latency_ms": float(np.mean([c.full_ms for c in cases]))},
        "routed": {
            **route(cases, task_model.spec.tau, task_model.spec.gamma),
            "tau": task_model.spec.tau,
            "gamma": task_model.spec.gamma,
            "eager": list(task_model.spec.eager),
            "quick": list(task_model.spec.quick),
        },
    }
    # As served in ROUTED mode, the default: an early answer is fused from what had arrived.
    served_routed, held = [], []  # held: answered from the quick reading
    for index, (case, example, full_answer) in enumerate(zip(cases, examples, served_full)):
        early = early_answer(case, task_model.spec.tau, task_model.spec.gamma)
        held.append(early is None and case.quick_holds and quick is not None)
        if held[-1] and quick is not None:
            served_routed.append(serve(task_model, with_quick_reading(example.features, quick[0][index].features), example.tags, audio_tags=example.audio_tags))
        elif early is None:
            served_routed.append(full_answer)
        else:
            arrived = {s: f for s, f in example.features.items() if s in early.sources}
            served_routed.append(serve(task_model, arrived, example.tags if "image" in arrived else {}, audio_tags=example.audio_tags))
    results["honesty_routed"] = honesty_metrics(task_model, served_routed, labels, [])
    if quick is not None and "screen_text" in results:  # the error_text ROUTED states: the quick reading's where it held
        read_items = [quick[1][i] if h else item for i, (h, item) in enumerate(zip(held, items))]
        read = [dataclasses.replace(e, features=with_quick_reading(e.features, q.features)) if h else e for h, e, q in zip(held, examples, quick[0])]
        found = screen_text_found(task_model, manifest, task, read_items, read, full_p, served_routed)
        results["screen_text_routed"] = {**found, "from_quick_reading": sum(held)}
    # As served when a caller sends one input alone (each modality that can answer alone).
    results["honesty_alone"] = {}
    for modality, sources in MODALITY_SOURCES.items():
        having = [i for i, e in enumerate(examples) if modality in e.features]
        if not having or not set(spec.needs) <= {modality}:
            continue
        alone = [
            serve(
                task_model,
                {s: f for s, f in examples[i].features.items() if s in sources},
                examples[i].tags if modality == "image" else {},
                audio_tags=examples[i].audio_tags,
            )
            for i in having
        ]
        truth = np.array([examples[i].truth_alone(modality) for i in having])  # what that input alone shows (manifest's alone_labels)
        results["honesty_alone"][modality] = honesty_metrics(task_model, alone, truth, [])["in_scope"]
    single = {}  # mode -> [N, L] probabilities (NaN where the item lacks the modality)
    for name, subset in SINGLE.items():
        p, _, _, keep, _ = predict(subset)
        single[name] = p
        if keep:
            correct = np.argmax(p[keep], axis=1) == labels[keep]
            lat = [max(items[i].costs_ms.get(s, 0.0) for s in subset) + fuse_ms for i in keep]
            fused = np.argmax(full_p[keep], axis=1) == labels[keep]  # the same items, answered from everything
            modes[name] = {
                "accuracy": float(correct.mean()),
                "items": len(keep),
                "mean_latency_ms": float(np.mean(lat)),
                "fused_accuracy_same_items": float(fused.mean()),
            }
    results["modes"] = modes
    results["gate_by_label"] = {
        label: {m: float(full_gate[labels == k, j].mean()) for j, m in enumerate(MODALITIES)} for k, label in enumerate(spec.labels) if (labels == k).any()
    }
    records = task_records(manifest, task)  # load_examples' order
    results["transcripts"] = transcript_errors(records, items)
    rows = prediction_rows(spec, records, examples, full_p, full_r, single)
    write_report(Path(report), results, full_p, labels, spec, rows)
    return results


def transcript_errors(records: list[dict], items) -> dict | None:
    """Word error rate of the transcripts against what was said (the dataset's `extra.voice`
    or `extra.dictation`), where the manifest has it; None when no item does. A transcript
    the recogniser was unsure of (`transcript_unsure`: not read) counts as nothing heard."""
    from modalmesh.audio.lm import word_errors
    from modalmesh.router.features import configured_asr_engine

    pairs, unsure = [], 0
    for record, item in zip(records, items):
        extra = record.get("extra") or {}
        said = extra.get("voice") or extra.get("dictation")
        if said and record.get("audio") and "transcript" in item.evidence:
            pairs.append((said, item.evidence["transcript"]))
            unsure += "transcript_unsure" in (item.evidence.get("audio_tags") or {})
    if not pairs:
        return None
    wrong = sum(word_errors(said, heard)[0] for said, heard in pairs)
    total = sum(word_errors(said, "")[1] for said, _ in pairs)
    return {
        "clips": len(pairs),
        "not_read": unsure,
        "word_error_rate": wrong / max(1, total),
        "engine": configured_asr_engine(),
        "example": {"said": pairs[0][0], "heard": pairs[0][1]},
    }


def prediction_rows(spec, records: list[dict], examples, probabilities, regression, single: dict) -> list[dict]:
    """One row per item (predictions.jsonl): the answer from everything, and what each
    single modality says where the item has it (None where it does not)."""
    rows = []
    for i, (record, example) in enumerate(zip(records, examples)):
        best = int(np.argmax(probabilities[i]))
        row = {
            "id": record["id"],
            "label": spec.labels[example.label],
            "predicted": spec.labels[best],
            "confidence": round(float(probabilities[i, best]), 4),
            "correct": best == example.label,
            "probabilities": {label: round(float(p), 4) for label, p in zip(spec.labels, probabilities[i])},
            "single": {name: spec.labels[int(np.argmax(p[i]))] if not np.isnan(p[i]).any() else None for name, p in single.items()},
        }
        if spec.regression:
            row["regression"] = {name: round(float(v), 3) for name, v in zip(spec.regression, regression[i])}
            row["truth"] = {name: round(float(v), 3) for name, v, m in zip(spec.regression, example.truth, example.target_mask) if m}
        rows.append(row)
    return rows


def screen_text_found(task_model, manifest: Path, task: str, items, examples, probabilities, served) -> dict:
    """How often the status-line pointer's pick (without one, the line the answer is read
    from, tasks.key_screen_line) holds the screen's message (the dataset's `extra.screen`,
    when the manifest has it), how often it is the message alone, and how often lines with
    error words would hold it; then the answer's `error_text` as the router states it with
    each item's `served` answer (tasks.states_error_text: with a withheld answer only where
    the message was read surely; not for `other`, not for a message out of the task's scope,
    not where the image was not read), given and withheld apart."""
    from modalmesh.router import status_line
    from modalmesh.router.tasks import ERROR_WORDS, key_screen_line, states_error_text

    records = task_records(manifest, task)  # as `items`
    pointer = task_model.status_line
    counts: dict[str, Any] = {"items": 0, "key_line": 0, "message_alone": 0, "picked_right": 0, "withheld": 0, "withheld_wrong": 0, "error_words": 0}
    counts["by"] = "status-line pointer" if pointer else "label support"
    answers = counts["as_served"] = {kind: {"stated": 0, "right": 0, "message_alone": 0} for kind in ("given", "withheld")}
    for record, item, example, p, answer in zip(records, items, examples, probabilities, served):
        lines, message = item.evidence.get("screen_lines") or [], (record.get("extra") or {}).get("screen")
        if not message or not lines or "image_text" not in example.features:
            continue
        counts["items"] += 1
        rows = example.features["image_text"][: len(lines)]
        key = pointer.pick(rows.float()) if pointer is not None else key_screen_line(task_model.model, rows, int(np.argmax(p)))
        right = key is not None and status_line.holds_message(lines[key], message)
        chance = float(pointer.probabilities(rows.float())[key]) if pointer is not None and key is not None else None
        withheld = key is not None and pointer is not None and status_line.unstated(pointer, rows, key, lines[key], chance) != ""  # not stated by the router
        alone = right and key is not None and status_line.is_message(lines[key], message)  # nothing else in it
        counts["picked_right"] += right
        counts["key_line"] += right and not withheld
        counts["message_alone"] += alone and not withheld
        counts["withheld"] += withheld
        counts["withheld_wrong"] += withheld and not right
        counts["error_words"] += any(status_line.holds_message(line, message) for line in lines if ERROR_WORDS.search(line))
        if key is not None and not withheld and "image" in answer.read and states_error_text(task_model.spec.labels[answer.best], answer.reason, chance):
            kind = answers["withheld" if answer.reason else "given"]
            kind["stated"] += 1
            kind["right"] += right
            kind["message_alone"] += alone
    return counts


def served_error_text(counts: dict) -> str:
    """screen_text_found's as-served counts in words."""
    given, withheld = counts["as_served"]["given"], counts["as_served"]["withheld"]
    return (
        f"error_text stated with {given['stated']} given answers of {counts['items']} screenshots, right in {given['right']} "
        f"(the message alone in {given['message_alone']}), and with {withheld['stated']} answers withheld as unsure (the message read surely), "
        f"right in {withheld['right']} "
        f"(alone in {withheld['message_alone']}); none with `other`, a message out of scope or an image not read"
    )


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray, names) -> dict:
    predicted = np.argmax(probabilities, axis=1)
    confusion = np.zeros((len(names), len(names)), dtype=int)
    for truth, guess in zip(labels, predicted):
        confusion[truth, guess] += 1
    per_class = {}
    for k, name in enumerate(names):
        tp = confusion[k, k]
        precision = tp / max(1, confusion[:, k].sum())
        recall = tp / max(1, confusion[k, :].sum())
        f1 = 2 * precision * recall / max(1e-9, precision + recall)
        per_class[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(confusion[k].sum())}
    present = [c for c in per_class.values() if c["support"]]
    return {
        "accuracy": float((predicted == labels).mean()),
        "macro_f1": float(np.mean([c["f1"] for c in present])),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U), ties counted half."""
    pos, neg = scores[positive], scores[~positive]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def medical_metrics(probabilities, regression, examples, spec) -> dict:
    labels = np.array([e.label for e in examples])
    normal = spec.labels.index("normal")
    lesion = labels != normal
    lesion_score = 1.0 - probabilities[:, normal]
    nodule, mass = spec.labels.index("nodule"), spec.labels.index("mass")
    among = lesion
    nodule_vs_mass = np.where(probabilities[among, mass] > probabilities[among, nodule], mass, nodule) == labels[among]
    diameter_index = spec.regression.index("largest_diameter_mm")
    true_diameter = np.array([float(e.truth[diameter_index]) for e in examples])
    mae = np.abs(regression[lesion, diameter_index] - true_diameter[lesion]).mean() if lesion.any() else float("nan")
    return {"auc_lesion_vs_normal": auc(lesion_score, lesion), "nodule_vs_mass_accuracy": float(nodule_vs_mass.mean()), "diameter_mae_mm": float(mae)}


def write_report(folder: Path, results: dict, probabilities, labels, spec, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(results, indent=2))
    (folder / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    full = results["full"]
    lines = [
        f"# {results['task']}: evaluation ({results['items']} items, model {results['model_version']})",
        "",
        f"- accuracy {full['accuracy']:.3f}, macro-F1 {full['macro_f1']:.3f}, ECE {results['calibration']['ece']:.3f}",
    ]
    if "medical" in results:
        m = results["medical"]
        lines.append(
            f"- AUC lesion vs normal {m['auc_lesion_vs_normal']:.3f}, nodule vs mass accuracy "
            f"{m['nodule_vs_mass_accuracy']:.3f}, diameter MAE {m['diameter_mae_mm']:.2f} mm"
        )
        h = results["medical_heads_only"]
        lines.append(
            f"- the heads alone, without the CT measurement (what a PNG scan without its window gets): accuracy {h['accuracy']:.3f}, "
            f"AUC {h['auc_lesion_vs_normal']:.3f}, nodule vs mass {h['nodule_vs_mass_accuracy']:.3f}, "
            f"diameter MAE {h['diameter_mae_mm']:.2f} mm"
        )
    lines += honesty_lines(results["honesty"])
    served_routed = results["honesty_routed"]["in_scope"]
    lines.append(
        f"- as served in ROUTED mode (the default; an early answer from what had arrived): {served_routed['answered']} answered, "
        f"selective accuracy {_number(served_routed['selective_accuracy'])}, wrong answers above 0.95: {served_routed['wrong_above_0.95']}"
    )
    for modality, alone in results.get("honesty_alone", {}).items():
        lines.append(
            f"- as served from the {modality} alone: {alone['answered']} of {alone['items']} answered, "
            f"selective accuracy {_number(alone['selective_accuracy'])}, wrong answers above 0.95: {alone['wrong_above_0.95']}"
        )
    if results.get("transcripts"):
        t = results["transcripts"]
        lines.append(
            f"- transcripts ({t['engine']}): word error rate {t['word_error_rate']:.3f} on {t['clips']} clips, "
            f"{t.get('not_read', 0)} not read (the recogniser unsure) "
            f"(e.g. {t['example']['said']!r} heard as {t['example']['heard']!r})"
        )
    if results.get("screen_text", {}).get("items"):
        t = results["screen_text"]
        lines.append(
            f"- the status message read (the {t['by']}'s pick, what error_text states) holds the screen's message in {t['key_line']} of {t['items']} "
            f"screenshots ({t['key_line'] / max(1, t['items']):.1%}; lines with error words would: {t['error_words']}), "
            f"the message alone (no other text of the screen with it) in {t['message_alone']}"
        )
        if t.get("withheld"):
            stated = t["items"] - t["withheld"]
            lines.append(
                f"- not stated on {t['withheld']} screenshots, the pointer's pick unlike every training status message or less likely than not "
                f"({t['withheld_wrong']} of those picks were wrong); where stated it is right in {t['key_line']} of {stated} "
                f"({t['key_line'] / max(1, stated):.1%}); the pointer picked right in {t['picked_right']} of {t['items']}"
            )
        lines.append(f"- as served in FULL mode: {served_error_text(t)}")
    if results.get("screen_text_routed", {}).get("items"):
        t = results["screen_text_routed"]
        lines.append(
            f"- as served in ROUTED mode, the screen text read quickly first ({t['from_quick_reading']} answered from the quick reading): "
            + served_error_text(t)
        )
    lines += ["", "| mode | items | accuracy | fused, same items | mean latency (ms) |", "|---|---|---|---|---|"]
    for name, mode in results["modes"].items():
        same = f"{mode['fused_accuracy_same_items']:.3f}" if "fused_accuracy_same_items" in mode else ""
        lines.append(f"| {name} | {mode.get('items', results['items'])} | {mode['accuracy']:.3f} | {same} | {mode['mean_latency_ms']:.0f} |")
    routed = results["modes"]["routed"]
    lines += [
        "",
        f"Routed: tau {routed['tau']:g}, gamma {routed['gamma']:g}, side outputs asked for with the base features: "
        f"{'+'.join(routed['eager']) or 'none'}. {routed['early']} of {results['items']} answered before every input was in, "
        f"{routed['early_wrong']} of those wrong (each given with confidence >= tau)."
        + (f" Screen text read quickly first: {routed['from_quick_reading']} answered from the quick reading." if routed.get("quick") else "")
        + " Latencies are simulated from each source's cost recorded at "
        "feature extraction, modalities overlapping perfectly; `benchmarks/bench_routing.py` times routed and "
        "full through the mesh.",
    ]
    lines += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name, c in full["per_class"].items():
        lines.append(f"| {name} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |")
    lines += ["", "Mean gate weight per true label (text / image / audio):", ""]
    for label, weights in results["gate_by_label"].items():
        lines.append(f"- {label}: " + " / ".join(f"{weights[m]:.2f}" for m in MODALITIES))
    lines += ["", "Confusion matrix (rows: truth, columns: prediction; order " + ", ".join(spec.labels) + "):", ""]
    lines += ["    " + " ".join(f"{v:4d}" for v in row) for row in full["confusion"]]
    errors = sorted((r for r in rows if not r["correct"]), key=lambda r: -r["confidence"])
    if errors:
        lines += [
            "",
            f"The most confident errors ({min(10, len(errors))} of {len(errors)}; every item in predictions.jsonl):",
            "",
            "| id | truth | answer | confidence | " + " | ".join(r for r in rows[0]["single"]) + " |",
            "|---|---|---|---|" + "---|" * len(rows[0]["single"]),
        ]
        for r in errors[:10]:
            lines.append(
                f"| {r['id']} | {r['label']} | {r['predicted']} | {r['confidence']:.2f} | " + " | ".join(v or "-" for v in r["single"].values()) + " |"
            )
    try:
        _plots(folder, results, probabilities, labels, spec)
    except ImportError:  # an optional dependency: the figures stand without their plots
        lines += ["", "Plots not drawn: they need matplotlib (pip install 'modalmesh[eval]')."]
    (folder / "report.md").write_text("\n".join(lines) + "\n")


def _number(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def honesty_lines(honesty: dict) -> list[str]:
    """The report's lines on what is answered, withheld and not applicable."""
    inside = honesty["in_scope"]
    lines = [
        f"- as served in FULL mode (threshold {honesty['abstain_below']:g}): {inside['answered']} of {inside['items']} in-scope items "
        f"answered (coverage {inside['coverage']:.3f}), selective accuracy {_number(inside['selective_accuracy'])}, "
        f"ECE of the answers {_number(inside['ece_answered'])}, wrong answers above 0.95: {inside['wrong_above_0.95']}; "
        f"{inside['not_applicable']} found not applicable"
    ]
    if inside["withheld_reasons"]:
        lines.append("- withheld: " + "; ".join(f"{reason} ({count})" for reason, count in inside["withheld_reasons"].items()))
    outside = honesty.get("out_of_scope")
    if outside:
        auroc = ", ".join(f"{m} {v['auroc']:.3f} ({v['in_scope']} vs {v['out_of_scope']})" for m, v in outside["auroc_by_modality"].items())
        lines.append(
            f"- out of scope: {outside['items']} items, {outside['answered']} answered ({outside['answered_above_0.95']} above 0.95), "
            f"{outside['withheld_or_not_applicable']:.3f} withheld or not applicable; "
            f"applicability AUROC by modality: {auroc or 'none checked'}"
        )
        if outside.get("answered_by_kind"):
            lines.append(
                "- out of scope, answered by kind: "
                + ", ".join(f"{kind} {counts['answered']} of {counts['items']}" for kind, counts in outside["answered_by_kind"].items())
            )
        if outside.get("withheld_reasons"):
            lines.append("- out of scope, read and withheld: " + "; ".join(f"{reason} ({count})" for reason, count in outside["withheld_reasons"].items()))
    curve = " ".join(f"{point['threshold']:g}: {point['coverage']:.2f}/{_number(point['accuracy'], 2)}" for point in honesty["risk_coverage"])
    lines.append(f"- coverage/accuracy by confidence threshold: {curve}")
    return lines


def _plots(folder: Path, results, probabilities, labels, spec) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0, 1, 11)
    centers, accuracy = [], []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            centers.append(confidence[inside].mean())
            accuracy.append(correct[inside].mean())
    figure, axis = plt.subplots(figsize=(4, 4))
    axis.plot([0, 1], [0, 1], "--", color="grey")
    axis.plot(centers, accuracy, "o-")
    axis.set(xlabel="confidence", ylabel="accuracy", title=f"reliability (ECE {results['calibration']['ece']:.3f})")
    figure.tight_layout()
    figure.savefig(folder / "reliability.png", dpi=100)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(5, 4))
    axis.imshow(np.array(results["full"]["confusion"]), cmap="Blues")
    axis.set(xticks=range(len(spec.labels)), yticks=range(len(spec.labels)), xlabel="predicted", ylabel="true", title="confusion")
    axis.set_xticklabels(spec.labels, rotation=45)
    axis.set_yticklabels(spec.labels)
    for (i, j), value in np.ndenumerate(np.array(results["full"]["confusion"])):
        axis.text(j, i, str(value), ha="center", va="center")
    figure.tight_layout()
    figure.savefig(folder / "confusion.png", dpi=100)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(6, 3))
    names = list(results["gate_by_label"])
    bottom = np.zeros(len(names))
    for modality in MODALITIES:
        values = np.array([results["gate_by_label"][n][modality] for n in names])
        axis.bar(names, values, bottom=bottom, label=modality)
        bottom += values
    axis.set(ylabel="mean gate weight", title="gate weights per true label")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(folder / "gate_by_label.png", dpi=100)
    plt.close(figure)

    curve = [point for point in results["honesty"]["risk_coverage"] if point["accuracy"] is not None]
    figure, axis = plt.subplots(figsize=(4, 4))
    axis.plot([p["coverage"] for p in curve], [p["accuracy"] for p in curve], "o-")
    for point in curve[::3]:
        axis.annotate(f"{point['threshold']:g}", (point["coverage"], point["accuracy"]), fontsize=8)
    axis.set(xlabel="coverage (share answered)", ylabel="accuracy of the answers", title="selective prediction")
    figure.tight_layout()
    figure.savefig(folder / "risk_coverage.png", dpi=100)
    plt.close(figure)
