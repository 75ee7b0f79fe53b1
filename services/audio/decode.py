"""Audio decoding with guard rails, whole-file or as the bytes arrive.

Accepted: WAV (8/16/24/32-bit PCM, 32/64-bit float, and 8-bit G.711 mu-law and A-law,
as telephone systems record), FLAC, OGG (Vorbis, Opus) and MP3 through libsndfile
(`soundfile`), and raw PCM ("audio/pcm" with parameters sample_rate_hz, sample_format
s16le|s32le|f32le, channels). Everything becomes mono float32. MP4/M4A (AAC) and WebM
are recognised (common/media.py) and refused with what they are.

Streaming: raw PCM and WAV decode incrementally (`StreamDecoder.feed`), so features
can be computed before the last byte arrives; FLAC, OGG and MP3 are decoded when complete.
Every failure is INVALID_ARGUMENT with the reason: truncated or corrupt files,
unsupported codecs, zero length, NaN or infinite samples, sample rates outside
1 kHz..384 kHz, more than 32 channels, clips over the duration limit. Float samples
beyond full scale (|x| > 1) are clipped to it.
"""

from __future__ import annotations

import io
import logging
import struct
from dataclasses import dataclass

import numpy as np

from modalmesh.common import errors
from modalmesh.common.media import is_mpeg_audio_frame, sniff_audio

log = logging.getLogger(__name__)

# The usual name of each first, then aliases: a refusal lists them in this order, and a
# status's field description is cut at 120 characters (common/errors.py).
AUDIO_MEDIA_TYPES = ("audio/wav", "audio/flac", "audio/ogg", "audio/mpeg", "audio/pcm", "audio/x-wav", "audio/wave", "audio/mp3")
# What each accepted file type's bytes must sniff as (common/media.py sniff_audio).
_SNIFFED_AS = {"audio/x-wav": "audio/wav", "audio/wave": "audio/wav", "audio/mp3": "audio/mpeg"}
TARGET_RATE = 16_000
MIN_RATE, MAX_RATE = 1_000, 384_000
MAX_CHANNELS = 32
PCM_FORMATS: dict[str, np.dtype] = {"s16le": np.dtype("<i2"), "s32le": np.dtype("<i4"), "f32le": np.dtype("<f4")}


@dataclass
class PcmLayout:
    sample_rate: int
    channels: int
    dtype: np.dtype  # of one sample on the wire
    scale: float  # divide integer samples by this to get [-1, 1)
    table: np.ndarray | None = None  # G.711: each byte's sample value in [-1, 1) (dtype u1, scale 1)


def g711_table(law: str) -> np.ndarray:
    """[256] float32: the linear value of each 8-bit G.711 code ("mu" or "a" law, ITU-T
    G.711's expansion), in [-1, 1)."""
    code = np.arange(256, dtype=np.int32)
    if law == "mu":
        code = ~code & 0xFF
        exponent, mantissa = (code >> 4) & 7, code & 0x0F
        magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
        value = np.where(code & 0x80, -magnitude, magnitude)
    else:
        code = code ^ 0x55
        exponent, mantissa = (code >> 4) & 7, code & 0x0F
        magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
        value = np.where(code & 0x80, magnitude, -magnitude)
    return (value / 32768.0).astype(np.float32)


def check_signature(data: bytes, media_type: str) -> None:
    """Refuse bytes that are not the declared file type (raw PCM has no signature)."""
    if media_type == "audio/pcm" or len(data) < 12:
        return
    expected, found = _SNIFFED_AS.get(media_type, media_type), sniff_audio(data)
    if found != expected:
        what = f"look like {found}" if found else "match no audio format the service knows"
        raise errors.invalid_argument("header.media_type", f"declared {media_type} but the bytes {what}")


def check_layout(sample_rate: int, channels: int) -> None:
    if not MIN_RATE <= sample_rate <= MAX_RATE:
        raise errors.invalid_argument("sample_rate_hz", f"{sample_rate} Hz is outside {MIN_RATE}..{MAX_RATE}")
    if not 1 <= channels <= MAX_CHANNELS:
        raise errors.invalid_argument("channels", f"{channels} channels is outside 1..{MAX_CHANNELS}")


