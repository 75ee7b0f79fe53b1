"""Tasks: what each answers, and how its answer is put into words.

A task is a label set, optional regression outputs, routing thresholds (tau: the
confidence that lets the router answer early; gamma: the largest predicted weight an
outstanding modality may have and still be skipped), and a writer that turns the
heads' outputs plus the evidence (record text, OCR lines, transcript, DICOM tags) into a
description and structured findings. Every task is a task file (router/task_file.py);
the built-in ones are `router/builtin/<name>.json`. What cannot be a template is a
plug-in here that a task file names (`"plugin"`, PLUGINS): `screen_triage` (the triage
writer, which reads the screen's status message into the answer) and `chest_ct` (the CT
measurement in Hounsfield units, the size rule between nodule and mass, what a chest CT
slice must show, the report writer).

Weights: `<weights_dir>/<task>/model.safetensors` with `config.json` beside it. When
they are missing the task runs with untrained heads (seeded, so answers are stable)
and says "untrained" in its model version.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator, Mapping
from typing import Any, Callable, NamedTuple

import torch

from modalmesh.common import models
from modalmesh.common.once import ComputedOnce
from modalmesh.router import applicability, scope, status_line
from modalmesh.router.applicability import Applicability
from modalmesh.router.scope import ScopeCheck
from modalmesh.router.status_line import StatusLine
from modalmesh.router.fusion import (
    MODALITIES,
    MODALITY_SOURCES,
    SOURCES,
    FusionConfig,
    FusionEnsemble,
    FusionModel,
    ProjectedTokens,
    StackedEnsemble,
    build_model,
    modality_of,
    checked_precision,
)
from modalmesh.router.compiled_fusion import CompiledEnsemble, FusionEngine, compiled_ensemble

log = logging.getLogger(__name__)

SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights"  # <task>/ folders trained by `make weights`

# What a task's fusion model is: one model, an ensemble (loaded stacked: one batched model,
# the same numbers), or a stacked ensemble whose decisions OpenVINO runs (compiled_fusion.py).
Fusion = FusionModel | FusionEnsemble | StackedEnsemble | CompiledEnsemble

NOT_FOR_CLINICAL_USE = "Research prototype: not for clinical use."
UNCERTAIN = "uncertain"  # the label of a withheld answer (AnalyzeResponse.abstained)


@dataclass
class Evidence:
    """What the encoders said besides features, for the writers."""

    text: str = ""
    text_read: int = 0  # characters of `text` read where the text model's length limit cut it; 0: all of it
    screen_lines: list[str] = field(default_factory=list)
    screen_spans: list = field(default_factory=list)  # what OCR read: (text, confidence, box) per line
    key_line: str = ""  # the screen line that alone most supports the answer (key_screen_line)
    key_line_chance: float | None = None  # the status-line pointer's probability that key_line is the status message; None without one
    key_line_unstated: str = ""  # why no status message is stated (status_line.unstated: the pointer's pick is unlike them all, or unsure; key_line is then '')
    transcript: str = ""
    image_tags: dict[str, str] = field(default_factory=dict)
    no_image: str = ""  # why no image was read (none sent, not applicable, not waited for); '' when one was
    withheld: str = ""  # why the answer is withheld (tasks.withheld); '' when it is given
    estimate_error: dict[str, float] = field(default_factory=dict)  # the heads' validation error per output (task units)


@dataclass
class Answer:
    label: str
    confidence: float
    predictive_entropy: float
    probabilities: dict[str, float]
    regression: dict[str, float]


@dataclass(frozen=True)
class SizeRule:
    """Between two labels, the measured size decides: that is their definition (a
    nodule is a lesion of at most 30 mm, a mass is larger). The classifier gives
    P(lesion); the measured diameter d and its validation error sigma split it:
    P(large) = P(lesion) * Phi((d - threshold) / sigma)."""

    output: str
    small: str
    large: str
    threshold: float


DEFAULT_PIXEL_SPACING_MM = 0.75  # assumed when an image states none (the middle of the training range)


def field_of_view_mm(tags: dict[str, str]) -> tuple[float, bool]:
    """The image's width in mm (Columns x the column PixelSpacing) and whether the
    spacing was stated; without one, DEFAULT_PIXEL_SPACING_MM is assumed."""
    columns = float(tags.get("Columns") or tags.get("width") or 0)
    spacing = tags.get("PixelSpacing", "")
    try:
        column_spacing = float(spacing.split("\\")[-1]) if spacing else 0.0
    except ValueError:
        column_spacing = 0.0
    stated = column_spacing > 0
    return columns * (column_spacing if stated else DEFAULT_PIXEL_SPACING_MM), stated


@dataclass
class TaskSpec:
    name: str
    description: str
    labels: tuple[str, ...]
    modalities: tuple[str, ...]  # accepted: at least one must be present
    regression: tuple[str, ...] = ()
    tau: float = 0.9
    gamma: float = 0.1
    side_outputs: tuple[str, ...] = ("image", "audio")  # modalities whose expensive extras (OCR, transcript) can help
    # Side outputs ROUTED mode asks for with the base features, not after them (training
    # picks them on validation: those waited for in most cases anyway).
    eager: tuple[str, ...] = ()
    # Eager side outputs ROUTED mode reads quickly first (the screen text at the vision
    # service's quick detection size, `ocr_quick`), and again at the full size only where the
    # answer from the quick reading would not be sure (routing.quick_reading_holds; training
    # keeps it where validation loses no accuracy).
    quick: tuple[str, ...] = ()
    write: Callable[[Answer, Evidence], tuple[str, dict[str, str], str]] | None = None  # description, findings, reply
    # Regression outputs the model predicts as a fraction of the image's width; multiplied
    # by the field of view in mm (from PixelSpacing) before anyone sees them.
    field_of_view_outputs: tuple[str, ...] = ()
    size_rule: SizeRule | None = None
    fusion: dict = field(default_factory=dict)  # FusionConfig defaults for this task (training may override)
    feature_noise: float = 0.5  # training's default noise on the frozen features (see train.add_noise)
    members: int = 1  # training's default ensemble size (fusion.FusionEnsemble)
    # Regression outputs an encoder measured (image tags, e.g. lesion sizes from CT
    # densities): tags -> {output: value in task units}. A measured value replaces the head's.
    # None: no measurement in the tags; {}: measured, nothing found.
    measure: Callable[[dict[str, str]], dict[str, float] | None] | None = None
    measured_sigma: float = 0.5  # the size rule's sigma for a measured size (task units)
    # Image tags the task needs, where an image has them: tag -> accepted values (the vision
    # service reports a DICOM's "Modality", "BodyPartExamined" and its slice's "plane"; a
    # PNG or JPEG has none of them and is taken as stated).
    image_tags: dict[str, tuple[str, ...]] = field(default_factory=dict)
    reads: str = "images"  # the images it reads, in words ("axial chest CT slices")
    # What its audio holds, in words ("voice messages"), for a task whose audio is spoken:
    # audio in which the audio service's speech detection finds no speech is not applicable.
    speech: str = ""
    scan_only: bool = False  # the task reads greyscale scans: a colour image (a photo, a screenshot) is not one
    # What the image must show, by the vision service's tags: tag -> (the value that means it
    # does not, why in words). For the CT task: lungs, found by the lesion measurement.
    anatomy: dict[str, tuple[str, str]] = field(default_factory=dict)
    # Modalities without which the task gives no answer, and why (a diagnosis needs a scan:
    # the record alone is not one).
    needs: tuple[str, ...] = ()
    needs_reason: str = ""
    resolve: str = "another input"  # what would resolve an uncertain answer, in words
    # What would resolve it where the screen's status message was read surely
    # (status_line.read_surely), so the screenshot is not what is missing; '': `resolve`.
    resolve_read_screen: str = ""
    reports: tuple[str, ...] = ()  # the standard formats it writes (router/reports.py): "fhir", "dicom_sr", "ticket"

    def inapplicable_image(self, tags: dict[str, str]) -> str | None:
        """Why this task cannot read the image its tags describe, in words a person
        understands, or None when it can."""
        for name, accepted in self.image_tags.items():
            value = tags.get(name, "").strip()
            if value and value.upper() not in {a.upper() for a in accepted}:
                what = {
                    "Modality": f"the DICOM's Modality is {value}",
                    "plane": f"the slice is {value}",
                    "BodyPartExamined": f"the DICOM's BodyPartExamined is {value}",
                }.get(name, f"{name} is {value}")
                return f"{what}; {self.name} reads {self.reads}"
        if self.scan_only and tags.get("colour") == "yes":
            return f"a colour image (a photo or a screenshot?), not a scan; {self.name} reads {self.reads}"
        for name, (missing, why) in self.anatomy.items():
            if tags.get(name) == missing:
                return why
        return None

    def inapplicable_audio(self, tags: dict[str, str]) -> str | None:
        """Why this task cannot read the audio its tags describe (spoken audio without
        speech in it), or None when it can or the tags do not say (speech detection off)."""
        if not self.speech:
            return None
        try:
            seconds = float(tags["speech_seconds"])
        except (KeyError, ValueError):
            return None
        return f"no speech in the audio (speech detection found none); {self.name} reads {self.speech}" if seconds == 0 else None

    def inapplicable(self, modality: str, tags: dict[str, str]) -> str | None:
        """Why this task cannot read an input its encoder's tags describe (an image's or an
        audio clip's), or None when it can."""
        if modality == "image":
            return self.inapplicable_image(tags)
        return self.inapplicable_audio(tags) if modality == "audio" else None

    def units(self, tags: dict[str, str]) -> torch.Tensor:
        """Per regression output, model units -> task units: the field of view in mm for
        field-of-view outputs, 1 for the rest. [R]"""
        scale = torch.ones(len(self.regression))
        if self.field_of_view_outputs:
            fov, _ = field_of_view_mm(tags)
            for name in self.field_of_view_outputs:
                scale[self.regression.index(name)] = max(fov, 1e-6)
        return scale

    def finish(
        self,
        probabilities: torch.Tensor,
        regression: torch.Tensor,
        tags: dict[str, str],
        sigma: dict[str, float],
        use_measured: bool = True,
        evidence: dict | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The heads' raw outputs ([L], [R]) to what the task reports: sizes in mm, measured
        values where an encoder measured them, and the size rule applied. `sigma`: the
        heads' validation error per output (FusionConfig.measurement_sigma). `evidence`:
        how likely the measurement's outcome ("found" a lesion or "none") is under each
        label (FusionConfig.measurement_evidence); where a measurement ran, the labels'
        probabilities are updated by it (Bayes' rule: posterior = prior x likelihood)."""
        regression = regression * self.units(tags)
        measured = self.measure(tags) if (self.measure is not None and use_measured) else None
        for name, value in (measured or {}).items():
            regression[self.regression.index(name)] = value
        if self.size_rule is None:
            return probabilities, regression
        rule = self.size_rule
        small, large = self.labels.index(rule.small), self.labels.index(rule.large)
        probabilities = probabilities.clone()
        likelihood = None if measured is None else (evidence or {}).get("found" if measured else "none")
        if isinstance(likelihood, dict):  # P(outcome | label) per label
            posterior = probabilities * torch.tensor([float(likelihood.get(label, 1.0)) for label in self.labels])
            probabilities = posterior / posterior.sum().clamp_min(1e-12)
        elif likelihood is not None:  # one likelihood ratio, a lesion vs the rest (config.json files that give one number)
            lesion = float(probabilities[small] + probabilities[large])
            odds = lesion / max(1.0 - lesion, 1e-6) * float(likelihood)
            updated, others = odds / (1.0 + odds), [k for k in range(len(self.labels)) if k not in (small, large)]
            rest = float(probabilities[others].sum())
            for k in others:
                probabilities[k] = probabilities[k] / max(rest, 1e-9) * (1.0 - updated)
            probabilities[small], probabilities[large] = probabilities[small] / max(lesion, 1e-9) * updated, probabilities[large] / max(lesion, 1e-9) * updated
        lesion_p = probabilities[small] + probabilities[large]
        size = regression[self.regression.index(rule.output)]
        spread = self.measured_sigma if measured else max(float(sigma.get(rule.output, 3.0)), 0.5)
        large_share = 0.5 * (1 + torch.erf((size - rule.threshold) / (spread * 2**0.5)))
        probabilities[small], probabilities[large] = lesion_p * (1 - large_share), lesion_p * large_share
        return probabilities, regression


# ----------------------------------------------------------------------- screenshot triage

UNSURE_REPLY = "Thanks for getting in touch. We're looking into it; could you tell us a little more about what happened?"
# A request whose words read like other matters than the task's (router/scope.py): a person routes it.
OUT_OF_SCOPE_NEXT_STEPS = "It reads like something other than what this queue handles: route it to the team it is about, or ask the customer what they need."
OUT_OF_SCOPE_REPLY = "Thanks for getting in touch. We're not sure this is something we can help with here; could you tell us what you need from us?"
UNSURE_CONFIDENCE = 0.5  # below it the reply names no problem: a calibrated label under 0.5 is more likely wrong than right
ERROR_WORDS = re.compile(r"error|fail|declin|denied|invalid|unable|cannot|can't|crash|stopped|expired|timeout|timed out|not found|code \d+", re.I)


def screen_line_log_odds(model: Fusion, screen_text: torch.Tensor) -> torch.Tensor:
    """[paragraphs, labels]: how much each OCR paragraph (a row of the screen-text
    features), classified on its own, favours each label over the rest: log-odds from the
    logits, before the temperature (the calibrated probabilities of several lines
    saturate at 1). One batch, by the first member of an ensemble. The router computes
    this as soon as the screen text is in, while it still waits for other encoders."""
    member: Any = model.members[0] if isinstance(model, (FusionEnsemble, StackedEnsemble, CompiledEnsemble)) else model
    if screen_text.shape[0] == 0:
        return torch.zeros(0, len(member.config.labels))
    with torch.inference_mode():
        logits = member(member.embed([{"image_text": row[None]} for row in screen_text]), attention=False).logits
    labels = logits.shape[1]
    others = torch.stack([torch.logsumexp(torch.cat([logits[:, :k], logits[:, k + 1 :]], dim=1), dim=1) for k in range(labels)], dim=1)
    return logits - others


def best_screen_line(log_odds: torch.Tensor, label: int) -> int | None:
    """The paragraph that alone most supports `label` (a row of `screen_line_log_odds`);
    None when none favours the label over the rest."""
    if log_odds.shape[0] == 0:
        return None
    best = int(log_odds[:, label].argmax())
    return best if float(log_odds[best, label]) > 0 else None


def key_screen_line(model: Fusion, screen_text: torch.Tensor, label: int) -> int | None:
    """Which OCR paragraph alone most supports `label`: the screen's error or status
    message, whatever its wording, where a list of error words finds only some
    (`modalmesh eval` counts both)."""
    return best_screen_line(screen_line_log_odds(model, screen_text), label)


def triage_writer(labels: dict[str, dict[str, str]]) -> Callable[[Answer, Evidence], tuple[str, dict[str, str], str]]:
    """The screen_triage plug-in's writer over the task file's labels (priority, next steps
    and the reply to the customer, each); `other` is the label for no problem found. The
    reply is said to the customer: it promises only what the next steps do and claims
    nothing the mesh has not done."""

    def write(answer: Answer, evidence: Evidence) -> tuple[str, dict[str, str], str]:
        return write_triage(answer, evidence, labels)

    return write


def states_error_text(label: str, withheld: str, chance: float | None) -> bool:
    """Whether a triage answer states the screen's status message as its `error_text` (where
    the screen was read and status_line.unstated lets the pick be stated; `chance`: the
    status-line pointer's for it, None without a pointer): an answer given about a problem,
    and one withheld as unsure which problem it is where the message was read surely
    (status_line.READ_SURELY: the screen was read, the category is what is unsure); not
    where the answer (or, withheld, its best guess) is `other` (a screen with no problem
    shows no error) nor where the message is about another matter than the task's (out of
    its scope). The router and `modalmesh eval` both ask here."""
    if label == "other":
        return False
    if not withheld:
        return True
    return not withheld.startswith(scope.REASON) and chance is not None and chance >= status_line.READ_SURELY


def text_cut(evidence: Evidence) -> str:
    """Where the text model read only the start of the message: how much, as a report says
    it (' (only its first 1,130 of 2,604 characters were read)'); '' otherwise."""
    return f" (only its first {evidence.text_read:,} of {len(evidence.text):,} characters were read)" if evidence.text_read else ""


def write_triage(answer: Answer, evidence: Evidence, labels: dict[str, dict[str, str]]) -> tuple[str, dict[str, str], str]:
    other = labels["other"]
    said = f' The customer wrote: "{evidence.text.strip()[:200]}"{text_cut(evidence)}.' if evidence.text.strip() else ""
    heard = f' Voice message (transcript): "{evidence.transcript[:200]}".' if evidence.transcript else ""
    findings = {"priority": "normal", "error_text": ""}
    if states_error_text(answer.label, evidence.withheld, evidence.key_line_chance):
        findings.update(error_text_findings(evidence))
    seen = f' The screen shows "{findings["error_text"]}".' if findings["error_text"] else ""
    if evidence.withheld:  # a person looks sooner; the reply names no problem
        elsewhere = evidence.withheld.startswith(scope.REASON)
        findings["next_steps"] = OUT_OF_SCOPE_NEXT_STEPS if elsewhere else other["next_steps"]
        description = (
            f"Not classified: {evidence.withheld}. Best guess {answer.label} ({answer.confidence:.2f}).{seen}{said}{heard} Next steps: {findings['next_steps']}"
        )
        return description, findings, OUT_OF_SCOPE_REPLY if elsewhere else UNSURE_REPLY
    about = labels.get(answer.label, other)
    priority = about["priority"]
    if answer.confidence < UNSURE_CONFIDENCE and priority == "low":
        priority = "normal"  # unsure: let a person look sooner
    findings["priority"], findings["next_steps"] = priority, about["next_steps"]
    if answer.label == "other":
        shown = f' The screen shows "{evidence.key_line}".' if evidence.key_line else ""
        description = (
            f"Category: other (confidence {answer.confidence:.2f}), priority {priority}: no problem found."
            f"{shown}{said}{heard} Next steps: {findings['next_steps']}"
        )
    else:
        description = (
            f"Category: {answer.label} (confidence {answer.confidence:.2f}), priority {priority}.{seen}{said}{heard} Next steps: {findings['next_steps']}"
        )
    reply = about["reply"] if answer.confidence >= UNSURE_CONFIDENCE else UNSURE_REPLY
    return description, findings, reply


def error_text_findings(evidence: Evidence) -> dict[str, str]:
    """`error_text` and what goes with it: the line the model reads the answer from (the
    status-line pointer's pick, with how sure the pointer is), else (an untrained model, or
    no line supports the answer) lines with error words; where the pointer's pick is not
    stated (status_line.unstated), no error_text and `error_text_withheld` saying why."""
    if evidence.key_line_unstated:
        return {"error_text": "", "error_text_withheld": evidence.key_line_unstated}
    lines = [evidence.key_line] if evidence.key_line else [line for line in evidence.screen_lines if ERROR_WORDS.search(line)]
    findings = {"error_text": " | ".join(lines)}
    if findings["error_text"] and evidence.key_line and evidence.key_line_chance is not None:
        findings["error_text_confidence"] = f"{evidence.key_line_chance:.2f}"
    return findings


# ----------------------------------------------------------------------- abstention


def withheld(
    spec: TaskSpec,
    label: str,
    confidence: float,
    read: set[str],
    abstain_below: float,
    tags: dict[str, str],
    dissent: tuple[str, ...] = (),
    unfamiliar: frozenset[str] = frozenset(),
    neighbours: str = "",
    threshold_note: str = "",
    unvouched: str = "",
    out_of_scope: str = "",
    resolve: str = "",
) -> str:
    """Why an answer must be withheld, or '' when it may be given: one policy, applied alike
    by the router and by `modalmesh eval`. `read`: the modalities used as evidence (absent,
    not applicable, failed and skipped ones are not); `tags`: the image's tags, where one was
    read; `abstain_below`: the confidence threshold chosen on validation; `dissent`: the
    inputs that, read alone, disagree with the answer (decide); `unfamiliar`: the read
    modalities farther from the training inputs than every validation input
    (applicability.Applicability.unfamiliar); `neighbours`: what the nearest training inputs
    say against an answer read from one modality alone (neighbours_disagree);
    `threshold_note`: what `abstain_below` is for, when not every answer (TaskModel.threshold_for);
    `unvouched`: why nothing read is like what the task was checked on and agrees with the
    answer (unvouched_screen), '' where something is; `out_of_scope`: why the message and
    screen text read as matters the task does not handle (scope.ScopeCheck.reason);
    `resolve`: what would resolve it, where not the task's `resolve`.

    A message read alone that is unlike every validation message is withheld: text
    distances are cosines, bounded, so the applicability margin (a multiple of the farthest
    validation distance) can lie beyond any text, and the answer's confidence was never
    checked on anything like it (a patient record sent as a support message). A screenshot
    or a recording unlike validation is still read: a new layout moves the image features
    far while its screen text carries the answer; where that screen text is unlike every
    status message too, and no familiar message agrees, the answer is withheld
    (`unvouched`: a screen in another language, another kind of software's screen)."""
    resolve = resolve or spec.resolve
    missing = [m for m in spec.needs if m not in read]
    if missing:
        return spec.needs_reason or f"no {' or '.join(missing)} was read"
    if read == {"text"} and "text" in unfamiliar:
        return f"the message is unlike every message the task was checked on, so how sure the answer may be is not known; {resolve} would help"
    if unvouched:
        return f"{unvouched}, so how sure the answer may be is not known; {resolve} would help"
    if out_of_scope:
        return out_of_scope
    if spec.measure is not None and "image" in read:
        note = tags.get("lesion_measurement", "")
        if note.startswith("hu-") and ": not measured" in note:  # a measurement was tried and failed
            return f"the slice could not be measured ({note.split('(', 1)[-1].rstrip(')')}); {resolve} would help"
        measured = spec.measure(tags)
        if spec.size_rule is not None and measured is not None:
            lesion = label in (spec.size_rule.small, spec.size_rule.large)
            if lesion and not measured:
                return f"the classifier suggests {label}, but no lesion was measured on the slice"
            if measured and not lesion:
                return f"the classifier suggests {label}, but the slice has a measured lesion"
    if confidence < abstain_below:
        disagree = f" (the inputs disagree: {', '.join(dissent)})" if dissent else ""
        return f"confidence {confidence:.2f} is below the task's threshold of {abstain_below:.2f}{threshold_note}{disagree}; {resolve} would help"
    if neighbours:
        return f"{neighbours}, not {label}; {resolve} would help"
    return ""


ABSTAIN_RISK = 0.03  # the validation error rate allowed among the answers a task gives


def neighbour_checked(task: "TaskModel") -> list[str]:
    """The modalities whose answers read from them alone get the nearest training inputs'
    check: on validation, the answers it would withhold were wrong more often than the
    answers the task gives may be (FusionConfig.neighbour_precision above ABSTAIN_RISK;
    train writes it only where that is more than chance), and a reference with labels."""
    precision = task.model.config.neighbour_precision
    return [
        m
        for m in MODALITIES
        if precision.get(m, 0.0) > ABSTAIN_RISK and m in task.applicability.references and task.applicability.references[m].labels is not None
    ]


def withheld_answer(
    task: "TaskModel",
    read: set[str],
    features: dict[str, torch.Tensor],
    best: int,
    confidence: float,
    tags: dict[str, str],
    dissent: tuple[str, ...] = (),
    unfamiliar: frozenset[str] = frozenset(),
) -> str:
    """`withheld` for a trained task's answer (label index `best`) from the modalities
    `read`: with the threshold for what was read (TaskModel.threshold_for) and the nearest
    training inputs' check (neighbours_disagree). The router (Pipeline.withheld) and the
    offline replay (served.serve) both ask here."""
    neighbours = neighbours_disagree(task, read, features, best)
    threshold, note = task.threshold_for(read)
    unvouched = unvouched_screen(task, read, features, best, unfamiliar)
    out_of_scope = ""
    if task.scope is not None:  # judged on the message and screen text that were read
        judged: dict[str, torch.Tensor] = {s: features[s] for s in ("text", "image_text") if s in features and modality_of(s) in read}
        out_of_scope = task.scope.reason(judged, task.status_line)
    label = task.spec.labels[best]

    def policy(resolve: str = "") -> str:
        return withheld(task.spec, label, confidence, read, threshold, tags, dissent, unfamiliar, neighbours, note, unvouched, out_of_scope, resolve)

    reason = policy()
    rows = features.get("image_text")
    # Only a withheld answer's advice depends on whether the screenshot was read surely:
    # the pointer is not asked for every answer given.
    if reason.endswith(f"; {task.spec.resolve} would help") and task.spec.resolve_read_screen and "image" in read and task.status_line is not None:
        if rows is not None and status_line.read_surely(task.status_line, rows) is not None:  # the screenshot was read: what is missing is elsewhere
            reason = policy(task.spec.resolve_read_screen)
    return reason


def unvouched_screen(task: "TaskModel", read: set[str], features: dict[str, torch.Tensor], best: int, unfamiliar: frozenset[str]) -> str:
    """For tasks.withheld: why nothing read vouches for an answer (label index `best`) that
    rests on a screenshot unlike every screen the task was checked on (`unfamiliar`) whose
    likeliest status paragraph is unlike every status message its pointer was trained on;
    '' where the screen's look or its status text is familiar, where a familiar voice
    message's transcript was read, or where a familiar message's nearest training messages do not show
    another label (Applicability.disagrees). Tasks without a status-line pointer, and
    screens without text, are not judged here."""
    pointer, rows = task.status_line, features.get("image_text")
    if pointer is None or "image" not in read or "image" not in unfamiliar or rows is None or rows.shape[0] == 0:
        return ""
    if "audio" in read and "audio" not in unfamiliar and "audio_text" in features:  # a voice message whose words were read
        return ""
    similarity = pointer.unfamiliar(rows[pointer.pick(rows.float())])  # both run in inference mode
    if similarity is None:
        return ""
    screen = (
        "the screenshot is unlike every screen the task was checked on and its likeliest status paragraph "
        f"unlike every status message it was trained on (similarity {similarity:.2f})"
    )
    if "text" not in read:
        return screen
    if "text" in unfamiliar:
        return f"{screen}, and the message is unlike every message it was checked on"
    verdict = task.applicability.disagrees("text", features["text"], best) if "text" in features else None
    if verdict is None:
        return ""
    label, count, asked = verdict
    shown = f"labelled {task.spec.labels[label]}" if label >= 0 else "that show none of the task's labels"
    return f"{screen}, and the message is most like training messages {shown} ({count} of its {asked} nearest), not {task.spec.labels[best]}"


def neighbours_disagree(task: "TaskModel", read: set[str], features: dict[str, torch.Tensor], best: int) -> str:
    """For an answer (label index `best`) read from one modality alone: what its input's
    nearest training inputs say against it, for tasks.withheld; '' where they agree, where
    more than one modality was read, or where the modality is not checked (neighbour_checked)."""
    if len(read) != 1:
        return ""
    (modality,) = read
    if modality not in neighbour_checked(task) or modality not in features:
        return ""
    verdict = task.applicability.disagrees(modality, features[modality], best)
    if verdict is None:
        return ""
    label, count, asked = verdict
    shown = f"labelled {task.spec.labels[label]}" if label >= 0 else "that show none of the task's labels"
    return f"the {modality} is most like training inputs {shown} ({count} of its {asked} nearest)"


# ----------------------------------------------------------------------- medical report


def measured_lesions(tags: dict[str, str]) -> dict[str, float] | None:
    """The vision service's lung-lesion measurement (CT in HU; vision/measure.py) as the
    task's regression outputs: None when it did not run (a PNG scan: the heads' own
    estimates stand), {} when it found no lesion."""
    from modalmesh.vision.measure import parse_lesion_tags

    lesions = parse_lesion_tags(tags)
    if not lesions:
        return None if lesions is None else {}  # {}: measured and found nothing, which is evidence too
    largest_mm, side = lesions[0]
    return {"lesion_count": float(len(lesions)), "largest_diameter_mm": largest_mm, "side": -1.0 if side == "left" else 1.0}


# An estimated lesion size under this is no size: the built-in lesions are 4-60 mm and a
# pixel is 0.6-0.9 mm.
MIN_ESTIMATED_DIAMETER_MM = 1.0


def write_report(answer: Answer, evidence: Evidence) -> tuple[str, dict[str, str], str]:
    """Findings come from the measurement on the slice (CT in HU): count, largest size and
    side. An unmeasured slice (a PNG without its window) gets no count, size or side; the
    heads' size appears only as an estimate with its validation error."""
    from modalmesh.vision.measure import parse_lesion_tags

    if evidence.no_image:
        return _report_without_scan(answer, evidence)
    measured = parse_lesion_tags(evidence.image_tags)  # None: not measured; []: measured, none found
    findings: dict[str, str] = {}
    if measured:
        sides = {side for _, side in measured}
        largest, side = measured[0]
        where = "both lungs" if len(sides) > 1 else f"the {side} lung"
        plural = "s" if len(measured) > 1 else ""
        body = (
            f"{len(measured)} round soft-tissue lesion{plural} in {where}; the largest is {largest:.1f} mm, {side} (measured on the slice in Hounsfield units)."
        )
        findings.update(lesion_count=str(len(measured)), largest_diameter_mm=f"{largest:.1f}", side=side)
    elif measured == []:
        body = "No focal pulmonary lesion is measured on the slice. The lung fields are clear."
        findings.update(lesion_count="0", side="none")
    else:
        note = evidence.image_tags.get("lesion_measurement", "")
        why = note.split("(", 1)[-1].rstrip(")") if "(" in note else "the image carries no densities (HU) to measure"
        body = f"The slice was not measured ({why}): lesion count, size and side are not assessable from it."
        findings["lesions"] = "not assessable: not measured"
        estimate = answer.regression.get("largest_diameter_mm", 0.0)
        error = evidence.estimate_error.get("largest_diameter_mm")
        if answer.label != "normal" and error is not None and estimate >= MIN_ESTIMATED_DIAMETER_MM and not evidence.withheld:
            body += f" Estimated from image features, not measured: the largest lesion about {estimate:.0f} mm (RMS error {error:.1f} mm on validation)."
            findings.update(estimated_largest_diameter_mm=f"{estimate:.1f}", estimate_error_mm=f"{error:.1f}")
    spacing = evidence.image_tags.get("PixelSpacing", "")
    spacing = f" (pixel spacing {spacing} mm)" if spacing else ""
    if not spacing and measured is None:
        stated = evidence.image_tags.get("PixelSpacingIgnored")
        assumed = f"; the estimate assumes {DEFAULT_PIXEL_SPACING_MM:g} mm" if "estimated_largest_diameter_mm" in findings else ""
        spacing = f" (pixel spacing {'not usable: ' + stated if stated else 'not stated'}{assumed})"
    modality = evidence.image_tags.get("Modality", "image")
    if evidence.withheld:
        impression = f"Indeterminate: {evidence.withheld}. No diagnosis is given."
        closing = f"{impression} (best guess {answer.label}, confidence {answer.confidence:.2f})"
        reply = f"The scan could not be assessed with confidence: {evidence.withheld}. {NOT_FOR_CLINICAL_USE}"
    else:
        if answer.label == "normal":
            impression = "No evidence of a pulmonary nodule or mass."
        else:
            kind = "nodule" if answer.label == "nodule" else "mass"
            size = f" ({findings['largest_diameter_mm']} mm, {findings['side']})" if "largest_diameter_mm" in findings else ""
            impression = f"Findings consistent with a pulmonary {kind}{size}."
        closing = f"{impression} Diagnosis {answer.label} with confidence {answer.confidence:.2f} (predictive uncertainty {answer.predictive_entropy:.2f})."
        reply = f"{impression} Confidence {answer.confidence:.0%}. {NOT_FOR_CLINICAL_USE}"
    description = f"Findings: {modality} study{spacing}. {body}{_clinical_context(evidence)}\nImpression: {closing}\n{NOT_FOR_CLINICAL_USE}"
    return description, findings, reply


def _clinical_context(evidence: Evidence) -> str:
    """The record and the dictated note as the report quotes them."""
    record = f" Clinical information: {evidence.text.strip()[:300]}{text_cut(evidence)}" if evidence.text.strip() else ""
    dictated = f" Dictated note (transcript): {evidence.transcript[:300]}" if evidence.transcript else ""
    return record + dictated


def _report_without_scan(answer: Answer, evidence: Evidence) -> tuple[str, dict[str, str], str]:
    """No scan was read: no diagnosis, nothing said of lesions (no count, size or side, not
    "the lung fields are clear"). What the record alone suggests is a pre-test note, labelled
    as one."""
    pretest = f"{answer.label} (probability {answer.confidence:.2f}, from the record alone)"
    description = (
        f"Findings: no scan was read ({evidence.no_image}); lesions, their size and side cannot be "
        f"assessed.{_clinical_context(evidence)}\n"
        f"Impression: no diagnosis without a chest CT slice. Pre-test note, not a diagnosis: {pretest}.\n"
        f"{NOT_FOR_CLINICAL_USE}"
    )
    reply = f"No diagnosis: no chest CT slice was read. Please send one. {NOT_FOR_CLINICAL_USE}"
    return description, {"scan": f"not read: {evidence.no_image}", "pretest_note": pretest}, reply


# ----------------------------------------------------------------------- plug-ins


@dataclass(frozen=True)
class Plugin:
    """Code a task file names (`"plugin"`) for what cannot be a template: `apply` completes
    the file's TaskSpec given its labels (each {priority, next_steps, reply})."""

    about: str
    apply: Callable[[TaskSpec, dict[str, dict[str, str]]], TaskSpec]
    labels: tuple[str, ...] = ()  # the labels it is written for, in this order; () any
    needs_labels: tuple[str, ...] = ()  # labels it needs among the file's


def _screen_triage(spec: TaskSpec, labels: dict[str, dict[str, str]]) -> TaskSpec:
    return dataclasses.replace(
        spec,
        write=triage_writer(labels),
        reads="app screenshots",
        resolve="a readable screenshot of the problem or a message saying what went wrong",
        resolve_read_screen="a message saying what went wrong (the screenshot's status message was read)",
        reports=("ticket",),
    )


# What an axial chest CT slice's DICOM may say it shows (BodyPartExamined).
CHEST_BODY_PARTS = (
    "CHEST",
    "LUNG",
    "THORAX",
    "CHEST_ABDOMEN",
    "CHEST_TO_PELVIS",
    "CHESTABDOMEN",
    "CHESTABDOMENPELVIS",
    "CHEST_ABDOMEN_PELVIS",
    "TORSO",
    "WHOLEBODY",
    "WHOLE_BODY",
)


def _chest_ct(spec: TaskSpec, labels: dict[str, dict[str, str]]) -> TaskSpec:
    return dataclasses.replace(
        spec,
        regression=("lesion_count", "largest_diameter_mm", "side"),
        write=write_report,
        field_of_view_outputs=("largest_diameter_mm",),
        size_rule=SizeRule("largest_diameter_mm", small="nodule", large="mass", threshold=30.0),
        measure=measured_lesions,  # CT DICOM: sizes, count and side measured in HU (PNG: the heads')
        measured_sigma=0.5,  # the measurement's error on the phantoms: MAE 0.13 mm, 90th percentile 0.28 mm
        # Sizes and densities are read in Hounsfield units, the side on an axial slice.
        image_tags={"Modality": ("CT",), "plane": ("axial",), "BodyPartExamined": CHEST_BODY_PARTS},
        reads="axial chest CT slices",
        scan_only=True,
        anatomy={"lung_fields": ("none", "not a chest CT slice: no lung fields found")},
        needs=tuple(dict.fromkeys(("image", *spec.needs))),
        needs_reason="no chest CT slice was read, and the record alone is not a diagnosis",
        resolve="an axial chest CT slice (DICOM, or a PNG with its pixel spacing and window)",
        reports=("fhir", "dicom_sr"),
        fusion={"regression_from": "image"},  # measured on the scan, not on the record
    )


PLUGINS: dict[str, Plugin] = {
    "screen_triage": Plugin(
        "the triage writer: category, priority, the screen's status message as error_text, next steps, a reply; a help-desk ticket",
        _screen_triage,
        needs_labels=("other",),
    ),
    "chest_ct": Plugin(
        "axial chest CT: lesions measured in HU, nodule and mass split at 30 mm, lungs required, the radiology report; FHIR and DICOM SR",
        _chest_ct,
        labels=("normal", "nodule", "mass"),
    ),
}
BUILT_IN_FOLDER = Path(__file__).resolve().parent / "builtin"  # <name>.json: the built-in tasks' files


class _BuiltInTasks(Mapping[str, TaskSpec]):
    """The built-in tasks by name, read from their task files on first use (task_file.py
    reads this module's plug-ins, so it cannot be read while this module loads)."""

    def __init__(self) -> None:
        self._specs: dict[str, TaskSpec] | None = None

    def _read(self) -> dict[str, TaskSpec]:
        if self._specs is None:
            from modalmesh.router import BUILT_IN_TASKS
            from modalmesh.router.task_file import load_task_file

            self._specs = {name: load_task_file(BUILT_IN_FOLDER / f"{name}.json", built_in=True) for name in BUILT_IN_TASKS}
        return self._specs

    def __getitem__(self, name: str) -> TaskSpec:
        return self._read()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._read())

    def __len__(self) -> int:
        return len(self._read())


TASKS: Mapping[str, TaskSpec] = _BuiltInTasks()


ANSWER_FILES = (applicability.FILE_NAME, status_line.FILE_NAME, scope.FILE_NAME)  # beside the fusion model, what else an answer depends on


def version_of(name: str, folder: Path) -> str:
    """A trained task's version, '<name>@<digest>': of the fusion model in `folder`, its
    configuration (thresholds, routing) and the checks and pointer beside it, so it changes
    whenever what the task answers can (`modalmesh tune-routing`, `fit-scope`, `fit-status-line`)."""
    files = [folder / "model.safetensors", folder / "config.json"] + [folder / part for part in ANSWER_FILES if (folder / part).is_file()]
    return f"{name}@{models.file_digest(*files)}"


def spec_of(task: str | TaskSpec) -> TaskSpec:
    """A task by name (a built-in) or the TaskSpec itself (a task file's)."""
    return task if isinstance(task, TaskSpec) else TASKS[task]


@dataclass
class TaskModel:
    spec: TaskSpec
    model: Fusion
    version: str
    trained: bool
    applicability: Applicability = field(default_factory=Applicability)  # the reference set fitted at training
    status_line: StatusLine | None = None  # which screen paragraph is the status message (router/status_line.py)
    repository_version: int = 0  # its version in a model repository (router/repository.py); 0 outside one
    scope: ScopeCheck | None = None  # tells inputs about other matters from the task's own (router/scope.py)

    @property
    def abstain_below(self) -> float:
        return self.model.config.abstain_below

    def threshold_for(self, read: set[str]) -> tuple[float, str]:
        """The confidence threshold of an answer read from the modalities `read`, and what it
        is for ('' for the task's own): for one input alone, its own where validation chose a
        higher one (FusionConfig.abstain_below_alone)."""
        alone = self.model.config.abstain_below_alone.get(next(iter(read)), 0.0) if len(read) == 1 else 0.0
        if alone > self.abstain_below:
            return alone, f" for an answer from the {next(iter(read))} alone"
        return self.abstain_below, ""


# A modality read alone that gives another label than the fused answer at least this
# probability is a dissenting voice: the answer is then the average of the fused and the
# dissenting distributions (a linear opinion pool), so that one input's misreading
# cannot outvote another's clear reading at high confidence.
DISSENT = 0.7
# A modality is a dissenting voice only if its confident lone readings were right on
# validation at least as often as the confidence they claim (FusionConfig.dissent_precision).
DISSENT_PRECISION = DISSENT


class Decided(NamedTuple):
    outputs: Any  # FusionOutputs: one row per status-line reading, the most likely first
    probabilities: torch.Tensor  # [L], what the task reports (TaskSpec.finish), dissent pooled in
    regression: torch.Tensor  # [R]
    outstanding_weight: float  # the gate's predicted weight of what is still outstanding
    dissent: tuple[str, ...] = ()  # e.g. "the text alone reads as crash (0.91)"


def decide(
    model: Fusion,
    spec: TaskSpec,
    features: dict[str, torch.Tensor],
    tags: dict[str, str],
    outstanding=(),
    use_measured: bool = True,
    attention: bool = True,
    pointer=None,
    beside: Callable[[Callable[[], Any]], Callable[[], Any]] | None = None,
    kept: AloneReadings | None = None,
) -> Decided:
    """One decision from the evidence in hand: the fusion model's outputs, what the task
    reports (probabilities [L], regression [R]; see TaskSpec.finish) and the gate's
    predicted weight of the `outstanding` sources. With a status-line `pointer` the screen
    text is read one likely status paragraph at a time and the answers are averaged,
    weighted by the pointer's probabilities (router/status_line.py `readings`); `outputs`
    then hold one row per reading, the most likely first. Where more than one modality is
    in hand, each that could answer alone (it holds what the task needs) is read alone
    too, and a dissenting one (DISSENT) is pooled into the answer. The router and the
    evaluation both decide through here. `attention=False` skips keeping the attention
    weights (outputs.attention is None; only an explanation reads them). `beside`: starts
    a callable on another thread and returns a function that waits for its result; the
    lone readings then run there while the whole input is fused here (the same numbers).
    `kept`: the request's lone readings so far (AloneReadings), reused where the inputs
    are the same; a decision on one modality alone is kept there as its lone reading."""
    present = {name: sources for name, sources in MODALITY_SOURCES.items() if any(s in features for s in sources)}
    lone: Callable[[], Any] | None = None
    if len(present) >= 2:

        def readings() -> list[tuple[str, torch.Tensor]]:
            return list(lone_readings(model, spec, features, tags, use_measured, pointer, kept))

        lone = beside(readings) if beside is not None else readings
    projections = kept.projections if kept is not None else None
    outputs, probabilities, regression, weight, _ = fuse(model, spec, features, tags, outstanding, use_measured, attention, pointer, projections)
    if lone is None:
        if kept is not None and len(present) == 1:  # this is that modality's reading alone too: kept for later decisions
            name = next(iter(present))
            alone_tags = tags if name == "image" else {}
            if set(spec.needs) <= {name} and (name == "image" or not tags):
                kept.keep(name, {s: f for s, f in features.items() if s in MODALITY_SOURCES[name]}, alone_tags, probabilities)
        return Decided(outputs, probabilities, regression, weight)
    best = int(probabilities.argmax())
    pooled, dissent = [probabilities], []
    for name, view in lone():
        if model.config.dissent_precision.get(name, 1.0) < DISSENT_PRECISION:
            continue  # alone, it was often confidently wrong on validation: not a voice to pool
        other = int(torch.argmax(torch.where(torch.arange(len(view)) == best, -1.0, view)))
        if float(view[other]) >= DISSENT:
            pooled.append(view)
            dissent.append(f"the {name} alone reads as {spec.labels[other]} ({float(view[other]):.2f})")
    if not dissent:
        return Decided(outputs, probabilities, regression, weight)
    return Decided(outputs, torch.stack(pooled).mean(dim=0), regression, weight, tuple(dissent))


def lone_readings(
    model, spec: TaskSpec, features: dict[str, torch.Tensor], tags: dict[str, str], use_measured: bool = True, pointer=None, kept: "AloneReadings | None" = None
):
    """(modality, probabilities [L]) for each modality in `features` that can answer alone
    (it holds what the task needs; for the CT task only the scan), read by itself: the
    voices decide pools, and what train.dissent_precision scores. `kept`: one request's
    readings so far (AloneReadings), reused while a modality's inputs are the same."""
    for name, sources in MODALITY_SOURCES.items():
        alone = {s: f for s, f in features.items() if s in sources}
        if alone and set(spec.needs) <= {name}:
            alone_tags = tags if name == "image" else {}

            def read(alone=alone, alone_tags=alone_tags) -> torch.Tensor:
                projections = kept.projections if kept is not None else None
                return fuse(model, spec, alone, alone_tags, (), use_measured, False, pointer, projections).probabilities

            yield name, (read() if kept is None else kept.get(name, alone, alone_tags, read))


class AloneReadings:
    """One request's readings of each modality alone (tasks.decide's dissent check), kept
    while that modality's inputs are the same tensors: a request decides again as each
    encoder answers, and the router reads a modality alone while others are still at work
    (Pipeline.read_alone_ahead). Whoever asks first computes; a later asker waits for it."""

    def __init__(self) -> None:
        self._readings: ComputedOnce[torch.Tensor] = ComputedOnce(_same_inputs)
        self.projections = ProjectedTokens()  # the request's projected sources, for every decision and reading alone

    def get(self, name: str, alone: dict[str, torch.Tensor], tags: dict[str, str], read: Callable[[], torch.Tensor]) -> torch.Tensor:
        return self._readings.get(name, (dict(alone), dict(tags)), read)

    def done(self, name: str) -> bool:
        """Whether `name` has been read alone for this request."""
        return self._readings.done(name)

    def keep(self, name: str, alone: dict[str, torch.Tensor], tags: dict[str, str], reading: torch.Tensor) -> None:
        """A reading of `name` alone already made (a decision on that modality only)."""
        self.get(name, alone, tags, lambda: reading)


def _same_inputs(kept: tuple[dict[str, torch.Tensor], dict[str, str]], given: tuple[dict[str, torch.Tensor], dict[str, str]]) -> bool:
    """A modality's inputs are the same: the same tensors of the same sources, the same tags."""
    return kept[0].keys() == given[0].keys() and all(kept[0][s] is given[0][s] for s in kept[0]) and kept[1] == given[1]


def fuse(
    model: Fusion,
    spec: TaskSpec,
    features: dict[str, torch.Tensor],
    tags: dict[str, str],
    outstanding=(),
    use_measured: bool = True,
    attention: bool = True,
    pointer=None,
    projections: ProjectedTokens | None = None,
) -> Decided:
    """decide without the dissent check: every input fused, the status-line readings
    averaged. `projections`: the request's projected sources so far (ProjectedTokens)."""

    chances, batch = zip(*status_line.readings(pointer, features))
    share = torch.tensor(chances, dtype=torch.float32)
    with torch.inference_mode():
        inputs = model.embed(list(batch), projections)
        outputs = model(inputs, attention=attention)  # type: ignore[arg-type]  # inputs: this model's embed
        weight = 0.0
        if outstanding:
            mask = torch.tensor([[s in outstanding for s in SOURCES]] * len(batch))
            weight = float((share * model.outstanding_weight(inputs, outputs, mask)).sum())  # type: ignore[arg-type]  # inputs: this model's embed
    finished = [
        spec.finish(p, r, tags, model.config.measurement_sigma, use_measured, model.config.measurement_evidence)
        for p, r in zip(outputs.probabilities, outputs.regression)
    ]
    probabilities = sum(c * p for c, (p, _) in zip(chances, finished))
    regression = sum(c * r for c, (_, r) in zip(chances, finished))
    return Decided(outputs, probabilities, regression, weight)


class Applicable(NamedTuple):
    score: float | None  # the input's applicability score; None where not checked
    reason: str  # why the input is not applicable; '' where it is
    note: str = ""  # why an input unlike the training inputs is read all the same; '' otherwise


def not_applicable(task: TaskModel, modality: str, features: torch.Tensor | None, tags: dict[str, str], screen_text: torch.Tensor | None = None) -> Applicable:
    """Whether an input is one the task reads. The image's or audio's tags are checked
    first (TaskSpec.inapplicable), then the features against the task's reference set
    (applicability.py). An image whose look is unlike the training screens is read all the
    same where its `screen_text` (its paragraphs' vectors) holds a status message the task's
    status-line pointer read surely (status_line.read_surely): a screen of a new app, in a
    new theme, or photographed, whose message is one the task knows; a scan, a photo or a
    page of figures has none. The router and `modalmesh eval` both judge inputs through here."""
    if tags:
        reason = task.spec.inapplicable(modality, tags)
        if reason:
            return Applicable(None, reason)
    if features is None:
        return Applicable(None, "")
    score, reason = task.applicability.judge(modality, features)
    if reason and modality == "image" and screen_text is not None and task.status_line is not None:
        chance = status_line.read_surely(task.status_line, screen_text)
        if chance is not None:
            note = f"its look is {reason}, but its status message is like those the task was trained on (read surely, {chance:.2f}): read"
            return Applicable(score, "", note)
    return Applicable(score, reason)


def load_task(spec: TaskSpec, weights_dir: str, precision: str = "auto", engine: FusionEngine | None = None) -> TaskModel:
    """From `<weights_dir>/<task>/`, or untrained when there is nothing there."""
    return load_task_folder(spec, Path(weights_dir) / spec.name if weights_dir else None, precision, engine)


def load_task_folder(spec: TaskSpec, folder: Path | None, precision: str = "auto", engine: FusionEngine | None = None) -> TaskModel:
    """`precision`: what an ensemble's linear maps compute in (fusion.fusion_precision:
    "auto", "float32" or "bfloat16"); the router's `fusion_precision` setting. `engine`:
    what runs its decisions (FusionEngine; torch when None)."""
    weights = folder / "model.safetensors" if folder else None
    if weights is not None and weights.is_file():
        from safetensors.torch import load_file

        assert folder is not None  # the weights file is in it
        config_file = folder / "config.json"
        try:
            config = FusionConfig.from_dict(json.loads(config_file.read_text()))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{config_file}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise ValueError(f"{config_file}: not a fusion model's configuration ({str(exc)[:200]})") from None
        if tuple(config.labels) != spec.labels:
            raise ValueError(f"{weights}: labels {config.labels} do not match task {spec.name} {spec.labels}")
        built = build_model(config)
        try:
            state = load_file(str(weights))
        except Exception as exc:  # safetensors' own error type: a truncated or foreign file
            raise ValueError(f"{weights}: not a readable safetensors file ({str(exc)[:200]})") from None
        try:
            built.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"{weights}: does not fit {config_file} ({str(exc).splitlines()[0][:200]})") from None
        model: FusionModel | StackedEnsemble | CompiledEnsemble = built.stacked() if isinstance(built, FusionEnsemble) else built
        digest = models.file_digest(weights)  # the fusion model's own: what its compiled form is cached under
        if isinstance(model, StackedEnsemble):
            name = f"{spec.name} ({weights})"
            model.set_precision(checked_precision(model, precision, name))
            if engine is not None and engine.name == "openvino":
                model = compiled_ensemble(model, f"{spec.name}@{digest}", model.precision, engine, name)
        if config.routing:  # thresholds tuned on the validation split override the task's defaults
            spec = dataclasses.replace(
                spec,
                tau=float(config.routing.get("tau", spec.tau)),
                gamma=float(config.routing.get("gamma", spec.gamma)),
                eager=tuple(config.routing.get("eager", spec.eager)),
                quick=tuple(config.routing.get("quick", spec.quick)),
            )
        return TaskModel(
            spec,
            model.eval(),
            version_of(spec.name, folder),
            trained=True,
            applicability=Applicability.load(folder),
            status_line=status_line.load(folder),
            scope=scope.load(folder),
        )
    torch.manual_seed(0)  # untrained but stable: the same request gets the same answer
    model = FusionModel(FusionConfig(labels=spec.labels, regression=spec.regression, **spec.fusion)).eval()
    log.warning("task %s: no trained weights%s; answering with untrained heads", spec.name, f" in {folder}" if folder else "")
    return TaskModel(spec, model, f"{spec.name}@untrained", trained=False)
