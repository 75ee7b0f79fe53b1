"""Is an input the kind of input a task reads? A nearest-neighbour check fitted at training.

A task's heads answer confidently on anything, including a head CT sent to the chest-CT
task or a photo sent to triage. Before an input counts as evidence, the router compares
it with what the task was trained on (Sun et al., 2022, "Out-of-distribution detection
with deep nearest neighbors"), per modality m:

    z(x)    = pool(x) / ||pool(x)||             pool: the mean of the encoder's tokens
    d(x)    = 1 - z(x) . z_k(x)                 z_k: the k-th nearest training input in B_m
    a(x)    = (1 + #{v in V_m : d(v) >= d(x)}) / (1 + |V_m|)

B_m holds the training inputs' z, V_m the validation inputs' distances d(v). a(x), the
share of validation inputs at least as far from the training set as x, is reported: how
typical the input is. The input is not applicable when d(x) > margin * max(V_m): much
farther than any validation input. Validation comes from the same generator as training,
so new inputs of the right kind (another app's screens, another scanner's slices) lie
beyond every validation input too (a(x) at its minimum), mostly within 3 times its
farthest (pages a real browser drew: up to 4.4 times); inputs of another kind (a scan
sent to triage, a photo, a screenshot sent to the CT task, a photograph sent to a
product-photo task) lie at 3.4 times it and more. The margin (MARGIN, 3) refuses the
second kind at the cost of some of the first (docs/limits.md).

The label each training input shows is kept with it (what that input alone shows where
the manifest says: a misleading message is labelled by what it says, a vague one by no
label). An answer read from one modality alone is checked against its k nearest
training inputs too (`Applicability.neighbours`): where most of them show another label
than the answer, or none, the heads have read the input unlike
the inputs it resembles (a message in new words: "tracking hasnt moved in a week" read as
`login`, its nearest training messages all `shipping`), and the answer is withheld
(tasks.withheld) for the modalities where, on validation, the answers so flagged were
wrong more often than the task's 3% risk bound explains (FusionConfig.neighbour_precision).

The reference set is stored beside the task's weights (`applicability.safetensors`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

FILE_NAME = "applicability.safetensors"
MARGIN = 3.0
DEFAULT_NEIGHBOUR = 5
MIN_VALIDATION = 50
CHECKED_SOURCES = ("text", "image", "audio")  # the base features of each modality (side outputs follow their modality)


def pooled(features: torch.Tensor) -> torch.Tensor:
    """An encoder's output ([tokens, width] or [width]) as one unit vector [width]."""
    vector = features.float().reshape(-1, features.shape[-1]).mean(dim=0)
    return vector / vector.norm().clamp_min(1e-12)


@dataclass
class Reference:
    """One modality's reference set: training vectors and sorted validation distances."""

    bank: torch.Tensor  # [N, width], unit rows
    validation: torch.Tensor  # [V], ascending
    # [N] long: the label index each training input shows (-1: none of the task's labels,
    # a message that names no problem); None in files written without them.
    labels: torch.Tensor | None = None

    def nearest(self, vectors: torch.Tensor, neighbour: int):
        """The similarities and bank rows of each unit row of `vectors`' k nearest bank rows
        (k: `neighbour`, at most the bank's size), nearest first: a topk result [M, k]."""
        return (vectors.float() @ self.bank.float().T).topk(min(neighbour, self.bank.shape[0]), dim=1)

    def distance(self, vectors: torch.Tensor, neighbour: int) -> torch.Tensor:
        """[M] cosine distance of each unit row of `vectors` to its k-th nearest bank row."""
        return (1.0 - self.nearest(vectors, neighbour).values[:, -1]).clamp_min(0.0)

    def nearest_labels(self, vector: torch.Tensor, neighbour: int) -> tuple[int, int, int] | None:
        """(the label most of the `neighbour` nearest training inputs show, -1 for none of
        the task's; how many of them do; how many were asked) for one unit vector; None
        without labels."""
        if self.labels is None:
            return None
        indices = self.nearest(vector[None], neighbour).indices[0]
        counts = torch.bincount(self.labels[indices] + 1)  # index 0: no label
        return int(counts.argmax()) - 1, int(counts.max()), int(indices.numel())

    def applicability(self, distance: float) -> float:
        """The share of validation distances at least `distance`, with one added to both counts."""
        farther = int((self.validation >= distance).sum())
        return (1 + farther) / (1 + self.validation.numel())