def to_mono(frames: np.ndarray) -> np.ndarray:
    """[n, channels] -> [n] float32 within full scale, refusing NaN and infinities.

    Float samples beyond full scale (|x| > 1) are clipped to it, as a converter to
    integer PCM would: the features assume it, and 1e30 would overflow them."""
    if frames.size and not np.isfinite(frames).all():
        bad = int(np.flatnonzero(~np.isfinite(frames).reshape(frames.shape[0], -1).all(axis=1))[0])
        raise errors.invalid_argument("payload", f"sample {bad} is NaN or infinite")
    frames = np.clip(frames, -1.0, 1.0, dtype=np.float32) if frames.dtype.kind == "f" else frames
    return frames.mean(axis=1, dtype=np.float32) if frames.ndim == 2 else frames.astype(np.float32)


BLOCK_SECONDS = 10  # decode_file reads this much at a time


def too_long(max_seconds: float) -> errors.ServiceError:
    return errors.invalid_argument("payload", f"the audio is longer than the limit of {max_seconds:g} s")


def decode_file(data: bytes, media_type: str, max_seconds: float | None = None) -> tuple[np.ndarray, int, int]:
    """A complete WAV/FLAC/OGG/MP3 file -> (mono float32 samples, sample rate, channels).

    Read a block at a time, each mixed to mono at once, and refused as soon as it passes
    `max_seconds`: compressed silence is tiny (an hour of 48 kHz FLAC is 546 KB), and
    decoding it whole before looking took the audio service to 2.5 GB for one request
    (32 channels would have been 30 GB)."""
    import soundfile

    if not data:
        raise errors.invalid_argument("payload", "the audio is empty (0 bytes)")
    check_signature(data, media_type)
    kind = _SNIFFED_AS.get(media_type, media_type)
    if kind == "audio/wav":
        parsed = parse_wav_header(data)
        if parsed is not None:
            check_wav_length(data, parsed[1], len(data) - parsed[1])
    elif kind == "audio/ogg":
        check_ogg_ends(data)
    elif kind == "audio/mpeg":
        check_mp3_length(data)
    blocks, total = [], 0
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as audio:
            rate, channels = int(audio.samplerate), int(audio.channels)
            check_layout(rate, channels)
            limit = None if max_seconds is None else int(max_seconds * rate)
            for block in audio.blocks(blocksize=BLOCK_SECONDS * rate, dtype="float32", always_2d=True):
                total += block.shape[0]
                if max_seconds is not None and limit is not None and total > limit:
                    raise too_long(max_seconds)
                blocks.append(to_mono(block))
    except errors.ServiceError:
        raise
    except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError) as exc:
        log.info("undecodable audio: %s: %s", type(exc).__name__, exc)
        raise errors.invalid_argument("payload", "cannot decode the audio: it is truncated, corrupt or not the format it says") from None
    if total == 0:
        raise errors.invalid_argument("payload", "the audio has no samples")
    return np.concatenate(blocks), rate, channels


def pcm_layout_from_parameters(parameters: dict[str, str]) -> PcmLayout:
    try:
        rate = int(parameters.get("sample_rate_hz", ""))
    except ValueError:
        raise errors.invalid_argument("header.parameters.sample_rate_hz", "required for audio/pcm (an integer in Hz)") from None
    try:
        channels = int(parameters.get("channels", "1"))
    except ValueError:
        raise errors.invalid_argument("header.parameters.channels", "expected an integer") from None
    sample_format = parameters.get("sample_format", "s16le")
    if sample_format not in PCM_FORMATS:
        raise errors.invalid_argument("header.parameters.sample_format", f"{sample_format!r} is not one of {', '.join(PCM_FORMATS)}")
    check_layout(rate, channels)
    dtype = PCM_FORMATS[sample_format]
    return PcmLayout(rate, channels, dtype, 1.0 if dtype.kind == "f" else float(2 ** (8 * dtype.itemsize - 1)))


