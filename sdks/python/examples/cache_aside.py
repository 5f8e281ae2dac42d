"""A cache-aside web handler in front of a slow database (WSGI, standard library only).

    python examples/cache_aside.py --address 127.0.0.1:50051

GET /users/<id> reads through tiercache: the first request pays the database's 200 ms, the next
ones are served from the cache; concurrent misses on one user query the database once (the lease
protocol). PUT /users/<id> writes the database, then invalidates the user's tag. The script
starts the handler on a free port, makes a few requests and prints what they cost.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import tiercache


class SlowDatabase:
    """Stands in for the origin: every query takes 200 ms and is counted."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, Any]] = {
            i: {"id": i, "name": f"user {i}"} for i in range(100)
        }
        self.queries = 0
        self._lock = threading.Lock()

    def load_user(self, user_id: int) -> dict[str, Any] | None:
        with self._lock:
            self.queries += 1
        time.sleep(0.2)
        return self.rows.get(user_id)

    def save_user(self, user_id: int, row: dict[str, Any]) -> None:
        self.rows[user_id] = row


StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def make_app(client: tiercache.Client, db: SlowDatabase) -> Callable[..., Iterable[bytes]]:
    users = client.namespace("users", tiercache.JSON)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        parts = environ["PATH_INFO"].strip("/").split("/")
        if len(parts) != 2 or parts[0] != "users" or not parts[1].isdigit():
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]
        user_id = int(parts[1])
        if environ["REQUEST_METHOD"] == "PUT":
            size = int(environ.get("CONTENT_LENGTH") or 0)
            db.save_user(user_id, json.loads(environ["wsgi.input"].read(size)))
            users.invalidate_tags([f"user:{user_id}"])
            start_response("204 No Content", [])
            return []
        # None (no such user) is cached too, for the namespace's negative TTL.
        user = users.get_or_set(
            f"user:{user_id}", lambda: db.load_user(user_id), ttl=60, tags=[f"user:{user_id}"]
        )
        if user is None:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"no such user\n"]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(user).encode()]

    return app


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class ThreadedServer(WSGIServer):
    def process_request(self, request: Any, client_address: Any) -> None:
        threading.Thread(
            target=self._serve_one, args=(request, client_address), daemon=True
        ).start()

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        finally:
            self.shutdown_request(request)


def timed_get(url: str) -> tuple[float, int, bytes]:
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(url) as r:
            return time.perf_counter() - t0, r.status, r.read()
    except urllib.error.HTTPError as e:
        return time.perf_counter() - t0, e.code, e.read()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--address", default="127.0.0.1:50051")
    args = p.parse_args()

    db = SlowDatabase()
    with tiercache.Client(args.address) as client:
        client.namespace("users").delete("user:7")
        client.namespace("users").delete("user:999")
        server = make_server(
            "127.0.0.1", 0, make_app(client, db), ThreadedServer, handler_class=QuietHandler
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_port}"

        cold, status, body = timed_get(f"{base}/users/7")
        warm, _, _ = timed_get(f"{base}/users/7")
        print(f"GET /users/7 cold {cold * 1000:.0f} ms, warm {warm * 1000:.1f} ms: {body.decode()}")
        assert status == 200 and json.loads(body)["name"] == "user 7"

        req = urllib.request.Request(
            f"{base}/users/7", data=json.dumps({"id": 7, "name": "renamed"}).encode(), method="PUT"
        )
        urllib.request.urlopen(req).close()
        _, _, body = timed_get(f"{base}/users/7")
        print(f"after PUT: {body.decode()}")
        assert json.loads(body)["name"] == "renamed"

        db.queries = 0
        with ThreadPoolExecutor(50) as pool:
            statuses = list(pool.map(lambda _: timed_get(f"{base}/users/999")[1], range(50)))
        print(
            f"50 concurrent GET /users/999: statuses {set(statuses)}, database queries {db.queries}"
        )
        assert set(statuses) == {404} and db.queries == 1
        server.shutdown()
    print("ok")


if __name__ == "__main__":
    main()
