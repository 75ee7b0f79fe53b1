"""The fusion model: projections, modality-aware attention, the routing gate, the heads.

Evidence arrives from five *sources*, each belonging to one of three modalities:

    source       modality   tokens
    text         text       token features of the request's text (BERT, 384-d)
    image        image      patch features of the image (7x7 grid, 1280-d)
    image_text   image      one pooled text vector per OCR line (screen text is image evidence)
    audio        audio      log-mel frames, average-pooled in time (80-d)
    audio_text   audio      token features of the transcript (audio evidence)

1. Projection.  z = W_s x + e_modality(s)                      every token to width d
2. Attention.   Attention(Q, K, V) = softmax(Q Kᵀ / √d_k + M) V,
                M[i, j] = B[modality(i), modality(j)]   (learned; 0 within a modality and
                a negative penalty across at init), and -inf where j is padding.
3. Gate.        h_s = source s's tokens after attention, pooled with a learned query
                      (softmax over its tokens of q_s . x_i; or their mean)
                s_s = MLP_s(h_s),  g = softmax(s) over the sources present (absent: -inf)
                fused = Σ_s g_s h_s
4. Heads.       p = softmax(W_c fused / T)   (T: temperature, calibrated after training)
                regression outputs r = W_r fused (for example a lesion diameter)

Before a source has arrived the gate cannot score it; its learned prior score
`gate.prior[s]` stands in, which is what compute routing uses to decide whether a
modality still outstanding could change the answer.

An ensemble (FusionEnsemble, FusionConfig.members > 1) runs several such models trained
from different seeds and answers with their mean.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from modalmesh.common.config import FUSION_PRECISIONS
from modalmesh.common.once import ComputedOnce

log = logging.getLogger(__name__)

# The one table of modalities and sources. A source is one feature sequence the model
# fuses: each modality's own features, and the side outputs some modalities bring (the
# screen text OCR reads, the transcript), embedded by the text model.
SOURCES = ("text", "image", "image_text", "audio", "audio_text")
MODALITIES = ("text", "image", "audio")
SOURCE_MODALITY = {"text": 0, "image": 1, "image_text": 1, "audio": 2, "audio_text": 2}  # index into MODALITIES
SIDE_SOURCE = {"image": "image_text", "audio": "audio_text"}  # a modality's side output
MODALITY_SOURCES = {m: tuple(s for s in SOURCES if MODALITIES[SOURCE_MODALITY[s]] == m) for m in MODALITIES}


def modality_of(source: str) -> str:
    """The modality a source comes from ("image_text" -> "image")."""
    return MODALITIES[SOURCE_MODALITY[source]]


DEFAULT_INPUT_WIDTHS = {"text": 384, "image": 1280, "image_text": 384, "audio": 80, "audio_text": 384}


@dataclass
class FusionConfig:
    labels: tuple[str, ...]
    regression: tuple[str, ...] = ()
    input_widths: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_INPUT_WIDTHS))
    width: int = 128
    heads: int = 4
    layers: int = 2
    cross_modal_penalty: float = -2.0
    dropout: float = 0.1
    max_tokens: int = 64  # per source; longer sequences are average-pooled down to this
    # Per-source limits below max_tokens (e.g. {"audio": 16}): the sources that carry little
    # of a task's answer pooled harder, so a decision has fewer tokens to attend over.
    source_tokens: dict[str, int] = field(default_factory=dict)
    pooling: str = "mean"  # h_s from a source's tokens: "mean" or "attention" (a learned query per source)
    measurement_sigma: dict[str, float] = field(default_factory=dict)  # validation error per regression output
    # P(outcome | label) of an encoder's measurement, outcome "found" (a lesion) or "none",
    # counted on validation (train.measurement_evidence; used in tasks.TaskSpec.finish).
    measurement_evidence: dict = field(default_factory=dict)
    # Per-source offsets added to the gate's scores, fitted on validation after training
    # (train.calibrate_gate): a source that helps on training data but not on new data
    # (a noisy transcript) is turned down. A source alone still gets all the weight.
    gate_offsets: Any = field(default_factory=dict)  # dict[str, float]; an ensemble's: one per member
    routing: dict = field(default_factory=dict)  # tau, gamma and eager side outputs tuned on validation (train.tune_routing_on)
    # Where regression outputs read from: "fused" (the gate-weighted mix) or one source's
    # pooled representation (e.g. "image": a lesion is measured on the scan, whatever else arrived).
    regression_from: str = "fused"
    regression_hidden: int = 0  # 0: a linear regression head; else one hidden layer of this width
    # An ensemble of this many models trained alike from seeds seed, seed+1, ... (see
    # FusionEnsemble); then gate_offsets is a list, one dict per member.
    members: int = 1
    # The text model these weights were trained with, '<name>@<digest>' (its own when
    # training fine-tuned its top layers, router/finetune.py): the router and eval refuse
    # text features from another. Empty (older weights): any whose features fit input_widths.
    text_model: str = ""
    # Answers whose calibrated confidence is below this are withheld (tasks.withheld); chosen
    # on validation by train.choose_abstain_below. 0: never on confidence alone.
    abstain_below: float = 0.0
    # Per modality: of its readings alone that were confident enough to dissent (tasks.DISSENT),
    # the share that was right on validation (train.dissent_precision). A modality whose lone
    # readings were often wrong (each input of a task whose labels combine what several show)
    # is not a dissenting voice. Empty (weights written before it was measured): every one is.
    dissent_precision: dict = field(default_factory=dict)
    # Per modality: of the answers its readings alone would give on validation whose input's
    # nearest training inputs mostly carry another label, the share that was wrong, where
    # that is more than the task's risk bound explains (train.neighbour_precision). Above
    # tasks.ABSTAIN_RISK, such an answer is withheld (tasks.neighbour_checked). Empty: never.
    neighbour_precision: dict = field(default_factory=dict)
    # Per modality: the confidence threshold of answers read from that input alone, where
    # validation needs a higher one than abstain_below (train.choose_alone_thresholds).
    abstain_below_alone: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.regression_from != "fused" and self.regression_from not in SOURCES:
            raise ValueError(f"regression_from {self.regression_from!r} is not 'fused' or one of {SOURCES}")
        if self.pooling not in ("mean", "attention"):
            raise ValueError(f"pooling {self.pooling!r} is not 'mean' or 'attention'")
        if self.members < 1:
            raise ValueError(f"members must be at least 1, not {self.members}")
        if self.heads < 1 or self.width < 1 or self.width % self.heads:
            raise ValueError(f"width {self.width} must be a positive multiple of the {self.heads} attention heads")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, not {self.max_tokens}")
        for source, limit in self.source_tokens.items():
            if source not in SOURCES:
                raise ValueError(f"source_tokens: {source!r} is not one of {', '.join(SOURCES)}")
            if not isinstance(limit, int) or limit < 1:
                raise ValueError(f"source_tokens: {source} must be at least 1 token, not {limit!r}")

    def token_limit(self, source: str) -> int:
        """The most tokens `source`'s features are pooled to."""
        return min(self.max_tokens, self.source_tokens.get(source, self.max_tokens))

    def to_dict(self) -> dict:
        return {**self.__dict__, "labels": list(self.labels), "regression": list(self.regression)}

    @classmethod
    def from_dict(cls, values: dict) -> "FusionConfig":
        values = dict(values)
        values["labels"] = tuple(values["labels"])
        values["regression"] = tuple(values.get("regression", ()))
        values.setdefault("pooling", "mean")  # weights written before pooling was configurable
        values["source_tokens"] = dict(values.get("source_tokens", {}))
        return cls(**values)


