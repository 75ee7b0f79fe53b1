"""The Python client of the router, sync and asyncio.

    from modalmesh.client import RouterClient

    with RouterClient("127.0.0.1:50050") as client:
        answer = client.analyze("screenshot_triage", text="my card was declined",
                                image=open("screen.png", "rb").read(), speech=True)
        print(answer["label"], answer["confidence"], answer["findings"]["priority"])
        open("reply.wav", "wb").write(answer["speech_wav"])

`analyze` returns the answer as a plain dict (the keys of `modalmesh analyze --json`);
`analyze_message` returns the AnalyzeResponse message itself. `AsyncRouterClient` has
the same methods as coroutines (grpc.aio). Errors are grpc.RpcError with the router's
code and message (modalmesh.common.errors.field_violations reads the details).
"""

from __future__ import annotations

from typing import Any, Sequence

import grpc

from modalmesh.common import security
from modalmesh.v1 import router_pb2, router_pb2_grpc

MODES = {"routed": router_pb2.ROUTING_MODE_ROUTED, "full": router_pb2.ROUTING_MODE_FULL}
MODALITY_NAMES = {"text": router_pb2.MODALITY_TEXT, "image": router_pb2.MODALITY_IMAGE, "audio": router_pb2.MODALITY_AUDIO}


REPORT_FORMATS = {
    "fhir": router_pb2.REPORT_FORMAT_FHIR_DIAGNOSTIC_REPORT,
    "dicom_sr": router_pb2.REPORT_FORMAT_DICOM_SR,
    "ticket": router_pb2.REPORT_FORMAT_TICKET_JSON,
}


def build_request(
    task: str,
    text: str = "",
    image: bytes = b"",
    audio: bytes = b"",
    *,
    image_type: str = "",
    audio_type: str = "",
    image_parameters: dict[str, str] | None = None,
    audio_parameters: dict[str, str] | None = None,
    speech: bool = False,
    voice: str = "",
    explain: bool = False,
    mode: str = "routed",
    require: Sequence[str] = (),
    deadline_ms: int = 0,
    top_k: int = 0,
    request_id: str = "",
    reports: Sequence[str] = (),
) -> router_pb2.AnalyzeRequest:
    """`reports`: standard formats to add ("fhir", "dicom_sr", "ticket"; AnalyzeResponse.reports)."""
    if mode not in MODES:
        raise ValueError(f"mode must be routed or full, not {mode!r}")
    unknown = [r for r in reports if r not in REPORT_FORMATS]
    if unknown:
        raise ValueError(f"reports are {', '.join(REPORT_FORMATS)}, not {', '.join(unknown)}")
    return router_pb2.AnalyzeRequest(
        request_id=request_id,
        task=task,
        text=text,
        image=router_pb2.MediaInput(data=image, media_type=image_type, parameters=image_parameters or {}),
        audio=router_pb2.MediaInput(data=audio, media_type=audio_type, parameters=audio_parameters or {}),
        options=router_pb2.AnalyzeOptions(
            speech=speech,
            voice=voice,
            explain=explain,
            mode=MODES[mode],
            require=[MODALITY_NAMES[m] for m in require],
            deadline_ms=deadline_ms,
            top_k=top_k,
            report_formats=[REPORT_FORMATS[r] for r in reports],
        ),
    )


def to_dict(response: router_pb2.AnalyzeResponse) -> dict[str, Any]:
    """The answer with the keys of `modalmesh analyze --json`."""
    modalities = {}
    for report in response.explanation.modalities:
        name = router_pb2.Modality.Name(report.modality).removeprefix("MODALITY_").lower()
        modalities[name] = {
            "status": router_pb2.ModalityStatus.Name(report.status).removeprefix("MODALITY_STATUS_").lower(),
            "reason": report.reason,
            "error_code": report.error_code,
            "gate_weight": round(report.gate_weight, 6),
            "latency_ms": round(report.latency_ms, 2),
            "applicability": round(report.applicability, 4) if report.HasField("applicability") else None,
        }
    return {
        "task": response.task,
        "label": response.label,
        "confidence": response.confidence,
        "abstained": response.abstained,
        "abstain_reason": response.abstain_reason,
        "uncertainty": {
            "predictive_entropy": response.uncertainty.predictive_entropy,
            "gate_entropy": response.uncertainty.gate_entropy,
        },
        "top_k": [{"label": s.label, "probability": s.probability} for s in response.top_k],
        "description": response.description,
        "findings": {f.key: f.value for f in response.findings},
        "gate": {name: m["gate_weight"] for name, m in modalities.items()},
        "modalities": modalities,
        "attention": [
            {
                "query": router_pb2.Modality.Name(a.query_modality).removeprefix("MODALITY_").lower(),
                "key": router_pb2.Modality.Name(a.key_modality).removeprefix("MODALITY_").lower(),
                "mass": a.mass,
            }
            for a in response.explanation.attention
        ],
        "timings_ms": {k: round(v, 2) for k, v in sorted(response.explanation.timings_ms.items())},
        "model_version": response.model_version,
        "task_version": response.task_version,
        "reports": {name: report.content for report in response.reports for name, value in REPORT_FORMATS.items() if value == report.format},
        "request_id": response.request_id,
        "speech_wav": response.speech_wav,
    }


