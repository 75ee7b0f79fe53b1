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
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
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
