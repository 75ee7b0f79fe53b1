"""The router service: `modalmesh serve router` (port 50050).

Serves `modalmesh.v1.Router` (Analyze, AnalyzeStream, ListTasks) and the Open
Inference Protocol's `inference.GRPCInferenceService` on the same port. The request
path itself lives in modalmesh.router.pipeline; this module is the gRPC surface.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import queue
import struct
import threading
from concurrent import futures
from typing import Any, Callable, Iterator, Mapping, Sequence

import grpc
import numpy as np
import torch

from modalmesh import __version__
from modalmesh.common import errors
from modalmesh.common.batching import DynamicBatcher
from modalmesh.common.client import connect
from modalmesh.common.config import ServiceConfig
from modalmesh.common.encoder import NO_DEADLINE_SECONDS
from modalmesh.common.runtime import Service
from modalmesh.router.compiled_fusion import CompiledEnsemble
from modalmesh.router.fusion import MODALITIES, StackedEnsemble
from modalmesh.router.pipeline import MODALITY_ENUM, Encoders, Pipeline
from modalmesh.router import reports
from modalmesh.router.repository import Repository, VersionState, why_missing
from modalmesh.router.tasks import SHIPPED_WEIGHTS, TASKS, FusionEngine, TaskModel, TaskSpec, load_task, neighbour_checked
from modalmesh.v1 import inference_pb2, inference_pb2_grpc, router_pb2, router_pb2_grpc

log = logging.getLogger(__name__)

ROUTER_SERVICE = router_pb2.DESCRIPTOR.services_by_name["Router"].full_name
OIP_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


def apply_routing_thresholds(tasks: Mapping, setting: str) -> dict:
    """'screenshot_triage=0.9/0.15/image/image,medical_report=0.8/0.1' -> tasks with those
    tau/gamma; when a third part is given, those eager side outputs ('image', 'audio',
    'image+audio' or 'none'); when a fourth, the eager ones read quickly first ('image' or
    'none'; TaskSpec.quick)."""
    tasks = dict(tasks)
    for item in filter(None, (part.strip() for part in setting.split(","))):
        name, _, values = item.partition("=")
        parts = values.split("/")
        if name not in tasks:
            raise ValueError(f"routing: unknown task {name!r}")
        try:
            if len(parts) not in (2, 3, 4):
                raise ValueError
            changes: dict[str, object] = {"tau": float(parts[0]), "gamma": float(parts[1])}
        except ValueError:
            raise ValueError(f"routing: expected task=tau/gamma[/eager[/quick]], got {item!r}") from None
        if len(parts) >= 3:
            eager = tuple(m for m in parts[2].split("+") if m != "none")
            unknown = [m for m in eager if m not in tasks[name].side_outputs]
            if unknown or not parts[2]:
                raise ValueError(
                    f"routing: {item!r}: eager side outputs of {name} are {'+'.join(tasks[name].side_outputs)} or none, not {'+'.join(unknown) or 'empty'}"
                )
            changes["eager"] = eager
        if len(parts) == 4:
            if parts[3] not in ("image", "none"):
                raise ValueError(f"routing: {item!r}: the side output read quickly first is image or none, not {parts[3] or 'empty'}")
            changes["quick"] = () if parts[3] == "none" else ("image",)
        tasks[name] = dataclasses.replace(tasks[name], **changes)
    return tasks


def routing_items(setting: str, name: str) -> str:
    """The parts of a `routing` setting that name task `name`."""
    return ",".join(part for part in setting.split(",") if part.strip().partition("=")[0] == name)


def parse_pins(setting: str, tasks: Mapping[str, TaskSpec]) -> dict[str, int]:
    """'screenshot_triage=3,medical_report=1' -> {task: version}."""
    pins = {}
    for item in filter(None, (part.strip() for part in setting.split(","))):
        name, _, version = item.partition("=")
        if name not in tasks:
            raise ValueError(f"model_versions: unknown task {name!r}; one of {', '.join(sorted(tasks))}")
        if not version.isdigit() or int(version) < 1:
            raise ValueError(f"model_versions: expected task=<positive integer>, got {item!r}")
        pins[name] = int(version)
    return pins


def _remaining(context: grpc.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return remaining if remaining is not None and remaining < NO_DEADLINE_SECONDS else None


class RouterService(Service):
    name = "router"

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.tasks: Mapping[str, TaskModel] = {}
        self.repository: Repository | None = None  # with `model_repository`: the versions, loaded while serving
        self.pipeline: Pipeline | None = None
        self.model_thread: DynamicBatcher | None = None
        self.beside_thread: futures.ThreadPoolExecutor | None = None
        self.channels: list[grpc.Channel] = []
        self.address = ""  # where the gRPC server listens (the HTTP gateway calls it)
        self.gateway: Any = None  # router/http.py HttpGateway, when http_port is set
        self.http_port = 0  # the port it listens on

    def bound(self, address: str) -> None:
        self.address = address

    def initialize(self) -> None:
        model_thread: DynamicBatcher[Callable[[], object], object] = DynamicBatcher(_run_all, max_batch_size=8, max_queue=self.config.max_queue, name="router")
        self.model_thread = model_thread
        # A second model thread: a decision's lone readings run there beside its whole-input
        # fusion (tasks.decide), on a core the encoders have finished with by then.
        beside_thread = self.beside_thread = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="router-model-beside")

        def prepare(task: TaskModel) -> TaskModel:
            # tau/gamma/eager/quick: --routing, else the values tuned on validation (in the weights' config), else the task's defaults.
            name = task.spec.name
            task.spec = apply_routing_thresholds({name: task.spec}, routing_items(self.config.routing, name))[name]
            model_thread.submit(functools.partial(_warm, task.model)).value  # the first call's one-off costs, paid before it serves
            if isinstance(task.model, (StackedEnsemble, CompiledEnsemble)):
                engine = "openvino" if isinstance(task.model, CompiledEnsemble) else "torch"
                log.info("task %s: %d-model ensemble in %s, linear maps in %s", name, len(task.model.members), engine, task.model.precision)
            return task

        engine = FusionEngine(self.config.engine, self.config.torch_threads, self.config.openvino_shapes)  # what runs the ensembles' decisions
        if self.config.model_repository:
            self.repository = Repository(self.config.model_repository, TASKS, prepare, precision=self.config.fusion_precision, engine=engine)
            self.repository.discover()  # the repository's own tasks (task files), before the settings that name tasks are checked
            self.repository.pins = parse_pins(self.config.model_versions, self.repository.specs)
            apply_routing_thresholds(self.repository.specs, self.config.routing)  # a bad setting is refused at start
            self.repository.poll()
            self.repository.start(self.config.repository_poll_s)
            self.tasks = self.repository
        else:
            apply_routing_thresholds(TASKS, self.config.routing)  # a bad setting is refused at start
            weights = self.config.weights_dir or (str(SHIPPED_WEIGHTS) if SHIPPED_WEIGHTS.is_dir() else "")
            self.tasks = {name: prepare(load_task(spec, weights, self.config.fusion_precision, engine)) for name, spec in TASKS.items()}
        self.channels = [
            connect(target, ca=self.config.encoder_ca, cert=self.config.encoder_cert, key=self.config.encoder_key, token=self.config.encoder_token)
            for target in (self.config.text_target, self.config.vision_target, self.config.audio_target)
        ]
        self.pipeline = Pipeline(
            self.tasks,
            Encoders(*self.channels),
            run_model=lambda work: model_thread.submit(work).value,
            run_beside=lambda work: beside_thread.submit(work).result,
            default_deadline_s=self.config.default_deadline_s,
            max_input_bytes=self.config.max_input_bytes,
            speech_budget_s=self.config.speech_budget_s,
        )

        if self.config.http_port:
            self.start_gateway()

    def start_gateway(self) -> None:
        from modalmesh.router.http import HttpGateway

        config = self.config
        host, _, port = self.address.rpartition(":")
        loopback = f"127.0.0.1:{port}" if host in ("0.0.0.0", "[::]", "") else self.address
        hop: dict[str, str] = {}  # how the HTTP server reaches the gRPC port
        served: dict[str, Any] = {}  # uvicorn's TLS settings
        if config.tls_enabled:
            # HTTPS with the router's certificate (client certificates required as on gRPC);
            # the loopback hop trusts the mesh's CA and, under mTLS, shows the router's own
            # client identity (the one it calls the encoders with).
            import ssl

            hop["ca"] = config.encoder_ca or config.tls_client_ca
            if config.tls_client_ca:
                hop.update(cert=config.encoder_cert, key=config.encoder_key)
            if not hop["ca"] or (config.tls_client_ca and not (config.encoder_cert and config.encoder_key)):
                log.warning("router: HTTP off: with TLS it needs encoder_ca (and under mTLS encoder_cert and encoder_key) to reach the gRPC port")
                return
            served = {"ssl_certfile": config.tls_cert, "ssl_keyfile": config.tls_key}
            if config.tls_client_ca:
                served.update(ssl_ca_certs=config.tls_client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
        self.gateway = HttpGateway(config.host, config.http_port, loopback, config.max_input_bytes, channel_options=hop, ssl=served)
        self.http_port = self.gateway.start()
        log.info("router: HTTP on %s:%d (OIP v2 REST, /v1/analyze)", self.config.host, self.http_port)

    def finalize(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        if self.repository is not None:
            self.repository.stop()
        if self.model_thread is not None:
            self.model_thread.close()
        if self.beside_thread is not None:
            self.beside_thread.shutdown(wait=True)
        for channel in self.channels:
            channel.close()

    def register(self, server: grpc.Server) -> list[str]:
        router_pb2_grpc.add_RouterServicer_to_server(RouterServicer(self), server)
        inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(self), server)
        return [ROUTER_SERVICE, OIP_SERVICE]


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(self, service: RouterService) -> None:
        self.service = service

    def Analyze(self, request: router_pb2.AnalyzeRequest, context: grpc.ServicerContext) -> router_pb2.AnalyzeResponse:
        runs: list = []
        context.add_callback(lambda: [run.cancel_all() for run in runs])  # client gone: cancel downstream
        pipeline = self.service.pipeline
        assert pipeline is not None  # the runtime answers UNAVAILABLE until initialize() has built it
        return pipeline.analyze(request, _remaining(context), on_run=runs.append)

    def AnalyzeStream(self, request_iterator, context) -> Iterator[router_pb2.AnalyzeEvent]:
        limit = self.service.config.max_input_bytes
        stream = iter(request_iterator)
        request, first_audio = _read_until_audio(stream, limit)
        audio_chunks = None
        reader_error: dict = {}
        if first_audio is not None:
            # Audio flows on to the audio encoder while the client is still sending it.
            arriving: queue.Queue = queue.Queue()
            arriving.put(first_audio)
            threading.Thread(
                target=_pump_audio, args=(stream, arriving, limit - len(first_audio), reader_error), name="analyze-stream-audio", daemon=True
            ).start()
            audio_chunks = iter(arriving.get, None)
        events: queue.Queue = queue.Queue()
        runs: list = []
        context.add_callback(lambda: [run.cancel_all() for run in runs])
        outcome: dict = {}

        def work():
            try:
                outcome["response"] = self.service.pipeline.analyze(
                    request, _remaining(context), on_event=events.put, on_run=runs.append, audio_stream=audio_chunks
                )
            except BaseException as exc:  # handed to the stream below
                outcome["error"] = exc
            finally:
                events.put(None)

        threading.Thread(target=work, name="analyze-stream", daemon=True).start()
        while (event := events.get()) is not None:
            yield event
        if "error" in reader_error:
            raise reader_error["error"]
        if "error" in outcome:
            raise outcome["error"]
        yield router_pb2.AnalyzeEvent(final=outcome["response"])

    def ListTasks(self, request, context):
        repository = self.service.repository
        names = sorted(set(repository.specs) | set(repository.problems)) if repository is not None else sorted(self.service.tasks)
        return router_pb2.ListTasksResponse(tasks=[self._task_info(name) for name in names])

    def _task_info(self, name: str) -> router_pb2.TaskInfo:
        repository = self.service.repository
        if repository is not None and name in repository.problems:
            return router_pb2.TaskInfo(name=name, problem=repository.problems[name][:1000])
        task = self.service.tasks.get(name)
        spec = task.spec if task is not None else (repository.specs[name] if repository is not None else TASKS[name])
        info = router_pb2.TaskInfo(
            name=name,
            report_formats=[wanted for wanted, (format_name, _) in reports.FORMATS.items() if format_name in spec.reports],
            description=spec.description,
            labels=list(spec.labels),
            accepted_modalities=[MODALITY_ENUM[m] for m in spec.modalities],
            optional_modalities=[MODALITY_ENUM[m] for m in spec.modalities if m not in spec.needs],
        )
        if task is not None:  # a version is serving
            info.model_version = task.version
            info.tau, info.gamma = task.spec.tau, task.spec.gamma
            info.eager_side_outputs.extend(MODALITY_ENUM[m] for m in task.spec.eager)
            info.quick_side_outputs.extend(MODALITY_ENUM[m] for m in task.spec.quick)
            info.text_model = task.model.config.text_model
            info.abstain_below = task.abstain_below
            info.neighbour_checked.extend(MODALITY_ENUM[m] for m in neighbour_checked(task))
            info.abstain_below_alone.update(task.model.config.abstain_below_alone)
            if task.scope is not None:
                info.out_of_scope_above = task.scope.threshold
            info.applicability_max_distance.update({m: d for m in task.applicability.references if (d := task.applicability.max_distance(m)) is not None})
        if repository is not None:
            info.versions.extend(_version_info(repository, name, state, task) for state in repository.states(name))
            info.problem = repository.refused.get(name, "")[:1000]
        return info


def _version_info(repository: Repository, name: str, state: VersionState, serving: TaskModel | None) -> router_pb2.TaskVersion:
    ready = repository.get(f"{name}@{state.version}") if state.state == "ready" else None
    return router_pb2.TaskVersion(
        version=state.version,
        state=state.state,
        reason=state.reason,
        model_version=ready.version if ready is not None else "",
        serving=serving is not None and ready is serving,
    )


def _read_until_audio(stream, max_bytes: int) -> tuple[router_pb2.AnalyzeRequest, bytes | None]:
    """The request, its image chunks appended; stops at the first audio chunk (returned)
    or the end of the stream. Image chunks must come before audio chunks."""
    first = next(stream, None)
    if first is None or first.WhichOneof("content") != "request":
        raise errors.invalid_argument("request", "the first message must carry the request")
    request = router_pb2.AnalyzeRequest()
    request.CopyFrom(first.request)
    image = bytearray(request.image.data)
    for position, message in enumerate(stream, start=1):
        kind = message.WhichOneof("content")
        if kind == "image_chunk":
            if request.image.data:  # else the chunks would silently trail the image given
                raise errors.invalid_argument("request.image.data", "send the image either in the request or as chunks")
            image += message.image_chunk
            if len(image) > max_bytes:
                raise errors.invalid_argument(f"messages[{position}]", f"image over the limit of {max_bytes} bytes")
        elif kind == "audio_chunk":
            request.image.data = bytes(image)
            if request.audio.data:
                raise errors.invalid_argument("request.audio.data", "send the audio either in the request or as chunks")
            return request, bytes(message.audio_chunk)
        else:
            raise errors.invalid_argument(f"messages[{position}]", "only image_chunk or audio_chunk may follow the request")
    request.image.data = bytes(image)
    return request, None


def _pump_audio(stream, arriving: queue.Queue, budget: int, error: dict) -> None:
    """Move the client's remaining audio chunks into `arriving`; None marks the end."""
    try:
        for message in stream:
            if message.WhichOneof("content") != "audio_chunk":
                raise errors.invalid_argument("image_chunk", "image chunks must come before the first audio chunk")
            budget -= len(message.audio_chunk)
            if budget < 0:
                raise errors.invalid_argument("audio_chunk", "audio over the size limit")
            arriving.put(bytes(message.audio_chunk))
    except errors.ServiceError as exc:
        error["error"] = exc
    except grpc.RpcError:  # the client went away; the call is being cancelled
        pass
    finally:
        arriving.put(None)


