"""The asyncio client: `tiercache.aio.Client`, the same surface as `tiercache.Client` with
coroutines, ``async for`` watches and ``async with`` locks."""

from tiercache.aio._client import Client, Lock, Namespace, Watch

__all__ = ["Client", "Lock", "Namespace", "Watch"]
