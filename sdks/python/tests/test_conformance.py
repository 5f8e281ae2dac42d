"""The runner of the language-neutral conformance cases in tests/conformance (see its README)."""

from __future__ import annotations

import itertools
import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from servers import ROOT, Cluster

import tiercache
from tiercache._common import to_duration
from tiercache._proto.v1 import admin_pb2, cache_pb2

CASES = sorted((ROOT / "tests" / "conformance").glob("*.json"))
_ids = itertools.count()

GET = {cache_pb2.GET_OUTCOME_HIT: "hit", cache_pb2.GET_OUTCOME_MISS: "miss"}
SET = {
    cache_pb2.SET_OUTCOME_STORED: "stored",
    cache_pb2.SET_OUTCOME_EXISTS: "exists",
    cache_pb2.SET_OUTCOME_VERSION_MISMATCH: "version_mismatch",
}
DELETE = {
    cache_pb2.DELETE_OUTCOME_DELETED: "deleted",
    cache_pb2.DELETE_OUTCOME_NOT_FOUND: "not_found",
    cache_pb2.DELETE_OUTCOME_VERSION_MISMATCH: "version_mismatch",
}
GET_OR_SET = {
    cache_pb2.GET_OR_SET_OUTCOME_HIT: "hit",
    cache_pb2.GET_OR_SET_OUTCOME_LEASE: "lease",
    cache_pb2.GET_OR_SET_OUTCOME_FILLED: "filled",
    cache_pb2.GET_OR_SET_OUTCOME_COMPUTE: "compute",
}
FILL = {
    cache_pb2.FILL_OUTCOME_STORED: "stored",
    cache_pb2.FILL_OUTCOME_LEASE_REVOKED: "lease_revoked",
    cache_pb2.FILL_OUTCOME_LEASE_EXPIRED: "lease_expired",
}
RELEASE = {
    cache_pb2.RELEASE_LEASE_OUTCOME_RELEASED: "released",
    cache_pb2.RELEASE_LEASE_OUTCOME_NOT_HELD: "not_held",
}


class LoaderError(Exception):
    pass