# ---------------------------------------------------------------------------- OIP v2

OIP_INPUTS = ("TEXT", "IMAGE", "AUDIO")
OIP_OUTPUTS = {
    "LABEL": "BYTES",
    "CONFIDENCE": "FP32",
    "PROBS": "FP32",
    "DESCRIPTION": "BYTES",
    "GATE": "FP32",
    "ABSTAINED": "BOOL",
    "ABSTAIN_REASON": "BYTES",
    "APPLICABILITY": "FP32",
}


def _versioned(name: str, version: str) -> str:
    """An OIP model name and version as a router task key ("task" or "task@3")."""
    return f"{name}@{version}" if version else name


def _bytes_element(raw: bytes, name: str) -> bytes:
    """The one element of a BYTES tensor in raw form: 4-byte little-endian length + data."""
    if len(raw) < 4:
        raise errors.invalid_argument(f"raw_input_contents[{name}]", "a BYTES element needs a 4-byte length prefix")
    (length,) = struct.unpack("<I", raw[:4])
    if length != len(raw) - 4:
        raise errors.invalid_argument(f"raw_input_contents[{name}]", f"length prefix {length} but {len(raw) - 4} bytes follow")
    return raw[4:]


def _bytes_tensor(value: bytes) -> bytes:
    return struct.pack("<I", len(value)) + value


class InferenceServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    """Each router task is one OIP model; inputs and outputs as in inference.proto."""

    def __init__(self, service: RouterService) -> None:
        self.service = service

    def ServerLive(self, request, context):
        return inference_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return inference_pb2.ServerReadyResponse(ready=self.service.pipeline is not None)

    def ModelReady(self, request, context):
        return inference_pb2.ModelReadyResponse(ready=_versioned(request.name, request.version) in self.service.tasks)

    def ServerMetadata(self, request, context):
        extensions = ["model_repository"] if self.service.repository is not None else []
        return inference_pb2.ServerMetadataResponse(name="modalmesh", version=__version__, extensions=extensions)

    # -- the model repository extension ------------------------------------------------
    def _repository(self) -> Repository:
        if self.service.repository is None:
            raise errors.ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION, "this router serves fixed weights; start it with --model-repository DIR to load and unload versions"
            )
        return self.service.repository

    def _repository_task(self, name: str) -> tuple[Repository, str]:
        repository = self._repository()
        if name not in repository.specs:
            raise errors.ServiceError(grpc.StatusCode.NOT_FOUND, f"model {name[:100]!r} not found; models: {', '.join(sorted(repository.specs))}")
        return repository, name

    def RepositoryIndex(self, request, context):
        repository = self._repository()
        index = inference_pb2.RepositoryIndexResponse()
        for name in sorted(repository.specs):
            for state in repository.states(name):
                if request.ready and state.state != "ready":
                    continue
                index.models.add(name=name, version=str(state.version), state="READY" if state.state == "ready" else "UNAVAILABLE", reason=state.reason)
        return index

    def RepositoryModelLoad(self, request, context):
        repository, name = self._repository_task(request.model_name)
        if request.parameters:
            unsupported = sorted(request.parameters)[0]
            raise errors.invalid_argument(f"parameters[{unsupported[:50]!r}]", "not supported: the versions load from the repository's folders")
        states = repository.reload(name)
        if not any(state.state == "ready" for state in states):
            reasons = "; ".join(f"version {s.version}: {s.reason}" for s in states) or f"no version folder in {repository.root / name}"
            raise errors.ServiceError(grpc.StatusCode.FAILED_PRECONDITION, f"{name}: no version loaded ({reasons})"[:360])
        return inference_pb2.RepositoryModelLoadResponse()

    def RepositoryModelUnload(self, request, context):
        repository, name = self._repository_task(request.model_name)
        unknown = sorted(set(request.parameters) - {"unload_dependents"})
        if unknown:
            raise errors.invalid_argument(f"parameters[{unknown[0][:50]!r}]", "not supported")
        repository.unload_task(name)
        return inference_pb2.RepositoryModelUnloadResponse()

    def ModelMetadata(self, request, context):
        task = self._task(request.name, request.version)
        meta = inference_pb2.ModelMetadataResponse.TensorMetadata
        repository = self.service.repository
        if repository is not None:  # the repository's version numbers
            versions = [str(state.version) for state in repository.states(request.name) if state.state == "ready"]
        else:
            versions = [task.version]
        return inference_pb2.ModelMetadataResponse(
            name=request.name,
            versions=versions,
            platform="modalmesh",
            inputs=[meta(name=name, datatype="BYTES", shape=[1]) for name in OIP_INPUTS],
            outputs=[
                meta(name="LABEL", datatype="BYTES", shape=[1]),
                meta(name="CONFIDENCE", datatype="FP32", shape=[1]),
                meta(name="PROBS", datatype="FP32", shape=[len(task.spec.labels)]),
                meta(name="DESCRIPTION", datatype="BYTES", shape=[1]),
                meta(name="GATE", datatype="FP32", shape=[len(MODALITIES)]),
                meta(name="ABSTAINED", datatype="BOOL", shape=[1]),
                meta(name="ABSTAIN_REASON", datatype="BYTES", shape=[1]),
                meta(name="APPLICABILITY", datatype="FP32", shape=[len(MODALITIES)]),
            ],
        )

    def _task(self, name: str, version: str = "") -> TaskModel:
        key = _versioned(name, version)
        if key not in self.service.tasks:
            raise errors.ServiceError(grpc.StatusCode.NOT_FOUND, why_missing(self.service.tasks, key))
        return self.service.tasks[key]

    def ModelInfer(self, request, context):
        task = self._task(request.model_name, request.model_version)
        # The version found now answers, even if a newer one becomes ready meanwhile.
        analyze = router_pb2.AnalyzeRequest(request_id=request.id, task=_versioned(request.model_name, str(task.repository_version or "")))
        analyze.options.top_k = len(task.spec.labels)  # PROBS needs every label's probability
        if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
            raise errors.invalid_argument("raw_input_contents", f"{len(request.raw_input_contents)} entries for {len(request.inputs)} inputs")
        seen = set()
        for index, tensor in enumerate(request.inputs):
            if tensor.name not in OIP_INPUTS:
                raise errors.invalid_argument(f"inputs[{index}].name", f"{tensor.name!r} is not one of {', '.join(OIP_INPUTS)}")
            if tensor.name in seen:  # the later one would silently replace the earlier
                raise errors.invalid_argument(f"inputs[{index}].name", f"{tensor.name} is given twice")
            seen.add(tensor.name)
            # math.prod on Python ints: numpy's int64 product wraps ([274177, 67280421310721] gave 1).
            if tensor.datatype != "BYTES" or math.prod(tensor.shape or [1]) != 1 or any(d < 1 for d in tensor.shape):
                raise errors.invalid_argument(f"inputs[{index}]", "must be BYTES with one element (shape [1])")
            if request.raw_input_contents:
                value = _bytes_element(request.raw_input_contents[index], tensor.name)
            elif len(tensor.contents.bytes_contents) == 1:
                value = tensor.contents.bytes_contents[0]
            else:
                raise errors.invalid_argument(f"inputs[{index}].contents", "needs exactly one bytes element")
            media_type = tensor.parameters["media_type"].string_param if "media_type" in tensor.parameters else ""
            if tensor.name == "TEXT":
                try:
                    analyze.text = value.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise errors.invalid_argument(f"inputs[{index}]", f"TEXT is not valid UTF-8 at byte {exc.start}") from None
            else:
                target = analyze.image if tensor.name == "IMAGE" else analyze.audio
                target.data, target.media_type = value, media_type
        mode = request.parameters["mode"].string_param if "mode" in request.parameters else ""
        if mode:
            analyze.options.mode = {"routed": router_pb2.ROUTING_MODE_ROUTED, "full": router_pb2.ROUTING_MODE_FULL}.get(mode, -1)
            if analyze.options.mode == -1:
                raise errors.invalid_argument("parameters.mode", f"{mode!r} is not routed or full")
        if "deadline_ms" in request.parameters:
            analyze.options.deadline_ms = request.parameters["deadline_ms"].int64_param
        response = self.service.pipeline.analyze(analyze, _remaining(context))

        weights = {report.modality: report.gate_weight for report in response.explanation.modalities}
        probabilities = {score.label: score.probability for score in response.top_k}
        # Every label's probability; all 0 when nothing the task reads was given.
        full_probabilities = [probabilities.get(label, 0.0) for label in task.spec.labels]
        applicability = {report.modality: report.applicability if report.HasField("applicability") else -1.0 for report in response.explanation.modalities}
        values = {
            "LABEL": ([1], _bytes_tensor(response.label.encode())),
            "CONFIDENCE": ([1], np.array([response.confidence], "<f4").tobytes()),
            "PROBS": ([len(task.spec.labels)], np.array(full_probabilities, "<f4").tobytes()),
            "DESCRIPTION": ([1], _bytes_tensor(response.description.encode())),
            "GATE": ([len(MODALITIES)], np.array([weights.get(MODALITY_ENUM[m], 0.0) for m in MODALITIES], "<f4").tobytes()),
            "ABSTAINED": ([1], np.array([response.abstained], "?").tobytes()),
            "ABSTAIN_REASON": ([1], _bytes_tensor(response.abstain_reason.encode())),
            "APPLICABILITY": ([len(MODALITIES)], np.array([applicability.get(MODALITY_ENUM[m], -1.0) for m in MODALITIES], "<f4").tobytes()),
        }
        wanted = [o.name for o in request.outputs] or list(OIP_OUTPUTS)
        version = str(task.repository_version) if task.repository_version else task.version
        reply = inference_pb2.ModelInferResponse(model_name=request.model_name, model_version=version, id=request.id)
        for position, name in enumerate(wanted):
            if name not in OIP_OUTPUTS:
                raise errors.invalid_argument(f"outputs[{position}].name", f"{name!r} is not one of {', '.join(OIP_OUTPUTS)}")
            shape, raw = values[name]
            reply.outputs.add(name=name, datatype=OIP_OUTPUTS[name], shape=shape)
            reply.raw_output_contents.append(raw)
        return reply


def _run_all(work: Sequence[Callable[[], object]]) -> list[object]:
    """The router's model thread runs each callable it is handed, in order."""
    return [item() for item in work]


def _warm(model) -> object:
    """One pass of a fusion model on a little text: the first call's one-off costs, paid at
    start; a model on OpenVINO prepares the input lengths a request can bring, too."""
    if isinstance(model, CompiledEnsemble):
        model.prepare_lengths()
    return model(model.embed([{"text": torch.zeros(2, model.config.input_widths["text"])}]))
