"""get_or_set while the replica's Redis is unreachable (degraded mode): the caller still gets
its loader's value. Whether the server answers COMPUTE (compute without a lease, store nothing)
or a replica-local lease, the SDK follows the outcome: no exception, the loader's value."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
from servers import Redis, Server

import tiercache


def test_get_or_set_returns_the_loader_value_while_redis_is_down(tmp_path: Path) -> None:
    redis = Redis(tmp_path)
    server = Server(tmp_path, redis.url)
    try:
        with tiercache.Client(server.address, timeout=10) as c:
            ns = c.namespace("users")
            ns.set("warm", b"1")
            redis.stop()
            deadline = time.monotonic() + 15
            while not c.stats().degraded:
                assert time.monotonic() < deadline, "the server never noticed redis was gone"
                with contextlib.suppress(tiercache.Unavailable):
                    ns.get("probe")
                time.sleep(0.1)
            calls = []

            def load() -> bytes:
                calls.append(1)
                return b"computed"

            assert ns.get_or_set("cold", load) == b"computed"
            assert calls == [1]
            # Invalidations refuse rather than reach one replica only.
            with pytest.raises(tiercache.Unavailable) as e:
                ns.invalidate_tags(["t"])
            assert e.value.retryable
    finally:
        server.stop()
        redis.stop()
