"""Is a request about what the task handles? A check learned from inputs it should not answer.

The applicability check (router/applicability.py) tells a scan or a photo from a
screenshot; a screenshot about other matters is still a screenshot, and where its status
text reads like the task's own ("Build failed with 7 errors" next to training's crash
messages) the heads answer it confidently. Where the training manifest holds out-of-scope
records (`"scope": "out"`: screens and messages about other matters, the task's matters
in other languages), `train` fits a logistic regression that tells them from the task's
own inputs on what the words say:

    v(x) = [ u(message), [message given], u(status paragraph), [screen text given] ]
    P(out of scope | x) = sigmoid(w . v(x) + b)

u: the mean of a text source's token vectors (MiniLM), unit length; the status paragraph
is the one the task's status-line pointer picks. The threshold is the highest score of a
validation input in scope with screen text (none of those would be withheld), and of a
few weight-decay strengths the one whose threshold withholds the most validation inputs
out of scope is kept. An answer whose screen text was read and scores above the
threshold is withheld (tasks.withheld). Only inputs with screen text are judged (messages
alone train it too): a message alone has its own checks (one unlike every validation
message is withheld), and informal wordings of the task's own matters sent alone score as
high as other matters do. Stored beside the weights as `scope.safetensors`; a task trained
without out-of-scope records has none, and nothing is checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

FILE_NAME = "scope.safetensors"
REASON = "the message and screen text read like matters the task does not handle"  # how ScopeCheck.reason begins
SOURCES = ("text", "image_text")  # the message, and the screen text (its status paragraph)
WEIGHT_DECAYS = (1e-3, 3e-3, 1e-2)  # tried at training; validation picks one


def vector(features: dict[str, torch.Tensor], pointer=None) -> torch.Tensor | None:
    """v(x) [2 x (width + 1)] for one input's features (the screen text as every OCR
    paragraph, or already the status paragraph); None where neither source is there."""
    present = [features[s] for s in SOURCES if s in features and features[s].numel()]
    if not present:
        return None
    parts: list[torch.Tensor | None] = []
    width = present[0].shape[-1]
    for source in SOURCES:
        rows = features.get(source)
        if rows is not None and rows.numel():
            rows = rows.float().reshape(-1, rows.shape[-1])
            if source == "image_text" and pointer is not None and rows.shape[0] > 1:
                best = pointer.pick(rows)
                rows = rows[best : best + 1]
            mean = rows.mean(dim=0)
            parts.append(mean / mean.norm().clamp_min(1e-12))
        else:
            parts.append(None)
    return torch.cat([torch.cat([p, torch.ones(1)]) if p is not None else torch.zeros(width + 1) for p in parts])


def has_screen_text(features: dict[str, torch.Tensor]) -> bool:
    """Whether an input's features hold screen text: what the check judges."""
    screen = features.get("image_text")
    return screen is not None and screen.numel() > 0


@dataclass
class ScopeCheck:
    weight: torch.Tensor  # [2 x (width + 1)]
    bias: float
    threshold: float  # scores above it are out of scope

    def score(self, features: dict[str, torch.Tensor], pointer=None) -> float | None:
        """P(out of scope) for one input; None where it has no screen text (a message alone
        is not judged: its own checks apply, tasks.withheld)."""
        if not has_screen_text(features):
            return None
        v = vector(features, pointer)
        if v is None or v.shape[0] != self.weight.shape[0]:
            return None
        return float(torch.sigmoid(v @ self.weight + self.bias))

    def reason(self, features: dict[str, torch.Tensor], pointer=None) -> str:
        """Why the input is out of scope, for tasks.withheld; '' where it is not judged so."""
        score = self.score(features, pointer)
        if score is None or score <= self.threshold:
            return ""
        return f"{REASON} (out-of-scope score {score:.2f}, above {self.threshold:.2f})"

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        save_file({"weight": self.weight.contiguous(), "bias": torch.tensor([self.bias]), "threshold": torch.tensor([self.threshold])}, str(folder / FILE_NAME))


def load(folder: Path | None) -> ScopeCheck | None:
    """The check stored in a task's folder, or None."""
    path = folder / FILE_NAME if folder is not None else None
    if path is None or not path.is_file():
        return None
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
        return ScopeCheck(tensors["weight"].float(), float(tensors["bias"][0]), float(tensors["threshold"][0]))
    except Exception as exc:  # safetensors' own error type, or a tensor missing
        raise ValueError(f"{path}: not a scope check ({str(exc)[:200]})") from None


def _regression(inside: torch.Tensor, outside: torch.Tensor, weight_decay: float) -> tuple[torch.Tensor, float]:
    """Logistic regression, out of scope = 1, the two classes weighted alike (L-BFGS)."""
    x = torch.cat([inside, outside])
    y = torch.cat([torch.zeros(len(inside)), torch.ones(len(outside))])
    weight = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=500)
    balance = torch.tensor(len(inside) / max(len(outside), 1))

    def closure():
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ weight + bias, y, pos_weight=balance) + weight_decay * (weight**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), float(bias.detach())


def fit(
    train_in: list[dict[str, torch.Tensor]],
    train_out: list[dict[str, torch.Tensor]],
    val_in: list[dict[str, torch.Tensor]],
    val_out: list[dict[str, torch.Tensor]],
    pointer=None,
) -> tuple[ScopeCheck | None, dict | None]:
    """The check and what validation says of it ({"val_out_caught", "val_out", "val_in",
    "threshold", "weight_decay"}); (None, None) without out-of-scope inputs in training
    and validation, or without a message or screen text in them."""

    def vectors(items: list[dict[str, torch.Tensor]]) -> torch.Tensor | None:
        found = [v for v in (vector(f, pointer) for f in items) if v is not None]
        return torch.stack(found) if found else None

    tin, tout = vectors(train_in), vectors(train_out)  # messages alone too: they teach what a message says
    judged_in, judged_out = [f for f in val_in if has_screen_text(f)], [f for f in val_out if has_screen_text(f)]
    if tin is None or tout is None or not judged_in or not judged_out:
        return None, None
    best: tuple[int, ScopeCheck, float] | None = None
    with torch.enable_grad():  # training may run under torch.no_grad
        for weight_decay in WEIGHT_DECAYS:
            weight, bias = _regression(tin, tout, weight_decay)
            check = ScopeCheck(weight, bias, 0.0)
            check.threshold = max(float(check.score(f, pointer) or 0.0) for f in judged_in)  # scored as served
            caught = sum(bool(check.reason(f, pointer)) for f in judged_out)
            if best is None or caught > best[0]:
                best = (caught, check, weight_decay)
    assert best is not None
    caught, check, weight_decay = best
    summary = {
        "val_out_caught": caught,
        "val_out": len(judged_out),
        "val_in": len(judged_in),
        "threshold": round(check.threshold, 4),
        "weight_decay": weight_decay,
    }
    return check, summary
