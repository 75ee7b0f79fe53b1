"""`modalmesh train`: fit the router's fusion model for a task on a manifest.

    modalmesh train --task screenshot_triage --data data/triage/train.jsonl --out weights/screenshot_triage

The encoders stay frozen: their features are computed once (in this process, with the
services' own code) and cached on disk. Then the projections, attention, gate and heads
are trained with modality dropout (any subset of sources must give a valid answer),
the gate's priors learn to predict each source's score before it arrives (what compute
routing relies on), and the temperature is calibrated on the validation split (the
manifest's sibling val.jsonl). With --members N, N such models from seeds seed..seed+N-1
form an ensemble (fusion.FusionEnsemble). Writes model.safetensors, config.json, MODEL_CARD.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from modalmesh.common import models
from modalmesh.common.progress import progress
from modalmesh.data.generate import task_records
from modalmesh.router import applicability, scope, status_line
from modalmesh.router.features import FeatureCache, configured_asr_engine, configured_fusion_engine, configured_fusion_precision, text_model_version
from modalmesh.router.finetune import LEARNING_RATE as TEXT_TOP_LEARNING_RATE
from modalmesh.router.fusion import MODALITIES, FusionConfig, FusionEnsemble, FusionModel, fit_log_temperature
from modalmesh.router.repository import staged_version, versions_in
from modalmesh.router.routing import EAGER_MIN_SHARE
from modalmesh.router.tasks import (
    ABSTAIN_RISK,
    DISSENT,
    NOT_FOR_CLINICAL_USE,
    SHIPPED_WEIGHTS,
    TaskModel,
    TaskSpec,
    decide,
    load_task_folder,
    lone_readings,
    spec_of,
)

log = logging.getLogger(__name__)

REGRESSION_SCALE = {"lesion_count": 1.0, "largest_diameter_mm": 10.0, "side": 1.0}  # diameter: tenths of the field of view
GATE_ANCHOR = 0.01
MODALITY_GROUPS = (("text",), ("image", "image_text"), ("audio", "audio_text"))


@dataclass
class Example:
    features: dict[str, torch.Tensor]
    label: int
    targets: torch.Tensor  # regression targets as the model predicts them (field-of-view outputs as fractions)
    target_mask: torch.Tensor  # which targets apply
    tags: dict[str, str]  # the image's tags (PixelSpacing, Columns): what turns fractions into mm
    truth: torch.Tensor  # regression targets in the units the task reports (mm)
    # What one input shows when it is all a caller sends (the manifest's `alone_labels`):
    # modality -> label index, -1 where that input alone shows no label (a vague message).
    alone: dict[str, int] = dataclasses.field(default_factory=dict)
    audio_tags: dict[str, str] = dataclasses.field(default_factory=dict)  # the audio's (speech_seconds): is it speech?

    def truth_alone(self, modality: str) -> int:
        """The right answer from `modality` alone: the manifest's, else the item's label."""
        return self.alone.get(modality, self.label)


def open_trained(spec: TaskSpec, weights: str) -> tuple[TaskModel, Path]:
    """A task's model for offline use, and its folder. `weights`: a task folder
    (model.safetensors inside) or a weights folder (<task>/ inside); the shipped weights
    when empty. Refused when it was trained on features of another text model than the
    encoders here run."""
    folder = Path(weights) if weights else SHIPPED_WEIGHTS / spec.name
    if weights and not (folder / "model.safetensors").is_file():
        folder = folder / spec.name
    task_model = load_task_folder(spec, folder, configured_fusion_precision(), configured_fusion_engine())
    task_model.model.eval()
    if task_model.model.config.text_model:  # the features must come from the text model the weights were trained with
        running = text_model_version()
        if not models.same_weights(running, task_model.model.config.text_model):
            hint = folder / "text-model" if (folder / "text-model").is_dir() else "that model's folder"
            raise ValueError(
                f"{folder}: the weights were trained with the text model {task_model.model.config.text_model}, "
                f"the encoders here run {running or 'a hub model'}: run with MODALMESH_TEXT_MODEL={hint}"
            )
    return task_model, folder


def check_input_widths(folder: Path, model, examples) -> None:
    """Refuses features of another width than the weights were trained on (another encoder model)."""
    expected = model.config.input_widths
    wrong = {s: w for s, w in input_widths(examples, {}).items() if w != expected.get(s, w)}
    if wrong:
        source, width = next(iter(wrong.items()))
        raise ValueError(
            f"{folder}: the weights expect {source} features {expected[source]} wide, the encoders give {width}: "
            f"run with the models they were trained with (MODALMESH_<SERVICE>_MODEL)"
        )


def regression_targets(task: str | TaskSpec, record: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets in the task's units (mm), and which apply: a size-rule output (the largest
    diameter) only where there is a lesion, `side` only where it is left or right."""
    spec = spec_of(task)
    extra = record.get("extra", {})
    values, mask = [], []
    for name in spec.regression:
        if name == "side":
            side = extra.get("side", "none")
            values.append(-1.0 if side == "left" else 1.0)
            mask.append(side in ("left", "right"))
        else:
            values.append(float(extra.get(name, 0.0)))
            sized = spec.size_rule is None or name != spec.size_rule.output or record["label"] in (spec.size_rule.small, spec.size_rule.large)
            mask.append(name in extra and sized)
    return torch.tensor(values, dtype=torch.float32), torch.tensor(mask, dtype=torch.bool)


def load_examples(
    task: str | TaskSpec, manifest: str | Path, cache: FeatureCache, label: str, scope: str = "in", refuse: bool = True
) -> tuple[list[Example], list]:
    """The manifest's records of `scope` ("in": the task's own inputs, the default for a record
    without one; "out": inputs the task should not answer, label -1) with their features.
    `refuse`: an image the task does not read (tasks.TaskSpec.inapplicable), or an audio clip, stops it,
    naming the item (training); else it is kept, to be judged as the router judges it."""
    spec = spec_of(task)
    records = task_records(manifest, spec.name, scope)
    if not records and scope == "in":
        raise ValueError(f"{manifest}: no records for task {spec.name}")
    for record in records if scope == "in" else ():  # every label checked before any feature is computed
        if record["label"] not in spec.labels:
            raise ValueError(f"{manifest}: {record['id']}: label {record['label']!r} is not one of {spec.labels}")
        check_alone_labels(spec, manifest, record)
    examples, items = [], []
    for record in progress(records, len(records), f"features {label:5s}"):
        item = cache.get(record)
        if scope == "in":
            truth, mask = regression_targets(task, record)
        else:
            truth, mask = torch.zeros(len(spec.regression)), torch.zeros(len(spec.regression), dtype=torch.bool)
        tags = dict(item.evidence.get("image_tags", {}))
        audio_tags = dict(item.evidence.get("audio_tags", {}))
        for modality, given in (("image", tags), ("audio", audio_tags)):
            refused = spec.inapplicable(modality, given) if record.get(modality) and refuse else None
            if refused:  # what the router would not read (an MR for the CT task, a voice message without speech) is not learned from
                raise ValueError(f"{manifest}: {record['id']}: {modality} {record[modality]}: {refused}")
        features = {s: f.float().clone() for s, f in item.features.items()}  # own, aligned memory: GEMM rounding is the same on every run
        index = spec.labels.index(record["label"]) if scope == "in" else -1
        alone = {m: -1 if label is None else spec.labels.index(label) for m, label in record.get("alone_labels", {}).items()}
        examples.append(Example(features, index, truth / spec.units(tags), mask, tags, truth, alone, audio_tags))
        items.append(item)
    return examples, items


