"""How an encoder's side output becomes a source the fusion reads: one rule for the
router (pipeline.py) and for the offline features of training and evaluation (features.py).

    vision, option "ocr":        text spans -> screen paragraphs (common/layout.py)
                                 -> "image_text": one pooled text vector per paragraph [P, width]
    audio, option "transcript":  transcript -> "audio_text": its text tokens [T, width]

`side_text` says what to embed and what was read (the evidence an answer quotes); the
caller embeds it with the text model it has: the text service over gRPC in the router,
the text service's code in this process offline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from modalmesh.common.layout import MIN_SPAN_CONFIDENCE, screen_paragraphs
from modalmesh.router.fusion import SIDE_SOURCE

SIDE_OPTION = {"image": "ocr", "audio": "transcript"}  # the encoder option that makes a modality's side output
QUICK_OPTION = {"image": "ocr_quick"}  # the same side output read quickly (the screen text at a smaller detection size, Latin alphabet first)


@dataclass(frozen=True)
class SideText:
    """What a side output gives the fusion: `texts` to embed as `source`, and what was read."""

    source: str  # "image_text" or "audio_text"
    texts: tuple[str, ...]  # what the text model embeds (none: nothing readable)
    per_text: bool  # one pooled vector per text (screen paragraphs), else the one text's tokens (a transcript)
    evidence: dict = field(default_factory=dict)  # screen_lines or transcript, as read
    note: str = ""  # screen text read or used only in part, and why
    unused: str = ""  # why none of it is read (a transcript the recogniser is unsure of)


def side_text(modality: str, side) -> SideText | None:
    """The side output of one encoder answer (`encoder_pb2.SideOutputs` or the encoder's own
    result's `side`) as a SideText; None when the modality has no side output in it."""
    if modality == "image" and side.text_spans:
        lines, unreadable, found = screen_paragraphs(side.text_spans)
        # Text read only in part is said in the image's report, not dropped unsaid.
        unread = [side.tags["ocr_more"]] if "ocr_more" in side.tags else []
        if unreadable:
            unread.append(f"{unreadable} of {len(side.text_spans)} screen text lines unreadable (OCR confidence under {MIN_SPAN_CONFIDENCE:g}), not used")
        if found > len(lines):
            unread.append(f"the first {len(lines)} of {found} paragraphs used")
        spans = [(span.text, round(float(span.confidence), 4), [float(v) for v in span.box]) for span in side.text_spans if span.text.strip()]
        return SideText(SIDE_SOURCE["image"], tuple(lines), True, {"screen_lines": lines, "screen_spans": spans}, "; ".join(unread))
    if modality == "audio" and side.HasField("transcript"):
        said = side.transcript.text
        unsure = side.tags.get("transcript_unsure", "")
        if unsure and said.strip():  # not what was said: not read, not quoted
            return SideText(SIDE_SOURCE["audio"], (), False, {"transcript": ""}, unused=f"not used: {unsure}")
        return SideText(SIDE_SOURCE["audio"], (said,) if said.strip() else (), False, {"transcript": said})
    return None


def embed(reading: SideText, per_text: Callable[[list[str]], torch.Tensor], tokens: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """The source's features: `per_text(texts)` -> [N, width] pooled vectors, or `tokens(text)`
    -> [T, width] for a transcript. Only called when there is something to embed."""
    return per_text(list(reading.texts)) if reading.per_text else tokens(reading.texts[0])
