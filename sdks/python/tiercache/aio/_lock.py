"""The asyncio client's distributed lock: `Namespace.lock` returns a `Lock`."""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tiercache import _common as c
from tiercache._proto.v1 import lock_pb2
from tiercache.errors import LockNotAcquired, TiercacheError

if TYPE_CHECKING:
    from tiercache.aio._client import Namespace

log = logging.getLogger("tiercache")


class Lock:
    """A distributed lock; see `tiercache.Namespace.lock`. Renewed by a task while held."""

    def __init__(self, ns: Namespace[Any], name: str, ttl: float, max_wait: float) -> None:
        self._ns = ns
        self.name = name
        self.ttl = ttl
        self.max_wait = max_wait
        self.owner_token = ""
        self.fencing_token = 0
        self._renewer: asyncio.Task[None] | None = None
        self._lost = False
        self._held = False

    @property
    def held(self) -> bool:
        return self._held and not self._lost

    async def acquire(self) -> bool:
        req = lock_pb2.AcquireLockRequest(
            namespace=self._ns.name,
            name=self.name,
            ttl=c.to_duration(self.ttl),
            max_wait=c.to_duration(self.max_wait),
        )
        client = self._ns.client
        r = await client.call(client.locks.AcquireLock, req, False, wait=self.max_wait)
        if r.outcome != lock_pb2.ACQUIRE_LOCK_OUTCOME_ACQUIRED:
            return False
        granted = c.from_duration(r.ttl)
        if granted > 0:
            self.ttl = granted
        self.owner_token = r.owner_token
        self.fencing_token = r.fencing_token
        self._held = True
        self._lost = False
        self._renewer = asyncio.get_running_loop().create_task(self._renew())
        return True

    async def release(self) -> bool:
        if not self._held:
            return False
        self._held = False
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None
        req = lock_pb2.ReleaseLockRequest(
            namespace=self._ns.name, name=self.name, owner_token=self.owner_token
        )
        client = self._ns.client
        r = await client.call(client.locks.ReleaseLock, req, False)
        return bool(r.outcome == lock_pb2.LOCK_OWNERSHIP_OUTCOME_OK)

    async def _renew(self) -> None:
        every = max(self.ttl / 3, 0.001)
        client = self._ns.client
        while True:
            await asyncio.sleep(every)
            req = lock_pb2.RenewLockRequest(
                namespace=self._ns.name,
                name=self.name,
                owner_token=self.owner_token,
                ttl=c.to_duration(self.ttl),
            )
            try:
                r = await client.call(client.locks.RenewLock, req, False)
            except TiercacheError as e:
                log.warning("cannot renew tiercache lock %s: %s", self.name, e)
                continue
            if r.outcome != lock_pb2.LOCK_OWNERSHIP_OUTCOME_OK:
                log.warning("tiercache lock %s lost before release", self.name)
                self._lost = True
                return

    async def __aenter__(self) -> Lock:
        if not await self.acquire():
            raise LockNotAcquired(
                f"lock {self.name} still held by another owner after {self.max_wait}s"
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()
