"""The audio service and speech synthesis over gRPC, with real audio files."""

import os
import struct
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from modalmesh.audio.speech import read_wav
from modalmesh.common import errors
from modalmesh.common.client import EncoderClient, collect, connect, encode_requests
from modalmesh.v1 import encoder_pb2_grpc, speech_pb2, speech_pb2_grpc
from tests.conftest import start_service
from tests.media import tone, wav_bytes


def start_audio(**overrides):
    return start_service("audio", **overrides)


@pytest.fixture(scope="module")
def audio_channel():
    handle = start_audio()
    with connect(handle.address) as channel:
        yield channel
    handle.stop(grace=0.5)


@pytest.fixture
def audio(audio_channel):
    return EncoderClient(audio_channel)


@pytest.fixture
def speech(audio_channel):
    return speech_pb2_grpc.SpeechStub(audio_channel)


def synthesize(speech, text, **request):
    chunks = list(speech.Synthesize(speech_pb2.SynthesizeRequest(text=text, **request), timeout=30))
    return chunks, b"".join(c.data for c in chunks)


def expected_frames(seconds: float) -> int:
    samples = int(round(seconds * 16000))
    return (samples - 400) // 160 + 1


def test_info(audio):
    info = audio.info()
    assert info.modality == "audio" and info.feature_width == 80
    assert list(info.options) == ["transcript"] and info.limits.max_duration_s == 300
    assert "audio/pcm" in info.media_types


def test_speech_from_the_speech_service_is_transcribed(audio, speech):
    chunks, wav = synthesize(speech, "Hello, I need help with my order.", rate_wpm=150, sample_rate_hz=16000)
    samples, rate = read_wav(wav)
    assert rate == 16000 and 1.0 < samples.size / rate < 5.0
    result = audio.encode(wav, "audio/wav", options=["transcript"])
    assert "i need help with my order" in result.side.transcript.text.lower()  # Whisper base, word for word
    assert 0 < result.side.transcript.confidence <= 1 and result.side.transcript.language == "en"
    # One 10 ms frame per hop of a 25 ms window: the count follows from the duration.
    assert result.sequence.shape == (expected_frames(samples.size / rate), 80)
    assert result.pooled_message.sequence_length == result.sequence.shape[0]
    assert float(result.side.tags["duration_s"]) == pytest.approx(samples.size / rate, abs=1e-3)
    segments = result.side.tags["speech_segments"].split(";")
    assert segments and float(result.side.tags["speech_seconds"]) > 0.8  # VAD found the speech


def test_speech_in_another_language_is_flagged_as_no_transcript_of_what_was_said(audio, speech):
    """Whisper (set to English) decodes German speech into English words nobody said ("I
    can't tell you more.") and finds the clip unlikely to be English: the service keeps the
    text and says in its tags that its confidence is under the engine's floor. English
    speech is not flagged."""
    from modalmesh.audio.whisper import MIN_CONFIDENCE

    _, german = synthesize(speech, "Ich kann mich nicht mehr anmelden.", voice="de", rate_wpm=160)
    result = audio.encode(german, "audio/wav", options=["transcript"])
    assert result.side.transcript.text and result.side.transcript.confidence < MIN_CONFIDENCE, result.side.transcript
    assert result.side.tags["transcript_unsure"].startswith(
        f"the recogniser's confidence {result.side.transcript.confidence:.2f} is under {MIN_CONFIDENCE:.2f}"
    )
    _, english = synthesize(speech, "My card was declined when I tried to pay for my order.", rate_wpm=160)
    heard = audio.encode(english, "audio/wav", options=["transcript"])
    assert "declined" in heard.side.transcript.text.lower() and "transcript_unsure" not in heard.side.tags


def test_the_transcript_floor_is_whispers_and_pocketsphinx_has_none():
    from modalmesh.audio.features import Transcriber
    from modalmesh.audio.whisper import MIN_CONFIDENCE

    whisper, sphinx = Transcriber.__new__(Transcriber), Transcriber.__new__(Transcriber)  # the judgement only: no recogniser process
    whisper.engine, sphinx.engine = "whisper", "pocketsphinx"
    assert whisper.floor == MIN_CONFIDENCE and sphinx.floor == 0.0
    assert whisper.unsure("my cut of wood", MIN_CONFIDENCE - 0.01) and whisper.unsure("my card was declined", MIN_CONFIDENCE) == ""
    assert whisper.unsure("", 0.0) == ""  # no text: nothing to doubt
    assert sphinx.unsure("i think old", 0.05) == ""


def test_silence_has_no_speech_segments(audio):
    result = audio.encode(wav_bytes(np.zeros(16000, dtype=np.float32), 16000), "audio/wav")
    assert result.side.tags["speech_segments"] == "" and result.side.tags["speech_seconds"] == "0.00"


