"""The encoders in this process, for training, evaluation and benchmarks.

The same backends the services run (their own `encode` code, without gRPC), turned into
the router's per-source features. Training caches them on disk, keyed by the inputs'
bytes, so a second run (or `modalmesh eval` after `modalmesh train`) costs nothing.
Each item also records what every source cost to compute, which evaluation uses to
compare the latency of routed and full answers.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from modalmesh.common.client import collect
from modalmesh.common.config import DEFAULT_ENGINE, DEFAULT_OCR_ENGINE, ServiceConfig, load_config
from modalmesh.common.models import file_digest
from modalmesh.common.encoder import EncodeRequest
from modalmesh.router.compiled_fusion import FusionEngine
from modalmesh.router.fusion import SIDE_SOURCE
from modalmesh.router.sources import QUICK_OPTION, SIDE_OPTION, embed, side_text

FEATURE_VERSION = "1"
SCREEN_TEXT_VERSION = "paragraphs-10"  # how OCR reads (vision/ocr.py) and spans become text vectors (common/layout.py); part of OCR tasks' keys
QUICK_SCALE_VERSION = "full-scale-capped"  # the quick reading's detection scale (vision/ocr.py detection_size); part of quick keys
MEASUREMENT_VERSION = "lesions-hu-6"  # the vision service's image tags (CT measurement, lung fields, colour); part of measuring tasks' keys


@dataclass
class ItemFeatures:
    features: dict[str, torch.Tensor]
    costs_ms: dict[str, float]  # per source: time to compute it on its own
    evidence: dict = field(default_factory=dict)  # screen lines, transcript, image tags


def configured_models(environ=None) -> dict[str, str]:
    """The encoder models set by MODALMESH_<SERVICE>_MODEL (as for the services), by service;
    empty when every encoder runs its bundled default. Part of the feature cache's keys."""
    environ = os.environ if environ is None else environ
    return {s: environ[f"MODALMESH_{s.upper()}_MODEL"] for s in ("text", "vision", "audio") if environ.get(f"MODALMESH_{s.upper()}_MODEL")}


def _service_setting(service: str, name: str, environ=None) -> str:
    """A service setting as the service reads it from the environment
    (MODALMESH_<SERVICE>_<NAME>, else MODALMESH_<NAME>); '' when unset."""
    environ = os.environ if environ is None else environ
    return environ.get(f"MODALMESH_{service.upper()}_{name.upper()}") or environ.get(f"MODALMESH_{name.upper()}") or ""


def configured_asr_lm(environ=None) -> str:
    """The audio service's transcript language model; '' for PocketSphinx's general one."""
    return _service_setting("audio", "asr_lm", environ)


def configured_asr_engine(environ=None) -> str:
    """The audio service's transcript engine (its default, Whisper, unless set)."""
    return _service_setting("audio", "asr_engine", environ) or "whisper"


def configured_asr_beam(environ=None) -> int:
    """Whisper's beam width in the audio service (`asr_beam`; its default unless set)."""
    return int(_service_setting("audio", "asr_beam", environ) or ServiceConfig.asr_beam)


def configured_fusion_precision(environ=None) -> str:
    """The router's `fusion_precision` (its default, auto, unless set): offline decisions
    (eval, training's reports) are made at the precision the router would run."""
    return _service_setting("router", "fusion_precision", environ) or ServiceConfig.fusion_precision


def configured_fusion_engine(environ=None) -> FusionEngine:
    """What runs the fusion model's decisions in the router (its `engine`, OpenVINO unless
    set): offline decisions are made as the router makes them (the same numbers), one at a
    time (the router runs two at once)."""
    return FusionEngine(_service_setting("router", "engine", environ) or DEFAULT_ENGINE, calls=1)


def configured_ocr_engine(environ=None) -> str:
    """What runs the vision service's OCR models (its default unless set)."""
    return _service_setting("vision", "ocr_engine", environ) or DEFAULT_OCR_ENGINE


