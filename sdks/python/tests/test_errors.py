"""Every exception type, each from a real reply: the tiercache server's where it has one."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import redis
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from servers import Cluster, Server, free_port

import tiercache
import tiercache.aio


def test_invalid_argument_names_the_field(clients: list[tiercache.Client]) -> None:
    with pytest.raises(tiercache.InvalidArgument) as e:
        clients[0].namespace("users").set("", b"x")
    assert e.value.field == "key"
    assert e.value.reason == "INVALID_ARGUMENT"
    assert not e.value.retryable
    assert "key" in str(e.value)
    with pytest.raises(tiercache.InvalidArgument) as e:
        clients[0].namespace("tiny").set("k", b"x" * 100)
    assert e.value.field == "value"


def test_not_found_for_an_unlisted_namespace(tmp_path: Path) -> None:
    strict = Server(tmp_path, None, dynamic=False)
    try:
        with tiercache.Client(strict.address) as c, pytest.raises(tiercache.NotFound) as e:
            c.namespace("nope").get("k")
    finally:
        strict.stop()
    assert e.value.reason == "NAMESPACE_NOT_FOUND"
    assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_unavailable_with_retry_after_when_the_wait_times_out(
    clients: list[tiercache.Client], key: str
) -> None:
    ns = clients[0].namespace("users")
    started = threading.Event()

    def slow() -> bytes:
        started.set()
        time.sleep(1.0)
        return b"v"

    holder = threading.Thread(target=lambda: ns.get_or_set(key, slow))
    holder.start()
    assert started.wait(5)
    with pytest.raises(tiercache.Unavailable) as e:
        clients[1].namespace("users").get_or_set(
            key, lambda: b"never", max_wait=0.1, on_wait_timeout="unavailable"
        )
    holder.join()
    assert e.value.reason == "WAIT_TIMEOUT"
    assert e.value.retry_after is not None and e.value.retry_after > 0
    assert e.value.retryable


def test_compute_when_the_wait_times_out_runs_the_loader_without_filling(
    clients: list[tiercache.Client], key: str
) -> None:
    ns = clients[0].namespace("users")
    started = threading.Event()

    def slow() -> bytes:
        started.set()
        time.sleep(1.0)
        return b"holder"

    holder = threading.Thread(target=lambda: ns.get_or_set(key, slow))
    holder.start()
    assert started.wait(5)
    # The server says COMPUTE: run the loader, return its value, store nothing.
    got = clients[1].namespace("users").get_or_set(key, lambda: b"mine", max_wait=0.1)
    holder.join()
    assert got == b"mine"
    e = ns.get(key)
    assert e is not None and e.value == b"holder"


def test_unavailable_when_nothing_listens_is_retried_with_backoff() -> None:
    policy = tiercache.RetryPolicy(max_attempts=3, initial_backoff=0.2, max_backoff=0.2)
    with tiercache.Client(f"127.0.0.1:{free_port()}", retries=policy, timeout=5) as c:
        t0 = time.monotonic()
        with pytest.raises(tiercache.Unavailable) as e:
            c.namespace("users").get("k")
        # Two pauses of 0.1..0.2 s: the read was retried.
        assert time.monotonic() - t0 >= 0.2
        assert e.value.reason is None
        # A write is never retried.
        t0 = time.monotonic()
        with pytest.raises(tiercache.Unavailable):
            c.namespace("users").set("k", b"v")
        assert time.monotonic() - t0 < 0.2


def test_data_loss_for_a_corrupt_stored_entry(
    clients: list[tiercache.Client], cluster: Cluster, key: str
) -> None:
    r = redis.Redis.from_url(cluster.redis.url)
    r.set(f"tc:{{nol1:{key}}}:e", b"\x09garbage")
    with pytest.raises(tiercache.DataLoss) as e:
        clients[0].namespace("nol1").get(key)
    assert e.value.reason == "CORRUPT_ENTRY"


def test_resource_exhausted_past_the_namespace_limit(tmp_path: Path) -> None:
    server = Server(tmp_path, None)
    try:

        async def fill() -> tiercache.ResourceExhausted:
            async with tiercache.aio.Client(server.address) as c:
                for start in range(0, 10_001, 500):
                    results = await asyncio.gather(
                        *(c.namespace(f"n{i}").get("k") for i in range(start, start + 500)),
                        return_exceptions=True,
                    )
                    for res in results:
                        if isinstance(res, tiercache.ResourceExhausted):
                            return res
            raise AssertionError("no namespace limit")

        err = asyncio.run(fill())
        assert err.reason == "TOO_MANY_NAMESPACES"
    finally:
        server.stop()


def test_deadline_exceeded() -> None:
    # The client's own deadline, against a peer that accepts the connection and never answers:
    # deterministic, unlike a tiny timeout against a server that may answer first.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        host, port = silent.getsockname()
        with (
            tiercache.Client(f"{host}:{port}", timeout=0.3) as c,
            pytest.raises(tiercache.DeadlineExceeded) as e,
        ):
            c.namespace("users").get("k")
    assert e.value.retryable


def test_unimplemented_from_the_server(clients: list[tiercache.Client]) -> None:
    c = clients[0]
    method = c._channel.unary_unary(
        "/tiercache.v1.CacheService/NoSuchMethod",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(tiercache.Unimplemented):
        c.call(method, b"", True)


# The tiercache server has no authentication yet, so PERMISSION_DENIED and UNAUTHENTICATED come
# from a small gRPC server here, with the same google.rpc details on the wire.
@pytest.fixture(scope="module")
def refusing_server() -> Iterator[str]:
    def handler(request: bytes, context: grpc.ServicerContext) -> bytes:
        md = dict(context.invocation_metadata())
        info = any_pb2.Any()
        if md.get("authorization") == "Bearer good":
            info.Pack(error_details_pb2.ErrorInfo(reason="NOT_ALLOWED", domain="tiercache.v1"))
            st = status_pb2.Status(code=code_pb2.PERMISSION_DENIED, message="no", details=[info])
        else:
            info.Pack(error_details_pb2.ErrorInfo(reason="NO_TOKEN", domain="tiercache.v1"))
            st = status_pb2.Status(code=code_pb2.UNAUTHENTICATED, message="who", details=[info])
        context.abort_with_status(rpc_status.to_status(st))
        raise AssertionError  # abort raises

    server = grpc.server(futures.ThreadPoolExecutor(2))
    generic = grpc.method_handlers_generic_handler(
        "tiercache.v1.CacheService",
        {"Get": grpc.unary_unary_rpc_method_handler(handler, lambda b: b, lambda b: b)},
    )
    server.add_generic_rpc_handlers((generic,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


def test_unauthenticated_and_permission_denied(refusing_server: str) -> None:
    with tiercache.Client(refusing_server) as c, pytest.raises(tiercache.Unauthenticated) as e1:
        c.namespace("users").get("k")
    assert e1.value.reason == "NO_TOKEN"
    with (
        tiercache.Client(refusing_server, token="good") as c,
        pytest.raises(tiercache.PermissionDenied) as e2,
    ):
        c.namespace("users").get("k")
    assert e2.value.reason == "NOT_ALLOWED"


async def test_aio_errors_are_typed_too(cluster: Cluster) -> None:
    async with tiercache.aio.Client(cluster.replicas[0].address) as c:
        with pytest.raises(tiercache.InvalidArgument) as e:
            await c.namespace("users").set("", b"x")
    assert e.value.field == "key" and e.value.reason == "INVALID_ARGUMENT"
