"""One request through the mesh, top to bottom:

    validate -> fan out -> (routing loop: gate decides what is still worth waiting for)
             -> fuse -> heads -> describe -> speak -> explain

Fan-out calls every encoder for the modalities present, concurrently, each with the
request's remaining deadline. Expensive side outputs (OCR of the screenshot, the
transcript of the voice message) are not asked for at first in ROUTED mode, except
those the task's routing marks eager (fitted on validation: OCR for screenshot triage,
which is waited for in most cases anyway); an eager one comes with its modality's base
features from one encoder call, saving a second decode, call and fusion. Each time
an encoder answers, the router fuses what it has; when the answer is confident
(>= tau) and the gate predicts that what is still outstanding would weigh < gamma, it
answers at once and cancels the calls still running. Otherwise, once the base features
are in, it asks for the side outputs and waits for them. FULL mode asks for everything
at once and waits for everything. An encoder that fails or runs out of time leaves a
degraded answer from the rest, with the reason in the explanation.
"""

from __future__ import annotations

import collections
import itertools
import logging
import random
import threading
import time
import uuid
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import grpc
import numpy as np
import torch
from opentelemetry import context as otel_context

from modalmesh.common import errors, models, telemetry
from modalmesh.common.media import sniff, sniff_image
from modalmesh.common.client import EncodeResult, collect, encode_requests
from modalmesh.common.encoder import MAX_REQUEST_ID_CHARS
from modalmesh.common.layout import MIN_SPAN_CONFIDENCE, is_blank
from modalmesh.router.fusion import MODALITIES, SIDE_SOURCE, FusionOutputs, attention_mass, modality_gate_weights, modality_of, normalised_entropy
from modalmesh.router import reports, status_line
from modalmesh.router.repository import why_missing
from modalmesh.router.routing import quick_reading_holds, Speculation, answer_now, outstanding, waits_for_required
from modalmesh.router.sources import QUICK_OPTION, SIDE_OPTION, embed, side_text
from modalmesh.router.tasks import (
    UNCERTAIN,
    AloneReadings,
    Answer,
    Applicable,
    Evidence,
    TaskModel,
    best_screen_line,
    decide,
    lone_readings,
    not_applicable,
    screen_line_log_odds,
    withheld_answer,
)
from modalmesh.v1 import encoder_pb2, encoder_pb2_grpc, router_pb2, speech_pb2, speech_pb2_grpc
from modalmesh.vision.measure import lesion_boxes, parse_lesion_tags

log = logging.getLogger(__name__)

MODALITY_ENUM = {"text": router_pb2.MODALITY_TEXT, "image": router_pb2.MODALITY_IMAGE, "audio": router_pb2.MODALITY_AUDIO}
ENUM_MODALITY = {value: name for name, value in MODALITY_ENUM.items()}
MAX_TEXT_BYTES = 64 * 1024
ENCODER_RETRIES = 3  # a busy encoder's refusal is retried after the wait it names, this many times at most
# Under a gRPC deadline the router stops gathering this long before it (Pipeline._budget):
# twice the recent 90th percentile of the time from gathering's end to the answer (fusion,
# heads, the words: 10-30 ms on an idle router, longer when calls queue for the model
# thread), at least 20 ms and at most 0.6 s of it, or more when finishing has been slower,
# but never more than 10% of the time left. The 0.6 s leaves room for a loaded router's
# own delay in sending the reply.
REPLY_MARGIN_SHARE, MIN_REPLY_MARGIN_S, MAX_REPLY_MARGIN_S = 0.1, 0.02, 0.6
FINISH_WINDOW = 64  # recent answers whose finishing time sets the margin


class Tee:
    """Passes chunks through once, keeping a copy (for a later call on the same input)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._kept = bytearray()

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self._kept += chunk
            yield chunk

    def collected(self) -> bytes:
        return bytes(self._kept)


@dataclass
class Deadline:
    expires: float

    @classmethod
    def within(cls, seconds: float) -> "Deadline":
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        return max(0.0, self.expires - time.monotonic())


@dataclass
class Call:
    """One downstream piece of work (an encoder call, possibly followed by text
    embedding of its side output) that can be waited on and cancelled."""

    source: str
    started: float
    future: futures.Future
    cancelled: threading.Event = field(default_factory=threading.Event)
    rpc: grpc.Future | None = None
    harvested: bool = False

    def cancel(self) -> None:
        self.cancelled.set()
        if self.rpc is not None:
            self.rpc.cancel()
        self.future.cancel()


@dataclass
class ModalityState:
    status: router_pb2.ModalityStatus = router_pb2.MODALITY_STATUS_ABSENT
    reason: str = ""
    error_code: str = ""
    latency_ms: float = 0.0
    violations: list[tuple[str, str]] = field(default_factory=list)  # the encoder's, for INVALID_ARGUMENT
    applicability: float | None = None  # applicability.Applicability.score of its features, where checked


class NotApplicable(Exception):
    """An input that is not the kind the task reads (a head CT for the chest-CT task)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Encoders:
    """The router's view of the mesh: stubs for each encoder and the speech service."""

    OPTIONS_TTL_S = 30.0  # how long an encoder's list of options is trusted (it may restart with others)

    def __init__(self, text: grpc.Channel, vision: grpc.Channel, audio: grpc.Channel) -> None:
        self.stubs = {
            "text": encoder_pb2_grpc.EncoderStub(text),
            "image": encoder_pb2_grpc.EncoderStub(vision),
            "audio": encoder_pb2_grpc.EncoderStub(audio),
        }
        self.speech = speech_pb2_grpc.SpeechStub(audio)
        self._options: dict[str, tuple[float, frozenset[str]]] = {}
        self._refreshing: set[str] = set()  # modalities whose Info is being read in the background (may_offer)
        self._no_batch: dict[str, float] = {}  # modality -> when its encoder answered EncodeBatch UNIMPLEMENTED

    def offers(self, modality: str, option: str, timeout: float) -> bool:
        """Whether the modality's encoder accepts `option` (its Info, cached for a while).
        When Info cannot be had, assume it does: the call itself will say."""
        cached = self._options.get(modality)
        if cached is None or time.monotonic() - cached[0] > self.OPTIONS_TTL_S:
            try:
                info = self.stubs[modality].Info(encoder_pb2.InfoRequest(), timeout=max(0.001, min(timeout, 2.0)))
            except grpc.RpcError:
                return True
            cached = self._options[modality] = (time.monotonic(), frozenset(info.options))
        return option in cached[1]

    def may_offer(self, modality: str, option: str) -> bool:
        """offers() without waiting: from the encoder's last Info, read again in the background
        once older than OPTIONS_TTL_S; True until one has been read (a refused call says so).
        For choices a refusal can undo, so that no request waits on Info (a hung encoder
        would hold every one of them for its timeout)."""
        cached = self._options.get(modality)
        if (cached is None or time.monotonic() - cached[0] > self.OPTIONS_TTL_S) and modality not in self._refreshing:
            self._refreshing.add(modality)

            def refresh() -> None:
                try:
                    self.offers(modality, option, 2.0)
                finally:
                    self._refreshing.discard(modality)

            threading.Thread(target=refresh, name=f"router-info-{modality}", daemon=True).start()
        return cached is None or option in cached[1]

    def batches(self, modality: str) -> bool:
        """Whether to send the modality's encoder several inputs in one EncodeBatch call:
        unless it answered UNIMPLEMENTED (a service older than the call) in the last
        OPTIONS_TTL_S (it may since have been replaced by one that has it)."""
        since = self._no_batch.get(modality)
        return since is None or time.monotonic() - since > self.OPTIONS_TTL_S

    def batches_not(self, modality: str) -> None:
        self._no_batch[modality] = time.monotonic()


