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
