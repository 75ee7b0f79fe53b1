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

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio

from modalmesh.common import models

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


def resample(samples: np.ndarray, rate: int) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    if rate == SAMPLE_RATE:
        return tensor
    return torchaudio.functional.resample(tensor, rate, SAMPLE_RATE)


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
    """PocketSphinx en-us; one utterance at a time (the decoder is stateful). `lm`: an ARPA
    language model (audio/lm.py builds one for a domain); empty: the bundled general one."""

    language = "en-us"

    def __init__(self, lm: str = "") -> None:
        from pocketsphinx import Decoder

        options = {}
        if lm:
            path = Path(lm)
            if not path.is_file():
                raise ValueError(f"asr_lm {lm}: no such file (modalmesh data lm builds one)")
            options["lm"] = str(path)
        try:
            self._decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL", **options)
        except RuntimeError as exc:  # PocketSphinx says only "Failed to initialize"
            raise ValueError(f"asr_lm {lm}: PocketSphinx cannot load it as an ARPA language model ({exc})") from None
        # PocketSphinx adapts its cepstral mean across utterances; restoring the initial
        # mean before each one makes a transcript depend on its own audio only.
        self._initial_cmn = self._decoder.get_cmn()
        self._lock = threading.Lock()

    def transcribe(self, samples: np.ndarray) -> tuple[str, float]:
        pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16).tobytes()
        if not pcm:  # PocketSphinx fails on an empty buffer (and would stay mid-utterance)
            return "", 0.0
        with self._lock:
            self._decoder.set_cmn(self._initial_cmn)
            self._decoder.start_utt()
            try:
                self._decoder.process_raw(pcm, full_utt=True)
            finally:  # an utterance left open would fail every later call
                self._decoder.end_utt()
            hypothesis = self._decoder.hyp()
            # seg() is None for a clip too short to decode (under about 10 ms)
            words = [seg for seg in self._decoder.seg() or () if not seg.word.startswith(("<", "[", "+"))]
        if hypothesis is None or not hypothesis.hypstr:
            return "", 0.0
        # Mean word posterior of the recognised words (fillers and silences left out).
        posteriors = [min(1.0, max(0.0, float(seg.prob))) for seg in words] or [0.0]
        return hypothesis.hypstr, float(np.mean(posteriors))
