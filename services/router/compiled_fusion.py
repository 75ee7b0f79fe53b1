"""The fusion ensemble's decisions run by OpenVINO (the router's `engine openvino`).

    model = compiled_ensemble(stacked, "screenshot_triage@<digest>", "bfloat16", FusionEngine("openvino"))
    outputs = model(model.embed([features]), attention=False)   # as StackedEnsemble

A StackedEnsemble's forward pass (attention, norms, pooling, gate and heads, every member at
once) is converted to OpenVINO's form once per weights file (common/compiled.py: cached as IR,
no pickle) and compiled for the CPU, its linear maps in the router's fusion precision. The
projections into the model's width (`embed`), the gate's outstanding-weight prediction and a
decision that keeps the attention weights (an explanation) stay in torch: OpenVINO runs the
part every decision pays for. On the shipped screenshot_triage ensemble (three members, two
layers, a voice request's 149 tokens) one thread decides in about two thirds of torch's time
(docs/deployment.md, Router).

OpenVINO prepares each input shape once (5-10 ms, and about 3 MiB kept per shape), so a batch
runs one item at a time (the status-line readings of a screen: one call each, about 8% slower
than one batched call) and each item's token axis is padded up to a multiple of LENGTH_STEP:
padded tokens are masked out of attention and pooling, the answer is the same to float
rounding, and at most 15 shapes are ever prepared (all of them at load). Inputs shorter
than OPENVINO_FROM tokens run in torch. Every load is checked against torch in float32 on
made-up inputs (fusion.made_up_items): no probability may move by more than
fusion.PRECISION_TOLERANCE, else the weights run in torch, with a warning; a model OpenVINO
cannot convert runs in torch too.
"""

from __future__ import annotations

import logging
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from modalmesh.common.compiled import ENGINES, OpenVINOSettings, compile_module
from modalmesh.router.fusion import PRECISION_TOLERANCE, SOURCES, FusionInputs, FusionOutputs, StackedEnsemble, made_up_items

log = logging.getLogger(__name__)

LENGTH_STEP = 16  # the token axis is padded up to a multiple of this
# Inputs shorter than this run in torch: on this 2-core machine (AVX512-BF16) torch's own pass
# was as fast or faster there (decisions on held-out e-mails, about 60 tokens, one after
# another: 9.7 against 10.6 ms), OpenVINO faster on longer ones (a voice request's 149
# tokens: 4.2 against 6.3 ms). At most 15 lengths are then prepared.
OPENVINO_FROM = 96
OUTPUTS = ("logits", "probabilities", "regression", "gate_weights", "gate_scores", "member_gate_scores")
OPENVINO_PRECISION = {"float32": "f32", "bfloat16": "bf16"}


@dataclass(frozen=True)
class FusionEngine:
    """What runs an ensemble's decisions: `name` "torch" or "openvino" (the router's `engine`
    setting); on OpenVINO, `calls` decisions at once (the router decides on one thread and
    reads modalities alone on another), each on `threads` (0: OpenVINO's choice), keeping
    `shapes` input shapes prepared."""

    name: str = "torch"
    threads: int = 1
    shapes: int = 100
    calls: int = 2

    def __post_init__(self) -> None:
        if self.name not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {self.name!r}")

    def settings(self, precision: str) -> OpenVINOSettings:
        return OpenVINOSettings(threads=self.threads * self.calls, shapes=self.shapes, precision=OPENVINO_PRECISION[precision], streams=self.calls)