def test_with_speech_detection_off_the_audio_says_nothing_about_speech():
    """`vad` off: no speech_segments or speech_seconds tags (not "0.00", which would say
    there is no speech), so a task reading spoken audio does not refuse it for that."""
    handle = start_audio(vad=False, transcript=False)
    try:
        with connect(handle.address) as channel:
            result = EncoderClient(channel).encode((Path(__file__).resolve().parent.parent / "examples" / "voice.wav").read_bytes(), "audio/wav")
    finally:
        handle.stop(grace=0.5)
    assert "duration_s" in result.side.tags and not {"speech_segments", "speech_seconds"} & set(result.side.tags)


def test_first_features_arrive_before_the_last_chunk_is_sent(audio_channel):
    wav = wav_bytes(tone(3.0, 16000), 16000)
    first_features = threading.Event()
    sent_before_first = []

    def requests():
        chunks = list(encode_requests(wav, "audio/wav", chunk_bytes=8000))  # 0.25 s per chunk
        for index, message in enumerate(chunks):
            if index == len(chunks) - 1:
                # Hold the last chunk back until features have come back (or 10 s pass).
                first_features.wait(10)
            sent_before_first.append(not first_features.is_set())
            yield message

    stub = encoder_pb2_grpc.EncoderStub(audio_channel)
    received = []
    for chunk in stub.Encode(requests(), timeout=30):
        if chunk.WhichOneof("content") == "sequence":
            first_features.set()
        received.append(chunk)
    assert first_features.is_set()
    assert sent_before_first[-1] is False  # the last chunk went out only after features came back
    result = collect(iter(received))
    assert result.sequence.shape[0] == expected_frames(3.0)
    offsets = [c.sequence.offset for c in received if c.WhichOneof("content") == "sequence"]
    assert offsets == sorted(offsets) and len(offsets) > 3


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_wav_sample_formats(audio, subtype):
    result = audio.encode(wav_bytes(tone(1.0, 16000), 16000, subtype=subtype), "audio/wav", output_datatype="FP32")
    reference = audio.encode(wav_bytes(tone(1.0, 16000), 16000, subtype="FLOAT"), "audio/wav", output_datatype="FP32")
    assert result.sequence.shape == reference.sequence.shape == (expected_frames(1.0), 80)
    tolerance = 0.5 if subtype == "PCM_U8" else 0.05  # 8-bit is coarse
    assert np.abs(result.pooled - reference.pooled).max() < tolerance


def test_flac_ogg_stereo_and_resampling(audio):
    flac = audio.encode(wav_bytes(tone(1.0, 16000), 16000, subtype="PCM_16", fmt="FLAC"), "audio/flac")
    assert flac.sequence.shape == (expected_frames(1.0), 80)
    ogg = audio.encode(wav_bytes(tone(1.0, 44100), 44100, subtype="VORBIS", fmt="OGG"), "audio/ogg")
    assert ogg.side.tags["sample_rate_hz"] == "44100"
    assert abs(ogg.sequence.shape[0] - expected_frames(1.0)) <= 1
    stereo = audio.encode(wav_bytes(tone(1.0, 48000, channels=2), 48000), "audio/wav")
    assert stereo.side.tags["channels"] == "2" and stereo.side.tags["sample_rate_hz"] == "48000"
    assert abs(stereo.sequence.shape[0] - expected_frames(1.0)) <= 2


def test_odd_sample_rates_are_read_as_the_nearest_100_hz():
    # torchaudio's kernel has (to / g) x (from / g) taps, g their gcd: a 2-s WAV at
    # 44 101 Hz took the model thread 50 s, and one at 383 999 Hz took the audio service
    # to 22 GB (killed). An odd rate is now read as the nearest 100 Hz.
    from modalmesh.audio.features import resample, resample_rates

    for usual in (8000, 11025, 16000, 22050, 32000, 44100, 48000, 96000, 192000, 384000):
        assert resample_rates(usual, 16000) == (usual, 16000)  # exact, as before
    assert resample_rates(22050, 48000) == (22050, 48000)  # speech at 48 kHz
    assert resample_rates(44101, 16000) == (44100, 16000)
    assert resample_rates(383999, 16000) == (384000, 16000)
    assert resample_rates(22050, 47999) == (22050, 48000)  # speech asked for at an odd rate
    out = resample(tone(0.5, 44101, frequency=440.0), 44101).numpy()
    assert abs(out.size - 8000) <= 2
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * 16000 / out.size - 440.0) < 4  # still a 440 Hz tone


