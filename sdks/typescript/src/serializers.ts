// Serializers turn a namespace's values into bytes and back.

/** Turns values into the bytes tiercache stores, and back. */
export interface Serializer<T> {
  encode(value: T): Uint8Array;
  decode(data: Uint8Array): T;
}

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: true });

/** Values are `Uint8Array`s, stored as they are (the default). */
export const bytes: Serializer<Uint8Array> = Object.freeze({
  encode(value: Uint8Array): Uint8Array {
    if (!(value instanceof Uint8Array)) {
      throw new TypeError(`the bytes serializer needs a Uint8Array, got ${typeof value}`);
    }
    return value;
  },
  decode(data: Uint8Array): Uint8Array {
    return data;
  },
});

/** Values are strings, stored as UTF-8. */
export const string: Serializer<string> = Object.freeze({
  encode(value: string): Uint8Array {
    if (typeof value !== "string") throw new TypeError(`the string serializer needs a string, got ${typeof value}`);
    return utf8Encoder.encode(value);
  },
  decode(data: Uint8Array): string {
    return utf8Decoder.decode(data);
  },
});

/**
 * Values are anything `JSON.stringify` takes, stored as UTF-8 JSON, typed `T` on the way out (the
 * SDK does not validate the shape it decodes): `jsonOf<User>()`.
 */
export function jsonOf<T>(): Serializer<T> {
  return json as Serializer<T>;
}

/** Values are anything `JSON.stringify` takes, stored as UTF-8 JSON and read back as `unknown`
 * (for a typed namespace: `jsonOf<User>()`). */
export const json: Serializer<unknown> = Object.freeze({
  encode(value: unknown): Uint8Array {
    const text = JSON.stringify(value);
    if (text === undefined) throw new TypeError("the json serializer cannot encode undefined or a function");
    return utf8Encoder.encode(text);
  },
  decode(data: Uint8Array): unknown {
    return JSON.parse(utf8Decoder.decode(data)) as unknown;
  },
});
