"""The `Encoder` gRPC surface, written once for every modality.

This module owns the stream protocol of `Encoder.Encode` (one header, then payload
chunks), its validation (media type, options, datatype, size limit, stream order),
`EncodeOnce` and `EncodeBatch` (whole inputs in one message) and the `Info` call. A
modality supplies an `EncoderBackend`: what it accepts, how to load and warm its model,
and how to turn one request into feature chunks.
"""

from __future__ import annotations

import abc
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import grpc

from modalmesh.common import codec, errors
from modalmesh.common.runtime import Service
from modalmesh.v1 import encoder_pb2, encoder_pb2_grpc

ENCODER_SERVICE = encoder_pb2.DESCRIPTOR.services_by_name["Encoder"].full_name
MAX_REQUEST_ID_CHARS = 128
NO_DEADLINE_SECONDS = 10 * 365 * 24 * 3600.0


@dataclass
class EncodeRequest:
    """A validated Encode call, payload assembled."""

    request_id: str
    media_type: str  # without parameters, lower case
    options: frozenset[str]
    output_datatype: str
    pooled_only: bool
    parameters: dict[str, str]
    payload: bytes
    context: grpc.ServicerContext | None = field(default=None, repr=False)

    def time_remaining(self) -> float | None:
        """Seconds left before the caller's deadline (None: no deadline)."""
        remaining = self.context.time_remaining() if self.context is not None else None
        # grpc reports "no deadline" as an enormous number; keep it out of timeouts.
        return remaining if remaining is not None and remaining < NO_DEADLINE_SECONDS else None

    def wanted(self) -> bool:
        """Whether the caller is still there (not cancelled, deadline not passed)."""
        return self.context is None or self.context.is_active()


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """'text/plain; charset=UTF-8' -> ('text/plain', {'charset': 'utf-8'})."""
    base, *params = [part.strip() for part in value.split(";")]
    parsed = {}
    for param in params:
        key, _, val = param.partition("=")
        parsed[key.strip().lower()] = val.strip().strip('"').lower()
    return base.lower(), parsed


class EncoderBackend(Service):
    """One modality's model behind the shared Encoder surface."""

    modality: str = ""
    feature_kind: int = encoder_pb2.FEATURE_KIND_UNSPECIFIED
    media_types: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    datatypes: tuple[str, ...] = codec.FLOAT_DATATYPES
    default_datatype: str = "FP16"
    max_input_bytes: int = 1 << 20
    max_batch_inputs: int = 8  # inputs in one EncodeBatch call (EncoderInfo.limits.max_batch_inputs)

    @abc.abstractmethod
    def info(self) -> encoder_pb2.EncoderInfo:
        """Describe the loaded model (called after initialize)."""

    @abc.abstractmethod
    def encode(self, request: EncodeRequest) -> Iterator[encoder_pb2.FeatureChunk]:
        """Turn one request (payload complete) into feature chunks, the pooled vector last."""

    def encode_stream(self, request: EncodeRequest, payloads: Iterator[bytes]) -> Iterator[encoder_pb2.FeatureChunk]:
        """Encode while the payload arrives. The default waits for all of it; a backend
        that can start early (audio) overrides this."""
        request.payload = b"".join(payloads)
        return self.encode(request)

    def encode_batch(self, requests: list[EncodeRequest]) -> list[list[encoder_pb2.FeatureChunk]]:
        """Several requests (EncodeBatch, payloads complete), each one's chunks, in order.
        The default encodes them one after another; a backend with a batcher (text) runs
        them together. An invalid input's error names it (`inputs[i]...`)."""
        answers = []
        for index, request in enumerate(requests):
            try:
                answers.append(list(self.encode(request)))
            except errors.ServiceError as exc:
                raise errors.within(f"inputs[{index}]", exc) from None
        return answers

    def validate_media(self, media_type: str, media_params: dict[str, str]) -> None:
        """Modality-specific checks of the media type's parameters. Raise ServiceError."""

    def register(self, server: grpc.Server) -> list[str]:
        encoder_pb2_grpc.add_EncoderServicer_to_server(EncoderServicer(self), server)
        return [ENCODER_SERVICE]

    def base_info(self, **fields) -> encoder_pb2.EncoderInfo:
        """EncoderInfo from the class attributes; keyword arguments add or override."""
        described = dict(
            modality=self.modality,
            datatypes=list(self.datatypes),
            default_datatype=self.default_datatype,
            media_types=list(self.media_types),
            options=list(self.options),
            feature_kind=self.feature_kind,
        )
        info = encoder_pb2.EncoderInfo(**{**described, **fields})
        info.limits.max_batch_inputs = self.max_batch_inputs
        return info


class EncoderServicer(encoder_pb2_grpc.EncoderServicer):
    def __init__(self, backend: EncoderBackend) -> None:
        self.backend = backend

    def Info(self, request, context):
        return self.backend.info()

    def Encode(self, request_iterator, context):
        started = time.perf_counter()
        stream = iter(request_iterator)
        request = read_header(stream, self.backend, context)
        yield from self._encode(request, read_payload(stream, self.backend.max_input_bytes), started)

    def EncodeOnce(self, request, context):
        started = time.perf_counter()
        header = check_header(request.header, self.backend, context)
        payloads = whole_payload(request.payload, self.backend.max_input_bytes)
        return encoder_pb2.EncodeOnceResponse(chunks=list(self._encode(header, payloads, started)))

    def EncodeBatch(self, request, context):
        started = time.perf_counter()
        requests = check_batch(request, self.backend, context)
        answers = self.backend.encode_batch(requests)
        return encoder_pb2.EncodeBatchResponse(
            outputs=[encoder_pb2.EncodeOnceResponse(chunks=list(_finish(one, chunks, started))) for one, chunks in zip(requests, answers)]
        )

    def _encode(self, request: EncodeRequest, payloads: Iterator[bytes], started: float) -> Iterator[encoder_pb2.FeatureChunk]:
        return _finish(request, self.backend.encode_stream(request, payloads), started)


