// @tiercache/client: the TypeScript SDK of tiercache.

export {
  Client,
  type ClientOptions,
  type CallOptions,
  type RetryPolicy,
  type TlsOptions,
  DEFAULT_RETRY_POLICY,
  DEFAULT_TIMEOUT_MS,
  MAX_MESSAGE_BYTES,
  services,
} from "./client.js";
export { Code, TiercacheError, LockNotAcquired, UnexpectedResponse, type FieldViolation } from "./errors.js";
export {
  Namespace,
  type Entry,
  type GetOptions,
  type NamespaceOptions,
  type SetOptions,
  type SetResult,
} from "./namespace.js";
export { type Serializer, bytes, json, string } from "./serializers.js";
export { activeTraceparent } from "./trace.js";
export { type WatchEvent, type WatchEventKind, type WatchOptions } from "./watch.js";
export { NearCache, type NearCacheOptions, DEFAULT_NEAR_MAX_ENTRIES, DEFAULT_NEAR_MAX_TTL_MS } from "./near.js";
export { Lock, type LockOptions, DEFAULT_LOCK_TTL_MS, DEFAULT_LOCK_WAIT_MS } from "./lock.js";
