/**
 * Deadlines are rows (docs/operations.md §Deadlines): whatever is due, now or after a restart,
 * goes through the payment state machine as broker-initiated work in the next batch.
 *
 * Time comes from `clock`, and `poll()` is public: a test moves its clock past a deadline and
 * polls, instead of sleeping until the deadline passes.
 */
import type { Logger } from "pino";
import type { TxContext } from "../src/service/inbox.ts";
import { errorSummary } from "../src/service/inbox.ts";
import { Every } from "./every.ts";

export type DeadlineKind = "prompt" | "task";

export interface DeadlineOptions {
  /** The deadlines due at `nowMs`, oldest first, at most `limit`. */
  readonly due: (nowMs: number, limit: number) => readonly { paymentId: string; which: DeadlineKind }[];
  /** Queues broker work for the next batch transaction (Inbox.internal). */
  readonly queue: (label: string, run: (ctx: TxContext) => void) => void;
  /** Fires one deadline inside that transaction (Payments.fireDeadline). */
  readonly fire: (ctx: TxContext, paymentId: string, which: DeadlineKind) => void;
  readonly clock: () => number;
  readonly log: Logger;
  /** How often start() polls; default 100 ms. */
  readonly everyMs?: number;
  /** Most deadlines queued per poll; default 500. */
  readonly batch?: number;
}

/** A deadline queued but not yet run is not queued again, unless it has waited this long. */
const REQUEUE_AFTER_MS = 5000;

export class Deadlines {
  readonly #o: DeadlineOptions;
  /** Queued and not yet run: key → when it was queued. */
  readonly #queued = new Map<string, number>();
  readonly #every: Every;

  constructor(options: DeadlineOptions) {
    this.#o = options;
    this.#every = new Every(options.everyMs ?? 100, () => this.poll());
  }

  start(): void {
    this.#every.start();
  }

  stop(): void {
    this.#every.stop();
  }

  /** Queues every deadline due now that is not already queued; returns how many it queued. */
  poll(): number {
    let queued = 0;
    try {
      const now = this.#o.clock();
      for (const [key, at] of this.#queued) if (now - at > REQUEUE_AFTER_MS) this.#queued.delete(key);
      for (const due of this.#o.due(now, this.#o.batch ?? 500)) {
        const key = `${due.paymentId}/${due.which}`;
        if (this.#queued.has(key)) continue;
        this.#queued.set(key, now);
        queued++;
        this.#o.queue(`deadline ${key}`, (ctx) => {
          this.#queued.delete(key);
          this.#o.fire(ctx, due.paymentId, due.which);
        });
      }
    } catch (err) {
      this.#o.log.error({ err: errorSummary(err) }, "reading deadlines failed");
    }
    return queued;
  }
}