def parse_wav_header(data: bytes) -> tuple[PcmLayout, int] | None:
    """(layout, offset of the first sample) once the bytes hold the header; None while
    more bytes are needed. Raises for WAV files that are not PCM or float."""
    if len(data) < 12:
        return None
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise errors.invalid_argument("header.media_type", "declared WAV but the bytes are not RIFF/WAVE")
    position, layout = 12, None
    while position + 8 <= len(data):
        chunk_id, size = data[position : position + 4], struct.unpack("<I", data[position + 4 : position + 8])[0]
        body = position + 8
        if chunk_id == b"data":
            if layout is None:
                raise errors.invalid_argument("payload", "WAV data chunk before its fmt chunk")
            return layout, body
        if body + size > len(data):
            return None
        if chunk_id == b"fmt ":
            if size < 16:
                raise errors.invalid_argument("payload", "WAV fmt chunk is too short")
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[body : body + 16])
            if tag == 0xFFFE and size >= 40:  # WAVE_FORMAT_EXTENSIBLE: the real tag is in the sub-format GUID
                tag = struct.unpack("<H", data[body + 24 : body + 26])[0]
            layout = _wav_layout(tag, channels, rate, bits)
        position = body + size + (size & 1)
    return None


UNKNOWN_WAV_SIZES = (0, 0xFFFFFFFF)  # what writers that stream (and do not seek back) put in the data size


def check_wav_length(data: bytes, offset: int, present: int) -> None:
    """Refuse a WAV whose data chunk declares more bytes than arrived: a truncated upload
    would otherwise be answered from part of the recording, unsaid."""
    declared = struct.unpack("<I", data[offset - 4 : offset])[0]
    if declared not in UNKNOWN_WAV_SIZES and present < declared:
        raise errors.invalid_argument("payload", f"the WAV file is truncated: its data chunk declares {declared} bytes, {present} arrived")


def check_ogg_ends(data: bytes) -> None:
    """Refuse an OGG file that does not end with a whole page ending its stream (header type
    flag 4): it was cut short, and libsndfile would decode the part that arrived as if it
    were all. A page: "OggS", version, type, 20 bytes, a count of segments and their lengths
    (27 + count bytes), then the segments."""
    last = data.rfind(b"OggS")
    complete = False
    if 0 <= last and last + 27 <= len(data):
        count = data[last + 26]
        table = data[last + 27 : last + 27 + count]
        complete = len(table) == count and last + 27 + count + sum(table) == len(data) and bool(data[last + 5] & 0x04)
    if not complete:
        raise errors.invalid_argument("payload", "the OGG file is truncated: it does not end with the page that ends its stream")


def check_mp3_length(data: bytes) -> None:
    """Refuse an MP3 shorter than its Xing/Info header says (LAME and most encoders write
    one: the stream's size in bytes). libsndfile fills what is missing with silence, and
    the message would be heard cut short, unsaid. Without such a header nothing is declared."""
    start = 0
    if data.startswith(b"ID3") and len(data) >= 10:  # an ID3v2 tag first: its size is four 7-bit bytes
        start = 10 + ((data[6] & 0x7F) << 21 | (data[7] & 0x7F) << 14 | (data[8] & 0x7F) << 7 | (data[9] & 0x7F))
    frame = data[start : start + 200]
    if len(frame) < 4 or not is_mpeg_audio_frame(frame):
        return
    mpeg1, mono = (frame[1] >> 3) & 3 == 3, (frame[3] >> 6) == 3
    side_info = (17 if mono else 32) if mpeg1 else (9 if mono else 17)
    tag = frame[4 + side_info : 4 + side_info + 16]
    if len(tag) < 16 or tag[:4] not in (b"Xing", b"Info"):
        return
    flags = struct.unpack(">I", tag[4:8])[0]
    if flags & 0x2:  # the byte count follows the frame count, where that is present
        at = 12 if flags & 0x1 else 8
        declared = struct.unpack(">I", tag[at : at + 4])[0]
        present = len(data) - start
        if present < declared:
            raise errors.invalid_argument("payload", f"the MP3 file is truncated: its header declares {declared} bytes of audio, {present} arrived")


