"""The README's quick start: python examples/quickstart.py (server at $TIERCACHE_ADDR)."""

import os

import tiercache

client = tiercache.Client(os.environ.get("TIERCACHE_ADDR", "127.0.0.1:50051"))
users = client.namespace("users", tiercache.JSON)

users.set("user:42", {"name": "Ada"}, ttl=30, tags=["org:7"])
print(users.get("user:42"))
print(users.get_or_set("user:43", lambda: {"name": "Grace"}, ttl=60, tags=["org:7"]))
users.invalidate_tags(["org:7"])
with users.lock("nightly", ttl=10) as lock:
    print("fencing token", lock.fencing_token)
