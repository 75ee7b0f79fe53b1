"""Compute routing: the policy (what is still outstanding, whether to wait for it, whether
an answer is sure enough to give now) and its simulation.

The router's gather loop (router/pipeline.py) and the simulation below decide through the
same functions: `outstanding`, `waits_for_required` and `answer_now`. The simulation
replays items whose features and per-source costs were recorded (router/features.py):
training tunes tau and gamma with it on validation (train.tune_routing_on); `modalmesh
eval` reports routed against full with it.

Each item is answered as the gather loop does it (router/pipeline.py): a decision at each
encoder's answer (base features in order of cost, an eager side output with its base
features; then, once all are in, the other side outputs, OCR and transcript, in order of
cost), answering at the first that is confident (>= tau) while the gate predicts what is
still outstanding would weigh < gamma, else from everything. Latency per item comes from
the measured cost of each source: sources of different modalities run in parallel, a
modality's side output after its base features (asked for later, it is a second call;
eager or FULL, one call); plus the measured fusion time.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from modalmesh.router import status_line
from modalmesh.router.fusion import MODALITIES, SIDE_SOURCE, modality_of
from modalmesh.router.tasks import AloneReadings, decide


# A side output is asked for with its base features (eager) only where it is needed on at
# least this share of the requests that have it: an eager call starts the work on every
# request, and on a few busy cores work nobody waits for slows the work somebody does (a
# Whisper transcript started and dropped costs several times a screenshot's OCR in CPU).
# Training makes a side output eager by this share on validation (train.tune_routing_on;
# the simulation's latencies assume free cores, so by latency alone every side output
# would be eager); the router keeps starting it eagerly under load only while it holds
# on the requests served (Speculation).
EAGER_MIN_SHARE = 0.5
SPECULATION_WINDOW, SPECULATION_MIN_SEEN = 32, 8  # Speculation: the recent requests counted, and how many before it judges


class Speculation:
    """Whether to start an eager side output with its base features. Always while the
    router has no other call in hand; with others in hand (the cores are busy), only while
    that side output was used in the answer on at least EAGER_MIN_SHARE of the task's last
    SPECULATION_WINDOW requests that had it (or fewer than SPECULATION_MIN_SEEN have). Not
    started eagerly, it is asked for once the base features are in, if the answer needs it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._used: dict[tuple[str, str], collections.deque[bool]] = collections.defaultdict(lambda: collections.deque(maxlen=SPECULATION_WINDOW))
        self.in_hand = 0  # Analyze calls running

    def eager(self, task: str, modality: str) -> bool:
        with self._lock:
            if self.in_hand <= 1:
                return True
            used = self._used[(task, modality)]
            return len(used) < SPECULATION_MIN_SEEN or sum(used) >= EAGER_MIN_SHARE * len(used)

    def record(self, task: str, modality: str, used: bool) -> None:
        with self._lock:
            self._used[(task, modality)].append(used)

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """Around one Analyze call: counts it as in hand."""
        with self._lock:
            self.in_hand += 1
        try:
            yield
        finally:
            with self._lock:
                self.in_hand -= 1


def outstanding(pending: Iterable[str], with_base: Collection[str], later: Iterable[str]) -> list[str]:
    """The sources still to come: the `pending` calls (sources), the side outputs the pending
    base calls of `with_base` modalities bring, and those of the `later` modalities, asked
    for once every base feature is in."""
    pending = list(pending)
    return pending + [SIDE_SOURCE[s] for s in pending if s in with_base] + [SIDE_SOURCE[m] for m in later]


def waits_for_required(sources: Iterable[str], required: Collection[str]) -> bool:
    """Whether any of `sources` comes from a modality the answer must wait for (the caller
    requires it, or the task cannot answer without it)."""
    return any(modality_of(s) in required for s in sources)


def sure_enough(confidence: float, outstanding_weight: float, tau: float, gamma: float) -> bool:
    """An answer is given early when it is confident (>= tau) and what is outstanding is
    predicted to weigh little in the fusion (< gamma)."""
    return confidence >= tau and outstanding_weight < gamma