@dataclass(frozen=True)
class Produced:
    """What one piece of encoder work brought back. Work on the pool returns one and writes
    nothing shared; the gathering thread merges it into the Run (Run.harvest)."""

    features: dict[str, torch.Tensor] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)  # Evidence fields: text, image_tags, screen_lines, transcript
    notes: dict[str, str] = field(default_factory=dict)  # per side source: why it is missing or partial
    screen_text_note: str = ""  # OCR text read or used only in part, and why
    streamed: bytes | None = None  # the bytes of an input that arrived as a stream
    read_note: str = ""  # the modality's input read only in part (a message cut at the text model's limit)

    def plus(self, other: "Produced") -> "Produced":
        return Produced(
            {**self.features, **other.features},
            {**self.evidence, **other.evidence},
            {**self.notes, **other.notes},
            other.screen_text_note or self.screen_text_note,
            self.streamed if other.streamed is None else other.streamed,
            other.read_note or self.read_note,
        )


class Run:
    """The state of one request: calls in flight, features and evidence gathered. Only the
    thread that gathers (Pipeline.gather) writes it; the work on the pool returns Produced."""

    def __init__(
        self,
        encoders: Encoders,
        pool: futures.ThreadPoolExecutor,
        deadline: Deadline,
        line_pool: futures.ThreadPoolExecutor | None = None,
        widths: dict[str, int] | None = None,
        text_model: str = "",
    ) -> None:
        self.encoders = encoders
        self.widths = widths or {}  # per source, the feature width the task's weights were trained on
        self.text_model = text_model  # the text model the weights were trained with ('' = any that fits)
        self.explain = False  # keep the fusion's attention weights (the answer explains itself)
        # Whether an input is one the task reads (tasks.not_applicable): a reason makes it NOT_APPLICABLE.
        self.judge: Callable[[str, torch.Tensor | None, dict[str, str], torch.Tensor | None], Applicable] = lambda m, f, t, s: Applicable(None, "")
        self.pool = pool  # the fan-out: one piece of work per source
        # Text lines a piece of work embeds run on another pool (work waiting on its own pool
        # deadlocks once every worker is such a wait); without one, one after another.
        self.line_pool = line_pool
        self.deadline = deadline
        self.calls: dict[str, Call] = {}
        self.features: dict[str, torch.Tensor] = {}
        self.states = {m: ModalityState() for m in MODALITIES}
        self.side_notes: dict[str, str] = {}
        self.streamed: dict[str, bytes] = {}  # bytes of inputs that arrived as a stream
        self.evidence = Evidence()
        self.screen_text_note = ""  # OCR text read or used only in part, and why (the image's report says it)
        self.line_log_odds: torch.Tensor | None = None  # per OCR paragraph and label (Pipeline.score_screen_lines)
        self.status_index: int | None = None  # the status message's paragraph (Pipeline.status_row)
        self.status_chance: float | None = None  # the pointer's probability that it is (Pipeline.status_row)
        self.status_unstated = ""  # why that paragraph is not stated as a status message, or '' (Pipeline.status_row)
        self.alone = AloneReadings()  # each modality read alone (tasks.decide's dissent check), kept for this request
        self.read_ahead: set[tuple[str, frozenset[str]]] = set()  # (modality, sources) read alone ahead (Pipeline.read_alone_ahead)
        self.quick: set[str] = set()  # modalities whose side output is read quickly first (TaskSpec.quick), until judged (Pipeline.gather)

    # -- starting work ---------------------------------------------------------------
    def start(self, source: str, work: Callable[[Call], Produced]) -> None:
        call = Call(source, time.perf_counter(), futures.Future())
        call.future = self.pool.submit(telemetry.in_context(otel_context.get_current(), work), call)
        self.calls[source] = call

    def encode(self, call: Call, modality: str, data: bytes, media_type: str, options=(), pooled_only=False, parameters=None):
        """An EncodeOnce call that `call.cancel()` can cancel; returns the collected result."""
        header = next(encode_requests(b"", media_type, options=options, pooled_only=pooled_only, parameters=parameters)).header
        reply = self._unary(call, self.encoders.stubs[modality].EncodeOnce, encoder_pb2.EncodeOnceRequest(header=header, payload=data))
        result = collect(iter(reply.chunks))
        if modality == "text":
            self._check_text_model(result)
        return result

    def _unary(self, call: Call, method, request):
        """One unary encoder call that `call.cancel()` can cancel, within the deadline; a busy
        encoder that says when it expects room is called again then, if the deadline allows."""
        for attempt in itertools.count():
            if call.cancelled.is_set():
                raise futures.CancelledError()
            call.rpc = method.future(request, timeout=max(0.001, self.deadline.remaining()))
            try:
                return call.rpc.result()
            except grpc.RpcError as exc:
                wait = errors.retry_after(exc) if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else None
                if wait is None or attempt >= ENCODER_RETRIES or wait * 1.5 > self.deadline.remaining():
                    raise
                if call.cancelled.wait(wait * random.uniform(0.5, 1.0)):
                    raise futures.CancelledError() from None
        raise AssertionError("unreachable")

    def _check_text_model(self, result: EncodeResult) -> None:
        if self.text_model:
            served = result.pooled_message.model_version
            if not models.same_weights(served, self.text_model):
                raise errors.ServiceError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"the text service runs {served}; the task's weights were trained with "
                    f"{self.text_model} (a fine-tuned one is the text-model folder beside them)",
                )

    def encode_stream(self, call: Call, modality: str, chunks: Iterator[bytes], media_type: str, options=(), parameters=None):
        """An Encode stream fed while the input is still arriving."""
        messages = itertools.chain(
            encode_requests(b"", media_type, options=options, parameters=parameters),
            (encoder_pb2.EncodeRequest(payload=chunk) for chunk in chunks),
        )
        if call.cancelled.is_set():
            raise futures.CancelledError()
        call.rpc = self.encoders.stubs[modality].Encode(messages, timeout=max(0.001, self.deadline.remaining()))
        return collect(call.rpc)

    def embed_texts(self, call: Call, texts: list[str]) -> torch.Tensor:
        """One pooled text vector per line: in one EncodeBatch call (one batch of the text
        model), or, from a text service without it, one concurrent call per line."""
        if len(texts) > 1 and self.encoders.batches("text"):
            headers = [next(encode_requests(b"", "text/plain", pooled_only=True)).header for _ in texts]  # each its own request id
            inputs = [encoder_pb2.EncodeOnceRequest(header=header, payload=text.encode()) for header, text in zip(headers, texts)]
            request = encoder_pb2.EncodeBatchRequest(inputs=inputs)
            try:
                reply = self._unary(call, self.encoders.stubs["text"].EncodeBatch, request)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:  # a text service older than the call
                    self.encoders.batches_not("text")
                elif not (exc.code() == grpc.StatusCode.INVALID_ARGUMENT and [f for f, _ in errors.field_violations(exc)] == ["inputs"]):
                    raise  # (a text service taking fewer inputs in one call than there are lines: one call each)
            else:
                results = [collect(iter(output.chunks)) for output in reply.outputs]
                for result in results:
                    self._check_text_model(result)
                return torch.from_numpy(np.stack([result.pooled.astype(np.float32) for result in results]))

        def one(text: str) -> np.ndarray:
            result = self.encode(
                Call(call.source, time.perf_counter(), futures.Future(), call.cancelled), "text", text.encode(), "text/plain", pooled_only=True
            )
            return result.pooled.astype(np.float32)

        if self.line_pool is not None and len(texts) > 1:
            vectors = list(self.line_pool.map(telemetry.in_context(otel_context.get_current(), one), texts))
        else:
            vectors = [one(text) for text in texts]
        return torch.from_numpy(np.stack(vectors))

    # -- waiting ---------------------------------------------------------------------
    @property
    def pending(self) -> list[Call]:
        """Calls whose result is not in yet: not harvested, whether or not the future has
        finished (one that finishes after a harvest looked at it is still waited for and
        harvested, never dropped)."""
        return [c for c in self.calls.values() if not c.harvested]

    def wait_any(self) -> bool:
        """Wait until a pending call finishes; False when the deadline passed first."""
        pending = [c.future for c in self.pending]
        if not pending:
            return True
        done, _ = futures.wait(pending, timeout=self.deadline.remaining(), return_when=futures.FIRST_COMPLETED)
        return bool(done)

    def harvest(self) -> None:
        """Move finished calls' results into features and states."""
        for source, call in list(self.calls.items()):
            if not call.future.done() or call.harvested:
                continue
            call.harvested = True
            modality = modality_of(source)
            latency = (time.perf_counter() - call.started) * 1000.0
            try:
                produced = call.future.result()
            except (futures.CancelledError, grpc.FutureCancelledError):  # the work, or its RPC, was cancelled
                continue
            except NotApplicable as exc:
                self._not_applicable(modality, exc.reason, latency)
                continue
            except grpc.RpcError as exc:
                self._failed(source, modality, exc.code(), exc.details(), latency, errors.field_violations(exc))
                continue
            except errors.ServiceError as exc:
                self._failed(source, modality, exc.code, exc.message, latency, exc.violations)
                continue
            wrong = {s: int(t.shape[-1]) for s, t in produced.features.items() if s in self.widths and t.shape[-1] != self.widths[s]}
            if wrong:  # an encoder running another model than the weights were trained with
                s, width = next(iter(wrong.items()))
                self._failed(
                    source,
                    modality,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"{s} features are {width} wide, the task's weights expect {self.widths[s]}: the {modality} "
                    f"service runs another model than the one they were trained with",
                    latency,
                )
                continue
            broken = next((s for s, t in produced.features.items() if not torch.isfinite(t).all()), None)
            if broken is not None:  # never let NaN or infinity reach the fusion model and the answer
                self._failed(source, modality, grpc.StatusCode.INTERNAL, f"the {modality} service sent {broken} features with NaN or infinite values", latency)
                continue
            if source in MODALITIES and source in produced.features:  # is it the kind of input the task was trained on?
                verdict = self.judge(source, produced.features[source], {}, produced.features.get(SIDE_SOURCE.get(source, "")))
                self.states[modality].applicability, self.states[modality].reason = verdict.score, verdict.note
                if verdict.reason:
                    self._not_applicable(modality, verdict.reason, latency)
                    continue
            self.merge(modality, produced)
            if source in MODALITIES:
                state = self.states[modality]
                state.status, state.latency_ms = router_pb2.MODALITY_STATUS_USED, latency
                state.reason = "; ".join(part for part in (state.reason, produced.read_note) if part)
            elif not produced.features and source not in produced.notes:
                self.side_notes[source] = "found nothing"
                self.features.pop(source, None)  # read again and found nothing: no text from an earlier reading either

    def merge(self, modality: str, produced: Produced) -> None:
        if "screen_lines" in produced.evidence:  # screen text read (again): what was worked out from a reading before goes
            self.features.pop(SIDE_SOURCE["image"], None)
            self.status_index = self.status_chance = self.line_log_odds = None
            self.status_unstated = ""
        self.features.update(produced.features)
        self.side_notes.update(produced.notes)
        for name, value in produced.evidence.items():
            if name == "image_tags":
                self.evidence.image_tags.update(value)
            else:
                setattr(self.evidence, name, value)
        if produced.screen_text_note:
            self.screen_text_note = produced.screen_text_note
        if produced.streamed is not None:
            self.streamed[modality] = produced.streamed

    def _not_applicable(self, modality: str, reason: str, latency: float) -> None:
        state = self.states[modality]
        state.status, state.reason, state.latency_ms = router_pb2.MODALITY_STATUS_NOT_APPLICABLE, reason, latency

    def _failed(self, source: str, modality: str, code: grpc.StatusCode, details: str, latency: float, violations: Sequence[tuple[str, str]] = ()) -> None:
        timed_out = code == grpc.StatusCode.DEADLINE_EXCEEDED
        details = _callers_words(modality, code, details)
        if violations:  # in the fields of the caller's request: "audio.media_type", not the encoder's "header.media_type"
            details = "; ".join(f"{_request_field(modality, where)}: {what}" for where, what in violations)
        if source not in MODALITIES:  # a side output failed: the modality itself still counts
            self.side_notes[source] = f"{'timed out' if timed_out else 'failed'}: {code.name}: {details}"
            return
        state = self.states[modality]
        state.status = router_pb2.MODALITY_STATUS_TIMED_OUT if timed_out else router_pb2.MODALITY_STATUS_FAILED
        state.error_code, state.reason, state.latency_ms = code.name, details, latency
        state.violations = list(violations)

    def stop_pending(self, status: router_pb2.ModalityStatus, reason: str) -> None:
        for call in self.pending:
            call.cancel()
            call.harvested = True  # the answer is given without it, even if it arrives now
            if call.source in MODALITIES:
                state = self.states[call.source]
                state.status, state.reason = status, reason
                state.latency_ms = (time.perf_counter() - call.started) * 1000.0
            else:
                self.side_notes[call.source] = reason

    def cancel_all(self) -> None:
        for call in self.calls.values():
            call.cancel()