def check_alone_labels(spec: TaskSpec, manifest: str | Path, record: dict) -> None:
    """A record's optional `alone_labels`: per modality, what that input shows when it is all
    a caller sends (a label of the task, or null where it alone shows none)."""
    given = record.get("alone_labels", {})
    where = f"{manifest}: {record['id']}: alone_labels"
    if not isinstance(given, dict):
        raise ValueError(f"{where}: an object of modality -> label or null, not {given!r}")
    for modality, label in given.items():
        if modality not in MODALITIES:
            raise ValueError(f"{where}: {modality!r} is not a modality ({', '.join(MODALITIES)})")
        if label is not None and label not in spec.labels:
            raise ValueError(f"{where}: {modality}: label {label!r} is not one of {spec.labels} (or null)")


def input_widths(examples: list[Example], defaults: dict[str, int]) -> dict[str, int]:
    """Each source's feature width as the encoders gave it (another text backbone gives
    768, not 384); a source no example has keeps its default. One width per source."""
    widths, seen = dict(defaults), dict[str, int]()
    for example in examples:
        for source, features in example.features.items():
            width = int(features.shape[-1])
            if seen.setdefault(source, width) != width:
                raise ValueError(
                    f"source {source!r} has features {seen[source]} and {width} wide: were the "
                    f"features extracted with two different encoder models? (clear the feature cache)"
                )
    widths.update(seen)
    return widths


def modality_dropout(features: dict[str, torch.Tensor], rng: random.Random, p: float = 0.35) -> dict[str, torch.Tensor]:
    """Drop whole modalities (with their side outputs) and single side outputs at random,
    keeping at least one source."""
    kept = dict(features)
    for group in MODALITY_GROUPS:
        if rng.random() < p:
            for source in group:
                kept.pop(source, None)
    for source in ("image_text", "audio_text"):
        if rng.random() < p:
            kept.pop(source, None)
    if not kept:
        source = rng.choice(sorted(features))
        kept = {source: features[source]}
    return kept