def answer_now(confidence: float, outstanding_weight: float, tau: float, gamma: float) -> str:
    """Why to answer before the outstanding sources arrive, or '' to wait for them."""
    if not sure_enough(confidence, outstanding_weight, tau, gamma):
        return ""
    return f"confidence {confidence:.2f} >= tau {tau:g} and predicted weight {outstanding_weight:.3f} < gamma {gamma:g}"


# A quick reading whose answer would be withheld as unsure still holds where the status-line
# pointer read the status message surely (status_line.READ_SURELY): the screen's message was
# read, the doubt is elsewhere (a message about another problem), and reading the screen again
# at the full size changed no such answer on validation (docs/training.md, "Compute routing").
QUICK_SURE_STATUS = status_line.READ_SURELY


def quick_reading_holds(given: bool, pointer, rows) -> bool:
    """Whether the answer comes from a quick reading of the screen text (the vision
    service's `ocr_quick`: detection at a smaller size) instead of the screen read again
    at the full size: the paragraph the task's status-line `pointer` picks from the quick
    reading's `rows` is like a status message the task was trained on, and the answer from
    everything with it would be given (not withheld as unsure) or the pointer is at least
    QUICK_SURE_STATUS sure of that paragraph. Without a pointer: where the answer would be
    given. A quick reading that found no text never holds: the full size may find some."""
    if rows is None or rows.shape[0] == 0:
        return False
    if pointer is None:
        return given
    chances = pointer.probabilities(rows)
    index = int(chances.argmax())
    if pointer.unfamiliar(rows[index]) is not None:
        return False
    return given or float(chances[index]) >= QUICK_SURE_STATUS


def with_quick_reading(features: dict, quick_features: dict) -> dict:
    """An item's features with the screen text of its quick reading in place of the full one's."""
    source = SIDE_SOURCE["image"]
    return {s: f for s, f in features.items() if s != source} | ({source: quick_features[source]} if source in quick_features else {})


@dataclass
class Checkpoint:
    """One decision the router makes while something is still outstanding: when (an
    encoder's answer arrived, plus one fusion), how sure, whether right, and the gate's
    predicted weight of what is still outstanding."""

    at_ms: float
    confidence: float
    correct: bool
    outstanding_weight: float
    side_requested: bool  # the side outputs had been asked for already
    sources: tuple[str, ...] = ()  # what had arrived: the answer is fused from these
    served: bool = True  # the answer from these would be given (served.serve), not withheld: only such a one is given early


@dataclass
class RoutingCase:
    """One item as the router's gather loop sees it (pipeline.Pipeline.gather): base
    sources arrive in order of cost, each arrival is a checkpoint; once all are in, the
    side outputs (OCR, transcript) are asked for and each arrival is a checkpoint again.
    The router answers at the first checkpoint with confidence >= tau and outstanding
    weight < gamma, else when everything is in."""

    checkpoints: list[Checkpoint]
    has_side: bool
    later_sides: tuple[str, ...]  # modalities whose side output is asked for once the base features are in
    full_correct: bool  # the answer from everything (ROUTED waiting for all, or FULL)
    final_ms: float  # ROUTED with everything waited for: base, then side outputs, a fusion after each arrival
    full_ms: float  # FULL: everything asked for at once (each side output after its base features) + one fusion
    # With a quick reading (routing_cases' `quick`): whether the answer comes from it, and
    # whether that answer is right; final_ms then counts the full-size reading after it.
    quick_holds: bool = False
    quick_correct: bool = False
    quick_ms: float = 0.0


