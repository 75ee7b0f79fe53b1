"""Audio front end and frame encoders, VAD and transcript.

Frame features (default): log-mel frames computed as audio arrives.

    frames  X_t = (log(Mel(|STFT(x)|^2)_t + 1e-6) - mu) / sigma     [T, 80]
    pooled  p   = mean of X_t over the frames inside speech (VAD)    [80]

25 ms windows every 10 ms at 16 kHz (n_fft 400, hop 160, 80 mel bands), centre=False
so a frame depends only on samples that have arrived; mu and sigma are fixed
constants (-7, 4) so the normalisation can stream too. The router's learned
projection sits on top of these frames.

A transformers Wav2Vec2 directory (or hub id with allow_download) can replace the
front end; it needs the whole clip, so its features come when the audio is complete.

Voice activity: Silero VAD (ONNX, bundled in `silero-vad`). Transcript: PocketSphinx
en-us (bundled); a weak signal, reported with a confidence.
"""

from __future__ import annotations

import json
import logging
import math
import os
import select
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import numpy as np
import torch
import torchaudio

from modalmesh.common import errors, models
from modalmesh.common.batching import Engine, deadline_after
from modalmesh.common.config import DEFAULT_ASR_BEAM
from modalmesh.common.runtime import single_threaded_blas_environment

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
N_FFT, HOP, N_MELS = 400, 160, 80
LOG_MEL_MEAN, LOG_MEL_STD = -7.0, 4.0


class LogMelFrames:
    """Streaming log-mel frames: push 16 kHz samples, get every frame they complete."""

    width = N_MELS
    version = "log-mel-80@16k"

    def __init__(self) -> None:
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=N_FFT, win_length=N_FFT, hop_length=HOP, n_mels=N_MELS, center=False, power=2.0
        )

    def frames(self, samples: torch.Tensor) -> torch.Tensor:
        """Frames of a complete block of samples: [T, 80] (T = 0 for fewer than 400)."""
        if samples.numel() < N_FFT:
            return torch.zeros(0, N_MELS)
        with torch.inference_mode():
            power = self.mel(samples.float())  # [80, T]
            return ((torch.log(power + 1e-6) - LOG_MEL_MEAN) / LOG_MEL_STD).transpose(0, 1).contiguous()


class FrameStream:
    """Per-request streaming state: keeps the samples a next frame still needs."""

    def __init__(self, front_end: LogMelFrames) -> None:
        self.front_end = front_end
        self._tail = torch.zeros(0)

    def push(self, samples: torch.Tensor) -> torch.Tensor:
        buffer = torch.cat([self._tail, samples])
        count = (buffer.numel() - N_FFT) // HOP + 1 if buffer.numel() >= N_FFT else 0
        if count == 0:
            self._tail = buffer
            return torch.zeros(0, N_MELS)
        frames = self.front_end.frames(buffer[: (count - 1) * HOP + N_FFT])
        self._tail = buffer[count * HOP :]
        return frames


