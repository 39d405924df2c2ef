/**
 * Housekeeping (docs/operations.md §Housekeeping): deletes what the broker no longer needs.
 *
 * A purge goes in small steps, one short transaction per event-loop turn, so that a minute's
 * worth of expired rows (~100,000 at 300 flows/s) never stalls the broker for long.
 */
import type { Logger } from "pino";
import { errorSummary } from "../src/service/inbox.ts";
import { PairingRepo } from "../src/store/binding.ts";
import type { Db } from "../src/store/db.ts";
import { OutboxRepo } from "../src/store/outbox.ts";
import { ReplayRepo } from "../src/store/replay.ts";
import { Every } from "./every.ts";

/** Rows of each table one purge step deletes (~2 ms each with secure_delete). */
export const PURGE_CHUNK_ROWS = 250;
/** Spent pairing codes and delivered outbox messages are kept this long for the answers they give. */
const KEEP_ANSWERS_MS = 86_400_000;

export interface HousekeepingOptions {
  readonly db: Db;
  readonly clock: () => number;
  readonly log: Logger;
  readonly everyMs: number;
  readonly chunkRows?: number;
}

export class Housekeeping {
  readonly #o: HousekeepingOptions;
  readonly #step: (nowMs: number) => number;
  readonly #every: Every;
  #purging = false;

  constructor(options: HousekeepingOptions) {
    this.#o = options;
    this.#every = new Every(options.everyMs, () => {
      if (!this.#purging) this.#purge();
    });
    const { db } = options;
    const chunk = options.chunkRows ?? PURGE_CHUNK_ROWS;
    const replay = new ReplayRepo(db);
    const pairings = new PairingRepo(db);
    const outbox = new OutboxRepo(db);
    const step = db.transaction(
      (now: number) =>
        replay.purge(now, chunk) +
        // Spent and expired pairing codes are kept a day for the answers they give, then dropped;
        // so are delivered outbox messages (a duplicate within the freshness window needs them).
        pairings.purge(now - KEEP_ANSWERS_MS, chunk) +
        outbox.purgeDelivered(now - KEEP_ANSWERS_MS, chunk) +
        // Answers that carry nothing to learn later go once no duplicate can ask for them.
        outbox.purgeExpired(now, chunk),
    );
    this.#step = (now) => step.immediate(now);
  }

  start(): void {
    this.#every.start();
  }

  stop(): void {
    this.#every.stop();
  }

  /** One bounded step: the rows it deleted (0 when nothing is left to purge). */
  step(): number {
    return this.#o.db.open ? this.#step(this.#o.clock()) : 0;
  }

  #purge(): void {
    let more = false;
    try {
      more = this.step() > 0;
    } catch (err) {
      this.#o.log.error({ err: errorSummary(err) }, "purging expired rows failed");
    }
    this.#purging = more;
    if (more) setImmediate(() => this.#purge());
  }
}
