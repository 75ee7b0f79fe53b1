"""Which paragraph of a screenshot is its status message: a small pointer trained on the
generators' ground truth, stored beside a task's weights (`status_line.safetensors`).

A screen holds a heading, navigation, order details, banners and one status message ("Your
card was declined", "Refund pending - allow up to 14 days"). The answer's `error_text` is
that message. Each OCR paragraph (one text vector, router/pipeline.py) gets a score from a
two-layer network over its text vector; the highest-scoring paragraph is the message.
Training: for every training screenshot, the paragraph that holds the message the generator
drew (`extra.screen` in the manifest) is the target of a softmax over the screen's
paragraphs. A screen with no paragraph holding it (OCR missed it) is left out.

A task with a pointer also *reads* the screen through it (`readings`): the fusion model
gets one paragraph's vector as the screen text, not every paragraph's, so the furniture
around a message (an e-mail's greeting and sign-off, a shop's navigation, order details)
cannot outvote it. The fusion model is trained on the message paragraph the pointer picks;
an answer is the average of the fusion model's answers over the paragraphs the pointer
finds likely, weighted by how likely (the status line is not observed, so it is summed
out). The pointer's probabilities are temperature-scaled on validation screens like the
classifier's, but never sharpened (`calibrate`). When the pointer is sure, this is its
top paragraph's answer; when it hesitates (a message worded as no training screen is),
the answer carries that doubt.
Training, evaluation and the router read the screen the same way (tasks.decide).

The pointer scores each paragraph alone, so on a layout it has never seen it can be sure
of a paragraph that is no status message at all (a mail client's folder list). It keeps the
status messages of its training screens (`messages`, unit vectors) and the similarity below
which a pick is unlike all of them (`familiar_from`: the similarity to the nearest of them
that FAMILIAR_KEEP of the validation screens' right picks reach). The answer's
`error_text` is withheld where the pick is less similar than that (`unfamiliar`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from modalmesh.router.fusion import fit_log_temperature

log = logging.getLogger(__name__)

FILE_NAME = "status_line.safetensors"
HIDDEN = 64


READINGS_MASS, READINGS_MAX = 0.99, 8  # the paragraphs an answer averages over: this much probability, at most this many
FAMILIAR_KEEP = 0.97  # the share of validation's right picks `familiar_from` lets through
FAMILIAR_MIN_PICKS = 30  # fewer right validation picks than this: no familiarity check


class StatusLine(nn.Module):
    """Scores paragraphs: [P, width] text vectors -> [P] logits (temperature-scaled)."""

    net: nn.Sequential
    log_temperature: torch.Tensor
    messages: torch.Tensor  # [M, width] the training screens' status messages, unit vectors (M = 0: no check)
    familiar_from: torch.Tensor  # a pick's similarity to the nearest of them below which it is unfamiliar

    def __init__(self, width: int, hidden: int = HIDDEN, messages: int = 0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.register_buffer("log_temperature", torch.zeros(()))
        self.register_buffer("messages", torch.zeros(messages, width, dtype=torch.float16))
        self.register_buffer("familiar_from", torch.tensor(-1.0))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.net(rows).squeeze(-1) / self.log_temperature.exp()

    def probabilities(self, rows: torch.Tensor) -> torch.Tensor:
        """[P] rows -> [P]: how likely each paragraph is the status message."""
        with torch.inference_mode():
            return torch.softmax(self(rows.float()), dim=0)

    def similarity(self, row: torch.Tensor) -> float | None:
        """[width] -> the cosine similarity to the nearest training status message; None
        for a pointer without them."""
        if self.messages.shape[0] == 0:
            return None
        with torch.inference_mode():
            return float((nn.functional.normalize(row.float(), dim=0) @ self.messages.float().T).max())

    def unfamiliar(self, row: torch.Tensor) -> float | None:
        """The pick `row`'s similarity to the nearest training status message where it is
        below `familiar_from` (unlike every status message the pointer was trained on);
        None where it is not, or the pointer has no check."""
        similarity = self.similarity(row)
        return similarity if similarity is not None and similarity < float(self.familiar_from) else None

    @property
    def checks_familiarity(self) -> bool:
        """Whether the pointer judges picks against its training status messages (`unfamiliar`)."""
        return self.messages.shape[0] > 0 and float(self.familiar_from) > -1.0

    def pick(self, rows: torch.Tensor) -> int | None:
        """The paragraph most likely to be the status message; None for a screen without text."""
        if rows.shape[0] == 0:
            return None
        with torch.inference_mode():
            return int(self(rows).argmax())


def unlike(pointer: StatusLine, rows: torch.Tensor, index: int, line: str) -> str:
    """Why the paragraph `index` (OCR text `line`) is not stated as the screen's status
    message: it is unlike every status message the pointer was trained on; '' where it is
    not (or the pointer has no check)."""
    similarity = pointer.unfamiliar(rows[index])
    if similarity is None:
        return ""
    return (
        f"the likeliest status paragraph ({_shown(line)!r}) is unlike every status message the task was trained on "
        f"(similarity {similarity:.2f} to the nearest, below {float(pointer.familiar_from):.2f})"
    )


# A pick the pointer gives less than this chance is not stated as the screen's status message:
# it is more likely not the message than the message. On validation no right pick is below it.
STATED_FROM = 0.5
# From this chance the pointer's pick counts as read surely: a quick reading of the screen
# text holds on it (routing.quick_reading_holds), and an answer withheld as unsure of its
# category still states it (tasks.states_error_text).
READ_SURELY = 0.9


def unstated(pointer: StatusLine, rows: torch.Tensor, index: int, line: str, chance: float | None = None) -> str:
    """Why the paragraph `index` of the screen's paragraphs `rows` (OCR text `line`) is not
    stated as its status message (the answer's `error_text`): it is unlike every status
    message the pointer was trained on (`unlike`), or the pointer gives it less than
    STATED_FROM (`chance`, where the caller has it already); '' where it is stated. The
    router and `modalmesh eval` both judge so."""
    reason = unlike(pointer, rows, index, line)
    if reason:
        return reason
    chance = float(pointer.probabilities(rows)[index]) if chance is None else chance
    if chance >= STATED_FROM:
        return ""
    return f"no paragraph is more likely than not the status message (the likeliest, {_shown(line)!r}, at {chance:.2f})"


def read_surely(pointer: StatusLine, rows: torch.Tensor) -> float | None:
    """The pointer's chance for its pick among a screen's paragraphs `rows` where it read
    the status message surely: at least READ_SURELY, and the pick like some status message
    it was trained on (a pointer without that check reads nothing surely); else None."""
    if rows.shape[0] == 0 or not pointer.checks_familiarity:
        return None
    chances = pointer.probabilities(rows)
    index = int(chances.argmax())
    if pointer.unfamiliar(rows[index]) is not None or float(chances[index]) < READ_SURELY:
        return None
    return float(chances[index])


def _shown(line: str) -> str:
    """A paragraph as a reason quotes it: at most 60 characters."""
    return line if len(line) <= 60 else line[:57] + "..."


def focus(pointer: StatusLine | None, features: dict[str, torch.Tensor], best: int | None = None) -> dict[str, torch.Tensor]:
    """`features` with the screen text ("image_text", one row per paragraph) cut to the
    paragraph the pointer picks (`best`, where it has been picked already); unchanged
    without a pointer or screen text."""
    rows = features.get("image_text")
    if pointer is None or rows is None or rows.shape[0] <= 1:
        return features
    best = pointer.pick(rows.float()) if best is None else best
    assert best is not None  # the screen has paragraphs
    return {**features, "image_text": rows[best : best + 1]}


def readings(pointer: StatusLine | None, features: dict[str, torch.Tensor]) -> list[tuple[float, dict[str, torch.Tensor]]]:
    """The ways to read `features`' screen text, each with its probability: one per likely
    status paragraph (most likely first; READINGS_MASS of the pointer's probability, at most
    READINGS_MAX, renormalised). [(1.0, features)] without a pointer or with one paragraph."""
    rows = features.get("image_text")
    if pointer is None or rows is None or rows.shape[0] <= 1:
        return [(1.0, features)]
    chance, order = torch.sort(pointer.probabilities(rows), descending=True)
    kept = int((torch.cumsum(chance, 0) < READINGS_MASS).sum()) + 1
    kept = min(kept, READINGS_MAX, len(order))
    total = float(chance[:kept].sum())
    return [(float(chance[k]) / total, {**features, "image_text": rows[int(order[k]) : int(order[k]) + 1]}) for k in range(kept)]


def focus_examples(pointer: StatusLine | None, examples: list) -> list:
    """router/train.py Examples with their features focused (`focus`)."""
    import dataclasses

    if pointer is None:
        return examples
    return [dataclasses.replace(e, features=focus(pointer, e.features)) for e in examples]


def _letters(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def holds_message(line: str, message: str) -> bool:
    """Whether an OCR paragraph holds the screen's message (letters and digits compared, so
    OCR's spacing and punctuation do not matter). `modalmesh eval` scores error_text so."""
    wanted = _letters(message)
    return bool(wanted) and wanted in _letters(line)


def is_message(line: str, message: str) -> bool:
    """Whether an OCR paragraph is the screen's message and nothing more (compared as
    holds_message compares)."""
    return bool(_letters(message)) and _letters(line) == _letters(message)


def target(lines: list[str], message: str) -> int | None:
    """The index of the paragraph holding `message`, the shortest where several do; None
    where none does."""
    holding = [i for i, line in enumerate(lines) if holds_message(line, message)]
    return min(holding, key=lambda i: len(lines[i])) if holding else None


def fit(
    train: list[tuple[torch.Tensor, int]], val: list[tuple[torch.Tensor, int]], epochs: int = 60, seed: int = 0, learning_rate: float = 3e-3
) -> tuple[StatusLine, dict]:
    """A pointer from (paragraph vectors [P, W], index of the message) pairs; returns it and
    its accuracy on both sets."""
    torch.manual_seed(seed)
    pointer = StatusLine(train[0][0].shape[1])
    optimiser = torch.optim.AdamW(pointer.parameters(), lr=learning_rate, weight_decay=1e-2)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        pointer.train()
        for position in torch.randperm(len(train), generator=order).tolist():
            rows, index = train[position]
            loss = nn.functional.cross_entropy(pointer(rows)[None], torch.tensor([index]))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    pointer.eval()
    temperature = calibrate(pointer, val) if val else 1.0
    familiar_from = remember_messages(pointer, train, val)
    return pointer, {
        "train_accuracy": accuracy(pointer, train),
        "val_accuracy": accuracy(pointer, val) if val else None,
        "train_screens": len(train),
        "val_screens": len(val),
        "temperature": round(temperature, 4),
        "familiar_from": None if familiar_from is None else round(familiar_from, 4),
    }


def remember_messages(pointer: StatusLine, train: list[tuple[torch.Tensor, int]], val: list[tuple[torch.Tensor, int]]) -> float | None:
    """Keep the training screens' status messages in `pointer` and set `familiar_from`:
    the similarity to the nearest of them that FAMILIAR_KEEP of the validation screens'
    right picks reach. Returns it; None (no check) with fewer than FAMILIAR_MIN_PICKS right
    validation picks to choose it on."""
    messages = nn.functional.normalize(torch.stack([rows[index].float() for rows, index in train]), dim=1).half()
    pointer.messages = messages
    right = [rows[index] for rows, index in val if pointer.pick(rows) == index]
    if len(right) < FAMILIAR_MIN_PICKS:
        pointer.familiar_from = torch.tensor(-1.0)
        return None
    similarities = torch.tensor([pointer.similarity(row) for row in right])
    pointer.familiar_from = torch.quantile(similarities, 1.0 - FAMILIAR_KEEP, interpolation="lower").float()  # at least FAMILIAR_KEEP reach it
    return float(pointer.familiar_from)


def calibrate(pointer: StatusLine, pairs: list[tuple[torch.Tensor, int]], steps: int = 200) -> float:
    """The pointer's temperature: the one that minimises the negative log-likelihood of the
    message paragraphs on `pairs` (validation screens), at least 1. The validation screens
    are drawn like the training ones, where the pointer is nearly always right; sharpening
    it on them (a temperature below 1) would make it as sure on a layout it has never seen,
    and a screen whose status line it misses would then be answered from a navigation bar
    with full confidence. Softening is kept: doubt the pointer shows carries into the
    answer (`readings`)."""
    with torch.no_grad():
        pointer.log_temperature.zero_()
        logits = [pointer(rows) for rows, _ in pairs]
    targets = [torch.tensor([index]) for _, index in pairs]

    def nll(temperature: torch.Tensor) -> torch.Tensor:
        return torch.stack([nn.functional.cross_entropy((z / temperature)[None], t) for z, t in zip(logits, targets)]).mean()

    log_t = fit_log_temperature(nll, max_iter=steps)
    with torch.no_grad():
        pointer.log_temperature.copy_(log_t.clamp(min=0.0))
    return float(pointer.log_temperature.exp())


def accuracy(pointer: StatusLine, pairs: list[tuple[torch.Tensor, int]]) -> float:
    return sum(pointer.pick(rows) == index for rows, index in pairs) / max(1, len(pairs))


def pairs_of(records: list[dict], items, examples) -> list[tuple[torch.Tensor, int]]:
    """(paragraph vectors, index of the message) for every screenshot whose message OCR read.
    `records`, `items` and `examples` are aligned (router/train.py load_examples)."""
    pairs = []
    for record, item, example in zip(records, items, examples):
        message = (record.get("extra") or {}).get("screen")
        lines = item.evidence.get("screen_lines") or []
        if not message or "image_text" not in example.features:
            continue
        index = target(lines, message)
        if index is not None:
            pairs.append((example.features["image_text"][: len(lines)].float(), index))
    return pairs


def save(pointer: StatusLine, folder: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in pointer.state_dict().items()}, str(folder / FILE_NAME))


def load(folder: Path | None) -> StatusLine | None:
    """The pointer saved in `folder`, or None where there is none."""
    path = folder / FILE_NAME if folder else None
    if path is None or not path.is_file():
        return None
    from safetensors.torch import load_file

    state = load_file(str(path))
    width = state["net.0.weight"].shape[0]
    pointer = StatusLine(width, state["net.1.weight"].shape[0], messages=state["messages"].shape[0] if "messages" in state else 0)
    state.setdefault("log_temperature", torch.zeros(()))  # a pointer saved without one: as trained
    state.setdefault("messages", torch.zeros(0, width, dtype=torch.float16))  # saved without them: no familiarity check
    state.setdefault("familiar_from", torch.tensor(-1.0))
    pointer.load_state_dict(state)
    return pointer.eval()
