"""One typed configuration for every service, from defaults, environment and flags.

Precedence, lowest to highest:

1. the field's default (per service where it differs, e.g. the port),
2. ``MODALMESH_<FIELD>`` (applies to every service in the environment),
3. ``MODALMESH_<SERVICE>_<FIELD>`` (one service, e.g. ``MODALMESH_TEXT_PORT``),
4. the command-line flag ``--<field-with-dashes>``.

The resolved configuration is logged once at start-up (secrets masked).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

log = logging.getLogger(__name__)

#: Default gRPC ports, one per service. Metrics ports are these minus 41000 (9050...).
DEFAULT_PORTS = {"router": 50050, "text": 50051, "vision": 50052, "audio": 50053}
METRICS_PORT_OFFSET = 41000

MiB = 1024 * 1024
OCR_ENGINES = ("onnxruntime", "openvino")  # what may run the vision service's OCR models (vision/ocr.py)
OCR_ALPHABETS = ("latin", "all")  # what the quick OCR reading recognises (vision/ocr.py: LatinHead)
DEFAULT_OCR_ENGINE = "openvino"  # the same answers as onnxruntime with the shipped weights, OCR about 2x faster (README)
KiB = 1024
FUSION_PRECISIONS = ("auto", "float32", "bfloat16")  # the router's fusion_precision (router/fusion.py fusion_precision)
ENGINES = ("openvino", "torch")  # what may run the text encoder's and the image backbone's model (common/compiled.py)
DEFAULT_ASR_BEAM, MAX_ASR_BEAM = 5, 16  # Whisper's beam search width (asr_beam; audio/whisper.py says why 5)
DEFAULT_ENGINE = "openvino"  # the same features as torch (FP32), checked at every start; 1.2-7x faster here
# Input shapes each OpenVINO model keeps prepared (its CPU_RUNTIME_CACHE_CAPACITY; OpenVINO's
# own default, 5000, let the vision service grow by 0.7 GB on screenshots of many sizes).
DEFAULT_OPENVINO_SHAPES = 100

#: Defaults that differ by service (applied before the environment and flags).
SERVICE_DEFAULTS: dict[str, dict[str, Any]] = {
    # Text calls take milliseconds and the router sends several per request (one per OCR paragraph).
    "text": {"max_input_bytes": 64 * KiB, "max_waiting_calls": 256},
    "vision": {"max_input_bytes": 32 * MiB, "max_batch_size": 8},
    "audio": {"max_input_bytes": 32 * MiB, "max_batch_size": 8},
    # The router's fusion model is small: its ops run faster on one thread than split
    # over two (benchmarks/bench_router.py: router overhead p50 28 -> 18 ms on 2 cores).
    # max_bytes_in_flight: the router copies each input once more into its encoder calls,
    # and its pod has 1 GiB.
    # cold_start_calls: a request costs the router's encoders seconds of CPU; without it a
    # burst at start-up gets 32 calls in at once before any answer tells how long one takes.
    "router": {"max_input_bytes": 32 * MiB, "torch_threads": 1, "max_bytes_in_flight": 128 * MiB, "cold_start_calls": 8},
}


def _option(default: Any, help: str, secret: bool = False) -> Any:
    return field(default=default, metadata={"help": help, "secret": secret})


@dataclass
class ServiceConfig:
    """Settings of one service process. Every field is also a flag and a variable."""

    service: str = _option("text", "which service this process runs")
    host: str = _option("127.0.0.1", "address to listen on ('0.0.0.0' in containers)")
    port: int = _option(-1, "gRPC port; -1 picks the service's default (router 50050, text 50051, vision 50052, audio 50053), 0 any free port")
    metrics_port: int = _option(-1, "Prometheus HTTP port; -1 picks gRPC port - 41000 (text: 9051), 0 disables")
    max_message_bytes: int = _option(64 * MiB, "largest gRPC message accepted or sent")
    grace_seconds: float = _option(10.0, "on SIGTERM, how long in-flight calls may finish")
    max_connection_age_s: float = _option(
        300.0, "close a client's connection after this long (in-flight calls finish first) so clients re-resolve dns:/// names and reach new replicas; 0 never"
    )
    stream_idle_s: float = _option(
        30.0, "longest wait for the next message of a client's stream; then DEADLINE_EXCEEDED (a stalled upload would hold a worker for ever)"
    )
    worker_threads: int = _option(32, "calls handled at once; more wait (max_waiting_calls), beyond that RESOURCE_EXHAUSTED")
    max_waiting_calls: int = _option(64, "calls that may wait for a busy worker (until their deadline); one more is RESOURCE_EXHAUSTED at once")
    cold_start_calls: int = _option(
        0,
        "until a few calls have been answered, at most this many calls with a deadline run at once (more are RESOURCE_EXHAUSTED with a retry hint); 0 no limit",
    )
    torch_threads: int = _option(0, "torch intra-op threads; 0 uses every core")
    # Model
    model: str = _option("", "model directory or hub id; empty uses the bundled default")
    allow_download: bool = _option(False, "let transformers download a hub id (off: local files only)")
    max_input_bytes: int = _option(1 * MiB, "largest input accepted, all payload chunks together")
    max_bytes_in_flight: int = _option(
        256 * MiB, "bytes of unary request messages held at once (running and waiting calls); one more is RESOURCE_EXHAUSTED at once; 0 turns the limit off"
    )
    quantize: bool = _option(False, "INT8 dynamic quantization of the backbone's Linear layers (text, vision: in torch, whatever the engine)")
    engine: str = _option(
        DEFAULT_ENGINE,
        "text, vision: what runs the encoder model: openvino (converted once, cached, checked against torch at every start; 1.2-7x faster here) or torch; "
        "router: what runs a fusion ensemble's decisions (openvino: checked against torch at every load, torch where its answers differ)",
    )
    openvino_shapes: int = _option(
        DEFAULT_OPENVINO_SHAPES,
        "text, vision: input shapes each OpenVINO model (the encoder, the OCR's) keeps prepared to run again at once; "
        "each holds memory, a shape not kept is prepared again when it comes (a few ms); 0 keeps none",
    )
    # Vision
    max_pixels: int = _option(40_000_000, "vision: largest image (width x height) decoded")
    max_pixels_in_flight: int = _option(
        40_000_000, "vision: pixels of all images decoded at once (about 25 bytes each at the peak); more wait, up to their deadline"
    )
    ocr: bool = _option(True, "vision: load the OCR engine so requests may ask for 'ocr'")
    ocr_det_side: int = _option(
        0,
        "vision: 0 detects OCR text at the engine's size (shorter side scaled to 736, also up); N scales the image "
        "down so its longer side is at most N, never up (960: about 40% faster; see README before using it with "
        "the shipped triage weights)",
    )
    ocr_quick_det_side: int = _option(
        960,
        "vision: the detection size of the quick OCR reading a caller asks for with 'ocr_quick' (the router's "
        "ROUTED mode on screenshots): the image at the scale the 'ocr' reading detects it at, but at most N px on "
        "its longer side",
    )
    ocr_quick_alphabet: str = _option(
        "latin",
        "vision: what the quick OCR reading recognises: 'latin' (Latin-script characters first, about 12% less "
        "OCR time; a line with any other character is read again with all; needs ocr_engine openvino) or 'all'",
    )
    ocr_max_lines: int = _option(
        100,
        "vision: most text lines OCR recognises per image, the first in reading order (about 5 ms per "
        "short line here); the side output's 'ocr_more' tag says when text was left unread",
    )
    ocr_engine: str = _option(
        DEFAULT_OCR_ENGINE,
        "vision: what runs the PP-OCR models: openvino (about 2x faster here) or onnxruntime; the same messages read, boxes within a few pixels (see README)",
    )
    # Audio and speech
    max_audio_seconds: float = _option(300.0, "audio: longest clip accepted, in seconds")
    transcript: bool = _option(True, "audio: load the speech recogniser so requests may ask for 'transcript'")
    asr_engine: str = _option("whisper", "audio: the transcript engine, 'whisper' (Whisper base, bundled) or 'pocketsphinx'")
    asr_language: str = _option("en", "audio: the language Whisper transcribes ('' detects it per clip)")
    asr_beam: int = _option(
        DEFAULT_ASR_BEAM, "audio: Whisper's beam search width; 1 takes the likeliest word at each step (about 10% faster on a short clip, more words misheard)"
    )
    asr_lm: str = _option(
        "", "audio: an ARPA language model for transcripts (`modalmesh data lm` builds one from a manifest); empty: PocketSphinx's general English model"
    )
    vad: bool = _option(True, "audio: mark speech with Silero VAD and pool over speech frames only")
    max_speech_chars: int = _option(2000, "speech: longest text Synthesize accepts")
    # Dynamic batching
    max_batch_size: int = _option(32, "most requests run in one forward pass; 1 turns batching off")
    max_batch_delay_ms: float = _option(
        0.0,
        "longest a request waits for others to join its batch; 0 batches whatever queued while the model was busy",
    )
    max_queue: int = _option(256, "requests waiting for a batch before RESOURCE_EXHAUSTED")
    # Router
    text_target: str = _option("127.0.0.1:50051", "router: text encoder address (dns:///name:port balances per call)")
    vision_target: str = _option("127.0.0.1:50052", "router: vision encoder address")
    audio_target: str = _option("127.0.0.1:50053", "router: audio encoder and speech address")
    weights_dir: str = _option("", "router: folder with <task>/model.safetensors; empty uses the shipped weights if any")
    model_repository: str = _option("", "router: a model repository, <task>/<version>/model.safetensors; replaces weights_dir, versions load while serving")
    repository_poll_s: float = _option(2.0, "router: how often the model repository is looked at for new versions (0: only at start)")
    model_versions: str = _option("", "router: pinned versions 'task=3,...'; other tasks serve their highest ready version")
    default_deadline_s: float = _option(30.0, "router: time budget of a request that sets no deadline")
    http_port: int = _option(8000, "router: HTTP port (OIP v2 REST, Analyze as JSON, SSE; every call goes through the gRPC port); 0 turns it off")
    speech_budget_s: float = _option(3.0, "router: longest wait for the spoken reply; past it the answer comes without (speech_error)")
    fusion_precision: str = _option(
        "auto",
        "router: what an ensemble's linear maps compute in: float32, bfloat16 (2-3x faster with AVX512-BF16 or AMX; "
        "the same answers on the held-out sets) or auto (bfloat16 on such a CPU where a check at load finds float32's answers)",
    )
    routing: str = _option("", "router: per-task routing 'task=tau/gamma[/eager[/quick]],...' (e.g. screenshot_triage=0.9/0.15/image/none)")
    encoder_ca: str = _option("", "router: PEM CA to trust when calling encoders over TLS")
    encoder_cert: str = _option("", "router: client certificate for mTLS to encoders")
    encoder_key: str = _option("", "router: client key for mTLS to encoders", secret=True)
    encoder_token: str = _option("", "router: bearer token sent to encoders", secret=True)
    # Security
    tls_cert: str = _option("", "PEM certificate chain; with tls_key turns TLS on")
    tls_key: str = _option("", "PEM private key", secret=True)
    tls_client_ca: str = _option("", "PEM CA bundle; when set, clients must present a certificate it signed (mTLS)")
    auth_token: str = _option("", "when set, every call but health must carry 'authorization: Bearer <token>'", secret=True)
    health_port: int = _option(0, "extra plaintext port serving only grpc.health.v1 from a process of its own (kubelet probes); 0 off")
    # Telemetry
    trace_exporter: str = _option("none", "where spans go: none, console or otlp")
    otlp_endpoint: str = _option("", "OTLP gRPC collector address (default from OTEL_EXPORTER_OTLP_ENDPOINT)")
    log_level: str = _option("INFO", "logging level")

    def __post_init__(self) -> None:
        if self.port < 0:
            self.port = DEFAULT_PORTS.get(self.service, 50051)
        if self.metrics_port < 0:
            self.metrics_port = self.port - METRICS_PORT_OFFSET if self.port > METRICS_PORT_OFFSET else 0
        problems = []
        if self.trace_exporter not in ("none", "console", "otlp"):
            problems.append(f"trace_exporter must be none, console or otlp, not {self.trace_exporter!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            problems.append("tls_cert and tls_key must be given together")
        if self.tls_client_ca and not self.tls_cert:
            problems.append("tls_client_ca (mTLS) needs tls_cert and tls_key")
        for name in ("max_batch_size", "max_queue", "max_message_bytes", "max_input_bytes", "worker_threads"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if self.ocr_det_side and self.ocr_det_side < 32:
            problems.append("ocr_det_side must be 0 (the engine's rule) or at least 32 pixels")
        if self.ocr_quick_det_side < 32:
            problems.append("ocr_quick_det_side must be at least 32 pixels")
        if self.ocr_quick_alphabet not in OCR_ALPHABETS:
            problems.append(f"ocr_quick_alphabet must be one of {', '.join(OCR_ALPHABETS)}, not {self.ocr_quick_alphabet!r}")
        if self.openvino_shapes < 0:
            problems.append("openvino_shapes must be 0 or more")
        if self.ocr_max_lines < 1:
            problems.append("ocr_max_lines must be at least 1")
        if self.asr_engine not in ("whisper", "pocketsphinx"):
            problems.append(f"asr_engine must be whisper or pocketsphinx, not {self.asr_engine!r}")
        if not 1 <= self.asr_beam <= MAX_ASR_BEAM:
            problems.append(f"asr_beam must be 1 to {MAX_ASR_BEAM}, not {self.asr_beam}")
        if self.asr_lm and self.asr_engine != "pocketsphinx":
            problems.append("asr_lm is a PocketSphinx language model: set asr_engine pocketsphinx with it")
        if self.engine not in ENGINES:
            problems.append(f"engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if self.fusion_precision not in FUSION_PRECISIONS:
            problems.append(f"fusion_precision must be one of {', '.join(FUSION_PRECISIONS)}, not {self.fusion_precision!r}")
        if self.ocr_engine not in OCR_ENGINES:
            problems.append(f"ocr_engine must be one of {', '.join(OCR_ENGINES)}, not {self.ocr_engine!r}")
        if self.max_pixels_in_flight < 1:
            problems.append("max_pixels_in_flight must be at least 1")
        if not self.stream_idle_s > 0:
            problems.append("stream_idle_s must be more than 0 seconds")
        if self.max_connection_age_s < 0:
            problems.append("max_connection_age_s must be 0 (never) or more")
        if self.max_bytes_in_flight < 0:
            problems.append("max_bytes_in_flight must be 0 (no limit) or more")
        if self.max_waiting_calls < 0:
            problems.append("max_waiting_calls must be 0 or more")
        if self.cold_start_calls < 0:
            problems.append("cold_start_calls must be 0 (no limit) or more")
        if not 0 <= self.http_port <= 65535:
            problems.append("http_port must be 0 (off) to 65535")
        if self.repository_poll_s < 0:
            problems.append("repository_poll_s must be 0 (only at start) or more")
        if problems:
            raise ValueError("invalid configuration: " + "; ".join(problems))

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert)

    def describe(self) -> dict[str, Any]:
        """The settings as a dict, secrets masked: what start-up logs."""
        shown = {}
        for f in fields(self):
            value = getattr(self, f.name)
            shown[f.name] = "***" if (f.metadata.get("secret") and value) else value
        return shown


def _coerce(raw: str, to: type, name: str) -> Any:
    if to is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{name}: expected a boolean, got {raw!r}")
    try:
        return to(raw)
    except ValueError:
        raise ValueError(f"{name}: expected {to.__name__}, got {raw!r}") from None


_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per ServiceConfig field (defaults None: unset flags don't override)."""
    group = parser.add_argument_group("service configuration (also MODALMESH_* variables)")
    for f in fields(ServiceConfig):
        if f.name == "service":
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _TYPES[f.type] if isinstance(f.type, str) else f.type
        text = f.metadata["help"].replace("%", "%%")  # argparse %-formats help ("40% faster" broke --help)
        if kind is bool:
            group.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction, help=text)
        else:
            group.add_argument(flag, dest=f.name, default=None, type=kind, help=text)


def load_config(
    service: str,
    flags: argparse.Namespace | Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> ServiceConfig:
    """Resolve a service's configuration (see the module docstring for precedence)."""
    environ = os.environ if environ is None else environ
    flag_values = vars(flags) if isinstance(flags, argparse.Namespace) else dict(flags or {})
    values: dict[str, Any] = {"service": service, **SERVICE_DEFAULTS.get(service, {})}
    for f in fields(ServiceConfig):
        if f.name == "service":
            continue
        kind = _TYPES[f.type] if isinstance(f.type, str) else f.type
        for variable in (f"MODALMESH_{f.name.upper()}", f"MODALMESH_{service.upper()}_{f.name.upper()}"):
            if variable in environ:
                values[f.name] = _coerce(environ[variable], kind, variable)
        if flag_values.get(f.name) is not None:
            values[f.name] = flag_values[f.name]
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = ServiceConfig(**values)
    return config


def replace(config: ServiceConfig, **changes: Any) -> ServiceConfig:
    return dataclasses.replace(config, **changes)