@dataclass
class Decision:
    answer: Answer
    outputs: FusionOutputs
    outstanding_weight: float
    dissent: tuple[str, ...] = ()  # inputs that, read alone, disagree with the answer (tasks.decide)


class Pipeline:
    def __init__(
        self,
        tasks: Mapping[str, TaskModel],
        encoders: Encoders,
        run_model: Callable,
        default_deadline_s: float,
        max_input_bytes: int,
        speech_budget_s: float = 3.0,
        run_beside: Callable[[Callable[[], Any]], Callable[[], Any]] | None = None,
    ) -> None:
        self.tasks = tasks
        # Starts model work on the router's second model thread and returns a function that
        # waits for it: a decision reads the modalities alone there while the whole input is
        # fused on the first (tasks.decide); None: all on the model thread.
        self.run_beside = run_beside
        self.speech_budget_s = speech_budget_s  # the spoken reply is waited for at most this long
        self.encoders = encoders
        self.run_model = run_model  # runs a callable on the router's model thread
        self.default_deadline_s = default_deadline_s
        self.max_input_bytes = max_input_bytes
        self.finish_s: collections.deque[float] = collections.deque(maxlen=FINISH_WINDOW)  # gathering's end -> answer
        self.pool = futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="router-fanout")
        self.line_pool = futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="router-lines")
        self.speculation = Speculation()  # which eager side outputs to start with their base features

    # ------------------------------------------------------------------ the request
    def analyze(
        self,
        request: router_pb2.AnalyzeRequest,
        grpc_remaining: float | None,
        on_event: Callable[[router_pb2.AnalyzeEvent], None] | None = None,
        on_run: Callable[[Run], None] | None = None,
        audio_stream: Iterator[bytes] | None = None,
    ) -> router_pb2.AnalyzeResponse:
        """`audio_stream`: the audio's bytes as they arrive (AnalyzeStream); they are
        passed on to the audio encoder at once instead of being collected first."""
        with self.speculation.call():
            return self._analyze(request, grpc_remaining, on_event, on_run, audio_stream)

    def _analyze(self, request, grpc_remaining, on_event, on_run, audio_stream) -> router_pb2.AnalyzeResponse:
        started = time.perf_counter()
        timings: dict[str, float] = {}
        task, media = self.validate(request, audio_streamed=audio_stream is not None)
        if audio_stream is not None:
            media["audio"] = (Tee(audio_stream), *media["audio"][1:])
        deadline = Deadline.within(self._budget(request, grpc_remaining))
        timings["validate"] = _ms(started)

        run = Run(self.encoders, self.pool, deadline, self.line_pool, task.model.config.input_widths, task.model.config.text_model)
        run.explain = request.options.explain
        run.judge = lambda modality, features, tags, screen_text: not_applicable(task, modality, features, tags, screen_text)
        if on_run is not None:
            on_run(run)  # lets the caller cancel everything if the client goes away
        full = request.options.mode == router_pb2.ROUTING_MODE_FULL
        # Waited for even when routing would skip them: what the caller requires, and what the task
        # cannot answer without (an answer without it would be withheld).
        required = {ENUM_MODALITY[m] for m in request.options.require} | set(task.spec.needs)
        # Side outputs asked for with the base features: all of them in FULL mode; in ROUTED
        # mode those the task's routing marks eager, unless a busy router has seen them go
        # unused in most recent answers (routing.Speculation).
        side_now = {m for m in task.spec.side_outputs if full or (m in task.spec.eager and self.speculation.eager(task.spec.name, m))}
        # In ROUTED mode the screen text is read quickly first where the task's routing says so
        # (and the vision service is not known not to offer it: a refusal falls back to the full
        # reading), again at the full size only if the answer needs it.
        run.quick = {m for m in task.spec.quick if not full and m in side_now and m in media and self.encoders.may_offer(m, QUICK_OPTION[m])}
        with telemetry.tracer().start_as_current_span("router.encode"):
            # What the task asks the encoders for besides features: the CT task, the lung-lesion measurement.
            asked = {"image": ["lesions"]} if task.spec.measure is not None else {}
            self.fan_out(run, media, side_now, asked)
            early = self.gather(run, task, media, full, required, side_now)
        if not full:
            for modality in set(task.spec.side_outputs) & set(media):
                self.speculation.record(task.spec.name, modality, SIDE_SOURCE[modality] in run.features)
        timings["encode"] = _ms(started) - timings["validate"]

        fuse_started = time.perf_counter()
        with telemetry.tracer().start_as_current_span("router.fuse"):
            # An early answer was fused from what is final already; else fuse everything gathered
            # (nothing, when no input was one the task reads: the answer is then withheld).
            decision = early or (self.decide(task, run, outstanding=()) if run.features else None)
        timings["fuse"] = _ms(fuse_started)
        if on_event is not None:
            on_event(router_pb2.AnalyzeEvent(gate=router_pb2.GateDecision(modalities=self.modality_reports(run, decision))))

        heads_started = time.perf_counter()
        with telemetry.tracer().start_as_current_span("router.heads"):
            response = self.respond(request, task, run, decision)
        timings["heads"] = _ms(heads_started)
        self.finish_s.append(time.perf_counter() - fuse_started)
        self.record_metrics(task, response)
        if on_event is not None:
            on_event(router_pb2.AnalyzeEvent(diagnosis=response))
            on_event(router_pb2.AnalyzeEvent(description=response.description))

        if request.options.speech:
            speech_started = time.perf_counter()
            with telemetry.tracer().start_as_current_span("router.speech"):
                response.speech_wav = self.speak(response, request, deadline, on_event)
            timings["speech"] = _ms(speech_started)
        timings["total"] = _ms(started)
        response.explanation.timings_ms.update(timings)
        return response

    # ------------------------------------------------------------------ validate
    def validate(self, request: router_pb2.AnalyzeRequest, audio_streamed: bool = False) -> tuple[TaskModel, dict[str, tuple]]:
        if request.task not in self.tasks:
            raise errors.invalid_argument("task", why_missing(self.tasks, request.task))
        if len(request.request_id) > MAX_REQUEST_ID_CHARS:  # as the encoders: it is logged and traced
            raise errors.invalid_argument("request_id", f"longer than {MAX_REQUEST_ID_CHARS} characters")
        if request.options.mode not in router_pb2.RoutingMode.values():  # a newer client's value, say
            raise errors.invalid_argument("options.mode", f"{request.options.mode} is not a RoutingMode (ROUTED, FULL)")
        task = self.tasks[request.task]
        for index, wanted in enumerate(request.options.report_formats):
            name = reports.FORMATS.get(wanted, ("", ""))[0]
            if name not in task.spec.reports:
                what = name or f"{wanted} (not a ReportFormat)"
                writes = ", ".join(task.spec.reports) or "no standard report"
                raise errors.invalid_argument(f"options.report_formats[{index}]", f"{task.spec.name} writes {writes}, not {what}")
        media: dict[str, tuple[Any, str, dict]] = {}  # data: bytes, or None / a Tee for audio that streams in
        if request.text:
            if len(request.text.encode("utf-8")) > MAX_TEXT_BYTES:
                raise errors.invalid_argument("text", f"over the limit of {MAX_TEXT_BYTES} bytes")
            if not is_blank(request.text):
                media["text"] = (request.text.encode("utf-8"), "text/plain", {})
        if audio_streamed:
            if not request.audio.media_type:
                raise errors.invalid_argument("audio.media_type", "required when the audio arrives in chunks")
            media["audio"] = (None, request.audio.media_type, dict(request.audio.parameters))
        for modality, field_name in (("image", "image"), ("audio", "audio")):
            item = getattr(request, field_name)
            if modality in media:
                continue
            if not item.data:
                if item.media_type:
                    raise errors.invalid_argument(f"{field_name}.data", "empty, but a media type was given")
                continue
            if len(item.data) > self.max_input_bytes:
                raise errors.invalid_argument(f"{field_name}.data", f"{len(item.data)} bytes is over the limit of {self.max_input_bytes}")
            media_type = item.media_type or sniff(modality, item.data)
            if not media_type:
                raise errors.invalid_argument(f"{field_name}.media_type", "empty, and the bytes match no supported format; set it")
            media[modality] = (bytes(item.data), media_type, dict(item.parameters))
        if not media:
            raise errors.invalid_argument("text", "the request has no inputs: give text, an image or audio")
        if not set(media) & set(task.spec.modalities):
            raise errors.invalid_argument("task", f"{task.spec.name} needs one of {', '.join(task.spec.modalities)}")
        for position, modality in enumerate(request.options.require):
            if modality not in ENUM_MODALITY:
                raise errors.invalid_argument(f"options.require[{position}]", "must be TEXT, IMAGE or AUDIO")
            if ENUM_MODALITY[modality] not in media:
                raise errors.invalid_argument(f"options.require[{position}]", f"{ENUM_MODALITY[modality]} is required but not in the request")
        if request.options.deadline_ms < 0 or request.options.top_k < 0:
            raise errors.invalid_argument("options", "deadline_ms and top_k must not be negative")
        return task, media

    def _budget(self, request: router_pb2.AnalyzeRequest, grpc_remaining: float | None) -> float:
        """How long to gather. Under the caller's gRPC deadline, stop a reply margin before
        it, so the answer from the encoders that did reply is sent in time (a degraded
        answer rather than a bare DEADLINE_EXCEEDED)."""
        if grpc_remaining is not None:
            grpc_remaining -= self.reply_margin(grpc_remaining)
        budgets = [self.default_deadline_s if grpc_remaining is None else max(0.0, grpc_remaining)]
        if request.options.deadline_ms:
            budgets.append(request.options.deadline_ms / 1000.0)
        return min(budgets)

    def reply_margin(self, remaining: float) -> float:
        """How long before the caller's deadline gathering stops (see REPLY_MARGIN_SHARE)."""
        recent = sorted(self.finish_s)
        finishing = 2.0 * recent[int(0.9 * (len(recent) - 1))] if recent else 0.0
        return max(MIN_REPLY_MARGIN_S, min(REPLY_MARGIN_SHARE * remaining, max(MAX_REPLY_MARGIN_S, finishing)))

    # ------------------------------------------------------------------ fan out
    def fan_out(self, run: Run, media, side_now: set[str], asked: dict[str, list[str]] | None = None) -> None:
        """One base call per input; `side_now`: modalities whose side output comes with it;
        `asked`: other options per modality the task asks for (the CT measurement)."""
        for modality, (data, media_type, parameters) in media.items():
            run.states[modality].status = router_pb2.MODALITY_STATUS_UNSPECIFIED  # pending
            work = self._base_work(run, modality, data, media_type, parameters, modality in side_now, (asked or {}).get(modality, []))
            run.start(modality, work)

    def _base_work(self, run: Run, modality: str, data: bytes, media_type: str, parameters: dict, with_side: bool, asked: list[str]):
        option = QUICK_OPTION[modality] if modality in run.quick else SIDE_OPTION.get(modality)

        def work(call: Call) -> Produced:
            options = ([option] if (with_side and option) else []) + asked
            notes, streamed = {}, None
            if with_side and option and isinstance(data, Tee) and not run.encoders.offers(modality, option, run.deadline.remaining()):
                # A stream cannot be sent twice: leave out what the encoder does not offer.
                notes[SIDE_SOURCE[modality]] = f"not offered by the {modality} service"
                options = asked
            if isinstance(data, Tee):  # audio still arriving: stream it on
                result = run.encode_stream(call, modality, data, media_type, options=options, parameters=parameters)
                streamed = data.collected()
            else:
                # The encoder cannot make the side output (OCR or transcripts turned off there;
                # a vision service without the quick reading): the full reading instead of the
                # quick one, else the base features without it and the reason in the answer.
                fallbacks = ([[SIDE_OPTION[modality]] + asked] if option != SIDE_OPTION.get(modality) else []) + [asked]
                while True:
                    try:
                        result = run.encode(call, modality, data, media_type, options=options, parameters=parameters)
                        break
                    except grpc.RpcError as exc:
                        refused = exc.code() == grpc.StatusCode.INVALID_ARGUMENT and (exc.details() or "").startswith("header.options")
                        if not (refused and options != asked):
                            raise
                        notes[SIDE_SOURCE[modality]] = f"failed: {exc.code().name}: {exc.details()}"
                        options = fallbacks.pop(0)
                if options != asked:  # read after all: no failure to report
                    notes.pop(SIDE_SOURCE[modality], None)
            sequence = result.sequence if result.sequence is not None else result.pooled
            text = data.decode("utf-8") if modality == "text" else ""
            cut = read_in_part(text, result.pooled_message) if modality == "text" else ""
            produced = Produced(
                {modality: torch.from_numpy(np.asarray(sequence, dtype=np.float32))},
                {"text": text, "text_read": result.pooled_message.characters_read if cut else 0} if modality == "text" else {},
                notes,
                streamed=streamed,
                read_note=cut,
            )
            if result.side is not None:
                inapplicable = run.judge(modality, None, dict(result.side.tags), None).reason  # TaskSpec.inapplicable: by its tags
                if inapplicable:  # not evidence: nothing of it (its screen text, its transcript) reaches the answer
                    raise NotApplicable(inapplicable)
                if modality == "image":
                    produced = produced.plus(Produced(evidence={"image_tags": dict(result.side.tags)}))
                produced = produced.plus(self._side_features(run, call, modality, result.side))
            return produced

        return work

    def _side_work(self, run: Run, modality: str, data: bytes, media_type: str, parameters: dict):
        option = SIDE_OPTION[modality]

        def work(call: Call) -> Produced:
            result = run.encode(call, modality, data, media_type, options=[option], pooled_only=True, parameters=parameters)
            return self._side_features(run, call, modality, result.side)

        return work

    def _side_features(self, run: Run, call: Call, modality: str, side: encoder_pb2.SideOutputs) -> Produced:
        reading = side_text(modality, side)
        if reading is None:
            return Produced()
        read = Produced(evidence=reading.evidence, notes={reading.source: reading.unused} if reading.unused else {}, screen_text_note=reading.note)
        if not reading.texts:
            return read

        cut: dict[str, str] = {}

        def tokens(text: str) -> torch.Tensor:
            result = run.encode(call, "text", text.encode(), "text/plain")
            if result.pooled_message.truncated:  # a long transcript: its start is what the answer read
                cut[reading.source] = read_in_part(text, result.pooled_message)
            return torch.from_numpy(np.asarray(result.sequence, dtype=np.float32))

        try:
            return read.plus(Produced({reading.source: embed(reading, lambda texts: run.embed_texts(call, texts), tokens)}, notes=cut))
        except grpc.RpcError as exc:  # the text service is down: the input still counts, its text is reported
            return read.plus(Produced(notes={reading.source: _not_embedded(exc)}))

    # ------------------------------------------------------------------ routing loop
    def gather(self, run: Run, task: TaskModel, media, full: bool, required: set[str], side_now: set[str]) -> Decision | None:
        """Harvests encoder answers until everything is in or an answer is sure enough.
        Returns the early decision (on the features it keeps), or None."""
        side_candidates = [m for m in task.spec.side_outputs if m in media and m not in side_now]  # asked for later
        side_requested = not side_candidates
        early, reading_again = None, False  # reading_again: the quick reading did not hold; the answer waits for the full one
        while True:
            if not run.wait_any():
                run.stop_pending(router_pb2.MODALITY_STATUS_TIMED_OUT, "no answer before the deadline")
                break
            run.harvest()
            to_come = outstanding([c.source for c in run.pending], side_now, [] if side_requested else side_candidates)
            if not full and run.features and to_come and not reading_again and not waits_for_required(to_come, required):
                decision = self.decide(task, run, to_come)
                reason = answer_now(decision.answer.confidence, decision.outstanding_weight, task.spec.tau, task.spec.gamma)
                if reason and not self.withheld(task, run, decision):  # an answer it would withhold waits for the rest
                    run.stop_pending(router_pb2.MODALITY_STATUS_SKIPPED, reason)
                    for modality in side_candidates if not side_requested else []:
                        run.side_notes[SIDE_SOURCE[modality]] = f"not requested: {reason}"
                    early = decision
                    break
            if run.pending:
                self.score_screen_lines(task, run)  # while other encoders are still at work
                self.status_row(task, run)
                if full:
                    self.read_alone_ahead(task, run)
                continue
            if run.quick:
                early = self.judge_quick_reading(task, run, media)
                if early is not None:
                    break
                if run.pending:  # the screen read again at the full size
                    reading_again = True
                    continue
            usable = [m for m in side_candidates if run.states[m].status == router_pb2.MODALITY_STATUS_USED]
            if not side_requested and usable:
                side_requested = True
                for modality in usable:
                    data, media_type, parameters = media[modality]
                    data = run.streamed.get(modality, data)
                    run.start(SIDE_SOURCE[modality], self._side_work(run, modality, data, media_type, parameters))
                continue
            break
        if not run.features:
            if any(s.status == router_pb2.MODALITY_STATUS_NOT_APPLICABLE for s in run.states.values()):
                return None  # read, but nothing the task reads: the answer is withheld (Pipeline.respond)
            states = [s for s in run.states.values() if s.status != router_pb2.MODALITY_STATUS_ABSENT]
            if any(s.status == router_pb2.MODALITY_STATUS_TIMED_OUT for s in states):
                raise errors.deadline_exceeded("no encoder answered before the deadline: " + _summary(run))
            if states and all(s.error_code == "INVALID_ARGUMENT" for s in states):
                # Every input was refused as malformed: the caller's to fix, and a retry
                # (which UNAVAILABLE invites) would fail the same way.
                violations = [
                    (_request_field(modality, where), what)
                    for modality, state in run.states.items()
                    if state in states
                    for where, what in state.violations or [("", state.reason)]
                ]
                raise errors.ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(f"{where}: {what}" for where, what in violations), violations)
            raise errors.unavailable("no encoder could encode any input: " + _summary(run))
        return early

    def judge_quick_reading(self, task: TaskModel, run: Run, media) -> Decision | None:
        """Everything else in, the quick reading of each `run.quick` modality is judged
        (routing.quick_reading_holds): the decision when it holds, else None with the side
        output asked for again at the full size."""
        quick, run.quick = run.quick, set()
        source = SIDE_SOURCE["image"]
        if "image" not in quick or run.states["image"].status != router_pb2.MODALITY_STATUS_USED or source in run.side_notes:
            return None  # no image read, or its screen text failed: nothing to judge or read again
        decision = self.decide(task, run, outstanding=())
        rows = run.features.get(source)
        rows = rows[: len(run.evidence.screen_lines)] if rows is not None else None
        given = not self.withheld(task, run, decision)
        if quick_reading_holds(given, task.status_line, rows):
            run.side_notes[source] = "read at the quick detection size: " + (
                "the answer and its status message were sure without the full size"
                if given
                else "its status message was read surely, so the full size would not settle the answer"
            )
            return decision
        data, media_type, parameters = media["image"]
        run.start(source, self._side_work(run, "image", data, media_type, parameters))
        return None

    def decide(self, task: TaskModel, run: Run, outstanding) -> Decision:
        # The screen is read through the task's status-line pointer (tasks.decide, status_line.readings).
        features = dict(run.features)
        tags = dict(run.evidence.image_tags)
        outputs, probabilities, regression, weight, dissent = self.run_model(
            lambda: decide(
                task.model, task.spec, features, tags, outstanding, attention=run.explain, pointer=task.status_line, beside=self.run_beside, kept=run.alone
            )
        )
        best = int(probabilities.argmax())
        answer = Answer(
            label=task.spec.labels[best],
            confidence=float(probabilities[best]),
            predictive_entropy=float(normalised_entropy(probabilities)),
            probabilities={label: float(p) for label, p in zip(task.spec.labels, probabilities)},
            regression={name: float(v) for name, v in zip(task.spec.regression, regression)},
        )
        return Decision(answer, outputs, weight, dissent)

    def status_row(self, task: TaskModel, run: Run) -> int | None:
        """The screen paragraph the task's status-line pointer picks (its status message),
        its probability (run.status_chance) and why it is not stated as one, if it is unlike
        them all or the pointer is unsure of it (run.status_unstated; status_line.unstated),
        worked out once per reading of the screen, as soon as it is in; None without a
        pointer or screen text."""
        rows = run.features.get("image_text")
        pointer, lines = task.status_line, run.evidence.screen_lines
        if pointer is None or rows is None or not lines:
            return None
        if run.status_index is None:

            def pick() -> tuple[int, float, str]:
                read = rows[: len(lines)]
                chances = pointer.probabilities(read)
                index = int(chances.argmax())
                chance = float(chances[index])
                return index, chance, status_line.unstated(pointer, read, index, lines[index], chance)

            run.status_index, run.status_chance, run.status_unstated = self.run_model(pick)
        return run.status_index

    def read_alone_ahead(self, task: TaskModel, run: Run) -> None:
        """While other encoders are still at work (FULL mode, which decides once, at the end):
        read each modality whose inputs are all in alone, on the second model thread, for
        the decision's dissent check (tasks.decide) to find done."""
        if self.run_beside is None:
            return
        busy = {modality_of(call.source) for call in run.pending}
        if not busy:
            return
        features, tags = dict(run.features), dict(run.evidence.image_tags)
        for modality in MODALITIES:
            sources = frozenset(s for s in features if modality_of(s) == modality)
            if not sources or modality in busy or (modality, sources) in run.read_ahead:
                continue
            run.read_ahead.add((modality, sources))
            alone = {s: features[s] for s in sources}

            def read(alone: dict[str, torch.Tensor] = alone) -> list:
                return list(lone_readings(task.model, task.spec, alone, tags, True, task.status_line, run.alone))

            self.run_beside(read)

    def score_screen_lines(self, task: TaskModel, run: Run) -> None:
        """Once the screen text is in, for a task without a status-line pointer: how much each
        OCR paragraph alone favours each label (the answer's `error_text` is the paragraph
        that most favours it; tasks.key_screen_line)."""
        screen_text = run.features.get("image_text")
        if run.line_log_odds is None and task.trained and task.status_line is None and screen_text is not None and run.evidence.screen_lines:
            rows = screen_text[: len(run.evidence.screen_lines)]
            run.line_log_odds = self.run_model(lambda: screen_line_log_odds(task.model, rows))

    # ------------------------------------------------------------------ heads, words, speech
    @staticmethod
    def withheld(task: TaskModel, run: Run, decision: Decision) -> str:
        """Why `decision`'s answer is withheld (tasks.withheld), judged on the modalities read
        so far; '' when it is given."""
        answer = decision.answer
        read = {m for m, state in run.states.items() if state.status == router_pb2.MODALITY_STATUS_USED}
        unfamiliar = frozenset(m for m in read if task.applicability.unfamiliar(m, run.states[m].applicability))
        best = task.spec.labels.index(answer.label)
        return withheld_answer(task, read, run.features, best, answer.confidence, run.evidence.image_tags, decision.dissent, unfamiliar)

    def respond(self, request, task: TaskModel, run: Run, decision: Decision | None) -> router_pb2.AnalyzeResponse:
        """The answer in words, withheld (label "uncertain") where the task's policy says so
        (tasks.withheld): no input it reads, a confidence below its threshold, or a label the
        measurement contradicts. `decision` is None when no input was one the task reads."""
        run.evidence.no_image = _why_unread(run.states["image"])
        run.evidence.estimate_error = dict(task.model.config.measurement_sigma)
        if decision is None:
            answer = Answer(UNCERTAIN, 0.0, 1.0, {}, {})
            reason = "; ".join(
                f"the {m} is not applicable: {state.reason}" for m, state in run.states.items() if state.status == router_pb2.MODALITY_STATUS_NOT_APPLICABLE
            )
            run.evidence.withheld = f"nothing {task.spec.name} reads was given ({reason}); send {task.spec.resolve}"
            description, findings, reply = _nothing_read(task, run.evidence)
            modality_weights = torch.zeros(len(MODALITIES))
        else:
            answer, outputs = decision.answer, decision.outputs
            if task.status_line is not None:
                key = self.status_row(task, run)
                run.evidence.key_line = run.evidence.screen_lines[key] if key is not None else ""
                run.evidence.key_line_chance = run.status_chance if key is not None else None
                if key is not None:  # a pick unlike every status message the pointer learnt, or one it is unsure of, is not stated
                    run.evidence.key_line_unstated = run.status_unstated
                    if run.evidence.key_line_unstated:
                        run.evidence.key_line, run.evidence.key_line_chance = "", None
            else:
                self.score_screen_lines(task, run)
                if run.line_log_odds is not None:
                    key = best_screen_line(run.line_log_odds, task.spec.labels.index(answer.label))
                    run.evidence.key_line = run.evidence.screen_lines[key] if key is not None else ""
            run.evidence.withheld = self.withheld(task, run, decision)
            assert task.spec.write is not None  # every task has a writer
            description, findings, reply = task.spec.write(answer, run.evidence)
            modality_weights = modality_gate_weights(outputs.gate_weights)[0]
        used = int((modality_weights > 0).sum())
        top_k = request.options.top_k or 3
        ranked = sorted(answer.probabilities.items(), key=lambda item: -item[1])[:top_k]
        response = router_pb2.AnalyzeResponse(
            request_id=request.request_id or uuid.uuid4().hex,
            task=task.spec.name,
            label=UNCERTAIN if run.evidence.withheld else answer.label,
            confidence=answer.confidence,
            uncertainty=router_pb2.Uncertainty(
                predictive_entropy=answer.predictive_entropy,
                gate_entropy=float(normalised_entropy(modality_weights[modality_weights > 0], used)) if used else 0.0,
            ),
            top_k=[router_pb2.LabelScore(label=label, probability=p) for label, p in ranked],
            description=description,
            findings=[_finding(k, v) for k, v in {**findings, "reply": reply}.items()],
            model_version=task.version,
            abstained=bool(run.evidence.withheld),
            abstain_reason=run.evidence.withheld + _unread_part(run.evidence),
            task_version=task.repository_version,
        )
        response.explanation.model_version = task.version
        for wanted in request.options.report_formats:  # standard formats beside the text (router/reports.py)
            name, media_type = reports.FORMATS[wanted]
            try:
                content = reports.build(name, response, run.evidence, request.image.data)
            except ValueError as exc:  # the answer stands; the report says why it is missing
                response.findings.add(key="report_error", value=f"{name}: {exc}")
                continue
            response.reports.add(format=wanted, media_type=media_type, content=content)
        response.explanation.modalities.extend(self.modality_reports(run, decision))
        if request.options.explain:
            response.explanation.screen_text.extend(_screen_text(run.evidence))
            response.explanation.lesions.extend(_lesions(run.evidence))
        if request.options.image_preview and run.states["image"].status == router_pb2.MODALITY_STATUS_USED:
            preview = _image_preview(request.image)
            if preview is not None:
                response.explanation.image_preview.CopyFrom(preview)
        if request.options.explain and decision is not None:
            mass = attention_mass(decision.outputs)
            for a, query in enumerate(MODALITIES):
                if modality_weights[a] == 0:
                    continue
                for b, keyed in enumerate(MODALITIES):
                    if modality_weights[b] > 0:
                        response.explanation.attention.add(query_modality=MODALITY_ENUM[query], key_modality=MODALITY_ENUM[keyed], mass=float(mass[a, b]))
        return response

    @staticmethod
    def record_metrics(task: TaskModel, response: router_pb2.AnalyzeResponse) -> None:
        name = task.spec.name
        telemetry.OUTPUT_ENTROPY.labels(name).observe(response.uncertainty.predictive_entropy)
        for report in response.explanation.modalities:
            modality = ENUM_MODALITY[report.modality]
            status = router_pb2.ModalityStatus.Name(report.status).removeprefix("MODALITY_STATUS_").lower()
            telemetry.MODALITY_OUTCOMES.labels(name, modality, status).inc()
            if report.status == router_pb2.MODALITY_STATUS_USED:
                telemetry.GATE_WEIGHT.labels(name, modality).observe(report.gate_weight)

    def modality_reports(self, run: Run, decision: Decision | None) -> list[router_pb2.ModalityReport]:
        """What became of each modality, with its gate weight in `decision` (none without one)."""
        weights = modality_gate_weights(decision.outputs.gate_weights)[0] if decision is not None else torch.zeros(len(MODALITIES))
        reports = []
        for modality in MODALITIES:
            state = run.states[modality]
            status = state.status or router_pb2.MODALITY_STATUS_USED
            reason = state.reason
            side = SIDE_SOURCE.get(modality)
            used = status == router_pb2.MODALITY_STATUS_USED
            side_reason = ""
            if side in run.side_notes and used:
                side_reason = f"{'OCR' if modality == 'image' else 'transcript'} {run.side_notes[side]}"
            elif side in run.features:
                side_reason = f"with {'OCR text' if modality == 'image' else 'transcript'}"
                if modality == "image" and run.screen_text_note:
                    side_reason += f" ({run.screen_text_note})"
            elif modality == "image" and run.screen_text_note and used:
                side_reason = f"without OCR text ({run.screen_text_note})"
            if side_reason:  # a used modality's own reason (tasks.Applicable.note) comes first
                reason = f"{reason}; {side_reason}" if used and reason else side_reason
            reports.append(
                router_pb2.ModalityReport(
                    modality=MODALITY_ENUM[modality],
                    status=status,
                    reason=reason,
                    error_code=state.error_code,
                    latency_ms=state.latency_ms,
                    gate_weight=float(weights[MODALITIES.index(modality)]),
                    applicability=state.applicability,
                )
            )
        return reports

    def speak(self, response, request, deadline: Deadline, on_event) -> bytes:
        reply = next((f.value for f in response.findings if f.key == "reply"), response.description)
        synthesize = speech_pb2.SynthesizeRequest(text=reply[:2000], voice=request.options.voice, format=speech_pb2.AUDIO_FORMAT_WAV, sample_rate_hz=16000)
        try:
            chunks = []
            timeout = max(0.001, min(deadline.remaining(), self.speech_budget_s))  # a hung speech service costs the budget only
            for chunk in self.encoders.speech.Synthesize(synthesize, timeout=timeout):
                chunks.append(chunk.data)
                if on_event is not None:
                    on_event(router_pb2.AnalyzeEvent(speech_chunk=chunk.data))
            return b"".join(chunks)
        except grpc.RpcError as exc:
            response.findings.add(key="speech_error", value=f"{exc.code().name}: {exc.details()}")
            return b""


