"""The blocking client: `tiercache.Client`, its `Namespace`, locks and watches."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, ParamSpec, TypeVar, overload

import grpc

from tiercache import _common as c
from tiercache._common import (
    BYTES,
    DeleteResult,
    Entry,
    FillOptions,
    HealthStatus,
    OnWaitTimeout,
    RetryPolicy,
    Seconds,
    Serializer,
    SetResult,
    WatchEvent,
)
from tiercache._lock import Lock
from tiercache._near import NearCache, NearCacheConfig
from tiercache._proto.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    cache_pb2,
    cache_pb2_grpc,
    lock_pb2_grpc,
)
from tiercache._tls import TlsConfig, channel_setup, check_token
from tiercache.errors import (
    DeadlineExceeded,
    TiercacheError,
    Unavailable,
    from_rpc_error,
)

log = logging.getLogger("tiercache")

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")


class Client:
    """A connection to a tiercache server (or a load balancer in front of replicas).

    ``token`` is sent as ``authorization: Bearer …`` on every call. ``tls`` is ``True`` for TLS
    with the system roots, a `TlsConfig` (a CA instead of the system roots, a client certificate
    and key for mTLS, a server name to check), or a `grpc.ChannelCredentials`; an ``https://``
    address means TLS with the system roots. ``timeout`` (seconds, ``None`` for none) bounds
    every call, its retries included; ``retries`` is how many times an idempotent call is
    retried after UNAVAILABLE (or a `RetryPolicy`). Thread-safe: share one client.
    """

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        *,
        token: str | None = None,
        tls: bool | TlsConfig | grpc.ChannelCredentials = False,
        timeout: float | None = c.DEFAULT_TIMEOUT,
        retries: int | RetryPolicy = 2,
        options: Iterable[tuple[str, Any]] = (),
    ) -> None:
        target = c.target_of(address)
        check_token(token)
        creds, tls_opts = channel_setup(address, tls)
        opts = c.channel_options([*tls_opts, *options])
        if creds is None:
            self._channel = grpc.insecure_channel(target, options=opts)
        else:
            self._channel = grpc.secure_channel(target, creds, options=opts)
        self._token = token
        self.timeout = timeout
        self.retry = c.retry_policy_of(retries)
        self.cache = cache_pb2_grpc.CacheServiceStub(self._channel)
        self.locks = lock_pb2_grpc.LockServiceStub(self._channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self._channel)
        self._health = self._channel.unary_unary(
            c.HEALTH_METHOD,
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )

    @overload
    def namespace(
        self, name: str, *, near_cache: bool | NearCacheConfig = False
    ) -> Namespace[bytes]: ...

    @overload
    def namespace(
        self, name: str, serializer: Serializer[T], *, near_cache: bool | NearCacheConfig = False
    ) -> Namespace[T]: ...

    def namespace(
        self,
        name: str,
        serializer: Serializer[Any] = BYTES,
        *,
        near_cache: bool | NearCacheConfig = False,
    ) -> Namespace[Any]:
        """A handle on one namespace; values go through ``serializer`` (BYTES, STR, JSON…).

        ``near_cache=True`` (or a `NearCacheConfig`) keeps fresh entries in this process, kept
        coherent by the namespace's Watch stream.
        """
        return Namespace(self, name, serializer, near_cache)

    def stats(self, namespace: str = "") -> admin_pb2.GetStatsResponse:
        """The server's counters (all namespaces, or one) and its storage mode."""
        return self.call(self.admin.GetStats, admin_pb2.GetStatsRequest(namespace=namespace), True)

    def list_namespaces(self) -> list[admin_pb2.NamespaceInfo]:
        r = self.call(self.admin.ListNamespaces, admin_pb2.ListNamespacesRequest(), True)
        return list(r.namespaces)

    def health(self) -> HealthStatus:
        """Asks the standard gRPC health service whether the server is serving."""
        return c.health_status_of(self.call(self._health, c.health_request(), True))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(
        self,
        method: Callable[..., R],
        req: Any,
        idempotent: bool,
        *,
        wait: float | None = None,
    ) -> R:
        """One unary call under the client's deadline; idempotent calls retried on UNAVAILABLE.

        ``wait`` is how long the server may block the call on purpose (a GetOrSet waiter, a lock
        wait): the deadline is stretched to cover it.
        """
        timeout = c.deadline_of(self.timeout, wait)
        deadline = None if timeout is None else time.monotonic() + timeout
        n = 0
        while True:
            n += 1
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceeded("request timeout elapsed")
            try:
                return method(req, timeout=remaining, metadata=c.metadata(self._token))
            except grpc.RpcError as e:
                err = from_rpc_error(e)
                if (
                    not idempotent
                    or not isinstance(err, Unavailable)
                    or n >= self.retry.max_attempts
                ):
                    raise err from None
            pause = max(self.retry.backoff(n), err.retry_after or 0.0)
            if deadline is not None and time.monotonic() + pause >= deadline:
                raise err
            log.debug("retrying tiercache call (attempt %d) after %.3fs: %s", n, pause, err)
            time.sleep(pause)

    def stream(self, method: Callable[..., Any], req: Any) -> Any:
        """Opens a server stream (no deadline: it lives until cancelled)."""
        return method(req, metadata=c.metadata(self._token))


