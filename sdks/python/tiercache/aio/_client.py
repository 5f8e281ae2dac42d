"""The asyncio twin of tiercache._sync: the same calls, rules and defaults."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, Generic, ParamSpec, TypeVar, overload

import grpc
import grpc.aio

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
from tiercache._near import NearCache, NearCacheConfig
from tiercache._proto.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    cache_pb2,
    cache_pb2_grpc,
    lock_pb2_grpc,
)
from tiercache._tls import TlsConfig, channel_setup, check_token
from tiercache.aio._lock import Lock
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

# Background tasks (refreshes, lease releases) are kept here so they are not collected mid-run.
_tasks: set[asyncio.Task[Any]] = set()


def _spawn(coro: Awaitable[Any]) -> asyncio.Task[Any]:
    task: asyncio.Task[Any] = asyncio.ensure_future(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


class Client:
    """The asyncio client; see `tiercache.Client` for the arguments. Use it from one event loop."""

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
            self._channel = grpc.aio.insecure_channel(target, options=opts)
        else:
            self._channel = grpc.aio.secure_channel(target, creds, options=opts)
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
        return Namespace(self, name, serializer, near_cache)

    async def stats(self, namespace: str = "") -> admin_pb2.GetStatsResponse:
        req = admin_pb2.GetStatsRequest(namespace=namespace)
        r: admin_pb2.GetStatsResponse = await self.call(self.admin.GetStats, req, True)
        return r

    async def list_namespaces(self) -> list[admin_pb2.NamespaceInfo]:
        r = await self.call(self.admin.ListNamespaces, admin_pb2.ListNamespacesRequest(), True)
        return list(r.namespaces)

    async def health(self) -> HealthStatus:
        return c.health_status_of(await self.call(self._health, c.health_request(), True))

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(
        self,
        method: Callable[..., Any],
        req: Any,
        idempotent: bool,
        *,
        wait: float | None = None,
    ) -> Any:
        """One unary call; see `tiercache.Client.call`."""
        timeout = c.deadline_of(self.timeout, wait)
        deadline = None if timeout is None else time.monotonic() + timeout
        n = 0
        while True:
            n += 1
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceeded("request timeout elapsed")
            try:
                return await method(req, timeout=remaining, metadata=c.metadata(self._token))
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
            await asyncio.sleep(pause)


class Namespace(Generic[T]):
    """One namespace of an asyncio `Client`."""

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
        self._near_task: asyncio.Task[None] | None = None
        if near_cache:
            cfg = near_cache if isinstance(near_cache, NearCacheConfig) else NearCacheConfig()
            self.near = NearCache(cfg)

    def _near(self) -> NearCache | None:
        # The watch task needs a running loop, so it starts on the namespace's first call.
        if self.near is not None and self._near_task is None:
            self._near_task = asyncio.get_running_loop().create_task(self._run_near())
        return self.near

    async def get(self, key: str, *, fresh_only: bool = False) -> Entry[T] | None:
        near = self._near()
        if near is not None and not fresh_only:
            hit = near.get(key)
            if hit is not None:
                return dataclasses.replace(c.entry_of(hit, self.serializer), tier="near")
        ticket = near.ticket(key) if near is not None else None
        r = await self.client.call(
            self.client.cache.Get,
            cache_pb2.GetRequest(namespace=self.name, key=key, fresh_only=fresh_only),
            True,
        )
        if near is not None and ticket is not None and r.outcome == cache_pb2.GET_OUTCOME_HIT:
            near.insert(key, r.entry, ticket, r.applied_sequence)
        return c.hit_entry(r, self.serializer)

    async def get_many(
        self, keys: Iterable[str], *, fresh_only: bool = False
    ) -> list[Entry[T] | None]:
        req = cache_pb2.GetManyRequest(namespace=self.name, keys=list(keys), fresh_only=fresh_only)
        r = await self.client.call(self.client.cache.GetMany, req, True)
        return [c.hit_entry(x, self.serializer) for x in r.results]

    async def set(
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
        return c.set_result_of(await self.client.call(self.client.cache.Set, req, False))

    async def set_many(
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
        r = await self.client.call(
            self.client.cache.SetMany, cache_pb2.SetManyRequest(requests=reqs), False
        )
        return [c.set_result_of(x) for x in r.responses]

    async def delete(self, key: str, *, if_version: int | None = None) -> DeleteResult:
        req = cache_pb2.DeleteRequest(namespace=self.name, key=key)
        if if_version is not None:
            req.if_version = if_version
        return c.delete_result_of(await self.client.call(self.client.cache.Delete, req, False))

    async def invalidate_tags(self, tags: Iterable[str]) -> int:
        req = cache_pb2.InvalidateTagsRequest(namespace=self.name, tags=list(tags))
        r = await self.client.call(self.client.cache.InvalidateTags, req, False)
        return int(r.sequence)

    async def flush(self) -> int:
        req = cache_pb2.FlushNamespaceRequest(namespace=self.name)
        r = await self.client.call(self.client.cache.FlushNamespace, req, False)
        return int(r.sequence)

    async def inspect(self, key: str) -> admin_pb2.InspectResponse:
        req = admin_pb2.InspectRequest(namespace=self.name, key=key)
        r: admin_pb2.InspectResponse = await self.client.call(self.client.admin.Inspect, req, True)
        return r

    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], Awaitable[T | None]],
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
        """See `tiercache.Namespace.get_or_set`; ``loader`` is a coroutine function here, and a
        background refresh runs as a task."""
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
        near = self._near()
        if near is not None:
            hit = near.get(key)
            if hit is not None:
                return c.value_of(hit, self.serializer)
        ticket = near.ticket(key) if near is not None else None
        wait = c.seconds_of(max_wait) if max_wait is not None else c.SERVER_DEFAULT_MAX_WAIT
        r = await self.client.call(
            self.client.cache.GetOrSet, c.get_or_set_request(self.name, key, o), False, wait=wait
        )
        if r.outcome in (cache_pb2.GET_OR_SET_OUTCOME_HIT, cache_pb2.GET_OR_SET_OUTCOME_FILLED):
            if near is not None and ticket is not None:
                near.insert(key, r.entry, ticket, r.applied_sequence)
            if r.HasField("lease"):
                _spawn(self._refresh(key, r.lease.token, loader, o))
            return c.value_of(r.entry, self.serializer)
        if r.outcome == cache_pb2.GET_OR_SET_OUTCOME_LEASE:
            if not r.HasField("lease"):
                raise c.unknown_outcome("get_or_set (a lease without a token)", r.outcome)
            token = r.lease.token
            try:
                value = await loader()
                data = c.encode(self.serializer, value)
            except BaseException:
                # Also on cancellation: shielded, so a waiter takes over at once.
                await asyncio.shield(_spawn(self._release(key, token)))
                raise
            await self._fill(c.fill_request(self.name, key, token, data, o))
            if near is not None:
                near.forget(key)
            return value
        if r.outcome == cache_pb2.GET_OR_SET_OUTCOME_COMPUTE:
            return await loader()
        raise c.unknown_outcome("get_or_set", r.outcome)

    async def get_or_set_many(
        self,
        keys: Iterable[str],
        loader: Callable[[list[str]], Awaitable[Mapping[str, T]]],
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
        """See `tiercache.Namespace.get_or_set_many`."""
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
        resp = await self.client.call(
            self.client.cache.GetOrSetMany,
            c.get_or_set_many_request(self.name, keys, o),
            False,
            wait=wait,
        )
        out, compute = c.sort_many(resp, keys, self.serializer)
        if not compute:
            return out
        try:
            values = await loader([keys[i] for i, _ in compute])
            encoded = {k: c.encode(self.serializer, v) for k, v in values.items()}
        except BaseException:
            for i, token in compute:
                if token is not None:
                    await asyncio.shield(_spawn(self._release(keys[i], token)))
            raise
        fills = []
        for i, token in compute:
            if token is not None:
                fills.append(c.fill_request(self.name, keys[i], token, encoded.get(keys[i]), o))
            out[i] = values.get(keys[i])
        if fills:
            try:
                await self.client.call(
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
    ) -> Callable[[Callable[P, Awaitable[T | None]]], Callable[P, Awaitable[T | None]]]:
        """Decorates a coroutine function so its result is cached with `get_or_set`."""

        def wrap(func: Callable[P, Awaitable[T | None]]) -> Callable[P, Awaitable[T | None]]:
            if not inspect.iscoroutinefunction(func):
                raise TypeError("tiercache.aio caches coroutine functions; use tiercache.Client")

            @functools.wraps(func)
            async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T | None:
                k = key(*args, **kwargs) if key else c.default_key(func, args, kwargs)
                t = list(tags(*args, **kwargs)) if tags else None
                return await self.get_or_set(
                    k, lambda: func(*args, **kwargs), ttl=ttl, stale_ttl=stale_ttl, tags=t
                )

            return wrapper

        return wrap

    async def _refresh(
        self, key: str, token: str, loader: Callable[[], Awaitable[T | None]], o: FillOptions
    ) -> None:
        try:
            data = c.encode(self.serializer, await loader())
        except Exception as e:  # noqa: BLE001 - the stale value keeps serving; say why
            log.warning(
                "background refresh of %s/%s failed; the stale value keeps serving: %s",
                self.name,
                key,
                e,
            )
            await self._release(key, token)
            return
        await self._fill(c.fill_request(self.name, key, token, data, o))

    async def _fill(self, req: cache_pb2.FillRequest) -> None:
        try:
            r = await self.client.call(self.client.cache.Fill, req, False)
            if r.outcome != cache_pb2.FILL_OUTCOME_STORED:
                log.debug("fill of %s/%s not stored: outcome %d", req.namespace, req.key, r.outcome)
        except TiercacheError as e:
            log.warning("cannot fill tiercache entry %s/%s: %s", req.namespace, req.key, e)

    async def _release(self, key: str, token: str) -> None:
        req = cache_pb2.ReleaseLeaseRequest(namespace=self.name, key=key, lease_token=token)
        try:
            await self.client.call(self.client.cache.ReleaseLease, req, False)
        except TiercacheError as e:
            log.warning("cannot release tiercache lease %s/%s: %s", self.name, key, e)

    def lock(
        self, name: str, ttl: Seconds = 10, *, max_wait: Seconds = c.DEFAULT_LOCK_WAIT
    ) -> Lock:
        """``async with ns.lock("nightly", ttl=10) as lock: lock.fencing_token``."""
        return Lock(self, name, c.seconds_of(ttl), c.seconds_of(max_wait))

    def watch(self) -> Watch:
        """``async for event in ns.watch()``; ``close()`` ends the stream."""
        call = self.client.cache.Watch(
            cache_pb2.WatchRequest(namespace=self.name), metadata=c.metadata(self.client._token)
        )
        return Watch(call)

    async def _run_near(self) -> None:
        assert self.near is not None
        pause = 0.05
        while True:
            try:
                async for ev in self.watch():
                    self.near.apply(ev)
                    pause = 0.05
            except TiercacheError as e:
                log.debug("near cache watch of %s ended: %s", self.name, e)
            self.near.stop()
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)

    async def close(self) -> None:
        """Stops the near cache's watch task, if any."""
        if self._near_task is not None:
            self._near_task.cancel()
            self._near_task = None


class Watch:
    """An open Watch stream: ``async for`` it for `WatchEvent`s; ``close()`` ends it."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[WatchEvent]:
        try:
            async for r in self._call:
                ev = c.watch_event_of(r)
                if ev is not None:
                    yield ev
        except grpc.RpcError as e:
            if self._call.cancelled():
                return
            raise from_rpc_error(e) from None

    def close(self) -> None:
        self._call.cancel()