def format_answer(answer: dict[str, Any]) -> str:
    """A readable rendering of `to_dict`'s answer (what `modalmesh analyze` prints)."""
    lines = [
        f"{answer['task']}: {answer['label']}  (confidence {answer['confidence']:.2f}, "
        f"uncertainty {answer['uncertainty']['predictive_entropy']:.2f}, model {answer['model_version']})",
        "  top: " + ", ".join(f"{s['label']} {s['probability']:.2f}" for s in answer["top_k"]),
    ]
    if answer.get("abstained"):
        lines.append(f"  withheld: {answer['abstain_reason']}")
    for name, report in answer["modalities"].items():
        note = f" - {report['reason']}" if report["reason"] else ""
        fit = f"  applicability {report['applicability']:.2f}" if report.get("applicability") is not None else ""
        lines.append(f"  {name:5s} {report['status']:14s} gate {report['gate_weight']:.2f}  {report['latency_ms']:7.1f} ms{fit}{note}")
    if answer.get("attention"):  # with --explain: how much each modality's positions attended to each other's
        lines.append("  attention mass (query -> key): " + ", ".join(f"{a['query']}->{a['key']} {a['mass']:.2f}" for a in answer["attention"]))
    lines += [f"  {key}: {value}" for key, value in answer["findings"].items()]
    lines += ["", answer["description"], "", f"timings (ms): {answer['timings_ms']}"]
    return "\n".join(lines)


def _credentials(ca: str, cert: str, key: str):
    return security.channel_credentials(ca, cert, key) if (ca or cert) else None


def _metadata(token: str):
    return (("authorization", f"Bearer {token}"),) if token else None


class RouterClient:
    def __init__(
        self, target: str = "127.0.0.1:50050", *, ca: str = "", cert: str = "", key: str = "", token: str = "", server_name: str = "", timeout: float = 60.0
    ) -> None:
        from modalmesh.common.client import connect

        self.channel = connect(target, ca=ca, cert=cert, key=key, token=token, server_name=server_name)
        self.stub = router_pb2_grpc.RouterStub(self.channel)
        self.timeout = timeout

    def analyze_message(self, task: str, **fields) -> router_pb2.AnalyzeResponse:
        timeout = fields.pop("timeout", self.timeout)
        return self.stub.Analyze(build_request(task, **fields), timeout=timeout)

    def analyze(self, task: str, **fields) -> dict[str, Any]:
        return to_dict(self.analyze_message(task, **fields))

    def list_tasks(self) -> list[router_pb2.TaskInfo]:
        return list(self.stub.ListTasks(router_pb2.ListTasksRequest(), timeout=self.timeout).tasks)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "RouterClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncRouterClient:
    def __init__(
        self, target: str = "127.0.0.1:50050", *, ca: str = "", cert: str = "", key: str = "", token: str = "", server_name: str = "", timeout: float = 60.0
    ) -> None:
        from modalmesh.common.client import channel_options

        options = channel_options(server_name=server_name)
        credentials = _credentials(ca, cert, key)
        self.channel = grpc.aio.secure_channel(target, credentials, options=options) if credentials else grpc.aio.insecure_channel(target, options=options)
        self.stub = router_pb2_grpc.RouterStub(self.channel)
        self.metadata = _metadata(token)
        self.timeout = timeout

    async def analyze_message(self, task: str, **fields) -> router_pb2.AnalyzeResponse:
        timeout = fields.pop("timeout", self.timeout)
        return await self.stub.Analyze(build_request(task, **fields), timeout=timeout, metadata=self.metadata)

    async def analyze(self, task: str, **fields) -> dict[str, Any]:
        return to_dict(await self.analyze_message(task, **fields))

    async def list_tasks(self) -> list[router_pb2.TaskInfo]:
        reply = await self.stub.ListTasks(router_pb2.ListTasksRequest(), timeout=self.timeout, metadata=self.metadata)
        return list(reply.tasks)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> "AsyncRouterClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