def add_noise(features: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """Gaussian noise relative to each row's RMS: unseen wordings land near seen ones, not on them.
    Drawn source by source in name order, whatever order the dict has: features fresh from
    the encoders and the same features read back from the cache (safetensors: by name) must
    get the same noise, or a first training run differs from every later one."""
    if scale <= 0:
        return features
    return {s: features[s] + scale * features[s].pow(2).mean(dim=-1, keepdim=True).sqrt() * torch.randn_like(features[s]) for s in sorted(features)}


@contextlib.contextmanager
def deterministic_torch():
    """Deterministic kernels while training (some backward passes accumulate in a
    thread-dependent order otherwise; Adam turns those last-bit differences into
    visibly different weights), restored afterwards."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def train(
    task: str | TaskSpec,
    data: str,
    out: str,
    epochs: int = 40,
    seed: int = 0,
    cache_dir: str = "",
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    weight_decay: float = 1e-2,
    modality_dropout_p: float = 0.35,
    regression_weight: float = 1.0,
    feature_noise: float | None = None,
    label_smoothing: float = 0.05,
    members: int | None = None,
    finetune_top: int = 0,
    repository: str = "",
    **config_overrides,
) -> dict:
    """`finetune_top` K > 0: the text encoder's top K layers train with the fusion model
    (router/finetune.py) and are written to `text-model/` in `out`; one model, not an ensemble.
    `repository`: write the task's next version in this model repository instead of `out`
    (router/repository.py); the summary's "out" says where it went."""
    spec = spec_of(task)
    name = spec.name
    config = FusionConfig(labels=spec.labels, regression=spec.regression, **{**spec.fusion, **config_overrides})  # a bad size is refused now
    if not repository:
        weights_folder(Path(out))  # refused now, not after the training
    members = spec.members if members is None else members
    if finetune_top and members != 1:
        raise ValueError(f"--finetune-top trains one model: add --members 1 (the task's default is {members})")
    feature_noise = spec.feature_noise if feature_noise is None else feature_noise
    started = time.perf_counter()
    manifest = Path(data)
    cache = FeatureCache.for_task(spec, manifest, cache_dir)
    try:
        train_set, train_items = load_examples(spec, manifest, cache, "train")
        # Inputs the task should not answer (the manifest's out-of-scope records): what the scope check learns from.
        outliers, _ = load_examples(spec, manifest, cache, "train, out of scope", scope="out", refuse=False)
        val_path = manifest.with_name("val.jsonl")
        val_set, val_items = load_examples(spec, val_path, cache, "val") if val_path.is_file() and val_path != manifest else ([], [])
        val_outliers = load_examples(spec, val_path, cache, "val, out of scope", scope="out", refuse=False)[0] if val_set else []
    finally:
        cache.close()
    # Validation with the screen text read quickly: whether ROUTED mode reads it so first (tune_routing_on).
    quick_val = quick_readings(spec, val_path, cache_dir) if val_set and "image" in spec.side_outputs else None
    text_top = None
    if finetune_top:
        text_top = _prepare_text_top(spec, finetune_top, [(manifest, train_set, train_items), (val_path, val_set, val_items)])
    feature_seconds = time.perf_counter() - started

    # The status-line pointer first: the fusion model reads the screen through it (status_line.focus).
    pointer, pointer_summary = fit_status_line(spec, manifest, val_path, train_set, train_items, val_set, val_items, seed)
    # Validation as the router reads it (every screen paragraph, through the pointer, with
    # tasks.decide): the routing and abstention thresholds are chosen on it.
    served_val = val_set
    train_set, val_set = status_line.focus_examples(pointer, train_set), status_line.focus_examples(pointer, val_set)
    # Inputs about other matters told from the task's own on what their words say (router/scope.py);
    # with fine-tuned text layers the router reads other vectors than these: `fit-scope` then, with them.
    scope_check, scope_summary = (
        scope.fit([e.features for e in train_set], [e.features for e in outliers], [e.features for e in val_set], [e.features for e in val_outliers], pointer)
        if text_top is None
        else (None, None)
    )

    config.input_widths = input_widths(train_set + val_set, config.input_widths)
    trained, histories, train_seconds = [], [], 0.0
    for index in range(members):  # member i: training alone from seed + i, through this run's pointer
        member, member_history, seconds = train_member(
            config,
            spec,
            train_set,
            val_set,
            seed + index,
            epochs,
            batch_size,
            learning_rate,
            weight_decay,
            modality_dropout_p,
            regression_weight,
            feature_noise,
            label_smoothing,
            label="training    " if members == 1 else f"member {index + 1}/{members}",
            text_top=text_top,
        )
        trained.append(member)
        histories.append(member_history)
        train_seconds += seconds
    model: FusionModel | FusionEnsemble
    if members == 1:
        model = trained[0]
        config = model.config
    else:
        config = dataclasses.replace(config, members=members, gate_offsets=[m.config.gate_offsets for m in trained])
        model = FusionEnsemble(config, trained)
    model.eval()
    published: list[Path] = []
    staging = staged_version(Path(repository) / name, published) if repository else staged_folder(Path(out))
    with staging as out_dir:  # the weights appear whole, or not at all
        if text_top is not None:  # from here on, validation is read through the trained layers
            val_set, served_val = text_top.read(val_set), text_top.read(served_val)
            if quick_val is not None:
                quick_val = (text_top.read(quick_val[0]), quick_val[1])
            config.text_model = text_top.save(out_dir / "text-model")
        else:  # the weights fit this text model's features only: the router and eval check it
            config.text_model = text_model_version()
        # What the task was trained on: inputs unlike it are not applicable, and the labels of an
        # input's nearest training inputs are a check on an answer read from it alone (router/applicability.py).
        reference = applicability.fit(
            [e.features for e in train_set], [e.features for e in val_set], labels=[e.label for e in train_set], shown=[e.alone for e in train_set]
        )
        with deterministic_torch():
            if val_set and spec.size_rule is not None:  # the heads' validation size error: the size rule's spread when nothing was measured
                config.measurement_sigma = measurement_sigma(model, spec, val_set)
                config.measurement_evidence = measurement_evidence(spec, val_set)
            # Each validation item's modalities read alone, once: dissent, the thresholds of answers
            # read from one input alone and the nearest training inputs' check are all measured on them.
            alone = readings_alone(model, spec, served_val, pointer)
            if val_set:  # which inputs, read alone, are voices to pool with the answer (tasks.decide)
                config.dissent_precision = dissent_precision(served_val, alone)
            if val_set:  # answers below this confidence are withheld
                probabilities = torch.stack([decide(model, spec, e.features, e.tags, attention=False, pointer=pointer).probabilities for e in served_val])
                config.abstain_below = choose_abstain_below(probabilities, torch.tensor([e.label for e in served_val]))
            if val_set:  # where an answer read alone is withheld when its input's nearest training inputs say otherwise
                config.neighbour_precision = neighbour_precision(served_val, alone, reference, config.abstain_below)
            if val_set:  # answers read from one input alone, past that check: their own threshold, where they need a higher one
                kept = neighbours_kept(served_val, alone, reference, config.neighbour_precision)
                config.abstain_below_alone = choose_alone_thresholds(served_val, kept, config.abstain_below)
            if val_set:  # the earliest answers that cost at most half a point of validation accuracy, are as reliable as any and would be given
                as_served = TaskModel(spec, model, "", True, reference, pointer, scope=scope_check)
                config.routing = tune_routing_on(model, spec, served_val, val_items, pointer, task=as_served, quick=quick_val)
        reference.save(out_dir)
        if pointer is not None:
            status_line.save(pointer, out_dir)
        if scope_check is not None:
            scope_check.save(out_dir)
        temperatures = [float(m.log_temperature.exp()) for m in trained]
        temperature = temperatures[0] if members == 1 else temperatures
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / "model.safetensors"))
        (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        summary = {
            "task": name,
            "train_items": len(train_set),
            "val_items": len(val_set),
            "train_out_of_scope": len(outliers),
            "val_out_of_scope": len(val_outliers),
            "scope_check": scope_summary,
            "epochs": epochs,
            "seed": seed,
            "members": members,
            "size": {"width": config.width, "layers": config.layers, "max_tokens": config.max_tokens, "source_tokens": config.source_tokens},
            "final_loss": histories[0][-1] if members == 1 else [h[-1] for h in histories],
            "temperature": temperature,
            "feature_noise": feature_noise,
            "gate_offsets": config.gate_offsets,
            "measurement_evidence": config.measurement_evidence,
            "feature_seconds": round(feature_seconds, 1),
            "train_seconds": round(train_seconds, 1),
            "val_accuracy": accuracy(model, spec, val_set) if val_set else None,
            "routing": config.routing,
            "finetune_top": finetune_top,
            "text_model": config.text_model,
            "abstain_below": config.abstain_below,
            "dissent_precision": config.dissent_precision,
            "neighbour_precision": config.neighbour_precision,
            "abstain_below_alone": config.abstain_below_alone,
            "applicability_checked": sorted(reference.references),
            "asr_engine": configured_asr_engine(),
            "status_line": pointer_summary,
        }
        (out_dir / "train_log.json").write_text(json.dumps({**summary, "loss_per_epoch": histories[0] if members == 1 else histories}, indent=2))
        # The folder the card names: the version this run will most likely become.
        shown_as = Path(repository) / name / str(max(versions_in(Path(repository) / name), default=0) + 1) if repository else Path(out)
        write_model_card(out_dir, spec, summary, data, shown_as=shown_as)
    summary["out"] = str(published[0] if published else Path(out))
    return summary


def _out_of_scope_card(summary: dict) -> str:
    check = summary.get("scope_check")
    if not check:
        return ""
    return (
        f"\n- Out of scope: {summary['train_out_of_scope']} training inputs the task should not answer (the manifest's"
        f'\n  `"scope": "out"` records) teach a check on the message and screen text (router/scope.py); on validation it'
        f"\n  withholds {check['val_out_caught']} of {check['val_out']} such inputs and none of the {check['val_in']} in scope"
        f" (threshold {check['threshold']:.3f})."
    )


def _alone_card(thresholds: dict[str, float]) -> str:
    """The model card's words on the thresholds of answers read from one input alone."""
    if not thresholds:
        return ""
    return "\n  Read from one input alone: " + ", ".join(f"the {m} below {t:g}" for m, t in thresholds.items()) + " (chosen on validation alike)."


def _neighbour_card(precision: dict[str, float]) -> str:
    """The model card's line on the nearest training inputs' check (tasks.neighbours_disagree)."""
    if precision:
        measured = ", ".join(f"{m} {p:.2f}" for m, p in precision.items())
        why = f"on validation, the share of the answers it withholds that were wrong: {measured}"
    else:
        why = "on validation, no input's flagged answers were wrong more often than the 3% risk bound explains"
    return (
        f"- Nearest training inputs: an answer read from one input alone is withheld when most of that input's nearest\n"
        f"  training inputs show another label, or none; checked for {', '.join(precision) or 'no modality'}\n  ({why})."
    )


def _status_line_card(summary: dict | None) -> str:
    if not summary:
        return ""
    return (
        f"\n- Status line (`status_line.safetensors`): picks the screen's status message among the OCR paragraphs for "
        f"`error_text`,\n  and the fusion reads the screen through it; right on {summary['val_accuracy']:.1%} of "
        f"{summary['val_screens']} validation screens."
    ) + (
        f"\n  `error_text` is withheld where its pick is less similar than {summary['familiar_from']:.2f} to every training\n  "
        f"status message ({status_line.FAMILIAR_KEEP:.0%} of validation's right picks are as similar)."
        if summary.get("familiar_from") is not None
        else ""
    )


WEIGHT_FILES = (
    "model.safetensors",
    "config.json",
    "train_log.json",
    "MODEL_CARD.md",
    "text-model",
    applicability.FILE_NAME,
    status_line.FILE_NAME,
    scope.FILE_NAME,
)


def fit_status_line(
    task: str | TaskSpec, manifest: Path, val_path: Path, train_set, train_items, val_set, val_items, seed: int
) -> tuple[status_line.StatusLine | None, dict | None]:
    """For a task that reads screen text, when the manifest says which message each screen
    shows (`extra.screen`): the pointer to the status message (router/status_line.py) and
    its accuracies; (None, None) where there is nothing to learn from."""
    spec = spec_of(task)
    if "image" not in spec.side_outputs:
        return None, None
    train_pairs = status_line.pairs_of(task_records(manifest, spec.name), train_items, train_set)
    val_pairs = status_line.pairs_of(task_records(val_path, spec.name), val_items, val_set) if val_set else []
    if len(train_pairs) < STATUS_LINE_MIN_SCREENS:
        return None, None
    pointer, summary = status_line.fit(train_pairs, val_pairs, epochs=STATUS_LINE_EPOCHS, seed=seed)
    log.info("status-line pointer: %s", summary)
    return pointer, summary


STATUS_LINE_MIN_SCREENS, STATUS_LINE_EPOCHS = 8, 20


def weights_folder(folder: Path) -> Path:
    """`folder`, resolved, if training may replace it: absent, empty, or holding only what
    a training writes (WEIGHT_FILES). ValueError otherwise: `--out .` would have replaced
    the working folder."""
    folder = folder.resolve()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file; name a folder for the weights")
    others = sorted(p.name for p in folder.iterdir() if p.name not in WEIGHT_FILES) if folder.is_dir() else []
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise ValueError(f"{folder} holds other files ({shown}); new weights replace the whole folder, so name a new one or a folder of earlier weights")
    return folder


@contextlib.contextmanager
def staged_folder(final: Path):
    """A new, empty folder beside `final` to write into; on success it replaces `final`
    whole, else it is removed and `final` stays as it was. Written in place, a run that
    stopped between files (Ctrl-C, out of memory) left new weights beside an old
    config.json, and a `text-model/` from an earlier fine-tuned run stayed beside weights
    trained without it."""
    final = weights_folder(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        weights_folder(final)  # still only weights (checked again: training took a while)
        retired = final.parent / f".{final.name}.old-{os.getpid()}"
        if final.exists():
            final.rename(retired)
        staging.rename(final)  # between the two renames (microseconds) there is no `final`
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _prepare_text_top(task: str | TaskSpec, top_layers: int, splits):
    """The text model the features came from, its top layers to train, and every text's
    frozen states below them. `splits`: (manifest, examples, items) per split."""
    from modalmesh.router.features import configured_models
    from modalmesh.router.finetune import TextTop, texts_of
    from modalmesh.text.model import TextEncoder

    text_top = TextTop(TextEncoder(configured_models().get("text", "")), top_layers)
    for manifest, examples, items in splits:
        if examples:
            records = task_records(manifest, spec_of(task).name)
            text_top.prepare(examples, [texts_of(r, item) for r, item in zip(records, items)], label=manifest.stem)
    return text_top


def train_member(
    config: FusionConfig,
    spec,
    train_set: list[Example],
    val_set: list[Example],
    seed: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    modality_dropout_p: float,
    regression_weight: float,
    feature_noise: float,
    label_smoothing: float,
    label: str = "training    ",
    text_top=None,
) -> tuple[FusionModel, list[float], float]:
    """One fusion model: trained on `train_set`, then its gate offsets and temperature fitted
    on `val_set` (when there is one). Returns the model, the loss per epoch and the seconds.
    `text_top` (router/finetune.py): the text encoder's top layers, trained along."""
    rng = random.Random(seed)
    with deterministic_torch():  # the same seed, data and thread count give the same bytes
        torch.manual_seed(seed)  # here, not earlier: loading the encoders (first run only) draws from the generator
        model = FusionModel(dataclasses.replace(config))
        groups: list[dict] = [{"params": [p for p in model.parameters() if p.requires_grad]}]
        if text_top is not None:
            groups.append({"params": list(text_top.parameters()), "lr": TEXT_TOP_LEARNING_RATE})
        optimizer = torch.optim.AdamW(groups, lr=learning_rate, weight_decay=weight_decay)
        scale = torch.tensor([REGRESSION_SCALE.get(n, 1.0) for n in spec.regression]) if spec.regression else None
        history = []
        started = time.perf_counter()
        for epoch in progress(range(epochs), epochs, label):
            model.train()
            if text_top is not None:
                text_top.train()
            order = list(range(len(train_set)))
            rng.shuffle(order)
            total = 0.0
            for start in range(0, len(order), batch_size):
                batch = [train_set[i] for i in order[start : start + batch_size]]
                features = [e.features for e in batch] if text_top is None else text_top(batch)
                inputs = model.embed([add_noise(modality_dropout(f, rng, modality_dropout_p), feature_noise) for f in features])
                outputs = model(inputs)
                labels = torch.tensor([e.label for e in batch])
                loss = F.cross_entropy(outputs.logits, labels, label_smoothing=label_smoothing)
                if scale is not None:
                    targets = torch.stack([e.targets for e in batch]) * scale
                    mask = torch.stack([e.target_mask for e in batch]).float()
                    loss = loss + regression_weight * ((outputs.regression * scale - targets) ** 2 * mask).sum() / mask.sum().clamp(min=1)
                # Priors learn each source's expected gate score (for routing before it arrives).
                prior_error = (model.gate.prior.expand_as(outputs.gate_scores) - outputs.gate_scores.detach()) ** 2
                loss = loss + (prior_error * inputs.present).sum() / inputs.present.sum()
                # Softmax ignores a shared shift of the scores; anchoring them near 0 keeps them (and the priors) from drifting.
                loss = loss + GATE_ANCHOR * (outputs.gate_scores**2 * inputs.present).sum() / inputs.present.sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
            history.append(total / len(train_set))
        seconds = time.perf_counter() - started
        model.eval()
        if val_set and text_top is not None:
            val_set = text_top.read(val_set)
        if val_set:  # which sources to trust on new data, then how sure to be
            calibrate_gate(model, val_set)
            calibrate_temperature(model, val_set)
    return model, history, seconds


def predict(
    model: FusionModel | FusionEnsemble, spec, examples: list[Example], sources=None, use_measured: bool = True
) -> tuple[torch.Tensor, torch.Tensor, object]:
    """What the task reports for each example (probabilities [N, L], regression [N, R] in
    task units), from the sources listed (all by default), plus the raw outputs.
    `use_measured=False`: the heads' own sizes even where an encoder measured them."""
    chosen = [{s: f for s, f in e.features.items() if sources is None or s in sources} for e in examples]
    with torch.no_grad():
        outputs = model(model.embed(chosen))
    finished = [
        spec.finish(
            p,
            r,
            e.tags if sources is None or "image" in sources else {},  # no scan, no measurement
            model.config.measurement_sigma,
            use_measured,
            model.config.measurement_evidence,
        )
        for p, r, e in zip(outputs.probabilities, outputs.regression, examples)
    ]
    if not finished:
        return outputs.probabilities, outputs.regression, outputs
    return torch.stack([p for p, _ in finished]), torch.stack([r for _, r in finished]), outputs


def accuracy(model: FusionModel | FusionEnsemble, spec, examples: list[Example]) -> float:
    probabilities, _, _ = predict(model, spec, examples)
    return float((probabilities.argmax(-1) == torch.tensor([e.label for e in examples])).float().mean())


def quick_readings(spec, manifest: str | Path, cache_dir: str = "") -> tuple[list, list]:
    """The manifest's in-scope examples with the screen text read as ROUTED mode's quick
    reading reads it (FeatureCache.for_task's `quick`), in load_examples' order."""
    cache = FeatureCache.for_task(spec, manifest, cache_dir, quick=True)
    try:
        return load_examples(spec, manifest, cache, "quick", refuse=False)
    finally:
        cache.close()


def next_eager(side_outputs, eager: tuple[str, ...], needed: dict[str, float]) -> str | None:
    """The side output to make eager next: the one routing asks for most often of those
    still asked for later (`needed`, route()'s later_side_share), if that is at least
    EAGER_MIN_SHARE (routing.py says why); else None."""
    asked = ", ".join(f"{m} {v:.0%}" for m, v in needed.items()) or "none"
    log.info("side outputs asked for on validation with %s eager: %s", "+".join(eager) or "none", asked)
    share, modality = max(((needed.get(m, 0.0), m) for m in side_outputs if m not in eager), default=(0.0, None))
    return modality if share >= EAGER_MIN_SHARE else None


def fusion_ms(model, spec, examples: list[Example]) -> float:
    """The mean time of one fusion on up to 16 of the examples, in ms: what routing's simulation charges per decision."""
    started = time.perf_counter()
    for example in examples[:16]:
        predict(model, spec, [example])
    return (time.perf_counter() - started) * 1000 / max(1, min(16, len(examples)))


def tune_routing_on(model, spec, examples: list[Example], items: list, pointer=None, fuse_ms: float | None = None, task=None, quick=None) -> dict:
    """tau, gamma and the eager side outputs (asked for with the base features instead of
    after them) with the lowest simulated mean latency on validation. Side outputs become
    eager one at a time, the most often asked for first, while one is asked for on at
    least EAGER_MIN_SHARE of the items (next_eager); fewer eager ones on a tie.
    `pointer`: the status-line pointer the examples' screen paragraphs are read through;
    `task`: the TaskModel whose policy says which early answers would be given (routing_cases).
    `quick`: the examples with the screen text read quickly (quick_readings): where the
    screen text is eager, it is read quickly first ("quick": ["image"]) when that lowers the
    mean latency at most QUICK_MAX_LOSS below the accuracy without it (tau and gamma tuned
    again with it)."""
    from modalmesh.router.routing import route, routing_cases, tune_routing

    fuse_ms = fusion_ms(model, spec, examples) if fuse_ms is None else fuse_ms
    best: tuple[dict, dict] | None = None
    eager: tuple[str, ...] = ()
    while True:
        cases = routing_cases(model, spec, examples, items, fuse_ms, eager, pointer=pointer, task=task)
        tau, gamma = tune_routing(cases, max_risk=ABSTAIN_RISK)
        outcome = route(cases, tau, gamma)
        if best is None or outcome["mean_latency_ms"] < best[0]["mean_latency_ms"]:
            best = (outcome, {"tau": tau, "gamma": gamma, "eager": list(eager)})
        more = next_eager(spec.side_outputs, eager, outcome["later_side_share"])
        if more is None:
            break
        eager += (more,)
    outcome, routing = best
    routing["quick"] = []
    if quick is not None and "image" in routing["eager"]:
        eager = tuple(routing["eager"])
        cases = routing_cases(model, spec, examples, items, fuse_ms, eager, pointer=pointer, task=task, quick=quick)
        tau, gamma = tune_routing(cases, max_risk=ABSTAIN_RISK)
        found = route(cases, tau, gamma)
        log.info("routing on validation, screen text read quickly first: accuracy %.3f, mean latency %.0f ms", found["accuracy"], found["mean_latency_ms"])
        if found["accuracy"] >= outcome["accuracy"] - QUICK_MAX_LOSS - 1e-9 and found["mean_latency_ms"] < outcome["mean_latency_ms"]:
            outcome, routing = found, {"tau": tau, "gamma": gamma, "eager": list(eager), "quick": ["image"]}
    log.info(
        "routing on validation: tau %g gamma %g eager %s quick %s -> accuracy %.3f, mean latency %.0f ms, %d early answers, %d wrong",
        routing["tau"],
        routing["gamma"],
        "+".join(routing["eager"]) or "none",
        "+".join(routing["quick"]) or "none",
        outcome["accuracy"],
        outcome["mean_latency_ms"],
        outcome["early"],
        outcome["early_wrong"],
    )
    return routing


QUICK_MAX_LOSS = 0.005  # validation accuracy the quick reading may cost (as tune_routing's max_loss)
ROUTING_CARD = re.compile(r"  tau \S+, gamma \S+,\n  side outputs asked for with the base features: [^,\n]+(,\n  read quickly first \(ROUTED mode\): \S+)?")


def tune_routing_again(task: str | TaskSpec, data: str, weights: str, cache_dir: str = "", write: bool = False, repository: str = "") -> dict:
    """A trained model's routing tuned again on a validation manifest by the rule training
    uses (tune_routing_on): the routing it has and the one it gets, each with validation
    accuracy, simulated mean latency and its early answers (how many, how many wrong).
    `write`: the folder is replaced by a copy with the new routing (config.json,
    train_log.json, MODEL_CARD.md); `repository`: that copy becomes the task's next
    version there instead, the folder untouched."""
    from modalmesh.router.routing import route, routing_cases

    spec = spec_of(task)
    task_model, folder = open_trained(spec, weights)
    if not task_model.trained:
        raise ValueError(f"{folder}: no model.safetensors there: train the task first (`modalmesh train`)")
    cache = FeatureCache.for_task(spec, Path(data), cache_dir)
    try:
        examples, items = load_examples(spec, data, cache, "val", refuse=False)
    finally:
        cache.close()
    check_input_widths(folder, task_model.model, examples)
    model, pointer, served = task_model.model, task_model.status_line, task_model.spec

    quick = quick_readings(spec, data, cache_dir) if "image" in spec.side_outputs else None

    def outcome(routing: dict) -> dict:
        read_quickly = quick if routing.get("quick") else None
        cases = routing_cases(model, served, examples, items, fuse_ms, tuple(routing["eager"]), pointer=pointer, task=task_model, quick=read_quickly)
        found = route(cases, routing["tau"], routing["gamma"])
        keep = ("accuracy", "mean_latency_ms", "early", "early_wrong", "from_quick_reading")
        return {**routing, **{k: found[k] for k in keep}}

    with deterministic_torch(), torch.inference_mode():
        fuse_ms = fusion_ms(model, served, examples)
        before = outcome({"tau": served.tau, "gamma": served.gamma, "eager": list(served.eager), "quick": list(served.quick)})
        after = outcome(tune_routing_on(model, served, examples, items, pointer, fuse_ms, task=task_model, quick=quick))
    result = {"task": spec.name, "weights": str(folder), "items": len(examples), "before": before, "after": after, "written": ""}
    if write or repository:
        routing = {k: after[k] for k in ("tau", "gamma", "eager", "quick")}

        def edit(out_dir: Path) -> None:
            for name in ("config.json", "train_log.json"):
                _update_json(out_dir / name, {"routing": routing})
            card = out_dir / "MODEL_CARD.md"
            if card.is_file():
                eager, first = "+".join(routing["eager"]) or "none", "+".join(routing["quick"]) or "none"
                shown = (
                    f"  tau {routing['tau']}, gamma {routing['gamma']},\n  side outputs asked for with the base features: {eager},\n"
                    f"  read quickly first (ROUTED mode): {first}"
                )
                card.write_text(ROUTING_CARD.sub(shown, card.read_text()))

        result["written"] = rewritten(folder, spec.name, edit, repository)
    return result


def rewritten(folder: Path, task: str, edit: Callable[[Path], None], repository: str = "") -> str:
    """A trained task's folder copied (its WEIGHT_FILES), `edit`ed, and put in place whole:
    replacing `folder`, or as the task's next version in `repository`. Returns where."""
    published: list[Path] = []
    staging = staged_version(Path(repository) / task, published) if repository else staged_folder(folder)
    with staging as out_dir:
        for entry in folder.iterdir():
            if entry.name in WEIGHT_FILES:
                (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, out_dir / entry.name)
        edit(out_dir)
    return str(published[0] if published else folder)


def _update_json(path: Path, values: dict) -> None:
    """`values` set in the JSON object in `path`, where there is one."""
    if path.is_file():
        path.write_text(json.dumps({**json.loads(path.read_text()), **values}, indent=2) + ("\n" if path.name == "train_log.json" else ""))


OUT_OF_SCOPE_CARD = re.compile(r"\n- Out of scope: [^\n]*(\n  [^\n]*)*")
DATA_CARD = re.compile(r"(- Data: [^\n]*(\n  [^\n]*)*)")


def trained_and_manifests(spec: TaskSpec, weights: str, data: str, val_use: str) -> tuple[TaskModel, Path, Path, Path]:
    """What fit-scope and fit-status-line start from: the trained task in `weights` (refused
    untrained), its folder, the training manifest `data` and val.jsonl beside it (refused
    where missing; `val_use` says what it is for)."""
    task_model, folder = open_trained(spec, weights)
    if not task_model.trained:
        raise ValueError(f"{folder}: no model.safetensors there: train the task first (`modalmesh train`)")
    manifest = Path(data)
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: no such file")
    val_path = manifest.with_name("val.jsonl")
    if not val_path.is_file() or val_path == manifest:
        raise ValueError(f"{manifest}: {val_use} on val.jsonl beside it, and there is none")
    return task_model, folder, manifest, val_path


def fit_scope_again(task: str | TaskSpec, data: str, weights: str, cache_dir: str = "", write: bool = False, repository: str = "") -> dict:
    """The scope check (router/scope.py) fitted for a trained model, as training fits it:
    on the out-of-scope records of the training manifest `data` against its cases, its
    threshold and weight decay chosen on val.jsonl beside it, through the model's own
    status-line pointer. `write`: the folder is replaced by a copy holding it
    (scope.safetensors, train_log.json, MODEL_CARD.md); `repository`: that copy becomes the
    task's next version there instead."""
    spec = spec_of(task)
    task_model, folder, manifest, val_path = trained_and_manifests(spec, weights, data, "the scope check's threshold is chosen")
    cache = FeatureCache.for_task(spec, manifest, cache_dir)
    try:
        inside, _ = load_examples(spec, manifest, cache, "train")
        outside, _ = load_examples(spec, manifest, cache, "train, out of scope", scope="out", refuse=False)
        val_in, _ = load_examples(spec, val_path, cache, "val")
        val_out, _ = load_examples(spec, val_path, cache, "val, out of scope", scope="out", refuse=False)
    finally:
        cache.close()
    check, summary = scope.fit(
        [e.features for e in inside], [e.features for e in outside], [e.features for e in val_in], [e.features for e in val_out], task_model.status_line
    )
    if check is None or summary is None:
        raise ValueError(
            f"{manifest}: nothing to learn a scope check from: the training and validation manifests need "
            'out-of-scope records ("scope": "out") with screen text'
        )
    result = {
        "task": spec.name,
        "weights": str(folder),
        "train_out_of_scope": len(outside),
        "val_out_of_scope": len(val_out),
        "scope_check": summary,
        "written": "",
    }
    if write or repository:
        logged = {k: result[k] for k in ("train_out_of_scope", "val_out_of_scope", "scope_check")}

        def edit(out_dir: Path) -> None:
            check.save(out_dir)
            _update_json(out_dir / "train_log.json", logged)
            card = out_dir / "MODEL_CARD.md"
            if card.is_file():
                text = OUT_OF_SCOPE_CARD.sub("", card.read_text())
                card.write_text(DATA_CARD.sub(lambda found: found.group(1) + _out_of_scope_card(logged), text, count=1))

        result["written"] = rewritten(folder, spec.name, edit, repository)
    return result


STATUS_LINE_CARD = re.compile(r"\n- Status line \(`status_line\.safetensors`\): [^\n]*(\n  [^\n]*)*")
CARD_LIMITS = "\n- Evaluate with"


def fit_status_line_again(task: str | TaskSpec, data: str, weights: str, cache_dir: str = "", write: bool = False, repository: str = "") -> dict:
    """The status-line pointer (router/status_line.py) fitted for a trained model, as
    training fits it: on the screens of the training manifest `data` (which message each
    shows: `extra.screen`), checked and calibrated on val.jsonl beside it. The fusion model,
    its thresholds and checks are kept: for screens laid out in new ways (an advice line
    under the message) the pointer learns them without the fusion model being trained
    again. `write`: the folder is replaced by a copy holding it (status_line.safetensors,
    train_log.json, MODEL_CARD.md); `repository`: that copy becomes the task's next version."""
    spec = spec_of(task)
    if "image" not in spec.side_outputs:
        raise ValueError(f"{spec.name} reads no screen text: it has no status-line pointer to fit")
    _, folder, manifest, val_path = trained_and_manifests(spec, weights, data, "the pointer is checked and calibrated")
    cache = FeatureCache.for_task(spec, manifest, cache_dir)
    try:
        train_set, train_items = load_examples(spec, manifest, cache, "train")
        val_set, val_items = load_examples(spec, val_path, cache, "val")
    finally:
        cache.close()
    seed = int(json.loads((folder / "train_log.json").read_text()).get("seed", 0)) if (folder / "train_log.json").is_file() else 0
    pointer, summary = fit_status_line(spec, manifest, val_path, train_set, train_items, val_set, val_items, seed)
    if pointer is None or summary is None:
        raise ValueError(
            f"{manifest}: nothing to fit a status-line pointer on: it needs {STATUS_LINE_MIN_SCREENS} or more screens "
            "whose message the manifest gives (extra.screen) and OCR reads"
        )
    result = {"task": spec.name, "weights": str(folder), "data": str(manifest), "status_line": summary, "written": ""}
    if write or repository:
        logged = {"status_line": summary, "status_line_data": str(manifest)}

        def edit(out_dir: Path) -> None:
            status_line.save(pointer, out_dir)
            _update_json(out_dir / "train_log.json", logged)
            card = out_dir / "MODEL_CARD.md"
            if card.is_file():
                text = STATUS_LINE_CARD.sub("", card.read_text())
                section = _status_line_card(summary) + f"\n  Fitted on `{manifest}` with `modalmesh fit-status-line` (the fusion model as trained)."
                card.write_text(text.replace(CARD_LIMITS, section + CARD_LIMITS, 1))

        result["written"] = rewritten(folder, spec.name, edit, repository)
    return result


ABSTAIN_FLOOR = 0.5  # a calibrated label under 0.5 is more likely wrong than right: never given


def choose_abstain_below(probabilities: torch.Tensor, labels: torch.Tensor, risk: float = ABSTAIN_RISK) -> float:
    """The lowest confidence threshold (from ABSTAIN_FLOOR up, in steps of 0.05) at which the
    answers given on validation are wrong at most `risk` of the time (selective prediction:
    coverage traded for accuracy); 0.95 when none is."""
    found = lowest_safe_threshold(probabilities, labels, risk)
    return 0.95 if found is None else found


def lowest_safe_threshold(probabilities: torch.Tensor, labels: torch.Tensor, risk: float = ABSTAIN_RISK) -> float | None:
    """choose_abstain_below's threshold, or None where no threshold up to 0.95 keeps the
    answers given wrong at most `risk` of the time."""
    confidence, predicted = probabilities.max(dim=1)
    for step in range(10):
        threshold = round(ABSTAIN_FLOOR + 0.05 * step, 2)
        given = confidence >= threshold
        if not given.any() or float((predicted[given] != labels[given]).float().mean()) <= risk:
            return threshold
    return None


def readings_alone(model, spec, examples: list[Example], pointer=None) -> list[list[tuple[str, torch.Tensor]]]:
    """Per example, each of its modalities that can answer alone read by itself (tasks.lone_readings):
    (modality, probabilities [L])."""
    return [list(lone_readings(model, spec, e.features, e.tags, pointer=pointer)) for e in examples]


def choose_alone_thresholds(examples: list[Example], alone: list[list[tuple[str, torch.Tensor]]], abstain_below: float) -> dict[str, float]:
    """Per modality that can answer alone: the threshold (choose_abstain_below's rule) that
    its readings alone on validation need, where it is above `abstain_below`
    (FusionConfig.abstain_below_alone). A reading is judged by what that input alone shows
    (Example.truth_alone: the manifest's `alone_labels`, else the item's label). Left out
    where no threshold up to 0.95 is safe (the item's labels are then not what that input
    alone shows, and the manifest does not say what it does): its answers keep the task's
    threshold; and where there are fewer than DISSENT_MIN_READINGS readings.
    `alone`: readings_alone of `examples`."""
    read: dict[str, tuple[list[torch.Tensor], list[int]]] = {}
    for example, views in zip(examples, alone):
        for name, view in views:
            read.setdefault(name, ([], []))[0].append(view)
            read[name][1].append(example.truth_alone(name))
    chosen = {}
    for name, (probabilities, labels) in read.items():
        if len(probabilities) < DISSENT_MIN_READINGS:
            continue
        found = lowest_safe_threshold(torch.stack(probabilities), torch.tensor(labels))
        if found is not None and found > abstain_below:
            chosen[name] = found
    return chosen


DISSENT_MIN_READINGS = 10  # fewer confident lone readings than this say too little: the modality keeps its voice


def dissent_precision(examples: list[Example], alone: list[list[tuple[str, torch.Tensor]]]) -> dict[str, float]:
    """Per modality that can answer alone (it holds what the task needs): of its lone
    readings on validation (`alone`: readings_alone of `examples`) confident enough to
    dissent (tasks.DISSENT), the share that was right (FusionConfig.dissent_precision)."""
    right: dict[str, list[bool]] = {}
    for example, views in zip(examples, alone):
        for name, view in views:
            if float(view.max()) >= DISSENT:
                right.setdefault(name, []).append(int(view.argmax()) == example.label)
    return {name: round(sum(hits) / len(hits), 3) for name, hits in right.items() if len(hits) >= DISSENT_MIN_READINGS}


NEIGHBOUR_MIN_FLAGGED = 3  # fewer flagged answers than this on validation say nothing: the modality is not checked


def neighbour_precision(
    examples: list[Example], alone: list[list[tuple[str, torch.Tensor]]], reference: applicability.Applicability, abstain_below: float
) -> dict[str, float]:
    """Per modality that can answer alone and whose reference holds labels: of the answers
    its lone readings on validation (`alone`: readings_alone of `examples`) would give at
    the task's threshold whose input's nearest training inputs mostly carry another label
    (Applicability.disagrees), the share that was wrong (FusionConfig.neighbour_precision;
    a reading is judged by what its input alone shows: Example.truth_alone). Written only
    where there are at least NEIGHBOUR_MIN_FLAGGED such answers and more of them were wrong
    than the task's risk bound explains (beyond_risk): withholding them then keeps answers
    out that are wrong far more often than the answers the task gives may be."""
    flagged: dict[str, list[bool]] = {}
    for example, views in zip(examples, alone):
        for name, view in views:
            best = int(view.argmax())
            if float(view[best]) >= abstain_below and name in example.features and reference.disagrees(name, example.features[name], best):
                flagged.setdefault(name, []).append(best != example.truth_alone(name))
    return {
        name: round(sum(wrong) / len(wrong), 3)
        for name, wrong in flagged.items()
        if len(wrong) >= NEIGHBOUR_MIN_FLAGGED and beyond_risk(sum(wrong), len(wrong))
    }


def beyond_risk(wrong: int, given: int, risk: float = ABSTAIN_RISK, level: float = 0.05) -> bool:
    """Whether `wrong` of `given` answers is more than a `risk` error rate explains: the
    one-sided binomial chance of at least that many wrong is below `level`."""
    chance = sum(math.comb(given, k) * risk**k * (1 - risk) ** (given - k) for k in range(wrong, given + 1))
    return wrong > 0 and chance < level


def neighbours_kept(
    examples: list[Example], alone: list[list[tuple[str, torch.Tensor]]], reference: applicability.Applicability, precision: dict[str, float]
) -> list[list[tuple[str, torch.Tensor]]]:
    """`alone` without the readings the nearest training inputs' check withholds (for the
    modalities in `precision`, FusionConfig.neighbour_precision): what the thresholds of
    answers read alone are chosen on."""
    return [
        [(name, view) for name, view in views if name not in precision or not reference.disagrees(name, example.features[name], int(view.argmax()))]
        for example, views in zip(examples, alone)
    ]


def measurement_evidence(spec, examples: list[Example]) -> dict[str, dict[str, float]]:
    """What an encoder's measurement says about each label: P(outcome | label) for the
    outcomes "found" (a lesion measured) and "none", counted on validation with add-one
    smoothing. Per label, not lesion vs the rest: a measurement that finds nothing rules
    out a mass far more surely than a small nodule. Empty when nothing was measured."""
    if spec.measure is None or spec.size_rule is None:
        return {}
    found = {label: 0 for label in spec.labels}
    total = {label: 0 for label in spec.labels}
    for example in examples:
        measured = spec.measure(example.tags)
        if measured is not None:
            label = spec.labels[example.label]
            total[label] += 1
            found[label] += bool(measured)
    if not any(total.values()):
        return {}
    given = {label: (found[label] + 1) / (total[label] + 2) for label in spec.labels}
    return {"found": {label: round(p, 5) for label, p in given.items()}, "none": {label: round(1.0 - p, 5) for label, p in given.items()}}


def measurement_sigma(model: FusionModel | FusionEnsemble, spec, examples: list[Example]) -> dict[str, float]:
    """Root-mean-square validation error of each field-of-view output as the heads predict
    it (the size rule's sigma when no encoder measured the size), in task units."""
    _, regression, _ = predict(model, spec, examples, use_measured=False)
    sigma = {}
    for name in spec.field_of_view_outputs:
        index = spec.regression.index(name)
        mask = torch.stack([e.target_mask[index] for e in examples])
        truth = torch.stack([e.truth[index] for e in examples])
        if mask.any():
            sigma[name] = round(float(((regression[mask, index] - truth[mask]) ** 2).mean().sqrt()), 3)
    return sigma


def calibrate_gate(model: FusionModel, examples: list[Example], steps: int = 300) -> dict[str, float]:
    """Per-source offsets on the gate's scores minimising validation NLL, the rest of the
    model fixed (FusionConfig.gate_offsets). Training data cannot show that a source
    fails to generalise (its wordings were all seen); validation can. Offsets stay in
    [-8, 4], with a small pull to 0; sources absent from validation keep 0."""
    from modalmesh.router.fusion import SOURCES

    with torch.no_grad():
        inputs = model.embed([e.features for e in examples])
        per_source, _ = model.sources(inputs)
        scores = model.gate.scores(per_source)
    labels = torch.tensor([e.label for e in examples])
    seen = inputs.present.any(dim=0)
    offset = torch.zeros(len(SOURCES), requires_grad=True)
    optimizer = torch.optim.Adam([offset], lr=0.05)
    for _ in range(steps):
        _, logits = model.fuse(per_source, model.gate.weights(scores, inputs.present, offset * seen))
        loss = F.cross_entropy(logits, labels) + 1e-3 * (offset**2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            offset.clamp_(-8.0, 4.0)
    fitted = {source: round(float(value), 3) for source, value, used in zip(SOURCES, offset.detach(), seen) if used}
    model.set_gate_offsets(fitted)
    return fitted


def calibrate_temperature(model: FusionModel, examples: list[Example]) -> float:
    """Temperature scaling: the T minimising validation NLL (Guo et al., 2017)."""
    with torch.no_grad():
        logits = model(model.embed([e.features for e in examples])).logits
    labels = torch.tensor([e.label for e in examples])
    log_t = fit_log_temperature(lambda temperature: F.cross_entropy(logits / temperature, labels))
    with torch.no_grad():
        model.log_temperature.copy_(log_t)
    return float(model.log_temperature.exp())


def _size_card(size: dict) -> str:
    """The fusion model's size (train's summary["size"]), as the card says it."""
    limits = size["source_tokens"]
    pooled = f" ({', '.join(f'{source} {count}' for source, count in limits.items())})" if limits else ""
    return (
        f"projections to {size['width']}-d, {size['layers']} layers of modality-aware attention over each "
        f"input's features average-pooled to at most {size['max_tokens']} tokens{pooled}"
    )


def write_model_card(out_dir: Path, spec, summary: dict, data: str, shown_as: Path | None = None) -> None:
    """`shown_as`: the folder the card names (the weights are written elsewhere first)."""
    clinical = f"\n**{NOT_FOR_CLINICAL_USE}** Trained on synthetic CT phantoms only.\n" if spec.name == "medical_report" else ""
    evidence = summary.get("measurement_evidence") or {}
    members = summary.get("members", 1)
    temperatures = summary["temperature"] if isinstance(summary["temperature"], list) else [summary["temperature"]]
    offsets = summary.get("gate_offsets") or {}
    offsets = offsets if isinstance(offsets, list) else [offsets]
    shown_offsets = "; ".join(", ".join(f"{k} {v:+.2f}" for k, v in o.items()) or "none" for o in offsets)
    ensemble = (
        (
            f"\n- Ensemble: {members} models trained alike from seeds {summary['seed']}-{summary['seed'] + members - 1}, "
            f"each calibrated on validation; answers are their mean."
        )
        if members > 1
        else ""
    )
    found = evidence.get("found", {})
    measured = (
        (
            "\n- CT measurement (vision service, Hounsfield units): count, largest diameter and side as measured;"
            "\n  the labels' probabilities are updated by how likely its outcome is under each label (Bayes' rule),"
            "\n  counted on validation: P(a lesion found | label) " + ", ".join(f"{label} {p:.3f}" for label, p in found.items())
        )
        if isinstance(found, dict) and found
        else ""
    )
    text_encoder = summary.get("text_model") or "all-MiniLM-L6-v2"
    if summary.get("finetune_top"):
        text_encoder += f", its top {summary['finetune_top']} layer(s) fine-tuned with this task (`text-model/`: serve it as the text model)"
    alone = _alone_card(summary.get("abstain_below_alone") or {})
    (out_dir / "MODEL_CARD.md").write_text(f"""# {spec.name} fusion model
{clinical}
- Task: {spec.description}
- Labels: {", ".join(spec.labels)}; regression: {", ".join(spec.regression) or "none"}
- Encoders: {text_encoder} (text, OCR lines, transcripts), EfficientNet-Lite0 ImageNet (images),
  log-mel frames (audio), frozen unless said; PP-OCR for screen text, {summary.get("asr_engine", "whisper")} for transcripts.
- Fusion: {_size_card(summary["size"])}, routing gate, temperature-scaled heads.{ensemble}
- Data: `{data}` ({summary["train_items"]} training items, {summary["val_items"]} validation items), synthetic,
  generated by `modalmesh data generate`.{_out_of_scope_card(summary)}
- Training: {summary["epochs"]} epochs, seed {summary["seed"]}, modality dropout, feature noise {summary["feature_noise"]};
  temperature {", ".join(f"{t:.3f}" for t in temperatures)}
  (calibrated on validation); features {summary["feature_seconds"]} s, training {summary["train_seconds"]} s on this machine.
- Validation accuracy (all modalities): {summary["val_accuracy"]}
- Gate offsets (fitted on validation, added to the gate's scores; a source alone still gets all the weight):
  {shown_offsets}{measured}
- Compute routing (tuned on validation: at most half a point below answering from everything, early answers wrong at most {ABSTAIN_RISK:.0%} of the time):
  tau {summary["routing"].get("tau", spec.tau)}, gamma {summary["routing"].get("gamma", spec.gamma)},
  side outputs asked for with the base features: {"+".join(summary["routing"].get("eager", [])) or "none"},
  read quickly first (ROUTED mode): {"+".join(summary["routing"].get("quick", [])) or "none"}
- Abstention: answers below confidence {summary.get("abstain_below", 0):g} are withheld ("uncertain"; chosen on validation).{alone}
- Applicability: each input of {", ".join(summary.get("applicability_checked") or []) or "no modality"} is compared with the
  training inputs (`applicability.safetensors`, nearest neighbours); one farther than {applicability.MARGIN:g} times the
  farthest validation input is not applicable and not used.
{_neighbour_card(summary.get("neighbour_precision") or {})}{_status_line_card(summary.get("status_line"))}
- Evaluate with `modalmesh eval --task {spec.name} --data <test.jsonl> --weights {shown_as or out_dir}`.

Limits: synthetic data only; screen text must be legible to PP-OCR; transcripts miss words (`modalmesh eval` reports the word error rate); the model has not
seen real customer screenshots or real CT scans.
""")