def configured_ocr_det_side(environ=None) -> int:
    """The vision service's OCR detection size (`ocr_det_side`; 0, the engine's rule, unless set)."""
    return int(_service_setting("vision", "ocr_det_side", environ) or 0)


def configured_ocr_quick_det_side(environ=None) -> int:
    """The detection size of the vision service's quick OCR reading (`ocr_quick_det_side`)."""
    return int(_service_setting("vision", "ocr_quick_det_side", environ) or ServiceConfig.ocr_quick_det_side)


def configured_ocr_quick_alphabet(environ=None) -> str:
    """What the vision service's quick OCR reading recognises (`ocr_quick_alphabet`)."""
    return _service_setting("vision", "ocr_quick_alphabet", environ) or ServiceConfig.ocr_quick_alphabet


def text_model_version() -> str:
    """The version of the text model features are extracted with (the configured one, else
    the bundled default): trained weights record it; '' for a hub id."""
    from modalmesh.text.model import default_model_dir, model_version

    source = configured_models().get("text") or default_model_dir()
    return model_version(source) if Path(source).is_dir() else ""


class LocalEncoders:
    def __init__(self, ocr: bool = True, transcript: bool = True, quick: bool = False) -> None:
        """`quick`: read screen text as the quick reading does (`ocr_quick`, at the configured
        `ocr_quick_det_side` and `ocr_quick_alphabet`; FeatureCache.for_task's `quick`)."""
        from modalmesh.audio.server import AudioService
        from modalmesh.text.server import TextService
        from modalmesh.vision.server import VisionService

        # Only the model choice (and the transcripts' language model and beam width, the OCR engine and its detection size) comes from the environment
        # (ports, threads and limits do not change features): training extracts with the models
        # the services will run.
        models = configured_models()
        self.text = TextService(load_config("text", environ={}, model=models.get("text")))
        self.vision = VisionService(
            load_config(
                "vision",
                environ={},
                ocr=ocr,
                model=models.get("vision"),
                ocr_engine=configured_ocr_engine(),
                ocr_det_side=configured_ocr_det_side(),
                ocr_quick_det_side=configured_ocr_quick_det_side(),
                ocr_quick_alphabet=configured_ocr_quick_alphabet(),
            )
        )
        self.screen_option = QUICK_OPTION["image"] if quick else SIDE_OPTION["image"]
        self.audio = AudioService(
            load_config(
                "audio",
                environ={},
                transcript=transcript,
                model=models.get("audio"),
                asr_lm=configured_asr_lm() or None,
                asr_engine=configured_asr_engine(),
                asr_beam=configured_asr_beam(),
            )
        )
        for service in (self.text, self.vision, self.audio):
            service.initialize()

    def close(self) -> None:
        for service in (self.text, self.vision, self.audio):
            service.finalize()

    @staticmethod
    def _request(data: bytes, media_type: str, options=(), parameters=None, pooled_only=False) -> EncodeRequest:
        return EncodeRequest("local", media_type, frozenset(options), "FP32", pooled_only, dict(parameters or {}), data)

    @classmethod
    def _encode(cls, service, data: bytes, media_type: str, options=(), parameters=None, pooled_only=False):
        return collect(iter(list(service.encode(cls._request(data, media_type, options, parameters, pooled_only)))))

    def _text_tokens(self, text: str) -> torch.Tensor:
        return torch.from_numpy(np.array(self._encode(self.text, text.encode(), "text/plain").sequence, dtype=np.float32))

    def _text_vectors(self, lines: list[str]) -> torch.Tensor:
        """One pooled vector per line, all in one batch of the text model, as the router
        asks for them (pipeline.Run.embed_texts: one EncodeBatch call)."""
        requests = [self._request(line.encode(), "text/plain", pooled_only=True) for line in lines]
        return torch.from_numpy(np.stack([collect(iter(chunks)).pooled for chunks in self.text.encode_batch(requests)]))

    def extract(
        self,
        text: str = "",
        image: bytes = b"",
        image_type: str = "",
        audio: bytes = b"",
        audio_type: str = "",
        image_parameters: dict | None = None,
        side: tuple[str, ...] = ("image", "audio"),
        measure: bool = False,
    ) -> ItemFeatures:
        """Features, costs and evidence for one item. `side`: the modalities whose side
        output (OCR, transcript) is read; `measure`: ask for the CT lung-lesion measurement."""
        features: dict[str, torch.Tensor] = {}
        costs: dict[str, float] = {}
        evidence: dict = {}
        if text.strip():
            started = time.perf_counter()
            features["text"] = self._text_tokens(text)
            costs["text"] = (time.perf_counter() - started) * 1000
        for modality, data, media_type in (("image", image, image_type), ("audio", audio, audio_type)):
            if not data:
                continue
            side_option = (self.screen_option if modality == "image" else SIDE_OPTION[modality]) if modality in side else None
            options = ([side_option] if side_option else []) + (["lesions"] if measure and modality == "image" else [])
            encoder = self.vision if modality == "image" else self.audio
            started = time.perf_counter()
            result = self._encode(encoder, data, media_type, options, image_parameters if modality == "image" else None)
            elapsed = (time.perf_counter() - started) * 1000
            side_ms = result.pooled_message.timings_ms.get(side_option, 0.0) if side_option else 0.0
            features[modality] = torch.from_numpy(np.array(result.sequence, dtype=np.float32))
            costs[modality] = elapsed - side_ms
            evidence[f"{modality}_tags"] = dict(result.side.tags)  # image_tags, audio_tags
            if modality == "image":
                evidence["screen_lines"] = []
            if side_option is None:
                continue
            started = time.perf_counter()
            reading = side_text(modality, result.side) if result.side is not None else None
            if reading is not None:
                evidence.update(reading.evidence)
                if reading.texts:
                    features[reading.source] = embed(reading, self._text_vectors, self._text_tokens)
            costs[SIDE_SOURCE[modality]] = side_ms + (time.perf_counter() - started) * 1000
        return ItemFeatures(features, costs, evidence)


