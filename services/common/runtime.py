"""The service runtime: every ModalMesh server is this plus one `Service`.

A service fills in three moments (Triton's backend lifecycle):

    initialize()        load and warm the model (the server is already answering
                        health checks with NOT_SERVING meanwhile)
    register(server)    add its servicers; return their full service names
    finalize()          release what it holds, after in-flight calls have drained

The runtime owns the rest: the gRPC server (sync API: for 1 MiB messages it measured
2-3x faster than grpc.aio here, and equal for small ones), message size limits,
keepalive, TLS/mTLS, the bearer token, health (NOT_SERVING -> SERVING -> NOT_SERVING
while draining), reflection, tracing, Prometheus metrics, error mapping, and graceful
shutdown on SIGTERM/SIGINT.
"""

from __future__ import annotations

import abc
import contextlib
import gc
import json
import logging
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from modalmesh.common import errors, security, telemetry
from modalmesh.common.admission import Admission, arriving
from modalmesh.common.config import ServiceConfig
from modalmesh.common.probe import ProbeProcess

log = logging.getLogger(__name__)

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
REFLECTION_SERVICE = reflection.SERVICE_NAME
# Reachable without a token and while the model loads: probes and discovery.
_ALWAYS_OPEN = {HEALTH_SERVICE}
_OPEN_WHILE_LOADING = {HEALTH_SERVICE, REFLECTION_SERVICE}


class Service(abc.ABC):
    """What a service provides to the runtime."""

    #: short name used in logs, metrics and config ("text", "vision", ...)
    name: str = "service"
    #: whether the service runs torch (the runtime then sets torch's threads before it loads)
    uses_torch: bool = True

    @abc.abstractmethod
    def initialize(self) -> None:
        """Load and warm the model. Runs after the server starts, before SERVING."""

    @abc.abstractmethod
    def register(self, server: grpc.Server) -> list[str]:
        """Add servicers to `server`; return the full names of the services added."""

    def finalize(self) -> None:
        """Release resources. Runs once, after the server has drained."""

    def bound(self, address: str) -> None:
        """The address the gRPC server listens on, once it does (before initialize)."""


def grpc_options(max_message_bytes: int) -> list[tuple[str, object]]:
    """Channel/server options shared by servers and clients."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Keep idle connections alive through proxies and detect dead peers.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]


# grpc turns SO_REUSEPORT on by default: a second server on a port in use then shares it
# silently (each takes some of the connections) instead of failing to start.
SERVER_ONLY_OPTIONS = [("grpc.so_reuseport", 0)]


def connection_age_options(max_age_s: float) -> list[tuple[str, int]]:
    """Close each client connection after `max_age_s` (in-flight calls get a grace period
    to finish). A client resolves a dns:/// name again only when a connection closes, so
    without this the router kept calling the pods it found at start-up and never the ones
    an autoscaler added. 0: connections live for ever."""
    if max_age_s <= 0:
        return []
    age_ms = int(max_age_s * 1000)
    return [("grpc.max_connection_age_ms", age_ms), ("grpc.max_connection_age_grace_ms", max(age_ms, 30_000))]


REFUSAL_LOG_S = 10.0  # _Refusals: at most one log line per this many seconds


def _method_parts(full_method: str) -> tuple[str, str]:
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method


@dataclass
class _State:
    ready: threading.Event = field(default_factory=threading.Event)
    draining: threading.Event = field(default_factory=threading.Event)


class RuntimeInterceptor(grpc.ServerInterceptor):
    """Per call: readiness, token, trace span, metrics, and error -> status mapping."""

    def __init__(self, service_name: str, state: _State, auth_token: str = "", admission: Admission | None = None, stream_idle_s: float = 30.0) -> None:
        self._service_name = service_name
        self._state = state
        self._auth_token = auth_token
        self._admission = admission
        self._stream_idle_s = stream_idle_s
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}
        self._refusals = _Refusals()

    def intercept_service(self, continuation, handler_call_details):
        # One wrapped handler per method, built on its first call: the registered handler
        # and what the guard holds (names, metric labels) are the same for every call.
        wrapped = self._wrapped.get(handler_call_details.method)
        if wrapped is None:
            wrapped = self._wrap(continuation(handler_call_details), handler_call_details.method)
            if wrapped is not None:
                self._wrapped[handler_call_details.method] = wrapped
        return wrapped

    def _wrap(self, handler, full_method: str):
        if handler is None:
            return None
        service, method = _method_parts(full_method)
        # Requests arrive as bytes and are parsed inside the guard: grpc's own parsing answers
        # a malformed message (or a string field that is not UTF-8) INTERNAL, uncounted.
        guard = _CallGuard(self, full_method, service, method, handler.request_deserializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(guard.wrap_unary(handler.unary_unary), None, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(guard.wrap_unary(handler.stream_unary, streamed=True), None, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(guard.wrap_stream(handler.unary_stream), None, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(guard.wrap_stream(handler.stream_stream, streamed=True), None, handler.response_serializer)


class _Refusals:
    """RESOURCE_EXHAUSTED refusals, logged at most once per REFUSAL_LOG_S with how many
    there were since: under overload they come by the hundred a second, and a log line
    each would take the CPU the admitted calls need."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since, self._count = 0.0, 0

    def note(self, method: str, exc: errors.ServiceError) -> None:
        with self._lock:
            self._count += 1
            now = time.monotonic()
            if now - self._since < REFUSAL_LOG_S:
                return
            count, self._since, self._count = self._count, now, 0
        log.info("%s: %s (%d refused since the last such line)", method, exc, count)


