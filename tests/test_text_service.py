"""The text encoder service over real gRPC on 127.0.0.1, with a tiny BERT loaded from disk."""

import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from modalmesh.common import codec, errors
from modalmesh.common.client import EncoderClient, connect
from modalmesh.common.config import load_config
from modalmesh.text.model import TextEncoder
from modalmesh.text.server import TextService
from modalmesh.up import free_port
from modalmesh.v1 import encoder_pb2, encoder_pb2_grpc


def health_status(channel, service=""):
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


class GatedTextService(TextService):
    """The real text service whose loading waits for the test's signal, so the test can
    observe the window in which the server is up but the model is not yet loaded."""

    gate = threading.Event()

    def initialize(self):
        assert self.gate.wait(10)
        super().initialize()


def test_health_is_not_serving_until_the_model_is_warm(start_text_service):
    handle = start_text_service(initialize=False, service_class=GatedTextService)
    loader = threading.Thread(target=handle.initialize)
    loader.start()
    with connect(handle.address) as channel:
        assert health_status(channel) == "NOT_SERVING"
        assert health_status(channel, "modalmesh.v1.Encoder") == "NOT_SERVING"
        with pytest.raises(grpc.RpcError) as raised:
            EncoderClient(channel).encode_text("too early")
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "loading" in raised.value.details()
        GatedTextService.gate.set()
        loader.join(30)
        assert health_status(channel) == "SERVING"
        assert health_status(channel, "modalmesh.v1.Encoder") == "SERVING"
        assert EncoderClient(channel).encode_text("now it works").pooled.shape == (32,)


