"""Screen text: PP-OCR detection + recognition (ONNX) through rapidocr, models bundled.

Lines come back in reading order (rows top to bottom, then left to right; see
common/layout.py) with their recognition confidence and an axis-aligned box in input
pixels.

Long pages (a scrolling capture taller than TILE_ASPECT times its width) are read in
overlapping tiles: the engine fits every image into 2000 px on its longer side before
detection, which turns the text of a 1080x10800 capture into 20-px-wide smears (and a
1:125 strip into an error); very wide images and narrow strips are padded instead
(_pad_to_page). Each tile keeps the lines whose centre falls in its own
band; the overlap is wider than a line, so a line on a border is read whole by the
tile that keeps it.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import importlib
import logging
import math
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from modalmesh.common.batching import Engine, deadline_after
from modalmesh.common.config import DEFAULT_OCR_ENGINE, DEFAULT_OPENVINO_SHAPES, OCR_ENGINES
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
# detection they answered far fewer held-out screens (docs/training.md, "Shipped weights
# and what they measure"), so the cap is an option (`ocr_det_side`), not the default.
CAPPED_DET_SIDE = 960


def detection_size(height: int, width: int, limit_type: str, limit_side: int, quick_side: int | None = None) -> tuple[str, int]:
    """The detector's (limit_type, limit_side_len) for one image: its own (`limit_type`
    "min": the shorter side scaled up to `limit_side`; "max": the longer side down to it).
    With `quick_side` (the quick reading): the scale the detector's own rule gives, but at
    most `quick_side` px on the longer side. A small screen is then detected at the full
    reading's scale or near it, not smaller: the full reading scales a 800x600 screen up to
    981x736, where lines stand apart that merge at 800x600; a large one is scaled down to
    `quick_side`, where the time is saved."""
    if not quick_side:
        return limit_type, limit_side
    shorter, longer = min(height, width), max(height, width)
    if limit_type == "min":
        own = max(1.0, limit_side / shorter)
    else:
        own = min(1.0, limit_side / longer)
    scale = min(own, quick_side / longer)
    if scale > 1.0:  # "min" scales the shorter side up to this
        return "min", round(shorter * scale)
    return "max", round(longer * scale)  # "max" scales the longer side down to this, never up


TILE_ASPECT = 3.0  # a page taller than this many widths is read in tiles (phones are about 2.2)
MIN_TILE_WIDTH = 200  # px: anything narrower is no page (a strip is read in one pass)
WIDE_ASPECT = 8.0  # a wider image is padded to this (tiles across would cut its lines)
ENGINE_MAX_SIDE = 2000  # the engine's Global.max_side_len: it shrinks every image to this first
TILE_OVERLAP = 0.1  # of the width, on each side of a tile's band: more than a line's height


# Recognition costs about 5 ms per short text line here (more for long ones): a 1920x1920
# screen of 608 short lines takes 2.9 s, a 1080x8000 page of 921 lines 5.1 s, holding the
# one OCR engine all that time (0.8 and 0.6 s with the default cap).
# A screen's message is near its top and the router reads 32 paragraphs at most
# (common/layout.MAX_SCREEN_LINES); the built-in screenshots have at most 9 lines.
DEFAULT_MAX_LINES = 100


# OpenVINO keeps a model's intermediate buffers at the size of the largest input it has
# run: about 0.3 GB for detection on a 1024x640 screenshot, 0.6 GB after a few pages of odd
# sizes. Once OCR has had nothing to read for this long they are released
# (ScreenReader.release_memory: 1.0 GB back to 0.4 GB here); the next read allocates them
# again, about 20 ms.
IDLE_RELEASE_S = 30.0


class ScreenText(list):
    """The lines read, in reading order; `more` is True when text was left unread
    (ScreenReader's max_lines: more boxes than that, or tiles of a long page below them)."""

    more: bool = False


# Recognition reads its line crops in batches, each padded to its widest line. OpenVINO
# prepares its kernels per input shape, and a width it has not seen costs 20-120 ms more
# than the same width again (the recognition model, widths 320-960); widths rounded up to
# a step repeat far more often (32 px: 23 ms less per browser-drawn page on first sight,
# the same time on a page seen before; wider steps pad more than they save).
REC_WIDTH_STEP = 32

# The recognition model sees every line of a batch padded to the batch's widest (and to its
# 320-px minimum). Batched six at a time in order of width, as rapidocr does, a short label
# sharing a batch with a long message is padded to the message's width: on the test
# screenshots a third of what the model read was padding. Lines are batched here only with
# lines at most REC_GROUP_SPREAD wider than the narrowest of their batch (all lines under
# the minimum width share one), so each line is read at about its own width whatever else
# is on the screen: 5-13 ms less OCR per screen (test screenshots, e-mails, browser pages),
# and the screens' messages read as before or better.
REC_GROUP_SPREAD = 0.1
REC_GROUP_MAX = 6  # lines per model call at most (rapidocr's own batch)


# The Latin alphabet of a reading with `latin` (the quick reading). Recognition's last layer
# scores all 18,710 characters of the bundled model (Latin, Greek, CJK, kana, symbols) at
# every step of a line, about a quarter of its model time; scoring the 547 in Latin script
# (letters with their accents, digits, punctuation, currency signs) reads every line of the
# test, held-out and browser screenshots (8,488) to the same text in 11-13% less OCR time at
# the quick detection size (benchmarks/bench_ocr_alphabet.py). Text in another script has
# no Latin character that scores well: where some step of a line has no Latin character
# (blank included) scoring LATIN_MIN_SCORE, the line is read again with every character.
# Measured: every step of 99% of 1,998 lines of those screenshots scores 9 or more (the
# lowest, 0 to 8, are accented words and small type, read again at little cost); every line
# with a Chinese, Japanese or Greek character tried has a step under 7.5 (tests in
# tests/test_vision_service.py).
LATIN_MIN_SCORE = 8.0


def is_latin(character: str) -> bool:
    """A character of the Latin alphabet reading (LATIN_MIN_SCORE): Latin script with its
    extensions, general punctuation (dashes, quotes, bullets), currency signs."""
    if len(character) != 1:
        return False
    code = ord(character)
    return code < 0x250 or 0x2000 <= code < 0x2070 or 0x20A0 <= code < 0x20D0 or character == "\u2122"


class ScreenReader:
    def __init__(
        self, det_side: int = 0, engine: str = DEFAULT_OCR_ENGINE, max_lines: int = DEFAULT_MAX_LINES, shapes: int = DEFAULT_OPENVINO_SHAPES, latin: bool = True
    ) -> None:
        """`engine`: what runs the same PP-OCR models, openvino (about 2x faster on this
        machine's CPU) or onnxruntime; the same messages, boxes within a few pixels
        (benchmarks/bench_encoders.py and README). `max_lines`: the most text lines
        recognised per image, the first in reading order (tiles of a long page count
        together); detection still sees the whole image. `shapes`: on openvino, the input
        shapes each model keeps prepared (detection: one per image size it scales to;
        recognition: one per line width and batch), about 3 MB each (openvino_shapes).
        `latin`: prepare the Latin alphabet reading (read's `latin`; openvino only)."""
        from rapidocr import EngineType, RapidOCR

        # "error": an image without text is a normal answer here, not a warning. No angle
        # classifier: screen text is upright, and the classifier turns short upright words
        # and small type over ("Edit" at 12-20 px: 180 degrees at 0.98), which then reads as
        # garbage.
        params: dict[str, object] = {"Global.log_level": "error", "Global.use_cls": False}
        if det_side > 0:
            params.update({"Det.limit_type": "max", "Det.limit_side_len": int(det_side)})
        runtime = EngineType(engine)  # config.OCR_ENGINES: "onnxruntime" or "openvino"
        params.update({"Det.engine_type": runtime, "Cls.engine_type": runtime, "Rec.engine_type": runtime})
        try:  # rapidocr loads the runtime only at the first image: say now if it is missing
            importlib.import_module(engine)
        except ImportError as exc:  # e.g. a platform without OpenVINO wheels
            raise RuntimeError(
                f"OCR engine {engine}: {engine} is not installed ({exc}); install it, or run OCR on "
                f"another engine (--ocr-engine / MODALMESH_VISION_OCR_ENGINE: {', '.join(OCR_ENGINES)})"
            ) from exc
        self._engine = RapidOCR(params=params)
        self._engine_turns = Engine("OCR")  # one image at a time: the runtime already uses every core
        self.max_lines = max_lines
        # Between detection and recognition, keep the first `_budget` boxes (detection
        # returns them sorted top to bottom, then left to right). Set during the engine's turn.
        self._budget, self._detected = max_lines, 0
        detect_and_crop = getattr(self._engine, "detect_and_crop", None)  # rapidocr 3.5+ (pyproject pins it)
        if detect_and_crop is None:
            raise RuntimeError("OCR: this rapidocr has no detect_and_crop step, which the line cap (ocr_max_lines) wraps; install rapidocr>=3.5")

        def capped(img, op_record):
            crops, found = detect_and_crop(img, op_record)
            self._detected = len(crops)
            if len(crops) > self._budget:
                crops, found.boxes = crops[: self._budget], found.boxes[: self._budget]
                found.scores = None if found.scores is None else list(found.scores)[: self._budget]
            return crops, found

        setattr(self._engine, "detect_and_crop", capped)

        with openvino_shapes_kept(shapes) if engine == "openvino" else contextlib.nullcontext():
            self._detector = self._engine._load_det_model()  # its size is read at every image (read's det_side)
            recognizer = self._engine._load_rec_model()  # rapidocr loads it lazily; loaded now to wrap its resize
        make_preprocess = self._detector.get_preprocess  # rapidocr makes one per image, with the detector's size
        table = normalisation_table(make_preprocess())
        setattr(self._detector, "get_preprocess", lambda: TablePreprocess(make_preprocess(), table))
        resize, height = recognizer.resize_norm_img, int(recognizer.rec_image_shape[1])

        def width_in_steps(img, max_wh_ratio):
            width = rec_width(height, max_wh_ratio)
            return resize(img, (width + 0.5) / height)  # the half pixel survives the engine's int()

        setattr(recognizer, "resize_norm_img", width_in_steps)
        self._latin = LatinHead.on(recognizer, shapes) if latin and engine == "openvino" else None
        if latin and engine != "openvino":
            log.info("OCR: the quick reading recognises every character (its Latin alphabet head runs on openvino only)")
        self._recognition = GroupedRecognition(recognizer, height, int(recognizer.rec_image_shape[2]), self._latin)
        setattr(self._engine, "text_rec", self._recognition)  # what the engine calls to recognise
        # OpenVINO's compiled models (their buffers are released when OCR is idle); none on onnxruntime.
        self._compiled = _compiled_models((self._detector, recognizer)) if engine == "openvino" else []
        if self._latin is not None:
            self._compiled.append(self._latin.compiled)
        self._idle_timer: threading.Timer | None = None
        self._idle_lock = threading.Lock()
        self.releases = 0  # times the buffers were released
        log.info("OCR: PP-OCR on %s", engine)

    def warm_up(self) -> list[TextLine]:
        """Run detection and recognition once, on a line of text: the
        first image with text costs OpenVINO about 0.3 s more than the next (measured on a
        1024x640 screenshot: 588 ms after a blank warm-up, 255 ms after this one)."""
        from PIL import Image, ImageDraw, ImageFont

        image = Image.new("RGB", (640, 400), "white")
        ImageDraw.Draw(image).text((40, 40), "Warming up: OCR 0123456789", fill="black", font=ImageFont.load_default(size=24))
        if self._latin is not None:
            self.read(np.asarray(image), latin=True)
        return self.read(np.asarray(image))

    @property
    def reads_latin(self) -> bool:
        """Whether read's `latin` reads the Latin alphabet first (else every character)."""
        return self._latin is not None

    def read(
        self, rgb: np.ndarray, timeout: float | None = None, wanted: Callable[[], bool] | None = None, det_side: int | None = None, latin: bool = False
    ) -> ScreenText:
        """`det_side`: detect at the reader's own scale but at most this many px on the
        longer side (the quick reading; detection_size).
        `latin`: recognise with the Latin alphabet (LATIN_MIN_SCORE), each line with a
        character outside it again with every character (the quick reading; where the
        reader has no Latin head, every character at once).
        `timeout`: seconds the caller can still wait; DEADLINE_EXCEEDED (ServiceError)
        when they run out, checked before each tile and while another image is read;
        `wanted`: whether the caller is still there, checked likewise (CANCELLED once not).
        Lines come with the recognition's confidence; the router does not read those under
        layout.MIN_SPAN_CONFIDENCE (garbled)."""
        try:
            return self._read(rgb, deadline_after(timeout), wanted, det_side, latin)
        finally:
            self._release_when_idle()

    def _read(self, rgb: np.ndarray, deadline: float | None, wanted: Callable[[], bool] | None, det_side: int | None, latin: bool = False) -> ScreenText:
        rgb, scale = _pad_to_page(rgb)
        lines: dict[tuple, TextLine] = {}
        budget, more = self.max_lines, False
        for top, bottom, keep_from, keep_to in _tiles(*rgb.shape[:2]):
            if budget <= 0:  # the lines read so far are all that will be: the tiles below are not read
                more = True
                break
            read, detected = self._read_once(rgb[top:bottom], deadline, budget, wanted, det_side, latin)
            more = more or detected > budget
            budget -= min(detected, budget)  # boxes recognised (some may score too low to be kept)
            for line in read:
                x0, y0, x1, y1 = line.box
                box = (x0 / scale, (y0 + top) / scale, x1 / scale, (y1 + top) / scale)
                if keep_from <= (y0 + y1) / 2 + top < keep_to:
                    lines[(line.text, box)] = TextLine(line.text, line.confidence, box)
        # Reading order: rows top to bottom (vertical centres within half a height), then left to right.
        text = ScreenText(lines[span] for row in reading_order(lines) for span in row)
        text.more = more
        return text

    def release_memory(self) -> bool:
        """Release OpenVINO's intermediate buffers of the OCR models (the next read allocates
        them again) and return freed heap to the system; False, doing nothing, while a read
        holds the engine."""
        if not self._engine_turns.take_now(1):
            return False
        try:
            for model in self._compiled:
                model.release_memory()
            _trim_heap()
            self.releases += 1
        finally:
            self._engine_turns.give_back(1)
        return True

    def _release_when_idle(self) -> None:
        """(Re)start the countdown to release_memory: IDLE_RELEASE_S after the last read."""
        if not self._compiled:
            return
        with self._idle_lock:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            self._idle_timer = threading.Timer(IDLE_RELEASE_S, self.release_memory)
            self._idle_timer.daemon = True
            self._idle_timer.start()

    def _read_once(
        self,
        rgb: np.ndarray,
        deadline: float | None,
        budget: int,
        wanted: Callable[[], bool] | None = None,
        det_side: int | None = None,
        latin: bool = False,
    ) -> tuple[list[TextLine], int]:
        """The lines of one image, at most `budget`, and how many text boxes it has."""
        with self._engine_turns.turn(deadline, wanted):
            self._budget, self._detected = budget, 0
            self._recognition.latin_first = latin and self._latin is not None
            detector = self._detector
            size = (detector.limit_type, detector.limit_side_len)
            detector.limit_type, detector.limit_side_len = detection_size(rgb.shape[0], rgb.shape[1], size[0], size[1], det_side)
            try:
                result: Any = self._engine(np.ascontiguousarray(rgb))  # RapidOCROutput for a whole image
            finally:
                detector.limit_type, detector.limit_side_len = size
                self._recognition.latin_first = False
            detected = self._detected
        if result is None or result.txts is None or result.boxes is None:
            return [], detected
        lines = []
        for text, score, quad in zip(result.txts, result.scores, result.boxes):
            quad = np.asarray(quad, dtype=np.float32)
            box = (float(quad[:, 0].min()), float(quad[:, 1].min()), float(quad[:, 0].max()), float(quad[:, 1].max()))
            lines.append(TextLine(str(text), float(score), box))
        return lines, detected


def _compiled_models(parts: tuple[Any, ...]) -> list[Any]:
    """The OpenVINO CompiledModel behind each of rapidocr's model steps (reached through the
    infer request rapidocr keeps); none, with a warning, where this rapidocr keeps them elsewhere."""
    try:
        return [part.session.session.get_compiled_model() for part in parts]
    except AttributeError:
        log.warning("OCR: this rapidocr keeps its OpenVINO models where the reader does not look; their buffers are not released when idle")
        return []


def _trim_heap() -> None:
    """Hand the C heap's free memory back to the system (glibc's malloc_trim; elsewhere nothing)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


@contextlib.contextmanager
def openvino_shapes_kept(shapes: int) -> Iterator[None]:
    """rapidocr's OpenVINO models loaded inside this block keep at most `shapes` input
    shapes prepared (OpenVINO's CPU_RUNTIME_CACHE_CAPACITY; its own default of 5000 let OCR
    grow by 0.7 GB on screenshots of 240 sizes: docs/limits.md). rapidocr passes only the
    settings it knows to OpenVINO, so its CPU settings class is swapped for the block."""
    from rapidocr.inference_engine.openvino import main as rapidocr_openvino

    known = rapidocr_openvino.CPUConfig

    class Bounded(known):  # type: ignore[misc, valid-type]
        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "CPU_RUNTIME_CACHE_CAPACITY": str(shapes)}

    setattr(rapidocr_openvino, "CPUConfig", Bounded)
    try:
        yield
    finally:
        setattr(rapidocr_openvino, "CPUConfig", known)


def rec_width(height: int, ratio: float) -> int:
    """The width recognition reads a line of width/height `ratio` at: its own, rounded up
    to REC_WIDTH_STEP."""
    return math.ceil(height * ratio / REC_WIDTH_STEP) * REC_WIDTH_STEP


class LatinHead:
    """rapidocr's recognition model with its last layer cut to the Latin alphabet
    (is_latin), as an OpenVINO model of two outputs: the characters' probabilities, and per
    step of each line the best Latin score (before the softmax), which LATIN_MIN_SCORE
    judges. `recognizer` is a copy of rapidocr's TextRecognizer that runs it."""

    def __init__(self, recognizer: Any, shapes: int) -> None:
        import openvino as ov
        import openvino.opset13 as opset
        from rapidocr.ch_ppocr_rec.utils import CTCLabelDecode

        characters = list(recognizer.postprocess_op.character)  # "blank", the model's characters, " "
        keep = np.array([0] + [i for i in range(1, len(characters)) if is_latin(characters[i])])
        model = recognizer.session.model  # the OpenVINO runner rapidocr keeps holds the model it read
        softmax = _producer(model.get_results()[0], "Softmax")
        bias = _producer(softmax, "Add")
        matmul = _producer(bias, "MatMul")
        weights, offsets = (node.input_value(1).get_node().get_data() for node in (matmul, bias))
        if weights.shape != (weights.shape[0], len(characters)) or offsets.shape != (len(characters),):
            raise ValueError(f"the last layer scores {weights.shape[-1]} characters, the dictionary has {len(characters)}")
        scores = opset.add(
            opset.matmul(matmul.input_value(0), opset.constant(np.ascontiguousarray(weights[:, keep])), False, False),
            opset.constant(np.ascontiguousarray(offsets[keep])),
        )
        outputs = [opset.softmax(scores, -1).output(0), opset.reduce_max(scores, opset.constant(np.array([-1])), False).output(0)]
        self.compiled = ov.Core().compile_model(ov.Model(outputs, model.get_parameters(), "latin"), "CPU", {"CPU_RUNTIME_CACHE_CAPACITY": str(shapes)})
        self._request = self.compiled.create_infer_request()
        self.best: np.ndarray = np.zeros((0, 0), dtype=np.float32)  # [lines, steps] of the last call
        self.recognizer = copy.copy(recognizer)
        self.recognizer.session = self
        # CTCLabelDecode puts "blank" first and " " last itself.
        self.recognizer.postprocess_op = CTCLabelDecode(character=[characters[i] for i in keep[1:-1]])

    @classmethod
    def on(cls, recognizer: Any, shapes: int) -> "LatinHead | None":
        """The head, or None with a warning where this rapidocr's model is not as expected
        (every character is then read at once)."""
        try:
            return cls(recognizer, shapes)
        except (AttributeError, IndexError, ValueError, RuntimeError) as exc:
            log.warning("OCR: no Latin alphabet reading (%s); the quick reading reads every character", exc)
            return None

    def __call__(self, batch: np.ndarray) -> np.ndarray:  # rapidocr calls this in place of its runner
        self._request.infer([batch])
        self.best = np.array(self._request.get_output_tensor(1).data)
        return self._request.get_output_tensor(0).data


def _producer(node: Any, kind: str) -> Any:
    """The node of type `kind` feeding `node`'s first input, through Identity nodes."""
    source = node.input_value(0).get_node()
    while source.get_type_name() == "Identity":
        source = source.input_value(0).get_node()
    if source.get_type_name() != kind:
        raise ValueError(f"expected {kind} before {node.get_type_name()}, found {source.get_type_name()}")
    return source


class GroupedRecognition:
    """rapidocr's recognition step (its TextRecognizer, which the engine calls with every
    line crop of an image) with the crops batched by width (REC_GROUP_SPREAD) instead of six
    at a time; the results in the crops' order. With `latin_first` (set for one reading)
    the crops are read with the `latin` head, and those it cannot read with every character."""

    def __init__(self, recognizer: Any, height: int, min_width: int, latin: LatinHead | None = None) -> None:
        self.recognizer, self.height, self.min_width = recognizer, height, min_width
        self.latin, self.latin_first = latin, False
        for one in (recognizer, latin.recognizer) if latin is not None else (recognizer,):
            one.rec_batch_num = REC_GROUP_MAX  # a group is one model call (outside_latin reads that call's scores)
        self.read_again = 0  # lines the Latin alphabet could not read, read again with every character

    def width(self, crop: np.ndarray) -> int:
        """The width the model reads `crop` at alone (ScreenReader's width_in_steps)."""
        return max(self.min_width, rec_width(self.height, crop.shape[1] / max(1, crop.shape[0])))

    def groups(self, crops: list[np.ndarray]) -> list[list[int]]:
        """Indices of `crops`, narrowest first, in batches of about one width."""
        widths = [self.width(crop) for crop in crops]
        groups: list[list[int]] = []
        for index in sorted(range(len(crops)), key=widths.__getitem__):
            if groups and len(groups[-1]) < REC_GROUP_MAX and widths[index] <= widths[groups[-1][0]] * (1 + REC_GROUP_SPREAD):
                groups[-1].append(index)
            else:
                groups.append([index])
        return groups

    def __call__(self, args: Any) -> Any:
        from rapidocr.ch_ppocr_rec.typings import TextRecOutput

        crops = [args.img] if isinstance(args.img, np.ndarray) else list(args.img)
        if not crops:
            return self.recognizer(args)
        results: list[Any] = [None] * len(crops)  # (text, score, word boxes) per crop
        every = list(range(len(crops)))
        latin = self.latin if self.latin_first else None
        reads: list[Any] = []  # rapidocr's output per model call
        again = self._recognise(crops, every, latin, args.return_word_box, results, reads)
        if again:  # the lines the Latin alphabet could not read, with every character
            self.read_again += len(again)
            self._recognise(crops, again, None, args.return_word_box, results, reads)
        txts, scores, words = zip(*results)
        elapse = sum(read.elapse or 0.0 for read in reads)
        return TextRecOutput(imgs=crops, txts=txts, scores=list(scores), word_results=words, elapse=elapse, viser=reads[-1].viser)

    def _recognise(
        self, crops: list[np.ndarray], indices: list[int], latin: LatinHead | None, word_boxes: bool, results: list[Any], reads: list[Any]
    ) -> list[int]:
        """Recognise `crops[indices]` in groups of about one width, with the `latin` head or
        (None) every character, into `results` (each model call's output added to `reads`);
        returns the indices the head could not read."""
        from rapidocr.ch_ppocr_rec.typings import TextRecInput

        recognizer = latin.recognizer if latin is not None else self.recognizer
        unread = []
        for group in self.groups([crops[i] for i in indices]):
            group = [indices[i] for i in group]
            read = recognizer(TextRecInput(img=[crops[i] for i in group], return_word_box=word_boxes))
            reads.append(read)
            for position, index in enumerate(group):
                results[index] = (read.txts[position], read.scores[position], read.word_results[position])
            if latin is not None:
                unread += [group[position] for position in sorted(self.outside_latin([crops[i] for i in group], latin.best))]
        return unread

    def outside_latin(self, crops: list[np.ndarray], best: np.ndarray) -> set[int]:
        """Positions in `crops` (one model call) with a step whose best Latin score is under
        LATIN_MIN_SCORE. `best`: [lines, steps], the lines in the order rapidocr's
        recognizer batched them (by width, its own argsort); each line is judged on its own
        steps, not the padding after it."""
        ratios = [crop.shape[1] / float(crop.shape[0]) for crop in crops]
        widest = max([self.min_width / self.height, *ratios])
        outside = set()
        for row, position in enumerate(np.argsort(np.array(ratios))):
            steps = max(1, math.ceil(best.shape[1] * min(1.0, ratios[position] / widest)))
            if float(best[row, :steps].min()) < LATIN_MIN_SCORE:
                outside.add(int(position))
        return outside


def normalisation_table(preprocess: Any) -> np.ndarray:
    """[3, 256] float32: what rapidocr's detection preprocessing (`DetPreProcess`) makes of
    each 8-bit value in each channel, computed by its own normalize."""
    values = np.arange(256, dtype=np.uint8)[:, None, None].repeat(3, axis=2)  # [256, 1, 3]
    return np.ascontiguousarray(preprocess.normalize(values)[:, 0, :].T.astype(np.float32))


class TablePreprocess:
    """rapidocr's detection preprocessing (resized to multiples of 32, normalised per
    channel, channels first, a batch of one) with the normalisation looked up per 8-bit
    value instead of computed per pixel: the same float32 numbers, in a sixth of the time
    (1.3 against 7.9 ms for a 960x544 screen). Anything but an 8-bit RGB image goes the
    engine's own way."""

    def __init__(self, preprocess: Any, table: np.ndarray) -> None:
        self.preprocess, self.table = preprocess, table

    def __call__(self, img: np.ndarray) -> np.ndarray | None:
        resized = self.preprocess.resize(img)
        if resized is None:
            return None
        if resized.dtype != np.uint8 or resized.ndim != 3 or resized.shape[2] != 3:
            return self.preprocess(img)
        planes = np.empty((1, 3, *resized.shape[:2]), dtype=np.float32)
        for channel in range(3):
            np.take(self.table[channel], resized[..., channel], out=planes[0, channel])
        return planes


def _tiles(height: int, width: int) -> list[tuple[int, int, float, float]]:
    """(top, bottom, keep_from, keep_to) rows per tile: one tile unless the page is tall."""
    if height <= TILE_ASPECT * width or width < MIN_TILE_WIDTH:
        return [(0, height, -math.inf, math.inf)]
    count = math.ceil(height / (TILE_ASPECT * width * 0.8))  # bands plus overlaps stay under TILE_ASPECT
    band, overlap = height / count, int(TILE_OVERLAP * width) + 1
    tiles: list[tuple[int, int, float, float]] = []
    for index in range(count):
        keep_from, keep_to = round(index * band), round((index + 1) * band)
        tiles.append(
            (max(0, keep_from - overlap), min(height, keep_to + overlap), keep_from if index else -math.inf, keep_to if index < count - 1 else math.inf)
        )
    return tiles


def _pad_to_page(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """An image wider than WIDE_ASPECT, or a tall one too narrow to tile (to TILE_ASPECT),
    padded with its border's median colour after its end: the engine scales the shorter
    side to 736 px, so a 1:60 strip would be detected at 736 x 44000 px (18 s) or, past
    1:125, fail. Such an image is first shrunk to ENGINE_MAX_SIDE on its longer side, as
    the engine would do anyway, so the padding stays small (a 1,000,000 x 40 strip, 40 MP,
    would need 375 GB otherwise). Returns the image and the scale its boxes are read at."""
    height, width = rgb.shape[:2]
    if _padding(height, width) == (0, 0):
        return rgb, 1.0
    scale = min(1.0, ENGINE_MAX_SIDE / max(height, width))
    if scale < 1.0:
        from PIL import Image

        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rgb = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize(size, Image.Resampling.BILINEAR))
        height, width = rgb.shape[:2]
    rows, cols = _padding(height, width)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    padded = np.empty((height + rows, width + cols, 3), dtype=rgb.dtype)
    padded[...] = np.median(border, axis=0).astype(rgb.dtype)
    padded[:height, :width] = rgb
    return padded, scale


def _padding(height: int, width: int) -> tuple[int, int]:
    """(rows, columns) to add: to WIDE_ASPECT when wider, to TILE_ASPECT when a tall strip
    is too narrow to tile."""
    rows = max(0, math.ceil(width / WIDE_ASPECT) - height)
    cols = max(0, math.ceil(height / TILE_ASPECT) - width) if width < MIN_TILE_WIDTH else 0
    return rows, cols
