/** One device's bucket: tokens left at a moment. */
export interface Bucket {
  readonly tokens: number;
  readonly atMs: number;
}

/** A token bucket per device: `ratePerSec` sustained, `burst` at once. Time is passed in. */
export class RateLimiter {
  readonly #buckets = new Map<string, { tokens: number; atMs: number }>();
  #changed: Set<string> | null = null;

  constructor(
    readonly ratePerSec: number,
    readonly burst: number,
  ) {}

  take(key: string, nowMs: number): boolean {
    let b = this.#buckets.get(key);
    if (b === undefined) {
      b = { tokens: this.burst, atMs: nowMs };
      this.#buckets.set(key, b);
    }
    b.tokens = Math.min(this.burst, b.tokens + ((nowMs - b.atMs) * this.ratePerSec) / 1000);
    b.atMs = nowMs;
    this.#changed?.add(key);
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  /**
   * From now on, every key taken from is added to the returned set, which the caller empties as
   * it reads it (several nodes share buckets: broker/cluster.ts). Off unless asked for.
   */
  trackChanges(): Set<string> {
    return (this.#changed ??= new Set());
  }

  /** The key's bucket as it stands, or undefined if it was never taken from. */
  bucket(key: string): Bucket | undefined {
    const b = this.#buckets.get(key);
    return b === undefined ? undefined : { tokens: b.tokens, atMs: b.atMs };
  }

  /**
   * Another node's view of the key's bucket: from now on the bucket holds the fewer tokens of
   * the two, each refilled to `nowMs` (a moment in the future counts as now).
   */
  merge(key: string, other: Bucket, nowMs: number): void {
    const refill = (x: Bucket) => Math.min(this.burst, x.tokens + (Math.max(0, nowMs - x.atMs) * this.ratePerSec) / 1000);
    const mine = this.#buckets.get(key);
    const tokens = Math.max(0, mine === undefined ? refill(other) : Math.min(refill(mine), refill(other)));
    this.#buckets.set(key, { tokens, atMs: nowMs });
  }

  forget(key: string): void {
    this.#buckets.delete(key);
  }
}