class _CallGuard:
    def __init__(
        self, interceptor: RuntimeInterceptor, full_method: str, service: str, method: str, deserializer: Callable[[bytes], Any] | None = None
    ) -> None:
        self.interceptor = interceptor
        self.full_method = full_method
        self.service = service
        self.method = method
        self.deserializer = deserializer
        labels = (interceptor._service_name, method)
        self.in_flight = telemetry.RPC_IN_FLIGHT.labels(*labels)

    def _admit(self, context: grpc.ServicerContext) -> None:
        state = self.interceptor._state
        if self.service not in _OPEN_WHILE_LOADING:
            if state.draining.is_set():
                raise errors.unavailable("server is shutting down; retry on another replica")
            if not state.ready.is_set():
                raise errors.unavailable("model is still loading; retry shortly")
        token = self.interceptor._auth_token
        if token and self.service not in _ALWAYS_OPEN:
            if not security.token_matches(token, security.bearer_token(context.invocation_metadata())):
                raise errors.unauthenticated("missing or wrong bearer token (metadata 'authorization: Bearer <token>')")

    def _finish(self, context: grpc.ServicerContext, started: float, code: grpc.StatusCode, span) -> None:
        if code == grpc.StatusCode.OK and not context.is_active():
            code = grpc.StatusCode.CANCELLED
        labels = (self.interceptor._service_name, self.method, code.name)
        telemetry.RPC_LATENCY.labels(*labels).observe(time.perf_counter() - started)
        if code != grpc.StatusCode.OK:
            telemetry.RPC_ERRORS.labels(*labels).inc()
            span.set_attribute("rpc.grpc.status_code", code.value[0])
        span.end()
        self.in_flight.dec()

    def _start(self, context: grpc.ServicerContext):
        self.in_flight.inc()
        parent = telemetry.extract_context(context.invocation_metadata())
        span = telemetry.tracer().start_span(
            self.full_method.lstrip("/"),
            context=parent,
            kind=telemetry.trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": self.service, "rpc.method": self.method},
        )
        return span, time.perf_counter()

    def _fail(self, context: grpc.ServicerContext, exc: BaseException, span) -> grpc.StatusCode:
        """Abort the call for `exc`; returns the code. context.abort raises. A ServiceError is
        an answer in the caller's terms (its code goes on the span, no traceback); anything
        else is ours, recorded on the span with its traceback and logged."""
        if isinstance(exc, errors.ServiceError):
            if exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                self.interceptor._refusals.note(self.full_method, exc)
            elif exc.code != grpc.StatusCode.INVALID_ARGUMENT:
                log.info("%s: %s", self.full_method, exc)
            context.abort_with_status(exc.to_status())
        span.record_exception(exc)
        # The detail stays in the log, found by the trace id; the caller learns only that it is ours.
        trace_id = f"{span.get_span_context().trace_id:032x}"
        log.exception("%s: unexpected failure (trace %s)", self.full_method, trace_id)
        context.abort(
            grpc.StatusCode.INTERNAL, f"internal error in the {self.interceptor._service_name} service (trace {trace_id}); the service log has the details"
        )

    @contextlib.contextmanager
    def _guarded(self, context: grpc.ServicerContext, message_bytes: int = 0):
        """Around one call: admit, trace, map errors to statuses, record metrics."""
        span, started = self._start(context)
        code = grpc.StatusCode.OK
        admission = self.interceptor._admission
        try:
            with telemetry.trace.use_span(span, end_on_exit=False, record_exception=False), contextlib.ExitStack() as held:
                self._admit(context)
                if admission is not None and self.service not in _OPEN_WHILE_LOADING:  # probes never wait
                    held.enter_context(admission.slot(context, message_bytes))
                yield
        except Exception as exc:
            code = _code_of(exc, context)
            if code is not None:  # the handler already aborted
                raise
            if not context.is_active():  # the caller cancelled or ran out of time: nobody hears an error
                code = grpc.StatusCode.DEADLINE_EXCEEDED if _time_left(context) <= 0 else grpc.StatusCode.CANCELLED
                context.abort(code, "the caller went away")
            code = exc.code if isinstance(exc, errors.ServiceError) else grpc.StatusCode.INTERNAL
            self._fail(context, exc, span)
        finally:
            self._finish(context, started, code or grpc.StatusCode.UNKNOWN, span)

    def _requests(self, request, streamed: bool):
        if not streamed:
            return self._parse(request, "request")
        messages = arriving(request, self.interceptor._stream_idle_s, f"{self.method} request stream")
        return (self._parse(message, f"messages[{position}]") for position, message in enumerate(messages))

    def _parse(self, raw: bytes, where: str):
        if self.deserializer is None:
            return raw
        try:
            return self.deserializer(raw)
        except DecodeError:
            raise errors.invalid_argument(where, "not a valid protobuf message for this method (a string field that is not UTF-8 makes it one)") from None

    def wrap_unary(self, behavior: Callable, streamed: bool = False):
        def handle(request, context):
            with self._guarded(context, 0 if streamed else len(request)):
                return behavior(self._requests(request, streamed), context)

        return handle

    def wrap_stream(self, behavior: Callable, streamed: bool = False):
        def handle(request, context):
            with self._guarded(context, 0 if streamed else len(request)):
                yield from behavior(self._requests(request, streamed), context)

        return handle


