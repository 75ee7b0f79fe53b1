"""What the router would answer for an item, computed offline, and how honest that is.

`serve` applies the serving policy to one item's cached features: each modality is judged
by `tasks.not_applicable` (the image's tags, then the reference set), the rest is fused by
`tasks.decide`, and `tasks.withheld_answer` says whether the answer is given. The router calls
the same three functions on a live request, so what `modalmesh eval` reports is what
users get.

`honesty_metrics` scores that on a manifest: coverage and accuracy of the answers given
(selective prediction), calibration, confident errors, and for out-of-scope items (records
with "scope": "out") how many were answered at all and how well each modality's distance
to the training set tells them apart (AUROC).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modalmesh.router import applicability
from modalmesh.router.fusion import MODALITIES, SIDE_SOURCE, modality_of
from modalmesh.router.tasks import AloneReadings, TaskModel, decide, not_applicable, withheld_answer

THRESHOLDS = tuple(round(0.5 + 0.05 * step, 2) for step in range(10))  # the risk-coverage curve's points
CONFIDENT = 0.95  # "no wrong answer above this"


@dataclass(frozen=True)
class Served:
    best: int  # the most probable label; -1 when no input was one the task reads
    confidence: float  # its calibrated probability (0 when nothing was read)
    reason: str  # why the answer is withheld; '' when it is given
    not_applicable: dict[str, str] = field(default_factory=dict)  # modality -> why
    distances: dict[str, float] = field(default_factory=dict)  # modality -> distance to the training inputs
    read: frozenset[str] = frozenset()  # the modalities the answer was read from

    @property
    def answered(self) -> bool:
        return not self.reason


def serve(task: TaskModel, features: dict, tags: dict[str, str], alone: AloneReadings | None = None, audio_tags: dict[str, str] | None = None) -> Served:
    """The router's answer to one item from its features and image tags (see module doc).
    `alone`: the item's readings of each modality alone so far (tasks.AloneReadings), for a
    caller that decides on the same item more than once (routing.routing_cases).
    `audio_tags`: the audio's (whether speech was found in it)."""
    kept, refused, distances = {}, {}, {}
    for modality in MODALITIES:
        sources = {s: f for s, f in features.items() if modality_of(s) == modality}
        if not sources:
            continue
        distance = task.applicability.distance(modality, sources[modality]) if modality in sources else None
        if distance is not None:
            distances[modality] = distance
        judged_tags = tags if modality == "image" else (audio_tags or {}) if modality == "audio" else {}
        reason = not_applicable(task, modality, sources.get(modality), judged_tags, sources.get(SIDE_SOURCE.get(modality, ""))).reason
        if reason:
            refused[modality] = reason
        else:
            kept.update(sources)
    if not kept:
        return Served(-1, 0.0, "nothing the task reads was given", refused, distances)
    read = {modality_of(s) for s in kept}
    image_tags = tags if "image" in read else {}
    decided = decide(task.model, task.spec, kept, image_tags, attention=False, pointer=task.status_line, kept=alone)
    best = int(decided.probabilities.argmax())
    confidence = float(decided.probabilities[best])
    unfamiliar = frozenset(m for m, d in distances.items() if m in read and task.applicability.unfamiliar(m, task.applicability.references[m].applicability(d)))
    reason = withheld_answer(task, read, kept, best, confidence, image_tags, decided.dissent, unfamiliar)
    return Served(best, confidence, reason, refused, distances, frozenset(read))


def _kind(reason: str) -> str:
    """A withholding reason without the item's own numbers, to count alike ones together."""
    return re.sub(r"^confidence [0-9.]+ is below", "confidence below", reason.split(";")[0].split(" (")[0])