def _finish(request: EncodeRequest, chunks: Iterable[encoder_pb2.FeatureChunk], started: float) -> Iterator[encoder_pb2.FeatureChunk]:
    """Each chunk stamped with the request's id; the pooled one with the total time."""
    for chunk in chunks:
        chunk.request_id = request.request_id
        if chunk.WhichOneof("content") == "pooled":
            chunk.pooled.timings_ms["total"] = (time.perf_counter() - started) * 1000.0
        yield chunk


def read_header(stream: Iterator[encoder_pb2.EncodeRequest], backend: EncoderBackend, context: grpc.ServicerContext | None) -> EncodeRequest:
    """Read and validate the header of an Encode stream (the payload is left unread)."""
    first = next(stream, None)
    if first is None:
        raise errors.invalid_argument("header", "the request stream is empty; send a header first")
    if first.WhichOneof("content") != "header":
        raise errors.invalid_argument("header", "the first message must be a header, not a payload chunk")
    return check_header(first.header, backend, context)


def check_header(header: encoder_pb2.EncodeHeader, backend: EncoderBackend, context: grpc.ServicerContext | None) -> EncodeRequest:
    """Validate a request's header (of an Encode stream or an EncodeOnce call)."""
    request_id = header.request_id or uuid.uuid4().hex
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise errors.invalid_argument("header.request_id", f"longer than {MAX_REQUEST_ID_CHARS} characters")
    if not header.media_type:
        raise errors.invalid_argument("header.media_type", f"required; one of {', '.join(backend.media_types)}")
    media_type, media_params = parse_media_type(header.media_type)
    if media_type not in backend.media_types:
        raise errors.invalid_argument(
            "header.media_type",
            f"{header.media_type!r} is not accepted by the {backend.modality} encoder; use one of {', '.join(backend.media_types)}",
        )
    backend.validate_media(media_type, media_params)
    unknown = sorted(set(header.options) - set(backend.options))
    if unknown:
        accepted = ", ".join(backend.options) or "none"
        raise errors.invalid_argument("header.options", f"unknown option(s) {', '.join(unknown)}; accepted: {accepted}")
    datatype = header.output_datatype or backend.default_datatype
    if datatype not in backend.datatypes:
        raise errors.invalid_argument("header.output_datatype", f"{datatype!r} is not one of {', '.join(backend.datatypes)}")
    return EncodeRequest(
        request_id=request_id,
        media_type=media_type,
        options=frozenset(header.options),
        output_datatype=datatype,
        pooled_only=header.pooled_only,
        parameters=dict(header.parameters),
        payload=b"",
        context=context,
    )


def check_batch(request: encoder_pb2.EncodeBatchRequest, backend: EncoderBackend, context: grpc.ServicerContext | None) -> list[EncodeRequest]:
    """Validate an EncodeBatch call: how many inputs, then each one's header and size as
    EncodeOnce checks them; an error names the input (`inputs[2].header.media_type`)."""
    if not request.inputs:
        raise errors.invalid_argument("inputs", "empty; send at least one input")
    if len(request.inputs) > backend.max_batch_inputs:
        most = backend.max_batch_inputs
        raise errors.invalid_argument("inputs", f"{len(request.inputs)} inputs; the {backend.modality} encoder takes at most {most} in one call")
    checked = []
    for index, one in enumerate(request.inputs):
        try:
            header = check_header(one.header, backend, context)
            header.payload = b"".join(whole_payload(one.payload, backend.max_input_bytes))
        except errors.ServiceError as exc:
            raise errors.within(f"inputs[{index}]", exc) from None
        checked.append(header)
    return checked


def read_payload(stream: Iterator[encoder_pb2.EncodeRequest], max_bytes: int) -> Iterator[bytes]:
    """The payload chunks after the header, as they arrive, within the size limit."""
    received = 0
    for position, message in enumerate(stream, start=1):
        if message.WhichOneof("content") != "payload":
            raise errors.invalid_argument(f"messages[{position}]", "a second header; only payload chunks may follow the header")
        received += len(message.payload)
        _within_limit(received, max_bytes, position)
        yield message.payload


def whole_payload(payload: bytes, max_bytes: int) -> Iterator[bytes]:
    """An EncodeOnce call's payload, as read_payload gives a stream's (none when empty)."""
    if payload:
        _within_limit(len(payload), max_bytes, 1)
        yield payload


def _within_limit(received: int, max_bytes: int, position: int) -> None:
    if received > max_bytes:
        raise errors.invalid_argument("payload", f"input exceeds the limit of {max_bytes} bytes (at chunk {position})")


def sequence_chunks(features, kind: encoder_pb2.FeatureKind, datatype: str, rows_per_chunk: int = 256) -> Iterator[encoder_pb2.FeatureChunk]:
    """Split a [n, width] feature matrix into SequenceFeatures chunks of bounded size."""
    total = int(features.shape[0])
    for offset in range(0, total, rows_per_chunk):
        rows = features[offset : offset + rows_per_chunk]
        yield encoder_pb2.FeatureChunk(sequence=encoder_pb2.SequenceFeatures(kind=kind, offset=offset, values=codec.encode(rows, datatype)))
