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
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

SOURCES = ("text", "image", "image_text", "audio", "audio_text")
MODALITIES = ("text", "image", "audio")
SOURCE_MODALITY = {"text": 0, "image": 1, "image_text": 1, "audio": 2, "audio_text": 2}
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
    pooling: str = "mean"  # h_s from a source's tokens: "mean" or "attention" (a learned query per source)
    measurement_sigma: dict[str, float] = field(default_factory=dict)  # validation error per regression output
    # Likelihood ratios of an encoder's measurement (a lesion "found" / "none") for the
    # size rule's labels vs the rest, counted on validation (see tasks.TaskSpec.finish).
    measurement_evidence: dict[str, float] = field(default_factory=dict)
    # Per-source offsets added to the gate's scores, fitted on validation after training
    # (train.calibrate_gate): a source that helps on training data but not on new data
    # (a noisy transcript) is turned down. A source alone still gets all the weight.
    gate_offsets: dict[str, float] = field(default_factory=dict)
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

    def __post_init__(self) -> None:
        if self.regression_from != "fused" and self.regression_from not in SOURCES:
            raise ValueError(f"regression_from {self.regression_from!r} is not 'fused' or one of {SOURCES}")
        if self.pooling not in ("mean", "attention"):
            raise ValueError(f"pooling {self.pooling!r} is not 'mean' or 'attention'")
        if self.members < 1:
            raise ValueError(f"members must be at least 1, not {self.members}")

    def to_dict(self) -> dict:
        return {**self.__dict__, "labels": list(self.labels), "regression": list(self.regression)}

    @classmethod
    def from_dict(cls, values: dict) -> "FusionConfig":
        values = dict(values)
        values["labels"] = tuple(values["labels"])
        values["regression"] = tuple(values.get("regression", ()))
        values.setdefault("pooling", "mean")  # weights written before pooling was configurable
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
    attention: torch.Tensor  # [B, H, T, T], averaged over layers
    token_source: torch.Tensor  # [B, T]
    padding: torch.Tensor  # [B, T]
    members: list | None = None  # an ensemble's: each member's own outputs


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
        pair = self.pair_bias[token_modality.unsqueeze(2), token_modality.unsqueeze(1)]
        return pair.masked_fill(padding.unsqueeze(1), float("-inf")).unsqueeze(1)

    def forward(self, x: torch.Tensor, token_modality: torch.Tensor, padding: torch.Tensor):
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, self.head_width).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_width) + self.bias(token_modality, padding)
        attention = torch.softmax(scores, dim=-1)
        # A padded query attends to nothing real; keep its row finite (all zeros).
        attention = attention.masked_fill(padding.unsqueeze(1).unsqueeze(-1), 0.0)
        mixed = (attention @ v).transpose(1, 2).reshape(batch, length, width)
        return self.out(mixed), attention


