// @tiercache/client: the TypeScript SDK of tiercache.

export {
  Client,
  type ClientOptions,
  type CallOptions,
  type Logger,
  type RetryPolicy,
  type TlsOptions,
  DEFAULT_RETRY_POLICY,
  DEFAULT_TIMEOUT_MS,
  MAX_MESSAGE_BYTES,
  services,
} from "./client.js";
export { Code, TiercacheError, LockNotAcquired, UnexpectedResponse, codeName, type FieldViolation } from "./errors.js";
export {
  Namespace,
  SERVER_DEFAULT_MAX_WAIT_MS,
  type DeleteOptions,
  type DeleteResult,
  type Entry,
  type GetOptions,
  type GetOrSetOptions,
  type Loaded,
  type Loader,
  type ManyLoader,
  type NamespaceOptions,
  type SetManyOptions,
  type SetOptions,
  type SetResult,
  type WrapOptions,
} from "./namespace.js";
export type {
  HealthStatus,
  InspectedEntry,
  Inspection,
  KeyVisibility,
  NamespaceInfo,
  NamespacePolicy,
  NamespaceStats,
  Stats,
  TierView,
} from "./admin.js";
export { type Serializer, bytes, json, jsonOf, string } from "./serializers.js";
export { activeTraceparent } from "./trace.js";
export { type WatchEvent, type WatchEventKind, type WatchOptions } from "./watch.js";
export { NearCache, type NearCacheOptions, DEFAULT_NEAR_MAX_ENTRIES, DEFAULT_NEAR_MAX_TTL_MS } from "./near.js";
export { Lock, type LockOptions, DEFAULT_LOCK_TTL_MS, DEFAULT_LOCK_WAIT_MS } from "./lock.js";