def test_an_odd_rate_clip_through_the_service(audio, speech):
    odd = audio.encode(wav_bytes(tone(1.0, 44101), 44101), "audio/wav")
    assert odd.side.tags["sample_rate_hz"] == "44101"
    assert abs(odd.sequence.shape[0] - expected_frames(1.0)) <= 1
    chunks, wav = synthesize(speech, "Your refund is on its way.", sample_rate_hz=47999)
    samples, rate = read_wav(wav)
    assert rate == 47999 and samples.size / rate > 0.8 and np.abs(samples).max() > 0.1


def test_raw_pcm_with_declared_format(audio):
    samples = (tone(1.0, 8000) * 32767).astype("<i2")
    result = audio.encode(samples.tobytes(), "audio/pcm", parameters={"sample_rate_hz": "8000", "sample_format": "s16le"})
    assert result.side.tags["sample_rate_hz"] == "8000"
    assert abs(result.sequence.shape[0] - expected_frames(1.0)) <= 1


def test_float_samples_beyond_full_scale_are_clipped(audio):
    # A float WAV at 1e30 once overflowed the features to NaN (the answer's confidence with them).
    loud = (tone(1.0, 16000) * 1e30).astype(np.float32)
    result = audio.encode(wav_bytes(loud, 16000, subtype="FLOAT"), "audio/wav", output_datatype="FP32")
    clipped = audio.encode(wav_bytes(np.clip(loud, -1, 1), 16000, subtype="FLOAT"), "audio/wav", output_datatype="FP32")
    assert np.isfinite(result.sequence).all() and np.isfinite(result.pooled).all()
    np.testing.assert_allclose(result.pooled, clipped.pooled, atol=1e-4)


def test_clips_too_short_to_decode_have_no_transcript_and_do_not_break_the_decoder(audio, speech):
    """A clip under about 10 ms or an empty buffer has an empty transcript, and the
    recogniser goes on transcribing afterwards."""
    from modalmesh.audio.features import Transcriber

    tiny = audio.encode(wav_bytes(np.zeros(10, dtype=np.float32), 16000), "audio/wav", options=["transcript"])
    assert tiny.side.HasField("transcript") and tiny.side.transcript.text == ""
    transcriber = Transcriber()
    # numpy's BLAS on one thread in the worker, whoever started it (an idle OpenBLAS thread
    # spins for a tenth of a second after each product, taking a core from other work).
    worker_environment = open(f"/proc/{transcriber._worker.pid}/environ", "rb").read().split(b"\0")
    assert (b"OPENBLAS_NUM_THREADS=" + os.environ.get("OPENBLAS_NUM_THREADS", "1").encode()) in worker_environment
    assert transcriber.transcribe(np.zeros(0, dtype=np.float32)) == ("", 0.0)
    assert transcriber.transcribe(np.zeros(10, dtype=np.float32)) == ("", 0.0)
    samples, rate = read_wav(synthesize(speech, "Hello, I need help with my order.", rate_wpm=150, sample_rate_hz=16000)[1])
    assert "order" in transcriber.transcribe(samples)[0].lower()
    with transcriber._engine_turns.turn(None):  # another transcript is running: a caller out of time does not queue behind it
        with pytest.raises(errors.ServiceError, match="transcript: deadline passed while waiting"):
            transcriber.transcribe(samples, timeout=0.1)
        # nor does one who has gone (the router cancelled a transcript it no longer needs)
        with pytest.raises(errors.ServiceError, match="transcript: the caller went away while waiting for the engine"):
            transcriber.transcribe(samples, timeout=30, wanted=lambda: False)
    transcriber.close()


def test_transcribing_does_not_stop_the_services_other_threads():
    """PocketSphinx holds the GIL for a whole utterance: a 12-s clip froze every thread of
    the audio service (health checks included) for 9 s. It runs in a worker process now:
    here a thread ticking every 10 ms is never held up for long, and the worker is
    replaced when its caller gives up or when it dies."""
    from modalmesh.audio.features import Transcriber

    transcriber = Transcriber()
    # Longer than a fitted window takes (audio/whisper.FIT_MAX_S): Whisper's 30 s, seconds of work.
    noise = np.random.default_rng(3).normal(0, 0.3, 12 * 16000).astype(np.float32)
    done, gaps = threading.Event(), []
    worker = threading.Thread(target=lambda: (transcriber.transcribe(noise), done.set()))
    worker.start()
    last = time.monotonic()
    while not done.is_set():
        time.sleep(0.01)
        gaps.append(time.monotonic() - last)
        last = time.monotonic()
    worker.join()
    assert len(gaps) > 20 and max(gaps) < 1.0  # the transcript took seconds; the ticks went on
    first_worker = transcriber._worker.pid
    with pytest.raises(errors.ServiceError, match="DEADLINE_EXCEEDED: transcript: deadline passed"):
        transcriber.transcribe(noise, timeout=0.2)
    # Not left decoding 12 s of noise for nobody: a fresh worker serves the next caller.
    assert transcriber._worker.pid != first_worker and transcriber._worker.poll() is None
    assert transcriber.transcribe(tone(0.5, 16000), timeout=60)[0] == transcriber.transcribe(tone(0.5, 16000))[0]
    transcriber._worker.kill()
    transcriber._worker.wait()
    with pytest.raises(errors.ServiceError, match="UNAVAILABLE: transcript: the recogniser's process stopped"):
        transcriber.transcribe(tone(0.5, 16000))
    assert isinstance(transcriber.transcribe(tone(0.5, 16000))[0], str)  # the new worker answers
    transcriber.close()