def _time_left(context: grpc.ServicerContext) -> float:
    remaining = context.time_remaining()
    return float("inf") if remaining is None else remaining


def _code_of(exc: BaseException, context: grpc.ServicerContext) -> grpc.StatusCode | None:
    """The code already set on `context` (by an abort), or None."""
    try:
        code = context.code()
    except Exception:  # older grpc: no accessor
        return None
    if code is None:
        return None
    return code if isinstance(code, grpc.StatusCode) else None


class ServerHandle:
    """A running server: its address, health, and a way to stop it."""

    def __init__(
        self,
        config: ServiceConfig,
        service: Service,
        server: grpc.Server,
        port: int,
        health_servicer: health.HealthServicer,
        service_names: list[str],
        state: _State,
    ) -> None:
        self.config = config
        self.service = service
        self.server = server
        self.port = port
        self.health = health_servicer
        self.service_names = service_names
        self._state = state
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self.metrics_port = 0
        self.probe: ProbeProcess | None = None  # the health-only port's process
        self.admission: Admission | None = None

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self.service_names]:
            self.health.set(name, status)
        if self.probe is not None:
            self.probe.set_serving(serving)

    def initialize(self) -> None:
        """Load and warm the model, then report SERVING."""
        started = time.perf_counter()
        self.service.initialize()
        # What initialize() loaded (modules, models) lives as long as the server: frozen out
        # of the cyclic collector's view, a full collection does not walk it. Unfrozen, one
        # takes about 90 ms in the router, holding the GIL while calls and health checks wait.
        gc.collect()
        gc.freeze()
        unmapped = unmap_gpu_library_pages()
        if unmapped:
            log.info("%s: %d MiB of GPU library pages unmapped (nothing runs on a GPU)", self.service.name, unmapped // 1024)
        self._state.ready.set()
        self.set_serving(True)
        log.info("%s: ready in %.1f s, serving on %s", self.service.name, time.perf_counter() - started, self.address)

    def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new calls, let in-flight ones finish, then finalize."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            grace = self.config.grace_seconds if grace is None else grace
            log.info("%s: draining (grace %.1f s)", self.service.name, grace)
            self._state.draining.set()
            self.set_serving(False)
            self.server.stop(grace).wait()
            if self.probe is not None:
                self.probe.stop()
            try:
                self.service.finalize()
            finally:
                gc.unfreeze()  # what the server held can be collected again
                self._stopped.set()
                log.info("%s: stopped", self.service.name)

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)