@dataclass
class FusionInputs:
    """A padded batch: all tokens of all sources side by side."""

    tokens: torch.Tensor  # [B, T, d] projected tokens (see FusionModel.embed)
    token_source: torch.Tensor  # [B, T] long, index into SOURCES
    padding: torch.Tensor  # [B, T] bool, True where there is no token
    present: torch.Tensor  # [B, S] bool, True where the source has tokens


@dataclass
class FusionOutputs:
    logits: torch.Tensor  # [B, L]
    probabilities: torch.Tensor  # [B, L], temperature-scaled
    regression: torch.Tensor  # [B, R]
    gate_weights: torch.Tensor  # [B, S], 0 for absent sources, rows sum to 1
    gate_scores: torch.Tensor  # [B, S]
    attention: torch.Tensor | None  # [B, H, T, T], averaged over layers; None when not kept
    token_source: torch.Tensor  # [B, T]
    padding: torch.Tensor  # [B, T]
    members: list | None = None  # an ensemble's: each member's own outputs
    member_gate_scores: torch.Tensor | None = None  # a StackedEnsemble's: [M, B, S], each member's gate scores


def pair_index(token_modality: torch.Tensor) -> torch.Tensor:
    """[B, T, T]: each (query, key) token pair's index into a flattened [3 x 3] pair bias."""
    return token_modality.unsqueeze(2) * len(MODALITIES) + token_modality.unsqueeze(1)


def pair_biases(pair_bias: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """pair_bias [..., 3, 3] at each token pair of `index` (pair_index): [..., B, T, T]. One
    gather (index_select) rather than advanced indexing: the same values, 5x faster here."""
    lead = pair_bias.shape[:-2]
    flat = pair_bias.reshape(*lead, -1)
    return torch.index_select(flat, flat.dim() - 1, index.reshape(-1)).view(*lead, *index.shape)


class ModalityAwareAttention(nn.Module):
    """Multi-head attention with a learned bias per (query modality, key modality) pair:
    softmax(Q Kᵀ / √d_k + M) V."""

    def __init__(self, width: int, heads: int, cross_modal_penalty: float) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads, self.head_width = heads, width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        pair_bias = torch.full((len(MODALITIES), len(MODALITIES)), float(cross_modal_penalty))
        pair_bias.fill_diagonal_(0.0)
        self.pair_bias = nn.Parameter(pair_bias)  # B[modality(i), modality(j)]

    def bias(self, token_modality: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """M: [B, 1, T, T] = pair_bias[modality(i), modality(j)], -inf at padded keys."""
        pair = pair_biases(self.pair_bias, pair_index(token_modality))
        return pair.masked_fill(padding.unsqueeze(1), float("-inf")).unsqueeze(1)

    def forward(self, x: torch.Tensor, token_modality: torch.Tensor, padding: torch.Tensor, keep: bool = True):
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, self.head_width).permute(2, 0, 3, 1, 4)
        mixed, attention = attend(q, k, v, self.bias(token_modality, padding), padding.unsqueeze(1).unsqueeze(-1), keep)
        return self.out(mixed.transpose(1, 2).reshape(batch, length, width)), attention


def attend(q, k, v, bias: torch.Tensor, padded_queries: torch.Tensor, keep: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """softmax(Q Kᵀ / √d_k + M) V for q, k, v [N, H, T, d_k], bias M [N, 1, T, T] and
    padded_queries [N, 1, T, 1]; a padded query's output is zeros. keep=False runs one
    fused kernel and does not return the attention weights (only explanations read them)."""
    if keep:
        attention = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + bias, dim=-1)
        attention = attention.masked_fill(padded_queries, 0.0)  # a padded query attends to nothing real: a finite, zero row
        return attention @ v, attention
    if not torch.jit.is_tracing() and not padded_queries.any():  # a traced graph (compiled_fusion.py) takes any padding
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias), None
    # A padded query's row is all -inf (NaN after the softmax): give it a finite row, zero its output.
    mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.masked_fill(padded_queries, 0.0))
    return mixed.masked_fill(padded_queries, 0.0), None