class Namespace(Generic[T]):
    """One namespace of a `Client`; every call names it."""

    def __init__(
        self,
        client: Client,
        name: str,
        serializer: Serializer[T],
        near_cache: bool | NearCacheConfig = False,
    ) -> None:
        self.client = client
        self.name = name
        self.serializer = serializer
        self.near: NearCache | None = None
        self._closed = threading.Event()
        self._watch: Watch | None = None
        if near_cache:
            cfg = near_cache if isinstance(near_cache, NearCacheConfig) else NearCacheConfig()
            self.near = NearCache(cfg)
            self._near_thread = threading.Thread(
                target=self._run_near, name=f"tiercache-near-{name}", daemon=True
            )
            self._near_thread.start()

    # --- reads and writes ------------------------------------------------------------------

    def get(self, key: str, *, fresh_only: bool = False) -> Entry[T] | None:
        """The entry under ``key``, or ``None`` on a miss (a negative entry has ``absent``)."""
        if self.near is not None and not fresh_only:
            hit = self.near.get(key)
            if hit is not None:
                return dataclasses.replace(c.entry_of(hit, self.serializer), tier="near")
        ticket = self.near.ticket(key) if self.near is not None else None
        r = self.client.call(
            self.client.cache.Get,
            cache_pb2.GetRequest(namespace=self.name, key=key, fresh_only=fresh_only),
            True,
        )
        if self.near is not None and ticket is not None and r.outcome == cache_pb2.GET_OUTCOME_HIT:
            self.near.insert(key, r.entry, ticket, r.applied_sequence)
        return c.hit_entry(r, self.serializer)

    def get_many(self, keys: Iterable[str], *, fresh_only: bool = False) -> list[Entry[T] | None]:
        """One entry (or ``None``) per key, in order."""
        req = cache_pb2.GetManyRequest(namespace=self.name, keys=list(keys), fresh_only=fresh_only)
        r = self.client.call(self.client.cache.GetMany, req, True)
        return [c.hit_entry(x, self.serializer) for x in r.results]

    def set(
        self,
        key: str,
        value: T,
        *,
        ttl: Seconds | None = None,
        stale_ttl: Seconds | None = None,
        tags: Iterable[str] | None = None,
        if_absent: bool = False,
        if_version: int | None = None,
    ) -> SetResult:
        """Writes ``key`` through every tier; ``if_absent`` / ``if_version`` make it conditional."""
        req = c.set_request(
            self.name,
            key,
            self.serializer.dumps(value),
            ttl=ttl,
            stale_ttl=stale_ttl,
            tags=tags,
            if_absent=if_absent,
            if_version=if_version,
        )
        return c.set_result_of(self.client.call(self.client.cache.Set, req, False))

    def set_many(
        self,
        items: Mapping[str, T],
        *,
        ttl: Seconds | None = None,
        stale_ttl: Seconds | None = None,
        tags: Iterable[str] | None = None,
    ) -> list[SetResult]:
        tag_list = list(tags or ())
        reqs = [
            c.set_request(
                self.name,
                k,
                self.serializer.dumps(v),
                ttl=ttl,
                stale_ttl=stale_ttl,
                tags=tag_list,
                if_absent=False,
                if_version=None,
            )
            for k, v in items.items()
        ]
        r = self.client.call(
            self.client.cache.SetMany, cache_pb2.SetManyRequest(requests=reqs), False
        )
        return [c.set_result_of(x) for x in r.responses]

    def delete(self, key: str, *, if_version: int | None = None) -> DeleteResult:
        req = cache_pb2.DeleteRequest(namespace=self.name, key=key)
        if if_version is not None:
            req.if_version = if_version
        return c.delete_result_of(self.client.call(self.client.cache.Delete, req, False))

    def invalidate_tags(self, tags: Iterable[str]) -> int:
        """Hides every entry carrying any of ``tags``; returns the namespace sequence taken."""
        req = cache_pb2.InvalidateTagsRequest(namespace=self.name, tags=list(tags))
        return self.client.call(self.client.cache.InvalidateTags, req, False).sequence

    def flush(self) -> int:
        """Hides every entry of the namespace; returns the namespace sequence taken."""
        req = cache_pb2.FlushNamespaceRequest(namespace=self.name)
        return self.client.call(self.client.cache.FlushNamespace, req, False).sequence

    def inspect(self, key: str) -> admin_pb2.InspectResponse:
        """Explains ``key``: which tiers hold it, whether and why it is visible, any lease."""
        req = admin_pb2.InspectRequest(namespace=self.name, key=key)
        return self.client.call(self.client.admin.Inspect, req, True)

    # --- the lease protocol ----------------------------------------------------------------

    def get_or_set(
        self,
        key: str,
        loader: Callable[[], T | None],
        *,
        ttl: Seconds | None = None,
        stale_ttl: Seconds | None = None,
        tags: Iterable[str] | None = None,
        max_wait: Seconds | None = None,
        allow_stale: bool = True,
        refresh_stale: bool = True,
        on_wait_timeout: OnWaitTimeout = "compute",
        lease_ttl: Seconds | None = None,
    ) -> T | None:
        """The value under ``key``, computed by ``loader()`` on a miss, with stampede protection
        across every client of the fleet: of all concurrent callers one gets the lease and runs
        ``loader``; the others wait and get its value pushed.

        - ``loader`` returning ``None`` caches "does not exist" (a negative entry, for the
          namespace's negative TTL); later callers get ``None`` without calling it.
        - An exception from ``loader`` releases the lease (a waiter takes over) and is re-raised;
          nothing is cached.
        - A stale hit is returned at once; when this caller got the refresh lease, ``loader``
          runs in a background thread that fills the entry.
        - When the server says compute without a lease (the wait bound passed, or it cannot
          store right now), ``loader`` runs and its value is returned, not stored.
        """
        o = FillOptions(
            ttl,
            stale_ttl,
            list(tags or ()),
            max_wait,
            allow_stale,
            refresh_stale,
            on_wait_timeout,
            lease_ttl,
        )
        if self.near is not None:
            hit = self.near.get(key)
            if hit is not None:
                return c.value_of(hit, self.serializer)
        ticket = self.near.ticket(key) if self.near is not None else None
        wait = c.seconds_of(max_wait) if max_wait is not None else c.SERVER_DEFAULT_MAX_WAIT
        r = self.client.call(
            self.client.cache.GetOrSet, c.get_or_set_request(self.name, key, o), False, wait=wait
        )
        if r.outcome in (cache_pb2.GET_OR_SET_OUTCOME_HIT, cache_pb2.GET_OR_SET_OUTCOME_FILLED):
            if self.near is not None and ticket is not None:
                self.near.insert(key, r.entry, ticket, r.applied_sequence)
            if r.HasField("lease"):
                threading.Thread(
                    target=self._refresh,
                    args=(key, r.lease.token, loader, o),
                    name=f"tiercache-refresh-{key}",
                    daemon=True,
                ).start()
            return c.value_of(r.entry, self.serializer)
        if r.outcome == cache_pb2.GET_OR_SET_OUTCOME_LEASE:
            if not r.HasField("lease"):
                raise c.unknown_outcome("get_or_set (a lease without a token)", r.outcome)
            token = r.lease.token
            try:
                value = loader()
                data = c.encode(self.serializer, value)
            except BaseException:
                self._release(key, token)
                raise
            self._fill(c.fill_request(self.name, key, token, data, o))
            if self.near is not None:
                self.near.forget(key)
            return value
        if r.outcome == cache_pb2.GET_OR_SET_OUTCOME_COMPUTE:
            return loader()
        raise c.unknown_outcome("get_or_set", r.outcome)

    def get_or_set_many(
        self,
        keys: Iterable[str],
        loader: Callable[[list[str]], Mapping[str, T]],
        *,
        ttl: Seconds | None = None,
        stale_ttl: Seconds | None = None,
        tags: Iterable[str] | None = None,
        max_wait: Seconds | None = None,
        allow_stale: bool = True,
        refresh_stale: bool = True,
        on_wait_timeout: OnWaitTimeout = "compute",
        lease_ttl: Seconds | None = None,
    ) -> list[T | None]:
        """The batch form of `get_or_set`: one GetOrSetMany, then **one** ``loader(keys)`` call
        with exactly the keys this caller must compute, then one FillMany for the leased ones.

        A key the returned mapping leaves out is cached as absent and reads as ``None``. On an
        exception every lease is released, nothing is cached, and the exception re-raised.
        """
        keys = list(keys)
        o = FillOptions(
            ttl,
            stale_ttl,
            list(tags or ()),
            max_wait,
            allow_stale,
            refresh_stale,
            on_wait_timeout,
            lease_ttl,
        )
        wait = c.seconds_of(max_wait) if max_wait is not None else c.SERVER_DEFAULT_MAX_WAIT
        resp = self.client.call(
            self.client.cache.GetOrSetMany,
            c.get_or_set_many_request(self.name, keys, o),
            False,
            wait=wait,
        )
        out, compute = c.sort_many(resp, keys, self.serializer)
        if not compute:
            return out
        try:
            values = loader([keys[i] for i, _ in compute])
            encoded = {k: c.encode(self.serializer, v) for k, v in values.items()}
        except BaseException:
            for i, token in compute:
                if token is not None:
                    self._release(keys[i], token)
            raise
        fills = []
        for i, token in compute:
            if token is not None:
                fills.append(c.fill_request(self.name, keys[i], token, encoded.get(keys[i]), o))
            out[i] = values.get(keys[i])
        if fills:
            try:
                self.client.call(
                    self.client.cache.FillMany, cache_pb2.FillManyRequest(requests=fills), False
                )
            except TiercacheError as e:
                log.warning("cannot fill tiercache batch in %s: %s", self.name, e)
        return out

    def cached(
        self,
        *,
        ttl: Seconds | None = None,
        key: Callable[..., str] | None = None,
        tags: Callable[..., Iterable[str]] | None = None,
        stale_ttl: Seconds | None = None,
    ) -> Callable[[Callable[P, T | None]], Callable[P, T | None]]:
        """Decorates a function so its result is cached with `get_or_set` under ``key(*args)``
        (default: the function's name and its arguments' reprs), tagged ``tags(*args)``.
        For coroutine functions use the `tiercache.aio` client.
        """

        def wrap(func: Callable[P, T | None]) -> Callable[P, T | None]:
            if inspect.iscoroutinefunction(func):
                raise TypeError(
                    "a coroutine function needs tiercache.aio: use its Namespace.cached"
                )

            @functools.wraps(func)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> T | None:
                k = key(*args, **kwargs) if key else c.default_key(func, args, kwargs)
                t = list(tags(*args, **kwargs)) if tags else None
                return self.get_or_set(
                    k, lambda: func(*args, **kwargs), ttl=ttl, stale_ttl=stale_ttl, tags=t
                )

            return wrapper

        return wrap

    def _refresh(
        self, key: str, token: str, loader: Callable[[], T | None], o: FillOptions
    ) -> None:
        try:
            data = c.encode(self.serializer, loader())
        except Exception as e:  # noqa: BLE001 - the stale value keeps serving; say why
            log.warning(
                "background refresh of %s/%s failed; the stale value keeps serving: %s",
                self.name,
                key,
                e,
            )
            self._release(key, token)
            return
        self._fill(c.fill_request(self.name, key, token, data, o))

    def _fill(self, req: cache_pb2.FillRequest) -> None:
        # A failed or refused fill is logged, not raised: the caller has its value.
        try:
            r = self.client.call(self.client.cache.Fill, req, False)
            if r.outcome != cache_pb2.FILL_OUTCOME_STORED:
                log.debug("fill of %s/%s not stored: outcome %d", req.namespace, req.key, r.outcome)
        except TiercacheError as e:
            log.warning("cannot fill tiercache entry %s/%s: %s", req.namespace, req.key, e)

    def _release(self, key: str, token: str) -> None:
        req = cache_pb2.ReleaseLeaseRequest(namespace=self.name, key=key, lease_token=token)
        try:
            self.client.call(self.client.cache.ReleaseLease, req, False)
        except TiercacheError as e:
            # The lease expires on its own after its TTL.
            log.warning("cannot release tiercache lease %s/%s: %s", self.name, key, e)

    # --- locks and watch -------------------------------------------------------------------

    def lock(
        self, name: str, ttl: Seconds = 10, *, max_wait: Seconds = c.DEFAULT_LOCK_WAIT
    ) -> Lock:
        """A distributed lock: ``with ns.lock("nightly", ttl=10) as lock: lock.fencing_token``.

        Entering waits up to ``max_wait`` and raises `LockNotAcquired` when another owner kept
        it; while held, a background thread renews it every ``ttl / 3``.
        """
        return Lock(self, name, c.seconds_of(ttl), c.seconds_of(max_wait))

    def watch(self) -> Watch:
        """The namespace's invalidation events, from a ``started`` event on; ``close()`` ends it."""
        call = self.client.stream(
            self.client.cache.Watch, cache_pb2.WatchRequest(namespace=self.name)
        )
        return Watch(call)

    def _run_near(self) -> None:
        assert self.near is not None
        pause = 0.05
        while not self._closed.is_set():
            try:
                with self.watch() as events:
                    self._watch = events
                    for ev in events:
                        self.near.apply(ev)
                        pause = 0.05
            except TiercacheError as e:
                log.debug("near cache watch of %s ended: %s", self.name, e)
            except ValueError:
                return  # the client's channel was closed
            finally:
                self.near.stop()
            self._closed.wait(pause)
            pause = min(pause * 2, 2.0)

    def close(self) -> None:
        """Stops the near cache's watch, if any (closing the client stops it too)."""
        self._closed.set()
        if self._watch is not None:
            self._watch.close()


class Watch:
    """An open Watch stream: iterate it for `WatchEvent`s; ``close()`` (or ``with``) ends it."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> Iterator[WatchEvent]:
        try:
            for r in self._call:
                ev = c.watch_event_of(r)
                if ev is not None:
                    yield ev
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.CANCELLED:  # closed by us
                return
            raise from_rpc_error(e) from None

    def close(self) -> None:
        self._call.cancel()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
