"""A task as a file: `task.json`, validated, turned into the TaskSpec the router serves.

    {
      "name": "qc_line",
      "description": "Quality control from a product photo and the machine's sound.",
      "labels": {
        "ok":             {"priority": "low",  "next_steps": "None.", "reply": "The part passed."},
        "surface_defect": {"priority": "high", "next_steps": "Pull the part.", "reply": "..."}
      },
      "modalities": ["image", "audio"],
      "needs": [],
      "side_outputs": [],
      "routing": {"tau": 0.9, "gamma": 0.1},
      "training": {"members": 1, "feature_noise": 0.5},
      "description_template": "{label} ({confidence:.2f}), priority {priority}. {next_steps}"
    }

Required: name, description, labels (two or more; each may give priority low | normal |
high, next_steps and reply), modalities (text, image, audio). Optional: needs (modalities
without which no answer is given), side_outputs ("image": read the image's text by OCR,
"audio": transcribe speech), speech (what the audio holds, in words, for a task whose
audio is spoken: "voice messages"; audio in which speech detection finds no speech is
then not applicable), routing defaults, training defaults and the description
template, over the fields {label}, {confidence}, {priority}, {next_steps}, {text},
{transcript} and {screen_text}, and a plug-in: code for what cannot be a template
(tasks.PLUGINS: "screen_triage", "chest_ct"), which then writes the description itself.
The built-in tasks are task files with plug-ins (router/builtin/). Anything else is
refused, so that a misspelt field is not silently ignored. Errors name the file, the line
and the field.

In a model repository the file is `<repository>/<task>/task.json`, beside the task's
numbered versions (router/repository.py).
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import Any

from modalmesh.router import BUILT_IN_TASKS
from modalmesh.router.tasks import PLUGINS, UNCERTAIN, Answer, Evidence, TaskSpec

FILE_NAME = "task.json"
MODALITY_NAMES = ("text", "image", "audio")
PRIORITIES = ("low", "normal", "high")
NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_ -]{0,62}$")
TEMPLATE_FIELDS = ("label", "confidence", "priority", "next_steps", "text", "transcript", "screen_text")
DEFAULT_TEMPLATE = "{label} (confidence {confidence:.2f}), priority {priority}. {next_steps}"
TOP_LEVEL = ("name", "description", "labels", "modalities", "needs", "side_outputs", "speech", "routing", "training", "description_template", "plugin")
MAX_FILE_BYTES = 256 * 1024


class TaskFileError(ValueError):
    """A task file that cannot be used: every problem, each naming the file, line and field."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path, self.problems = path, problems
        super().__init__("; ".join(problems))


