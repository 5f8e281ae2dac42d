"""What the sync and the asyncio clients share: values, requests, replies, retry pacing."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum
from typing import Any, Generic, Literal, Protocol, TypeVar

from google.protobuf import duration_pb2

from tiercache._proto.v1 import cache_pb2, common_pb2
from tiercache.errors import UnexpectedResponse

T = TypeVar("T")

DEFAULT_TIMEOUT = 5.0
"""Seconds every call may take unless the client says otherwise (the Rust SDK's default too); a
call that waits on the server (a `get_or_set` waiter, a lock wait) gets its wait on top."""
MAX_MESSAGE_BYTES = 16 << 20
"""The largest message a client receives or sends unless its ``options`` say otherwise: the
server's default ``limits.max_message_bytes`` (gRPC's own receive default is 4 MiB)."""
SERVER_DEFAULT_MAX_WAIT = 5.0
"""The server's default ``max_wait``: the wait a `get_or_set` without ``max_wait`` may take."""
DEFAULT_LOCK_WAIT = 10.0
"""Seconds `lock` waits for a held lock."""

Seconds = float | int | timedelta
"""A duration: seconds (int or float) or a `datetime.timedelta`."""


class Serializer(Protocol[T]):
    """Turns a namespace's values into bytes and back."""

    def dumps(self, value: T) -> bytes: ...

    def loads(self, data: bytes) -> T: ...


class _Bytes:
    def dumps(self, value: bytes) -> bytes:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"the BYTES serializer needs bytes, got {type(value).__name__}")
        return bytes(value)

    def loads(self, data: bytes) -> bytes:
        return data


class _Str:
    def dumps(self, value: str) -> bytes:
        return value.encode()

    def loads(self, data: bytes) -> str:
        return data.decode()


