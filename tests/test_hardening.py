"""What a caller hears when something goes wrong: the client's faults are INVALID_ARGUMENT and
counted, errors repeat only a bounded piece of the input, and an internal failure names no
Python internals. Real services on 127.0.0.1."""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from modalmesh.common import errors, telemetry
from modalmesh.common.client import connect
from modalmesh.text.server import TextService
from modalmesh.v1 import encoder_pb2, router_pb2


def raw_call(channel: grpc.Channel, method: str, payload: bytes, timeout: float = 10):
    """A unary call with hand-made request bytes (what a buggy client in any language sends)."""
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)(payload, timeout=timeout)


def test_request_bytes_that_do_not_parse_are_invalid_argument_and_counted(text_service):
    refused = telemetry.RPC_ERRORS.labels("text", "EncodeOnce", "INVALID_ARGUMENT")
    before = refused._value.get()
    cases = [
        b"\xff\xff\xff\xff",  # not protobuf at all
        b"\x0a\x05abc",  # a length past the end
        # EncodeOnceRequest.header.request_id (a string) holding bytes that are not UTF-8
        b"\x0a\x04" + b"\x0a\x02\xc3\x28",
    ]
    with connect(text_service.address) as channel:
        for payload in cases:
            with pytest.raises(grpc.RpcError) as raised:
                raw_call(channel, "/modalmesh.v1.Encoder/EncodeOnce", payload)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, payload
            assert "not a valid protobuf message" in raised.value.details()
            assert errors.field_violations(raised.value)[0][0] == "request"
        assert refused._value.get() - before == len(cases)
        reply = raw_call(
            channel,
            "/modalmesh.v1.Encoder/EncodeOnce",
            encoder_pb2.EncodeOnceRequest(header=encoder_pb2.EncodeHeader(media_type="text/plain", pooled_only=True), payload=b"hello").SerializeToString(),
        )
        assert encoder_pb2.EncodeOnceResponse.FromString(reply).chunks  # the service still answers


def test_an_error_repeats_at_most_a_bounded_piece_of_the_input(text_service):
    with connect(text_service.address) as channel:
        request = encoder_pb2.EncodeOnceRequest(header=encoder_pb2.EncodeHeader(media_type="text/" + "x" * 100_000), payload=b"hi")
        with pytest.raises(grpc.RpcError) as raised:
            raw_call(channel, "/modalmesh.v1.Encoder/EncodeOnce", request.SerializeToString())
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # not RESOURCE_EXHAUSTED from the metadata limit
    details = raised.value.details()
    assert details.startswith("header.media_type") and len(details.encode()) <= errors.MAX_MESSAGE_CHARS * 3
    status_bytes = dict(raised.value.trailing_metadata()).get("grpc-status-details-bin", b"")
    assert len(details.encode()) + len(status_bytes) < 1024


def test_an_internal_failure_names_no_python_internals(start_text_service, caplog):
    class FailingTextService(TextService):
        def encode(self, request):
            raise ValueError("invalid literal for int() with base 10: 'secret'")
            yield  # a generator, as the real one

    handle = start_text_service(service_class=FailingTextService)
    with connect(handle.address) as channel:
        request = encoder_pb2.EncodeOnceRequest(header=encoder_pb2.EncodeHeader(media_type="text/plain"), payload=b"hi")
        with pytest.raises(grpc.RpcError) as raised:
            raw_call(channel, "/modalmesh.v1.Encoder/EncodeOnce", request.SerializeToString())
    details = raised.value.details()
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert "ValueError" not in details and "secret" not in details and "internal error in the text service" in details
    trace = details.split("(trace ")[1].split(")")[0]
    assert any(trace in record.getMessage() and record.exc_info for record in caplog.records)  # the detail is in the log


