"""One trace across four processes: the mesh exports spans over OTLP to a receiver
running inside this test, and one request's spans share one trace id."""

import threading
import time
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from modalmesh.client import RouterClient
from modalmesh.up import ORDER, Mesh
from modalmesh.up import free_port
from tests.media import image_bytes, render_screenshot, tone, wav_bytes


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A minimal OTLP/gRPC trace receiver: keeps (service name, span name, trace id, parent)."""

    def __init__(self):
        self.spans = []
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            for resource_spans in request.resource_spans:
                service = next(a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name")
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.spans.append((service, span.name, span.trace_id.hex(), span.parent_span_id.hex()))
        return trace_service_pb2.ExportTraceServiceResponse()


def test_one_trace_id_across_router_and_encoders():
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    env = {
        "MODALMESH_TRACE_EXPORTER": "otlp",
        "MODALMESH_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "MODALMESH_METRICS_PORT": "0",
    }
    mesh = Mesh(ports={name: free_port() for name in ORDER}, extra_env=env, quiet_logs=True)
    mesh.start()
    try:
        mesh.wait_healthy(timeout=300, progress=None)
        with RouterClient(mesh.address("router")) as client:
            answer = client.analyze(
                "screenshot_triage",
                text="my card was declined",
                image=image_bytes(render_screenshot("Error 402: Payment declined")),
                audio=wav_bytes(tone(1.0, 16000), 16000),
                mode="full",
                speech=True,
            )
        assert answer["label"]
        deadline = time.monotonic() + 30
        analyze = []
        while time.monotonic() < deadline:
            with receiver.lock:
                analyze = [s for s in receiver.spans if s[0] == "modalmesh-router" and s[1] == "modalmesh.v1.Router/Analyze"]
                if analyze:
                    trace_id = analyze[0][2]
                    services = {s[0] for s in receiver.spans if s[2] == trace_id}
                    if services >= {"modalmesh-router", "modalmesh-text", "modalmesh-vision", "modalmesh-audio"}:
                        break
            time.sleep(0.2)
        assert analyze, "the router exported no Analyze span"
        trace = [s for s in receiver.spans if s[2] == trace_id]
        assert {s[0] for s in trace} == {"modalmesh-router", "modalmesh-text", "modalmesh-vision", "modalmesh-audio"}
        names = {s[1] for s in trace}
        assert {"router.encode", "router.fuse", "router.heads", "router.speech"} <= names
        assert {"vision.decode", "vision.ocr", "vision.model", "vision.batch_wait", "audio.transcript", "speech.synthesize"} <= names
        span_ids_with_children = {s[3] for s in trace if s[3]}
        assert span_ids_with_children  # parent links exist, not a flat list
    finally:
        mesh.stop()
        server.stop(0)
