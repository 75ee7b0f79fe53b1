"""Side outputs into the fusion's sources (router/sources.py): the one rule the router
and the offline features both follow."""

import pytest
import torch

from modalmesh.router.sources import embed, side_text
from modalmesh.v1 import encoder_pb2


def _span(text, confidence, box):
    return encoder_pb2.TextSpan(text=text, confidence=confidence, box=box)


def test_screen_text_becomes_one_vector_per_readable_paragraph_and_says_what_was_not_read():
    side = encoder_pb2.SideOutputs(
        text_spans=[
            _span("Payment", 0.99, (40, 300, 140, 320)),
            _span("declined", 0.97, (150, 300, 240, 320)),
            _span("xq#", 0.2, (40, 500, 80, 520)),  # unreadable: not evidence
            _span("Try another card", 0.95, (40, 600, 240, 620)),
        ],
        tags={"ocr_more": "text left unread: the first 100 lines were read (ocr_max_lines)"},
    )
    reading = side_text("image", side)
    assert reading is not None and reading.source == "image_text" and reading.per_text
    assert reading.texts == ("Payment declined", "Try another card")
    assert reading.evidence["screen_lines"] == ["Payment declined", "Try another card"]
    assert [(text, confidence) for text, confidence, _ in reading.evidence["screen_spans"]] == [
        ("Payment", pytest.approx(0.99)),
        ("declined", pytest.approx(0.97)),
        ("xq#", pytest.approx(0.2)),  # what OCR read, the unreadable too (the console shows it)
        ("Try another card", pytest.approx(0.95)),
    ]
    assert "the first 100 lines were read" in reading.note and "1 of 4 screen text lines unreadable" in reading.note
    seen = []
    vectors = embed(reading, lambda texts: seen.append(texts) or torch.ones(len(texts), 3), lambda text: torch.zeros(1, 3))
    assert seen == [["Payment declined", "Try another card"]] and vectors.shape == (2, 3)


def test_a_transcript_is_embedded_as_its_tokens_and_a_blank_one_is_read_but_not_embedded():
    reading = side_text("audio", encoder_pb2.SideOutputs(transcript=encoder_pb2.Transcript(text="my card was declined")))
    assert reading is not None and reading.source == "audio_text" and not reading.per_text
    assert embed(reading, lambda texts: torch.ones(len(texts), 3), lambda text: torch.zeros(len(text.split()), 3)).shape == (4, 3)
    blank = side_text("audio", encoder_pb2.SideOutputs(transcript=encoder_pb2.Transcript(text="  ")))
    assert blank is not None and blank.texts == () and blank.evidence == {"transcript": "  "}


def test_a_transcript_the_recogniser_is_unsure_of_is_not_read_and_says_why():
    side = encoder_pb2.SideOutputs(
        transcript=encoder_pb2.Transcript(text="My cut of wood, I'm going to start an upgrade.", confidence=0.2),
        tags={"transcript_unsure": "the recogniser's confidence 0.20 is under 0.35 (speech in another language, or unclear)"},
    )
    reading = side_text("audio", side)
    assert reading is not None and reading.texts == () and reading.evidence == {"transcript": ""}  # not embedded, not quoted
    assert reading.unused == "not used: the recogniser's confidence 0.20 is under 0.35 (speech in another language, or unclear)"
    side.tags.clear()
    assert side_text("audio", side).texts == ("My cut of wood, I'm going to start an upgrade.",)


def test_no_side_output_no_source():
    assert side_text("image", encoder_pb2.SideOutputs(tags={"width": "10"})) is None
    assert side_text("audio", encoder_pb2.SideOutputs()) is None
    assert side_text("text", encoder_pb2.SideOutputs()) is None