def test_invalid_utf8_in_a_router_request_is_invalid_argument(mesh):
    with connect(mesh.router.address) as channel:
        task = router_pb2.AnalyzeRequest(task="screenshot_triage").SerializeToString()
        with pytest.raises(grpc.RpcError) as raised:
            raw_call(channel, "/modalmesh.v1.Router/Analyze", task + b"\x1a\x03\xe2\x28\xa1")  # text: not UTF-8
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # A stream whose second message does not parse: the field says which message.
        stream = channel.stream_stream("/modalmesh.v1.Router/AnalyzeStream", request_serializer=None, response_deserializer=None)
        first = router_pb2.AnalyzeStreamRequest(request=router_pb2.AnalyzeRequest(task="screenshot_triage", text="hi"))
        with pytest.raises(grpc.RpcError) as raised:
            list(stream(iter([first.SerializeToString(), b"\xff\xff"]), timeout=20))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "messages[1]" in raised.value.details()


def test_a_caller_that_goes_away_mid_upload_is_not_an_internal_error(text_service):
    internal = telemetry.RPC_ERRORS.labels("text", "Encode", "INTERNAL")
    cancelled = telemetry.RPC_ERRORS.labels("text", "Encode", "CANCELLED")
    before_internal, before_cancelled = internal._value.get(), cancelled._value.get()
    sent = threading.Event()

    def requests():
        yield encoder_pb2.EncodeRequest(header=encoder_pb2.EncodeHeader(media_type="text/plain"))
        yield encoder_pb2.EncodeRequest(payload=b"half of a message")
        sent.set()
        threading.Event().wait(30)  # never finishes the upload

    with connect(text_service.address) as channel:
        from modalmesh.v1 import encoder_pb2_grpc

        call = encoder_pb2_grpc.EncoderStub(channel).Encode(requests(), timeout=30)
        assert sent.wait(10)
        call.cancel()
    for _ in range(100):
        if cancelled._value.get() > before_cancelled:
            break
        threading.Event().wait(0.05)
    assert cancelled._value.get() == before_cancelled + 1 and internal._value.get() == before_internal


