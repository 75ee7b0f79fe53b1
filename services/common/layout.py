"""Screen text layout: OCR boxes into reading order, lines and paragraphs.

PP-OCR returns one box per run of text it detected: a wrapped sentence comes back as
two or three boxes ("Card ending 4242 was" / "flagged as suspicious"), and widely spaced
words as separate boxes. A model reading a screen wants the sentence, so:

1. rows: boxes whose vertical centres lie within half a box height of each other;
2. lines: within a row, left to right, boxes closer than `word_gap` heights are joined;
3. paragraphs: a line directly under another (gap under `line_gap` times the smaller of
   the two lines' heights), in about the same font size (heights within 30%, SAME_HEIGHT), that overlaps
   it horizontally continues its paragraph. The smaller height, because how tall a box is
   drawn depends on the detection size and the letters in it (a detection at a smaller
   scale draws looser boxes: "Your password was changed." 27 px tall over a 22-px line),
   and the gap between two paragraphs must not shrink under the taller one's half;
4. hard breaks: a line that ends so short that the next line's first word would have
   fitted after it (against the paragraph's widest line) was broken on purpose, not
   wrapped, and ends its paragraph: a list ("Order placed 22 Jul" / "Packed 22 Jul" /
   "We could not take payment") or an address is read one line at a time;
5. type sizes: two lines of a paragraph whose type sizes, read off their boxes' widths,
   differ by more than 13% are two paragraphs (a smaller line under a message).

Used by the vision service (reading order of its text spans) and by the router (one
text vector per paragraph), so a screen is read the same way everywhere.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Callable, Iterable

Box = tuple[float, float, float, float]  # x_min, y_min, x_max, y_max


@dataclass
class _Line:
    text: str
    box: Box

    @property
    def height(self) -> float:
        return max(1.0, self.box[3] - self.box[1])


def reading_order(spans: Iterable[tuple[str, Box]]) -> list[list[tuple[str, Box]]]:
    """Rows top to bottom, each left to right."""
    rows: list[list[tuple[str, Box]]] = []
    for text, box in sorted(spans, key=lambda span: (span[1][1] + span[1][3]) / 2):
        centre, height = (box[1] + box[3]) / 2, max(1.0, box[3] - box[1])
        if rows:
            last = rows[-1]
            row_centre = sum((b[1] + b[3]) / 2 for _, b in last) / len(last)
            row_height = max(max(1.0, b[3] - b[1]) for _, b in last)
            if abs(centre - row_centre) <= max(height, row_height) / 2:
                last.append((text, box))
                continue
        rows.append([(text, box)])
    return [sorted(row, key=lambda span: span[1][0]) for row in rows]


# The most screen paragraphs a task reads (each becomes one text vector): the router, the
# feature cache and text-layer fine-tuning all cut at this.
MAX_SCREEN_LINES = 32

# OCR spans recognised with less confidence than this are not read: garbled text (a blurred
# or compressed screen, "(nes utee tn o r  oe r p") scores 0.5-0.6, while the lowest of 386
# spans on the triage validation screens scored 0.68 and 95% scored over 0.97. A confidence
# of 0 means the encoder gave none; such spans are read.
MIN_SPAN_CONFIDENCE = 0.65


def screen_paragraphs(spans: Iterable) -> tuple[list[str], int, int]:
    """The paragraphs a task reads from OCR spans (objects with `text`, `box` and
    `confidence`, such as encoder.proto's TextSpan), at most MAX_SCREEN_LINES; how many
    spans were left out as unreadable (MIN_SPAN_CONFIDENCE); and how many paragraphs the
    readable ones made before the cut. The router and the feature cache both read screens
    through here."""
    spans = [s for s in spans if s.text.strip()]
    kept = [(s.text, tuple(s.box)) for s in spans if not 0 < s.confidence < MIN_SPAN_CONFIDENCE]
    found = paragraphs(kept)
    return found[:MAX_SCREEN_LINES], len(spans) - len(kept), len(found)


# Two lines' OCR boxes are of one font size where the shorter box is at least this share of
# the taller: the detector draws one line's box 21 px tall and the next line's, in the same
# type, 29 px at the quick reading's size ("Your new card arrived" over "safely"). A smaller
# line of ten characters or more is told apart by its type size (_type_size_breaks).
SAME_HEIGHT = 0.7


def paragraphs(spans: Iterable[tuple[str, Box]], word_gap: float = 2.0, line_gap: float = 0.5) -> list[str]:
    """The screen's text as paragraphs, in reading order. `spans`: (text, box) pairs;
    spans without a box (empty) are kept as paragraphs of their own, at the end."""
    spans = list(spans)
    placed: list[tuple[str, Box]] = [(t.strip(), (b[0], b[1], b[2], b[3])) for t, b in spans if t.strip() and len(b) == 4]
    unplaced = [t.strip() for t, b in spans if t.strip() and len(b) != 4]
    lines: list[_Line] = []
    for row in reading_order(placed):
        current = _Line(row[0][0], row[0][1])
        for text, box in row[1:]:
            if box[0] - current.box[2] <= word_gap * current.height:
                current = _Line(f"{current.text} {text}", _union(current.box, box))
            else:
                lines.append(current)
                current = _Line(text, box)
        lines.append(current)
    blocks: list[list[_Line]] = []
    for line in lines:
        for block in reversed(blocks):
            last = block[-1]
            gap = line.box[1] - last.box[3]
            overlaps = min(line.box[2], last.box[2]) > max(line.box[0], last.box[0])
            similar = min(line.height, last.height) >= SAME_HEIGHT * max(line.height, last.height)  # same font size
            if -0.5 * line.height <= gap <= line_gap * min(line.height, last.height) and overlaps and similar and line.box[1] > last.box[1]:
                block.append(line)
                break
        else:
            blocks.append([line])
    parts = [piece for block in blocks for part in _hard_breaks(block) for piece in _type_size_breaks(part)]
    return [" ".join(line.text for line in part) for part in parts] + unplaced


# Each character's width in ems as Helvetica draws it (its advance widths); any other
# character 0.556, a digit's.
_EM_WIDTHS = {
    character: width
    for characters, width in (
        ("'", 0.191),
        ("ijl", 0.222),
        ("|", 0.26),
        (" ftI.,:;!/", 0.278),
        ("r-()", 0.333),
        ('"', 0.355),
        ("ckvxyzsJ", 0.5),
        ("FTZ", 0.611),
        ("ABEKPSVXY&", 0.667),
        ("CDHNRUw", 0.722),
        ("GOQ", 0.778),
        ("mM", 0.833),
        ("%", 0.889),
        ("W", 0.944),
        ("@", 1.015),
    )
    for character in characters
}
SIZE_FROM_CHARACTERS = 10  # lines this long or longer are compared by type size, not only by height
SAME_SIZE = 0.87  # the smaller of two lines' type sizes at least this share of the larger


def type_size(line: _Line) -> float:
    """The line's type size in pixels per em, from its box's width: the width, less a
    quarter of its height for the box's padding, over its characters' summed widths
    (_EM_WIDTHS)."""
    ems = sum(_EM_WIDTHS.get(character, 0.556) for character in line.text)
    return max(1.0, line.box[2] - line.box[0] - 0.25 * line.height) / max(0.1, ems)


def _type_size_breaks(part: list[_Line]) -> list[list[_Line]]:
    """`part` cut between every two lines of SIZE_FROM_CHARACTERS characters or more whose
    type sizes (type_size) differ by more than 13%.

    Box heights miss a smaller line under a message: the detector pads every box, and more
    so at a smaller detection size, so the box of a line in 0.7-0.8 of a message's type is
    0.75-0.96 of the message's box height. On OCR boxes of screens drawn in five fonts, such
    a line directly under a message was kept apart in 80 of 80 readings at the full
    detection size and 79 of 80 at the quick one (37 and 22 by heights alone), wrapped
    messages as often whole as by heights alone (79 and 77 of 80). On the generators'
    screens, the two lines of a wrapped message differ in type size by at most 11% (a short
    last line, "days.", is not compared), and a message's paragraph is the message alone on
    127 of 128 test screens and 227 of 232 held-out browser pages (114 and 199 by heights
    alone; the held-out e-mails unchanged). A line in bold reads as larger type: it is a
    paragraph of its own too."""

    def apart(last: _Line, line: _Line) -> bool:
        if min(len(line.text), len(last.text)) < SIZE_FROM_CHARACTERS:
            return False
        sizes = type_size(line), type_size(last)
        return min(sizes) < SAME_SIZE * max(sizes)

    return _cut(part, apart)


def _hard_breaks(block: list[_Line]) -> list[list[_Line]]:
    """`block` cut after every line the next one's first word would have fitted after.
    Widths, not right edges, so that centred text is judged alike; the word's width is
    estimated from its share of its line's characters, with a margin of one line height
    (about two characters) for box padding and proportional type."""
    if len(block) < 2:
        return [block]
    widest = max(line.box[2] - line.box[0] for line in block)

    def broken(last: _Line, line: _Line) -> bool:
        word = (line.box[2] - line.box[0]) * (len(line.text.split()[0]) + 1) / max(1, len(line.text))
        return (last.box[2] - last.box[0]) + word + max(last.height, line.height) < widest

    return _cut(block, broken)


def _cut(lines: list[_Line], between: Callable[[_Line, _Line], bool]) -> list[list[_Line]]:
    """`lines` cut between every two consecutive lines `between` says are apart."""
    parts, current = [], [lines[0]]
    for line in lines[1:]:
        if between(current[-1], line):
            parts.append(current)
            current = [line]
        else:
            current.append(line)
    parts.append(current)
    return parts


def _union(a: Box, b: Box) -> Box:
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def is_blank(text: str) -> bool:
    """Nothing to read: only whitespace, control and format characters (zero-width
    spaces, byte order marks, direction marks): such text is no text, not something the
    customer wrote to be classified."""
    return all(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf") for ch in text)