def _screen_text(evidence: Evidence) -> list[router_pb2.ScreenText]:
    """What OCR read on the image, each line marked if it is part of the status message."""
    status = " ".join(evidence.key_line.split())
    return [
        router_pb2.ScreenText(
            text=text,
            confidence=confidence,
            box=box,
            status_line=bool(status) and " ".join(text.split()) in status,
            unreadable=0 < confidence < MIN_SPAN_CONFIDENCE,
        )
        for text, confidence, box in evidence.screen_spans
    ]


def _lesions(evidence: Evidence) -> list[router_pb2.MeasuredLesion]:
    """The lesions measured on the slice, with their outlines, where the image was read."""
    if evidence.no_image:
        return []
    measured = parse_lesion_tags(evidence.image_tags) or []
    boxes = lesion_boxes(evidence.image_tags)
    return [router_pb2.MeasuredLesion(diameter_mm=diameter, side=side, box=boxes[i] if i < len(boxes) else ()) for i, (diameter, side) in enumerate(measured)]


PREVIEW_SIDE = 1024  # the longest side of an image preview, in pixels


def _image_preview(image: router_pb2.MediaInput) -> router_pb2.ImagePreview | None:
    """A DICOM image as the vision service reads it (the same decoder, its window applied),
    as PNG for display; None for other formats (a browser draws those itself). The vision
    service has already read the same bytes within its limits."""
    import io

    from PIL import Image

    from modalmesh.vision.decode import decode_image

    if (image.media_type or sniff_image(image.data)) != "application/dicom":
        return None
    try:
        decoded = decode_image(image.data, "application/dicom", dict(image.parameters), 4 * PREVIEW_SIDE * PREVIEW_SIDE)
    except Exception as exc:  # the answer stands without its picture, whatever the decoder says
        log.info("no image preview: %s", exc)
        return None
    picture = Image.fromarray(decoded.rgb)
    width, height = picture.size
    picture.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    png = io.BytesIO()
    picture.save(png, "PNG", optimize=False)
    return router_pb2.ImagePreview(png=png.getvalue(), width=width, height=height)


