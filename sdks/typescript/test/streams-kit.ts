// Helpers of the Watch, near-cache and lock tests: polling with a deadline instead of sleeping.

/** Polls `probe` every `everyMs` until it returns a value other than undefined/false; fails with
 * `what` when `timeoutMs` passes first. */
export async function waitFor<T>(
  what: string,
  probe: () => T | undefined | false | Promise<T | undefined | false>,
  timeoutMs = 5_000,
  everyMs = 10,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** The next value of `it`, failing when none comes within `timeoutMs`. */
export async function nextWithin<T>(it: AsyncIterator<T>, timeoutMs = 5_000): Promise<IteratorResult<T>> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no event within ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    return await Promise.race([it.next(), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Whether `p` is still pending now (after the current microtasks ran). */
export async function isPending(p: Promise<unknown>): Promise<boolean> {
  const marker = Symbol("pending");
  const v = await Promise.race([p.then(() => undefined, () => undefined), new Promise((r) => setImmediate(() => r(marker)))]);
  return v === marker;
}

/** `p`, failing with `what` when it does not settle within `timeoutMs`. */
export async function within<T>(what: string, p: Promise<T>, timeoutMs = 5_000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
