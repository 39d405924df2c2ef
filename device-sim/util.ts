/**
 * Small helpers the simulator's drivers (chaos, abuse) share: waiting, bounding a wait, and a
 * seeded random source so a run can be replayed from its seed.
 */

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** True if `p` settles within `ms`; the timer is cleared either way, so it keeps nothing alive. */
export async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms)));
  try {
    return await Promise.race([p.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** mulberry32: a tiny seeded PRNG, uniform in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A whole number in [lo, hi], drawn from `rng`. */
export const between = (rng: () => number, lo: number, hi: number) => lo + Math.floor(rng() * (hi - lo + 1));

/**
 * Calls `onLine` with each JSON object a program writes on `stream`, one per line (pino's log
 * format); lines that are not JSON objects (npm's banner, a stack trace) are skipped.
 */
export function onJsonLines(stream: NodeJS.ReadableStream, onLine: (line: Record<string, unknown>) => void): void {
  let buffer = "";
  stream.on("data", (d: Buffer | string) => {
    buffer += d.toString();
    let nl;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      const text = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      let line: unknown;
      try {
        line = JSON.parse(text);
      } catch {
        continue;
      }
      if (typeof line === "object" && line !== null && !Array.isArray(line)) onLine(line as Record<string, unknown>);
    }
  });
}
