"""The text encoder service: `modalmesh serve text`.

Input: UTF-8 text ("text/plain"). Output: one row of features per token, then the
mean-pooled, L2-normalised sentence vector. Concurrent calls are batched.
"""

from __future__ import annotations

from typing import Iterator

from modalmesh.common import codec, errors
from modalmesh.common.batching import Batched, DynamicBatcher
from modalmesh.common.compiled import OpenVINOSettings, serving_engine
from modalmesh.common.config import ServiceConfig
from modalmesh.common.encoder import EncodeRequest, EncoderBackend, sequence_chunks
from modalmesh.common.layout import is_blank
from modalmesh.text.model import TextEncoder, TextFeatures
from modalmesh.v1 import encoder_pb2


class TextService(EncoderBackend):
    name = "text"
    modality = "text"
    feature_kind = encoder_pb2.FEATURE_KIND_TOKENS
    media_types = ("text/plain",)
    options = ()
    default_datatype = "FP16"

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.max_input_bytes = config.max_input_bytes
        # Short texts: an EncodeBatch call costs about one batch of the model (and must fit its queue).
        self.max_batch_inputs = min(64, config.max_queue)
        self.encoder: TextEncoder | None = None
        self.batcher: DynamicBatcher[str, TextFeatures] | None = None

    @property
    def uses_torch(self) -> bool:  # type: ignore[override]
        """On OpenVINO (the default) the text service never loads torch (text/model.py)."""
        return serving_engine(self.config) == "torch"

    # -- lifecycle -------------------------------------------------------------------
    def initialize(self) -> None:
        self.encoder = TextEncoder(
            self.config.model,
            allow_download=self.config.allow_download,
            quantize=self.config.quantize,
            engine=serving_engine(self.config),
            openvino=OpenVINOSettings.of(self.config),
        )
        self.batcher = DynamicBatcher(
            self.encoder.encode_batch,
            max_batch_size=self.config.max_batch_size,
            max_delay_ms=self.config.max_batch_delay_ms,
            max_queue=self.config.max_queue,
            name="text",
            inline=not self.uses_torch,  # OpenVINO runs on any thread, torch on the worker's alone
        )
        # Warm up through the batcher: torch work stays on its worker (from a second thread it
        # would start a second OpenMP team, and the two fight over the cores: 2x slower).
        self.batcher.submit("warm up the text encoder")

    def finalize(self) -> None:
        if self.batcher is not None:
            self.batcher.close()

    @property
    def loaded(self) -> tuple[TextEncoder, DynamicBatcher[str, TextFeatures]]:
        """The model and its batcher; the runtime calls nothing else before initialize()."""
        assert self.encoder is not None and self.batcher is not None, "text service used before initialize()"
        return self.encoder, self.batcher

    def info(self) -> encoder_pb2.EncoderInfo:
        encoder, _ = self.loaded
        return self.base_info(
            feature_width=encoder.width,
            model_id=encoder.source,
            model_version=encoder.version,
            limits=encoder_pb2.InputLimits(max_input_bytes=self.max_input_bytes, max_tokens=encoder.max_tokens),
        )

    # -- one request -----------------------------------------------------------------
    def validate_media(self, media_type: str, media_params: dict[str, str]) -> None:
        charset = media_params.get("charset", "utf-8")
        if charset not in ("utf-8", "utf8"):
            raise errors.invalid_argument("header.media_type", f"charset {charset!r} is not supported; send UTF-8")

    def encode(self, request: EncodeRequest) -> Iterator[encoder_pb2.FeatureChunk]:
        text = decode_text(request.payload)
        _, batcher = self.loaded
        return self._chunks(request, batcher.submit(text, timeout=request.time_remaining()))

    def encode_batch(self, requests: list[EncodeRequest]) -> list[list[encoder_pb2.FeatureChunk]]:
        """Every text checked first, then all queued together: one batch of the model."""
        texts = []
        for index, request in enumerate(requests):
            try:
                texts.append(decode_text(request.payload))
            except errors.ServiceError as exc:
                raise errors.within(f"inputs[{index}]", exc) from None
        _, batcher = self.loaded
        results = batcher.submit_many(texts, timeout=requests[0].time_remaining())
        return [list(self._chunks(request, result)) for request, result in zip(requests, results)]

    def _chunks(self, request: EncodeRequest, result: Batched[TextFeatures]) -> Iterator[encoder_pb2.FeatureChunk]:
        encoder, _ = self.loaded
        features = result.value
        if not request.pooled_only:
            yield from sequence_chunks(features.tokens, self.feature_kind, request.output_datatype)
        yield encoder_pb2.FeatureChunk(
            pooled=encoder_pb2.PooledFeatures(
                vector=codec.encode(features.pooled, request.output_datatype),
                sequence_length=int(features.tokens.shape[0]),
                truncated=features.truncated,
                characters_read=features.characters_read,
                timings_ms={"queue": result.queue_ms, "model": result.batch_ms, "batch_size": float(result.batch_size)},
                model_version=encoder.version,
            )
        )


def decode_text(payload: bytes) -> str:
    """Strict UTF-8; empty or blank text is refused, with where it went wrong."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise errors.invalid_argument("payload", f"not valid UTF-8 at byte {exc.start} ({exc.reason})") from None
    if is_blank(text):
        raise errors.invalid_argument("payload", "the text is empty" if not text else "the text is only whitespace or invisible characters")
    return text
