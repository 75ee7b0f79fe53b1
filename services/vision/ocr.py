"""Screen text: PP-OCR detection + recognition (ONNX) through rapidocr, models bundled.

Lines come back in reading order (rows top to bottom, then left to right; see
common/layout.py) with their recognition confidence and an axis-aligned box in input
pixels.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

from modalmesh.common.layout import reading_order

log = logging.getLogger(__name__)


@dataclass
class TextLine:
    text: str
    confidence: float
    box: tuple[float, float, float, float]  # x_min, y_min, x_max, y_max


class ScreenReader:
    def __init__(self) -> None:
        from rapidocr import RapidOCR

        # "error": an image without text is a normal answer here, not a warning.
        self._engine = RapidOCR(params={"Global.log_level": "error"})
        self._lock = threading.Lock()  # one image at a time: onnxruntime already uses every core

    def read(self, rgb: np.ndarray) -> list[TextLine]:
        with self._lock:
            result = self._engine(np.ascontiguousarray(rgb))
        if result is None or result.txts is None or result.boxes is None:
            return []
        lines = {}
        for text, score, quad in zip(result.txts, result.scores, result.boxes):
            quad = np.asarray(quad, dtype=np.float32)
            box = (float(quad[:, 0].min()), float(quad[:, 1].min()), float(quad[:, 0].max()), float(quad[:, 1].max()))
            lines[(str(text), box)] = TextLine(str(text), float(score), box)
        # Reading order: rows top to bottom (vertical centres within half a height), then left to right.
        return [lines[span] for row in reading_order(lines) for span in row]