def routing_cases(model, spec, examples, items, fuse_ms, eager=None, pointer=None, task=None, quick=None) -> list[RoutingCase]:
    """`eager`: modalities whose side output comes with their base features, from one
    call (default: the task's); the rest are asked for once every base feature is in.
    `pointer`: the task's status-line pointer, for examples with every screen paragraph.
    `task`: the TaskModel whose serving policy says whether each checkpoint's answer would
    be given (served.serve; Checkpoint.served); without it every one would be.
    `quick`: (examples, items) of the same records with the screen text read quickly
    (FeatureCache.for_task's `quick`): where given, an eager image side output is read
    quickly first, as the router does with a task's `quick` routing, and again at the
    full size unless quick_reading_holds (then the answer from everything is the full one)."""
    from modalmesh.router.served import serve

    eager = spec.eager if eager is None else eager
    required = set(spec.needs)
    quick_examples, quick_items = quick if quick is not None else ([None] * len(examples), [None] * len(examples))

    def decide_on(example, sources, outstanding, alone):
        features = {s: f for s, f in example.features.items() if s in sources}
        tags = example.tags if "image" in sources else {}  # no scan, no measurement from it
        decided = decide(model, spec, features, tags, outstanding, attention=False, pointer=pointer, kept=alone)
        return float(decided.probabilities.max()), int(decided.probabilities.argmax()) == example.label, decided.outstanding_weight

    def given(example, sources, alone) -> bool:
        if task is None:
            return True
        return serve(
            task, {s: f for s, f in example.features.items() if s in sources}, example.tags if "image" in sources else {}, alone, example.audio_tags
        ).answered

    cases = []
    for example, item, quick_example, quick_item in zip(examples, items, quick_examples, quick_items):
        alone = AloneReadings()  # each modality read alone once per item, whichever checkpoint asks first
        full_example, full_costs = example, item.costs_ms
        costs = full_costs
        present = [m for m in MODALITIES if m in example.features]
        now = {m: SIDE_SOURCE[m] for m in present if m in spec.side_outputs and m in eager}  # with the base call
        read_quickly = quick_example is not None and "image" in now
        if read_quickly:  # the image and its quick reading arrive first; checkpoints decide on them
            example = dataclasses.replace(example, features=with_quick_reading(example.features, quick_example.features))
            costs = {**full_costs, "image": quick_item.costs_ms.get("image", 0.0), "image_text": quick_item.costs_ms.get("image_text", 0.0)}

        def arrival(modality):
            return costs.get(modality, 0.0) + costs.get(now.get(modality, ""), 0.0)

        base = sorted(present, key=arrival)
        later_modalities = [m for m in base if m in spec.side_outputs and m not in now]
        sides = [SIDE_SOURCE[m] for m in later_modalities]  # asked for later
        arrived, checkpoints = [], []
        for index, modality in enumerate(base):  # base features (with eager side outputs), soonest first
            arrived += [modality] + ([now[modality]] if modality in now else [])
            to_come = outstanding(base[index + 1 :], now, later_modalities)
            if to_come and not waits_for_required(to_come, required):  # never answered early without what the task needs
                confidence, correct, weight = decide_on(example, arrived, to_come, alone)
                at_ms = arrival(modality) + fuse_ms
                checkpoints.append(Checkpoint(at_ms, confidence, correct, weight, bool(now), tuple(arrived), given(example, arrived, alone)))
        base_ms = max((arrival(m) for m in base), default=0.0) + fuse_ms

        def later_call(side):  # a second call on the same input: decoded and encoded again, then the side output
            return costs.get(modality_of(side), 0.0) + costs.get(side, 0.0)

        ordered = sorted(sides, key=later_call)
        for index, side in enumerate(ordered[:-1]):  # then the side outputs, asked for together
            arrived.append(side)
            to_come = ordered[index + 1 :]
            if not waits_for_required(to_come, required):
                confidence, correct, weight = decide_on(example, arrived, to_come, alone)
                at_ms = base_ms + later_call(side) + fuse_ms
                checkpoints.append(Checkpoint(at_ms, confidence, correct, weight, True, tuple(arrived), given(example, arrived, alone)))
        quick_holds, quick_correct, quick_ms = False, False, 0.0
        if read_quickly:  # everything else in: the quick reading holds, or the screen is read at the full size
            _, quick_correct, _ = decide_on(example, list(example.features), [], alone)
            rows = example.features.get("image_text")
            quick_holds = quick_reading_holds(given(example, list(example.features), alone), pointer, rows)
            quick_ms = base_ms + max((later_call(s) for s in sides), default=0.0) + (fuse_ms if sides else 0.0)
            if not quick_holds:  # the full-size reading: a second call, asked for with the later side outputs
                sides = sides + ["image_text"]
            costs = full_costs
        everything = list(full_example.features)
        _, final_correct, _ = decide_on(full_example, everything, [], alone)
        final_ms = base_ms + max((later_call(s) for s in sides), default=0.0) + (fuse_ms if sides else 0.0)
        full_ms = max((full_costs.get(m, 0.0) + full_costs.get(SIDE_SOURCE.get(m, ""), 0.0) for m in base), default=0.0) + fuse_ms
        case = RoutingCase(checkpoints, bool(sides or now), tuple(later_modalities), final_correct, final_ms, full_ms, quick_holds, quick_correct, quick_ms)
        cases.append(case)
    return cases


