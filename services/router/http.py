"""The router over HTTP: the Open Inference Protocol's REST API and Analyze as JSON.

    GET  /v2/health/live, /v2/health/ready              OIP v2 health
    GET  /v2/models/{task}[/versions/{v}]               OIP v2 model metadata
    GET  /v2/models/{task}[/versions/{v}]/ready         OIP v2 model readiness
    POST /v2/models/{task}[/versions/{v}]/infer         OIP v2 inference (JSON, and the binary tensor extension)
    POST /v1/analyze                                    AnalyzeRequest as JSON (bytes in base64), AnalyzeResponse back
    POST /v1/analyze/upload                             the same from a multipart/form-data upload
    POST /v1/analyze/stream                             AnalyzeStream's events as Server-Sent Events
    GET  /v1/tasks                                      ListTasks
    GET  /openapi.json                                  this API, described
    GET  /                                              the web console (console.html)

It runs in the router's process on its own port (`http_port`, 8000 by default; 0: off)
and answers every request by calling the router's own gRPC port on the loopback, so the
same admission control, limits, token check, deadlines, metrics and traces apply: an
HTTP call is a gRPC call. gRPC codes map to HTTP statuses (INVALID_ARGUMENT 400 with the
same field violations, UNAUTHENTICATED 401, NOT_FOUND 404, RESOURCE_EXHAUSTED 429 with
Retry-After, UNAVAILABLE 503, DEADLINE_EXCEEDED 504, ...); an error's body is
`{"error": message, "code": "INVALID_ARGUMENT", "field_violations": [...]}`.
The caller's deadline is the `timeout` query parameter (seconds) or, for Analyze, its
`options.deadline_ms`; the router's default applies otherwise.
"""

import base64
import json
import logging
import struct
import threading
from pathlib import Path
from typing import Any, Iterator

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modalmesh.common import errors
from modalmesh.common.client import connect
from modalmesh.v1 import inference_pb2, inference_pb2_grpc, router_pb2, router_pb2_grpc

log = logging.getLogger(__name__)

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
BINARY_HEADER = "Inference-Header-Content-Length"  # the OIP binary tensor extension
CONSOLE = Path(__file__).resolve().parent / "console.html"  # the web console, plain HTML, CSS and JavaScript
MAX_DEADLINE_MS = 3_600_000  # an upload's deadline_ms: at most an hour, as the timeout parameter
MAX_JSON_OVERHEAD = 64 * 1024  # a request body may be this much larger than the inputs it carries (base64 adds a third)


