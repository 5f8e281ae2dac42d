"""Exceptions, typed by the gRPC status code and carrying the server's `google.rpc` details.

The server reports expected outcomes (a miss, a failed condition, a revoked lease) as values, so
an exception always means the call did not do its job. Each class keeps the status message, the
`ErrorInfo` reason and metadata (``.reason``, ``.metadata``), and what matters for its code: the
rejected fields of a `BadRequest` (``InvalidArgument.field`` / ``.field_violations``), the
`RetryInfo` delay (``Unavailable.retry_after``, in seconds) and the missing right
(``PermissionDenied.right`` / ``.namespace``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

__all__ = [
    "Cancelled",
    "DataLoss",
    "DeadlineExceeded",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "LockNotAcquired",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "TiercacheError",
    "Unauthenticated",
    "Unavailable",
    "UnexpectedResponse",
    "Unimplemented",
]


@dataclass(frozen=True)
class FieldViolation:
    """One field the server rejected, from a `google.rpc.BadRequest` detail."""

    field: str
    description: str


class TiercacheError(Exception):
    """Base of every exception this SDK raises for a failed call."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str | None = None,
        retry_after: float | None = None,
        field_violations: tuple[FieldViolation, ...] = (),
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.reason = reason
        """The `ErrorInfo` reason, e.g. ``"NAMESPACE_NOT_FOUND"``, when the server sent one."""
        self.retry_after = retry_after
        """Seconds the server asked the caller to wait before retrying (`RetryInfo`)."""
        self.field_violations = field_violations
        self.metadata: dict[str, str] = dict(metadata or {})
        """The `ErrorInfo` metadata (e.g. ``namespace``, ``right``), empty when there was none."""

    @property
    def retryable(self) -> bool:
        """Whether the same call may succeed later unchanged."""
        return False

    def __str__(self) -> str:
        name = self.code.name.lower().replace("_", " ")
        return f"{name}: {self.message}"


class InvalidArgument(TiercacheError):
    """The request was malformed: a bad namespace, key, value size, TTL or batch size."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    @property
    def field(self) -> str | None:
        """The first rejected field (``"key"``, ``"tags[2]"``…), from the `BadRequest` detail."""
        return self.field_violations[0].field if self.field_violations else None

    def __str__(self) -> str:
        base = super().__str__()
        if not self.field_violations:
            return base
        fields = "; ".join(f"{v.field}: {v.description}" for v in self.field_violations)
        return f"{base} ({fields})"


class NotFound(TiercacheError):
    """The namespace does not exist (a missing key is a miss, not an error)."""

    code = grpc.StatusCode.NOT_FOUND


class Unavailable(TiercacheError):
    """The server cannot answer now or could not be reached; retry after ``retry_after``."""

    code = grpc.StatusCode.UNAVAILABLE

    @property
    def retryable(self) -> bool:
        return True


class ResourceExhausted(TiercacheError):
    """A quota or limit was hit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    @property
    def retryable(self) -> bool:
        return True


class PermissionDenied(TiercacheError):
    """The credential is valid but lacks the right: ``.right`` on ``.namespace``."""

    code = grpc.StatusCode.PERMISSION_DENIED

    @property
    def right(self) -> str | None:
        """The missing right (``read``, ``write``, ``invalidate``, ``lock``, ``admin``)."""
        return self.metadata.get("right")

    @property
    def namespace(self) -> str | None:
        """The namespace the right was missing on."""
        return self.metadata.get("namespace")


class Unauthenticated(TiercacheError):
    """No valid credential was sent: no token, an unknown token or client certificate."""

    code = grpc.StatusCode.UNAUTHENTICATED


class DeadlineExceeded(TiercacheError):
    """The call's deadline passed before the server answered."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED

    @property
    def retryable(self) -> bool:
        return True


class DataLoss(TiercacheError):
    """A stored entry could not be decoded by the server."""

    code = grpc.StatusCode.DATA_LOSS


class Unimplemented(TiercacheError):
    """The server does not implement this call."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Cancelled(TiercacheError):
    """The call was cancelled."""

    code = grpc.StatusCode.CANCELLED


class Internal(TiercacheError):
    """The server failed in an unexpected way."""

    code = grpc.StatusCode.INTERNAL


class UnexpectedResponse(TiercacheError):
    """The server answered with something this SDK does not understand (likely a newer server)."""

    code = grpc.StatusCode.INTERNAL


class LockNotAcquired(TiercacheError):
    """``with namespace.lock(...)`` waited ``max_wait`` while another owner held the lock."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


_BY_CODE: dict[grpc.StatusCode, type[TiercacheError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.DATA_LOSS: DataLoss,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.INTERNAL: Internal,
}


def from_rpc_error(err: grpc.RpcError) -> TiercacheError:
    """Maps a failed call (sync or asyncio) to its typed exception, reading the status details."""
    call: Any = err
    code: grpc.StatusCode = call.code()
    message: str = call.details() or ""
    reason: str | None = None
    retry_after: float | None = None
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    try:
        status = rpc_status.from_call(call)
    except ValueError:
        # Details that disagree with the status line are ignored rather than trusted.
        status = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason or None
            metadata = dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.ToTimedelta().total_seconds()
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
    cls = _BY_CODE.get(code, TiercacheError)
    return cls(
        message,
        code=code,
        reason=reason,
        retry_after=retry_after,
        field_violations=tuple(violations),
        metadata=metadata,
    )