class _Json:
    def dumps(self, value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    def loads(self, data: bytes) -> Any:
        return json.loads(data)


BYTES: Serializer[bytes] = _Bytes()
"""Values are `bytes`, stored as they are (the default)."""
STR: Serializer[str] = _Str()
"""Values are `str`, stored as UTF-8."""
JSON: Serializer[Any] = _Json()
"""Values are anything `json.dumps` takes."""


def to_duration(d: Seconds) -> duration_pb2.Duration:
    secs = d.total_seconds() if isinstance(d, timedelta) else float(d)
    if secs < 0:
        raise ValueError("a duration must not be negative")
    out = duration_pb2.Duration()
    out.seconds = int(secs)
    out.nanos = round((secs - int(secs)) * 1e9)
    if out.nanos >= 1_000_000_000:
        out.seconds += 1
        out.nanos = 0
    return out


def seconds_of(d: Seconds) -> float:
    return d.total_seconds() if isinstance(d, timedelta) else float(d)


def from_duration(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A cached value with its metadata, as `get` returns it."""

    value: T | None
    """The decoded value; ``None`` for a negative entry (``absent``)."""
    version: int
    stale: bool
    """True when the fresh period has ended and the entry is served within its stale window."""
    tier: Literal["l1", "l2", "near", "unknown"]
    """The tier that answered: the replica's memory, Redis, or this process's near cache."""
    ttl_remaining: float
    """Seconds until the entry turns stale (0 when stale already)."""
    stale_remaining: float
    """Seconds until the entry is gone."""
    tags: tuple[str, ...] = ()
    absent: bool = False
    """A negative entry: the origin said the value does not exist."""


_TIERS: dict[int, Literal["l1", "l2", "near", "unknown"]] = {
    common_pb2.TIER_L1: "l1",
    common_pb2.TIER_L2: "l2",
}


def entry_of(e: common_pb2.Entry, ser: Serializer[T]) -> Entry[T]:
    return Entry(
        value=None if e.absent else ser.loads(e.value),
        version=e.version,
        stale=e.stale,
        tier=_TIERS.get(e.tier, "unknown"),
        ttl_remaining=from_duration(e.fresh_remaining),
        stale_remaining=from_duration(e.stale_remaining),
        tags=tuple(e.tags),
        absent=e.absent,
    )


@dataclass(frozen=True)
class SetResult:
    """What a `set` did; true when the value was stored."""

    stored: bool
    version: int
    """The new version when stored."""
    current_version: int
    """The version found when a condition failed (0 when no entry exists)."""
    outcome: Literal["stored", "version_mismatch", "exists"]

    def __bool__(self) -> bool:
        return self.stored


@dataclass(frozen=True)
class DeleteResult:
    """What a `delete` did; true when an entry was removed."""

    outcome: Literal["deleted", "not_found", "version_mismatch"]
    current_version: int

    def __bool__(self) -> bool:
        return self.outcome == "deleted"


class HealthStatus(Enum):
    SERVING = "serving"
    NOT_SERVING = "not_serving"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class WatchEvent:
    """One event of a namespace's Watch stream."""

    sequence: int
    kind: Literal["started", "key_changed", "tags_invalidated", "flushed", "gap"]
    key: str | None = None
    """For ``key_changed``: the key written (``version`` > 0) or deleted (``version`` 0)."""
    version: int = 0
    tags: tuple[str, ...] = ()
    """For ``tags_invalidated``."""


def watch_event_of(r: cache_pb2.WatchResponse) -> WatchEvent | None:
    which = r.WhichOneof("event")
    if which == "started":
        return WatchEvent(r.sequence, "started")
    if which == "key_changed":
        return WatchEvent(r.sequence, "key_changed", r.key_changed.key, r.key_changed.version)
    if which == "tags_invalidated":
        return WatchEvent(r.sequence, "tags_invalidated", tags=tuple(r.tags_invalidated.tags))
    if which == "namespace_flushed":
        return WatchEvent(r.sequence, "flushed")
    if which == "gap":
        return WatchEvent(r.sequence, "gap")
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """How idempotent calls (reads, stats, health) are retried after UNAVAILABLE.

    Failed attempt ``n`` (from 1) waits a random time between half and all of
    ``min(initial_backoff * multiplier**(n-1), max_backoff)`` seconds, or longer when the server's
    `RetryInfo` asks. Writes, leases and locks are never retried: a write that timed out may have
    been applied.
    """

    max_attempts: int = 3
    initial_backoff: float = 0.025
    max_backoff: float = 1.0
    multiplier: float = 2.0

    def backoff(self, n: int) -> float:
        base = min(
            self.initial_backoff * max(self.multiplier, 1.0) ** max(n - 1, 0), self.max_backoff
        )
        # "Equal jitter": at least half the pause, so retries never bunch up at zero.
        return base * (0.5 + random.random() * 0.5)


def retry_policy_of(retries: int | RetryPolicy) -> RetryPolicy:
    if isinstance(retries, RetryPolicy):
        return retries
    return RetryPolicy(max_attempts=max(1, retries + 1))


OnWaitTimeout = Literal["compute", "unavailable"]


@dataclass
class FillOptions:
    """The options of `get_or_set` that shape the request and the fill."""

    ttl: Seconds | None = None
    stale_ttl: Seconds | None = None
    tags: list[str] = field(default_factory=list)
    max_wait: Seconds | None = None
    allow_stale: bool = True
    refresh_stale: bool = True
    on_wait_timeout: OnWaitTimeout = "compute"
    lease_ttl: Seconds | None = None


def get_or_set_request(ns: str, key: str, o: FillOptions) -> cache_pb2.GetOrSetRequest:
    r = cache_pb2.GetOrSetRequest(
        namespace=ns,
        key=key,
        allow_stale=o.allow_stale,
        refresh_stale=o.allow_stale and o.refresh_stale,
        on_wait_timeout=(
            cache_pb2.WAIT_TIMEOUT_ACTION_UNAVAILABLE
            if o.on_wait_timeout == "unavailable"
            else cache_pb2.WAIT_TIMEOUT_ACTION_COMPUTE
        ),
    )
    if o.max_wait is not None:
        r.max_wait.CopyFrom(to_duration(o.max_wait))
    if o.lease_ttl is not None:
        r.lease_ttl.CopyFrom(to_duration(o.lease_ttl))
    return r


def get_or_set_many_request(
    ns: str, keys: list[str], o: FillOptions
) -> cache_pb2.GetOrSetManyRequest:
    one = get_or_set_request(ns, "", o)
    r = cache_pb2.GetOrSetManyRequest(
        namespace=ns,
        keys=keys,
        allow_stale=one.allow_stale,
        refresh_stale=one.refresh_stale,
        on_wait_timeout=one.on_wait_timeout,
    )
    if one.HasField("max_wait"):
        r.max_wait.CopyFrom(one.max_wait)
    if one.HasField("lease_ttl"):
        r.lease_ttl.CopyFrom(one.lease_ttl)
    return r


def fill_request(
    ns: str, key: str, token: str, value: bytes | None, o: FillOptions
) -> cache_pb2.FillRequest:
    """A fill of `value`, or of a negative entry when `value` is None."""
    r = cache_pb2.FillRequest(
        namespace=ns,
        key=key,
        lease_token=token,
        value=value or b"",
        tags=o.tags,
        absent=value is None,
    )
    if o.ttl is not None:
        r.ttl.CopyFrom(to_duration(o.ttl))
    if o.stale_ttl is not None:
        r.stale_ttl.CopyFrom(to_duration(o.stale_ttl))
    return r


def set_request(
    ns: str,
    key: str,
    value: bytes,
    *,
    ttl: Seconds | None,
    stale_ttl: Seconds | None,
    tags: Iterable[str] | None,
    if_absent: bool,
    if_version: int | None,
) -> cache_pb2.SetRequest:
    if if_absent and if_version is not None:
        raise ValueError("if_absent and if_version exclude each other")
    r = cache_pb2.SetRequest(namespace=ns, key=key, value=value, tags=list(tags or ()))
    if ttl is not None:
        r.ttl.CopyFrom(to_duration(ttl))
    if stale_ttl is not None:
        r.stale_ttl.CopyFrom(to_duration(stale_ttl))
    if if_absent:
        r.condition.if_absent = True
    elif if_version is not None:
        r.condition.if_version = if_version
    return r


def set_result_of(r: cache_pb2.SetResponse) -> SetResult:
    if r.outcome == cache_pb2.SET_OUTCOME_STORED:
        return SetResult(True, r.version, 0, "stored")
    if r.outcome == cache_pb2.SET_OUTCOME_VERSION_MISMATCH:
        return SetResult(False, 0, r.current_version, "version_mismatch")
    if r.outcome == cache_pb2.SET_OUTCOME_EXISTS:
        return SetResult(False, 0, r.current_version, "exists")
    raise unknown_outcome("set", r.outcome)


def delete_result_of(r: cache_pb2.DeleteResponse) -> DeleteResult:
    names: dict[int, Literal["deleted", "not_found", "version_mismatch"]] = {
        cache_pb2.DELETE_OUTCOME_DELETED: "deleted",
        cache_pb2.DELETE_OUTCOME_NOT_FOUND: "not_found",
        cache_pb2.DELETE_OUTCOME_VERSION_MISMATCH: "version_mismatch",
    }
    if r.outcome not in names:
        raise unknown_outcome("delete", r.outcome)
    return DeleteResult(names[r.outcome], r.current_version)


def unknown_outcome(call: str, outcome: int) -> UnexpectedResponse:
    return UnexpectedResponse(f"unknown {call} outcome {outcome}")


def hit_entry(r: cache_pb2.GetResponse, ser: Serializer[T]) -> Entry[T] | None:
    if r.outcome == cache_pb2.GET_OUTCOME_HIT:
        return entry_of(r.entry, ser)
    if r.outcome in (cache_pb2.GET_OUTCOME_MISS, cache_pb2.GET_OUTCOME_NOT_MODIFIED):
        return None
    raise unknown_outcome("get", r.outcome)


def value_of(e: common_pb2.Entry, ser: Serializer[T]) -> T | None:
    return None if e.absent else ser.loads(e.value)


def encode(ser: Serializer[T], value: T | None) -> bytes | None:
    return None if value is None else ser.dumps(value)


def default_key(func: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """The key `cached` uses without a `key=`: the function's name and its arguments' reprs."""
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in sorted(kwargs.items())]
    return f"{func.__module__}.{func.__qualname__}({','.join(parts)})"


def health_request() -> bytes:
    # grpc.health.v1.HealthCheckRequest{service: ""} encodes to nothing.
    return b""


def health_status_of(data: bytes) -> HealthStatus:
    # grpc.health.v1.HealthCheckResponse is one enum field (tag 1, varint); decoding it here saves
    # a dependency on grpcio-health-checking.
    status = 0
    if len(data) >= 2 and data[0] == 0x08:
        status = data[1]
    return {1: HealthStatus.SERVING, 2: HealthStatus.NOT_SERVING}.get(status, HealthStatus.UNKNOWN)


HEALTH_METHOD = "/grpc.health.v1.Health/Check"


def metadata(token: str | None) -> list[tuple[str, str]]:
    """The metadata of every call: the bearer token and the current trace context."""
    md: list[tuple[str, str]] = []
    if token:
        md.append(("authorization", f"Bearer {token}"))
    md.extend(_traceparent())
    return md


def _traceparent() -> list[tuple[str, str]]:
    if _propagate is None:
        return []
    carrier: dict[str, str] = {}
    _propagate.inject(carrier)
    return [(k, v) for k, v in carrier.items() if k in ("traceparent", "tracestate")]


_propagate: Any
try:  # opentelemetry-api is optional: without it no trace context is sent.
    from opentelemetry import propagate as _propagate
except ImportError:  # pragma: no cover
    _propagate = None


def target_of(address: str) -> str:
    for scheme in ("http://", "https://"):
        if address.startswith(scheme):
            return address[len(scheme) :]
    return address


def sort_many(
    resp: cache_pb2.GetOrSetManyResponse, keys: list[str], ser: Serializer[T]
) -> tuple[list[T | None], list[tuple[int, str | None]]]:
    """The values known now, and the (index, lease token or None) pairs this caller computes."""
    out: list[T | None] = [None] * len(keys)
    compute: list[tuple[int, str | None]] = []
    for i, r in enumerate(resp.results):
        if r.outcome in (cache_pb2.GET_OR_SET_OUTCOME_HIT, cache_pb2.GET_OR_SET_OUTCOME_FILLED):
            out[i] = value_of(r.entry, ser)
            if r.HasField("lease"):
                compute.append((i, r.lease.token))
        elif r.outcome == cache_pb2.GET_OR_SET_OUTCOME_LEASE:
            compute.append((i, r.lease.token))
        elif r.outcome == cache_pb2.GET_OR_SET_OUTCOME_COMPUTE:
            compute.append((i, None))
        else:
            raise unknown_outcome("get_or_set_many", r.outcome)
    return out, compute


def channel_options(options: Iterable[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The caller's channel options, plus the 16 MiB message limits where it set none."""
    opts = list(options)
    given = {name for name, _ in opts}
    for name in ("grpc.max_receive_message_length", "grpc.max_send_message_length"):
        if name not in given:
            opts.append((name, MAX_MESSAGE_BYTES))
    return opts


def deadline_of(timeout: float | None, wait: float | None) -> float | None:
    """Seconds a call may take: the client's timeout, plus the server-side wait it asked for."""
    if timeout is None:
        return None
    return timeout + (wait or 0.0)
