"""The client's defaults against hostile or lagging peers: the request timeout, the message size
limits, and the near cache's rule for replies from a replica behind its Watch stream."""

from __future__ import annotations

import socket
import time

import pytest

import tiercache
from tiercache._common import DEFAULT_TIMEOUT, WatchEvent, to_duration
from tiercache._near import NearCache, NearCacheConfig
from tiercache._proto.v1 import common_pb2


def test_calls_to_a_peer_that_never_answers_fail_after_the_default_timeout() -> None:
    assert DEFAULT_TIMEOUT == 5.0
    # Accepts connections (into the kernel's backlog) and never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        host, port = silent.getsockname()
        with tiercache.Client(f"{host}:{port}", retries=0) as c:
            start = time.monotonic()
            with pytest.raises(tiercache.DeadlineExceeded):
                c.namespace("users").get("k")
            took = time.monotonic() - start
    assert DEFAULT_TIMEOUT - 0.1 <= took < DEFAULT_TIMEOUT + 2, took


def test_replies_larger_than_4_mib_are_received_up_to_16_mib(
    clients: list[tiercache.Client], key: str
) -> None:
    ns = clients[0].namespace("default")
    value = b"x" * 1_000_000
    keys = [f"{key}:{i}" for i in range(6)]
    for k in keys:
        ns.set(k, value)
    got = ns.get_many(keys)  # one reply of about 6 MB
    assert all(e is not None and e.value == value for e in got)


def _entry(version: int) -> common_pb2.Entry:
    return common_pb2.Entry(value=b"v", version=version, fresh_remaining=to_duration(60))


def test_near_cache_keeps_no_reply_older_than_its_watch_position() -> None:
    near = NearCache(NearCacheConfig())
    near.apply(WatchEvent(7, "started"))
    near.apply(WatchEvent(8, "key_changed", "k", 3))
    # A replica that had applied only up to 7 answers the value event 8 replaced: not kept.
    near.insert("k", _entry(2), near.ticket("k") or 0, applied_sequence=7)
    assert near.get("k") is None
    assert near.lagging_replies == 1
    # A replica at or past the watch position is trusted.
    near.insert("k", _entry(3), near.ticket("k") or 0, applied_sequence=8)
    hit = near.get("k")
    assert hit is not None and hit.version == 3
