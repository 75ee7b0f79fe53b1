"""The audio encoder service and speech synthesis: `modalmesh serve audio`.

Encoder: WAV, FLAC, OGG or raw PCM in; frame features out. For WAV and raw PCM the
frames stream back window by window while the audio is still arriving; then come the
side outputs (duration, speech segments from VAD, the transcript when asked for) and
the pooled vector (mean over speech frames).

Speech: `Speech.Synthesize` on the same port (see modalmesh.audio.speech).

All torch work (resampling, mel, the frame encoder, VAD) runs on the service's one
model thread (the batcher's), so it never starts a second OpenMP team.
"""

from __future__ import annotations

import functools
import threading
import time
from concurrent import futures
from typing import Callable, Iterator, TypeVar, cast

import numpy as np
import torch
from opentelemetry import context as otel_context

from modalmesh.common import codec, errors, telemetry
from modalmesh.common.batching import DynamicBatcher
from modalmesh.common.config import ServiceConfig
from modalmesh.common.encoder import EncodeRequest, EncoderBackend, sequence_chunks
from modalmesh.audio import decode
from modalmesh.audio.features import (
    SAMPLE_RATE,
    FrameStream,
    LogMelFrames,
    Transcriber,
    VoiceActivity,
    Wav2Vec2Frames,
    resample,
)
from modalmesh.audio.speech import Espeak, SpeechServicer, espeak
from modalmesh.v1 import encoder_pb2, speech_pb2, speech_pb2_grpc

SPEECH_SERVICE = speech_pb2.DESCRIPTOR.services_by_name["Speech"].full_name
STREAMABLE = ("audio/wav", "audio/x-wav", "audio/wave", "audio/pcm")
STREAM_BLOCK_SECONDS = 0.25  # features go back for every quarter second that arrives
T = TypeVar("T")


