"""One place that turns failures into gRPC status codes with details.

Handlers raise `ServiceError` (or one of the helpers below); the runtime's interceptor
aborts the call with the right code and, for INVALID_ARGUMENT, a google.rpc.BadRequest
detail listing each field violation. Anything else that escapes a handler is a bug:
it is logged with its traceback and answered INTERNAL, and the service stays up.

Clients read the details back with `field_violations(rpc_error)`. A RESOURCE_EXHAUSTED
refusal may say when to come back (`retry_after(rpc_error)`): a google.rpc.RetryInfo detail,
and the `grpc-retry-pushback-ms` trailer that grpc's own retry policy honours.

What a status repeats is capped (MAX_MESSAGE_CHARS, MAX_VIOLATIONS, MAX_FIELD_CHARS,
MAX_DESCRIPTION_CHARS): a message that echoes a 100 KB media type would otherwise exceed
the metadata limit and reach the caller as RESOURCE_EXHAUSTED instead of the real error.
Message and details together stay under 1 KiB.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


MAX_MESSAGE_CHARS = 360
MAX_VIOLATIONS = 3
MAX_FIELD_CHARS = 64
MAX_DESCRIPTION_CHARS = 120


def shorten(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters with an ellipsis where it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


@dataclass
class ServiceError(Exception):
    """A failure the caller should hear about, with its gRPC code."""

    code: grpc.StatusCode
    message: str
    # (field, description) pairs; sent as google.rpc.BadRequest for INVALID_ARGUMENT.
    violations: list[tuple[str, str]] = field(default_factory=list)
    retry_after_s: float | None = None  # when the server expects to have room again

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def to_status(self) -> grpc.Status:
        status = status_pb2.Status(code=self.code.value[0], message=shorten(self.message, MAX_MESSAGE_CHARS))
        if self.violations:
            bad_request = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=shorten(f, MAX_FIELD_CHARS), description=shorten(d, MAX_DESCRIPTION_CHARS))
                    for f, d in self.violations[:MAX_VIOLATIONS]
                ]
            )
            detail = any_pb2.Any()
            detail.Pack(bad_request)
            status.details.append(detail)
        if self.retry_after_s is not None:
            milliseconds = max(1, round(self.retry_after_s * 1000))
            retry = error_details_pb2.RetryInfo()
            retry.retry_delay.FromMilliseconds(milliseconds)
            detail = any_pb2.Any()
            detail.Pack(retry)
            status.details.append(detail)
            converted = rpc_status.to_status(status)
            return _Status(converted.code, converted.details, (*converted.trailing_metadata, ("grpc-retry-pushback-ms", str(milliseconds))))
        return rpc_status.to_status(status)


@dataclass(frozen=True)
class _Status(grpc.Status):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple


def retry_after(error: grpc.RpcError) -> float | None:
    """The seconds a refusal asks the caller to wait before trying again, or None."""
    for key, value in (error.trailing_metadata() or ()) if hasattr(error, "trailing_metadata") else ():
        if key == "grpc-retry-pushback-ms":
            try:
                return int(value) / 1000.0
            except ValueError:
                return None
    return None


def invalid_argument(field_path: str, description: str) -> ServiceError:
    """INVALID_ARGUMENT naming the offending field, e.g. ('header.media_type', 'unknown ...')."""
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"{field_path}: {description}", [(field_path, description)])


def within(prefix: str, error: ServiceError) -> ServiceError:
    """An INVALID_ARGUMENT about one part of a larger request, its fields named from the
    whole request: `within("inputs[2]", payload error)` names "inputs[2].payload". Other
    codes are returned as they are."""
    if error.code != grpc.StatusCode.INVALID_ARGUMENT:
        return error
    violations = [(f"{prefix}.{name}" if name else prefix, description) for name, description in error.violations]
    message = error.message
    if error.violations and message.startswith(f"{error.violations[0][0]}: "):
        message = f"{violations[0][0]}: {message[len(error.violations[0][0]) + 2 :]}"
    else:
        message = f"{prefix}: {message}"
    return ServiceError(error.code, message, violations, error.retry_after_s)


def resource_exhausted(message: str, retry_after_s: float | None = None) -> ServiceError:
    return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, retry_after_s=retry_after_s)


def unavailable(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAVAILABLE, message)


def deadline_exceeded(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, message)


def cancelled(message: str) -> ServiceError:
    """The caller went away (cancelled, or out of time) while its call waited: nobody hears it."""
    return ServiceError(grpc.StatusCode.CANCELLED, message)


def unauthenticated(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAUTHENTICATED, message)


def field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """The BadRequest field violations carried by a failed call, if any."""
    status = rpc_status.from_call(error)
    found: list[tuple[str, str]] = []
    if status is None:
        return found
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            found.extend((v.field, v.description) for v in bad_request.field_violations)
    return found
