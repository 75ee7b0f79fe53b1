"""What kind of image or audio a file holds, from its first bytes (or its name).

The router and the command line fill in a request's missing media type with these; the
vision and audio services check a declared type against the same signatures.
`sniff_audio` also names common audio containers the audio service does not decode
(MP4/M4A, WebM), so that a refusal says what the bytes are rather than "unknown".
"""

from __future__ import annotations

from pathlib import Path

# A file's suffix where its bytes cannot say (raw PCM has no header).
AUDIO_SUFFIXES = {
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".mp3": "audio/mpeg",
    ".pcm": "audio/pcm",
    ".raw": "audio/pcm",
}


# ISO base media files (an "ftyp" box first) hold images as well as audio: their major brand says which.
AVIF_BRANDS = (b"avif", b"avis")
HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")


def sniff_image(data: bytes) -> str | None:
    """The image media type the bytes' signature says, or None. HEIC (as iPhones take
    photos) is recognised, though the vision service does not decode it."""
    # DICOM first: its 128-byte preamble may itself hold a TIFF header (dual-format files).
    if data[128:132] == b"DICM":
        return "application/dicom"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"BM"):
        return "image/bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[4:8] == b"ftyp":
        return "image/avif" if data[8:12] in AVIF_BRANDS else "image/heic" if data[8:12] in HEIF_BRANDS else None
    return None


def is_mpeg_audio_frame(data: bytes) -> bool:
    """An MPEG audio frame header (MP3, MP2): 11 sync bits, a version and a layer that exist."""
    return len(data) >= 2 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0 and (data[1] >> 3) & 3 != 1 and (data[1] >> 1) & 3 != 0


def sniff_audio(data: bytes) -> str | None:
    """The audio media type the bytes' signature says: WAV, FLAC, OGG and MP3, which the
    audio service decodes (audio/decode.py), or MP4/M4A, WebM, AMR and AAC, which it only
    names when it refuses them; None for anything else (raw PCM has no signature)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "audio/wav"
    if data.startswith(b"fLaC"):
        return "audio/flac"
    if data.startswith(b"OggS"):
        return "audio/ogg"
    if data.startswith(b"ID3") or is_mpeg_audio_frame(data):
        return "audio/mpeg"
    if data[4:8] == b"ftyp" and data[8:12] not in AVIF_BRANDS + HEIF_BRANDS:  # ISO base media: M4A, MP4, 3GP (AAC inside)
        return "audio/mp4"
    if data.startswith(b"\x1a\x45\xdf\xa3"):  # Matroska / WebM (Opus inside, as browsers record)
        return "audio/webm"
    if data.startswith(b"#!AMR"):
        return "audio/amr"
    if len(data) >= 2 and data[0] == 0xFF and data[1] & 0xF6 == 0xF0:  # an AAC ADTS frame (layer bits 00)
        return "audio/aac"
    return None


def sniff(modality: str, data: bytes) -> str | None:
    """The media type of an "image" or "audio" input from its bytes, or None."""
    return sniff_image(data) if modality == "image" else sniff_audio(data)


def guess_media_type(modality: str, data: bytes, name: str | Path = "") -> str | None:
    """An "image" or "audio" input's media type from its bytes, else (raw PCM, which has no
    signature) from its file name's suffix; None where neither says."""
    found = sniff(modality, data)
    if found is None and modality == "audio":
        found = AUDIO_SUFFIXES.get(Path(name).suffix.lower())
    return found


def media_type_of_file(path: str | Path) -> str | None:
    """A file's media type, an image's or an audio file's (guess_media_type)."""
    with open(path, "rb") as handle:
        head = handle.read(256)
    return guess_media_type("image", head) or guess_media_type("audio", head, path)
