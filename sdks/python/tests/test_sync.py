"""The sync client against two real replicas on one real Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from servers import Cluster

import tiercache


def test_set_get_delete_with_conditions(clients: list[tiercache.Client], key: str) -> None:
    ns = clients[0].namespace("users")
    assert ns.get(key) is None
    r = ns.set(key, b"v1", ttl=30, tags=["org:7"])
    assert r.stored and r.version > 0
    e = ns.get(key)
    assert e is not None
    assert (e.value, e.version, e.stale, e.tags) == (b"v1", r.version, False, ("org:7",))
    assert 0 < e.ttl_remaining <= 30
    assert e.tier in ("l1", "l2")
    # The other replica sees it through Redis.
    other = clients[1].namespace("users").get(key)
    assert other is not None and other.value == b"v1"

    exists = ns.set(key, b"v2", if_absent=True)
    assert not exists and exists.outcome == "exists" and exists.current_version == r.version
    mismatch = ns.set(key, b"v2", if_version=r.version + 1000)
    assert mismatch.outcome == "version_mismatch"
    ok = ns.set(key, b"v2", if_version=r.version, ttl=timedelta(minutes=1))
    assert ok.stored and ok.version > r.version

    assert ns.delete(key, if_version=r.version).outcome == "version_mismatch"
    assert ns.delete(key, if_version=ok.version)
    assert ns.delete(key).outcome == "not_found"
    assert ns.get(key) is None


def test_serializers_and_batches(clients: list[tiercache.Client], key: str) -> None:
    js = clients[0].namespace("users", tiercache.JSON)
    js.set_many({f"{key}a": {"id": 1}, f"{key}b": [1, 2]})
    got = js.get_many([f"{key}a", f"{key}b", f"{key}c"])
    assert [g.value if g else None for g in got] == [{"id": 1}, [1, 2], None]
    st = clients[1].namespace("users", tiercache.STR)
    st.set(key, "héllo")
    e = st.get(key)
    assert e is not None and e.value == "héllo"
    with pytest.raises(TypeError):
        clients[0].namespace("users").set(key, "not bytes")  # type: ignore[arg-type]


def test_get_or_set_runs_the_loader_once_and_caches_none(
    clients: list[tiercache.Client], key: str
) -> None:
    ns = clients[0].namespace("users", tiercache.JSON)
    calls = []

    def load() -> dict[str, int]:
        calls.append(1)
        return {"n": 1}

    assert ns.get_or_set(key, load, ttl=60, tags=["t"]) == {"n": 1}
    assert ns.get_or_set(key, load) == {"n": 1}
    assert clients[1].namespace("users", tiercache.JSON).get_or_set(key, load) == {"n": 1}
    assert len(calls) == 1

    # None is cached as absent (negative caching): the loader does not run again.
    none_calls = []

    def missing() -> None:
        none_calls.append(1)
        return None

    assert ns.get_or_set(key + "none", missing) is None
    assert ns.get_or_set(key + "none", missing) is None
    assert len(none_calls) == 1
    e = ns.get(key + "none")
    assert e is not None and e.absent and e.value is None


def test_loader_exception_releases_the_lease_and_is_not_cached(
    clients: list[tiercache.Client], key: str
) -> None:
    ns = clients[0].namespace("users")

    class Boom(Exception):
        pass

    def fail() -> bytes:
        raise Boom("origin down")

    t0 = time.monotonic()
    with pytest.raises(Boom):
        ns.get_or_set(key, fail)
    assert ns.get(key) is None
    assert not ns.inspect(key).lease_held
    # The next caller gets a lease at once (not after the 10 s lease TTL) and computes.
    assert clients[1].namespace("users").get_or_set(key, lambda: b"ok") == b"ok"
    assert time.monotonic() - t0 < 3


def test_waiters_get_the_pushed_value(clients: list[tiercache.Client], key: str) -> None:
    started = threading.Event()
    results: list[bytes | None] = []

    def slow() -> bytes:
        started.set()
        time.sleep(0.5)
        return b"computed"

    def never() -> bytes:
        raise AssertionError("a waiter must not run the loader")

    holder = threading.Thread(
        target=lambda: results.append(clients[0].namespace("users").get_or_set(key, slow))
    )
    holder.start()
    started.wait(5)
    results.append(clients[1].namespace("users").get_or_set(key, never))
    holder.join()
    assert results == [b"computed", b"computed"]


def test_stampede_500_threads_over_two_replicas_run_the_loader_once(
    clients: list[tiercache.Client], key: str
) -> None:
    calls = 0
    lock = threading.Lock()

    def load() -> bytes:
        nonlocal calls
        with lock:
            calls += 1
        time.sleep(0.3)
        return b"the value"

    namespaces = [c.namespace("users") for c in clients]
    barrier = threading.Barrier(500)

    def one(i: int) -> bytes | None:
        barrier.wait()
        return namespaces[i % 2].get_or_set(key, load, max_wait=10)

    with ThreadPoolExecutor(max_workers=500) as pool:
        results = list(pool.map(one, range(500)))
    assert results == [b"the value"] * 500
    assert calls == 1


def test_stale_hit_is_returned_at_once_and_refreshed_in_the_background(
    clients: list[tiercache.Client], key: str
) -> None:
    ns = clients[0].namespace("stale", tiercache.STR)
    ns.set(key, "old")  # fresh for 1 s, then stale for 60 s
    time.sleep(1.2)
    refreshed = threading.Event()

    def load() -> str:
        refreshed.set()
        return "new"

    t0 = time.monotonic()
    assert ns.get_or_set(key, load) == "old"
    assert time.monotonic() - t0 < 0.5
    assert refreshed.wait(5)
    deadline = time.monotonic() + 5
    while (e := ns.get(key)) is None or e.value != "new":
        assert time.monotonic() < deadline, "the background refresh never filled"
        time.sleep(0.05)
    assert not e.stale


def test_get_or_set_many(clients: list[tiercache.Client], key: str) -> None:
    ns = clients[0].namespace("users", tiercache.JSON)
    ns.set(f"{key}:1", 1)
    asked: list[list[str]] = []

    def load(keys: list[str]) -> dict[str, int]:
        asked.append(keys)
        return {k: int(k.rsplit(":", 1)[1]) for k in keys if not k.endswith(":3")}

    keys = [f"{key}:1", f"{key}:2", f"{key}:3"]
    assert ns.get_or_set_many(keys, load) == [1, 2, None]
    assert asked == [[f"{key}:2", f"{key}:3"]]
    # The left-out key was cached as absent; nothing is computed again.
    assert clients[1].namespace("users", tiercache.JSON).get_or_set_many(keys, load) == [1, 2, None]
    assert len(asked) == 1


def test_cached_decorator(clients: list[tiercache.Client], key: str) -> None:
    ns = clients[0].namespace("users", tiercache.JSON)
    calls: list[int] = []

    @ns.cached(
        ttl=60,
        key=lambda user_id: f"{key}:user:{user_id}",
        tags=lambda user_id: [f"{key}:user:{user_id}"],
    )
    def load_user(user_id: int) -> dict[str, int]:
        calls.append(user_id)
        return {"id": user_id}

    assert load_user(1) == {"id": 1}
    assert load_user(1) == {"id": 1}
    assert load_user(2) == {"id": 2}
    assert calls == [1, 2]
    ns.invalidate_tags([f"{key}:user:1"])
    assert load_user(1) == {"id": 1}
    assert calls == [1, 2, 1]

    async def coro() -> None:
        pass

    with pytest.raises(TypeError):
        ns.cached()(coro)


def test_invalidate_tags_and_flush(clients: list[tiercache.Client], key: str) -> None:
    a = clients[0].namespace(f"fl{key}")
    b = clients[1].namespace(f"fl{key}")
    a.set("x", b"1", tags=["org:7"])
    a.set("y", b"2", tags=["org:8"])
    assert b.get("x") is not None
    seq = b.invalidate_tags(["org:7"])
    assert seq > 0
    assert b.get("x") is None
    # Replica A learns of B's invalidation through Redis pub/sub: a moment later at most.
    eventually(lambda: a.get("x") is None)
    assert a.get("y") is not None
    assert a.flush() > seq
    assert a.get("y") is None
    eventually(lambda: b.get("y") is None)


def eventually(check: Callable[[], bool], seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.02)


def test_near_cache_is_kept_coherent_by_watch(clients: list[tiercache.Client], key: str) -> None:
    name = f"near{key}"
    near = clients[0].namespace(name, near_cache=True)
    other = clients[1].namespace(name)
    assert near.near is not None
    deadline = time.monotonic() + 5
    while not near.near.active:
        assert time.monotonic() < deadline, "watch never started"
        time.sleep(0.02)
    other.set("k", b"v1", tags=["org:7"])
    # A read that races with the write's own event does not store; the next one does.
    deadline = time.monotonic() + 5
    while (e := near.get("k")) is None or e.tier != "near":
        assert time.monotonic() < deadline, "the near cache never kept the entry"
        time.sleep(0.02)
    assert e.value == b"v1"

    other.invalidate_tags(["org:7"])  # from the other replica: reaches us through Redis
    deadline = time.monotonic() + 5
    while near.get("k") is not None:
        assert time.monotonic() < deadline, "the tag invalidation never reached the near cache"
        time.sleep(0.02)
    assert near.get("k") is None
    other.set("k", b"v2")
    deadline = time.monotonic() + 5
    while (e := near.get("k")) is None or e.value != b"v2":
        assert time.monotonic() < deadline, "the write never reached the near cache"
        time.sleep(0.02)
    near.close()


def test_locks_with_fencing(clients: list[tiercache.Client], key: str) -> None:
    a = clients[0].namespace("users")
    b = clients[1].namespace("users")
    with a.lock(key, ttl=1.5) as first:
        assert first.held and first.fencing_token > 0
        # Held across replicas, and renewed past its TTL.
        with pytest.raises(tiercache.LockNotAcquired), b.lock(key, ttl=5, max_wait=0):
            pass
        time.sleep(2.0)
        assert first.held
        assert not b.lock(key, ttl=5, max_wait=0.2).acquire()
    with b.lock(key, ttl=5, max_wait=1) as second:
        assert second.fencing_token > first.fencing_token
    assert not second.held and not second.release()


def test_watch_sees_events(clients: list[tiercache.Client], key: str) -> None:
    ns = clients[0].namespace(f"w{key}")
    events: list[tiercache.WatchEvent] = []
    watch = ns.watch()
    started = threading.Event()

    def read() -> None:
        for ev in watch:
            events.append(ev)
            if ev.kind == "started":
                started.set()
            if ev.kind == "flushed":
                return

    t = threading.Thread(target=read)
    t.start()
    assert started.wait(5)
    w = clients[1].namespace(f"w{key}")
    w.set("a", b"1")
    w.invalidate_tags(["t"])
    w.flush()
    t.join(5)
    watch.close()
    kinds = [e.kind for e in events]
    assert kinds == ["started", "key_changed", "tags_invalidated", "flushed"]
    assert events[1].key == "a" and events[2].tags == ("t",)
    seqs = [e.sequence for e in events]
    assert seqs[1:] == list(range(seqs[1], seqs[1] + 3))


def test_stats_inspect_health(clients: list[tiercache.Client], cluster: Cluster, key: str) -> None:
    c = clients[0]
    assert c.health() == tiercache.HealthStatus.SERVING
    ns = c.namespace("users")
    ns.set(key, b"x")
    stats = c.stats("users")
    assert stats.namespaces[0].sets >= 1
    assert not stats.degraded
    info = ns.inspect(key)
    assert info.explanation
    assert any(n.name == "users" for n in c.list_namespaces())