def build_app(router_target: str, max_input_bytes: int, channel_options: dict | None = None):
    """The FastAPI application for a router listening on `router_target`."""
    from fastapi import FastAPI, File, Form, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    channel = connect(router_target, **(channel_options or {}))
    router = router_pb2_grpc.RouterStub(channel)
    oip = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    body_limit = 3 * max_input_bytes + MAX_JSON_OVERHEAD  # an image and an audio in base64, and the rest

    app = FastAPI(
        title="ModalMesh router",
        description="Multimodal answers over HTTP: the Open Inference Protocol v2 and Analyze. Every call is the router's gRPC call.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.channel = channel

    def metadata(request: Request) -> list[tuple[str, str]]:
        token = request.headers.get("authorization", "")
        return [("authorization", token)] if token else []

    def timeout(request: Request, default: float | None = None) -> float | None:
        given = request.query_params.get("timeout")
        if given is None:
            return default
        try:
            seconds = float(given)
        except ValueError:
            raise errors.invalid_argument("timeout", f"{given[:40]!r} is not a number of seconds") from None
        if not 0 < seconds <= 3600:
            raise errors.invalid_argument("timeout", "must be more than 0 and at most 3600 seconds")
        return seconds

    async def body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > body_limit:
            raise errors.invalid_argument("body", f"{declared} bytes is over the limit of {body_limit}")
        received = bytearray()
        async for chunk in request.stream():
            received += chunk
            if len(received) > body_limit:
                raise errors.invalid_argument("body", f"over the limit of {body_limit} bytes")
        return bytes(received)

    def analyze_request(payload: bytes) -> router_pb2.AnalyzeRequest:
        document = json_body(payload)
        request = router_pb2.AnalyzeRequest()
        try:
            json_format.ParseDict(document, request)
        except (json_format.ParseError, RecursionError) as exc:
            raise errors.invalid_argument("body", f"not an AnalyzeRequest: {exc}"[:300]) from None
        return request

    def call_timeout(request: Request, analyze: router_pb2.AnalyzeRequest) -> float | None:
        deadline_ms = analyze.options.deadline_ms
        return timeout(request, deadline_ms / 1000.0 + 1.0 if deadline_ms > 0 else None)

    @app.get("/", include_in_schema=False)
    def console():
        """The web console: a page that asks the router and shows the answer as it streams."""
        from fastapi.responses import HTMLResponse

        return HTMLResponse(CONSOLE.read_text(encoding="utf-8"))

    @app.exception_handler(errors.ServiceError)
    async def refused(request: Request, exc: errors.ServiceError):
        return JSONResponse(problem(exc.code, exc.message, exc.violations), status_code=HTTP_STATUS.get(exc.code, 500))

    @app.exception_handler(grpc.RpcError)
    async def failed(request: Request, exc: grpc.RpcError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return JSONResponse(validation_problem(list(exc.errors())), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = HTTP_CODE.get(exc.status_code, grpc.StatusCode.INVALID_ARGUMENT if exc.status_code < 500 else grpc.StatusCode.INTERNAL)
        return JSONResponse(problem(code, str(exc.detail), []), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    # -- OIP v2 -----------------------------------------------------------------------
    @app.get("/v2/health/live")
    def live():
        """The process answers: live (as gRPC's health service, no token needed)."""
        return {"live": True}

    @app.get("/v2/health/ready")
    def ready(request: Request):
        """Ready when the router's gRPC health service says SERVING (no token needed)."""
        try:
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=timeout(request, 5.0))
        except grpc.RpcError:
            return JSONResponse({"ready": False}, status_code=503)
        serving = reply.status == health_pb2.HealthCheckResponse.SERVING
        return JSONResponse({"ready": serving}, status_code=200 if serving else 503)

    @app.get("/v2")
    def server_metadata(request: Request):
        reply = oip.ServerMetadata(inference_pb2.ServerMetadataRequest(), timeout=timeout(request, 5.0), metadata=metadata(request))
        return json_format.MessageToDict(reply, preserving_proto_field_name=True)

    @app.get("/v2/models/{task}")
    @app.get("/v2/models/{task}/versions/{version}")
    def model_metadata(task: str, request: Request, version: str = ""):
        reply = oip.ModelMetadata(inference_pb2.ModelMetadataRequest(name=task, version=version), timeout=timeout(request, 10.0), metadata=metadata(request))
        return json_format.MessageToDict(reply, preserving_proto_field_name=True)

    @app.get("/v2/models/{task}/ready")
    @app.get("/v2/models/{task}/versions/{version}/ready")
    def model_ready(task: str, request: Request, version: str = ""):
        reply = oip.ModelReady(inference_pb2.ModelReadyRequest(name=task, version=version), timeout=timeout(request, 5.0), metadata=metadata(request))
        return JSONResponse({"name": task, "ready": reply.ready}, status_code=200 if reply.ready else 400)

    @app.post("/v2/models/{task}/infer")
    @app.post("/v2/models/{task}/versions/{version}/infer")
    async def infer(task: str, request: Request, version: str = ""):
        from starlette.concurrency import run_in_threadpool

        payload = await body(request)
        grpc_request, binary_outputs = oip_request(task, version, payload, request.headers.get(BINARY_HEADER))
        reply = await run_in_threadpool(oip.ModelInfer, grpc_request, timeout=timeout(request), metadata=metadata(request))
        content, header_length = oip_response(reply, binary_outputs)
        headers = {BINARY_HEADER: str(header_length)} if header_length is not None else {}
        return Response(content, media_type="application/octet-stream" if header_length is not None else "application/json", headers=headers)

    # -- Analyze ------------------------------------------------------------------------
    @app.post("/v1/analyze")
    async def analyze(request: Request):
        """An AnalyzeRequest in protobuf's JSON form (bytes as base64: {"image": {"data": "iVBOR..."}})."""
        from starlette.concurrency import run_in_threadpool

        analyze = analyze_request(await body(request))
        reply = await run_in_threadpool(router.Analyze, analyze, timeout=call_timeout(request, analyze), metadata=metadata(request))
        return JSONResponse(json_format.MessageToDict(reply, preserving_proto_field_name=True))

    @app.post("/v1/analyze/upload")
    async def analyze_upload(
        request: Request,
        task: str = Form(...),
        text: str = Form(""),
        image: UploadFile | None = File(None),
        audio: UploadFile | None = File(None),
        mode: str = Form(""),
        speech: bool = Form(False),
        explain: bool = Form(False),
        deadline_ms: int = Form(0),
    ):
        """The inputs as a multipart/form-data upload (a browser form, `curl -F image=@scan.dcm`)."""
        from starlette.concurrency import run_in_threadpool

        analyze = router_pb2.AnalyzeRequest(task=task, text=text)
        for name, upload in (("image", image), ("audio", audio)):
            if upload is None:
                continue
            data = await upload.read(max_input_bytes + 1)
            if len(data) > max_input_bytes:
                raise errors.invalid_argument(name, f"over the limit of {max_input_bytes} bytes")
            target = getattr(analyze, name)
            target.data = data
            if upload.content_type and upload.content_type not in ("application/octet-stream", ""):
                target.media_type = upload.content_type
        if mode:
            modes = {"routed": router_pb2.ROUTING_MODE_ROUTED, "full": router_pb2.ROUTING_MODE_FULL}
            if mode not in modes:
                raise errors.invalid_argument("mode", f"{mode[:40]!r} is not routed or full")
            analyze.options.mode = modes[mode]
        if not 0 <= deadline_ms <= MAX_DEADLINE_MS:
            raise errors.invalid_argument("deadline_ms", f"must be 0 (the router's default) to {MAX_DEADLINE_MS} milliseconds")
        analyze.options.speech, analyze.options.explain, analyze.options.deadline_ms = speech, explain, deadline_ms
        reply = await run_in_threadpool(router.Analyze, analyze, timeout=call_timeout(request, analyze), metadata=metadata(request))
        return JSONResponse(json_format.MessageToDict(reply, preserving_proto_field_name=True))

    @app.post("/v1/analyze/stream")
    async def analyze_stream(request: Request):
        """AnalyzeStream's events as Server-Sent Events: `event: gate|diagnosis|description|
        speech_chunk|final`, `data:` the event as JSON; an error is `event: error`."""
        analyze = analyze_request(await body(request))
        messages = iter([router_pb2.AnalyzeStreamRequest(request=analyze)])
        call = router.AnalyzeStream(messages, timeout=call_timeout(request, analyze), metadata=metadata(request))

        def events() -> Iterator[bytes]:
            try:
                for event in call:
                    kind = event.WhichOneof("content")
                    data = json_format.MessageToDict(event, preserving_proto_field_name=True).get(kind, {})
                    yield f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()
            except grpc.RpcError as exc:
                problem = error_body(exc)
                yield f"event: error\ndata: {json.dumps(problem)}\n\n".encode()

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/v1/tasks")
    def tasks(request: Request):
        reply = router.ListTasks(router_pb2.ListTasksRequest(), timeout=timeout(request, 10.0), metadata=metadata(request))
        return json_format.MessageToDict(reply, preserving_proto_field_name=True)

    return app


def json_body(payload: bytes) -> Any:
    """A request body's JSON document; INVALID_ARGUMENT on "body" when it is not JSON, or
    nests deeper than Python's parser goes."""
    try:
        return json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise errors.invalid_argument("body", f"not JSON: {exc}"[:200]) from None
    except RecursionError:
        raise errors.invalid_argument("body", "the JSON nests too deeply") from None


# An error FastAPI itself answers (a form field missing or of the wrong type, a body that
# is not multipart, an unknown path or method): the gRPC code its HTTP status stands for.
HTTP_CODE = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND, 405: grpc.StatusCode.UNIMPLEMENTED, 422: grpc.StatusCode.INVALID_ARGUMENT}


def validation_problem(failures: list[dict]) -> dict[str, Any]:
    """FastAPI's request validation errors (a form's fields) as an error body: one field
    violation per failure, named by the field (its location past "body" or "query")."""
    violations = []
    for failure in failures:
        where = [str(part) for part in failure.get("loc", ()) if part not in ("body", "query", "path")]
        said = str(failure.get("msg", "not valid"))
        if "UploadFile" in said:  # a form field where a file belongs
            said = "a file belongs here: send it as a file part (curl -F name=@file)"
        violations.append((".".join(where) or "body", said[:200]))
    return problem(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(f"{f}: {d}" for f, d in violations), violations)


def problem(code: grpc.StatusCode, message: str, violations) -> dict[str, Any]:
    """An error's HTTP body: the gRPC code's name, the message and the field violations."""
    return {"error": message or code.name, "code": code.name, "field_violations": [{"field": f, "description": d} for f, d in violations]}


def error_body(exc: grpc.RpcError) -> dict[str, Any]:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    return problem(code, exc.details() or "", errors.field_violations(exc) if hasattr(exc, "trailing_metadata") else [])


def error_response(exc: grpc.RpcError):
    from fastapi.responses import JSONResponse

    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    headers = {}
    wait = errors.retry_after(exc)
    if wait is not None:
        headers["Retry-After"] = str(max(1, round(wait)))
    return JSONResponse(error_body(exc), status_code=HTTP_STATUS.get(code, 500), headers=headers)


# ---------------------------------------------------------------------------- OIP JSON <-> gRPC


def oip_request(task: str, version: str, payload: bytes, header_length: str | None) -> tuple[inference_pb2.ModelInferRequest, bool]:
    """An OIP REST infer body (JSON, or JSON + binary tensors) as the gRPC request; and
    whether the outputs are wanted in binary."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(payload):
            raise errors.invalid_argument(BINARY_HEADER, f"{header_length[:20]!r} is not the length of the JSON part of the body")
        head, blobs = payload[: int(header_length)], payload[int(header_length) :]
    else:
        head, blobs = payload, b""
    document = json_body(head)
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
        raise errors.invalid_argument("inputs", "an inference request is a JSON object with a list of inputs")
    request = inference_pb2.ModelInferRequest(model_name=task, model_version=version, id=str(document.get("id", ""))[:128])
    offset = 0
    for index, tensor in enumerate(document["inputs"]):
        if not isinstance(tensor, dict):
            raise errors.invalid_argument(f"inputs[{index}]", "a tensor is a JSON object")
        name, datatype, shape = tensor.get("name", ""), tensor.get("datatype", ""), tensor.get("shape", [])
        if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
            raise errors.invalid_argument(f"inputs[{index}].shape", "a list of integers")
        added = request.inputs.add(name=str(name), datatype=str(datatype), shape=shape)
        parameters = tensor.get("parameters") or {}
        if isinstance(parameters.get("media_type"), str):
            added.parameters["media_type"].string_param = parameters["media_type"]
        size = parameters.get("binary_data_size")
        if size is not None:  # the binary extension: 4-byte little-endian length + bytes, per element
            if not isinstance(size, int) or size < 0 or offset + size > len(blobs):
                raise errors.invalid_argument(f"inputs[{index}].parameters.binary_data_size", "does not fit the binary part of the body")
            raw = blobs[offset : offset + size]
            offset += size
            elements = []
            while raw:
                if len(raw) < 4:
                    raise errors.invalid_argument(f"inputs[{index}]", "a BYTES element needs a 4-byte length")
                (length,) = struct.unpack("<I", raw[:4])
                elements.append(raw[4 : 4 + length])
                raw = raw[4 + length :]
            added.contents.bytes_contents.extend(elements)
            continue
        data = tensor.get("data")
        if not isinstance(data, list):
            raise errors.invalid_argument(f"inputs[{index}].data", "a list of elements (BYTES as strings)")
        for element in data:
            if isinstance(element, dict) and isinstance(element.get("b64"), str):  # {"b64": "..."}: bytes that are not text
                try:
                    added.contents.bytes_contents.append(base64.b64decode(element["b64"], validate=True))
                except ValueError:
                    raise errors.invalid_argument(f"inputs[{index}].data", "b64 is not base64") from None
            elif isinstance(element, str):
                added.contents.bytes_contents.append(element.encode("utf-8"))
            else:
                raise errors.invalid_argument(f"inputs[{index}].data", 'BYTES elements are strings or {"b64": ...}')
    for key, value in (document.get("parameters") or {}).items():
        if key == "mode" and isinstance(value, str):
            request.parameters["mode"].string_param = value
        elif key == "deadline_ms" and isinstance(value, int):
            request.parameters["deadline_ms"].int64_param = value
    binary = bool((document.get("parameters") or {}).get("binary_data_output"))
    for output in document.get("outputs") or []:
        if isinstance(output, dict):
            request.outputs.add(name=str(output.get("name", "")))
            binary = binary or bool((output.get("parameters") or {}).get("binary_data"))
    return request, binary


def oip_response(reply: inference_pb2.ModelInferResponse, binary: bool) -> tuple[bytes, int | None]:
    """The gRPC reply as an OIP REST body: JSON, or JSON + binary tensors (with the JSON part's length)."""
    import numpy as np

    outputs, blobs = [], []
    for tensor, raw in zip(reply.outputs, reply.raw_output_contents):
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if binary:
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        elif tensor.datatype == "BYTES":
            values, rest = [], raw
            while rest:
                (length,) = struct.unpack("<I", rest[:4])
                values.append(rest[4 : 4 + length].decode("utf-8", errors="replace"))
                rest = rest[4 + length :]
            entry["data"] = values
        elif tensor.datatype == "BOOL":
            entry["data"] = [bool(v) for v in np.frombuffer(raw, dtype="?")]
        else:
            entry["data"] = [float(v) for v in np.frombuffer(raw, dtype="<f4")]
        outputs.append(entry)
    head = json.dumps({"model_name": reply.model_name, "model_version": reply.model_version, "id": reply.id, "outputs": outputs}).encode()
    if not binary:
        return head, None
    return head + b"".join(blobs), len(head)


class HttpGateway:
    """The HTTP server (uvicorn) on its own thread in the router's process."""

    def __init__(self, host: str, port: int, router_target: str, max_input_bytes: int, channel_options: dict | None = None, ssl: dict | None = None) -> None:
        import uvicorn

        self.app = build_app(router_target, max_input_bytes, channel_options)
        config = uvicorn.Config(self.app, host=host, port=port, log_level="warning", access_log=False, lifespan="off", **(ssl or {}))
        self.server = uvicorn.Server(config)  # on a thread of its own it leaves the process's signals to the router
        self.thread = threading.Thread(target=self.server.run, name="http-gateway", daemon=True)

    def start(self, timeout: float = 10.0) -> int:
        """Start serving; returns the port it listens on."""
        self.thread.start()
        deadline = threading.Event()
        for _ in range(int(timeout / 0.02)):
            if self.server.started:
                break
            if not self.thread.is_alive():
                raise OSError("the HTTP gateway did not start (port in use?)")
            deadline.wait(0.02)
        else:
            raise OSError("the HTTP gateway did not start in time")
        sockets = [s for server in self.server.servers for s in server.sockets]
        return int(sockets[0].getsockname()[1]) if sockets else 0

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.app.state.channel.close()
