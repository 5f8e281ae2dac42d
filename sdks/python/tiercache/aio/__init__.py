"""The asyncio client: `tiercache.aio.Client`, the same surface as `tiercache.Client` with
coroutines, ``async for`` watches and ``async with`` locks."""

from tiercache.aio._client import Client, Namespace, Watch
from tiercache.aio._lock import Lock

__all__ = ["Client", "Lock", "Namespace", "Watch"]