def risk_coverage(served: list[Served], labels: np.ndarray) -> list[dict]:
    """Coverage and accuracy of the answers at each confidence threshold (the task's own
    withholding rules but not its threshold applied): what choosing another one would give."""
    curve = []
    for threshold in THRESHOLDS:
        given = [i for i, s in enumerate(served) if s.best >= 0 and s.confidence >= threshold and (s.answered or s.reason.startswith("confidence "))]
        correct = sum(served[i].best == labels[i] for i in given)
        curve.append({"threshold": threshold, "coverage": len(given) / max(1, len(served)), "accuracy": correct / len(given) if given else None})
    return curve


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    return calibration_error(probabilities.max(axis=1), probabilities.argmax(axis=1) == labels, bins)


def calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of answers given with `confidence`, right where `correct`."""
    edges = np.linspace(0, 1, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            error += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(error)


def honesty_metrics(task: TaskModel, in_scope: list[Served], labels: np.ndarray, out_of_scope: list[Served], out_kinds: list[str] | None = None) -> dict:
    """What is answered, withheld and not applicable, in scope and out of it; `out_kinds`:
    each out-of-scope item's kind (the manifest's extra.kind), for answers counted by kind."""
    read = [i for i, s in enumerate(in_scope) if s.best >= 0]
    answered = [i for i in read if in_scope[i].answered]
    wrong = [i for i in answered if in_scope[i].best != labels[i]]

    def ece(indices: list[int]) -> float | None:
        if not indices:
            return None
        confidence = np.array([in_scope[i].confidence for i in indices])
        correct = np.array([in_scope[i].best == labels[i] for i in indices])
        return calibration_error(confidence, correct)

    metrics: dict[str, Any] = {
        "abstain_below": task.abstain_below,
        "applicability_max_distance": {m: task.applicability.max_distance(m) for m in task.applicability.references},
        "in_scope": {
            "items": len(in_scope),
            "not_applicable": len(in_scope) - len(read),
            "answered": len(answered),
            "coverage": len(answered) / max(1, len(in_scope)),
            "selective_accuracy": (len(answered) - len(wrong)) / len(answered) if answered else None,
            "accuracy_if_always_answered": float(np.mean([in_scope[i].best == labels[i] for i in read])) if read else None,
            "ece_read": ece(read),
            "ece_answered": ece(answered),
            "wrong_above_0.95": sum(in_scope[i].confidence > CONFIDENT for i in wrong),
            "withheld_reasons": _counts(_kind(s.reason) for s in in_scope if s.reason),
        },
        "risk_coverage": risk_coverage(in_scope, labels),
    }
    if out_of_scope:
        confident = [s for s in out_of_scope if s.answered]
        metrics["out_of_scope"] = {
            "items": len(out_of_scope),
            "answered": len(confident),
            "answered_above_0.95": sum(s.confidence > CONFIDENT for s in confident),
            "withheld_or_not_applicable": 1 - len(confident) / len(out_of_scope),
            "not_applicable_by_modality": {m: sum(m in s.not_applicable for s in out_of_scope) for m in MODALITIES},
            "withheld_reasons": _counts(_kind(s.reason) for s in out_of_scope if s.reason and s.best >= 0),
            "auroc_by_modality": {},
        }
        if out_kinds and len(out_kinds) == len(out_of_scope) and any(out_kinds):
            by_kind: dict[str, dict[str, int]] = {}
            for kind, served in zip(out_kinds, out_of_scope):
                counts = by_kind.setdefault(kind or "unnamed", {"items": 0, "answered": 0})
                counts["items"] += 1
                counts["answered"] += served.answered
            metrics["out_of_scope"]["answered_by_kind"] = by_kind
        for modality in MODALITIES:
            near = [-s.distances[modality] for s in in_scope if modality in s.distances]
            far = [-s.distances[modality] for s in out_of_scope if modality in s.distances]
            value = applicability.auroc(near, far)
            if value is not None:
                metrics["out_of_scope"]["auroc_by_modality"][modality] = {"auroc": value, "in_scope": len(near), "out_of_scope": len(far)}
    return metrics


def _counts(reasons) -> dict[str, int]:
    counted: dict[str, int] = {}
    for reason in reasons:
        counted[reason] = counted.get(reason, 0) + 1
    return dict(sorted(counted.items(), key=lambda item: -item[1]))