def media_type_of(path: str) -> str:
    from modalmesh.common.media import media_type_of_file

    return media_type_of_file(path) or "application/octet-stream"


class FeatureCache:
    """Features per manifest record, on disk as safetensors + a JSON sidecar."""

    def __init__(
        self,
        folder: str | Path,
        encoders_factory,
        side: tuple[str, ...],
        versions: tuple[str, ...] = (),
        measure: bool = False,
        ocr_det_side: int | None = None,
        ocr_alphabet: str = "all",
    ) -> None:
        """`ocr_det_side`: the OCR detection size the features are read at (None: the
        configured one); `ocr_alphabet`: what OCR recognises ("latin": the quick reading's
        Latin alphabet first); both part of the key."""
        self.ocr_det_side, self.ocr_alphabet = ocr_det_side, ocr_alphabet
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._factory = encoders_factory
        self._encoders: LocalEncoders | None = None
        self.side = side
        self.measure = measure  # ask the vision service for the CT measurement
        self.versions = versions  # of the encoder outputs the task reads beyond features; part of every key

    @classmethod
    def for_task(cls, spec, manifest: str | Path, folder: str | Path = "", quick: bool = False) -> "FeatureCache":
        """The cache a task's training and evaluation share (`.features` beside the manifest):
        OCR only for tasks that read screens; keys carry the versions of what the task reads
        (OCR paragraphs, the CT measurement), so a change there is recomputed, not reused.
        `quick`: screen text read as the quick reading is (`ocr_quick_det_side`), the rest alike."""
        det_side = configured_ocr_quick_det_side() if quick else None
        alphabet = configured_ocr_quick_alphabet() if quick and configured_ocr_engine() == "openvino" else "all"
        versions = ((SCREEN_TEXT_VERSION,) if "image" in spec.side_outputs else ()) + ((MEASUREMENT_VERSION,) if spec.measure is not None else ())
        return cls(
            folder or Path(manifest).parent / ".features",
            lambda: LocalEncoders(ocr="image" in spec.side_outputs, quick=quick),
            side=spec.side_outputs,
            versions=versions,
            measure=spec.measure is not None,
            ocr_det_side=det_side,
            ocr_alphabet=alphabet,
        )

    def key(self, record: dict) -> str:
        digest = hashlib.sha256(FEATURE_VERSION.encode())
        parts = [record.get("text", ""), record.get("image_parameters", {}), self.side, *self.versions]
        models = configured_models()
        if models:  # another encoder model gives other features (the defaults keep their old keys)
            parts.append({"models": models})
        lm = configured_asr_lm()
        if lm and "audio" in self.side:  # other transcripts: keyed by the model's bytes, not its path
            parts.append({"asr_lm": file_digest(lm)})
        asr = configured_asr_engine()
        if asr != "pocketsphinx" and "audio" in self.side:  # PocketSphinx, the first engine, keeps the keys it had
            from modalmesh.audio.whisper import MIN_CONFIDENCE, version as whisper_version

            parts.append({"asr_engine": whisper_version(configured_asr_beam())})
            parts.append({"transcript_floor": MIN_CONFIDENCE})  # a transcript under it is not read (sources.side_text)
        engine = configured_ocr_engine()
        if engine != "onnxruntime" and "image" in self.side:
            # OCR boxes differ by a few pixels between engines, and so, sometimes, paragraphs
            # (onnxruntime, the first engine, keeps the keys it always had).
            parts.append({"ocr_engine": engine})
        det_side = configured_ocr_det_side() if self.ocr_det_side is None else self.ocr_det_side
        if det_side and "image" in self.side:  # other boxes, so other paragraphs (the engine's rule keeps the keys it had)
            parts.append({"ocr_det_side": det_side})
        if self.ocr_alphabet != "all" and "image" in self.side:  # other text where a line is not Latin, other confidences
            parts.append({"ocr_alphabet": self.ocr_alphabet})
        if self.ocr_det_side is not None and "image" in self.side:  # the quick reading (for_task's `quick`)
            parts.append({"quick_scale": QUICK_SCALE_VERSION})
        digest.update(json.dumps(parts, sort_keys=True).encode())
        for name in ("image", "audio"):
            if record.get(name):
                digest.update(Path(record[name]).read_bytes())
        return digest.hexdigest()[:24]

    def get(self, record: dict) -> ItemFeatures:
        from safetensors.torch import load_file, save_file

        key = self.key(record)
        tensors, sidecar = self.folder / f"{key}.safetensors", self.folder / f"{key}.json"
        if tensors.is_file() and sidecar.is_file():
            meta = json.loads(sidecar.read_text())
            return ItemFeatures(load_file(str(tensors)), meta["costs_ms"], meta["evidence"])
        if self._encoders is None:
            self._encoders = self._factory()
        image, audio = record.get("image"), record.get("audio")
        item = self._encoders.extract(
            text=record.get("text", ""),
            image=Path(image).read_bytes() if image else b"",
            image_type=media_type_of(image) if image else "",
            audio=Path(audio).read_bytes() if audio else b"",
            audio_type=media_type_of(audio) if audio else "",
            image_parameters=record.get("image_parameters"),
            side=self.side,
            measure=self.measure,
        )
        # Written under temporary names and renamed: a reader (or a second training run) never sees half a file.
        partial = tensors.with_suffix(f".{os.getpid()}.partial")
        save_file({k: v.contiguous() for k, v in item.features.items()}, str(partial))
        os.replace(partial, tensors)
        partial = sidecar.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(json.dumps({"costs_ms": item.costs_ms, "evidence": item.evidence}))
        os.replace(partial, sidecar)
        return item

    def close(self) -> None:
        if self._encoders is not None:
            self._encoders.close()
