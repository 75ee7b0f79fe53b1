"""Screen text: PP-OCR detection + recognition (ONNX) through rapidocr, models bundled.

Lines come back in reading order (rows top to bottom, then left to right; see
common/layout.py) with their recognition confidence and an axis-aligned box in input
pixels.
"""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass

import numpy as np

from modalmesh.common.config import DEFAULT_OCR_ENGINE, OCR_ENGINES
from modalmesh.common.layout import reading_order

log = logging.getLogger(__name__)


@dataclass
class TextLine:
    text: str
    confidence: float
    box: tuple[float, float, float, float]  # x_min, y_min, x_max, y_max


# Detection's input size. The engine's own rule (det_side 0, the default) scales the
# *shorter* side to 736 px, so a 1024x640 screenshot is detected at 1178x736 and a
# 390x760 phone screen at 736x1434: most of OCR's time goes to upscaled pixels. A cap
# on the longer side (never scaling up; CAPPED_DET_SIDE) reads the same messages in
# about 60% of the time (benchmarks/bench_encoders.py section 3) but draws looser boxes,
# which changes how lines group into paragraphs (common/layout.py). The shipped
# screenshot_triage weights were trained on the engine's rule; retrained on capped
# detection they scored lower on validation (README, "Shipped weights"), so the cap is
# an option (`ocr_det_side`), not the default.
CAPPED_DET_SIDE = 960


class ScreenReader:
    def __init__(self, det_side: int = 0, engine: str = DEFAULT_OCR_ENGINE) -> None:
        """`engine`: what runs the same PP-OCR models, openvino (about 2x faster on this
        machine's CPU) or onnxruntime; the same messages, boxes within a few pixels
        (benchmarks/bench_encoders.py and README)."""
        from rapidocr import EngineType, RapidOCR

        # "error": an image without text is a normal answer here, not a warning.
        params = {"Global.log_level": "error"}
        if det_side > 0:
            params.update({"Det.limit_type": "max", "Det.limit_side_len": int(det_side)})
        runtime = EngineType(engine)  # config.OCR_ENGINES: "onnxruntime" or "openvino"
        params.update({"Det.engine_type": runtime, "Cls.engine_type": runtime, "Rec.engine_type": runtime})
        try:  # rapidocr loads the runtime only at the first image: say now if it is missing
            importlib.import_module(engine)
        except ImportError as exc:  # e.g. a platform without OpenVINO wheels
            raise RuntimeError(f"OCR engine {engine}: {engine} is not installed ({exc}); install it, or run OCR on "
                               f"another engine (--ocr-engine / MODALMESH_VISION_OCR_ENGINE: {', '.join(OCR_ENGINES)})") from exc
        self._engine = RapidOCR(params=params)
        self._lock = threading.Lock()  # one image at a time: the runtime already uses every core
        log.info("OCR: PP-OCR on %s", engine)

    def warm_up(self) -> list[TextLine]:
        """Run detection, the angle classifier and recognition once, on a line of text: the
        first image with text costs OpenVINO about 0.3 s more than the next (measured on a
        1024x640 screenshot: 588 ms after a blank warm-up, 255 ms after this one)."""
        from PIL import Image, ImageDraw, ImageFont

        image = Image.new("RGB", (640, 400), "white")
        ImageDraw.Draw(image).text((40, 40), "Warming up: OCR 0123456789", fill="black", font=ImageFont.load_default(size=24))
        return self.read(np.asarray(image))

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