class FusionLayer(nn.Module):
    """Pre-norm transformer layer with modality-aware attention."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.norm_attention = nn.LayerNorm(config.width)
        self.attention = ModalityAwareAttention(config.width, config.heads, config.cross_modal_penalty)
        self.norm_mlp = nn.LayerNorm(config.width)
        self.mlp = nn.Sequential(nn.Linear(config.width, 2 * config.width), nn.GELU(), nn.Linear(2 * config.width, config.width))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, token_modality, padding, keep: bool = True):
        attended, attention = self.attention(self.norm_attention(x), token_modality, padding, keep)
        x = x + self.dropout(attended)
        x = x + self.dropout(self.mlp(self.norm_mlp(x)))
        return x, attention


class RoutingGate(nn.Module):
    """s_s = MLP_s(h_s); g = softmax(s) over the sources present."""

    offset: torch.Tensor

    def __init__(self, width: int) -> None:
        super().__init__()
        self.score = nn.ModuleDict({source: nn.Sequential(nn.Linear(width, width // 2), nn.GELU(), nn.Linear(width // 2, 1)) for source in SOURCES})
        # Expected score of a source before it arrives (compute routing's estimate).
        self.prior = nn.Parameter(torch.zeros(len(SOURCES)))
        # FusionConfig.gate_offsets as a tensor (not saved with the weights: config.json holds it).
        self.register_buffer("offset", torch.zeros(len(SOURCES)), persistent=False)

    def scores(self, per_source: torch.Tensor) -> torch.Tensor:
        """s_s, before offsets (what the priors learn). [B, S]"""
        return torch.cat([self.score[source](per_source[:, i]) for i, source in enumerate(SOURCES)], dim=-1)

    def weights(self, scores: torch.Tensor, present: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
        added = self.offset if offset is None else offset
        return torch.softmax((scores + added).masked_fill(~present, float("-inf")), dim=-1)

    def forward(self, per_source: torch.Tensor, present: torch.Tensor):
        scores = self.scores(per_source)
        return self.weights(scores, present), scores

    def outstanding_weight(self, scores: torch.Tensor, present: torch.Tensor, outstanding: torch.Tensor) -> torch.Tensor:
        """Predicted total weight of the `outstanding` sources once they arrive: their
        prior scores compete with the present sources' actual scores. [B]"""
        combined = torch.where(present, scores, self.prior.expand_as(scores))
        return (self.weights(combined, present | outstanding) * outstanding).sum(dim=-1)