def _finding(key: str, value: str) -> router_pb2.Finding:
    """A finding with its value typed where it is a number (Finding.number, Finding.unit)."""
    number, unit = reports.typed(key, value)
    finding = router_pb2.Finding(key=key, value=value, unit=unit)
    if number is not None:
        finding.number = number
    return finding


def _why_unread(state: ModalityState) -> str:
    """Why a modality's input is not in the answer, in words for a report; '' if it is."""
    if state.status == router_pb2.MODALITY_STATUS_USED:
        return ""
    if state.status == router_pb2.MODALITY_STATUS_ABSENT:
        return "none was sent"
    what = {
        router_pb2.MODALITY_STATUS_SKIPPED: "not waited for",
        router_pb2.MODALITY_STATUS_TIMED_OUT: "timed out",
        router_pb2.MODALITY_STATUS_FAILED: "refused" if state.error_code == "INVALID_ARGUMENT" else "failed",
        router_pb2.MODALITY_STATUS_NOT_APPLICABLE: "not applicable",
    }
    said = what.get(state.status, "not read")
    reason = "; ".join(description for _, description in state.violations) or state.reason
    return f"{said}: {reason}" if reason else said


def _callers_words(modality: str, code: grpc.StatusCode, details: str) -> str:
    """An encoder failure as the router's caller should read it: grpc's connection errors
    name internal addresses and sockets; the caller learns which service, the log the rest."""
    if code == grpc.StatusCode.UNAVAILABLE and ("connect" in (details or "").lower() or "backends" in (details or "")):
        log.info("%s encoder unreachable: %s", modality, details)
        service = {"image": "vision", "audio": "audio", "text": "text"}[modality]
        return f"the {service} service cannot be reached"
    return details


