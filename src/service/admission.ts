/**
 * Admission: past capacity, a new payment is refused at once (`busy`, with a retry-after) instead
 * of joining a queue it would wait in for seconds (docs/protocol.md §Errors, docs/operations.md
 * §Load).
 *
 * How the broker knows it is behind: by how old the messages it handles are. A device's message
 * waits in the device's socket and the broker's before it is handled; past capacity that wait
 * grows without bound, while the event loop only ever looks busy. A message's age is read from
 * its signed timestamp, less what is the device's own clock offset: the smallest apparent age
 * (broker clock − timestamp) of that device's verified messages over the last few minutes, kept
 * per device, which is its clock difference plus the shortest trip. So a device whose clock runs
 * seconds ahead or behind is judged by its waits, not by its clock.
 *
 * The broker is behind when the messages it handled in its last turns were older than
 * `busyAfterMs` on average (a moving average over turns), or when this pay request itself is,
 * or, as it arrives, would be once the messages queued before it are handled.
 * Only `pay_request` is refused: every message of a payment already accepted (approvals,
 * executions, cancels, receipts) is handled whatever the load, so accepted payments are never
 * shed. The refusal is decided before the signature is verified or anything is written: it
 * costs the broker a parse and one signed answer.
 *
 * No clock and no I/O here: times come in as arguments, so it is tested exhaustively.
 */

/** How long an observed minimum stands for a device's clock offset (two windows are kept). */
export const OFFSET_WINDOW_MS = 300_000;
/** Devices whose offsets are remembered; past it the map is cleared whole (they are learned again). */
export const MAX_TRACKED_DEVICES = 100_000;
/** The retry-after a refusal suggests: twice the wait it saw, within these bounds. */
export const RETRY_AFTER_MS: readonly [number, number] = [250, 5_000];
/** Weight of the newest turn in the moving average of message age. */
const SMOOTHING = 0.3;
/** No turn for this long: the broker has nothing to do, so it is not behind whatever it last measured. */
export const IDLE_RESET_MS = 1_000;

interface Offset {
  /** Smallest apparent age in the current window, and in the one before it. */
  cur: number;
  prev: number;
  since: number;
}

export interface AdmissionVerdict {
  /** This message's age by its device's clock offset (0 when nothing is known of the device yet). */
  readonly ageMs: number;
  /** The broker's moving average of message age over its last turns. */
  readonly behindMs: number;
  /** null: admitted. Otherwise the refusal's suggested wait before retrying. */
  readonly retryAfterMs: number | null;
}

export class Admission {
  readonly #busyAfterMs: number;
  readonly #offsets = new Map<string, Offset>();
  #behindMs = 0;
  #turnSum = 0;
  #turnCount = 0;
  #lastTurnMs = Number.NEGATIVE_INFINITY;

  /** `busyAfterMs` 0: never refuse (ages are still measured, for the metric). */
  constructor(busyAfterMs: number) {
    this.#busyAfterMs = busyAfterMs;
  }

  /** The moving average of message age over the last turns, as of `nowMs`. */
  behindMs(nowMs: number): number {
    return nowMs - this.#lastTurnMs > IDLE_RESET_MS || nowMs < this.#lastTurnMs ? 0 : this.#behindMs;
  }

  /**
   * Whether every new payment is refused now, whatever its own age: the broker is behind on
   * average, or what is queued (`aheadMs` of work, the caller's estimate) would make it so.
   */
  refusing(nowMs: number, aheadMs = 0): boolean {
    return this.#busyAfterMs > 0 && Math.max(this.behindMs(nowMs), aheadMs) >= this.#busyAfterMs;
  }

  /** The age of a message from `deviceId` stamped `ts`, handled at `nowMs`. */
  ageMs(deviceId: string, ts: number, nowMs: number): number {
    const o = this.#offsets.get(deviceId);
    return o === undefined ? 0 : waitBeyond(o, nowMs - ts);
  }

  /**
   * Whether a new payment may start now. `aheadMs`: for a message not yet queued, how long what is
   * queued before it will take (its wait is then its age plus that). Reads only: a refused
   * message teaches nothing.
   */
  check(deviceId: string, ts: number, nowMs: number, aheadMs = 0): AdmissionVerdict {
    const ageMs = this.ageMs(deviceId, ts, nowMs);
    const behindMs = this.behindMs(nowMs);
    const worst = Math.max(ageMs + aheadMs, behindMs);
    if (this.#busyAfterMs === 0 || worst < this.#busyAfterMs) return { ageMs, behindMs, retryAfterMs: null };
    const retryAfterMs = Math.min(RETRY_AFTER_MS[1], Math.max(RETRY_AFTER_MS[0], Math.round(2 * worst)));
    return { ageMs, behindMs, retryAfterMs };
  }

  /** A verified message from `deviceId` stamped `ts`, handled at `nowMs`: learn its clock, count its age. */
  observe(deviceId: string, ts: number, nowMs: number): void {
    const apparent = nowMs - ts;
    let o = this.#offsets.get(deviceId);
    if (o === undefined) {
      if (this.#offsets.size >= MAX_TRACKED_DEVICES) this.#offsets.clear();
      o = { cur: apparent, prev: apparent, since: nowMs };
      this.#offsets.set(deviceId, o);
    } else if (nowMs - o.since >= OFFSET_WINDOW_MS || nowMs < o.since) {
      o.prev = o.cur;
      o.cur = apparent;
      o.since = nowMs;
    } else if (apparent < o.cur) o.cur = apparent;
    this.#turnSum += waitBeyond(o, apparent);
    this.#turnCount++;
  }

  /**
   * The end of a turn at `nowMs`: its messages' mean age enters the moving average (a turn with
   * none counts as 0; after an idle second the average starts again from 0).
   */
  endTurn(nowMs: number): void {
    const mean = this.#turnCount === 0 ? 0 : this.#turnSum / this.#turnCount;
    const before = this.behindMs(nowMs);
    this.#lastTurnMs = nowMs;
    this.#behindMs = before + SMOOTHING * (mean - before);
    if (this.#behindMs < 0.5) this.#behindMs = 0;
    this.#turnSum = 0;
    this.#turnCount = 0;
  }
}

/** How much of an apparent age (broker clock − timestamp) is waiting, beyond the device's offset. */
function waitBeyond(o: Offset, apparentMs: number): number {
  return Math.max(0, apparentMs - Math.min(o.cur, o.prev));
}
