"""The recogniser's side of `features.Transcriber`, run in a worker process of its own.

Engines: Whisper base (`whisper`, the default; audio/whisper.py) or PocketSphinx en-us
(`pocketsphinx`). A recogniser holds the GIL or both cores for a whole utterance, which
would freeze every thread of the audio service (health checks, other callers' features),
so it runs in a process of its own (`python -m modalmesh.audio.asr`): the service sends
raw 16-bit PCM and gets (text, confidence) back as a JSON line, and a worker nobody waits
for any more is killed and replaced.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modalmesh.common.config import DEFAULT_ASR_BEAM

_decoder = None
_initial_cmn = None


ENGINES = ("whisper", "pocketsphinx")
_whisper = None


def load_whisper(language: str, beam: int) -> None:
    """Whisper base, checked and assembled from its packages (once per process)."""
    global _whisper
    if _whisper is None:
        from modalmesh.audio.whisper import WhisperEngine

        _whisper = WhisperEngine(language=language, beam_size=beam)  # one thread (whisper.FITTED_THREADS says why)


def transcribe_whisper(pcm: bytes) -> tuple[str, float]:
    if not pcm:
        return "", 0.0
    assert _whisper is not None, "load_whisper() first"
    return _whisper.transcribe(np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0)


def load(sample_rate: int, lm: str) -> None:
    """Build the PocketSphinx decoder (once per process); ValueError naming the LM if it cannot."""
    global _decoder, _initial_cmn
    if _decoder is not None:
        return
    from pocketsphinx import Decoder

    options = {}
    if lm:
        if not Path(lm).is_file():
            raise ValueError(f"asr_lm {lm}: no such file (modalmesh data lm builds one)")
        options["lm"] = str(lm)
    try:
        _decoder = Decoder(samprate=sample_rate, loglevel="FATAL", **options)
    except RuntimeError as exc:  # PocketSphinx says only "Failed to initialize"
        raise ValueError(f"asr_lm {lm}: PocketSphinx cannot load it as an ARPA language model ({exc})") from None
    # PocketSphinx adapts its cepstral mean across utterances; restoring the initial
    # mean before each one makes a transcript depend on its own audio only.
    _initial_cmn = _decoder.get_cmn()


def transcribe(pcm: bytes) -> tuple[str, float]:
    """16-bit little-endian mono PCM at the loaded rate -> (text, mean word posterior)."""
    if not pcm:  # PocketSphinx fails on an empty buffer (and would stay mid-utterance)
        return "", 0.0
    decoder = _decoder
    assert decoder is not None, "load() first"
    decoder.set_cmn(_initial_cmn)
    decoder.start_utt()
    try:
        decoder.process_raw(pcm, full_utt=True)
    finally:  # an utterance left open would fail every later call
        decoder.end_utt()
    hypothesis = decoder.hyp()
    # seg() is None for a clip too short to decode (under about 10 ms)
    words = [seg for seg in decoder.seg() or () if not seg.word.startswith(("<", "[", "+"))]
    if hypothesis is None or not hypothesis.hypstr:
        return "", 0.0
    # Mean word posterior of the recognised words (fillers and silences left out).
    posteriors = [min(1.0, max(0.0, float(seg.prob))) for seg in words] or [0.0]
    return hypothesis.hypstr, float(np.mean(posteriors))


def main() -> int:
    """The worker: `python -m modalmesh.audio.asr --rate R [--lm FILE]`. Reads requests on
    stdin (4-byte little-endian length, then that much PCM), answers one JSON line each on
    stdout; the first line says whether the decoder loaded. No pickle crosses the pipe."""
    import argparse
    import json
    import struct
    import sys

    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, required=True)
    parser.add_argument("--lm", default="")
    parser.add_argument("--engine", choices=ENGINES, default="whisper")
    parser.add_argument("--language", default="en")
    parser.add_argument("--beam", type=int, default=DEFAULT_ASR_BEAM)
    args = parser.parse_args()
    out = sys.stdout
    run = transcribe_whisper if args.engine == "whisper" else transcribe
    try:
        if args.engine == "whisper":
            load_whisper(args.language, args.beam)
        else:
            load(args.rate, args.lm)
    except (ValueError, ImportError, RuntimeError) as exc:
        out.write(json.dumps({"error": str(exc)}) + "\n")
        out.flush()
        return 2
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    source = sys.stdin.buffer
    while True:
        header = source.read(4)
        if len(header) < 4:  # the service closed the pipe
            return 0
        pcm = source.read(struct.unpack("<I", header)[0])
        try:
            text, confidence = run(pcm)
            reply = {"text": text, "confidence": confidence}
        except Exception as exc:  # noqa: BLE001 - reported to the caller, the worker goes on
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    raise SystemExit(main())