def _wav_with_format_tag(tag: int) -> bytes:
    fmt = struct.pack("<HHIIHH", tag, 1, 16000, 32000, 2, 16)
    data = b"\0" * 3200
    return b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data)) + data


BAD_AUDIO = {
    "zero length": (b"", "audio/wav", {}, "payload", "the audio is empty (0 bytes)"),
    "header only": (wav_bytes(np.zeros(0, dtype=np.float32), 16000), "audio/wav", {}, "payload", "no samples"),
    "truncated header": (wav_bytes(tone(0.5, 16000), 16000)[:30], "audio/wav", {}, "payload", "ends before its header"),
    "wrong magic": (b"OggS" + b"\0" * 100, "audio/wav", {}, "header.media_type", "not RIFF/WAVE"),
    "corrupt flac": (b"fLaC" + b"\x13" * 200, "audio/flac", {}, "payload", "cannot decode the audio"),
    "nan samples": (wav_bytes(np.array([0.1, np.nan, 0.2] * 1000, dtype=np.float32), 16000, subtype="FLOAT"), "audio/wav", {}, "payload", "NaN or infinite"),
    "infinite samples": (
        np.array([0.0, np.inf] * 500, dtype="<f4").tobytes(),
        "audio/pcm",
        {"sample_rate_hz": "16000", "sample_format": "f32le"},
        "payload",
        "NaN or infinite",
    ),
    "absurd rate": (b"\0" * 1000, "audio/pcm", {"sample_rate_hz": "5"}, "sample_rate_hz", "outside 1000..384000"),
    "no rate": (b"\0" * 1000, "audio/pcm", {}, "header.parameters.sample_rate_hz", "required for audio/pcm"),
    "absurd channels": (b"\0" * 1000, "audio/pcm", {"sample_rate_hz": "16000", "channels": "100"}, "channels", "outside 1..32"),
    "unknown sample format": (
        b"\0" * 1000,
        "audio/pcm",
        {"sample_rate_hz": "16000", "sample_format": "mulaw"},
        "header.parameters.sample_format",
        "not one of",
    ),
    "unsupported codec": (_wav_with_format_tag(0x11), "audio/wav", {}, "payload", "unsupported WAV encoding (format tag 17"),
    # Cut short: libsndfile would decode the OGG's first part as if it were all, and fill the
    # MP3's missing part with silence (its Xing header declares the stream's bytes).
    "truncated ogg": (wav_bytes(tone(2.0, 44100), 44100, subtype="VORBIS", fmt="OGG")[:-100], "audio/ogg", {}, "payload", "the OGG file is truncated"),
    "truncated mp3": (wav_bytes(tone(2.0, 44100), 44100, subtype="MPEG_LAYER_III", fmt="MP3")[:-100], "audio/mpeg", {}, "payload", "the MP3 file is truncated"),
}


@pytest.mark.parametrize("case", sorted(BAD_AUDIO))
def test_bad_audio_is_invalid_argument_and_the_service_stays_healthy(audio, case):
    data, media_type, parameters, field, complaint = BAD_AUDIO[case]
    with pytest.raises(grpc.RpcError) as raised:
        audio.encode(data, media_type, parameters=parameters)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert complaint in raised.value.details()
    assert errors.field_violations(raised.value)[0][0] == field
    assert audio.encode(wav_bytes(tone(0.2, 16000), 16000), "audio/wav").pooled.shape == (80,)


