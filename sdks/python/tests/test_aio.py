"""The asyncio client against the same servers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from servers import Cluster

import tiercache
import tiercache.aio


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def aclients(cluster: Cluster) -> AsyncIterator[list[tiercache.aio.Client]]:
    cs = [tiercache.aio.Client(s.address) for s in cluster.replicas]
    yield cs
    for c in cs:
        await c.close()


async def test_basic_calls(aclients: list[tiercache.aio.Client], key: str) -> None:
    ns = aclients[0].namespace("users", tiercache.JSON)
    assert await ns.get(key) is None
    r = await ns.set(key, {"a": 1}, ttl=30, tags=["org:7"])
    assert r.stored
    e = await aclients[1].namespace("users", tiercache.JSON).get(key)
    assert e is not None and e.value == {"a": 1} and e.version == r.version
    assert (await ns.set(key, {}, if_absent=True)).outcome == "exists"
    await ns.set_many({f"{key}b": 2})
    assert [x.value if x else None for x in await ns.get_many([key, f"{key}b", "nope"])] == [
        {"a": 1},
        2,
        None,
    ]
    assert await ns.invalidate_tags(["org:7"]) > 0
    assert await ns.get(key) is None
    assert (await ns.delete(f"{key}b")).outcome == "deleted"
    assert await aclients[0].health() == tiercache.HealthStatus.SERVING
    assert (await aclients[0].stats("users")).namespaces
    assert (await ns.inspect(key)).explanation


async def test_stampede_500_tasks_over_two_replicas_run_the_loader_once(
    aclients: list[tiercache.aio.Client], key: str
) -> None:
    calls = 0

    async def load() -> bytes:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.3)
        return b"the value"

    namespaces = [c.namespace("users") for c in aclients]
    results = await asyncio.gather(
        *(namespaces[i % 2].get_or_set(key, load, max_wait=10) for i in range(500))
    )
    assert results == [b"the value"] * 500
    assert calls == 1


async def test_loader_exception_and_none(aclients: list[tiercache.aio.Client], key: str) -> None:
    ns = aclients[0].namespace("users")

    async def fail() -> bytes:
        raise KeyError("origin")

    with pytest.raises(KeyError):
        await ns.get_or_set(key, fail)
    assert not (await ns.inspect(key)).lease_held

    async def none() -> bytes | None:
        return None

    assert await ns.get_or_set(key, none) is None
    e = await ns.get(key)
    assert e is not None and e.absent


async def test_stale_hit_refreshes_in_the_background(
    aclients: list[tiercache.aio.Client], key: str
) -> None:
    ns = aclients[0].namespace("stale", tiercache.STR)
    await ns.set(key, "old")
    await asyncio.sleep(1.2)

    async def load() -> str:
        return "new"

    assert await ns.get_or_set(key, load) == "old"
    deadline = time.monotonic() + 5
    while (e := await ns.get(key)) is None or e.value != "new":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def test_get_or_set_many(aclients: list[tiercache.aio.Client], key: str) -> None:
    ns = aclients[1].namespace("users", tiercache.JSON)

    async def load(keys: list[str]) -> dict[str, str]:
        return {k: k.upper() for k in keys}

    assert await ns.get_or_set_many([f"{key}a", f"{key}b"], load) == [
        f"{key}a".upper(),
        f"{key}b".upper(),
    ]


async def test_cached_coroutine(aclients: list[tiercache.aio.Client], key: str) -> None:
    ns = aclients[0].namespace("users", tiercache.JSON)
    calls: list[int] = []

    @ns.cached(
        ttl=60,
        key=lambda user_id: f"{key}:user:{user_id}",
        tags=lambda user_id: [f"{key}:user:{user_id}"],
    )
    async def load_user(user_id: int) -> dict[str, int]:
        calls.append(user_id)
        await asyncio.sleep(0.05)
        return {"id": user_id}

    assert list(await asyncio.gather(load_user(1), load_user(1), load_user(2))) == [
        {"id": 1},
        {"id": 1},
        {"id": 2},
    ]
    assert sorted(calls) == [1, 2]
    await ns.invalidate_tags([f"{key}:user:2"])
    assert await load_user(2) == {"id": 2}
    assert sorted(calls) == [1, 2, 2]

    def plain() -> int:
        return 1

    with pytest.raises(TypeError):
        ns.cached()(plain)  # type: ignore[arg-type]


async def test_async_lock_with_fencing(aclients: list[tiercache.aio.Client], key: str) -> None:
    a = aclients[0].namespace("users")
    b = aclients[1].namespace("users")
    async with a.lock(key, ttl=1.5) as first:
        assert first.fencing_token > 0
        await asyncio.sleep(2.0)  # renewed past its TTL
        assert first.held
        with pytest.raises(tiercache.LockNotAcquired):
            async with b.lock(key, ttl=5, max_wait=0):
                pass
    async with b.lock(key, ttl=5) as second:
        assert second.fencing_token > first.fencing_token


async def test_watch_and_near_cache(aclients: list[tiercache.aio.Client], key: str) -> None:
    name = f"anear{key}"
    near = aclients[0].namespace(name, tiercache.STR, near_cache=True)
    other = aclients[1].namespace(name, tiercache.STR)
    watch = other.watch()
    events: list[tiercache.WatchEvent] = []

    async def read() -> None:
        async for ev in watch:
            events.append(ev)
            if ev.kind == "tags_invalidated":
                return

    reader = asyncio.create_task(read())
    await near.get("k")  # starts the near cache's watch
    deadline = time.monotonic() + 5
    while near.near is None or not near.near.active or not events:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await other.set("k", "v", tags=["t"])
    while (e := await near.get("k")) is None or e.tier != "near":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await other.invalidate_tags(["t"])
    while await near.get("k") is not None:
        assert time.monotonic() < deadline, "tag invalidation never reached the near cache"
        await asyncio.sleep(0.02)
    await asyncio.wait_for(reader, 5)
    watch.close()
    await near.close()
    assert [e.kind for e in events] == ["started", "key_changed", "tags_invalidated"]