def start_server(config: ServiceConfig, service: Service, *, initialize: bool = True) -> ServerHandle:
    """Start `service` on config.address. With initialize=False, call handle.initialize()."""
    if service.uses_torch:
        _configure_torch(config.torch_threads)
    limit_malloc_arenas()
    telemetry.setup_tracing(service.name, config.trace_exporter, config.otlp_endpoint)
    state = _State()
    admission = Admission(service.name, config.worker_threads, config.max_waiting_calls, config.max_bytes_in_flight, config.cold_start_calls)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=admission.threads, thread_name_prefix=f"{service.name}-rpc"),
        interceptors=[RuntimeInterceptor(service.name, state, config.auth_token, admission, config.stream_idle_s)],
        options=[*grpc_options(config.max_message_bytes), *SERVER_ONLY_OPTIONS, *connection_age_options(config.max_connection_age_s)],
    )
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = service.register(server)
    reflection.enable_server_reflection([*names, HEALTH_SERVICE, REFLECTION_SERVICE], server)
    try:
        if config.tls_enabled:
            credentials = security.server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
            port = server.add_secure_port(config.address, credentials)
        else:
            port = server.add_insecure_port(config.address)
    except RuntimeError:  # newer grpcio raises where older ones return 0
        port = 0
    if port == 0:
        raise OSError(f"{service.name}: cannot listen on {config.address} (port in use?)")
    handle = ServerHandle(config, service, server, port, health_servicer, names, state)
    handle.admission = admission
    service.bound(handle.address)
    handle.set_serving(False)
    server.start()
    if config.health_port > 0:  # kubelet probes: plaintext, answered by a process of its own (common/probe.py)
        try:
            handle.probe = ProbeProcess(service.name, config.host, config.health_port, names)
        except OSError as exc:
            server.stop(0)
            raise OSError(f"{service.name}: cannot listen on health port {config.health_port} ({exc})") from None
    if config.metrics_port > 0:
        try:
            handle.metrics_port = telemetry.start_metrics_server(config.host, config.metrics_port)
        except OSError as exc:
            server.stop(0)
            if handle.probe is not None:
                handle.probe.stop()
            raise OSError(
                f"{service.name}: cannot serve metrics on {config.host}:{config.metrics_port} ({exc.strerror}; --metrics-port picks another, 0 turns them off)"
            ) from None
    log.info("%s: listening on %s (%s), loading model", service.name, handle.address, "TLS" if config.tls_enabled else "plaintext")
    if initialize:
        try:
            handle.initialize()
        except BaseException:
            server.stop(0)
            if handle.probe is not None:
                handle.probe.stop()
            raise
    return handle


def serve_forever(config: ServiceConfig, service: Service) -> int:
    """Run until SIGTERM/SIGINT, then drain. Returns the process exit code."""
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("%s: configuration %s", service.name, json.dumps(config.describe(), sort_keys=True))
    try:
        handle = start_server(config, service)
    except Exception:
        log.exception("%s: failed to start", service.name)
        return 1
    stop_requested = threading.Event()

    def on_signal(signum, _frame):
        log.info("%s: received %s", service.name, signal.Signals(signum).name)
        stop_requested.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    while not stop_requested.wait(1.0):
        pass
    handle.stop()
    return 0