class FusionLayer(nn.Module):
    """Pre-norm transformer layer with modality-aware attention."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.norm_attention = nn.LayerNorm(config.width)
        self.attention = ModalityAwareAttention(config.width, config.heads, config.cross_modal_penalty)
        self.norm_mlp = nn.LayerNorm(config.width)
        self.mlp = nn.Sequential(nn.Linear(config.width, 2 * config.width), nn.GELU(), nn.Linear(2 * config.width, config.width))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, token_modality, padding):
        attended, attention = self.attention(self.norm_attention(x), token_modality, padding)
        x = x + self.dropout(attended)
        x = x + self.dropout(self.mlp(self.norm_mlp(x)))
        return x, attention


class RoutingGate(nn.Module):
    """s_s = MLP_s(h_s); g = softmax(s) over the sources present."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.score = nn.ModuleDict(
            {source: nn.Sequential(nn.Linear(width, width // 2), nn.GELU(), nn.Linear(width // 2, 1)) for source in SOURCES}
        )
        # Expected score of a source before it arrives (compute routing's estimate).
        self.prior = nn.Parameter(torch.zeros(len(SOURCES)))
        # FusionConfig.gate_offsets as a tensor (not saved with the weights: config.json holds it).
        self.register_buffer("offset", torch.zeros(len(SOURCES)), persistent=False)

    def scores(self, per_source: torch.Tensor) -> torch.Tensor:
        """s_s, before offsets (what the priors learn). [B, S]"""
        return torch.cat([self.score[source](per_source[:, i]) for i, source in enumerate(SOURCES)], dim=-1)

    def weights(self, scores: torch.Tensor, present: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
        offset = self.offset if offset is None else offset
        return torch.softmax((scores + offset).masked_fill(~present, float("-inf")), dim=-1)

    def forward(self, per_source: torch.Tensor, present: torch.Tensor):
        scores = self.scores(per_source)
        return self.weights(scores, present), scores

    def outstanding_weight(self, scores: torch.Tensor, present: torch.Tensor, outstanding: torch.Tensor) -> torch.Tensor:
        """Predicted total weight of the `outstanding` sources once they arrive: their
        prior scores compete with the present sources' actual scores. [B]"""
        combined = torch.where(present, scores, self.prior.expand_as(scores))
        return (self.weights(combined, present | outstanding) * outstanding).sum(dim=-1)


class FusionModel(nn.Module):
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
        self.regressor = (nn.Linear(config.width, outputs) if not config.regression_hidden else
                          nn.Sequential(nn.Linear(config.width, config.regression_hidden), nn.GELU(), nn.Linear(config.regression_hidden, outputs)))
        self.log_temperature = nn.Parameter(torch.zeros(()), requires_grad=False)  # set by calibration
        self.set_gate_offsets(config.gate_offsets)

    def set_gate_offsets(self, offsets: dict[str, float]) -> None:
        self.config.gate_offsets = {s: float(v) for s, v in offsets.items() if s in SOURCES}
        with torch.no_grad():
            self.gate.offset.copy_(torch.tensor([self.config.gate_offsets.get(s, 0.0) for s in SOURCES]))

    # -- inputs ----------------------------------------------------------------------
    def embed(self, batch: list[dict[str, torch.Tensor]]) -> FusionInputs:
        """Each item maps source -> [n, input_width] features (a [input_width] vector is
        one token). Returns the padded, projected batch."""
        rows, sources = [], []
        for item in batch:
            pieces, ids = [], []
            for index, source in enumerate(SOURCES):
                features = item.get(source)
                if features is None or features.numel() == 0:
                    continue
                features = _limit_tokens(features.float().reshape(-1, features.shape[-1]), self.config.max_tokens)
                modality = torch.tensor(SOURCE_MODALITY[source])
                pieces.append(self.project[source](features) + self.modality_embedding(modality))
                ids.append(torch.full((features.shape[0],), index, dtype=torch.long))
            if not pieces:
                raise ValueError("an item with no evidence: at least one source must have features")
            rows.append(torch.cat(pieces))
            sources.append(torch.cat(ids))
        length = max(r.shape[0] for r in rows)
        tokens = torch.zeros(len(batch), length, self.config.width)
        token_source = torch.zeros(len(batch), length, dtype=torch.long)
        padding = torch.ones(len(batch), length, dtype=torch.bool)
        for i, (row, ids) in enumerate(zip(rows, sources)):
            tokens[i, : row.shape[0]], token_source[i, : row.shape[0]], padding[i, : row.shape[0]] = row, ids, False
        present = torch.stack([torch.bincount(ids, minlength=len(SOURCES)) > 0 for ids in sources])
        return FusionInputs(tokens, token_source, padding, present)

    def outstanding_weight(self, inputs: FusionInputs, outputs: FusionOutputs, outstanding: torch.Tensor) -> torch.Tensor:
        """The gate's predicted total weight of the `outstanding` sources ([B, S] bool). [B]"""
        return self.gate.outstanding_weight(outputs.gate_scores, inputs.present, outstanding)

    def _regression_input(self, fused: torch.Tensor, per_source: torch.Tensor) -> torch.Tensor:
        if self.config.regression_from == "fused":
            return fused
        return per_source[:, SOURCES.index(self.config.regression_from)]  # zeros when that source is absent

    # -- forward ---------------------------------------------------------------------
    def forward(self, inputs: FusionInputs) -> FusionOutputs:
        per_source, attentions = self.sources(inputs)
        gate_weights, gate_scores = self.gate(per_source, inputs.present)
        fused, logits = self.fuse(per_source, gate_weights)
        return FusionOutputs(
            logits=logits,
            probabilities=torch.softmax(logits / self.log_temperature.exp(), dim=-1),
            regression=self.regressor(self._regression_input(fused, per_source))[:, : len(self.config.regression)],
            gate_weights=gate_weights,
            gate_scores=gate_scores,
            attention=torch.stack(attentions).mean(dim=0),
            token_source=inputs.token_source,
            padding=inputs.padding,
        )

    def fuse(self, per_source: torch.Tensor, gate_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fused = sum_s g_s h_s, and the classifier's logits on it (before temperature)."""
        fused = (gate_weights.unsqueeze(-1) * per_source).sum(dim=1)
        return fused, self.classifier(fused)

    def sources(self, inputs: FusionInputs) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """h_s for every source ([B, S, d]; zeros where absent) and each layer's attention."""
        token_modality = _source_to_modality(inputs.token_source)
        x, attentions = inputs.tokens, []
        for layer in self.layers:
            x, attention = layer(x, token_modality, inputs.padding)
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

    def embed(self, batch: list[dict[str, torch.Tensor]]) -> list[FusionInputs]:
        return [member.embed(batch) for member in self.members]

    def forward(self, inputs: list[FusionInputs]) -> FusionOutputs:
        outputs = [member(member_inputs) for member, member_inputs in zip(self.members, inputs)]

        def mean(name: str) -> torch.Tensor:
            return torch.stack([getattr(o, name) for o in outputs]).mean(dim=0)

        return FusionOutputs(
            logits=mean("logits"), probabilities=mean("probabilities"), regression=mean("regression"),
            gate_weights=mean("gate_weights"), gate_scores=mean("gate_scores"), attention=mean("attention"),
            token_source=outputs[0].token_source, padding=outputs[0].padding, members=outputs,
        )

    def outstanding_weight(self, inputs: list[FusionInputs], outputs: FusionOutputs, outstanding: torch.Tensor) -> torch.Tensor:
        return torch.stack([member.outstanding_weight(i, o, outstanding)
                            for member, i, o in zip(self.members, inputs, outputs.members)]).mean(dim=0)


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