def early_answer(case: RoutingCase, tau: float, gamma: float) -> Checkpoint | None:
    """The checkpoint the router answers at, at (tau, gamma): the first sure enough whose
    answer would be given (an answer withheld there would give up on what was still to
    come); None when it waits for everything."""
    return next((c for c in case.checkpoints if c.served and sure_enough(c.confidence, c.outstanding_weight, tau, gamma)), None)


def route(cases: list[RoutingCase], tau: float, gamma: float) -> dict:
    """Accuracy and mean latency when the router answers early at (tau, gamma); `early`
    and `early_wrong`: how many answers came before everything was in, and how many of
    those were wrong; `later_side_share`: per modality whose side output is asked for
    later, the share of the items with it where it was asked for."""
    correct, latency, requested, answered_early, early_wrong, quick = [], [], 0, 0, 0, 0
    asked: dict[str, list[bool]] = {}
    for case in cases:
        early = early_answer(case, tau, gamma)
        if early is not None:
            correct.append(early.correct)
            latency.append(early.at_ms)
            answered_early += 1
            early_wrong += int(not early.correct)
        elif case.quick_holds:
            correct.append(case.quick_correct)
            latency.append(case.quick_ms)
            quick += 1
        else:
            correct.append(case.full_correct)
            latency.append(case.final_ms)
        requested += int(case.has_side and (early is None or early.side_requested))
        for modality in case.later_sides:
            asked.setdefault(modality, []).append(early is None or early.side_requested)
    return {
        "accuracy": float(np.mean(correct)),
        "mean_latency_ms": float(np.mean(latency)),
        "early": answered_early,
        "early_wrong": early_wrong,
        "from_quick_reading": quick,
        "side_outputs_requested": requested,
        "later_side_share": {m: float(np.mean(flags)) for m, flags in asked.items()},
    }


TAUS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99, 1.01)
GAMMAS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 1.01)


def tune_routing(cases: list[RoutingCase], max_risk: float, max_loss: float = 0.005) -> tuple[float, float]:
    """The (tau, gamma) with the lowest mean latency whose accuracy is at most `max_loss`
    below answering from everything (on the validation split) and whose early answers are
    wrong at most `max_risk` of the time: an early answer is given as confidently as any
    other, so it must be as reliable as the answers the task gives (tasks.ABSTAIN_RISK),
    also where answering from everything would have been wrong (and withheld as unsure).
    tau 1.01 never answers early."""
    full = float(np.mean([c.full_correct for c in cases]))
    best = None
    for tau in TAUS:
        for gamma in GAMMAS:
            outcome = route(cases, tau, gamma)
            if outcome["accuracy"] < full - max_loss - 1e-9 or outcome["early_wrong"] > max_risk * outcome["early"] + 1e-9:
                continue
            key = (outcome["mean_latency_ms"], -outcome["accuracy"], -tau, gamma)
            if best is None or key < best[0]:
                best = (key, tau, gamma)
    return (best[1], best[2]) if best else (1.01, 0.0)