class DecisionGraph(nn.Module):
    """A StackedEnsemble's forward pass without attention weights, tensors in and out: what
    OpenVINO converts (tokens [M, B, T, d], token_source [B, T], padding [B, T], present
    [B, S] -> OUTPUTS)."""

    def __init__(self, stacked: StackedEnsemble) -> None:
        super().__init__()
        self.stacked = stacked

    def forward(self, tokens: torch.Tensor, token_source: torch.Tensor, padding: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.stacked(FusionInputs(tokens, token_source, padding, present), attention=False)
        return tuple(getattr(outputs, name) for name in OUTPUTS)


class CompiledEnsemble:
    """A StackedEnsemble whose decisions without attention weights OpenVINO runs; anything
    else (embed, outstanding_weight, a decision keeping attention weights) is the
    StackedEnsemble's own. Safe to call from several threads (one infer request each)."""

    def __init__(self, stacked: StackedEnsemble, compiled: Any, precision: str) -> None:
        self.stacked = stacked
        self.config = stacked.config
        self.members = stacked.members
        self.precision = precision  # what OpenVINO's linear maps compute in
        self.compiled = compiled
        self._local = threading.local()

    def embed(self, batch: list[dict[str, torch.Tensor]], projections=None) -> FusionInputs:
        return self.stacked.embed(batch, projections)

    def outstanding_weight(self, inputs: FusionInputs, outputs: FusionOutputs, outstanding: torch.Tensor) -> torch.Tensor:
        return self.stacked.outstanding_weight(inputs, outputs, outstanding)

    def eval(self) -> "CompiledEnsemble":
        return self

    def prepare_lengths(self) -> None:
        """Each padded input length from OPENVINO_FROM up that a one-item request can bring,
        prepared now (a few ms each) rather than on the first request that brings it."""
        limits = sum(self.config.token_limit(source) for source in SOURCES)
        width = self.stacked.modality_embedding.shape[-1]
        for length in range(OPENVINO_FROM, limits + LENGTH_STEP, LENGTH_STEP):
            inputs = FusionInputs(
                torch.zeros(len(self.members), 1, length, width),
                torch.zeros(1, length, dtype=torch.long),
                torch.zeros(1, length, dtype=torch.bool),
                torch.ones(1, len(SOURCES), dtype=torch.bool),
            )
            self.on_openvino(inputs)

    def __call__(self, inputs: FusionInputs, attention: bool = True) -> FusionOutputs:
        if attention or inputs.padding.shape[-1] < OPENVINO_FROM:  # an explanation, or a short input: torch's own pass
            return self.stacked(inputs, attention=attention)
        return self.on_openvino(inputs)

    def on_openvino(self, inputs: FusionInputs) -> FusionOutputs:
        """The decision without attention weights, computed by OpenVINO, whatever the length."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        rows = []
        for item in range(inputs.padding.shape[0]):  # one item at a time: only batch-1 shapes are ever prepared
            results = request.infer(item_inputs(inputs, item), share_inputs=True)  # no copy: the arrays are this call's own
            rows.append([np.array(results[index]) for index in range(len(OUTPUTS))])
        logits, probabilities, regression, gate_weights, gate_scores, member_gate_scores = (
            torch.from_numpy(np.concatenate([row[index] for row in rows], axis=-2)) for index in range(len(OUTPUTS))
        )
        return FusionOutputs(
            logits,
            probabilities,
            regression,
            gate_weights,
            gate_scores,
            attention=None,
            token_source=inputs.token_source,
            padding=inputs.padding,
            member_gate_scores=member_gate_scores,
        )


def item_inputs(inputs: FusionInputs, item: int) -> list[np.ndarray]:
    """The graph's inputs for one item of the batch: its own tokens (a batch pads every item
    to the longest), padded up to a multiple of LENGTH_STEP."""
    length = int((~inputs.padding[item]).sum())  # an item's tokens come first, its padding after
    extra = -length % LENGTH_STEP
    tokens = inputs.tokens[:, item : item + 1, :length]
    token_source = inputs.token_source[item : item + 1, :length]
    padding = inputs.padding[item : item + 1, :length]
    if extra:
        tokens = torch.nn.functional.pad(tokens, (0, 0, 0, extra))
        token_source = torch.nn.functional.pad(token_source, (0, extra))
        padding = torch.nn.functional.pad(padding, (0, extra), value=True)
    return [np.ascontiguousarray(array) for array in (tokens.numpy(), token_source.numpy(), padding.numpy(), inputs.present[item : item + 1].numpy())]


def compiled_ensemble(
    stacked: StackedEnsemble, key: str, precision: str, engine: FusionEngine, name: str = "the fusion model"
) -> StackedEnsemble | CompiledEnsemble:
    """`stacked` run by OpenVINO at `precision` ("float32" or "bfloat16") as `engine` says;
    `key` names its cached conversion (the weights' digest in it). A cached conversion whose
    answers are not torch's is converted again; the StackedEnsemble itself, with a warning
    naming `name`, where OpenVINO cannot convert it or its answers still differ (module doc)."""
    kept = stacked.precision
    stacked.set_precision("float32")  # converted, and checked against, float32: OpenVINO computes at `precision` itself
    try:
        items = made_up_items(stacked.config)
        with torch.inference_mode():
            examples = [stacked.embed([item]) for item in items]
            reference = [stacked(inputs, attention=False).probabilities for inputs in examples]
        graph = DecisionGraph(stacked).eval()
        example = examples[-1]
        gap = float("nan")
        for fresh in (False, True):
            with warnings.catch_warnings():  # the tracer's notes on constants (the source -> modality table) are expected
                warnings.simplefilter("ignore")
                compiled = compile_module(
                    graph, (example.tokens, example.token_source, example.padding, example.present), f"fusion-{key}", engine.settings(precision), fresh
                )
            model = CompiledEnsemble(stacked, compiled, precision)
            with torch.inference_mode():
                gap = max(float((model.on_openvino(inputs).probabilities - answer).abs().max()) for inputs, answer in zip(examples, reference))
            if gap <= PRECISION_TOLERANCE:
                return model
    except ValueError as exc:  # OpenVINO cannot convert it
        log.warning("%s runs in torch: %s", name, exc)
        return stacked
    finally:
        stacked.set_precision(kept)
    log.warning("%s runs in torch: OpenVINO moved a probability by %.3f (more than %.2f)", name, gap, PRECISION_TOLERANCE)
    return stacked