def test_clips_over_the_duration_limit_are_refused():
    handle = start_audio(max_audio_seconds=1.0, transcript=False)
    try:
        with connect(handle.address) as channel:
            client = EncoderClient(channel)
            for media_type, data in (("audio/wav", wav_bytes(tone(2.0, 16000), 16000)), ("audio/flac", wav_bytes(tone(2.0, 16000), 16000, fmt="FLAC"))):
                with pytest.raises(grpc.RpcError) as raised:
                    client.encode(data, media_type)
                assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "longer than the limit of 1 s" in raised.value.details()
            with pytest.raises(grpc.RpcError) as raised:
                client.encode(wav_bytes(tone(0.5, 16000), 16000), "audio/wav", options=["transcript"])
            assert "turned off" in raised.value.details()
    finally:
        handle.stop(grace=0.5)


def test_synthesize_streams_a_valid_wav(speech):
    chunks, wav = synthesize(speech, "Thank you for your message. We will refund you today.")
    assert chunks[0].data.startswith(b"RIFF") and chunks[-1].last and not any(c.last for c in chunks[:-1])
    assert [c.sequence for c in chunks] == list(range(len(chunks)))
    samples, rate = read_wav(wav)
    assert rate == 22050 and samples.size / rate > 1.5 and np.abs(samples).max() > 0.1


def test_synthesize_pcm16_comes_sentence_by_sentence(speech):
    chunks, pcm = synthesize(speech, "First sentence. Second sentence! Third one?", format=speech_pb2.AUDIO_FORMAT_PCM16, sample_rate_hz=16000)
    assert len(chunks) == 3 and chunks[-1].last
    assert all(c.sample_rate_hz == 16000 and c.format == speech_pb2.AUDIO_FORMAT_PCM16 for c in chunks)
    assert len(pcm) % 2 == 0 and len(pcm) / 2 / 16000 > 1.0


def test_voice_and_rate_change_the_audio(speech):
    _, slow = synthesize(speech, "Hello there, how can I help?", rate_wpm=100)
    _, fast = synthesize(speech, "Hello there, how can I help?", rate_wpm=300)
    _, british = synthesize(speech, "Hello there, how can I help?", voice="en")
    assert len(slow) > 1.8 * len(fast)
    assert british != synthesize(speech, "Hello there, how can I help?")[1]


@pytest.mark.parametrize(
    "request_fields, field, complaint",
    [
        ({"text": ""}, "text", "the text is empty"),
        ({"text": "x" * 2001}, "text", "over the limit of 2000"),
        ({"text": "hi", "voice": "klingon-xx"}, "voice", "unknown voice"),
        ({"text": "hi", "voice": "../../etc"}, "voice", "unknown voice"),
        ({"text": "hi", "rate_wpm": 5}, "rate_wpm", "outside 80..450"),
        ({"text": "hi", "sample_rate_hz": 1000}, "sample_rate_hz", "outside 8000..48000"),
    ],
)
def test_bad_synthesis_requests(speech, request_fields, field, complaint):
    with pytest.raises(grpc.RpcError) as raised:
        synthesize(speech, **request_fields)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert errors.field_violations(raised.value) and errors.field_violations(raised.value)[0][0] == field
    assert complaint in raised.value.details()
    assert synthesize(speech, "still here")[0][-1].last


