/**
 * The outbox: every signed message the broker sends to a device, written in the same
 * transaction as the change that caused it and published only after that commit. A row stays
 * undelivered until the device's receipt for it (its PUBACK, or a signed `ack` naming it) is
 * written; undelivered rows are sent again
 * when the device subscribes to its down topic (after every connect).
 */
import { isPostgres, type Db } from "./db.ts";

export interface OutboxRow {
  readonly seq: number;
  readonly deviceId: string;
  readonly msgId: string;
  readonly bytes: Uint8Array;
  /** Sent before: read again to answer a duplicate of the message it answers. */
  readonly again?: true;
}

interface Raw {
  seq: number;
  device_id: string;
  msg_id: string;
  bytes: Buffer;
}
const fromRaw = (r: Raw): OutboxRow => ({ seq: r.seq, deviceId: r.device_id, msgId: r.msg_id, bytes: r.bytes });

export class OutboxRepo {
  readonly #insert: (...args: unknown[]) => number;
  readonly #undelivered;
  readonly #replies;
  readonly #delivered;
  readonly #countUndelivered;
  readonly #purge;
  readonly #backlog;
  readonly #purgeExpired;

  constructor(db: Db) {
    const insert = "INSERT INTO outbox (device_id, msg_id, re, bytes, created_ms, expires_ms) VALUES (?, ?, ?, ?, ?, ?)";
    // SQLite hands back the new rowid for free; PostgreSQL returns the identity it assigned.
    if (isPostgres(db)) {
      const returning = db.prepare<unknown[], { seq: number }>(`${insert} RETURNING seq`);
      this.#insert = (...args: unknown[]) => returning.get(...args)!.seq;
    } else {
      const plain = db.prepare(insert);
      this.#insert = (...args: unknown[]) => Number(plain.run(...args).lastInsertRowid);
    }
    this.#undelivered = db.prepare<[string, number, number, number], Raw>(
      "SELECT seq, device_id, msg_id, bytes FROM outbox WHERE device_id = ? AND delivered_ms IS NULL AND seq > ? AND (expires_ms IS NULL OR expires_ms > ?) ORDER BY seq LIMIT ?",
    );
    this.#backlog = db.prepare<[string, number, number], { n: number }>(
      "SELECT count(*) AS n FROM (SELECT 1 FROM outbox WHERE device_id = ? AND delivered_ms IS NULL AND (expires_ms IS NULL OR expires_ms > ?) LIMIT ?) AS w",
    );
    this.#purgeExpired = db.prepare(
      "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE expires_ms IS NOT NULL AND expires_ms < ? ORDER BY expires_ms LIMIT ?)",
    );
    // Made since the message was remembered: an earlier message under the same (expired) id had its own answers.
    this.#replies = db.prepare<[string, string], Raw>(
      "SELECT o.seq, o.device_id, o.msg_id, o.bytes FROM outbox o JOIN seen_messages s ON s.device_id = o.device_id AND s.msg_id = o.re WHERE o.device_id = ? AND o.re = ? AND o.created_ms >= s.since_ms ORDER BY o.seq",
    );
    this.#delivered = db.prepare("UPDATE outbox SET delivered_ms = ? WHERE device_id = ? AND msg_id = ? AND delivered_ms IS NULL");
    this.#purge = db.prepare(
      "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE delivered_ms IS NOT NULL AND delivered_ms < ? ORDER BY delivered_ms LIMIT ?)",
    );
    this.#countUndelivered = db.prepare<[], { n: number }>("SELECT count(*) AS n FROM outbox WHERE delivered_ms IS NULL");
  }

  /** `expiresMs`: an answer that is not sent again, and is deleted, from then on (null: kept until delivered). */
  add(row: { deviceId: string; msgId: string; re: string | null; bytes: Uint8Array; createdMs: number; expiresMs?: number | null }): OutboxRow {
    const seq = this.#insert(row.deviceId, row.msgId, row.re, row.bytes, row.createdMs, row.expiresMs ?? null);
    return { seq, deviceId: row.deviceId, msgId: row.msgId, bytes: row.bytes };
  }

  /** A device's undelivered, unexpired messages at `nowMs`, oldest first: those after `afterSeq`, at most `limit`. */
  undelivered(deviceId: string, nowMs: number, limit = 1000, afterSeq = 0): OutboxRow[] {
    return this.#undelivered.all(deviceId, afterSeq, nowMs, limit).map(fromRaw);
  }

  /** How many undelivered, unexpired messages a device has at `nowMs`, counting no further than `max`. */
  backlog(deviceId: string, nowMs: number, max: number): number {
    return this.#backlog.get(deviceId, nowMs, max)?.n ?? 0;
  }

  /** Deletes up to `limit` rows that expired before `nowMs`, delivered or not; returns how many went. */
  purgeExpired(nowMs: number, limit: number): number {
    return this.#purgeExpired.run(nowMs, limit).changes;
  }

  /** The replies already stored for a device's message (one the replay memory holds): what a duplicate of it gets again. */
  repliesTo(deviceId: string, re: string): OutboxRow[] {
    return this.#replies.all(deviceId, re).map(fromRaw);
  }

  markDelivered(deviceId: string, msgId: string, nowMs: number): boolean {
    return this.#delivered.run(nowMs, deviceId, msgId).changes === 1;
  }

  /** Deletes up to `limit` rows delivered before `beforeMs` (found by their index); returns how many went. */
  purgeDelivered(beforeMs: number, limit: number): number {
    return this.#purge.run(beforeMs, limit).changes;
  }

  /** The purges' SQL as prepared: a test EXPLAINs these very statements to see that they use their index. */
  get purgeSql(): { readonly delivered: string; readonly expired: string } {
    return { delivered: this.#purge.source, expired: this.#purgeExpired.source };
  }

  countUndelivered(): number {
    return this.#countUndelivered.get()?.n ?? 0;
  }
}