class AudioService(EncoderBackend):
    name = "audio"
    modality = "audio"
    feature_kind = encoder_pb2.FEATURE_KIND_FRAMES
    media_types = decode.AUDIO_MEDIA_TYPES
    options = ("transcript",)
    default_datatype = "FP16"

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.max_input_bytes = config.max_input_bytes
        self.max_seconds = config.max_audio_seconds
        self.frame_encoder: LogMelFrames | Wav2Vec2Frames | None = None
        self.vad: VoiceActivity | None = None
        self.transcriber: Transcriber | None = None
        self.speech: Espeak | None = None
        self.executor: DynamicBatcher[Callable[[], object], object] | None = None

    # -- lifecycle -------------------------------------------------------------------
    def initialize(self) -> None:
        # The executor is the model thread: callables in, their results out.
        self.executor = DynamicBatcher(
            lambda work: [item() for item in work],
            max_batch_size=self.config.max_batch_size,
            max_delay_ms=self.config.max_batch_delay_ms,
            max_queue=self.config.max_queue,
            name="audio",
        )
        self.executor.submit(self._load_models)
        self.transcriber = (
            Transcriber(self.config.asr_lm, self.config.asr_engine, self.config.asr_language, self.config.asr_beam) if self.config.transcript else None
        )
        self.speech = espeak()

    def _load_models(self) -> None:
        if self.config.model:
            self.frame_encoder = Wav2Vec2Frames(self.config.model, self.config.allow_download)
            if self.config.quantize:
                self.frame_encoder.model = torch.ao.quantization.quantize_dynamic(self.frame_encoder.model, {torch.nn.Linear}, dtype=torch.qint8)
                self.frame_encoder.version += "+int8"
        else:
            self.frame_encoder = LogMelFrames()
        self.vad = VoiceActivity() if self.config.vad else None
        warm = torch.zeros(SAMPLE_RATE)
        self.frame_encoder.frames(warm)
        if self.vad is not None:
            self.vad.segments(warm)
        resample(np.zeros(4410, dtype=np.float32), 44_100)

    def finalize(self) -> None:
        if self.executor is not None:
            self.executor.close()
        if self.transcriber is not None:
            self.transcriber.close()

    def register(self, server) -> list[str]:
        names = super().register(server)
        speech_pb2_grpc.add_SpeechServicer_to_server(SpeechServicer(self._speech, self.config.max_speech_chars, self.resample_int16), server)
        return [*names, SPEECH_SERVICE]

    def _speech(self) -> Espeak:
        assert self.speech is not None, "audio service used before initialize()"
        return self.speech

    @property
    def front_end(self) -> LogMelFrames | Wav2Vec2Frames:
        """The frame encoder, loaded on the model thread in initialize()."""
        assert self.frame_encoder is not None, "audio service used before initialize()"
        return self.frame_encoder

    def info(self) -> encoder_pb2.EncoderInfo:
        return self.base_info(
            feature_width=self.front_end.width,
            model_id=self.config.model or "log-mel front end (torchaudio)",
            model_version=self.front_end.version,
            options=["transcript"] if self.transcriber is not None else [],
            limits=encoder_pb2.InputLimits(max_input_bytes=self.max_input_bytes, max_duration_s=self.max_seconds),
        )

    def on_model_thread(self, work: Callable[[], T], timeout: float | None = None) -> T:
        assert self.executor is not None, "audio service used before initialize()"
        return cast(T, self.executor.submit(work, timeout=timeout).value)

    def resample_int16(self, samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
        """For speech synthesis: int16 at one rate to int16 at another, on the model thread."""

        def work():
            return resample(samples.astype(np.float32) / 32768.0, from_rate, to_rate).numpy()

        resampled = self.on_model_thread(work)
        return np.clip(np.round(resampled * 32767.0), -32768, 32767).astype(np.int16)

    # -- one request -----------------------------------------------------------------
    def encode(self, request: EncodeRequest) -> Iterator[encoder_pb2.FeatureChunk]:
        return self.encode_stream(request, iter([request.payload]))

    def encode_stream(self, request: EncodeRequest, payloads: Iterator[bytes]) -> Iterator[encoder_pb2.FeatureChunk]:
        if "transcript" in request.options and self.transcriber is None:
            raise errors.invalid_argument("header.options", "transcripts are turned off on this service (--transcript)")
        started = time.perf_counter()
        timeout = request.time_remaining()
        streaming = request.media_type in STREAMABLE and isinstance(self.frame_encoder, LogMelFrames)
        clip: list[torch.Tensor] = []  # 16 kHz samples so far
        frame_rows = 0
        first_features_ms = None

        def emit(frames: torch.Tensor) -> Iterator[encoder_pb2.FeatureChunk]:
            nonlocal frame_rows, first_features_ms
            if frames.shape[0] and not request.pooled_only:
                for chunk in sequence_chunks(frames, self.feature_kind, request.output_datatype):
                    chunk.sequence.offset += frame_rows
                    yield chunk
                if first_features_ms is None:
                    first_features_ms = (time.perf_counter() - started) * 1000.0
            frame_rows += int(frames.shape[0])

        all_frames: list[torch.Tensor] = []
        if streaming:
            decoder = decode.StreamDecoder(request.media_type, request.parameters)
            assert isinstance(self.frame_encoder, LogMelFrames)  # `streaming` says so
            frame_stream = FrameStream(self.frame_encoder)
            pending: list[np.ndarray] = []
            pending_samples = 0
            rate = 0
            received_bytes = 0
            for data in payloads:
                received_bytes += len(data)
                block = decoder.feed(data)
                if block.size == 0:
                    continue
                assert decoder.layout is not None  # samples came: the layout is known
                rate = decoder.layout.sample_rate
                pending.append(block)
                pending_samples += block.size
                self._check_duration(sum(c.numel() for c in clip) / SAMPLE_RATE + pending_samples / rate)
                if pending_samples >= STREAM_BLOCK_SECONDS * rate:
                    samples16k, frames = self.on_model_thread(functools.partial(self._resample_and_frame, np.concatenate(pending), rate, frame_stream), timeout)
                    pending, pending_samples = [], 0
                    clip.append(samples16k)
                    all_frames.append(frames)
                    yield from emit(frames)
            if received_bytes == 0:
                raise errors.invalid_argument("payload", "the audio is empty (0 bytes)")
            decoder.finish()
            if pending:
                samples16k, frames = self.on_model_thread(lambda: self._resample_and_frame(np.concatenate(pending), rate, frame_stream), timeout)
                clip.append(samples16k)
                all_frames.append(frames)
                yield from emit(frames)
            original_rate, channels = (decoder.layout.sample_rate, decoder.layout.channels) if decoder.layout else (0, 0)
        else:
            samples, original_rate, channels = decode.decode_file(b"".join(payloads), request.media_type, self.max_seconds)
            samples16k, frames = self.on_model_thread(lambda: self._whole_clip(samples, original_rate), timeout)
            clip.append(samples16k)
            all_frames.append(frames)
            yield from emit(frames)

        audio = torch.cat(clip) if clip else torch.zeros(0)
        if audio.numel() == 0:
            raise errors.invalid_argument("payload", "the audio has no samples")
        frames = torch.cat(all_frames) if all_frames else torch.zeros(0, self.front_end.width)
        # The transcript (in the recogniser's process) starts now and runs beside the speech
        # segments' detection, which it does not need.
        transcript = self._start_transcript(audio, request) if "transcript" in request.options and self.transcriber is not None else None
        vad = self.vad
        segments = self.on_model_thread(lambda: vad.segments(audio), timeout) if vad is not None else []
        pooled = _pool_over_speech(frames, segments, audio.numel() / SAMPLE_RATE)

        tags = {"duration_s": f"{audio.numel() / SAMPLE_RATE:.3f}", "sample_rate_hz": str(original_rate), "channels": str(channels)}
        if vad is not None:  # where speech was found; with speech detection off nothing is said about it
            tags["speech_segments"] = ";".join(f"{s.start_s:.2f}-{s.end_s:.2f}" for s in segments)
            tags["speech_seconds"] = f"{sum(s.end_s - s.start_s for s in segments):.2f}"
        side = encoder_pb2.SideOutputs(tags=tags)
        timings = {"decode_and_frames": (time.perf_counter() - started) * 1000.0}
        if first_features_ms is not None:
            timings["first_features"] = first_features_ms
        if transcript is not None and self.transcriber is not None:  # asked for (refused above where transcripts are off)
            text, confidence, transcript_ms = transcript.result()
            side.transcript.CopyFrom(encoder_pb2.Transcript(text=text, confidence=confidence, language=self.transcriber.language))
            unsure = self.transcriber.unsure(text, confidence)
            if unsure:  # the text stays for callers who want it; the router does not read it
                side.tags["transcript_unsure"] = unsure
            timings["transcript"] = transcript_ms
        yield encoder_pb2.FeatureChunk(side=side)
        yield encoder_pb2.FeatureChunk(
            pooled=encoder_pb2.PooledFeatures(
                vector=codec.encode(pooled, request.output_datatype),
                sequence_length=frame_rows,
                timings_ms=timings,
                model_version=self.front_end.version,
            )
        )

    def _start_transcript(self, audio: torch.Tensor, request: EncodeRequest) -> futures.Future[tuple[str, float, float]]:
        """The clip's transcript on a thread of its own (it waits on the recogniser's
        process): a future of (text, confidence, milliseconds); its errors (DEADLINE_EXCEEDED,
        UNAVAILABLE, CANCELLED) are raised where the result is asked for."""
        transcriber = self.transcriber
        assert transcriber is not None  # the caller checks
        samples = audio.numpy()
        done: futures.Future[tuple[str, float, float]] = futures.Future()

        def run() -> None:
            started = time.perf_counter()
            try:
                with telemetry.tracer().start_as_current_span("audio.transcript"):
                    text, confidence = transcriber.transcribe(samples, timeout=request.time_remaining(), wanted=request.wanted)
            except BaseException as exc:  # noqa: BLE001 - handed to the request's own thread
                done.set_exception(exc)
            else:
                done.set_result((text, confidence, (time.perf_counter() - started) * 1000.0))

        threading.Thread(target=telemetry.in_context(otel_context.get_current(), run), name="audio-transcript", daemon=True).start()
        return done

    def _check_duration(self, seconds: float) -> None:
        if seconds > self.max_seconds:
            raise decode.too_long(self.max_seconds)

    def _resample_and_frame(self, samples: np.ndarray, rate: int, frame_stream: FrameStream) -> tuple[torch.Tensor, torch.Tensor]:
        samples16k = resample(samples, rate)
        return samples16k, frame_stream.push(samples16k)

    def _whole_clip(self, samples: np.ndarray, rate: int) -> tuple[torch.Tensor, torch.Tensor]:
        samples16k = resample(samples, rate)
        return samples16k, self.front_end.frames(samples16k)


def _pool_over_speech(frames: torch.Tensor, segments, duration_s: float) -> torch.Tensor:
    """Mean of the frames inside speech; of all frames when VAD found none."""
    if frames.shape[0] == 0:
        return torch.zeros(frames.shape[1])
    if segments:
        seconds_per_frame = duration_s / frames.shape[0]
        times = (torch.arange(frames.shape[0]) + 0.5) * seconds_per_frame
        inside = torch.zeros(frames.shape[0], dtype=torch.bool)
        for segment in segments:
            inside |= (times >= segment.start_s) & (times <= segment.end_s)
        if inside.any():
            return frames[inside].mean(dim=0)
    return frames.mean(dim=0)
