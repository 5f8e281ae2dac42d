"""tiercache: the Python SDK of the tiercache cache service.

    import tiercache

    client = tiercache.Client("127.0.0.1:50051")
    users = client.namespace("users", tiercache.JSON)
    user = users.get_or_set("user:42", lambda: load_user(42), ttl=60, tags=["org:7"])

`tiercache.aio.Client` is the asyncio twin with the same surface. A secured server:

    client = tiercache.Client(
        "cache.internal:50051",
        token=os.environ["TIERCACHE_TOKEN"],
        tls=tiercache.TlsConfig(ca_file="ca.crt", cert_file="client.crt", key_file="client.key"),
    )
"""

from tiercache._common import (
    BYTES,
    JSON,
    STR,
    DeleteResult,
    Entry,
    HealthStatus,
    RetryPolicy,
    Serializer,
    SetResult,
    WatchEvent,
)
from tiercache._lock import Lock
from tiercache._near import NearCacheConfig
from tiercache._sync import Client, Namespace, Watch
from tiercache._tls import TlsConfig
from tiercache.errors import (
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FieldViolation,
    Internal,
    InvalidArgument,
    LockNotAcquired,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TiercacheError,
    Unauthenticated,
    Unavailable,
    UnexpectedResponse,
    Unimplemented,
)

__version__ = "0.1.0"

__all__ = [
    "BYTES",
    "JSON",
    "STR",
    "Cancelled",
    "Client",
    "DataLoss",
    "DeadlineExceeded",
    "DeleteResult",
    "Entry",
    "FieldViolation",
    "HealthStatus",
    "Internal",
    "InvalidArgument",
    "Lock",
    "LockNotAcquired",
    "Namespace",
    "NearCacheConfig",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "RetryPolicy",
    "Serializer",
    "SetResult",
    "TiercacheError",
    "TlsConfig",
    "Unauthenticated",
    "Unavailable",
    "UnexpectedResponse",
    "Unimplemented",
    "Watch",
    "WatchEvent",
]
