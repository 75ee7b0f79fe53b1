"""`modalmesh eval`: how good, how calibrated, and how cheap the router's answers are.

    modalmesh eval --task screenshot_triage --data data/triage/test.jsonl --report reports/triage

Writes report.json, report.md and plots (reliability diagram, confusion matrix, gate
weights per label) to the report folder. Metrics: accuracy, macro-F1, per-class
precision/recall/F1, expected calibration error (15 bins), confusion matrix; for
medical_report also AUC (lesion vs normal), nodule-vs-mass accuracy on lesion cases and
the diameter's mean absolute error.

Routed vs full: each test item is answered (a) FULL, from every source; (b) ROUTED, as
the router does it: first from the base features (text, image, audio), then, unless the
answer is confident (>= tau) and the gate predicts the outstanding side outputs would
weigh < gamma, from everything; (c) from each single modality. Latency per item is
computed from the measured cost of each source (recorded when its features were
extracted): sources of different modalities run in parallel, a modality's side output
(OCR, transcript) after its base features; plus the measured fusion time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from modalmesh.router.features import FeatureCache, LocalEncoders
from modalmesh.router.fusion import MODALITIES, SOURCES, modality_gate_weights
from modalmesh.router.tasks import TASKS, load_task_folder
from modalmesh.router.train import load_examples

BASE = ("text", "image", "audio")
SIDE = {"image": "image_text", "audio": "audio_text"}
SINGLE = {"text only": ("text",), "image only": ("image", "image_text"), "audio only": ("audio", "audio_text")}


def evaluate(task: str, data: str, report: str, weights: str = "", cache_dir: str = "") -> dict:
    from modalmesh.router.server import SHIPPED_WEIGHTS

    spec = TASKS[task]
    # `weights`: a task folder (model.safetensors inside) or a weights folder (<task>/ inside).
    folder = Path(weights) if weights else SHIPPED_WEIGHTS / task
    if weights and not (folder / "model.safetensors").is_file():
        folder = folder / task
    task_model = load_task_folder(spec, folder)
    model = task_model.model.eval()
    manifest = Path(data)
    cache = FeatureCache(cache_dir or manifest.parent / ".features", lambda: LocalEncoders(ocr="image" in spec.side_outputs),
                         side=spec.side_outputs)
    try:
        examples, items = load_examples(task, manifest, cache, "eval")
    finally:
        cache.close()
    labels = np.array([e.label for e in examples])

    def predict(subset):
        chosen = [{s: f for s, f in e.features.items() if s in subset} for e in examples]
        keep = [i for i, c in enumerate(chosen) if c]
        probabilities = np.full((len(examples), len(spec.labels)), np.nan, dtype=np.float32)
        regression = np.zeros((len(examples), len(spec.regression)), dtype=np.float32)
        gate = np.zeros((len(examples), len(MODALITIES)), dtype=np.float32)
        started = time.perf_counter()
        with torch.no_grad():
            for i in keep:
                out = model(model.embed([chosen[i]]))
                probabilities[i] = out.probabilities[0].numpy()
                regression[i] = out.regression[0].numpy()
                gate[i] = modality_gate_weights(out.gate_weights)[0].numpy()
        fuse_ms = (time.perf_counter() - started) * 1000 / max(1, len(keep))
        return probabilities, regression, gate, keep, fuse_ms

    full_p, full_r, full_gate, _, fuse_ms = predict(SOURCES)
    results = {"task": task, "items": len(examples), "model_version": task_model.version}
    results["full"] = classification_metrics(full_p, labels, spec.labels)
    results["calibration"] = {"ece": expected_calibration_error(full_p, labels)}
    if task == "medical_report":
        results["medical"] = medical_metrics(full_p, full_r, examples, spec)

    # Routed vs full vs single modality: accuracy and simulated latency.
    base_p, _, _, _, _ = predict(BASE)
    routed_correct, routed_latency, full_latency, requested = [], [], [], 0
    for i, (example, item) in enumerate(zip(examples, items)):
        costs = item.costs_ms
        present_base = [m for m in BASE if m in example.features]
        base_latency = max(costs.get(m, 0.0) for m in present_base)
        full_latency.append(max(costs.get(m, 0.0) + costs.get(SIDE.get(m, ""), 0.0) for m in present_base) + fuse_ms)
        outstanding = [SIDE[m] for m in present_base if m in SIDE and m in spec.side_outputs]
        confident = float(np.max(base_p[i])) >= spec.tau
        weight = outstanding_weight(model, {s: example.features[s] for s in present_base}, outstanding) if outstanding else 0.0
        if not outstanding or (confident and weight < spec.gamma):
            routed_correct.append(int(np.argmax(base_p[i])) == example.label)
            routed_latency.append(base_latency + fuse_ms)
        else:
            requested += 1
            routed_correct.append(int(np.argmax(full_p[i])) == example.label)
            routed_latency.append(base_latency + max(costs.get(s, 0.0) for s in outstanding) + 2 * fuse_ms)
    modes = {
        "full": {"accuracy": results["full"]["accuracy"], "mean_latency_ms": float(np.mean(full_latency))},
        "routed": {"accuracy": float(np.mean(routed_correct)), "mean_latency_ms": float(np.mean(routed_latency)),
                   "side_outputs_requested": requested},
    }
    for name, subset in SINGLE.items():
        p, _, _, keep, _ = predict(subset)
        if keep:
            correct = np.argmax(p[keep], axis=1) == labels[keep]
            lat = [max(items[i].costs_ms.get(s, 0.0) for s in subset) + fuse_ms for i in keep]
            modes[name] = {"accuracy": float(correct.mean()), "items": len(keep), "mean_latency_ms": float(np.mean(lat))}
    results["modes"] = modes
    results["gate_by_label"] = {
        label: {m: float(full_gate[labels == k, j].mean()) for j, m in enumerate(MODALITIES)}
        for k, label in enumerate(spec.labels) if (labels == k).any()
    }
    write_report(Path(report), results, full_p, labels, spec)
    return results


def outstanding_weight(model, features, outstanding) -> float:
    with torch.no_grad():
        inputs = model.embed([features])
        out = model(inputs)
        mask = torch.tensor([[s in outstanding for s in SOURCES]])
        return float(model.gate.outstanding_weight(out.gate_scores, inputs.present, mask)[0])


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
    return {"accuracy": float((predicted == labels).mean()), "macro_f1": float(np.mean([c["f1"] for c in present])),
            "per_class": per_class, "confusion": confusion.tolist()}


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            error += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(error)


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
    true_diameter = np.array([float(e.targets[diameter_index]) for e in examples])
    mae = np.abs(regression[lesion, diameter_index] - true_diameter[lesion]).mean() if lesion.any() else float("nan")
    return {"auc_lesion_vs_normal": auc(lesion_score, lesion), "nodule_vs_mass_accuracy": float(nodule_vs_mass.mean()),
            "diameter_mae_mm": float(mae)}


def write_report(folder: Path, results: dict, probabilities, labels, spec) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(results, indent=2))
    full = results["full"]
    lines = [f"# {results['task']}: evaluation ({results['items']} items, model {results['model_version']})", "",
             f"- accuracy {full['accuracy']:.3f}, macro-F1 {full['macro_f1']:.3f}, ECE {results['calibration']['ece']:.3f}"]
    if "medical" in results:
        m = results["medical"]
        lines.append(f"- AUC lesion vs normal {m['auc_lesion_vs_normal']:.3f}, nodule vs mass accuracy "
                     f"{m['nodule_vs_mass_accuracy']:.3f}, diameter MAE {m['diameter_mae_mm']:.2f} mm")
    lines += ["", "| mode | accuracy | mean latency (ms) |", "|---|---|---|"]
    for name, mode in results["modes"].items():
        lines.append(f"| {name} | {mode['accuracy']:.3f} | {mode['mean_latency_ms']:.0f} |")
    lines += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name, c in full["per_class"].items():
        lines.append(f"| {name} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |")
    lines += ["", "Mean gate weight per true label (text / image / audio):", ""]
    for label, weights in results["gate_by_label"].items():
        lines.append(f"- {label}: " + " / ".join(f"{weights[m]:.2f}" for m in MODALITIES))
    lines += ["", "Confusion matrix (rows: truth, columns: prediction; order " + ", ".join(spec.labels) + "):", ""]
    lines += ["    " + " ".join(f"{v:4d}" for v in row) for row in full["confusion"]]
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    _plots(folder, results, probabilities, labels, spec)


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