def test_a_truncated_wav_is_refused_whole_or_streamed():
    """The data chunk's declared size was not checked: half an upload was answered as if it
    were the whole recording."""
    import numpy as np

    from modalmesh.audio.decode import StreamDecoder, decode_file
    from tests.media import wav_bytes

    wav = wav_bytes(np.zeros(16000, dtype=np.float32), 16000)
    assert decode_file(wav, "audio/wav")[0].shape == (16000,)
    with pytest.raises(errors.ServiceError) as raised:
        decode_file(wav[: len(wav) // 2], "audio/wav")
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT and "the WAV file is truncated" in raised.value.message
    stream = StreamDecoder("audio/wav", {})
    for start in range(0, len(wav) // 2, 1000):
        stream.feed(wav[start : min(start + 1000, len(wav) // 2)])
    with pytest.raises(errors.ServiceError, match="declares 32000 bytes"):
        stream.finish()
    streaming_writer = bytearray(wav)
    streaming_writer[40:44] = b"\xff\xff\xff\xff"  # a writer that does not know the length in advance
    assert decode_file(bytes(streaming_writer[: len(wav) // 2]), "audio/wav")[0].size > 0


# ------------------------------------------------------------------ chaos: encoders down


def test_triage_degrades_when_the_text_service_is_down(mesh):
    """The screen's OCR lines are embedded by the text service: its outage failed the image
    too, and screenshot-only requests got UNAVAILABLE."""
    from modalmesh.client import RouterClient
    from tests.media import image_bytes, render_screenshot

    router = mesh.start_router(text_target="127.0.0.1:9")  # nothing listens there
    try:
        with RouterClient(router.address, timeout=30) as client:
            screenshot = image_bytes(render_screenshot("Error 402: Payment declined"))
            alone = client.analyze("screenshot_triage", image=screenshot, mode="full")
            both = client.analyze("screenshot_triage", image=screenshot, text="my card was declined", mode="full")
    finally:
        router.stop(grace=0.5)
    for answer in (alone, both):
        image = answer["modalities"]["image"]
        assert image["status"] == "used" and "OCR read but not used: the text service failed (UNAVAILABLE" in image["reason"]
        assert "127.0.0.1" not in image["reason"] and "the text service cannot be reached" in image["reason"]  # no internal address
        assert answer["label"]
    text = both["modalities"]["text"]
    assert text["status"] == "failed" and text["error_code"] == "UNAVAILABLE" and text["reason"] == "the text service cannot be reached"


def test_an_encoder_killed_and_restarted_under_load_loses_no_request(mesh):
    """Requests keep coming while the vision service is stopped and started again on the same
    port: every one is answered (from the text while the image cannot be read), none is lost."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from modalmesh.client import RouterClient
    from tests.conftest import start_service
    from tests.media import image_bytes, render_screenshot

    vision = start_service("vision", ocr=False)
    port = vision.port
    router = mesh.start_router(vision_target=vision.address)
    screenshot = image_bytes(render_screenshot("The app has stopped"))
    answers, failures = [], []

    def ask(i: int):
        try:
            with RouterClient(router.address, timeout=20) as client:
                answers.append(
                    client.analyze("screenshot_triage", image=screenshot, text="the app crashes when I open it", mode="full", request_id=f"chaos-{i}")
                )
        except grpc.RpcError as exc:
            failures.append((i, exc.code(), exc.details()))

    try:
        with ThreadPoolExecutor(4) as pool:
            first = [pool.submit(ask, i) for i in range(8)]
            [f.result(timeout=60) for f in first]
            vision.stop(grace=0)
            during = [pool.submit(ask, i) for i in range(8, 16)]
            [f.result(timeout=60) for f in during]
            vision = start_service("vision", ocr=False, port=port)
            # The router redials a replica that went away every 0.1-0.4 s (bench_recovery.py
            # measures how soon it reads images again): wait for that before the last round.
            with RouterClient(router.address, timeout=20) as client:
                ready_by = time.monotonic() + 10
                while (
                    time.monotonic() < ready_by
                    and client.analyze("screenshot_triage", image=screenshot, mode="full")["modalities"]["image"]["status"] != "used"
                ):
                    time.sleep(0.05)
            after = [pool.submit(ask, i) for i in range(16, 24)]
            [f.result(timeout=60) for f in after]
    finally:
        router.stop(grace=0.5)
        vision.stop(grace=0.5)
    assert not failures and len(answers) == 24  # nothing lost, nothing failed
    by_id = {a["request_id"]: a for a in answers}
    down = [by_id[f"chaos-{i}"]["modalities"]["image"]["status"] for i in range(8, 16)]
    up = [by_id[f"chaos-{i}"]["modalities"]["image"]["status"] for i in range(16, 24)]
    assert all(status in ("failed", "timed_out") for status in down) and all(status == "used" for status in up)
    assert all(by_id[f"chaos-{i}"]["modalities"]["text"]["status"] == "used" for i in range(8, 16))


def test_a_hung_speech_service_costs_the_speech_budget_not_the_deadline(mesh):
    """Asked for speech while the speech service hangs, the router waited almost the whole
    deadline; now it answers after the speech budget, without the speech, saying why."""
    from modalmesh.audio.server import AudioService
    from modalmesh.audio.speech import SpeechServicer
    from modalmesh.client import RouterClient
    from modalmesh.common.config import load_config
    from modalmesh.common.runtime import start_server
    from modalmesh.v1 import speech_pb2_grpc

    release = threading.Event()

    class HungSpeech(SpeechServicer):
        def Synthesize(self, request, context):
            release.wait(60)
            yield from ()

    class HungAudioService(AudioService):
        def register(self, server):
            names = super(AudioService, self).register(server)  # the encoder, without the real speech servicer
            speech_pb2_grpc.add_SpeechServicer_to_server(HungSpeech(lambda: None, 1000, None), server)
            return [*names, "modalmesh.v1.Speech"]

    config = load_config("audio", environ={}, port=0, metrics_port=0, grace_seconds=0.5, transcript=False)
    audio = start_server(config, HungAudioService(config))
    router = mesh.start_router(audio_target=audio.address, speech_budget_s=1.0)
    try:
        with RouterClient(router.address, timeout=10) as client:  # well inside the request's 30 s deadline
            answer = client.analyze("screenshot_triage", text="my card was declined", speech=True, deadline_ms=30_000)
    finally:
        release.set()
        router.stop(grace=0.5)
        audio.stop(grace=0.5)
    assert answer["label"] and not answer["speech_wav"]
    assert answer["findings"]["speech_error"].startswith("DEADLINE_EXCEEDED")


@contextlib.contextmanager
def one_worker_held(start_text_service):
    """A real text service with one worker and four waiting places, its worker held by a
    call until `release` is set: (handle, client, release, the holding thread)."""
    from modalmesh.common.client import EncoderClient
    from tests.test_text_service import blocking_service

    started, release = threading.Semaphore(0), threading.Event()
    handle = start_text_service(service_class=blocking_service(started, release), worker_threads=1, max_waiting_calls=4)
    with connect(handle.address) as channel:
        client = EncoderClient(channel)
        held = threading.Thread(target=lambda: client.encode_text("holds the only worker", timeout=30))
        held.start()
        assert started.acquire(timeout=10)
        yield handle, client, release, held


def test_a_call_that_cannot_be_answered_before_its_deadline_is_not_admitted(start_text_service):
    """Admission weighs the expected wait against the caller's deadline: what it admits,
    it should answer in time."""
    import time

    with one_worker_held(start_text_service) as (handle, client, release, held):
        handle.admission.assume_answered(5.0)  # calls have been taking 5 s: one more would take about 10
        began = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            client.encode_text("due in 2 s", timeout=2)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() - began < 1.5
        assert "an answer would take about 10.0 s" in raised.value.details()
        # ... and says when to come back: when the calls in hand have shrunk by the excess.
        from modalmesh.common.errors import retry_after

        assert retry_after(raised.value) == pytest.approx(10.0 - 0.8 * 2, abs=0.3)
        waiting = threading.Thread(target=lambda: client.encode_text("due in 30 s: admitted, waits", timeout=30))
        waiting.start()
        deadline = time.monotonic() + 10
        while handle.admission.now_waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert handle.admission.now_waiting == 1
        release.set()
        held.join(30)
        waiting.join(30)
    assert handle.admission.service_s < 5.0  # the real calls' times pull the average down


def test_the_expected_answer_time_counts_the_rate_at_which_calls_finish():
    """Calls share the same cores: 32 running and 40 waiting, finishing at 4 a second, put a
    new call about 18 s away, however short a call's own time on a worker looks."""
    from modalmesh.common.admission import Admission

    admission = Admission("test", running=32, waiting=64)
    assert admission.expected_s() == 0.0  # nothing known yet
    admission.service_s, admission.now_running, admission.now_waiting = 0.5, 32, 40
    admission._finished.extend(100.0 + 0.25 * k for k in range(32))
    assert admission.finish_rate(now=108.0) == pytest.approx(4.0)
    assert admission.expected_s(now=108.0) == pytest.approx((32 + 40 + 1) / 4.0)
    assert admission.finish_rate(now=116.0) == pytest.approx(2.0)  # nothing answered for 8 s: the rate falls
    admission.now_running, admission.now_waiting = 1, 0  # a light load: the rate says how often calls come, not capacity
    assert admission.expected_s(now=108.0) == pytest.approx(0.5 * (1 + 1 / 32))


def test_calls_waiting_for_a_worker_get_one_in_the_order_they_came(start_text_service):
    """Waiting calls are served first come first served: under overload a call that had to
    wait longer than the rest (a free-for-all for the next free worker) ran out of time
    although admission had judged it would be answered."""
    import time

    from modalmesh.common.client import EncoderClient
    from modalmesh.text.server import decode_text
    from tests.test_text_service import blocking_service

    order: list[str] = []
    started, release = threading.Semaphore(0), threading.Event()

    class Recording(blocking_service(started, release)):  # type: ignore[misc]
        def encode(self, request):
            order.append(decode_text(request.payload))
            yield from super().encode(request)

    handle = start_text_service(service_class=Recording, worker_threads=1, max_waiting_calls=8)
    handle.admission.assume_answered(0.01)  # calls have been answered before: the next may wait for a worker
    with connect(handle.address) as channel, ThreadPoolExecutor(8) as pool:
        client = EncoderClient(channel)
        calls = [pool.submit(client.encode_text, "holds the only worker", timeout=30)]
        assert started.acquire(timeout=10)
        for k in range(6):
            calls.append(pool.submit(client.encode_text, f"waits {k}", timeout=30))
            deadline = time.monotonic() + 10
            while handle.admission.now_waiting < k + 1 and time.monotonic() < deadline:
                time.sleep(0.005)
            assert handle.admission.now_waiting == k + 1
            time.sleep(0.02)  # arrivals apart: a waiter that keeps checking for its caller is not back in line at once
        time.sleep(0.3)
        release.set()
        for call in calls:
            assert call.result(timeout=30).pooled.shape == (32,)
    assert order == ["holds the only worker"] + [f"waits {k}" for k in range(6)]


def test_a_crowd_of_refused_callers_is_asked_to_come_back_later():
    """64 refusals in the last 2 s, each asking for a 1 s wait, mean about 32 callers coming
    back; at 4 answers a second a caller's turn comes in about 8 s, so that is what the
    next refusal asks for (the shorter wait its own call alone would suggest brings the
    crowd back many times per answer). Without a crowd, the call's own wait."""
    from modalmesh.common.admission import REFUSAL_WINDOW, RETRY_AFTER_S, Admission

    admission = Admission("test", running=32, waiting=64)
    assert admission.retry_hint(1.5) == 1.5  # nothing known of the rate: the call's own wait
    admission._refused.clear()
    now = time.monotonic()
    admission._finished.extend(now - 8.0 + 0.25 * k for k in range(32))  # 4 answers a second
    admission._refused.extend((now - 2.0 + 2.0 * k / REFUSAL_WINDOW, 1.0) for k in range(REFUSAL_WINDOW))
    assert admission.retry_hint(1.0) == pytest.approx(8.0, rel=0.05)
    assert admission.retry_hint(12.0) == 12.0  # a longer wait of its own still counts
    admission._refused.clear()
    admission._refused.extend((now - 0.1 + 0.1 * k / REFUSAL_WINDOW, 25.0) for k in range(REFUSAL_WINDOW))
    assert admission.retry_hint(1.0) == RETRY_AFTER_S[1]  # bounded
    admission._refused.clear()
    admission._refused.extend((now - 60.0 + k / REFUSAL_WINDOW, 1.0) for k in range(REFUSAL_WINDOW))
    assert admission.retry_hint(0.5) == pytest.approx(0.5, abs=0.1)  # refusals a minute ago: no crowd now


def test_before_any_call_has_finished_a_call_with_a_deadline_does_not_wait(start_text_service):
    """A burst at start-up filled every waiting place before anything was known of how long a
    call takes: until a few calls have been answered, a call with a deadline that finds
    every worker busy is refused at once."""
    import time

    with one_worker_held(start_text_service) as (handle, client, release, held):
        began = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            client.encode_text("due in 30 s", timeout=30)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() - began < 5
        assert "too few calls answered yet" in raised.value.details()
        release.set()
        held.join(30)
        assert handle.admission.service_s > 0
        assert client.encode_text("and afterwards", timeout=30).pooled.shape == (32,)
    assert len(handle.admission._finished) == 2  # two answers: the rate is not known yet


def test_the_router_comes_back_to_a_busy_encoder_when_it_says(mesh, start_text_service):
    """A busy encoder refuses with the wait it expects (RetryInfo, grpc-retry-pushback-ms):
    the router calls again after it, inside the deadline, so the answer reads the text
    instead of going without it."""
    import time

    from modalmesh.client import RouterClient
    from modalmesh.common.client import EncoderClient
    from tests.test_text_service import blocking_service

    started, release = threading.Semaphore(0), threading.Event()
    from modalmesh.common.config import load_config

    text = start_text_service(
        service_class=blocking_service(started, release), worker_threads=1, max_waiting_calls=0, model=load_config("text", environ={}).model
    )  # the model the task's weights were trained with
    text.admission.assume_answered(0.4)  # a call takes 0.4 s: a refusal asks for about that long a wait
    router = mesh.start_router(text_target=text.address)
    try:
        with connect(text.address) as channel, RouterClient(router.address, timeout=20) as client:
            release.set()
            client.analyze("screenshot_triage", text="warming up", mode="full")
            release.clear()
            while started.acquire(timeout=0.01):
                pass  # the warm-up's
            held = threading.Thread(target=lambda: EncoderClient(channel).encode_text("holds the only worker", timeout=30))
            held.start()
            assert started.acquire(timeout=10)
            threading.Timer(0.5, release.set).start()
            began = time.monotonic()
            answer = client.analyze("screenshot_triage", text="my card was declined at checkout", mode="full")
            held.join(30)
        assert answer["modalities"]["text"]["status"] == "used"
        assert time.monotonic() - began < 10
    finally:
        router.stop(grace=0.5)


def test_a_starting_server_runs_only_cold_start_calls_with_deadlines_at_once(start_text_service):
    """Until the answer rate is known, a service with cold_start_calls runs at most that many
    calls with deadlines at once (a burst at start-up would otherwise get every worker's
    worth in before any answer tells how long one takes)."""
    from modalmesh.common.admission import RATE_MIN_CALLS
    from modalmesh.common.client import EncoderClient
    from tests.test_text_service import blocking_service

    started, release = threading.Semaphore(0), threading.Event()
    handle = start_text_service(service_class=blocking_service(started, release), worker_threads=8, cold_start_calls=2)
    with connect(handle.address) as channel:
        client = EncoderClient(channel)
        held = [threading.Thread(target=lambda: client.encode_text("runs", timeout=30)) for _ in range(2)]
        for thread in held:
            thread.start()
        assert started.acquire(timeout=10) and started.acquire(timeout=10)
        with pytest.raises(grpc.RpcError) as raised:
            client.encode_text("a third, with a deadline", timeout=30)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "cold_start_calls 2" in raised.value.details()
        assert errors.retry_after(raised.value) is not None
        release.set()
        for thread in held:
            thread.join(30)
        handle.admission.assume_answered(0.01, RATE_MIN_CALLS)  # the rate is known: the limit is off
        release.clear()
        more = [threading.Thread(target=lambda: client.encode_text("runs", timeout=30)) for _ in range(3)]
        for thread in more:
            thread.start()
        assert all(started.acquire(timeout=10) for _ in range(3))  # three at once now
        release.set()
        for thread in more:
            thread.join(30)


def test_refusals_under_overload_are_logged_once_per_interval_with_their_count(caplog, monkeypatch):
    """At hundreds of RESOURCE_EXHAUSTED a second, a log line each would take the CPU the
    admitted calls need: one line per interval, saying how many."""
    from modalmesh.common import runtime

    clock = [1000.0]
    monkeypatch.setattr(runtime.time, "monotonic", lambda: clock[0])
    refusals = runtime._Refusals()
    busy = errors.resource_exhausted("router: every worker is busy")
    with caplog.at_level("INFO", logger=runtime.log.name):
        for _ in range(500):
            refusals.note("/modalmesh.v1.Router/Analyze", busy)
            clock[0] += 0.001  # 500 refusals in 0.5 s
        clock[0] += runtime.REFUSAL_LOG_S
        refusals.note("/modalmesh.v1.Router/Analyze", busy)
    lines = [r.getMessage() for r in caplog.records if "every worker is busy" in r.getMessage()]
    assert len(lines) == 2
    assert lines[0].endswith("(1 refused since the last such line)") and lines[1].endswith("(500 refused since the last such line)")


def test_a_ready_server_keeps_what_it_loaded_out_of_full_collections(start_text_service):
    """Modules and models live as long as the server: frozen out of the cyclic collector's
    view once loaded, a full collection (which holds the GIL while it walks every object)
    does not walk them in front of calls and health checks; stopped, they are let go."""
    import gc

    gc.unfreeze()
    handle = start_text_service(initialize=False)
    assert gc.get_freeze_count() == 0
    handle.initialize()
    assert gc.get_freeze_count() > 10_000  # torch, gRPC and the model's objects among them
    handle.stop(grace=0.5)
    assert gc.get_freeze_count() == 0
