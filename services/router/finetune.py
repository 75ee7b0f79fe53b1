"""Fine-tuning the text encoder's top layers with a task (`modalmesh train --finetune-top K`).

The bottom layers stay frozen: their token states for every text the task reads (the
request's text, each OCR paragraph of a screenshot, a voice message's transcript) are
computed once, from the strings the feature cache kept. The top K layers train with the
fusion model and turn those states into exactly what the text service sends:

    text, audio_text   the tokens of the last layer           [n_tokens, d]
    image_text         per paragraph, mean-pooled, unit length [n_lines, d]

so untrained, they give the cached features again (tested). Training writes the whole text
model with its top layers replaced to `text-model/` beside the weights, and its version
to config.json (`text_model`). Serve that folder as the text model
(MODALMESH_TEXT_MODEL=<weights>/<task>/text-model); the router reports text features from
any other model as FAILED (FAILED_PRECONDITION) rather than fuse them.

BERT-family encoders only (the bundled MiniLM is one). One model, not an ensemble: every
member would need its own text model, and the router talks to one text service.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from modalmesh.common.layout import MAX_SCREEN_LINES

TEXT_SOURCES = ("text", "audio_text", "image_text")
LEARNING_RATE = 3e-5  # the encoder's layers move slowly; the fusion model keeps its own rate


class TextTop(nn.Module):
    def __init__(self, encoder, top_layers: int) -> None:
        super().__init__()
        from transformers import BertModel

        if not isinstance(encoder.model, BertModel):
            raise ValueError(f"--finetune-top needs a BERT-family text model, not {type(encoder.model).__name__}")
        depth = encoder.model.config.num_hidden_layers
        if not 1 <= top_layers <= depth:
            raise ValueError(f"--finetune-top must be between 1 and the text model's {depth} layers, not {top_layers}")
        self.encoder, self.depth, self.k = encoder, depth, top_layers
        self.layers = nn.ModuleList(copy.deepcopy(encoder.model.encoder.layer[i]) for i in range(depth - top_layers, depth))
        self.pieces: dict[int, list[tuple[str, torch.Tensor]]] = {}  # id(example) -> (source, frozen states [T, d])

    # -- the frozen part, once -----------------------------------------------------
    @torch.no_grad()
    def prepare(self, examples, texts: list[dict[str, list[str]]], batch: int = 64, label: str = "") -> None:
        """`texts[i]`: example i's strings per text source (what its cached features came from)."""
        from modalmesh.common.progress import progress

        flat = [(id(e), s, t) for e, by_source in zip(examples, texts) for s in TEXT_SOURCES if s in e.features for t in by_source.get(s, [])]
        starts = range(0, len(flat), batch)
        for start in progress(starts, len(starts), f"text below the top {self.k} layer(s) {label}".rstrip()):
            chunk = flat[start : start + batch]
            ids, mask, _ = self.encoder.tokenize([t for _, _, t in chunk])
            states = self.encoder.model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), output_hidden_states=True).hidden_states[
                self.depth - self.k
            ]
            for (key, source, _), row, length in zip(chunk, states, mask.sum(1).tolist()):
                self.pieces.setdefault(key, []).append((source, row[:length].clone()))
        for e, by_source in zip(examples, texts):
            for source in TEXT_SOURCES:
                if source in e.features and not by_source.get(source):
                    raise ValueError(f"an example has {source} features but no text they came from (clear the feature cache)")

    # -- the trained part ----------------------------------------------------------
    def forward(self, examples) -> list[dict[str, torch.Tensor]]:
        """The examples' features with their text sources made by the current top layers."""
        pieces = [(i, s, states) for i, e in enumerate(examples) for s, states in self.pieces.get(id(e), [])]
        out = [dict(e.features) for e in examples]
        if not pieces:
            return out
        lengths = torch.tensor([p[2].shape[0] for p in pieces])
        hidden = nn.utils.rnn.pad_sequence([p[2] for p in pieces], batch_first=True)
        mask = (torch.arange(hidden.shape[1])[None, :] < lengths[:, None]).float()
        additive = (1.0 - mask[:, None, None, :]) * torch.finfo(hidden.dtype).min
        for layer in self.layers:
            result = layer(hidden, attention_mask=additive)
            hidden = result[0] if isinstance(result, tuple) else result
        lines: dict[int, list[torch.Tensor]] = {}
        for (i, source, _), row, length in zip(pieces, hidden, lengths.tolist()):
            if source == "image_text":
                lines.setdefault(i, []).append(F.normalize(row[:length].mean(0), dim=-1))
            else:
                out[i][source] = row[:length]
        for i, vectors in lines.items():
            out[i]["image_text"] = torch.stack(vectors)
        return out

    @torch.no_grad()
    def read(self, examples) -> list:
        """Copies of the examples with the trained layers' features (for calibration and evaluation)."""
        import dataclasses

        self.eval()
        return [dataclasses.replace(e, features=f) for e, f in zip(examples, self(examples))]

    def save(self, folder: Path) -> str:
        """The whole text model with these top layers, as a model directory; returns its version."""
        from modalmesh.common import models

        folder = Path(folder)
        if folder.exists():
            shutil.rmtree(folder)
        model = copy.deepcopy(self.encoder.model)
        for offset, layer in enumerate(self.layers):
            model.encoder.layer[self.depth - self.k + offset].load_state_dict(layer.state_dict())
        model.save_pretrained(folder, safe_serialization=True)
        self.encoder.tokenizer.save_pretrained(folder)
        limit = Path(self.encoder.source) / "sentence_bert_config.json"
        (folder / "sentence_bert_config.json").write_text(limit.read_text() if limit.is_file() else json.dumps({"max_seq_length": self.encoder.max_tokens}))
        return models.weights_version(folder, folder.name)


def texts_of(record: dict, item) -> dict[str, list[str]]:
    """The strings an example's text features were made from (the record and the cache's evidence)."""
    return {
        "text": [record["text"]] if record.get("text", "").strip() else [],
        "audio_text": [item.evidence["transcript"]] if item.evidence.get("transcript", "").strip() else [],
        "image_text": list(item.evidence.get("screen_lines") or [])[:MAX_SCREEN_LINES],
    }