class Wav2Vec2Frames:
    """A transformers Wav2Vec2 model as the frame encoder (whole clips)."""

    def __init__(self, source: str, allow_download: bool) -> None:
        from transformers import Wav2Vec2Model

        is_local = Path(source).is_dir()
        models.ensure_loadable(source, is_local, allow_download)
        self.model = Wav2Vec2Model.from_pretrained(source, local_files_only=not allow_download, use_safetensors=True).eval()
        self.width = int(self.model.config.hidden_size)
        self.version = models.weights_version(source, Path(source).name) if is_local else source

    def frames(self, samples: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            normalised = (samples - samples.mean()) / (samples.std() + 1e-7)
            return self.model(normalised.float().unsqueeze(0)).last_hidden_state[0].contiguous()


# torchaudio's resampling kernel has (to / g) x (from / g) taps, g = gcd(from, to): a rate
# that shares no factor with the other costs gigabytes: a 2-s WAV at 44 101 Hz would take
# 50 s of the model thread, and one at 383 999 Hz over 22 GB.
MAX_PHASES, MAX_SPAN = 640, 4000  # every usual rate pair is within these (11 025 -> 16 000: 640 x 441)
RATE_STEP = 100  # Hz: an odd rate is read as the nearest multiple (at most 0.6% off from 8 kHz up)


def resample_rates(from_rate: int, to_rate: int) -> tuple[int, int]:
    """The rates handed to torchaudio: the true ones when their kernel is small, else with
    the odd one rounded to RATE_STEP (a 44 101 Hz clip is read as 44 100 Hz)."""

    def small(a: int, b: int) -> bool:
        g = math.gcd(a, b)
        return b // g <= MAX_PHASES and a // g <= MAX_SPAN

    def nice(rate: int) -> int:
        return max(RATE_STEP, round(rate / RATE_STEP) * RATE_STEP)

    for candidate in ((from_rate, to_rate), (from_rate, nice(to_rate)), (nice(from_rate), to_rate)):
        if small(*candidate):
            return candidate
    return nice(from_rate), nice(to_rate)


def resample(samples: np.ndarray, rate: int, to_rate: int = SAMPLE_RATE) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    if rate == to_rate:
        return tensor
    return torchaudio.functional.resample(tensor, *resample_rates(rate, to_rate))


@dataclass
class SpeechSegment:
    start_s: float
    end_s: float


class VoiceActivity:
    def __init__(self) -> None:
        from silero_vad import load_silero_vad

        self.model = load_silero_vad(onnx=True)

    def segments(self, samples: torch.Tensor) -> list[SpeechSegment]:
        from silero_vad import get_speech_timestamps

        found = get_speech_timestamps(samples.float(), self.model, sampling_rate=SAMPLE_RATE, return_seconds=True)
        return [SpeechSegment(float(s["start"]), float(s["end"])) for s in found]


class Transcriber:
    """A speech recogniser in a worker process of its own (audio/asr.py says why); one
    utterance at a time. `engine`: "whisper" (Whisper base, the default) or "pocketsphinx"
    (en-us; `lm`: an ARPA language model, audio/lm.py builds one for a domain). `language`:
    Whisper's ("en" by default; empty: detected per clip). `beam`: Whisper's beam width
    (1: the likeliest word at each step)."""

    START_TIMEOUT_S = 120.0

    def __init__(self, lm: str = "", engine: str = "whisper", language: str = "en", beam: int = DEFAULT_ASR_BEAM) -> None:
        self._lm = lm
        self.beam = beam
        self.engine = engine
        self.language = language if engine == "whisper" else "en-us"
        self._engine_turns = Engine("transcript")  # one utterance at a time
        self._worker = self._start()

    @property
    def version(self) -> str:
        """What made the transcripts (part of feature-cache keys and model versions)."""
        if self.engine == "whisper":
            from modalmesh.audio.whisper import version

            return version(self.beam)
        return "pocketsphinx-en-us" + ("+lm" if self._lm else "")

    @property
    def floor(self) -> float:
        """The confidence under which this engine's transcript is not what was said
        (whisper.MIN_CONFIDENCE); 0 for PocketSphinx, whose confidence is not calibrated
        to one."""
        if self.engine == "whisper":
            from modalmesh.audio.whisper import MIN_CONFIDENCE

            return MIN_CONFIDENCE
        return 0.0

    def unsure(self, text: str, confidence: float) -> str:
        """Why a transcript is not to be read as what was said (its confidence under
        `floor`); '' where it is, or where there is no text."""
        if not text.strip() or confidence >= self.floor:
            return ""
        return f"the recogniser's confidence {confidence:.2f} is under {self.floor:.2f} (speech in another language, or unclear)"

    def _start(self) -> subprocess.Popen:
        command = [
            sys.executable,
            "-m",
            "modalmesh.audio.asr",
            "--rate",
            str(SAMPLE_RATE),
            "--lm",
            self._lm,
            "--engine",
            self.engine,
            "--language",
            self.language,
            "--beam",
            str(self.beam),
        ]
        # numpy's OpenBLAS on one thread in the worker, whoever starts it (a service, or offline feature extraction).
        worker = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=single_threaded_blas_environment(os.environ))
        first = self._reply(worker, time.monotonic() + self.START_TIMEOUT_S)
        if first is None or "error" in first:
            worker.kill()
            worker.wait()
            raise ValueError(first["error"] if first else "the speech recogniser's process did not start")
        return worker

    def _replace_worker(self) -> None:
        """Stop the worker (a transcript nobody waits for any more, or a dead process) and
        start another (about 0.5 s), so the next caller does not wait for what is left."""
        self._worker.kill()
        self._worker.wait()
        self._worker = self._start()

    @staticmethod
    def _reply(worker: subprocess.Popen, deadline: float | None) -> dict | None:
        """The worker's next line; None if it has gone; TimeoutError past the deadline."""
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        assert worker.stdout is not None  # piped when the worker was started
        if not select.select([worker.stdout], [], [], wait)[0]:
            raise TimeoutError
        line = worker.stdout.readline()
        return json.loads(line) if line else None

    def transcribe(self, samples: np.ndarray, timeout: float | None = None, wanted: Callable[[], bool] | None = None) -> tuple[str, float]:
        """`timeout`: seconds the caller can still wait; DEADLINE_EXCEEDED after (the
        worker is then replaced rather than left decoding for nobody). `wanted`: whether
        the caller is still there; one who leaves while waiting for the worker is not
        transcribed for (CANCELLED)."""
        pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16).tobytes()
        if not pcm:
            return "", 0.0
        deadline = deadline_after(timeout)
        with self._engine_turns.turn(deadline, wanted):
            try:
                assert self._worker.stdin is not None  # piped when the worker was started
                self._worker.stdin.write(struct.pack("<I", len(pcm)) + pcm)
                self._worker.stdin.flush()
                reply = self._reply(self._worker, deadline)
            except TimeoutError:
                self._replace_worker()
                raise errors.deadline_exceeded("transcript: deadline passed") from None
            except (BrokenPipeError, ValueError):  # ValueError: its pipe already closed
                reply = None
            if reply is None:  # the worker died (a crash in PocketSphinx)
                self._replace_worker()
                raise errors.unavailable("transcript: the recogniser's process stopped; restarted")
        if "error" in reply:
            raise RuntimeError(f"transcript: {reply['error']}")
        return reply["text"], float(reply["confidence"])

    def close(self) -> None:
        if self._worker.poll() is None and self._worker.stdin is not None:
            self._worker.stdin.close()  # the worker exits at the end of its input
            try:
                self._worker.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._worker.kill()