def sleeping_idle_threads() -> bool:
    """Make OpenMP's worker threads (torch's intra-op pool in this process, CTranslate2's in
    the transcript worker it starts) sleep when a parallel region ends instead of spinning
    for it: OMP_WAIT_POLICY=PASSIVE, unless the environment already says. Spinning threads
    burn a core for a while after every model call; between the calls of one request
    (message, screen lines, transcript) that was most of the text service's CPU, taken
    from the encoders that needed it. Returns False where it is too late (torch is loaded:
    libgomp reads the variable once) or the environment chose otherwise (OMP_WAIT_POLICY
    or GOMP_SPINCOUNT set)."""
    import os
    import sys

    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ or "torch" in sys.modules:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def single_threaded_numpy_blas() -> bool:
    """Give numpy's OpenBLAS one thread: OPENBLAS_NUM_THREADS=1, unless the environment
    already says. The services' numpy matrix products are small (mel filters, a screen's
    line vectors), and after each one OpenBLAS's other threads spin for about 2^28 cycles
    (a tenth of a second here) before they sleep: in the transcript worker that was 100 ms
    of a second core per voice message, taken from the vision service reading the screen
    beside it. Returns False where it is too late (numpy is loaded: OpenBLAS reads the
    variable once) or the environment chose otherwise."""
    import os
    import sys

    if "OPENBLAS_NUM_THREADS" in os.environ or "numpy" in sys.modules:
        return False
    os.environ.update(single_threaded_blas_environment(os.environ))
    return True


def single_threaded_blas_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` with OPENBLAS_NUM_THREADS=1 unless it sets it: for a child process (the
    transcript worker) whoever starts it (single_threaded_numpy_blas says why)."""
    return {**environ, "OPENBLAS_NUM_THREADS": environ.get("OPENBLAS_NUM_THREADS", "1")}


# Libraries of torch's CUDA build (cuBLAS, cuSPARSE, NVRTC, the CUDA half of torch itself)
# that `import torch` loads and partly reads in: about 180 MiB of each torch process's RSS
# on this machine, though no service runs anything on a GPU.
GPU_LIBRARIES = ("/nvidia/", "/libtorch_cuda", "/libc10_cuda")
_MADV_DONTNEED = 4


def unmap_gpu_library_pages(smaps: str = "/proc/self/smaps") -> int:
    """Take the pages of the GPU libraries torch loaded (GPU_LIBRARIES) out of this
    process's page tables (madvise MADV_DONTNEED) and return how many KiB its RSS went down
    by. Only mappings that cannot be written and hold no page of the process's own
    (smaps' Anonymous 0: no relocation was written there) are advised, so nothing is lost:
    the files stay mapped, and a page read again comes back from the page cache. The
    kernel can then reclaim those pages first; until it does, they stay in the page cache
    (PSS hardly changes). 0 where torch is not loaded or this is not Linux."""
    import ctypes
    import sys

    if "torch" not in sys.modules:
        return 0
    try:
        spans = _clean_read_only_mappings(smaps, GPU_LIBRARIES)
        madvise = ctypes.CDLL(None).madvise
        before = _resident_kib()
    except (OSError, AttributeError, ValueError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for low, high in spans:
        madvise(low, high - low, _MADV_DONTNEED)
    return max(0, before - _resident_kib())


def _clean_read_only_mappings(smaps: str, names: tuple[str, ...]) -> list[tuple[int, int]]:
    """(start, end) of each mapping in `smaps` of a file whose path holds one of `names`,
    not writable, with no anonymous (copied-on-write) pages."""
    found: list[tuple[int, int]] = []
    span: tuple[int, int] | None = None
    with open(smaps) as lines:
        for line in lines:
            fields = line.split()
            if fields and "-" in fields[0] and len(fields) >= 5 and ":" not in fields[0]:  # a mapping's header
                wanted = len(fields) >= 6 and "w" not in fields[1] and any(name in fields[5] for name in names)
                low, high = (int(end, 16) for end in fields[0].split("-"))
                span = (low, high) if wanted else None
            elif span is not None and fields[:1] == ["Anonymous:"]:
                if int(fields[1]) == 0:
                    found.append(span)
                span = None
    return found


def _resident_kib() -> int:
    import os

    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter number


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas (what MALLOC_ARENA_MAX=2 does), before the handler
    threads start. glibc gives each busy thread an arena of its own, and memory freed in
    one is kept for that thread: 8 concurrent 40 MP images left the vision service at
    3.8 GB and peaked at 4.6 (2 arenas: 2.5 GB peak, with max_pixels_in_flight). False
    where there is no glibc (musl, macOS) or the environment already says."""
    import ctypes
    import ctypes.util
    import os

    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def _configure_torch(threads: int) -> None:
    import os

    import torch

    wanted = threads if threads > 0 else (os.cpu_count() or 1)
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
