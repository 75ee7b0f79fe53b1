"""Client side of the mesh: channels (TLS, token, tracing) and a typed Encoder client.

from modalmesh.common.client import connect, EncoderClient
with connect("127.0.0.1:50051") as channel:
    result = EncoderClient(channel).encode(b"a sentence", "text/plain")
    result.pooled          # numpy [384]
    result.sequence        # numpy [n_tokens, 384]
    results = EncoderClient(channel).encode_batch([b"one", b"two"], "text/plain")  # one call
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modalmesh.common import codec, security, telemetry
from modalmesh.common.runtime import grpc_options
from modalmesh.v1 import encoder_pb2, encoder_pb2_grpc

CHUNK_BYTES = 64 * 1024
ONCE_MAX_BYTES = 1024 * 1024


# A call that finds its replica UNAVAILABLE (still loading, draining for a rolling update,
# or gone) is tried again, at most twice, on the next replica round_robin picks; only
# UNAVAILABLE: it means the call did no work. gRPC retries only calls whose messages it
# still holds (up to its retry buffer), so a large streamed upload is not sent twice.
RETRY_POLICY = {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}
RECONNECT_BACKOFF_MAX_MS = 400
SERVICE_CONFIG = json.dumps({"methodConfig": [{"name": [{}], "retryPolicy": RETRY_POLICY}]})


def channel_options(max_message_bytes: int = 64 * 1024 * 1024, server_name: str = "") -> list[tuple[str, object]]:
    """Options of every client channel, sync or asyncio: size limits and keepalive, calls
    spread over the pods of a dns:/// target naming a headless Service, retries on
    UNAVAILABLE, and the TLS name to check when dialling an address."""
    options = grpc_options(max_message_bytes)
    options.append(("grpc.lb_policy_name", "round_robin"))
    options.append(("grpc.service_config", SERVICE_CONFIG))
    # A replica that went away is dialled again every 0.1-0.4 s, not on grpc's default backoff
    # (1 s growing to 2 min), so one that restarts is used as soon as it listens.
    options += [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MAX_MS)]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return options


def connect(
    target: str,
    *,
    ca: str = "",
    cert: str = "",
    key: str = "",
    token: str = "",
    server_name: str = "",
    max_message_bytes: int = 64 * 1024 * 1024,
) -> grpc.Channel:
    """A channel to `target` with trace propagation, and TLS/mTLS/token when given.

    `server_name` overrides the name checked against the server's certificate (for
    example "text" when dialling 127.0.0.1).
    """
    options = channel_options(max_message_bytes, server_name)
    if ca or cert:
        channel = grpc.secure_channel(target, security.channel_credentials(ca, cert, key), options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    return telemetry.TracedChannel(channel, token)


def wait_for_serving(channel: grpc.Channel, service: str = "", timeout: float = 60.0) -> None:
    """Poll grpc.health.v1 until SERVING; raise TimeoutError naming the last state."""
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2.0)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.RpcError as exc:
            last = f"{exc.code().name}: {exc.details()}"
        time.sleep(0.1)
    raise TimeoutError(f"not SERVING after {timeout:.0f} s (last: {last})")


@dataclass
class EncodeResult:
    request_id: str
    pooled: np.ndarray  # [width]
    sequence: np.ndarray | None  # [n, width], None when pooled_only
    pooled_message: encoder_pb2.PooledFeatures
    side: encoder_pb2.SideOutputs | None = None
    chunks: list[encoder_pb2.FeatureChunk] = field(default_factory=list, repr=False)


def encode_requests(
    data: bytes,
    media_type: str,
    *,
    options: Sequence[str] = (),
    output_datatype: str = "",
    pooled_only: bool = False,
    parameters: dict[str, str] | None = None,
    request_id: str = "",
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[encoder_pb2.EncodeRequest]:
    """The request stream for one input: a header, then the bytes in chunks."""
    yield encoder_pb2.EncodeRequest(
        header=encoder_pb2.EncodeHeader(
            request_id=request_id or uuid.uuid4().hex,
            media_type=media_type,
            options=list(options),
            output_datatype=output_datatype,
            pooled_only=pooled_only,
            parameters=parameters or {},
        )
    )
    for start in range(0, len(data), chunk_bytes):
        yield encoder_pb2.EncodeRequest(payload=data[start : start + chunk_bytes])


def collect(chunks: Iterator[encoder_pb2.FeatureChunk]) -> EncodeResult:
    """Assemble an Encode response stream into arrays."""
    received = list(chunks)
    rows = [codec.to_numpy(c.sequence.values, "sequence.values") for c in received if c.WhichOneof("content") == "sequence"]
    sides = [c.side for c in received if c.WhichOneof("content") == "side"]
    pooled = [c.pooled for c in received if c.WhichOneof("content") == "pooled"]
    if not pooled:
        raise ValueError("the encoder's stream ended without a pooled vector")
    return EncodeResult(
        request_id=received[-1].request_id,
        pooled=codec.to_numpy(pooled[-1].vector, "pooled.vector"),
        sequence=np.concatenate(rows) if rows else None,
        pooled_message=pooled[-1],
        side=sides[0] if sides else None,
        chunks=received,
    )


class EncoderClient:
    def __init__(self, channel: grpc.Channel) -> None:
        self.stub = encoder_pb2_grpc.EncoderStub(channel)

    def info(self, timeout: float | None = 10.0) -> encoder_pb2.EncoderInfo:
        return self.stub.Info(encoder_pb2.InfoRequest(), timeout=timeout)

    def encode(self, data: bytes, media_type: str, *, timeout: float | None = 30.0, stream: bool | None = None, **request) -> EncodeResult:
        """Encode one input. stream=None picks EncodeOnce for inputs up to 1 MiB (one
        round trip) and the Encode stream for larger ones; True/False forces one."""
        if stream is None:
            stream = len(data) > ONCE_MAX_BYTES
        if stream:
            return collect(self.stub.Encode(encode_requests(data, media_type, **request), timeout=timeout))
        header = next(encode_requests(b"", media_type, **{k: v for k, v in request.items() if k != "chunk_bytes"})).header
        reply = self.stub.EncodeOnce(encoder_pb2.EncodeOnceRequest(header=header, payload=data), timeout=timeout)
        return collect(iter(reply.chunks))

    def encode_batch(self, inputs: Sequence[bytes], media_type: str, *, timeout: float | None = 30.0, **request) -> list[EncodeResult]:
        """Encode several inputs of one media type in one call (EncodeBatch), results in
        order; the text service runs them as one batch. At most the encoder's
        Info().limits.max_batch_inputs inputs."""
        calls = []
        for data in inputs:
            header = next(encode_requests(b"", media_type, **request)).header
            calls.append(encoder_pb2.EncodeOnceRequest(header=header, payload=data))
        reply = self.stub.EncodeBatch(encoder_pb2.EncodeBatchRequest(inputs=calls), timeout=timeout)
        return [collect(iter(output.chunks)) for output in reply.outputs]

    def encode_text(self, text: str, **kwargs) -> EncodeResult:
        return self.encode(text.encode("utf-8"), "text/plain", **kwargs)