class Runner:
    def __init__(self, clients: list[tiercache.Client], namespace: str) -> None:
        self.clients = clients
        self.ns = namespace
        self.vars: dict[str, Any] = {}
        self.background: dict[str, Future[dict[str, Any]]] = {}
        self.pool = ThreadPoolExecutor(4)

    def arg(self, step: dict[str, Any], name: str, default: Any = None) -> Any:
        v = step.get(name, default)
        if isinstance(v, str) and v.startswith("$"):
            return self.vars[v[1:]]
        return v

    def run(self, steps: list[dict[str, Any]]) -> None:
        for i, step in enumerate(steps):
            where = f"step {i} ({step['op']})"
            if step["op"] == "await":
                result = self.background.pop(step["name"]).result(timeout=30)
            elif "background" in step:
                self.background[step["background"]] = self.pool.submit(self.one, step)
                continue
            else:
                result = self.one(step)
                # Another replica's change reaches this one through pub/sub: read again a while.
                deadline = time.monotonic() + 5
                while step.get("eventually") and self.mismatch(step, result):
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.02)
                    result = self.one(step)
            for name, field in step.get("save", {}).items():
                self.vars[name] = result.get(field)
            if problem := self.mismatch(step, result):
                raise AssertionError(f"{where}: {problem}")
        self.pool.shutdown()

    def mismatch(self, step: dict[str, Any], result: dict[str, Any]) -> str | None:
        for field, want in step.get("expect", {}).items():
            if isinstance(want, str) and want.startswith("$"):
                want = self.vars[want[1:]]
            if field not in result:
                return f"no {field} in {result}"
            if result[field] != want:
                return f"{field} is {result[field]!r}, not {want!r} (in {result})"
        if "error" in result and "error" not in step.get("expect", {}):
            return f"unexpected error {result}"
        return None

    def one(self, step: dict[str, Any]) -> dict[str, Any]:
        client = self.clients[step.get("client", 0)]
        try:
            return self.call(client, step)
        except tiercache.TiercacheError as e:
            return {
                "error": e.code.name.lower(),
                "field": getattr(e, "field", None),
                "reason": e.reason,
            }

    def call(self, client: tiercache.Client, s: dict[str, Any]) -> dict[str, Any]:
        op, ns, key = s["op"], self.ns, self.arg(s, "key")
        if op == "set":
            req = tiercache._common.set_request(
                ns,
                key,
                s["value"].encode(),
                ttl=ms(s.get("ttl_ms")),
                stale_ttl=ms(s.get("stale_ttl_ms")),
                tags=s.get("tags"),
                if_absent=s.get("if_absent", False),
                if_version=self.arg(s, "if_version"),
            )
            sr = client.call(client.cache.Set, req, False)
            return {"outcome": SET[sr.outcome], "version": sr.version}
        if op == "get":
            gr = client.call(client.cache.Get, cache_pb2.GetRequest(namespace=ns, key=key), True)
            return {"outcome": GET[gr.outcome], **entry(gr.entry if gr.HasField("entry") else None)}
        if op == "delete":
            d = cache_pb2.DeleteRequest(namespace=ns, key=key)
            if (v := self.arg(s, "if_version")) is not None:
                d.if_version = v
            return {"outcome": DELETE[client.call(client.cache.Delete, d, False).outcome]}
        if op == "get_or_set":
            opts = tiercache._common.FillOptions(
                max_wait=ms(s.get("max_wait_ms")),
                on_wait_timeout=s.get("on_wait_timeout", "compute"),
                allow_stale=s.get("allow_stale", True),
                refresh_stale=s.get("refresh_stale", True),
            )
            g = tiercache._common.get_or_set_request(ns, key, opts)
            r = client.call(client.cache.GetOrSet, g, False, wait=30)
            out = {"outcome": GET_OR_SET[r.outcome], "lease": None}
            out.update(entry(r.entry if r.HasField("entry") else None))
            if r.HasField("lease"):
                out["lease"] = r.lease.token
            return out
        if op == "fill":
            f = cache_pb2.FillRequest(
                namespace=ns,
                key=key,
                lease_token=self.arg(s, "lease"),
                value=(s.get("value") or "").encode(),
                absent=s.get("absent", False),
                tags=s.get("tags", []),
            )
            if "ttl_ms" in s:
                f.ttl.CopyFrom(to_duration(s["ttl_ms"] / 1000))
            return {"outcome": FILL[client.call(client.cache.Fill, f, False).outcome]}
        if op == "release_lease":
            rl = cache_pb2.ReleaseLeaseRequest(
                namespace=ns, key=key, lease_token=self.arg(s, "lease")
            )
            return {"outcome": RELEASE[client.call(client.cache.ReleaseLease, rl, False).outcome]}
        if op == "invalidate_tags":
            client.namespace(ns).invalidate_tags(s["tags"])
            return {}
        if op == "flush":
            client.namespace(ns).flush()
            return {}
        if op == "inspect":
            i = client.call(
                client.admin.Inspect, admin_pb2.InspectRequest(namespace=ns, key=key), True
            )
            return {"lease_held": i.lease_held}
        if op == "sdk_get_or_set":
            return self.sdk_get_or_set(client, s)
        if op == "sleep":
            time.sleep(s["ms"] / 1000)
            return {}
        raise AssertionError(f"unknown op {op}")

    def sdk_get_or_set(self, client: tiercache.Client, s: dict[str, Any]) -> dict[str, Any]:
        calls = 0
        loader = s["loader"]

        def load() -> str | None:
            nonlocal calls
            calls += 1
            if loader.get("raise"):
                raise LoaderError("loader failed")
            if loader.get("none"):
                return None
            return str(loader["value"])

        ns = client.namespace(self.ns, tiercache.STR)
        try:
            value = ns.get_or_set(s["key"], load, ttl=ms(s.get("ttl_ms")), tags=s.get("tags"))
        except LoaderError:
            return {"error": "loader", "loader_calls": calls}
        return {"value": value, "loader_calls": calls}


def ms(v: int | None) -> float | None:
    return None if v is None else v / 1000


def entry(e: Any) -> dict[str, Any]:
    if e is None:
        return {"value": None}
    return {
        "value": None if e.absent else e.value.decode(),
        "absent": e.absent,
        "stale": e.stale,
        "version": e.version,
    }


def cases() -> list[Any]:
    out = []
    for path in CASES:
        case = json.loads(path.read_text())
        for mode in case["modes"]:
            out.append(pytest.param(path, mode, id=f"{path.stem}-{mode}"))
    return out


@pytest.mark.parametrize(("path", "mode"), cases())
def test_conformance(path: Path, mode: str, cluster: Cluster) -> None:
    case = json.loads(path.read_text())
    servers = cluster.replicas if mode == "replicas" else [cluster.memory, cluster.memory]
    clients = [tiercache.Client(s.address) for s in servers]
    try:
        Runner(clients, f"conf-{path.stem.replace('_', '-')}-{next(_ids)}").run(case["steps"])
    finally:
        for c in clients:
            c.close()


def test_there_are_cases() -> None:
    assert len(CASES) >= 10
