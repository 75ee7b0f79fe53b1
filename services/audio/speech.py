"""Speech synthesis with eSpeak NG (the library and data bundled by `espeakng-loader`).

`Speech.Synthesize` streams audio chunks. PCM16 streams sentence by sentence, so the
first chunk leaves after the first sentence is synthesized (milliseconds). WAV is
synthesized whole first (a WAV header states the total size), then streamed in
chunks; eSpeak is fast enough (3-13 ms per sentence) that this costs little.

The eSpeak library keeps global state (voice, rate, one callback), so one synthesis
runs at a time, under a lock.
"""

from __future__ import annotations

import ctypes
import io
import re
import struct
import threading
from typing import Callable, Iterator

import numpy as np

from modalmesh.common import errors, telemetry
from modalmesh.v1 import speech_pb2, speech_pb2_grpc

AUDIO_OUTPUT_SYNCHRONOUS = 2
ESPEAK_RATE = 1
POS_CHARACTER = 1
ESPEAK_CHARS_UTF8 = 1
MIN_WPM, MAX_WPM = 80, 450
MIN_OUT_RATE, MAX_OUT_RATE = 8_000, 48_000
CHUNK_BYTES = 16 * 1024

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")


def wav_header(sample_rate: int, sample_count: int) -> bytes:
    """A 44-byte RIFF/WAVE header for 16-bit mono PCM."""
    data_bytes = sample_count * 2
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    pcm = np.asarray(samples, dtype="<i2")
    return wav_header(sample_rate, pcm.size) + pcm.tobytes()


_engine: "Espeak | None" = None
_engine_lock = threading.Lock()


def espeak() -> "Espeak":
    """The process's eSpeak engine. The C library is one global state with one callback
    pointer, so there is exactly one engine per process, never freed."""
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = Espeak()
        return _engine


class Espeak:
    """Use `espeak()`: a second instance would replace the library's callback."""

    def __init__(self) -> None:
        import espeakng_loader

        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self._lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.sample_rate = self._lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if self.sample_rate <= 0:
            raise RuntimeError("eSpeak NG failed to initialise")
        self._collected: list[np.ndarray] = []
        self._callback = _SynthCallback(self._on_samples)  # kept referenced: C holds the pointer
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()

    def _on_samples(self, wav, count, _events) -> int:
        if count > 0 and wav:
            self._collected.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0

    def has_voice(self, voice: str) -> bool:
        with self._lock:
            return self._lib.espeak_SetVoiceByName(voice.encode()) == 0

    def synthesize(self, text: str, voice: str, rate_wpm: int) -> np.ndarray:
        """int16 samples at self.sample_rate."""
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise errors.invalid_argument("voice", f"unknown voice {voice!r} (try en-us, en, de, fr, es)")
            self._lib.espeak_SetParameter(ESPEAK_RATE, rate_wpm, 0)
            self._collected = []
            encoded = text.encode("utf-8")
            status = self._lib.espeak_Synth(encoded, len(encoded) + 1, 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None)
            self._lib.espeak_Synchronize()
            if status != 0:
                raise RuntimeError(f"espeak_Synth failed with status {status}")
            collected, self._collected = self._collected, []
        return np.concatenate(collected) if collected else np.zeros(0, dtype=np.int16)


class SpeechServicer(speech_pb2_grpc.SpeechServicer):
    def __init__(self, engine: Callable[[], Espeak], max_chars: int, resample_fn) -> None:
        self._engine = engine  # loaded in the service's initialize(), after registration
        self.max_chars = max_chars
        self._resample = resample_fn  # runs on the service's model thread

    @property
    def engine(self) -> Espeak:
        return self._engine()

    def Synthesize(self, request: speech_pb2.SynthesizeRequest, context) -> Iterator[speech_pb2.AudioChunk]:
        text, voice, rate_wpm, audio_format, out_rate = self._validate(request)
        sentences = [s for s in _SENTENCE_END.split(text.strip()) if s.strip()]
        sequence = 0

        def chunk(data: bytes, last: bool) -> speech_pb2.AudioChunk:
            nonlocal sequence
            message = speech_pb2.AudioChunk(data=data, sample_rate_hz=out_rate, format=audio_format, sequence=sequence, last=last)
            sequence += 1
            return message

        if audio_format == speech_pb2.AUDIO_FORMAT_PCM16:
            for index, sentence in enumerate(sentences):
                samples = self._render(sentence, voice, rate_wpm, out_rate)
                yield chunk(samples.astype("<i2").tobytes(), last=index == len(sentences) - 1)
            return
        samples = np.concatenate([self._render(s, voice, rate_wpm, out_rate) for s in sentences])
        data = wav_bytes(samples, out_rate)
        for start in range(0, len(data), CHUNK_BYTES):
            yield chunk(data[start : start + CHUNK_BYTES], last=start + CHUNK_BYTES >= len(data))

    def _render(self, sentence: str, voice: str, rate_wpm: int, out_rate: int) -> np.ndarray:
        with telemetry.tracer().start_as_current_span("speech.synthesize", attributes={"characters": len(sentence)}):
            samples = self.engine.synthesize(sentence, voice, rate_wpm)
        if out_rate != self.engine.sample_rate and samples.size:
            samples = self._resample(samples, self.engine.sample_rate, out_rate)
        return samples

    def _validate(self, request: speech_pb2.SynthesizeRequest):
        text = request.text
        if not text.strip():
            raise errors.invalid_argument("text", "the text is empty")
        if len(text) > self.max_chars:
            raise errors.invalid_argument("text", f"{len(text)} characters is over the limit of {self.max_chars}")
        voice = request.voice or "en-us"
        if not re.fullmatch(r"[A-Za-z0-9_+\-]{1,40}", voice) or not self.engine.has_voice(voice):
            raise errors.invalid_argument("voice", f"unknown voice {voice!r} (try en-us, en, de, fr, es)")
        rate_wpm = request.rate_wpm or 175
        if not MIN_WPM <= rate_wpm <= MAX_WPM:
            raise errors.invalid_argument("rate_wpm", f"{rate_wpm} is outside {MIN_WPM}..{MAX_WPM}")
        audio_format = request.format or speech_pb2.AUDIO_FORMAT_WAV
        if audio_format not in (speech_pb2.AUDIO_FORMAT_WAV, speech_pb2.AUDIO_FORMAT_PCM16):
            raise errors.invalid_argument("format", f"unknown format {audio_format}")
        out_rate = request.sample_rate_hz or self.engine.sample_rate
        if not MIN_OUT_RATE <= out_rate <= MAX_OUT_RATE:
            raise errors.invalid_argument("sample_rate_hz", f"{out_rate} is outside {MIN_OUT_RATE}..{MAX_OUT_RATE}")
        return text, voice, rate_wpm, audio_format, out_rate


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Decode WAV bytes to (float32 mono samples, rate): for clients and tests."""
    import soundfile

    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples.mean(axis=1), int(rate)
