/**
 * The outbox: every signed message the broker sends to a device, written in the same
 * transaction as the change that caused it and published only after that commit. A row stays
 * undelivered until the device's receipt for it (its PUBACK, or a signed `ack` naming it) is
 * written; undelivered rows are sent again
 * when the device subscribes to its down topic (after every connect).
 */
import type { Db } from "./db.ts";

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
  readonly #insert;
  readonly #undelivered;
  readonly #replies;
  readonly #delivered;
  readonly #countUndelivered;
  readonly #purge;

  constructor(db: Db) {
    this.#insert = db.prepare("INSERT INTO outbox (device_id, msg_id, re, bytes, created_ms) VALUES (?, ?, ?, ?, ?)");
    this.#undelivered = db.prepare<[string, number, number], Raw>(
      "SELECT seq, device_id, msg_id, bytes FROM outbox WHERE device_id = ? AND delivered_ms IS NULL AND seq > ? ORDER BY seq LIMIT ?",
    );
    this.#replies = db.prepare<[string, string], Raw>("SELECT seq, device_id, msg_id, bytes FROM outbox WHERE device_id = ? AND re = ? ORDER BY seq");
    this.#delivered = db.prepare("UPDATE outbox SET delivered_ms = ? WHERE device_id = ? AND msg_id = ? AND delivered_ms IS NULL");
    this.#purge = db.prepare(
      "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE delivered_ms IS NOT NULL AND delivered_ms < ? ORDER BY delivered_ms LIMIT ?)",
    );
    this.#countUndelivered = db.prepare<[], { n: number }>("SELECT count(*) AS n FROM outbox WHERE delivered_ms IS NULL");
  }

  add(row: { deviceId: string; msgId: string; re: string | null; bytes: Uint8Array; createdMs: number }): OutboxRow {
    const info = this.#insert.run(row.deviceId, row.msgId, row.re, row.bytes, row.createdMs);
    return { seq: Number(info.lastInsertRowid), deviceId: row.deviceId, msgId: row.msgId, bytes: row.bytes };
  }

  /** A device's undelivered messages, oldest first: those after `afterSeq`, at most `limit`. */
  undelivered(deviceId: string, limit = 1000, afterSeq = 0): OutboxRow[] {
    return this.#undelivered.all(deviceId, afterSeq, limit).map(fromRaw);
  }

  /** The replies already stored for a device's message: what a duplicate of it gets again. */
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

  countUndelivered(): number {
    return this.#countUndelivered.get()?.n ?? 0;
  }
}