@dataclass
class Applicability:
    references: dict[str, Reference] = field(default_factory=dict)
    neighbour: int = DEFAULT_NEIGHBOUR
    margin: float = MARGIN

    def max_distance(self, source: str) -> float | None:
        """The distance past which an input of `source` is not applicable; None when unchecked."""
        reference = self.references.get(source)
        if reference is None or reference.validation.numel() == 0:
            return None
        return self.margin * float(reference.validation.max())

    def distance(self, source: str, features: torch.Tensor) -> float | None:
        """d(x) for one input's features; None when the task has no reference for `source`."""
        reference = self.references.get(source)
        if reference is None or features.numel() == 0:
            return None
        return float(reference.distance(pooled(features)[None], self.neighbour)[0])

    def score(self, source: str, features: torch.Tensor) -> float | None:
        """a(x) for one input's features; None when the task has no reference for `source`."""
        distance = self.distance(source, features)
        return None if distance is None else self.references[source].applicability(distance)

    def unfamiliar(self, source: str, score: float | None) -> bool:
        """Whether an input with applicability `score` lies farther from the training inputs
        than every validation input of `source` (the lowest score there is): nothing the
        task was checked on is like it, whether or not it is past the margin."""
        reference = self.references.get(source)
        if score is None or reference is None or reference.validation.numel() == 0:
            return False
        return score <= 1.0 / (1 + reference.validation.numel()) + 1e-9

    def neighbours(self, source: str, features: torch.Tensor) -> tuple[int, int, int] | None:
        """For one input of `source`: (the label most of its nearest training inputs show,
        -1 for none of the task's; how many of them do; how many were asked); None where
        unchecked or unlabelled."""
        reference = self.references.get(source)
        if reference is None or features.numel() == 0:
            return None
        return reference.nearest_labels(pooled(features), self.neighbour)

    def disagrees(self, source: str, features: torch.Tensor, label: int) -> tuple[int, int, int] | None:
        """The nearest training inputs' verdict (as `neighbours`) when most of them show
        another label than `label`, or none, else None."""
        verdict = self.neighbours(source, features)
        if verdict is None or verdict[0] == label or verdict[1] <= verdict[2] // 2:
            return None
        return verdict

    def judge(self, source: str, features: torch.Tensor) -> tuple[float | None, str]:
        """(a(x), or None where not checked; why the input is not applicable, or '')."""
        distance = self.distance(source, features)
        if distance is None:
            return None, ""
        score = self.references[source].applicability(distance)
        limit = self.max_distance(source)
        if limit is not None and distance > limit:
            return score, (f"unlike the inputs the task was trained on (distance {distance:.3f} to them, more than {limit:.3f}; applicability {score:.3f})")
        return score, ""

    # -- storage -----------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        tensors = {}
        for source, reference in self.references.items():
            tensors[f"{source}.bank"] = reference.bank.to(torch.float16).contiguous()
            tensors[f"{source}.validation"] = reference.validation.float().contiguous()
            if reference.labels is not None:
                tensors[f"{source}.labels"] = reference.labels.long().contiguous()
        save_file(tensors, str(folder / FILE_NAME), metadata={"neighbour": str(self.neighbour), "margin": json.dumps(self.margin)})

    @classmethod
    def load(cls, folder: Path | None) -> "Applicability":
        """The reference set in `folder`; an empty one (every input applicable) when there is none."""
        path = folder / FILE_NAME if folder is not None else None
        if path is None or not path.is_file():
            return cls()
        from safetensors import safe_open

        references: dict[str, dict[str, torch.Tensor]] = {}
        with safe_open(str(path), framework="pt") as stored:
            metadata = stored.metadata() or {}
            for key in stored.keys():
                source, part = key.rsplit(".", 1)
                references.setdefault(source, {})[part] = stored.get_tensor(key)
        return cls(
            references={
                s: Reference(parts["bank"].float(), parts["validation"].float().sort().values, parts.get("labels"))
                for s, parts in references.items()
                if {"bank", "validation"} <= set(parts)
            },
            neighbour=int(metadata.get("neighbour", DEFAULT_NEIGHBOUR)),
            margin=float(json.loads(metadata.get("margin", str(MARGIN)))),
        )


def fit(
    train: list[dict[str, torch.Tensor]],
    validation: list[dict[str, torch.Tensor]],
    neighbour: int = DEFAULT_NEIGHBOUR,
    margin: float = MARGIN,
    labels: list[int] | None = None,
    shown: list[dict[str, int]] | None = None,
) -> Applicability:
    """The reference set from training and validation items' features (source -> tensor),
    with the training items' `labels` (label indices, one per training item) when given:
    per source, the label that input alone shows where `shown` (one {source: label index,
    -1 for none} per training item, the manifest's alone_labels) says, else the item's.
    A source needs more than `neighbour` training and at least MIN_VALIDATION validation items
    to be checked: with fewer, the validation inputs' largest distance says too little."""
    references: dict[str, Reference] = {}
    for source in CHECKED_SOURCES:
        bank = [pooled(item[source]) for item in train if source in item]
        held_out = [pooled(item[source]) for item in validation if source in item]
        if len(bank) <= neighbour or len(held_out) < MIN_VALIDATION:
            continue
        said = shown or [{} for _ in train]
        kept = torch.tensor([own.get(source, label) for item, label, own in zip(train, labels, said) if source in item]) if labels is not None else None
        reference = Reference(torch.stack(bank), torch.empty(0), kept)
        reference.validation = reference.distance(torch.stack(held_out), neighbour).sort().values
        references[source] = reference
    return Applicability(references, neighbour, margin)


def auroc(in_scope: list[float], out_of_scope: list[float]) -> float | None:
    """Area under the ROC curve of telling out-of-scope from in-scope inputs by a lower
    score (pass negated distances; ties count half); None when either side is empty."""
    if not in_scope or not out_of_scope:
        return None
    inside, outside = torch.tensor(in_scope), torch.tensor(out_of_scope)
    greater = (inside[:, None] > outside[None, :]).float().sum()
    ties = (inside[:, None] == outside[None, :]).float().sum()
    return float((greater + 0.5 * ties) / (inside.numel() * outside.numel()))