def test_reflection_lists_every_service(text_channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(text_channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"modalmesh.v1.Encoder", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_info_describes_model_and_limits(text_channel, tiny_bert_dir):
    info = EncoderClient(text_channel).info()
    assert info.modality == "text"
    assert info.feature_width == 32
    assert info.default_datatype == "FP16"
    assert set(info.datatypes) == {"FP32", "FP16", "BF16"}
    assert info.media_types == ["text/plain"]
    assert info.model_id == str(tiny_bert_dir)
    assert info.model_version.startswith("tiny-bert")
    assert info.limits.max_tokens == 64
    assert info.limits.max_input_bytes == 64 * 1024
    assert info.feature_kind == encoder_pb2.FEATURE_KIND_TOKENS


def test_encode_streams_token_features_then_the_pooled_vector(text_channel, tiny_bert_dir):
    result = EncoderClient(text_channel).encode_text("my card payment failed", request_id="req-1")
    kinds = [chunk.WhichOneof("content") for chunk in result.chunks]
    assert kinds[-1] == "pooled" and "sequence" in kinds
    assert all(chunk.request_id == "req-1" for chunk in result.chunks)
    assert result.sequence.dtype == np.float16 and result.sequence.shape[1] == 32
    expected_tokens = len(TextEncoder(str(tiny_bert_dir)).tokenizer("my card payment failed")["input_ids"])
    assert result.sequence.shape[0] == expected_tokens == result.pooled_message.sequence_length
    assert result.pooled_message.truncated is False
    assert abs(float(np.linalg.norm(result.pooled.astype(np.float32))) - 1.0) < 1e-2
    assert {"queue", "model", "batch_size"} <= set(result.pooled_message.timings_ms)


def test_service_output_equals_the_model_in_process(text_channel, tiny_bert_dir):
    local = TextEncoder(str(tiny_bert_dir)).encode_batch(["where is my parcel"])[0]
    remote = EncoderClient(text_channel).encode_text("where is my parcel", output_datatype="FP32")
    np.testing.assert_allclose(remote.pooled, local.pooled, atol=1e-5)
    np.testing.assert_allclose(remote.sequence, local.tokens, atol=1e-5)


@pytest.mark.parametrize("datatype, dtype", [("FP32", np.float32), ("FP16", np.float16), ("BF16", np.float32)])
def test_output_datatypes(text_channel, datatype, dtype):
    result = EncoderClient(text_channel).encode_text("refund please", output_datatype=datatype)
    assert result.pooled_message.vector.datatype == datatype
    assert result.pooled.dtype == dtype  # BF16 decodes widened to float32


def test_pooled_only_skips_the_sequence(text_channel):
    result = EncoderClient(text_channel).encode_text("help", pooled_only=True)
    assert result.sequence is None
    assert [c.WhichOneof("content") for c in result.chunks] == ["pooled"]


def test_long_text_is_truncated_and_says_so(text_channel):
    client = EncoderClient(text_channel)
    text = "Ça plante 😀 " * 5 + "the app crashes " * 100
    result = client.encode_text(text)
    assert result.pooled_message.truncated is True
    assert result.sequence.shape[0] == 64
    # How much was read, in characters: exactly what the features cover.
    read = result.pooled_message.characters_read
    assert 0 < read < len(text) and text[read - 1] != " "
    start = client.encode_text(text[:read])
    assert start.pooled_message.truncated is False and start.pooled_message.characters_read == 0
    np.testing.assert_allclose(start.pooled, result.pooled, atol=1e-5)


def test_text_arrives_in_many_chunks(text_channel):
    text = "my payment failed and i want a refund please"
    whole = EncoderClient(text_channel).encode_text(text, output_datatype="FP32")
    pieces = EncoderClient(text_channel).encode(text.encode(), "text/plain", chunk_bytes=3, output_datatype="FP32", stream=True)
    np.testing.assert_array_equal(whole.pooled, pieces.pooled)


def test_concurrent_callers_each_get_their_own_result(start_text_service, tiny_bert_dir):
    handle = start_text_service(max_batch_size=16, max_batch_delay_ms=20)
    sentences = [f"{w} {v}" for w in ("card", "login", "parcel", "refund") for v in ("failed", "error", "help", "wrong")]
    local = TextEncoder(str(tiny_bert_dir))
    expected = {s: local.encode_batch([s])[0].pooled for s in sentences}
    with connect(handle.address) as channel:
        client = EncoderClient(channel)
        with ThreadPoolExecutor(len(sentences)) as pool:
            results = list(pool.map(lambda s: client.encode_text(s, output_datatype="FP32"), sentences))
    for sentence, result in zip(sentences, results):
        np.testing.assert_allclose(result.pooled, expected[sentence], atol=1e-4, err_msg=sentence)
    assert max(r.pooled_message.timings_ms["batch_size"] for r in results) > 1


def _raw_call(channel, messages):
    stub = encoder_pb2_grpc.EncoderStub(channel)
    return list(stub.Encode(iter(messages), timeout=10))


HEADER = encoder_pb2.EncodeRequest(header=encoder_pb2.EncodeHeader(media_type="text/plain"))


def _payload(data):
    return encoder_pb2.EncodeRequest(payload=data)


BAD_REQUESTS = {
    "invalid utf-8": ([HEADER, _payload(b"caf\xc3")], "payload", "not valid UTF-8 at byte 3"),
    "empty text": ([HEADER], "payload", "the text is empty"),
    "only whitespace": ([HEADER, _payload(b"  \n\t ")], "payload", "only whitespace"),
    "only invisible characters": ([HEADER, _payload("\u200b\u200b\ufeff\x00".encode())], "payload", "invisible characters"),
    "over the limit": ([HEADER, _payload(b"a" * 40_000), _payload(b"b" * 40_000)], "payload", "exceeds the limit of 65536 bytes"),
    "unknown media type": (
        [encoder_pb2.EncodeRequest(header=encoder_pb2.EncodeHeader(media_type="image/png")), _payload(b"x")],
        "header.media_type",
        "not accepted by the text encoder",
    ),
    "missing media type": ([encoder_pb2.EncodeRequest(header=encoder_pb2.EncodeHeader()), _payload(b"x")], "header.media_type", "required"),
    "latin-1 charset": (
        [encoder_pb2.EncodeRequest(header=encoder_pb2.EncodeHeader(media_type="text/plain; charset=latin-1")), _payload(b"x")],
        "header.media_type",
        "charset 'latin-1' is not supported",
    ),
    "payload before header": ([_payload(b"hello"), HEADER], "header", "first message must be a header"),
    "two headers": ([HEADER, _payload(b"hi"), HEADER], "messages[2]", "a second header"),
    "empty stream": ([], "header", "the request stream is empty"),
    "unknown option": (
        [encoder_pb2.EncodeRequest(header=encoder_pb2.EncodeHeader(media_type="text/plain", options=["ocr"])), _payload(b"x")],
        "header.options",
        "unknown option(s) ocr",
    ),
    "unknown datatype": (
        [encoder_pb2.EncodeRequest(header=encoder_pb2.EncodeHeader(media_type="text/plain", output_datatype="INT8")), _payload(b"x")],
        "header.output_datatype",
        "'INT8' is not one of",
    ),
    "request id too long": (
        [encoder_pb2.EncodeRequest(header=encoder_pb2.EncodeHeader(media_type="text/plain", request_id="r" * 200)), _payload(b"x")],
        "header.request_id",
        "longer than 128",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_input_is_invalid_argument_and_the_service_stays_healthy(text_channel, case):
    messages, field, complaint = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as raised:
        _raw_call(text_channel, messages)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert complaint in raised.value.details()
    violations = errors.field_violations(raised.value)
    assert violations and violations[0][0] == field and complaint in violations[0][1]
    # Still healthy, still answering.
    assert health_status(text_channel) == "SERVING"
    assert EncoderClient(text_channel).encode_text("still here").pooled.shape == (32,)


def test_message_over_the_grpc_size_limit_is_refused(start_text_service):
    handle = start_text_service(max_message_bytes=4096)
    with connect(handle.address) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            _raw_call(channel, [HEADER, _payload(b"x" * 10_000)])
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert EncoderClient(channel).encode_text("small is fine").pooled.shape == (32,)


def test_graceful_shutdown_drains_in_flight_calls_and_refuses_new_ones(start_text_service):
    # A long batching delay keeps the first call in flight while the server drains.
    handle = start_text_service(max_batch_size=8, max_batch_delay_ms=800)
    with connect(handle.address) as channel:
        client = EncoderClient(channel)
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(client.encode_text, "in flight during shutdown")
            time.sleep(0.2)
            stopper = threading.Thread(target=handle.stop, kwargs={"grace": 5.0})
            stopper.start()
            assert in_flight.result(10).pooled.shape == (32,)
            stopper.join(10)
        with pytest.raises(grpc.RpcError) as raised:
            client.encode_text("after shutdown", timeout=2)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_deadline_is_respected(start_text_service):
    handle = start_text_service(max_batch_size=8, max_batch_delay_ms=2000)
    with connect(handle.address) as channel:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            EncoderClient(channel).encode_text("slow batch", timeout=0.3)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 1.5


def test_metrics_endpoint_counts_calls_and_errors(start_text_service):
    import urllib.request

    from modalmesh.up import free_port

    handle = start_text_service(metrics_port=free_port())
    with connect(handle.address) as channel:
        EncoderClient(channel).encode_text("count me")
        with pytest.raises(grpc.RpcError):
            _raw_call(channel, [HEADER])
    body = urllib.request.urlopen(f"http://127.0.0.1:{handle.metrics_port}/metrics", timeout=5).read().decode()
    assert 'modalmesh_rpc_duration_seconds_count{code="OK",method="Encode",service="text"}' in body
    assert 'modalmesh_rpc_errors_total{code="INVALID_ARGUMENT",method="Encode",service="text"}' in body
    assert "modalmesh_batch_size_bucket" in body and "modalmesh_queue_depth" in body


def test_a_call_without_a_deadline_is_served(text_channel):
    result = EncoderClient(text_channel).encode_text("no deadline at all", timeout=None)
    assert result.pooled.shape == (32,)


def test_encode_once_and_the_stream_give_the_same_chunks(text_channel):
    client = EncoderClient(text_channel)
    once = client.encode_text("the checkout page declined my card", stream=False, output_datatype="FP32")
    streamed = client.encode_text("the checkout page declined my card", stream=True, output_datatype="FP32")
    assert [c.WhichOneof("content") for c in once.chunks] == [c.WhichOneof("content") for c in streamed.chunks]
    np.testing.assert_array_equal(once.sequence, streamed.sequence)
    np.testing.assert_array_equal(once.pooled, streamed.pooled)


def test_encode_once_validates_like_the_stream(text_channel):
    stub = encoder_pb2_grpc.EncoderStub(text_channel)
    request = encoder_pb2.EncodeOnceRequest(header=encoder_pb2.EncodeHeader(media_type="text/plain"), payload=b"caf\xc3")
    with pytest.raises(grpc.RpcError) as raised:
        stub.EncodeOnce(request, timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert errors.field_violations(raised.value) == [("payload", "not valid UTF-8 at byte 3 (unexpected end of data)")]


def test_encode_batch_answers_each_input_in_order_from_one_batch(text_channel, tiny_bert_dir):
    texts = ["my card was declined", "where is my parcel", "the app crashes on start"]
    client = EncoderClient(text_channel)
    results = client.encode_batch([t.encode() for t in texts], "text/plain", output_datatype="FP32")
    local = TextEncoder(str(tiny_bert_dir))
    for text, result in zip(texts, results, strict=True):
        one = client.encode_text(text, output_datatype="FP32")
        np.testing.assert_allclose(result.pooled, local.encode_batch([text])[0].pooled, atol=1e-5, err_msg=text)
        np.testing.assert_allclose(result.sequence, one.sequence, atol=1e-5, err_msg=text)
        assert result.pooled_message.timings_ms["batch_size"] == 3  # queued together: one batch of the model
        assert result.pooled_message.timings_ms["total"] > 0
    assert len({r.request_id for r in results}) == 3
    assert client.info().limits.max_batch_inputs == 64


@pytest.mark.parametrize(
    "inputs, where, what",
    [
        ([], "inputs", "empty; send at least one input"),
        ([b"fine"] * 65, "inputs", "65 inputs; the text encoder takes at most 64 in one call"),
        ([b"fine", b"caf\xc3"], "inputs[1].payload", "not valid UTF-8 at byte 3 (unexpected end of data)"),
        ([b"fine", b"  "], "inputs[1].payload", "the text is only whitespace or invisible characters"),
    ],
)
def test_encode_batch_refuses_a_bad_input_naming_it(text_channel, inputs, where, what):
    with pytest.raises(grpc.RpcError) as raised:
        EncoderClient(text_channel).encode_batch(inputs, "text/plain")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert errors.field_violations(raised.value) == [(where, what)]
    assert EncoderClient(text_channel).encode_text("still serving").pooled.shape == (32,)


def test_encode_batch_names_a_bad_header_by_its_input(text_channel):
    stub = encoder_pb2_grpc.EncoderStub(text_channel)
    good = encoder_pb2.EncodeOnceRequest(header=encoder_pb2.EncodeHeader(media_type="text/plain"), payload=b"fine")
    bad = encoder_pb2.EncodeOnceRequest(header=encoder_pb2.EncodeHeader(media_type="image/png"), payload=b"fine")
    with pytest.raises(grpc.RpcError) as raised:
        stub.EncodeBatch(encoder_pb2.EncodeBatchRequest(inputs=[good, good, bad]), timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("inputs[2].header.media_type: 'image/png' is not accepted by the text encoder")


def test_encode_batch_never_takes_more_inputs_than_the_queue_holds(start_text_service):
    handle = start_text_service(max_queue=4)
    with connect(handle.address) as channel:
        client = EncoderClient(channel)
        assert client.info().limits.max_batch_inputs == 4  # never more than the queue holds
        assert len(client.encode_batch([b"one", b"two", b"three", b"four"], "text/plain")) == 4
        with pytest.raises(grpc.RpcError) as raised:
            client.encode_batch([b"one"] * 5, "text/plain")
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_int8_quantization_option(start_text_service, tiny_bert_dir):
    handle = start_text_service(quantize=True)
    with connect(handle.address) as channel:
        client = EncoderClient(channel)
        assert client.info().model_version.endswith("+int8")
        quantized = client.encode_text("my card payment failed", output_datatype="FP32").pooled
    full = TextEncoder(str(tiny_bert_dir)).encode_batch(["my card payment failed"])[0].pooled
    assert float(quantized @ full) > 0.95  # both unit length: this is the cosine


def test_a_second_server_on_a_port_in_use_fails_to_start(start_text_service):
    # grpc's default SO_REUSEPORT let the second one start and take some of the first's connections.
    first = start_text_service()
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{first.port} \\(port in use\\?\\)"):
        start_text_service(port=first.port)
    with grpc.insecure_channel(first.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def blocking_service(running_started: threading.Semaphore, release: threading.Event):
    """The real text service whose encoding holds until the test releases it: calls pile
    up in the server as they would behind a slow model."""

    class BlockingTextService(TextService):
        def encode(self, request):
            running_started.release()
            assert release.wait(30)
            yield from super().encode(request)

    return BlockingTextService


def test_a_saturated_server_still_answers_health_and_refuses_the_overflow_at_once(start_text_service):
    # Calls past the pool's threads must not queue without bound in front of health
    # checks: a pod that is only busy must pass its liveness probe.
    started, release = threading.Semaphore(0), threading.Event()
    handle = start_text_service(service_class=blocking_service(started, release), worker_threads=2, max_waiting_calls=1)
    handle.admission.assume_answered(0.01)  # calls have been answered before: the next may wait for a worker
    with connect(handle.address) as channel, ThreadPoolExecutor(4) as pool:
        client = EncoderClient(channel)
        held = [pool.submit(client.encode_text, f"call {i}", timeout=30) for i in range(3)]
        assert started.acquire(timeout=10) and started.acquire(timeout=10)  # two running
        deadline = time.monotonic() + 10
        while handle.admission.now_waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert handle.admission.now_waiting == 1  # the third waits for a worker
        assert health_status(channel) == "SERVING"  # answered while every worker is busy
        with pytest.raises(grpc.RpcError) as raised:
            client.encode_text("one too many", timeout=10)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "2 calls running and 1 waiting" in raised.value.details()
        assert not any(f.done() for f in held)
        release.set()
        results = [f.result(timeout=30) for f in held]  # nothing admitted is lost
        assert all(r.pooled.shape == (32,) for r in results)
        assert handle.admission.now_waiting == 0
        assert client.encode_text("and afterwards").pooled.shape == (32,)


def test_a_waiting_call_gives_up_at_its_deadline_and_frees_its_place(start_text_service):
    started, release = threading.Semaphore(0), threading.Event()
    handle = start_text_service(service_class=blocking_service(started, release), worker_threads=1, max_waiting_calls=1)
    handle.admission.assume_answered(0.01)  # calls have been answered before: the next may wait for a worker
    with connect(handle.address) as channel, ThreadPoolExecutor(2) as pool:
        client = EncoderClient(channel)
        running = pool.submit(client.encode_text, "running", timeout=30)
        assert started.acquire(timeout=10)
        with pytest.raises(grpc.RpcError) as raised:
            client.encode_text("waits", timeout=0.5)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        deadline = time.monotonic() + 10
        while handle.admission.now_waiting and time.monotonic() < deadline:
            time.sleep(0.01)
        assert handle.admission.now_waiting == 0  # its place is free again: the next may wait
        waiting = pool.submit(client.encode_text, "waits again", timeout=30)
        while handle.admission.now_waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert handle.admission.now_waiting == 1
        release.set()
        assert running.result(timeout=30).pooled.shape == (32,)
        assert waiting.result(timeout=30).pooled.shape == (32,)


def stream_reader_threads() -> int:
    return sum(thread.name == "stream-reader" for thread in threading.enumerate())


def test_a_stalled_upload_is_deadline_exceeded_after_stream_idle_s(start_text_service):
    # A client that sends a header and then neither sends more nor closes its stream
    # (and sets no deadline) must not hold a worker for ever.
    handle = start_text_service(stream_idle_s=0.5)
    stall = threading.Event()

    def stalled():
        yield encoder_pb2.EncodeRequest(header=encoder_pb2.EncodeHeader(media_type="text/plain"))
        yield encoder_pb2.EncodeRequest(payload=b"half a sen")
        stall.wait(30)

    with connect(handle.address) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            list(stub.Encode(stalled()))  # no deadline
        stall.set()
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "nothing arrived for 0.5 s (stream_idle_s)" in raised.value.details()

        def slow_but_steady():  # each message within the idle time: the total may be longer
            yield encoder_pb2.EncodeRequest(header=encoder_pb2.EncodeHeader(media_type="text/plain"))
            for word in (b"my ", b"card ", b"was ", b"declined"):
                time.sleep(0.2)
                yield encoder_pb2.EncodeRequest(payload=word)

        chunks = list(stub.Encode(slow_but_steady(), timeout=30))
        assert chunks[-1].WhichOneof("content") == "pooled"
        whole = EncoderClient(channel).encode_text("my card was declined").pooled
        np.testing.assert_allclose(codec.to_numpy(chunks[-1].pooled.vector), whole, atol=1e-3)
        deadline = time.monotonic() + 10
        while stream_reader_threads() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stream_reader_threads() == 0  # every reader thread ended with its call
        assert health_status(channel) == "SERVING"


def test_calls_that_find_a_replica_unavailable_are_retried_on_the_next(start_text_service):
    # Two replicas behind one target (as a dns:/// name of a headless Service gives):
    # one still loading its model (UNAVAILABLE), one serving. round_robin alternates,
    # and the client's retry policy sends a refused call on to the next replica, so
    # callers never see the loading one.
    loading = start_text_service(initialize=False, service_class=GatedTextService)
    serving = start_text_service()
    with connect(f"ipv4:127.0.0.1:{loading.port},127.0.0.1:{serving.port}") as channel:
        client = EncoderClient(channel)
        answers = [client.encode_text(f"call {i}", timeout=10) for i in range(8)]
    assert all(a.pooled.shape == (32,) for a in answers)
    with connect(loading.address) as alone:  # the loading replica itself still refuses
        with pytest.raises(grpc.RpcError) as raised:
            EncoderClient(alone).encode_text("too early", timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("environment, limited", [({}, True), ({"MALLOC_ARENA_MAX": "4"}, False)])
def test_services_cap_malloc_arenas_unless_the_environment_says(environment, limited):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | environment
    code = "from modalmesh.common.runtime import limit_malloc_arenas; print(limit_malloc_arenas())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == str(limited), out.stderr


@pytest.mark.parametrize(
    "environment, first, applied, policy",
    [
        ({}, "", True, "PASSIVE"),
        ({"OMP_WAIT_POLICY": "ACTIVE"}, "", False, "ACTIVE"),
        ({"GOMP_SPINCOUNT": "300000"}, "", False, None),
        ({}, "import torch; ", False, None),  # too late: libgomp has read its environment
    ],
)
def test_services_let_idle_openmp_threads_sleep_unless_told_otherwise(environment, first, applied, policy):
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} | environment
    code = (
        f"{first}import json, os; from modalmesh.common.runtime import sleeping_idle_threads; "
        "print(json.dumps([sleeping_idle_threads(), os.environ.get('OMP_WAIT_POLICY')]))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [applied, policy], out.stderr


@pytest.mark.parametrize(
    "environment, first, applied, threads",
    [
        ({}, "", True, "1"),
        ({"OPENBLAS_NUM_THREADS": "2"}, "", False, "2"),
        ({}, "import numpy; ", False, None),  # too late: OpenBLAS has read its environment
    ],
)
def test_services_give_numpys_blas_one_thread_unless_told_otherwise(environment, first, applied, threads):
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"} | environment
    code = (
        f"{first}import json, os; from modalmesh.common.runtime import single_threaded_numpy_blas; "
        "print(json.dumps([single_threaded_numpy_blas(), os.environ.get('OPENBLAS_NUM_THREADS')]))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [applied, threads], out.stderr


UNMAP_PROBE = """
import json, sys, torch
from modalmesh.common.runtime import GPU_LIBRARIES, unmap_gpu_library_pages

def gpu_resident():  # KiB resident in GPU-library mappings, and in those the call may not touch
    kib, kept, span = 0, 0, None
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if fields and "-" in fields[0] and ":" not in fields[0]:
            span = fields if len(fields) >= 6 and any(n in fields[5] for n in GPU_LIBRARIES) else None
        elif span is not None and fields[0] == "Rss:":
            kib += int(fields[1])
            rss = int(fields[1])
        elif span is not None and fields[0] == "Anonymous:" and ("w" in span[1] or int(fields[1]) > 0):
            kept += rss
    return kib, kept

torch.manual_seed(0)
x = torch.randn(64, 3, 16, 16)
conv = torch.nn.Conv2d(3, 8, 3)
before_answer = conv(x).sum().item()
before, kept_before = gpu_resident()
freed = unmap_gpu_library_pages()
after, kept_after = gpu_resident()
print(json.dumps({"before": before, "after": after, "kept_before": kept_before, "kept_after": kept_after, "freed": freed,
                  "same": conv(x).sum().item() == before_answer, "again": unmap_gpu_library_pages()}))
"""


def test_services_unmap_the_gpu_library_pages_torch_loads():
    # The CUDA build of torch loads cuBLAS, NVRTC and the like at import; nothing here runs
    # on a GPU, so after warm-up each service takes their read-only pages out of its RSS.
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", UNMAP_PROBE], capture_output=True, text=True, timeout=120)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    if figures["before"] == 0:
        pytest.skip("this torch build loads no GPU library")
    assert figures["freed"] > 0 and figures["after"] < figures["before"] / 2, figures
    assert figures["after"] <= figures["kept_before"] + 1024, figures  # what is left: pages the call must not touch
    assert figures["kept_after"] == figures["kept_before"], figures  # written pages (relocations) stay
    assert figures["same"], "torch computes the same after the unmapping"
    # Running torch again may page a little library code back in (2 MiB on one machine), not the bulk.
    assert figures["again"] < figures["freed"] / 20, figures


def test_unmapping_gpu_library_pages_is_nothing_without_torch():
    import subprocess
    import sys

    code = "import sys; from modalmesh.common.runtime import unmap_gpu_library_pages; print(unmap_gpu_library_pages(), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["0", "False"], out.stderr


def test_request_bytes_in_hand_are_bounded(start_text_service):
    # grpc reads a unary call's whole message before the handler runs, so waiting calls
    # hold theirs: past max_bytes_in_flight a call is refused at once.
    started, release = threading.Semaphore(0), threading.Event()
    handle = start_text_service(service_class=blocking_service(started, release), worker_threads=1, max_waiting_calls=4, max_bytes_in_flight=400)
    handle.admission.assume_answered(0.01)  # calls have been answered before: the next may wait for a worker
    with connect(handle.address) as channel, ThreadPoolExecutor(2) as pool:
        client = EncoderClient(channel)
        running = pool.submit(client.encode_text, "a" * 100, timeout=30)
        assert started.acquire(timeout=10)
        with pytest.raises(grpc.RpcError) as raised:
            client.encode_text("b" * 300, timeout=10)  # 100 + 300 and the headers: over 400
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_bytes_in_flight 400" in raised.value.details()
        waiting = pool.submit(client.encode_text, "c" * 50, timeout=30)  # fits: waits for the worker
        deadline = time.monotonic() + 10
        while handle.admission.now_waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert handle.admission.now_waiting == 1
        release.set()
        assert running.result(timeout=30).pooled.shape == waiting.result(timeout=30).pooled.shape == (32,)
        assert handle.admission.bytes_held == 0


def test_connections_are_closed_by_age_so_clients_find_new_replicas(start_text_service):
    # A client resolves a dns:/// name again only when a connection closes: before, the
    # router kept calling the pods it found at start-up, never the ones an autoscaler added.
    handle = start_text_service(max_connection_age_s=0.5)
    states = []
    with connect(handle.address) as channel:
        channel.subscribe(states.append, try_to_connect=True)
        client = EncoderClient(channel)
        deadline = time.monotonic() + 15
        answers = 0
        while time.monotonic() < deadline:
            answers += client.encode_text("still answering", timeout=10).pooled.shape == (32,)
            ready = [i for i, s in enumerate(states) if s == grpc.ChannelConnectivity.READY]
            if len(ready) >= 2:  # connected, closed by the server, connected again
                break
            time.sleep(0.1)
    assert len([s for s in states if s == grpc.ChannelConnectivity.READY]) >= 2, states
    assert answers >= 2  # and every call in between was answered


def probe_status(port: int) -> str:
    with connect(f"127.0.0.1:{port}") as channel:
        return health_status(channel)


def test_the_health_only_port_is_answered_by_a_process_of_its_own(start_text_service):
    handle = start_text_service(initialize=False, health_port=free_port())
    port = handle.config.health_port
    assert handle.probe is not None and handle.probe._process.pid != os.getpid()
    assert probe_status(port) == "NOT_SERVING"  # listening while the model loads
    handle.initialize()
    assert probe_status(port) == "SERVING"
    with connect(f"127.0.0.1:{port}") as channel:  # the service's own name too, as kubelet may ask
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="modalmesh.v1.Encoder"), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    handle.stop(grace=0.5)  # draining, then gone: the probe process goes with the service
    assert handle.probe._process.wait(10) == 0
    with pytest.raises(grpc.RpcError) as raised:
        probe_status(port)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_health_only_port_says_not_serving_when_the_service_stops_sending_heartbeats():
    from modalmesh.common.probe import ProbeProcess

    probe = ProbeProcess("test", "127.0.0.1", free_port(), ["modalmesh.v1.Encoder"], stale_s=1.0)
    try:
        probe.set_serving(True)
        assert probe_status(probe.port) == "SERVING"
        probe._closed.set()  # the heartbeat stops, the pipe stays open: a service whose interpreter is stuck
        deadline = time.monotonic() + 10
        while probe_status(probe.port) == "SERVING" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert probe_status(probe.port) == "NOT_SERVING"
    finally:
        probe.stop()


def test_a_health_port_in_use_is_a_clear_error(start_text_service):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on health port {port}"):
            start_text_service(health_port=port)


# Sentences the load-time check (text/model.py CHECK_SENTENCES) does not use.
ENGINE_SENTENCES = [
    "my card payment failed",
    "Where is my parcel? It said delivered on Monday.",
    "Refund pending - allow up to 14 days",
    "Stack overflow in checkout module at line 1337",
    "Bonjour, je n'arrive pas à me connecter",
]


def test_converting_to_openvino_reports_nothing_and_forks_nothing(tmp_path):
    """OpenVINO's converter would report the conversion to Google Analytics from a forked
    process; the mesh's conversions load the converter's own stub instead. In a fresh
    interpreter (the converter not loaded yet) and where it was loaded before."""
    import subprocess
    import sys

    script = (
        "import multiprocessing, sys, torch\n"
        "first = sys.argv[1] == 'loaded'\n"
        "if first:\n"
        "    import openvino.tools.ovc.convert_impl\n"
        "from modalmesh.common import compiled\n"
        "compiled.convert_module(torch.nn.Linear(4, 2), torch.zeros(1, 4), 'tiny-linear')\n"
        "import openvino.tools.ovc.telemetry_stub as stub\n"
        "bound = [sys.modules[name].tm for name in compiled.CONVERTER_MODULES if name in sys.modules]\n"
        "print(bool(bound) and all(tm is stub for tm in bound), sys.modules.get('openvino_telemetry'), multiprocessing.active_children())\n"
    )
    for state in ("fresh", "loaded"):
        done = subprocess.run(
            [sys.executable, "-c", script, state],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "MODALMESH_CACHE_DIR": str(tmp_path / state)},
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().splitlines()[-1] == "True None []", (state, done.stdout)


def test_openvino_runs_minilm_with_torchs_features():
    # The bundled model, both engines through the real loading code: what the service
    # serves by default (openvino) is what the shipped weights were trained on (torch).
    from modalmesh.common.compiled import OpenVINOSettings

    torch_encoder = TextEncoder("")
    converted = TextEncoder("", engine="openvino", openvino=OpenVINOSettings(threads=2))
    assert converted.model is None and converted.compiled is not None and converted.version == torch_encoder.version
    expected, got = torch_encoder.encode_batch(ENGINE_SENTENCES), converted.encode_batch(ENGINE_SENTENCES)
    for a, b in zip(expected, got):
        assert float(a.pooled @ b.pooled) >= 0.999
        np.testing.assert_allclose(b.tokens, a.tokens, atol=1e-4)
    alone = converted.encode_batch(ENGINE_SENTENCES[1:2])[0]  # batch of one: no padding
    np.testing.assert_allclose(alone.pooled, got[1].pooled, atol=1e-5)


def test_a_damaged_openvino_cache_is_converted_again(tiny_bert_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MODALMESH_CACHE_DIR", str(tmp_path))
    first = TextEncoder(str(tiny_bert_dir), engine="openvino")
    [folder] = (tmp_path / "openvino").iterdir()
    assert (folder / "model.xml").is_file() and (folder / "model.bin").is_file()
    (folder / "model.xml").write_text("<net>not a model")
    again = TextEncoder(str(tiny_bert_dir), engine="openvino")
    reference = TextEncoder(str(tiny_bert_dir)).encode_batch(["where is my parcel"])[0].pooled
    for encoder in (first, again):
        np.testing.assert_allclose(encoder.encode_batch(["where is my parcel"])[0].pooled, reference, atol=1e-5)
    assert "<net>not a model" not in (folder / "model.xml").read_text()


def test_the_tokenizer_gives_transformers_ids_masks_and_truncation():
    # Encoding tokenizes through the `tokenizers` library (tokenizer.json), as transformers'
    # fast tokenizer does, so that a service on OpenVINO needs neither transformers nor torch.
    from modalmesh.text.model import CHECK_SENTENCES, _Tokenizer, default_model_dir

    from transformers import AutoTokenizer

    source = default_model_dir()
    sentences = [*CHECK_SENTENCES, *ENGINE_SENTENCES, "", "   ", "naïve café — ÉLAN\tTAB", "word " * 400]
    ours = _Tokenizer(source, 256, allow_download=False)
    assert ours.fast is not None  # the bundled model has tokenizer.json
    for batch in (sentences, sentences[:1], sentences[-2:]):
        ids, mask, truncated, read = ours(batch)
        theirs = AutoTokenizer.from_pretrained(source, local_files_only=True)(batch, padding=True, truncation=True, max_length=256, return_tensors="np")
        np.testing.assert_array_equal(ids, theirs["input_ids"])
        np.testing.assert_array_equal(mask, theirs["attention_mask"])
        assert truncated == [bool(e.overflowing) for e in theirs.encodings]
        assert read == [max(end for _, end in e.offsets) if e.overflowing else 0 for e in theirs.encodings]
    assert ours(["word " * 400])[2] == [True] and ours(["hello"])[2] == [False]
    assert ours(["word " * 400])[3] == [len("word " * 254) - 1]  # 254 words and the two special tokens


def test_openvino_check_vectors_that_do_not_match_convert_again(tiny_bert_dir, tmp_path, monkeypatch):
    # The converted model is checked against torch's vectors kept beside it on every load:
    # a conversion that computes something else is converted again, not served.
    from modalmesh.text.model import REFERENCE_FILE

    monkeypatch.setenv("MODALMESH_CACHE_DIR", str(tmp_path))
    TextEncoder(str(tiny_bert_dir), engine="openvino")
    [folder] = (tmp_path / "openvino").iterdir()
    kept = np.load(folder / REFERENCE_FILE)
    np.save(folder / REFERENCE_FILE, -kept)  # as if the model beside it computed the opposite
    again = TextEncoder(str(tiny_bert_dir), engine="openvino")
    np.testing.assert_allclose(np.load(folder / REFERENCE_FILE), kept, atol=1e-6)
    reference = TextEncoder(str(tiny_bert_dir)).encode_batch(["where is my parcel"])[0].pooled
    np.testing.assert_allclose(again.encode_batch(["where is my parcel"])[0].pooled, reference, atol=1e-5)


def test_the_text_service_on_openvino_never_loads_torch(tiny_bert_dir, tmp_path):
    # torch costs a process about 500 MiB: the text service on OpenVINO (the default) runs
    # without it, the conversion done once in a child process. A fresh interpreter, since
    # this one has torch loaded.
    import subprocess
    import sys

    script = f"""
import sys
from modalmesh.common.client import EncoderClient, connect
from modalmesh.common.config import load_config
from modalmesh.common.runtime import start_server
from modalmesh.text.server import TextService
config = load_config("text", environ={{}}, model={str(tiny_bert_dir)!r}, engine="openvino", port=0, metrics_port=0, grace_seconds=0.5)
handle = start_server(config, TextService(config))
with connect(handle.address) as channel:
    for datatype in ("FP16", "BF16", "FP32"):
        assert EncoderClient(channel).encode_text("my card payment failed", output_datatype=datatype, timeout=30).pooled.shape == (32,)
handle.stop(grace=0.5)
print("torch loaded:", "torch" in sys.modules, "transformers loaded:", "transformers" in sys.modules)
"""
    for run in ("converts", "reads the conversion"):
        environment = {**os.environ, "MODALMESH_CACHE_DIR": str(tmp_path)}
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=environment)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "torch loaded: False transformers loaded: False" in done.stdout, (run, done.stdout)
    [folder] = (tmp_path / "openvino").iterdir()
    assert (folder / "model.xml").is_file() and (folder / "reference.npy").is_file()


def test_a_conversion_that_fails_in_the_child_process_says_why(tiny_bert_dir, tmp_path):
    # The child process that converts for a torch-free text service fails (here: weights that
    # do not load): the service does not start, and the error says what went wrong.
    import shutil
    import subprocess
    import sys

    broken = tmp_path / "broken-bert"
    shutil.copytree(tiny_bert_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    script = f"""
from modalmesh.text.model import TextEncoder
try:
    TextEncoder({str(broken)!r}, engine="openvino")
except ValueError as exc:
    print("refused:", exc)
"""
    environment = {**os.environ, "MODALMESH_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=environment)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused: text model broken-bert@" in done.stdout, done.stdout
    assert f"the OpenVINO conversion failed: cannot load or convert the model in {broken}:" in done.stdout, done.stdout
    assert "Traceback" not in done.stdout and "Error:" not in done.stdout  # no Python exception names


def test_quantize_runs_the_text_model_in_torch(tiny_bert_dir):
    service = TextService(load_config("text", environ={}, model=str(tiny_bert_dir), quantize=True))
    service.initialize()
    try:
        encoder, _ = service.loaded
        assert encoder.engine == "torch" and encoder.version.endswith("+int8")
    finally:
        service.finalize()
    with pytest.raises(ValueError, match="engine torch"):
        TextEncoder(str(tiny_bert_dir), quantize=True, engine="openvino")
