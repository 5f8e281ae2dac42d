from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from servers import Cluster

import tiercache

_ids = itertools.count()


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    yield c
    c.stop()


@pytest.fixture(scope="session")
def clients(cluster: Cluster) -> Iterator[list[tiercache.Client]]:
    """One sync client per replica."""
    cs = [tiercache.Client(s.address) for s in cluster.replicas]
    yield cs
    for c in cs:
        c.close()


@pytest.fixture
def key() -> str:
    """A key no other test uses (the servers live for the whole session)."""
    return f"k{next(_ids)}"