class FusionModel(nn.Module):
    gate: RoutingGate
    norm: nn.LayerNorm
    layers: nn.ModuleList

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        self.project = nn.ModuleDict({s: nn.Linear(config.input_widths[s], config.width) for s in SOURCES})
        self.modality_embedding = nn.Embedding(len(MODALITIES), config.width)
        self.layers = nn.ModuleList(FusionLayer(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.width)
        # Attention pooling: one learned query per source scores its tokens.
        self.pool_query = nn.Parameter(torch.zeros(len(SOURCES), config.width)) if config.pooling == "attention" else None
        self.gate = RoutingGate(config.width)
        self.classifier = nn.Linear(config.width, len(config.labels))
        outputs = max(1, len(config.regression))
        self.regressor = (
            nn.Linear(config.width, outputs)
            if not config.regression_hidden
            else nn.Sequential(nn.Linear(config.width, config.regression_hidden), nn.GELU(), nn.Linear(config.regression_hidden, outputs))
        )
        self.log_temperature = nn.Parameter(torch.zeros(()), requires_grad=False)  # set by calibration
        self.set_gate_offsets(config.gate_offsets)

    def set_gate_offsets(self, offsets: dict[str, float]) -> None:
        self.config.gate_offsets = {s: float(v) for s, v in offsets.items() if s in SOURCES}
        with torch.no_grad():
            self.gate.offset.copy_(torch.tensor([self.config.gate_offsets.get(s, 0.0) for s in SOURCES]))

    # -- inputs ----------------------------------------------------------------------
    def embed(self, batch: list[dict[str, torch.Tensor]], projections: "ProjectedTokens | None" = None) -> FusionInputs:
        """Each item maps source -> [n, input_width] features (a [input_width] vector is
        one token). Returns the padded, projected batch. `projections`: one request's
        projected sources so far (ProjectedTokens), reused (inference only)."""

        def project(source: str, features: torch.Tensor) -> torch.Tensor:
            return self.project[source](features) + self.modality_embedding(torch.tensor(SOURCE_MODALITY[source]))

        return embed_batch(batch, self.config.token_limit, project, projections, self)

    def outstanding_weight(self, inputs: FusionInputs, outputs: FusionOutputs, outstanding: torch.Tensor) -> torch.Tensor:
        """The gate's predicted total weight of the `outstanding` sources ([B, S] bool). [B]"""
        return self.gate.outstanding_weight(outputs.gate_scores, inputs.present, outstanding)

    def _regression_input(self, fused: torch.Tensor, per_source: torch.Tensor) -> torch.Tensor:
        if self.config.regression_from == "fused":
            return fused
        return per_source[:, SOURCES.index(self.config.regression_from)]  # zeros when that source is absent

    # -- forward ---------------------------------------------------------------------
    def forward(self, inputs: FusionInputs, attention: bool = True) -> FusionOutputs:
        """`attention=False`: FusionOutputs.attention is None (a fused kernel computes the
        same outputs without keeping the weights, which only explanations read)."""
        per_source, attentions = self.sources(inputs, keep=attention)
        gate_weights, gate_scores = self.gate(per_source, inputs.present)
        fused, logits = self.fuse(per_source, gate_weights)
        return FusionOutputs(
            logits=logits,
            probabilities=torch.softmax(logits / self.log_temperature.exp(), dim=-1),
            regression=self.regressor(self._regression_input(fused, per_source))[:, : len(self.config.regression)],
            gate_weights=gate_weights,
            gate_scores=gate_scores,
            attention=torch.stack(attentions).mean(dim=0) if attention else None,
            token_source=inputs.token_source,
            padding=inputs.padding,
        )

    def fuse(self, per_source: torch.Tensor, gate_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fused = sum_s g_s h_s, and the classifier's logits on it (before temperature)."""
        fused = (gate_weights.unsqueeze(-1) * per_source).sum(dim=1)
        return fused, self.classifier(fused)

    def sources(self, inputs: FusionInputs, keep: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """h_s for every source ([B, S, d]; zeros where absent) and each layer's attention
        (None when not `keep`)."""
        token_modality = _source_to_modality(inputs.token_source)
        x, attentions = inputs.tokens, []
        for layer in self.layers:
            x, attention = layer(x, token_modality, inputs.padding, keep)
            attentions.append(attention)
        x = self.norm(x)
        # h_s: each source's tokens pooled (mean, or weights softmax_i(q_s . x_i) over its tokens).
        membership = F.one_hot(inputs.token_source, len(SOURCES)).float() * (~inputs.padding).unsqueeze(-1)  # [B, T, S]
        if self.pool_query is None:
            pool_weights = membership / membership.sum(dim=1, keepdim=True).clamp(min=1.0)
        else:
            scores = (x @ self.pool_query.t()) / math.sqrt(self.config.width)  # [B, T, S]
            scores = scores.masked_fill(membership == 0, float("-inf"))
            pool_weights = torch.nan_to_num(torch.softmax(scores, dim=1), nan=0.0)  # absent sources: all zero
        return pool_weights.transpose(1, 2) @ x, attentions  # [B, S, d]


class FusionEnsemble(nn.Module):
    """Models trained alike from different seeds, answering together: probabilities,
    logits, regression, gate weights and attention are the members' means (each member
    calibrated on its own first). Training on frozen features is cheap, and which wording
    a single model gets wrong depends on its seed; averaging a few cuts that variance and
    the confidence of the mistakes only some members make. Used like a FusionModel."""

    def __init__(self, config: FusionConfig, members: list[FusionModel]) -> None:
        super().__init__()
        self.config = config  # the ensemble's: task-level fields (routing, measurement)
        self.members = nn.ModuleList(members)

    @property
    def models(self) -> list[FusionModel]:
        """The members, as the models they are (nn.ModuleList holds them as modules)."""
        return [member for member in self.members if isinstance(member, FusionModel)]

    def embed(self, batch: list[dict[str, torch.Tensor]], projections: "ProjectedTokens | None" = None) -> list[FusionInputs]:
        return [member.embed(batch, projections) for member in self.models]

    def forward(self, inputs: list[FusionInputs], attention: bool = True) -> FusionOutputs:
        outputs = [member(member_inputs, attention) for member, member_inputs in zip(self.models, inputs)]

        def mean(name: str) -> torch.Tensor:
            return torch.stack([getattr(o, name) for o in outputs]).mean(dim=0)

        return FusionOutputs(
            logits=mean("logits"),
            probabilities=mean("probabilities"),
            regression=mean("regression"),
            gate_weights=mean("gate_weights"),
            gate_scores=mean("gate_scores"),
            attention=mean("attention") if outputs[0].attention is not None else None,
            token_source=outputs[0].token_source,
            padding=outputs[0].padding,
            members=outputs,
        )

    def stacked(self) -> "StackedEnsemble":
        """The same ensemble as one batched model, for inference (see StackedEnsemble)."""
        return StackedEnsemble(self.eval())

    def outstanding_weight(self, inputs: list[FusionInputs], outputs: FusionOutputs, outstanding: torch.Tensor) -> torch.Tensor:
        assert outputs.members is not None  # an ensemble's outputs keep each member's
        return torch.stack([member.outstanding_weight(i, o, outstanding) for member, i, o in zip(self.models, inputs, outputs.members)]).mean(dim=0)


PRECISIONS = FUSION_PRECISIONS[1:]  # what a StackedEnsemble's linear maps may compute in (set_precision); "auto" chooses
LAYER_PRODUCTS = ("qkv", "out", "mlp_in", "mlp_out")  # a layer's linear maps (StackedEnsemble.layers)


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), where the
    fusion model's bfloat16 products are faster than float32 ones."""
    cpu = getattr(torch._C, "_cpu", None)  # torch's own CPU feature checks; a torch without them: no
    return any(bool(getattr(cpu, check, lambda: False)()) for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def fusion_precision(setting: str) -> str:
    """The fusion precision a setting ("auto" or one of PRECISIONS) means on this machine:
    "auto" is bfloat16 where the CPU multiplies it natively, else float32."""
    if setting == "auto":
        return "bfloat16" if native_bfloat16() else "float32"
    if setting not in PRECISIONS:
        raise ValueError(f"fusion precision {setting!r} is not auto or one of {', '.join(PRECISIONS)}")
    return setting


def made_up_items(config: FusionConfig) -> list[dict[str, torch.Tensor]]:
    """A fixed set of made-up inputs that checks a faster way of running a model against
    float32 torch: every source alone and all together, one to 64 tokens each."""
    generator = torch.Generator().manual_seed(0)
    widths = config.input_widths
    items = [{source: torch.randn(tokens, widths[source], generator=generator)} for tokens in (1, 8) for source in SOURCES]
    return items + [{source: torch.randn(tokens, widths[source], generator=generator) for source in SOURCES} for tokens in (4, 64)]


PRECISION_TOLERANCE = 0.01  # largest probability change bfloat16 products may make on checked_precision's inputs


def checked_precision(model: "StackedEnsemble", setting: str, name: str = "the fusion model") -> str:
    """The precision `model` runs at for `setting` (fusion_precision). For "auto", bfloat16
    only where its answers are float32's: on a fixed set of made-up inputs (every source
    alone and all together, one to 64 tokens each) no probability may move by more than
    PRECISION_TOLERANCE; else float32, with a warning naming `name`."""
    chosen = fusion_precision(setting)
    if setting != "auto" or chosen == "float32":
        return chosen
    items = made_up_items(model.config)
    kept = model.precision

    def answers(precision: str) -> list[torch.Tensor]:
        model.set_precision(precision)
        # One item at a time: a padded batch of them would grow the router's heap by about 70 MiB for good.
        return [model(model.embed([item]), attention=False).probabilities for item in items]

    try:
        with torch.inference_mode():
            reference, candidate = answers("float32"), answers(chosen)
    finally:
        model.set_precision(kept)
    gap = max(float((a - b).abs().max()) for a, b in zip(reference, candidate))
    if gap > PRECISION_TOLERANCE:
        log.warning("%s: bfloat16 moved a probability by %.3f (more than %.2f): running it in float32", name, gap, PRECISION_TOLERANCE)
        return "float32"
    return chosen


class StackedEnsemble(nn.Module):
    """An ensemble for inference, run as one model: every member's weights stacked along a
    leading member axis, so a decision is one batched matrix product per layer instead of
    one per layer and member (the same numbers as FusionEnsemble, to float rounding; with
    attention weights not kept, a three-member triage decision takes 6.5 instead of 10 ms
    on 2 threads, 8.4 instead of 12.4 on one). Built from
    a loaded FusionEnsemble (`FusionEnsemble.stacked`); no training, no dropout. Its inputs
    and outputs are a FusionModel's: FusionInputs with tokens [M, B, T, d] (each member's own
    projection), FusionOutputs with the members' means. The stacked weights are plain
    tensors (CPU inference), not parameters: train and save the FusionEnsemble."""

    def __init__(self, ensemble: FusionEnsemble) -> None:
        super().__init__()
        self.config = ensemble.config
        self.members: list[FusionModel] = list(ensemble.models)  # the models themselves (key_screen_line reads the first)
        first = self.members[0]
        if any(m.config.pooling != first.config.pooling or m.config.regression_hidden != first.config.regression_hidden for m in self.members):
            raise ValueError("ensemble members differ in structure; they must be trained alike")

        def stack(get) -> torch.Tensor:
            return torch.stack([get(m).detach() for m in self.members]).contiguous()

        def linear(get) -> tuple[torch.Tensor, torch.Tensor]:  # weight as [M, in, out], bias as [M, 1, out]
            return stack(lambda m: get(m).weight.t()), stack(lambda m: get(m).bias[None])

        self.project = {s: linear(lambda m, s=s: m.project[s]) for s in SOURCES}
        self.modality_embedding = stack(lambda m: m.modality_embedding.weight)  # [M, 3, d]
        self.layers: list[dict[str, Any]] = []
        for i in range(len(first.layers)):
            self.layers.append(
                {
                    "norm_attention": stack(lambda m: m.layers[i].norm_attention.weight),
                    "norm_attention_b": stack(lambda m: m.layers[i].norm_attention.bias),
                    "qkv": linear(lambda m: m.layers[i].attention.qkv),
                    "out": linear(lambda m: m.layers[i].attention.out),
                    "pair_bias": stack(lambda m: m.layers[i].attention.pair_bias),
                    "norm_mlp": stack(lambda m: m.layers[i].norm_mlp.weight),
                    "norm_mlp_b": stack(lambda m: m.layers[i].norm_mlp.bias),
                    "mlp_in": linear(lambda m: m.layers[i].mlp[0]),
                    "mlp_out": linear(lambda m: m.layers[i].mlp[2]),
                }
            )
        layer = first.layers[0]
        assert isinstance(layer, FusionLayer)
        self.heads, self.head_width = layer.attention.heads, layer.attention.head_width
        self.eps: float = first.norm.eps  # every LayerNorm's (nn.LayerNorm's default)
        self.norm = (stack(lambda m: m.norm.weight), stack(lambda m: m.norm.bias))
        self.pool_query = stack(lambda m: m.pool_query) if first.pool_query is not None else None  # [M, S, d]
        # The gate's per-source MLPs, stacked over members and sources: [M, S, in, out].
        self.gate_in = (
            stack(lambda m: torch.stack([m.gate.score[s][0].weight.t() for s in SOURCES])),
            stack(lambda m: torch.stack([m.gate.score[s][0].bias for s in SOURCES])),
        )
        self.gate_out = (
            stack(lambda m: torch.stack([m.gate.score[s][2].weight.t() for s in SOURCES])),
            stack(lambda m: torch.cat([m.gate.score[s][2].bias for s in SOURCES])),
        )
        self.gate_prior = stack(lambda m: m.gate.prior)  # [M, S]
        self.gate_offset = stack(lambda m: m.gate.offset)  # [M, S]
        self.classifier = linear(lambda m: m.classifier)
        if first.config.regression_hidden:
            self.regressor = [linear(lambda m: m.regressor[0]), linear(lambda m: m.regressor[2])]
        else:
            self.regressor = [linear(lambda m: m.regressor)]
        self.temperature = stack(lambda m: m.log_temperature.exp())  # [M]
        self.precision = "float32"
        self.products: list[dict[str, Any]] = self.layers  # what forward reads: the layers, their linear maps at `precision`

    def set_precision(self, precision: str) -> "StackedEnsemble":
        """The precision of the layers' linear maps (attention's q, k, v and output, the MLP),
        where nearly all of a decision's arithmetic is: "float32", or "bfloat16": inputs and
        weights rounded to bfloat16, each product accumulated in float32 (2-3x faster on a
        CPU with bfloat16 dot products, AVX512-BF16 or AMX; slower on one without). Attention
        itself, norms, residual sums, pooling, gate and heads stay float32."""
        if precision not in PRECISIONS:
            raise ValueError(f"fusion precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        dtype = getattr(torch, precision)
        self.precision = precision
        self.products = [{**layer, **{name: tuple(t.to(dtype) for t in layer[name]) for name in LAYER_PRODUCTS}} for layer in self.layers]
        return self

    @staticmethod
    def _linear(x: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x [M, ..., in] -> [M, ..., out], each member with its own weights, computed in the
        weights' dtype; the output is float32."""
        weight, bias = weights
        shape = x.shape
        flat = torch.baddbmm(bias, x.reshape(shape[0], -1, shape[-1]).to(weight.dtype), weight)
        return flat.view(*shape[:-1], weight.shape[-1]).float()

    @staticmethod
    def _norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        shape = (weight.shape[0],) + (1,) * (x.dim() - 2) + (weight.shape[-1],)
        return F.layer_norm(x, x.shape[-1:], eps=eps) * weight.view(shape) + bias.view(shape)

    def embed(self, batch: list[dict[str, torch.Tensor]], projections: "ProjectedTokens | None" = None) -> FusionInputs:
        """As FusionModel.embed, every member at once: tokens [M, B, T, d]."""

        def project(source: str, features: torch.Tensor) -> torch.Tensor:
            weight, bias = self.project[source]
            return torch.matmul(features, weight) + bias + self.modality_embedding[:, SOURCE_MODALITY[source]].unsqueeze(1)

        return embed_batch(batch, self.config.token_limit, project, projections, self)

    def _attention(self, x: torch.Tensor, layer: dict, pairs: torch.Tensor, padding: torch.Tensor, keep: bool):
        members, batch, length, width = x.shape
        q, k, v = self._linear(x, layer["qkv"]).view(members * batch, length, 3, self.heads, self.head_width).permute(2, 0, 3, 1, 4)
        pair = pair_biases(layer["pair_bias"], pairs)  # [M, B, T, T]
        bias = pair.masked_fill(padding.unsqueeze(1), float("-inf")).view(members * batch, 1, length, length)
        padded_queries = padding.unsqueeze(1).unsqueeze(-1).repeat(members, 1, 1, 1)  # [M*B, 1, T, 1]
        mixed, attention = attend(q, k, v, bias, padded_queries, keep)
        mixed = mixed.transpose(1, 2).reshape(members, batch, length, width)
        if attention is not None:
            attention = attention.view(members, batch, self.heads, length, length)
        return self._linear(mixed, layer["out"]), attention

    def forward(self, inputs: FusionInputs, attention: bool = True) -> FusionOutputs:
        """`attention=False` leaves FusionOutputs.attention None (a fused attention
        kernel then runs; the weights are only read to explain an answer)."""
        keep = attention
        pairs = pair_index(_source_to_modality(inputs.token_source))  # once for every layer
        x, attentions, eps = inputs.tokens, [], self.eps
        for layer in self.products:
            attended, weights = self._attention(self._norm(x, layer["norm_attention"], layer["norm_attention_b"], eps), layer, pairs, inputs.padding, keep)
            x = x + attended
            hidden = F.gelu(self._linear(self._norm(x, layer["norm_mlp"], layer["norm_mlp_b"], eps), layer["mlp_in"]))
            x = x + self._linear(hidden, layer["mlp_out"])
            attentions.append(weights)
        x = self._norm(x, *self.norm, eps)  # [M, B, T, d]
        membership = F.one_hot(inputs.token_source, len(SOURCES)).float() * (~inputs.padding).unsqueeze(-1)  # [B, T, S]
        if self.pool_query is None:
            pool_weights = (membership / membership.sum(dim=1, keepdim=True).clamp(min=1.0)).unsqueeze(0)
        else:
            scores = torch.einsum("mbtd,msd->mbts", x, self.pool_query) / math.sqrt(x.shape[-1])
            scores = scores.masked_fill(membership.unsqueeze(0) == 0, float("-inf"))
            pool_weights = torch.softmax(scores, dim=2)
            pool_weights = pool_weights.masked_fill(torch.isnan(pool_weights), 0.0)  # absent sources: all zero
        per_source = pool_weights.transpose(-1, -2) @ x  # [M, B, S, d]

        hidden = F.gelu(torch.einsum("mbsd,msdh->mbsh", per_source, self.gate_in[0]) + self.gate_in[1].unsqueeze(1))
        gate_scores = torch.einsum("mbsh,msho->mbso", hidden, self.gate_out[0]).squeeze(-1) + self.gate_out[1].unsqueeze(1)
        present = inputs.present.unsqueeze(0)
        gate_weights = torch.softmax((gate_scores + self.gate_offset.unsqueeze(1)).masked_fill(~present, float("-inf")), dim=-1)
        fused = (gate_weights.unsqueeze(-1) * per_source).sum(dim=2)  # [M, B, d]
        logits = self._linear(fused, self.classifier)
        probabilities = torch.softmax(logits / self.temperature.view(-1, 1, 1), dim=-1)
        if self.config.regression_from == "fused":
            regression = fused
        else:
            regression = per_source[:, :, SOURCES.index(self.config.regression_from)]
        for i, weights in enumerate(self.regressor):
            regression = self._linear(F.gelu(regression) if i else regression, weights)
        return FusionOutputs(
            logits=logits.mean(dim=0),
            probabilities=probabilities.mean(dim=0),
            regression=regression[..., : len(self.config.regression)].mean(dim=0),
            gate_weights=gate_weights.mean(dim=0),
            gate_scores=gate_scores.mean(dim=0),
            attention=torch.stack(attentions).mean(dim=(0, 1)) if keep else None,
            token_source=inputs.token_source,
            padding=inputs.padding,
            member_gate_scores=gate_scores,
        )

    def outstanding_weight(self, inputs: FusionInputs, outputs: FusionOutputs, outstanding: torch.Tensor) -> torch.Tensor:
        """As FusionEnsemble.outstanding_weight: each member's prediction, averaged. [B]"""
        present = inputs.present.unsqueeze(0)
        assert outputs.member_gate_scores is not None  # this model's outputs keep them
        combined = torch.where(present, outputs.member_gate_scores, self.gate_prior.unsqueeze(1))
        available = present | outstanding.unsqueeze(0)
        weights = torch.softmax((combined + self.gate_offset.unsqueeze(1)).masked_fill(~available, float("-inf")), dim=-1)
        return (weights * outstanding.unsqueeze(0)).sum(dim=-1).mean(dim=0)


def fit_log_temperature(nll: Callable[[torch.Tensor], torch.Tensor], max_iter: int = 100) -> torch.Tensor:
    """log T minimising nll(T), a validation negative log-likelihood of logits / T
    (temperature scaling, Guo et al., 2017), clamped to [-3, 3]."""
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter)

    def closure():
        optimizer.zero_grad()
        loss = nll(log_t.exp())
        loss.backward()
        return loss

    optimizer.step(closure)
    return log_t.detach().clamp(-3, 3)


def build_model(config: FusionConfig) -> FusionModel | FusionEnsemble:
    """A FusionModel, or for config.members > 1 an ensemble of them; each member gets its
    own gate offsets (config.gate_offsets is then a list of dicts)."""
    if config.members == 1:
        return FusionModel(config)
    offsets = config.gate_offsets if isinstance(config.gate_offsets, list) else [config.gate_offsets] * config.members
    if len(offsets) != config.members:
        raise ValueError(f"{config.members} members but {len(offsets)} sets of gate offsets")
    members = [FusionModel(dataclasses.replace(config, members=1, gate_offsets=dict(o))) for o in offsets]
    return FusionEnsemble(config, members)


def embed_batch(
    batch: list[dict[str, torch.Tensor]],
    max_tokens: int | Callable[[str], int],
    project,
    projections: "ProjectedTokens | None" = None,
    owner: object = None,
) -> FusionInputs:
    """Every item's sources in SOURCES order, long ones pooled to max_tokens (a number, or
    a source's own limit: FusionConfig.token_limit), projected by
    `project(source, [n, input_width]) -> [..., n, d]`, side by side and padded to the
    longest item: tokens [..., B, T, d]. A tensor that several items share (the readings of
    one screen share every source but the status paragraph) is projected once; with
    `projections`, once per request for the model `owner`."""
    limit = max_tokens if callable(max_tokens) else (lambda source: max_tokens)
    rows, sources = [], []
    projected: dict[tuple[str, int], torch.Tensor] = {}  # (source, id of the tensor): its tokens; the batch keeps every tensor alive
    for item in batch:
        pieces, ids = [], []
        for index, source in enumerate(SOURCES):
            features = item.get(source)
            if features is None or features.numel() == 0:
                continue
            key = (source, id(features))
            if key not in projected:

                def projection(source: str = source, features: torch.Tensor = features) -> torch.Tensor:
                    return project(source, _limit_tokens(features.float().reshape(-1, features.shape[-1]), limit(source)))

                projected[key] = projection() if projections is None else projections.get(owner, source, features, projection)
            pieces.append(projected[key])
            ids.append(torch.full((pieces[-1].shape[-2],), index, dtype=torch.long))
        if not pieces:
            raise ValueError("an item with no evidence: at least one source must have features")
        rows.append(torch.cat(pieces, dim=-2))
        sources.append(torch.cat(ids))
    length = max(r.shape[-2] for r in rows)
    tokens = torch.zeros(*rows[0].shape[:-2], len(batch), length, rows[0].shape[-1])
    token_source = torch.zeros(len(batch), length, dtype=torch.long)
    padding = torch.ones(len(batch), length, dtype=torch.bool)
    for i, (row, row_ids) in enumerate(zip(rows, sources)):
        n = row.shape[-2]
        tokens[..., i, :n, :], token_source[i, :n], padding[i, :n] = row, row_ids, False
    present = torch.stack([torch.bincount(item_ids, minlength=len(SOURCES)) > 0 for item_ids in sources])
    return FusionInputs(tokens, token_source, padding, present)


class ProjectedTokens:
    """One request's projected sources (embed_batch's tokens), per model, source and
    features tensor: a request decides again as each encoder answers, and reads each
    modality alone too (tasks.decide), so the sources that came early are projected once,
    while later ones are still at work, not again in the last decision. Kept while the
    features are the same tensor (each entry holds it). Whoever asks first computes; a
    later asker waits for it."""

    def __init__(self) -> None:
        self._projected: ComputedOnce[torch.Tensor] = ComputedOnce(lambda kept, given: kept[0] is given[0] and kept[1] is given[1])

    def get(self, owner: object, source: str, features: torch.Tensor, project: Callable[[], torch.Tensor]) -> torch.Tensor:
        return self._projected.get((id(owner), source, id(features)), (owner, features), project)

    def __len__(self) -> int:
        return len(self._projected)


def _source_to_modality(token_source: torch.Tensor) -> torch.Tensor:
    lookup = torch.tensor([SOURCE_MODALITY[s] for s in SOURCES])
    return lookup[token_source]


def _limit_tokens(features: torch.Tensor, max_tokens: int) -> torch.Tensor:
    """Average-pool a long sequence down to at most max_tokens rows (order kept)."""
    if features.shape[0] <= max_tokens:
        return features
    return F.adaptive_avg_pool1d(features.t().unsqueeze(0), max_tokens)[0].t()


def modality_gate_weights(gate_weights: torch.Tensor) -> torch.Tensor:
    """[B, S] source weights -> [B, 3] modality weights (summed within a modality)."""
    lookup = torch.tensor([SOURCE_MODALITY[s] for s in SOURCES])
    return torch.zeros(gate_weights.shape[0], len(MODALITIES)).index_add_(1, lookup, gate_weights)


def attention_mass(outputs: FusionOutputs, item: int = 0) -> torch.Tensor:
    """[3, 3]: for queries of modality a, the attention mass on keys of modality b,
    averaged over heads and query positions; rows of present modalities sum to 1."""
    if outputs.attention is None:
        raise ValueError("attention_mass needs the attention weights: decide with attention=True")
    attention = outputs.attention[item].mean(dim=0)  # [T, T]
    valid = ~outputs.padding[item]
    modality = _source_to_modality(outputs.token_source[item])
    mass = torch.zeros(len(MODALITIES), len(MODALITIES))
    for a in range(len(MODALITIES)):
        queries = valid & (modality == a)
        if not queries.any():
            continue
        rows = attention[queries]  # [q, T]
        for b in range(len(MODALITIES)):
            mass[a, b] = rows[:, valid & (modality == b)].sum(dim=-1).mean()
    return mass


def normalised_entropy(probabilities: torch.Tensor, count: int | None = None) -> torch.Tensor:
    """Entropy / log(count), in [0, 1]; 0 when count <= 1."""
    count = probabilities.shape[-1] if count is None else count
    if count <= 1:
        return torch.zeros(probabilities.shape[:-1])
    p = probabilities.clamp(min=1e-12)
    return -(probabilities * p.log()).sum(dim=-1) / math.log(count)
