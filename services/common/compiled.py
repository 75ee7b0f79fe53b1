"""Encoders run by OpenVINO: a torch module converted to OpenVINO's form once, kept in the
cache folder, and checked against torch every time it is loaded.

    compiled = compile_module(module, example_inputs, key, OpenVINOSettings(threads=2))
    outputs = compiled(inputs)            # numpy in, numpy out
    require_equivalent(torch_vectors, openvino_vectors, "text")

The conversion (`openvino.convert_model`, about 3 s for MiniLM here) is written as IR
(`model.xml` + `model.bin`, no pickle) under `<cache_root>/openvino/<key>-<openvino
version>/`; later loads read it (0.2 s for MiniLM here). `key` carries the weights' digest, so
changed weights convert again. A cached file that does not read is converted again; one
that reads but computes something else is caught by the check the caller runs on every
load (`require_equivalent`): the service does not start rather than serve features its
trained weights were not made with.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modalmesh.common.config import DEFAULT_ENGINE, DEFAULT_OPENVINO_SHAPES, ENGINES
from modalmesh.common.models import cache_root

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ENGINE",
    "ENGINES",
    "MIN_COSINE",
    "OpenVINOSettings",
    "cache_folder",
    "compile_module",
    "convert_module",
    "load_cached",
    "on_openvino",
    "require_equivalent",
    "serving_engine",
]

MIN_COSINE = 0.999  # every check vector at least this close to torch's


def serving_engine(config: Any) -> str:
    """The engine a service runs its encoder model on: the configured one, or torch where
    `quantize` asks for INT8 (torch's dynamic quantization)."""
    return "torch" if config.quantize else config.engine


def on_openvino(engine: str, quantize: bool, what: str) -> bool:
    """Whether a model loaded with these settings runs on OpenVINO; ValueError for an
    unknown engine or INT8 asked of OpenVINO."""
    if engine not in ENGINES:
        raise ValueError(f"{what} engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if engine == "openvino" and quantize:
        raise ValueError("quantize is INT8 in torch: run it with engine torch")
    return engine == "openvino"


def cache_folder(key: str) -> Path:
    import openvino

    version = openvino.__version__.split("-")[0]
    return cache_root() / "openvino" / f"{re.sub(r'[^A-Za-z0-9_.@+-]', '_', key)}-ov{version}"


@dataclass(frozen=True)
class OpenVINOSettings:
    """How an encoder model runs on OpenVINO: `threads`, its inference threads (0: OpenVINO's
    own choice, every core); `shapes`, how many input shapes (batch size x length, image
    size) it keeps prepared, least recently used dropped first (OpenVINO's
    CPU_RUNTIME_CACHE_CAPACITY). Each shape kept holds memory; one not kept is prepared
    again when it comes."""

    threads: int = 0
    shapes: int = DEFAULT_OPENVINO_SHAPES
    precision: str = "f32"  # OpenVINO's INFERENCE_PRECISION_HINT: f32, or bf16 (a CPU's bfloat16 units)
    # Calls that may run at once, each on threads of its own (OpenVINO's NUM_STREAMS; `threads`
    # are shared among them, not pinned to cores); 1: a call that comes while another runs waits for it.
    streams: int = 1

    @classmethod
    def of(cls, config: Any) -> "OpenVINOSettings":
        """A service's: its `torch_threads` and `openvino_shapes` settings."""
        return cls(threads=config.torch_threads, shapes=config.openvino_shapes)


def compile_module(module: Any, example_inputs: Any, key: str, settings: OpenVINOSettings | None = None, fresh: bool = False) -> Any:
    """An OpenVINO CompiledModel for the CPU computing `module(inputs)` (a dict of example
    inputs: by name; a tensor or a tuple of them: in order); inputs keep their batch and
    length dimensions dynamic. `fresh`: converted again, whatever is cached."""
    model = None if fresh else read_cached(key)
    if model is None:
        model = convert_module(module, example_inputs, key)
    return compile_model(model, settings)


def load_cached(key: str, settings: OpenVINOSettings | None = None) -> Any:
    """The CompiledModel of `key`'s cached conversion, or None when there is none that reads."""
    model = read_cached(key)
    return None if model is None else compile_model(model, settings)


def read_cached(key: str) -> Any:
    import openvino

    folder = cache_folder(key)
    if not (folder / "model.xml").is_file():
        return None
    try:
        return openvino.Core().read_model(str(folder / "model.xml"))
    except Exception as exc:  # a damaged cache entry: convert again
        log.warning("OpenVINO: the cached %s does not read (%s); converting again", folder, exc)
        return None


# The modules of OpenVINO's converter that bind its telemetry package (as `tm`) when they load.
CONVERTER_MODULES = ("openvino.tools.ovc.main", "openvino.tools.ovc.convert_impl", "openvino.tools.ovc.telemetry_utils", "openvino.tools.ovc.utils")


def without_telemetry() -> None:
    """OpenVINO's converter reports each conversion to Google Analytics unless the user has
    opted out in their home folder: it forks a process from the converting thread to send
    it (in a process running gRPC and torch threads such a fork has crashed with a
    segmentation fault) and reaches for the network. The mesh never reports: the telemetry
    package is hidden from imports, so the converter loads its own stub, and converter
    modules loaded already are given that stub."""
    import sys

    sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # an import of it fails: the converter's stub instead
    import openvino.tools.ovc.telemetry_stub as stub

    for name in CONVERTER_MODULES:
        module = sys.modules.get(name)
        if module is not None:
            setattr(module, "tm", stub)


def convert_module(module: Any, example_inputs: Any, key: str) -> Any:
    """Convert `module` (torch) to OpenVINO's form and cache it under `key`; returns the model."""
    without_telemetry()
    import openvino

    folder = cache_folder(key)
    log.info("OpenVINO: converting %s (once; cached in %s)", key, folder)
    try:
        model = openvino.convert_model(module, example_input=example_inputs)
    except Exception as exc:  # an architecture OpenVINO's converter does not take
        log.info("OpenVINO could not convert %s: %s: %s", key, type(exc).__name__, exc)
        raise ValueError(f"{key}: OpenVINO cannot convert this model ({type(exc).__name__}); run it with engine torch") from None
    partial = folder.with_name(f"{folder.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        openvino.save_model(model, str(partial / "model.xml"), compress_to_fp16=False)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(partial, folder)
    except OSError as exc:  # a read-only cache: serve the conversion in hand
        log.warning("OpenVINO: could not cache the conversion in %s (%s)", folder, exc)
        shutil.rmtree(partial, ignore_errors=True)
    return model


def compile_model(model: Any, settings: OpenVINOSettings | None = None) -> Any:
    import openvino

    settings = settings or OpenVINOSettings()
    # FP32 unless asked: on a CPU with BF16 units OpenVINO would otherwise compute in BF16
    # (MiniLM: cosine 0.99998 to torch, not the same features the weights were trained on).
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": settings.precision, "CPU_RUNTIME_CACHE_CAPACITY": settings.shapes}
    if settings.threads > 0:
        config["INFERENCE_NUM_THREADS"] = settings.threads
    if settings.streams > 1:
        # Pinned, two streams' threads can land on one core while the other idles.
        config.update({"NUM_STREAMS": settings.streams, "ENABLE_CPU_PINNING": False})
    return openvino.Core().compile_model(model, "CPU", config)


def require_equivalent(reference: np.ndarray, candidate: np.ndarray, what: str) -> float:
    """The lowest cosine between matching rows of `reference` (torch) and `candidate`
    (OpenVINO), two zero rows counting as the same; ValueError when one is under
    MIN_COSINE."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    a, b = np.linalg.norm(reference, axis=1), np.linalg.norm(candidate, axis=1)
    cosines = (reference * candidate).sum(axis=1) / np.maximum(a * b, 1e-300)
    cosines[(a < 1e-6) & (b < 1e-6)] = 1.0  # both all zeros (a ReLU network on a flat image): the same
    cosine = float(np.min(cosines))
    if not cosine >= MIN_COSINE:
        raise ValueError(f"{what}: OpenVINO's features differ from torch's (cosine {cosine:.4f} < {MIN_COSINE}); run it with engine torch")
    return cosine
