"""Where model weights come from, and how a service names the version it serves.

Every service loads weights from local files by default: a configured directory, or
the default model a package bundles. A hub id is only fetched when the operator turns
`allow_download` on. Only safetensors are read (no pickle).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable

import grpc

from modalmesh.common import errors


def resolve_model_source(configured: str, default_dir: Callable[[], str]) -> tuple[str, bool]:
    """Return (source, is_local): the configured directory or hub id, else the default."""
    source = configured or str(default_dir())
    return source, Path(source).is_dir()


def ensure_loadable(source: str, is_local: bool, allow_download: bool) -> None:
    if not is_local and not allow_download:
        raise errors.ServiceError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"model {source!r} is not a local directory and downloads are off (set MODALMESH_ALLOW_DOWNLOAD=1 to fetch hub ids)",
        )


def file_digest(*paths: str | Path) -> str:
    """First 12 hex digits of the sha256 over the files' bytes, in order."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def weights_version(model_dir: str | Path, name: str) -> str:
    """'<name>@<digest of the safetensors files>': changes when the weights change."""
    root = Path(model_dir)
    files = sorted(root.glob("*.safetensors")) if root.is_dir() else []
    return f"{name}@{file_digest(*files)}" if files else f"{name}@unversioned"


def same_weights(version_a: str, version_b: str) -> bool:
    """Whether two model versions ('<name>@<digest>[+int8]') come from the same weights: the
    digest decides, not the folder's name; INT8 serving of those weights is the operator's
    choice and counts as the same."""

    def digest(version: str) -> str:
        return version.rpartition("@")[2].split("+")[0]

    return bool(digest(version_a)) and digest(version_a) == digest(version_b)


def cache_root() -> Path:
    """Where derived model files live (Whisper's joined weights, OpenVINO's converted
    encoders): MODALMESH_CACHE_DIR, ~/.cache/modalmesh, or the temporary folder when
    neither can be written (a read-only container)."""
    for candidate in (os.environ.get("MODALMESH_CACHE_DIR"), Path.home() / ".cache" / "modalmesh"):
        if not candidate:
            continue
        try:
            Path(candidate).mkdir(parents=True, exist_ok=True)
            if os.access(candidate, os.W_OK):
                return Path(candidate)
        except OSError:
            continue
    return Path(tempfile.gettempdir()) / "modalmesh-cache"
