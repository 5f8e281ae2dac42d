"""The near cache (L0): this process's copy of one namespace's fresh entries, kept coherent by
the namespace's Watch stream. The same rules as the Rust SDK's:

- Only fresh entries are kept, each until its server-side fresh period ends (never longer than
  ``max_ttl``), so L0 never serves stale and never outlives the server.
- Nothing is read from or stored in L0 until the Watch stream has started; when it fails or ends,
  L0 is cleared and bypassed until a new stream has started.
- ``key_changed`` drops the key (unless L0 holds that very version); ``tags_invalidated`` drops
  the entries carrying one of the tags; ``flushed``, ``gap`` and a sequence that is not the next
  one clear everything.
- A read that raced with an event must not store what it read: every event bumps an epoch, a
  read takes a ticket (the epoch) before asking the server, and its insert is dropped when the
  epoch moved meanwhile.
- A reply is kept only if the replica that answered had applied at least the sequence the Watch
  stream has reached (the reply's ``applied_sequence``, sampled before its lookup): behind a
  per-request balancer a lagging replica could otherwise hand back a value whose invalidation
  this cache already applied. Such a reply is returned to the caller but not kept.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from tiercache._common import WatchEvent, from_duration
from tiercache._proto.v1 import common_pb2


@dataclass(frozen=True)
class NearCacheConfig:
    """Settings of a near cache."""

    max_entries: int = 10_000
    max_ttl: float = 60.0
    """The longest (seconds) an entry stays, however long its fresh period: a safety net."""


class NearCache:
    """Thread-safe; shared by a namespace's callers and its watch thread (or task)."""

    def __init__(self, cfg: NearCacheConfig) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[common_pb2.Entry, float]] = OrderedDict()
        self._epoch = 0
        self._sequence: int | None = None  # None: the stream has not started
        self.lagging_replies = 0
        """Replies not kept because their replica lagged behind the Watch stream."""

    @property
    def active(self) -> bool:
        return self._sequence is not None

    def get(self, key: str) -> common_pb2.Entry | None:
        with self._lock:
            if self._sequence is None:
                return None
            hit = self._entries.get(key)
            if hit is None:
                return None
            entry, until = hit
            if time.monotonic() >= until:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry

    def ticket(self, key: str) -> int | None:
        with self._lock:
            return self._epoch if self._sequence is not None else None

    def insert(self, key: str, entry: common_pb2.Entry, ticket: int, applied_sequence: int) -> None:
        """Keeps a fresh entry the server returned, unless an event came in since ``ticket`` or
        the replica that answered had applied less (``applied_sequence``) than the Watch stream
        has delivered."""
        if entry.stale:
            return
        fresh = min(from_duration(entry.fresh_remaining), self.cfg.max_ttl)
        if fresh <= 0:
            return
        with self._lock:
            if self._sequence is None or self._epoch != ticket:
                return
            if applied_sequence < self._sequence:
                self.lagging_replies += 1
                return
            self._entries[key] = (entry, time.monotonic() + fresh)
            self._entries.move_to_end(key)
            while len(self._entries) > self.cfg.max_entries:
                self._entries.popitem(last=False)

    def forget(self, key: str) -> None:
        with self._lock:
            self._epoch += 1
            self._entries.pop(key, None)

    def apply(self, ev: WatchEvent) -> None:
        with self._lock:
            self._epoch += 1
            if ev.kind == "started":
                self._entries.clear()
                self._sequence = ev.sequence
                return
            if self._sequence is None:
                return
            expected = self._sequence + 1
            self._sequence = ev.sequence
            if ev.sequence != expected or ev.kind in ("flushed", "gap"):
                self._entries.clear()
            elif ev.kind == "key_changed" and ev.key is not None:
                held = self._entries.get(ev.key)
                if held is None or held[0].version != ev.version or ev.version == 0:
                    self._entries.pop(ev.key, None)
            elif ev.kind == "tags_invalidated":
                gone = set(ev.tags)
                for k in [k for k, (e, _) in self._entries.items() if gone.intersection(e.tags)]:
                    del self._entries[k]

    def stop(self) -> None:
        """The stream failed or ended: clear and bypass until a new one starts."""
        with self._lock:
            self._epoch += 1
            self._entries.clear()
            self._sequence = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
