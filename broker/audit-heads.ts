/**
 * Signed tree heads of the audit log (docs/protocol.md §Audit proofs): every
 * `--audit-head-every-ms` when the log has grown since the last head, and once more when the
 * broker stops, so that the last entries before a shutdown are covered by a head.
 *
 * A head is signed in a job of the inbox's next batch, like any other write: it is on disk
 * before anything could act on it, and it never interleaves with a message's transaction.
 */
import type { Logger } from "pino";
import type { TxContext } from "../src/service/inbox.ts";
import { AuditLog } from "../src/store/audit.ts";
import type { Db } from "../src/store/db.ts";
import { Every } from "./every.ts";

export interface AuditHeadsOptions {
  readonly db: Db;
  readonly log: Logger;
  readonly everyMs: number;
  /** Signs with the broker's identity key. */
  readonly sign: (bytes: Uint8Array) => Uint8Array;
  /** Runs work in the inbox's next batch transaction; `after` hears whether it committed. */
  readonly queue: (label: string, run: (ctx: TxContext) => void, after?: (committed: boolean) => void) => void;
}

export class AuditHeads {
  readonly #o: AuditHeadsOptions;
  readonly #every: Every;
  readonly #audit: AuditLog;
  #queued = false;

  constructor(options: AuditHeadsOptions) {
    this.#o = options;
    this.#audit = new AuditLog(options.db);
    this.#every = new Every(options.everyMs, () => this.step());
  }

  start(): void {
    this.#every.start();
  }

  stop(): void {
    this.#every.stop();
  }

  /**
   * Queues the signing of a head of the log as it is when the job runs, if it has grown since
   * the latest head (one at a time; a step while one is queued adds nothing).
   */
  step(): void {
    if (this.#queued || !this.#o.db.open) return;
    this.#queued = true;
    this.#o.queue(
      "audit head",
      (ctx) => {
        const latest = this.#audit.latestHead();
        const size = this.#audit.size();
        if (size === 0 || (latest !== null && latest.treeSize >= size)) return;
        const head = this.#audit.signHead(this.#o.sign, ctx.nowMs);
        this.#o.log.debug({ treeSize: head.treeSize }, "signed an audit tree head");
      },
      () => {
        this.#queued = false;
      },
    );
  }
}