def _not_embedded(exc: grpc.RpcError) -> str:
    """The side note for text that was read but could not be embedded (a cancelled call is not
    a failure: it is re-raised, and the harvest drops it)."""
    if exc.code() == grpc.StatusCode.CANCELLED:
        raise exc
    return f"read but not used: the text service failed ({exc.code().name}: {_callers_words('text', exc.code(), exc.details())})"


def _nothing_read(task: TaskModel, evidence: Evidence) -> tuple[str, dict[str, str], str]:
    """The answer when no input was one the task reads: what was sent, why it was not read."""
    description = f"Not answered: {evidence.withheld}."
    reply = "We could not read what was sent. Could you send " + task.spec.resolve + "?"
    return description, {"not_answered": evidence.withheld}, reply


def _unread_part(evidence: Evidence) -> str:
    """For a withheld answer about a message the text model read only the start of: that
    the rest was not read (a problem stated there could not count)."""
    if not (evidence.withheld and evidence.text_read):
        return ""
    return f"; the message was read only in part (its first {evidence.text_read:,} of {len(evidence.text):,} characters): what it says after that was not read"


def read_in_part(text: str, pooled: encoder_pb2.PooledFeatures) -> str:
    """'' where the text service read all of `text`; else how much of it was read."""
    if not pooled.truncated:
        return ""
    read = pooled.characters_read
    part = f"its first {read:,} of {len(text):,} characters" if 0 < read < len(text) else "its start"
    return f"read in part: the text model reads at most {pooled.sequence_length} tokens, {part}; the rest was not read"


def _request_field(modality: str, encoder_field: str) -> str:
    """An encoder's field path as the router's request field: ('image', 'header.parameters.pixel_spacing')
    -> 'image.parameters.pixel_spacing', ('audio', 'payload') -> 'audio.data'."""
    where = encoder_field.removeprefix("header.")
    where = "data" if where in ("payload", "") else where
    return modality if modality == "text" else f"{modality}.{where}"


def _summary(run: Run) -> str:
    parts = []
    for modality, state in run.states.items():
        if state.status not in (router_pb2.MODALITY_STATUS_ABSENT, router_pb2.MODALITY_STATUS_USED):
            parts.append(f"{modality} {router_pb2.ModalityStatus.Name(state.status)} {state.error_code} {state.reason}".strip())
    return "; ".join(parts) or "no details"


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000.0