@pytest.fixture(scope="module")
def tiny_wav2vec2_dir(tmp_path_factory):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    folder = tmp_path_factory.mktemp("tiny-wav2vec2")
    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_kernel=(10, 3),
        conv_stride=(5, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    Wav2Vec2Model(config).eval().save_pretrained(folder)
    return folder


def test_a_wav2vec2_directory_as_the_frame_encoder(tiny_wav2vec2_dir):
    handle = start_audio(model=str(tiny_wav2vec2_dir), transcript=False)
    try:
        with connect(handle.address) as channel:
            client = EncoderClient(channel)
            assert client.info().feature_width == 32
            result = client.encode(wav_bytes(tone(1.0, 16000), 16000), "audio/wav")
            # Two strided convolutions (5, then 2): 16000 samples -> 1599 frames.
            assert result.sequence.shape == (1599, 32)
    finally:
        handle.stop(grace=0.5)


def test_compressed_silence_is_refused_before_it_is_decoded_whole():
    # Ten minutes of 48 kHz FLAC silence is a few kilobytes; decoded it is 115 MB of
    # float32 (an hour of 32 channels would be 30 GB): refused while decoding, not after.
    import io
    import tracemalloc

    import soundfile

    from modalmesh.audio.decode import decode_file

    buffer = io.BytesIO()
    with soundfile.SoundFile(buffer, "w", 48000, 1, format="FLAC", subtype="PCM_16") as flac:
        for _ in range(10):
            flac.write(np.zeros(48000 * 60, dtype=np.int16))
    data = buffer.getvalue()
    assert len(data) < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(errors.ServiceError, match="longer than the limit of 30 s"):
            decode_file(data, "audio/flac", max_seconds=30)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 48000 * 600 * 4 / 5  # a fraction of the whole decode: it stopped past 30 s
    samples, rate, channels = decode_file(data, "audio/flac", max_seconds=600)  # within the limit: all of it
    assert samples.shape == (48000 * 600,) and rate == 48000 and channels == 1


def test_whisper_transcribes_real_speech_and_the_demo_voice_word_for_word():
    """A real human recording (moonshine's beckett.wav, about 10 s, used only here, never in
    training) and the demo's eSpeak voice message, through the audio service's transcriber:
    Whisper base, assembled from its packages and checked against the pinned sha256."""
    import importlib.util

    from modalmesh.audio.decode import decode_file
    from modalmesh.audio.features import SAMPLE_RATE, Transcriber, resample_rates
    from modalmesh.audio.lm import word_errors

    recordings = {
        Path(importlib.util.find_spec("moonshine_onnx").submodule_search_locations[0])
        / "assets"
        / "beckett.wav": "Ever tried. Ever failed. No matter. Try again. Fail again. Fail better.",
        Path(__file__).resolve().parent.parent / "examples" / "voice.wav": "Hello, my payment failed at checkout. Please help me.",
    }
    transcriber = Transcriber(engine="whisper")
    try:
        for path, said in recordings.items():
            samples, rate, _ = decode_file(path.read_bytes(), "audio/wav")
            if rate != SAMPLE_RATE:
                import torch
                import torchaudio

                source, target = resample_rates(rate, SAMPLE_RATE)
                samples = torchaudio.functional.resample(torch.from_numpy(samples), source, target).numpy()
            heard, confidence = transcriber.transcribe(samples, timeout=60)
            wrong, total = word_errors(said, heard)
            assert wrong / total <= 0.1 and 0 < confidence <= 1, (path.name, heard)
    finally:
        transcriber.close()


def test_a_short_clip_is_transcribed_in_a_window_fitted_to_it_and_a_loop_in_the_full_one():
    """Whisper's encoder window fits a short clip (the clip, 3 s after it, in 5 s steps, at
    least 10 s) instead of 30 s; a fitted transcript that repeats itself is done again in
    the full window (faster-whisper's compression test). The confidence is the clip's
    language probability times the tokens' (one decoder step on the encoded window)."""
    from modalmesh.audio import whisper

    assert [whisper.fitted_window(frames) for frames in (50, 401, 700, 701, 1200, 2800)] == [1000, 1000, 1000, 1500, 1500, 3000]
    engine = whisper.WhisperEngine(threads=2)
    samples, _, _ = decode_file_16k(Path(__file__).resolve().parent.parent / "examples" / "voice.wav")
    encoded: dict[str, list[int]] = {"fitted": [], "full": []}

    def spy(model, name):
        real = model.encode
        return _Spy(model, "encode", lambda features, **kw: (encoded[name].append(features.shape[2]), real(features, **kw))[1])

    # On more threads than FITTED_THREADS, a fitted window on its own one-thread instance of
    # the model, the 30 s one on the engine's two; on one (the default, what the service runs), one instance.
    assert engine.fitted_model is not engine.model.model and whisper.FITTED_THREADS == 1
    default = whisper.WhisperEngine()
    assert default.fitted_model is default.model.model
    engine.fitted_model, engine.model.model = spy(engine.fitted_model, "fitted"), spy(engine.model.model, "full")
    text, confidence = engine.transcribe(samples)
    assert text == "Hello, my payment failed at checkout. Please help me." and 0 < confidence <= 1
    assert encoded == {"fitted": [1000], "full": []}  # 4.1 s of speech: a 10 s window, one encoding
    # Either instance gives the same transcript (the same weights; only the threads differ).
    one_thread = engine.fitted_model
    engine.fitted_model = engine.model.model
    assert engine.transcribe(samples) == (text, confidence)
    engine.fitted_model = one_thread
    # A decoding stuck in a loop (what a 10 s recording gave in a 15 s window) is not kept.
    engine._fitted = lambda clip: None if len(clip) else ("", 0.0)
    encoded["fitted"].clear(), encoded["full"].clear()
    # faster-whisper's own 30 s window; the clip's language asked of its opening in a fitted one
    assert engine.transcribe(samples)[0] == text and encoded == {"fitted": [1000], "full": [3000]}


def test_a_transcript_past_the_callers_deadline_is_deadline_exceeded_and_the_service_goes_on(audio):
    """The transcript runs on a thread of its own beside the speech detection; its errors
    still reach the caller as the call's status: 12 s of noise with a 0.5 s deadline is
    DEADLINE_EXCEEDED (not INTERNAL, not a hang), and the next call is transcribed."""
    noise = np.random.default_rng(4).normal(0, 0.3, 12 * 16000).astype(np.float32)
    with pytest.raises(grpc.RpcError) as raised:
        audio.encode(wav_bytes(noise, 16000), "audio/wav", options=["transcript"], timeout=0.5)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    voice = (Path(__file__).resolve().parent.parent / "examples" / "voice.wav").read_bytes()
    result = audio.encode(voice, "audio/wav", options=["transcript"], timeout=60)
    assert result.side.transcript.text == "Hello, my payment failed at checkout. Please help me."
    assert result.pooled_message.timings_ms["transcript"] > 0


def test_whisper_hears_no_words_in_sounds_that_are_not_speech():
    """A transcript claims only what was said: silence, white noise, a steady tone and a
    few notes played in turn are transcribed as nothing (Whisper's own silence rule), not
    as a stock phrase ("Thank you very much." is what Whisper base says of all but the
    tone when a prompt primes it to expect speech)."""
    from modalmesh.audio.features import Transcriber

    seconds = np.arange(4 * 16000) / 16000
    notes = sum(np.sin(2 * np.pi * f * seconds) * (np.sin(np.pi * 0.5 * seconds * k) > 0) for k, f in enumerate((262, 330, 392, 523), 1))
    sounds = {
        "silence": np.zeros(3 * 16000, np.float32),
        "white noise": np.random.default_rng(0).normal(0, 0.1, 3 * 16000).astype(np.float32),
        "a 440 Hz tone": tone(3.0, 16000),
        "notes": (0.2 * notes).astype(np.float32),
    }
    transcriber = Transcriber(engine="whisper")
    try:
        heard = {name: transcriber.transcribe(samples, timeout=60) for name, samples in sounds.items()}
    finally:
        transcriber.close()
    assert heard == dict.fromkeys(sounds, ("", 0.0)), heard


def test_whisper_decodes_with_the_configured_beam_in_both_windows():
    """Both windows decode with the engine's beam width (`asr_beam`, 5 unless set: beam
    search makes fewer word errors than the likeliest token at each step, 1), and the
    transcripts' version names it, so transcripts cached under another width are made again."""
    from modalmesh.audio import whisper
    from modalmesh.common.config import load_config

    assert whisper.BEAM_SIZE == load_config("audio", environ={}).asr_beam == 5
    assert whisper.version(5).endswith("+beam5") and "beam" not in whisper.version(1)
    samples, _, _ = decode_file_16k(Path(__file__).resolve().parent.parent / "examples" / "voice.wav")
    for width in (5, 1):
        engine = whisper.WhisperEngine(threads=2, beam_size=width)
        beams: list[int] = []

        def spy(model):
            real = model.generate
            return _Spy(model, "generate", lambda *args, **kw: (beams.append(kw["beam_size"]), real(*args, **kw))[1])

        engine.fitted_model = spy(engine.fitted_model)
        assert engine.transcribe(samples)[0] == "Hello, my payment failed at checkout. Please help me."
        engine._fitted = lambda clip: None  # the 30 s window (faster-whisper's transcribe)
        engine.model.model = spy(engine.model.model)
        assert engine.transcribe(samples)[0] == "Hello, my payment failed at checkout. Please help me."
        assert beams and set(beams) == {width}, beams
    with pytest.raises(ValueError, match="asr_beam must be 1 to 16"):
        load_config("audio", environ={"MODALMESH_AUDIO_ASR_BEAM": "0"})


class _Spy:
    """The CTranslate2 model with one method wrapped (to see the window it is given)."""

    def __init__(self, model, name, wrapper) -> None:
        self._model, self._name, self._wrapper = model, name, wrapper

    def __getattr__(self, attribute):
        return self._wrapper if attribute == self._name else getattr(self._model, attribute)


def decode_file_16k(path: Path):
    """A WAV file's samples at 16 kHz, as the audio service resamples them."""
    import torch
    import torchaudio

    from modalmesh.audio.decode import decode_file
    from modalmesh.audio.features import SAMPLE_RATE, resample_rates

    samples, rate, channels = decode_file(path.read_bytes(), "audio/wav")
    if rate != SAMPLE_RATE:
        samples = torchaudio.functional.resample(torch.from_numpy(samples), *resample_rates(rate, SAMPLE_RATE)).numpy()
    return samples, SAMPLE_RATE, channels


EXAMPLE_VOICE = Path(__file__).resolve().parent.parent / "examples" / "voice.wav"


def telephone_and_compressed_copies() -> dict[str, tuple[bytes, str]]:
    """The example voice message as a call centre or a phone stores it, written by
    libsndfile: 8 kHz G.711 mu-law and A-law WAV, and MP3 at its own rate."""
    import io

    import soundfile
    from scipy.signal import resample_poly

    samples, rate = soundfile.read(EXAMPLE_VOICE, dtype="float32")
    phone = resample_poly(samples, 8000, rate).astype(np.float32)
    copies = {}
    for name, data, at, subtype, fmt in (("mu-law", phone, 8000, "ULAW", "WAV"), ("A-law", phone, 8000, "ALAW", "WAV"), ("MP3", samples, rate, None, "MP3")):
        buffer = io.BytesIO()
        soundfile.write(buffer, data, at, subtype=subtype, format=fmt)
        copies[name] = (buffer.getvalue(), "audio/mpeg" if fmt == "MP3" else "audio/wav")
    return copies


def test_g711_codes_expand_as_libsndfile_expands_them():
    """Every 8-bit mu-law and A-law code, in a WAV streamed in two pieces (the service's
    streaming decoder), decodes to what libsndfile makes of the same file."""
    import io

    import soundfile

    from modalmesh.audio.decode import StreamDecoder

    for tag in (6, 7):
        fmt = struct.pack("<HHIIHH", tag, 1, 8000, 8000, 1, 8)
        codes = bytes(range(256))
        wav = b"RIFF" + struct.pack("<I", 36 + 256) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", 256) + codes
        expected, _ = soundfile.read(io.BytesIO(wav), dtype="float32")
        decoder = StreamDecoder("audio/wav", {})
        got = np.concatenate([decoder.feed(wav[:61]), decoder.feed(wav[61:])])
        decoder.finish()
        np.testing.assert_array_equal(got, expected)
        assert len(set(got.tolist())) == 255 + (tag == 6)  # mu-law has two codes for zero


def test_a_voice_message_from_a_telephone_system_or_as_mp3_is_heard(audio):
    """Decoded whole and heard: the MP3 word for word; the telephone copies lose everything
    above 4 kHz, and Whisper hears them less well (benchmarks/probe_telephone.py measures
    it): the A-law copy's "failed at checkout" comes out "are about to take out"."""
    for name, (data, media_type) in telephone_and_compressed_copies().items():
        result = audio.encode(data, media_type, options=["transcript"])
        heard = result.side.transcript.text.lower()
        assert heard.startswith("hello, my payment") and heard.endswith("please help me."), (name, heard)
        assert float(result.side.tags["duration_s"]) == pytest.approx(4.07, abs=0.05), name
        if name in ("MP3", "mu-law"):
            assert "my payment failed at checkout" in heard, (name, heard)


def test_audio_is_told_apart_by_its_bytes():
    """Each kind the service reads by its signature; containers it does not decode (MP4/M4A,
    WebM, AMR, AAC) by theirs, so that a refusal names them. The MP4 and WebM headers are
    built here by their specifications (no such file can be made on this machine)."""
    from modalmesh.common.media import guess_media_type, sniff_audio

    for name, (data, media_type) in telephone_and_compressed_copies().items():
        assert sniff_audio(data) == media_type, name
    assert sniff_audio(EXAMPLE_VOICE.read_bytes()) == "audio/wav"
    assert sniff_audio(wav_bytes(tone(0.2, 16000), 16000, fmt="FLAC")) == "audio/flac"
    assert sniff_audio(b"ID3\x04\x00" + b"\x00" * 20) == "audio/mpeg"
    assert sniff_audio(b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00M4A mp42isom") == "audio/mp4"
    assert sniff_audio(b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01webm") == "audio/webm"
    assert sniff_audio(b"#!AMR\n" + b"\x00" * 20) == "audio/amr"
    assert sniff_audio(b"\xff\xf1\x50\x80" + b"\x00" * 20) == "audio/aac"
    assert sniff_audio(b"\xff\xd8\xff\xe0" + b"\x00" * 20) is None  # a JPEG is no MPEG audio frame
    assert sniff_audio(b"\x00\x01" * 100) is None  # raw PCM: said by its name only
    assert guess_media_type("audio", b"\x00\x01" * 100, "call.pcm") == "audio/pcm"
    assert guess_media_type("audio", b"\x00\x01" * 100, "call.bin") is None


def test_a_declared_type_the_bytes_do_not_match_is_refused_with_what_they_are(audio):
    mp3, _ = telephone_and_compressed_copies()["MP3"]
    for data, declared, said in ((mp3, "audio/flac", "look like audio/mpeg"), (b"\x00" * 64, "audio/mpeg", "match no audio format")):
        with pytest.raises(grpc.RpcError) as raised:
            audio.encode(data, declared)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"declared {declared} but the bytes {said}" in raised.value.details()
        assert errors.field_violations(raised.value)[0][0] == "header.media_type"
