"""Trace context crosses a gRPC hop: the server's span is the client span's child."""

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from modalmesh.common import telemetry
from modalmesh.common.client import EncoderClient, connect


@pytest.fixture(scope="module")
def spans():
    telemetry.setup_tracing("test")  # installs the SDK provider once per process
    assert isinstance(trace.get_tracer_provider(), TracerProvider)
    exporter = InMemorySpanExporter()
    telemetry.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def test_one_trace_id_from_caller_to_encoder(spans, text_service):
    spans.clear()
    with telemetry.tracer().start_as_current_span("caller") as root:
        with connect(text_service.address) as channel:
            EncoderClient(channel).encode_text("follow me")
    trace_id = root.get_span_context().trace_id
    server_spans = [s for s in spans.get_finished_spans() if s.kind == trace.SpanKind.SERVER and s.name == "modalmesh.v1.Encoder/EncodeOnce"]
    client_spans = [s for s in spans.get_finished_spans() if s.kind == trace.SpanKind.CLIENT and s.name == "modalmesh.v1.Encoder/EncodeOnce"]
    assert len(server_spans) == 1 and len(client_spans) == 1
    server, client = server_spans[0], client_spans[0]
    assert server.context.trace_id == client.context.trace_id == trace_id
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    assert server.parent.is_remote  # it came through gRPC metadata, not a shared context
    assert client.parent.span_id == root.get_span_context().span_id
    assert server.attributes["rpc.method"] == "EncodeOnce"


def test_spans_are_recorded_only_once_something_receives_them(monkeypatch):
    """With the default exporter `none` nothing would receive a span: none is recorded, but
    each still has trace ids, and they are passed on to the next hop."""
    from opentelemetry import propagate

    tracer = TracerProvider(sampler=telemetry.RecordWhenExported()).get_tracer("test")
    monkeypatch.setattr(telemetry, "_exporters_added", set())
    with tracer.start_as_current_span("caller") as root:
        call = tracer.start_span("call")
    trace_id = root.get_span_context().trace_id
    assert not root.is_recording() and not call.is_recording() and trace_id != 0
    assert call.get_span_context().trace_id == trace_id
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(call))
    assert f"{trace_id:032x}" in carrier["traceparent"]
    monkeypatch.setattr(telemetry, "_exporters_added", {"console"})
    assert tracer.start_span("exported").is_recording()


def test_where_nothing_records_spans_a_call_carries_the_callers_trace_and_no_client_span(monkeypatch):
    """With the process's provider ours and nothing receiving spans, the client makes no
    CLIENT span: a call inside a (non-recorded) span carries that span's trace context, a
    call outside any carries none. Once something records spans, a CLIENT span is made
    and the call carries its context: same trace, another span id."""
    from concurrent import futures

    import grpc

    def traceparent(request, context):
        return dict(context.invocation_metadata()).get("traceparent", "").encode()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("echo.Echo", {"Meta": grpc.unary_unary_rpc_method_handler(traceparent)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    telemetry.setup_tracing("test")
    monkeypatch.setattr(telemetry, "_exporters_added", set())  # nothing receives spans (as `trace_exporter none` runs)
    try:
        with connect(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/echo.Echo/Meta")
            assert not telemetry.spans_recorded()
            assert call(b"", timeout=10) == b""  # no trace of the caller's: none passed on
            with telemetry.tracer().start_as_current_span("caller") as caller:
                assert not caller.is_recording()
                ids = caller.get_span_context()
                _, trace_id, span_id, _ = call(b"", timeout=10).decode().split("-")
                assert (trace_id, span_id) == (f"{ids.trace_id:032x}", f"{ids.span_id:016x}")  # the caller's own span
            monkeypatch.setattr(telemetry, "_exporters_added", {"test"})  # something records spans now
            assert telemetry.spans_recorded()
            with telemetry.tracer().start_as_current_span("caller") as caller:
                ids = caller.get_span_context()
                _, trace_id, span_id, _ = call(b"", timeout=10).decode().split("-")
                assert trace_id == f"{ids.trace_id:032x}" and span_id != f"{ids.span_id:016x}"  # a CLIENT span, the caller's child
    finally:
        server.stop(0)
