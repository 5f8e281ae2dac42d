"""Sync `get` throughput of the tiercache client against redis-py GET on the same data.

    python bench/get_vs_redis.py [--bin target/release/tiercache] [--keys 1000] [--seconds 5]

Starts its own redis-server and one `tiercache serve` (two-tier, on that Redis), writes the same
keys and values to both (tiercache through `set`, Redis through SET), then reads them in a loop
from one thread for a fixed time with each client and prints requests per second and the ratio.
Both clients do what a Python service would do: one blocking call per read, over loopback.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import time
from pathlib import Path

import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from servers import Redis, Server  # noqa: E402

import tiercache  # noqa: E402
from tiercache._proto.v1 import cache_pb2  # noqa: E402


def run(label: str, read: object, keys: list[str], seconds: float) -> float:
    get = read  # a bound method: the loop below is what the user's code pays per call
    assert callable(get)
    for k in keys[:200]:  # warm up the connection and the server's L1
        get(k)
    n = 0
    rnd = random.Random(1)
    deadline = time.perf_counter() + seconds
    t0 = time.perf_counter()
    while True:
        for _ in range(100):
            get(keys[rnd.randrange(len(keys))])
        n += 100
        if time.perf_counter() >= deadline:
            break
    rate = n / (time.perf_counter() - t0)
    print(f"{label:<28} {rate:>10,.0f} gets/s  ({1e6 / rate:.0f} us/get)")
    return rate


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bin", help="the tiercache binary (default: $TIERCACHE_BIN or debug build)")
    p.add_argument("--keys", type=int, default=1000)
    p.add_argument("--value-bytes", type=int, default=100)
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args()
    if args.bin:
        os.environ["TIERCACHE_BIN"] = args.bin

    import tempfile

    work = Path(tempfile.mkdtemp(prefix="tiercache-bench-"))
    r = Redis(work)
    server = Server(work, r.url)
    try:
        keys = [f"bench:{i}" for i in range(args.keys)]
        value = os.urandom(args.value_bytes)
        direct = redis.Redis(host="127.0.0.1", port=r.port, db=1)
        client = tiercache.Client(server.address)
        ns = client.namespace("default")
        for k in keys:
            ns.set(k, value, ttl=3600)
            direct.set(k, value)
        print(
            f"{args.keys} keys of {args.value_bytes} bytes, one thread, {args.seconds:.0f} s each"
        )
        tc = run("tiercache Client.get", ns.get, keys, args.seconds)
        rd = run("redis-py GET", direct.get, keys, args.seconds)
        # The bare generated stub: what grpcio itself costs, without the SDK's layer.
        stub = client.cache.Get
        raw = run(
            "grpcio stub Get (no SDK)",
            lambda k: stub(cache_pb2.GetRequest(namespace="default", key=k), timeout=10),
            keys,
            args.seconds,
        )
        print(
            f"ratio tiercache/redis-py: {tc / rd:.2f}  (bare grpcio stub/redis-py: {raw / rd:.2f})"
        )
        client.close()
    finally:
        server.stop()
        r.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
