"""The image encoder service: `modalmesh serve vision`.

Input: PNG, JPEG, WebP, BMP, TIFF or DICOM. Output: one feature row per cell of the
backbone's spatial grid, side outputs (DICOM tags and PixelSpacing always; for CT with
a PixelSpacing, lung-lesion measurements in HU (measure.py); OCR lines when the header
asks for "ocr"), then the pooled vector. Concurrent calls are batched.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
from opentelemetry import context as otel_context

from modalmesh.common import codec, errors, telemetry
from modalmesh.common.batching import Budget, DynamicBatcher, deadline_after
from modalmesh.common.compiled import OpenVINOSettings, serving_engine
from modalmesh.common.config import ServiceConfig
from modalmesh.common.encoder import EncodeRequest, EncoderBackend, sequence_chunks
from modalmesh.v1 import encoder_pb2
from modalmesh.vision.decode import IMAGE_MEDIA_TYPES, decode_image, pixel_count
from modalmesh.vision.measure import lesion_tags, measurement_tags
from modalmesh.vision.model import ImageBackbone, ImageFeatures

if TYPE_CHECKING:  # loaded only when OCR is on (its engine is heavy)
    from modalmesh.vision.ocr import ScreenReader, ScreenText

MAX_PIXELS = 40_000_000  # 40 MP: any screenshot or scan; a decompression bomb is far larger


class VisionService(EncoderBackend):
    name = "vision"
    modality = "image"
    feature_kind = encoder_pb2.FEATURE_KIND_PATCHES
    media_types = IMAGE_MEDIA_TYPES
    # Side outputs a caller may ask for: screen text, read at the OCR's size ("ocr") or at
    # the quick size (`ocr_quick_det_side`; "ocr_quick"); the CT lung-lesion measurement.
    options = ("ocr", "ocr_quick", "lesions")
    readings = ("ocr", "ocr_quick")  # the screen text options: one per request
    default_datatype = "FP16"

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.max_input_bytes = config.max_input_bytes
        self.max_pixels = config.max_pixels or MAX_PIXELS
        # Decoded images cost about 25 bytes per pixel at the peak (RGB copies, OCR's
        # buffers): 8 concurrent 40 MP images would need 5 GB, past the pod's 3 GiB.
        # Requests hold their pixels until they are answered.
        self.pixels = Budget(config.max_pixels_in_flight, "decoded pixels (max_pixels_in_flight)")
        self.backbone: ImageBackbone | None = None
        self.batcher: DynamicBatcher[np.ndarray, ImageFeatures] | None = None
        self.reader: ScreenReader | None = None
        # One thread per call the service takes at once: a reading never queues here, only
        # for the OCR engine, where its deadline is watched.
        self.ocr_threads = ThreadPoolExecutor(max_workers=config.worker_threads, thread_name_prefix="ocr")

    def _read_screen(self, rgb: np.ndarray, request: EncodeRequest, reading: str, wanted) -> tuple[ScreenText, float]:
        """The screen text and the milliseconds it took (on an OCR thread)."""
        assert self.reader is not None
        started = time.perf_counter()
        quick = reading == "ocr_quick"
        with telemetry.tracer().start_as_current_span("vision.ocr"):
            lines = self.reader.read(
                rgb,
                timeout=request.time_remaining(),
                wanted=wanted,
                det_side=self.config.ocr_quick_det_side if quick else None,
                latin=quick,  # where the reader has no Latin head (ocr_quick_alphabet all), every character
            )
        return lines, (time.perf_counter() - started) * 1000.0

    # -- lifecycle -------------------------------------------------------------------
    def initialize(self) -> None:
        config = self.config
        self.backbone = ImageBackbone(config.model, config.allow_download, config.quantize, serving_engine(config), OpenVINOSettings.of(config))
        self.batcher = DynamicBatcher(
            self._run_batch,
            max_batch_size=self.config.max_batch_size,
            max_delay_ms=self.config.max_batch_delay_ms,
            max_queue=self.config.max_queue,
            name="vision",
        )
        self.batcher.submit(np.full((64, 64, 3), 127, dtype=np.uint8))  # warm, on the model's thread
        if self.config.ocr:
            from modalmesh.vision.ocr import ScreenReader

            config, latin = self.config, self.config.ocr_quick_alphabet == "latin"
            self.reader = ScreenReader(config.ocr_det_side, config.ocr_engine, config.ocr_max_lines, config.openvino_shapes, latin=latin)
            self.reader.warm_up()

    def finalize(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.ocr_threads.shutdown(wait=False, cancel_futures=True)

    @property
    def loaded(self) -> tuple[ImageBackbone, DynamicBatcher[np.ndarray, ImageFeatures]]:
        """The backbone and its batcher; the runtime calls nothing else before initialize()."""
        assert self.backbone is not None and self.batcher is not None, "vision service used before initialize()"
        return self.backbone, self.batcher

    def _run_batch(self, images: Sequence[np.ndarray]) -> list[ImageFeatures]:
        # Preprocessing is torch work too: it stays on the batcher's thread.
        backbone, _ = self.loaded
        return backbone.encode_batch([backbone.preprocess(rgb) for rgb in images])

    def info(self) -> encoder_pb2.EncoderInfo:
        backbone, _ = self.loaded
        return self.base_info(
            feature_width=backbone.width,
            model_id=backbone.source,
            model_version=backbone.version,
            options=(list(self.readings) if self.reader is not None else []) + ["lesions"],
            limits=encoder_pb2.InputLimits(max_input_bytes=self.max_input_bytes, max_pixels=self.max_pixels),
        )

    # -- one request -----------------------------------------------------------------
    def encode(self, request: EncodeRequest) -> Iterator[encoder_pb2.FeatureChunk]:
        if request.options.intersection(self.readings) and self.reader is None:
            raise errors.invalid_argument("header.options", "OCR is turned off on this service (--ocr)")
        if request.options.issuperset(self.readings):
            raise errors.invalid_argument("header.options", "ask for one screen text reading, 'ocr' or 'ocr_quick', not both")
        pixels = pixel_count(request.payload, request.media_type)
        with self.pixels.hold(pixels if pixels <= self.max_pixels else 0, deadline_after(request.time_remaining()), request.wanted):
            yield from self._encode(request)

    def _encode(self, request: EncodeRequest) -> Iterator[encoder_pb2.FeatureChunk]:
        with telemetry.tracer().start_as_current_span("vision.decode"):
            image = decode_image(request.payload, request.media_type, request.parameters, self.max_pixels)
        # The screen text is read beside the backbone (OCR's Python steps leave a core free):
        # on a test screenshot the two together take about the OCR's time alone.
        reading = next((o for o in self.readings if o in request.options), None)
        abandoned = threading.Event()
        ocr = None
        if reading is not None and self.reader is not None:  # encode() refused OCR where it is off
            read = telemetry.in_context(otel_context.get_current(), self._read_screen)
            ocr = self.ocr_threads.submit(read, image.rgb, request, reading, lambda: request.wanted() and not abandoned.is_set())
        try:
            yield from self._answer(request, image, ocr, reading)
        finally:
            if ocr is not None:  # an unfinished reading stops at its next check; it ends before its pixels are given back
                abandoned.set()
                wait([ocr])

    def _answer(self, request: EncodeRequest, image, ocr, reading: str | None) -> Iterator[encoder_pb2.FeatureChunk]:
        backbone, batcher = self.loaded
        result = batcher.submit(image.rgb, timeout=request.time_remaining())
        features = result.value
        if not request.pooled_only:
            yield from sequence_chunks(features.tokens, self.feature_kind, request.output_datatype)
        timings = {"queue": result.queue_ms, "model": result.batch_ms, "batch_size": float(result.batch_size)}
        side = encoder_pb2.SideOutputs(tags={**image.tags, "grid": f"{features.grid[0]}x{features.grid[1]}"})
        if "lesions" in request.options and image.hounsfield is not None and "PixelSpacing" in image.tags:  # CT: lung lesions in HU
            started = time.perf_counter()
            with telemetry.tracer().start_as_current_span("vision.measure"):
                row_mm, col_mm = (float(v) for v in image.tags["PixelSpacing"].split("\\"))
                side.tags.update(measurement_tags(image.hounsfield, (row_mm, col_mm)))
            timings["measure"] = (time.perf_counter() - started) * 1000.0
        elif "lesions" in request.options and image.hounsfield is not None:  # densities, but no size of a pixel to measure in
            stated = image.tags.get("PixelSpacingIgnored", "none given (the DICOM's PixelSpacing, or the image parameter pixel_spacing)")
            side.tags.update(lesion_tags(None, f"no usable pixel spacing: {stated}"))
        if ocr is not None and reading is not None and self.reader is not None:
            lines, timings[reading] = ocr.result()
            for line in lines:
                side.text_spans.add(text=line.text, confidence=line.confidence, box=list(line.box))
            if lines.more:
                side.tags["ocr_more"] = f"text left unread: the first {self.reader.max_lines} lines were read (ocr_max_lines)"
        yield encoder_pb2.FeatureChunk(side=side)
        yield encoder_pb2.FeatureChunk(
            pooled=encoder_pb2.PooledFeatures(
                vector=codec.encode(features.pooled, request.output_datatype),
                sequence_length=int(features.tokens.shape[0]),
                timings_ms=timings,
                model_version=backbone.version,
            )
        )
