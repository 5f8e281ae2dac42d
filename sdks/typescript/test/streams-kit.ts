// Helpers of the Watch, near-cache and lock tests: polling with a deadline instead of sleeping,
// and a TCP proxy that cuts or black-holes a client's connection.

import { type Server as NetServer, type Socket, connect, createServer } from "node:net";

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

/** Forwards a local port to `target`; `cut()` destroys every connection through it and
 * `blackhole()` also makes new ones hang (accepted, never answered). */
export class TcpProxy {
  #blackholed = false;
  private constructor(
    readonly server: NetServer,
    readonly port: number,
    readonly sockets: Set<Socket>,
  ) {}

  static start(target: number): Promise<TcpProxy> {
    const sockets = new Set<Socket>();
    let proxy: TcpProxy | undefined;
    const server = createServer((down) => {
      if (proxy !== undefined && proxy.#blackholed) {
        sockets.add(down);
        down.once("close", () => sockets.delete(down));
        down.on("error", () => {});
        down.resume(); // read and drop
        return;
      }
      const up = connect(target, "127.0.0.1");
      for (const s of [down, up]) {
        sockets.add(s);
        s.once("close", () => sockets.delete(s));
        s.on("error", () => {});
      }
      down.pipe(up).pipe(down);
      down.once("close", () => up.destroy());
      up.once("close", () => down.destroy());
    });
    return new Promise((resolve) => {
      server.listen(0, "127.0.0.1", () => {
        const addr = server.address();
        proxy = new TcpProxy(server, typeof addr === "object" && addr !== null ? addr.port : 0, sockets);
        resolve(proxy);
      });
    });
  }

  /** Cuts every connection and leaves new ones hanging. */
  blackhole(): void {
    this.#blackholed = true;
    this.cut();
  }

  cut(): void {
    for (const s of this.sockets) s.destroy();
  }

  stop(): Promise<void> {
    this.cut();
    return new Promise((r) => this.server.close(() => r()));
  }
}
