"""A seeded fuzz campaign against real services: hostile inputs of every family, and what
every answer must be.

    .venv/bin/python -m tests.fuzz --cases 1200 --seed 1     # make fuzz: starts a mesh on 127.0.0.1

Families: images (PNG, JPEG, AVIF, GIF, DICOM: truncated, bytes flipped, chunks inserted, wrong
media types, odd parameters), audio (WAV, G.711 WAV, FLAC, OGG, MP3, raw PCM: the same, and odd
rates and layouts),
text (control characters, long, empty, wrong media types), encoder headers (unknown
options and datatypes, long ids), hand-made protobuf (random bytes to each method), and
router requests (unknown tasks and modes, negative options, mutated media), the router's
OIP v2 gRPC methods (odd models, tensors, shapes, raw contents, parameters), AnalyzeStream
(media as chunks in or out of order, the request twice, stray messages); and over the
router's HTTP port (`--http-cases`): Analyze, AnalyzeStream and OIP infer bodies that are
truncated, nested deep, of the wrong types or with mutated media, uploads with odd form
fields, odd `timeout` parameters and binary-extension headers.

Every call must end OK, INVALID_ARGUMENT, RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED, with a
message under 1 KiB that names no Python internals; an HTTP call the matching status
(200, 400, 404, 405, 429, 504) with the documented error body; every service must still be
SERVING at the end. `tests/test_fuzz.py` runs the campaign in the suite.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from modalmesh.router.http import BINARY_HEADER, HTTP_STATUS

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}
INTERNALS = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception)\b|Traceback|File \"|pip install|0x[0-9a-f]{8,}")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FAMILIES = ("image", "audio", "text", "header", "protobuf", "router", "oip", "stream")
OIP = "/inference.GRPCInferenceService/"


@dataclass(frozen=True)
class Case:
    family: str
    name: str
    target: str  # "text", "vision", "audio" or "router"
    method: str  # full gRPC method
    payload: bytes  # the serialized request
    messages: tuple[bytes, ...] | None = None  # a client stream's serialized messages (payload unused)


@dataclass(frozen=True)
class Outcome:
    case: Case
    code: grpc.StatusCode
    details: str
    seconds: float

    @property
    def problem(self) -> str:
        """What is wrong with this outcome, or ''."""
        allowed = ALLOWED | {grpc.StatusCode.NOT_FOUND} if self.case.family == "oip" else ALLOWED  # OIP: an unknown model
        if self.code not in allowed:
            return f"code {self.code.name}"
        if self.code != grpc.StatusCode.OK and len(self.details.encode()) > 1024:
            return f"message of {len(self.details.encode())} bytes"
        if self.code != grpc.StatusCode.OK and INTERNALS.search(self.details):
            return f"message names internals: {self.details[:120]!r}"
        return ""


# ----------------------------------------------------------------------------- generators


def _seeds() -> dict[str, bytes]:
    from tests.media import image_bytes, render_screenshot, tone, wav_bytes

    return {
        "png": (EXAMPLES / "screenshot.png").read_bytes(),
        "jpeg": image_bytes(render_screenshot("Payment declined"), "JPEG"),
        "progressive": _progressive_jpeg(),
        "dicom": (EXAMPLES / "ct.dcm").read_bytes(),
        "wav": (EXAMPLES / "voice.wav").read_bytes(),
        "short_wav": wav_bytes(tone(0.5, 16000), 16000),
        "flac": wav_bytes(tone(0.5, 16000), 16000, fmt="FLAC"),
        "avif": image_bytes(render_screenshot("Payment declined"), "AVIF"),
        "gif": image_bytes(render_screenshot("Payment declined"), "GIF"),
        "mp3": wav_bytes(tone(0.5, 16000), 16000, subtype="MPEG_LAYER_III", fmt="MP3"),
        "ulaw": wav_bytes(tone(0.5, 8000), 8000, subtype="ULAW"),
        "ogg": wav_bytes(tone(0.5, 16000), 16000, subtype="OPUS", fmt="OGG"),
    }


def _progressive_jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (320, 200), (90, 120, 200)).save(buffer, "JPEG", progressive=True)
    return buffer.getvalue()


def _mutate(rng: np.random.Generator, data: bytes) -> tuple[str, bytes]:
    choice = int(rng.integers(6))
    if choice == 0:
        cut = int(rng.integers(0, len(data)))
        return f"truncated at {cut}", data[:cut]
    if choice == 1:
        flipped = bytearray(data)
        for _ in range(int(rng.integers(1, 24))):
            flipped[int(rng.integers(len(flipped)))] = int(rng.integers(256))
        return "bytes flipped", bytes(flipped)
    if choice == 2:  # the header region, where lengths and sizes live
        flipped = bytearray(data)
        for _ in range(int(rng.integers(1, 8))):
            flipped[int(rng.integers(min(len(flipped), 400)))] = int(rng.integers(256))
        return "header bytes flipped", bytes(flipped)
    if choice == 3:
        at = int(rng.integers(len(data)))
        return "chunk inserted", data[:at] + rng.bytes(int(rng.integers(1, 4096))) + data[at:]
    if choice == 4:
        return "random tail", data[: int(rng.integers(8, 64))] + rng.bytes(int(rng.integers(0, 20000)))
    return "intact", data


def _text(rng: np.random.Generator) -> str:
    kind = int(rng.integers(5))
    if kind == 0:
        return "".join(chr(int(c)) for c in rng.integers(0, 0x20, size=int(rng.integers(1, 200))))  # control characters
    if kind == 1:
        return "x" * int(rng.choice([1, 1000, 65_000, 70_000]))
    if kind == 2:
        return "".join(chr(int(c)) for c in rng.integers(0x80, 0xD7FF, size=int(rng.integers(1, 500))))
    if kind == 3:
        return "\u200b\ufeff " * int(rng.integers(1, 50))
    return "my card was declined at checkout"


def _parameters(rng: np.random.Generator) -> dict[str, str]:
    names = ["window", "pixel_spacing", "frame", "sample_rate_hz", "channels", "sample_format", "x" * 300]
    values = ["file", "lung", "abc", "-1", "0", "1e308", "nan", "40/0", "0.7\\0.7\\0.7", "99999999999", "", "s16le", "f64"]
    return {str(rng.choice(names)): str(rng.choice(values)) for _ in range(int(rng.integers(0, 3)))}


def _encode_once(media_type: str, payload: bytes, options=(), parameters=None, datatype: str = "", request_id: str = "", pooled_only: bool = False) -> bytes:
    from modalmesh.v1 import encoder_pb2

    header = encoder_pb2.EncodeHeader(
        request_id=request_id, media_type=media_type, options=list(options), output_datatype=datatype, pooled_only=pooled_only, parameters=parameters or {}
    )
    return encoder_pb2.EncodeOnceRequest(header=header, payload=payload).SerializeToString()


def generate(count: int, seed: int) -> list[Case]:
    """`count` cases, the same for the same seed, cycling through the families."""
    from modalmesh.v1 import encoder_pb2, router_pb2

    rng = np.random.default_rng(seed)
    seeds = _seeds()
    image_types = ["image/png", "image/jpeg", "application/dicom", "image/webp", "image/gif", "image/heic", "", "image/" + "p" * 2000]
    audio_types = ["audio/wav", "audio/flac", "audio/ogg", "audio/pcm", "audio/mpeg", ""]
    encode_once = "/modalmesh.v1.Encoder/EncodeOnce"
    cases = []
    for index in range(count):
        family = FAMILIES[index % len(FAMILIES)]
        if family == "image" and rng.random() < 0.05:  # images in one EncodeBatch call (one after another)
            batch = [_mutate(rng, seeds["png"])[1] for _ in range(int(rng.choice([2, 9])))]
            inputs = [encoder_pb2.EncodeOnceRequest.FromString(_encode_once("image/png", data, pooled_only=True)) for data in batch]
            request_bytes = encoder_pb2.EncodeBatchRequest(inputs=inputs).SerializeToString()
            cases.append(Case(family, f"EncodeBatch of {len(batch)} images", "vision", "/modalmesh.v1.Encoder/EncodeBatch", request_bytes))
        elif family == "image":
            source = str(rng.choice(["png", "jpeg", "progressive", "dicom", "avif", "gif"]))
            how, data = _mutate(rng, seeds[source])
            own = {"png": "image/png", "dicom": "application/dicom", "avif": "image/avif", "gif": "image/gif"}.get(source, "image/jpeg")
            media = str(rng.choice(image_types)) if rng.random() < 0.2 else own
            options = [str(rng.choice(["ocr", "ocr_quick"]))] if rng.random() < 0.2 else []
            cases.append(
                Case(family, f"{source} {how} as {media[:20]}", "vision", encode_once, _encode_once(media, data, options, _parameters(rng), pooled_only=True))
            )
        elif family == "audio":
            source = str(rng.choice(["wav", "short_wav", "flac", "mp3", "ulaw", "ogg"]))
            how, data = _mutate(rng, seeds[source])
            own = {"flac": "audio/flac", "mp3": "audio/mpeg", "ogg": "audio/ogg"}.get(source, "audio/wav")
            media = str(rng.choice(audio_types)) if rng.random() < 0.3 else own
            options = ["transcript"] if rng.random() < 0.05 else []
            cases.append(
                Case(family, f"{source} {how} as {media}", "audio", encode_once, _encode_once(media, data, options, _parameters(rng), pooled_only=True))
            )
        elif family == "text" and rng.random() < 0.25:  # several texts in one EncodeBatch call
            texts = [_text(rng) for _ in range(int(rng.choice([0, 1, 3, 8, 65])))]
            inputs = [encoder_pb2.EncodeOnceRequest.FromString(_encode_once("text/plain", t.encode("utf-8", "surrogatepass"), pooled_only=True)) for t in texts]
            request_bytes = encoder_pb2.EncodeBatchRequest(inputs=inputs).SerializeToString()
            cases.append(Case(family, f"EncodeBatch of {len(texts)} texts", "text", "/modalmesh.v1.Encoder/EncodeBatch", request_bytes))
        elif family == "text":
            text = _text(rng)
            media = "text/plain" if rng.random() < 0.8 else str(rng.choice(["text/html", "", "application/json"]))
            cases.append(
                Case(
                    family,
                    f"text of {len(text)} characters as {media}",
                    "text",
                    encode_once,
                    _encode_once(media, text.encode("utf-8", "surrogatepass"), pooled_only=True),
                )
            )
        elif family == "header":
            target = str(rng.choice(["text", "vision", "audio"]))
            options = [str(rng.choice(["ocr", "ocr_quick", "transcript", "bogus", "x" * 500]))] if rng.random() < 0.7 else []
            datatype = str(rng.choice(["", "FP32", "FP16", "BF16", "INT8", "fp32"]))
            request_id = "r" * int(rng.choice([0, 10, 129, 5000]))
            payload = {"text": b"hello", "vision": seeds["png"], "audio": seeds["short_wav"]}[target]
            media = {"text": "text/plain", "vision": "image/png", "audio": "audio/wav"}[target]
            cases.append(
                Case(
                    family,
                    f"{target} header {options[:1]} {datatype} id {len(request_id)}",
                    target,
                    encode_once,
                    _encode_once(media, payload, options, datatype=datatype, request_id=request_id, pooled_only=True),
                )
            )
        elif family == "protobuf":
            target = str(rng.choice(["text", "vision", "audio", "router"]))
            method = {"router": "/modalmesh.v1.Router/Analyze"}.get(target, encode_once)
            payload = rng.bytes(int(rng.integers(0, 300))) if rng.random() < 0.5 else bytes([0x1A, 0x03, 0xE2, 0x28, 0xA1])
            cases.append(Case(family, f"{len(payload)} hand-made bytes", target, method, payload))
        elif family == "oip":
            cases.append(_oip_case(rng))
        elif family == "stream":
            cases.append(_stream_case(rng, seeds, image_types, audio_types))
        else:
            request = router_pb2.AnalyzeRequest(task=str(rng.choice(["screenshot_triage", "medical_report", "horoscope", "x" * 3000])))
            if rng.random() < 0.6:
                request.text = _text(rng)[:66_000]
            if rng.random() < 0.4:
                source = str(rng.choice(["png", "dicom", "jpeg"]))
                request.image.data = _mutate(rng, seeds[source])[1]
                request.image.media_type = str(rng.choice(image_types)) if rng.random() < 0.2 else ""
            invalid = rng.random() < 0.2  # an option out of range; else the request reaches the encoders
            request.options.mode = int(rng.choice([7, 99] if invalid else [0, 1, 2]))
            request.options.top_k = int(rng.choice([-1, 3] if invalid else [0, 3, 1000]))
            request.options.deadline_ms = int(rng.choice([-5, 3000] if invalid else [3000, 5000]))
            cases.append(
                Case(family, f"router {request.task[:20]} mode {request.options.mode}", "router", "/modalmesh.v1.Router/Analyze", request.SerializeToString())
            )
    return cases


def _oip_case(rng: np.random.Generator) -> Case:
    """The router's OIP v2 gRPC methods: random bytes, or a ModelInferRequest with odd
    models, versions, tensors (names, datatypes, shapes, contents, raw contents),
    parameters and outputs."""
    from modalmesh.v1 import inference_pb2

    methods = ["ModelInfer", "ModelMetadata", "ModelReady", "ServerMetadata"]
    if rng.random() < 0.4:
        method = str(rng.choice(methods))
        return Case("oip", f"{method} of hand-made bytes", "router", OIP + method, rng.bytes(int(rng.integers(0, 300))))
    request = inference_pb2.ModelInferRequest(
        model_name=str(rng.choice(["screenshot_triage", "medical_report", "", "x" * 500])), model_version=str(rng.choice(["", "", "1", "-1", "99999999999"]))
    )
    for _ in range(int(rng.integers(0, 4))):
        tensor = request.inputs.add(name=str(rng.choice(["TEXT", "IMAGE", "AUDIO", "text", ""])), datatype=str(rng.choice(["BYTES", "BYTES", "FP32", ""])))
        tensor.shape.extend(int(d) for d in rng.choice([1, 1, -1, 0, 2, 2**62], size=int(rng.integers(0, 3))))
        if rng.random() < 0.6:
            tensor.contents.bytes_contents.extend(_text(rng)[:500].encode("utf-8", "surrogatepass") for _ in range(int(rng.integers(0, 3))))
        if rng.random() < 0.2:
            tensor.parameters["binary_data_size"].int64_param = int(rng.choice([-1, 0, 10**12]))
    if rng.random() < 0.3:
        request.raw_input_contents.extend(rng.bytes(int(rng.integers(0, 12))) for _ in range(int(rng.integers(0, 4))))
    if rng.random() < 0.3:
        request.parameters[str(rng.choice(["mode", "deadline_ms", "explain", "bogus"]))].string_param = str(rng.choice(["full", "x", "-5"]))
    if rng.random() < 0.3:
        request.outputs.add(name=str(rng.choice(["LABEL", "CONFIDENCE", "x", ""])))
    return Case("oip", f"ModelInfer of {len(request.inputs)} inputs", "router", OIP + "ModelInfer", request.SerializeToString())


def _stream_case(rng: np.random.Generator, seeds: dict[str, bytes], image_types: list[str], audio_types: list[str]) -> Case:
    """AnalyzeStream: the request with its media as chunks, in order or not, sent twice,
    chunks before it, a stray message after, or nothing at all."""
    from modalmesh.v1 import router_pb2

    request = router_pb2.AnalyzeRequest(task=str(rng.choice(["screenshot_triage", "medical_report", "horoscope"])))
    request.options.deadline_ms = 20000
    if rng.random() < 0.6:
        request.text = _text(rng)[:3000]
    image = _mutate(rng, seeds[str(rng.choice(["png", "dicom"]))])[1] if rng.random() < 0.5 else b""
    audio = _mutate(rng, seeds[str(rng.choice(["wav", "short_wav", "flac"]))])[1] if rng.random() < 0.5 else b""
    if image:
        request.image.media_type = str(rng.choice(image_types[:4]))
    if audio:
        request.audio.media_type = str(rng.choice(audio_types[:4]))
    if rng.random() < 0.2:
        request.options.speech = True
    first = router_pb2.AnalyzeStreamRequest(request=request).SerializeToString()
    chunks = []
    for data, field in ((image, "image_chunk"), (audio, "audio_chunk")):
        step = int(rng.choice([1000, 65536, 10**6]))
        chunks += [router_pb2.AnalyzeStreamRequest(**{field: data[k : k + step]}).SerializeToString() for k in range(0, len(data), step)]
    order = str(rng.choice(["in order", "chunks first", "request twice", "chunks reversed", "stray bytes after", "nothing"]))
    messages = {
        "in order": [first, *chunks],
        "chunks first": [*chunks, first],
        "request twice": [first, first, *chunks],
        "chunks reversed": [first, *reversed(chunks)],
        "stray bytes after": [first, *chunks, rng.bytes(int(rng.integers(0, 50)))],
        "nothing": [],
    }[order]
    return Case("stream", f"stream {order}, {len(chunks)} chunks", "router", "/modalmesh.v1.Router/AnalyzeStream", b"", tuple(messages))


# ----------------------------------------------------------------------------- over HTTP

# OK and the callers' codes as the HTTP port says them (router/http.py HTTP_STATUS), an unknown path or method.
HTTP_ALLOWED = {200, 404, 405} | {HTTP_STATUS[code] for code in ALLOWED if code in HTTP_STATUS}
ODD_VALUES = [None, 5, -1, 1e300, "", "x" * 3000, [], {}, [1, "a"], {"data": 5}, True]


@dataclass(frozen=True)
class HttpCase:
    name: str
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True)
class HttpOutcome:
    case: HttpCase
    status: int
    body: bytes
    seconds: float

    @property
    def problem(self) -> str:
        """What is wrong with this answer, or ''."""
        if self.status not in HTTP_ALLOWED:
            return f"HTTP {self.status}"
        if self.status == 200:
            return self._stream_problem() if self.case.path.startswith("/v1/analyze/stream") else ""
        try:
            document = json.loads(self.body)
        except ValueError:
            return f"HTTP {self.status} with a body that is not JSON: {self.body[:80]!r}"
        if not isinstance(document, dict) or not {"error", "code", "field_violations"} <= set(document):
            return f"HTTP {self.status} without the error body: {self.body[:120]!r}"
        if len(document["error"].encode()) > 1024 or INTERNALS.search(document["error"]):
            return f"message names internals or is long: {document['error'][:120]!r}"
        return ""

    def _stream_problem(self) -> str:
        """An AnalyzeStream over HTTP answers 200 and says a failure as `event: error`."""
        for block in self.body.decode("utf-8", "replace").split("\n\n"):
            if block.startswith("event: error"):
                problem = json.loads(block.partition("data: ")[2])
                if problem["code"] not in {code.name for code in ALLOWED} or INTERNALS.search(problem["error"]):
                    return f"stream error {problem['code']}: {problem['error'][:120]!r}"
        return ""


def _odd_json(rng: np.random.Generator, document: dict) -> tuple[str, bytes]:
    """A JSON body made wrong one way: a value of the wrong type, an unknown field, deep
    nesting, truncation or flipped bytes; or left as it is."""
    choice = int(rng.integers(6))
    if choice == 0:
        key = str(rng.choice(sorted(document)))
        value = ODD_VALUES[int(rng.integers(len(ODD_VALUES)))]
        return f"{key} as {type(value).__name__}", json.dumps({**document, key: value}).encode()
    if choice == 1:
        return "an unknown field", json.dumps({**document, "x" * int(rng.integers(1, 300)): 1}).encode()
    if choice == 2:
        depth = int(rng.choice([50, 5000, 200_000]))
        return f"nested {depth} deep", b"[" * depth + b"]" * (depth if rng.random() < 0.5 else 0)
    if choice == 3:
        text = json.dumps(document).encode()
        return "truncated", text[: int(rng.integers(0, len(text)))]
    if choice == 4:
        return _mutate(rng, json.dumps(document).encode())
    return "intact", json.dumps(document).encode()


def _form(parts: list[tuple[str, str | None, bytes]], boundary: str = "fuzzboundary") -> bytes:
    """A multipart/form-data body of (name, file name or None, content) parts."""
    lines = []
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        lines.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n")
    return b"".join(lines) + f"--{boundary}--\r\n".encode()


def generate_http(count: int, seed: int) -> list[HttpCase]:
    """`count` HTTP cases, the same for the same seed."""
    import base64

    rng = np.random.default_rng(seed)
    seeds = _seeds()
    json_type = (("Content-Type", "application/json"),)
    cases = []
    for _ in range(count):
        kind = int(rng.integers(4))
        timeout = str(rng.choice(["", "", "abc", "-1", "0", "nan", "1e400", "2.5"]))
        query = f"?timeout={timeout}" if timeout else ""
        image = _mutate(rng, seeds[str(rng.choice(["png", "dicom"]))])[1] if rng.random() < 0.3 else b""
        if kind in (0, 1):  # Analyze, AnalyzeStream
            document: dict = {"task": str(rng.choice(["screenshot_triage", "medical_report", "horoscope"])), "text": _text(rng)[:2000]}
            if image:
                document["image"] = {"data": base64.b64encode(image).decode()}
            document["options"] = {"mode": str(rng.choice(["ROUTING_MODE_ROUTED", "ROUTING_MODE_FULL"])), "deadline_ms": 3000}
            how, body = _odd_json(rng, document)
            path = "/v1/analyze" if kind == 0 else "/v1/analyze/stream"
            cases.append(HttpCase(f"{path} {how}", "POST", path + query, json_type, body))
        elif kind == 2:  # OIP infer, JSON or the binary extension
            tensor = {"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": [_text(rng)[:2000]]}
            how, body = _odd_json(rng, {"id": "fuzz", "inputs": [tensor]})
            headers = json_type
            if rng.random() < 0.3:
                headers = ((BINARY_HEADER, str(rng.choice(["-1", "abc", "99999999", str(len(body)), "0"]))),)
                body += rng.bytes(int(rng.integers(0, 64)))
            cases.append(HttpCase(f"infer {how}", "POST", f"/v2/models/screenshot_triage/infer{query}", headers, body))
        else:  # an upload
            parts: list[tuple[str, str | None, bytes]] = []
            if rng.random() < 0.9:
                parts.append(("task", None, str(rng.choice(["screenshot_triage", "medical_report", "", "x" * 500])).encode()))
            parts.append(("text", None, _text(rng)[:2000].encode("utf-8", "surrogatepass")))
            if image:
                parts.append(("image", str(rng.choice(["scan.png", "a.dcm"])) if rng.random() < 0.8 else None, image))
            for name in ("mode", "deadline_ms", "speech"):
                if rng.random() < 0.3:
                    parts.append((name, None, str(rng.choice(["routed", "full", "soon", "-5", "99999999999999999999", "1", "yes"])).encode()))
            body = _form(parts)
            if rng.random() < 0.2:
                body = _mutate(rng, body)[1]
            boundary = "fuzzboundary" if rng.random() < 0.9 else "other"
            headers = (("Content-Type", f"multipart/form-data; boundary={boundary}"),)
            cases.append(HttpCase(f"upload of {len(parts)} parts", "POST", f"/v1/analyze/upload{query}", headers, body))
    return cases


def run_http(cases: list[HttpCase], port: int, timeout: float = 30.0) -> list[HttpOutcome]:
    import http.client

    outcomes = []
    for case in cases:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        started = time.perf_counter()
        try:
            connection.request(case.method, case.path, body=case.body, headers=dict(case.headers))
            response = connection.getresponse()
            outcomes.append(HttpOutcome(case, response.status, response.read(), time.perf_counter() - started))
        finally:
            connection.close()
    return outcomes


# ----------------------------------------------------------------------------- running


def run(cases: list[Case], addresses: dict[str, str], timeout: float = 20.0) -> list[Outcome]:
    from modalmesh.common.client import connect

    channels = {name: connect(address) for name, address in addresses.items()}
    outcomes = []
    try:
        for case in cases:
            started = time.perf_counter()
            try:
                if case.messages is not None:
                    stream = channels[case.target].stream_stream(case.method, request_serializer=None, response_deserializer=None)
                    list(stream(iter(case.messages), timeout=timeout))
                else:
                    call = channels[case.target].unary_unary(case.method, request_serializer=None, response_deserializer=None)
                    call(case.payload, timeout=timeout)
                code, details = grpc.StatusCode.OK, ""
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details() or ""
            outcomes.append(Outcome(case, code, details, time.perf_counter() - started))
    finally:
        for channel in channels.values():
            channel.close()
    return outcomes


def serving(addresses: dict[str, str]) -> dict[str, str]:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from modalmesh.common.client import connect

    states = {}
    for name, address in addresses.items():
        with connect(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            states[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return states


def summary(outcomes: list[Outcome]) -> dict:
    return {
        "cases": len(outcomes),
        "by_family": dict(Counter(o.case.family for o in outcomes)),
        "codes": dict(Counter(o.code.name for o in outcomes)),
        "problems": [{"family": o.case.family, "case": o.case.name, "code": o.code.name, "problem": o.problem} for o in outcomes if o.problem],
        "slowest_s": round(max((o.seconds for o in outcomes), default=0.0), 2),
    }


def http_summary(outcomes: list[HttpOutcome]) -> dict:
    return {
        "cases": len(outcomes),
        "statuses": dict(Counter(str(o.status) for o in outcomes)),
        "problems": [{"case": o.case.name, "status": o.status, "problem": o.problem} for o in outcomes if o.problem],
        "slowest_s": round(max((o.seconds for o in outcomes), default=0.0), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--http-cases", type=int, default=300, help="cases sent to the router's HTTP port (0: none)")
    args = parser.parse_args()

    from modalmesh.up import free_port
    from tests.conftest import Mesh

    mesh = Mesh()
    gateway = None
    try:
        addresses = {"router": mesh.router.address, **{name: h.address for name, h in mesh.encoders.items()}}
        started = time.perf_counter()
        outcomes = run(generate(args.cases, args.seed), addresses)
        result = {**summary(outcomes), "seconds": round(time.perf_counter() - started, 1)}
        if args.http_cases:
            port = free_port()
            gateway = mesh.start_router(http_port=port)
            result["http"] = http_summary(run_http(generate_http(args.http_cases, args.seed), port))
        result["serving"] = serving(addresses)
    finally:
        if gateway is not None:
            gateway.stop(grace=0.5)
        mesh.stop()
    print(json.dumps(result, indent=2))
    healthy = all(state == "SERVING" for state in result["serving"].values())
    return 0 if not result["problems"] and not result.get("http", {}).get("problems") and healthy else 1


if __name__ == "__main__":
    sys.exit(main())