def load_task_file(path: str | Path, built_in: bool = False) -> TaskSpec:
    """The TaskSpec a task file describes; TaskFileError listing every problem otherwise.
    `built_in`: one of the built-in tasks' own files, which may use their names."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TaskFileError(path, [f"{path}: cannot be read ({exc.strerror})"]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise TaskFileError(path, [f"{path}: {len(raw)} bytes, over the limit of {MAX_FILE_BYTES}"])
    try:
        text = raw.decode("utf-8")
        document = json.loads(text)
    except UnicodeDecodeError as exc:
        raise TaskFileError(path, [f"{path}: not UTF-8 (byte {exc.start})"]) from None
    except json.JSONDecodeError as exc:
        raise TaskFileError(path, [f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}"]) from None
    checker = _Checker(path, text, built_in)
    spec = checker.spec(document)
    if checker.problems:
        raise TaskFileError(path, checker.problems)
    assert spec is not None  # no problems: built
    return spec


class _Checker:
    def __init__(self, path: Path, text: str, built_in: bool = False) -> None:
        self.path, self.text, self.problems, self.built_in = path, text, list[str](), built_in

    def fail(self, field: str, problem: str) -> None:
        key = field.split(".")[-1]
        at = self.text.find(f'"{key}"')
        line = self.text.count("\n", 0, at) + 1 if at >= 0 else 1
        self.problems.append(f"{self.path}:{line}: {field}: {problem}")

    def strings(self, document: dict, field: str, allowed: tuple[str, ...], within: tuple[str, ...] | None = None) -> tuple[str, ...]:
        value = document.get(field, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(field, f"a list of names from {', '.join(allowed)}")
            return ()
        wrong = [v for v in value if v not in allowed or (within is not None and v not in within)]
        if wrong:
            self.fail(field, f"{', '.join(map(repr, wrong))}: each must be one of {', '.join(within if within is not None else allowed) or 'none'}")
        return tuple(v for v in value if v not in wrong)

    def number(self, section: dict, field: str, low: float, high: float, integer: bool = False) -> Any:
        value = section[field.split(".")[-1]]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)) or not low <= value <= high:
            self.fail(field, f"{'an integer' if integer else 'a number'} from {low:g} to {high:g}")
            return None
        return value

    def spec(self, document: Any) -> TaskSpec | None:
        if not isinstance(document, dict):
            self.problems.append(f"{self.path}:1: a task file is one JSON object")
            return None
        for field in document:
            if field not in TOP_LEVEL:
                self.fail(field, f"not a task file field (one of {', '.join(TOP_LEVEL)})")
        for field in ("name", "description", "labels", "modalities"):
            if field not in document:
                self.problems.append(f"{self.path}: {field}: required")
        name = document.get("name", "")
        if "name" in document and (not isinstance(name, str) or not NAME.match(name)):
            self.fail("name", "lower-case letters, digits and _, starting with a letter, at most 63")
        elif name in BUILT_IN_TASKS and not self.built_in:
            self.fail("name", f"{name!r} is a built-in task; choose another name")
        description = document.get("description", "")
        if "description" in document and (not isinstance(description, str) or not description.strip()):
            self.fail("description", "a sentence saying what the task does")
        labels = self.labels(document.get("labels")) if "labels" in document else {}
        modalities = self.strings(document, "modalities", MODALITY_NAMES) if "modalities" in document else ()
        if "modalities" in document and not modalities:
            self.fail("modalities", "at least one of text, image, audio")
        needs = self.strings(document, "needs", MODALITY_NAMES, within=modalities)
        side_outputs = self.strings(document, "side_outputs", ("image", "audio"), within=tuple(m for m in modalities if m != "text"))
        speech = document.get("speech", "")
        if not isinstance(speech, str) or len(speech) > 100 or ("speech" in document and not speech.strip()):
            self.fail("speech", 'what the audio holds, in a few words ("voice messages"), at most 100 characters')
        elif speech and "audio" not in modalities:
            self.fail("speech", "the task has no audio modality")
        tau, gamma = TaskSpec.tau, TaskSpec.gamma
        routing = document.get("routing", {})
        if not isinstance(routing, dict) or set(routing) - {"tau", "gamma"}:
            self.fail("routing", 'an object with "tau" and "gamma" (numbers from 0 to 1.01)')
        else:
            tau = self.number(routing, "routing.tau", 0.0, 1.01) if "tau" in routing else tau
            gamma = self.number(routing, "routing.gamma", 0.0, 1.01) if "gamma" in routing else gamma
        members, noise = 1, 0.5
        training = document.get("training", {})
        if not isinstance(training, dict) or set(training) - {"members", "feature_noise"}:
            self.fail("training", 'an object with "members" (1-8) and "feature_noise" (0-2)')
        else:
            members = self.number(training, "training.members", 1, 8, integer=True) if "members" in training else members
            noise = self.number(training, "training.feature_noise", 0.0, 2.0) if "feature_noise" in training else noise
        plugin = document.get("plugin")
        if plugin is not None and plugin not in PLUGINS:
            self.fail("plugin", f"one of {', '.join(PLUGINS)}")
        elif plugin is not None:
            wanted, needed = PLUGINS[plugin].labels, PLUGINS[plugin].needs_labels
            if wanted and tuple(labels) != wanted:
                self.fail("labels", f"plug-in {plugin} is written for the labels {', '.join(wanted)}, in that order")
            missing = [label for label in needed if label not in labels]
            if missing:
                self.fail("labels", f"plug-in {plugin} needs the label(s) {', '.join(missing)}")
        template = document.get("description_template", DEFAULT_TEMPLATE)
        if not isinstance(template, str):
            self.fail("description_template", "a string")
        else:
            self.template(template)
        if self.problems:
            return None
        spec = TaskSpec(
            name=name,
            description=description.strip(),
            labels=tuple(labels),
            modalities=modalities,
            tau=tau,
            gamma=gamma,
            side_outputs=side_outputs,
            speech=speech.strip() if isinstance(speech, str) else "",
            write=_writer(labels, template),
            members=members,
            feature_noise=noise,
            needs=needs,
            needs_reason=f"no {' or '.join(needs)} was read" if needs else "",
            resolve=f"another {' or '.join(modalities)} input",
        )
        return PLUGINS[plugin].apply(spec, labels) if plugin is not None else spec

    def labels(self, value: Any) -> dict[str, dict[str, str]]:
        if not isinstance(value, dict) or len(value) < 2:
            self.fail("labels", "an object with two labels or more, each {priority, next_steps, reply}")
            return {}
        labels = {}
        for label, about in value.items():
            where = f"labels.{label}"
            if not LABEL.match(label) or label == UNCERTAIN:
                self.fail(where, f"a label is letters, digits, _, - or spaces (at most 63), and not {UNCERTAIN!r}")
                continue
            if not isinstance(about, dict) or set(about) - {"priority", "next_steps", "reply"}:
                self.fail(where, "an object with priority, next_steps and reply (each optional)")
                continue
            priority = about.get("priority", "normal")
            if priority not in PRIORITIES:
                self.fail(f"{where}.priority", f"one of {', '.join(PRIORITIES)}")
            for field in ("next_steps", "reply"):
                if not isinstance(about.get(field, ""), str):
                    self.fail(f"{where}.{field}", "a string")
            labels[label] = {"priority": str(priority), "next_steps": str(about.get("next_steps", "")), "reply": str(about.get("reply", ""))}
        return labels

    def template(self, template: str) -> None:
        try:
            fields = [parsed[1] for parsed in string.Formatter().parse(template) if parsed[1] is not None]
        except ValueError as exc:
            self.fail("description_template", f"not a template: {exc}")
            return
        for field in fields:
            if field not in TEMPLATE_FIELDS:  # also refuses attribute and index access ("{label.__class__}")
                self.fail("description_template", f"{{{field}}} is not one of {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}")
        if not self.problems:
            try:
                template.format(label="x", confidence=0.5, priority="low", next_steps="", text="", transcript="", screen_text="")
            except (ValueError, TypeError) as exc:
                self.fail("description_template", f"not a template: {exc}")


def _writer(labels: dict[str, dict[str, str]], template: str):
    """A task file's writer: the description from its template, the label's priority and
    next steps as findings, its reply; a withheld answer says so and names no problem."""

    def write(answer: Answer, evidence: Evidence) -> tuple[str, dict[str, str], str]:
        about = labels.get(answer.label, {"priority": "normal", "next_steps": "", "reply": ""})
        fields = {
            "label": answer.label,
            "confidence": answer.confidence,
            "priority": about["priority"],
            "next_steps": about["next_steps"],
            "text": evidence.text.strip()[:200],
            "transcript": evidence.transcript[:200],
            "screen_text": evidence.key_line,
        }
        if evidence.withheld:
            description = f"Not decided: {evidence.withheld}. Best guess {answer.label} ({answer.confidence:.2f})."
            return description, {"priority": "normal", "next_steps": "A person should look at this."}, ""
        return template.format(**fields).strip(), {"priority": about["priority"], "next_steps": about["next_steps"]}, about["reply"]

    return write


def template_file(name: str, labels: list[str], modalities: list[str]) -> dict:
    """The task file `modalmesh task init` writes, to be edited."""
    return {
        "name": name,
        "description": f"What {name} answers, in a sentence.",
        "labels": {label: {"priority": "normal", "next_steps": f"What to do about {label}.", "reply": ""} for label in labels},
        "modalities": modalities,
        "needs": [],
        "side_outputs": [],
        "routing": {"tau": 0.9, "gamma": 0.1},
        "training": {"members": 1, "feature_noise": 0.5},
        "description_template": DEFAULT_TEMPLATE,
    }


def find_task_files(repository: Path) -> dict[str, Path]:
    """task -> its task file, for every `<repository>/<task>/task.json`."""
    if not repository.is_dir():
        return {}
    return {entry.name: entry / FILE_NAME for entry in sorted(repository.iterdir()) if (entry / FILE_NAME).is_file()}