def _wav_layout(tag: int, channels: int, rate: int, bits: int) -> PcmLayout:
    check_layout(rate, channels)
    if tag == 1 and bits in (8, 16, 24, 32):
        if bits == 8:
            return PcmLayout(rate, channels, np.dtype("u1"), 128.0)
        if bits == 24:
            return PcmLayout(rate, channels, np.dtype("V3"), float(2**23))
        return PcmLayout(rate, channels, np.dtype(f"<i{bits // 8}"), float(2 ** (bits - 1)))
    if tag == 3 and bits in (32, 64):
        return PcmLayout(rate, channels, np.dtype(f"<f{bits // 8}"), 1.0)
    if tag in G711_TAGS and bits == 8:
        return PcmLayout(rate, channels, np.dtype("u1"), 1.0, G711_TABLES[G711_TAGS[tag]])
    raise errors.invalid_argument(
        "payload", f"unsupported WAV encoding (format tag {tag}, {bits} bits); WAV is read as PCM (tag 1), float (3), A-law (6) or mu-law (7)"
    )


G711_TAGS = {6: "a", 7: "mu"}  # WAVE format tags: WAVE_FORMAT_ALAW, WAVE_FORMAT_MULAW
G711_TABLES = {law: g711_table(law) for law in G711_TAGS.values()}


class StreamDecoder:
    """Turns arriving bytes of a raw PCM or WAV stream into mono float32 blocks."""

    def __init__(self, media_type: str, parameters: dict[str, str]) -> None:
        self.layout: PcmLayout | None = None
        self._pending = b""
        self._header_done = False
        self._header = b""  # a WAV's bytes up to its first sample (the data size is checked at the end)
        self._received = 0  # bytes of samples since the header
        if media_type == "audio/pcm":
            self.layout = pcm_layout_from_parameters(parameters)
            self._header_done = True

    def feed(self, data: bytes) -> np.ndarray:
        self._pending += data
        if not self._header_done:
            parsed = parse_wav_header(self._pending)
            if parsed is None:
                if len(self._pending) > 1 << 20:
                    raise errors.invalid_argument("payload", "no WAV data chunk in the first MiB")
                return np.zeros(0, dtype=np.float32)
            self.layout, offset = parsed
            self._header, self._pending = self._pending[:offset], self._pending[offset:]
            self._header_done = True
            self._received = len(self._pending)
        else:
            self._received += len(data)
        assert self.layout is not None  # set from the parameters or the WAV header above
        frame_bytes = self.layout.dtype.itemsize * self.layout.channels
        usable = len(self._pending) - len(self._pending) % frame_bytes
        block, self._pending = self._pending[:usable], self._pending[usable:]
        return self._samples(block)

    def finish(self) -> None:
        """At the end of the stream: refuse a header that never completed."""
        if not self._header_done:
            raise errors.invalid_argument("payload", "the WAV file ends before its header does (truncated)")
        if self._header:
            check_wav_length(self._header, len(self._header), self._received)

    def _samples(self, block: bytes) -> np.ndarray:
        layout = self.layout
        assert layout is not None  # _samples runs once the layout is known
        if not block:
            return np.zeros(0, dtype=np.float32)
        values: np.ndarray
        if layout.table is not None:  # G.711: one byte per sample, expanded by its table
            values = layout.table[np.frombuffer(block, dtype=np.uint8)]
        elif layout.dtype.kind == "V":  # 24-bit little-endian PCM
            raw = np.frombuffer(block, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
            values = (raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)).astype(np.int32)
            values = np.where(values >= 1 << 23, values - (1 << 24), values).astype(np.float32)
        elif layout.dtype == np.dtype("u1"):
            values = np.frombuffer(block, dtype=np.uint8).astype(np.float32) - 128.0
        else:
            values = np.frombuffer(block, dtype=layout.dtype).astype(np.float32)
        values = values / layout.scale
        return to_mono(values.reshape(-1, layout.channels))
