/**
 * Replay memory: message ids and connect-token nonces seen within the freshness window.
 * Rows live until their expiry (timestamp + window + 1 ms); after that the freshness check alone
 * refuses the message, so the row can go. Kept in SQLite so a restart does not forget.
 *
 * A row whose expiry has passed counts as absent, whether or not housekeeping has deleted it yet
 * (docs/protocol.md: an id is remembered until ts + window + 1 ms, and after `stale` a device may
 * re-sign under the same id). A new message or token under an expired id or nonce replaces the
 * row in place: the primary key has room for one row, and the replacement is one statement, so
 * it shares the caller's transaction. The answers stored for the id's earlier message stay in the
 * outbox for delivery but stop being answers to the id, so that a duplicate of the new message is
 * answered with its own answer only.
 */
import type { Db } from "./db.ts";

export type SeenResult = "new" | "duplicate" | "conflict";

export class ReplayRepo {
  readonly #getSeen;
  readonly #putSeen;
  readonly #unlinkAnswers;
  readonly #putToken;
  readonly #purgeSeen;
  readonly #purgeTokens;

  constructor(db: Db) {
    this.#getSeen = db.prepare<[string, string, number], { digest: Buffer }>("SELECT digest FROM seen_messages WHERE device_id = ? AND msg_id = ? AND expires_ms > ?");
    // Only an expired row is replaced (the WHERE): a live one is never overwritten, even if a caller skipped the lookup.
    this.#putSeen = db.prepare(
      "INSERT INTO seen_messages (device_id, msg_id, digest, expires_ms) VALUES (?, ?, ?, ?) ON CONFLICT (device_id, msg_id) DO UPDATE SET digest = excluded.digest, expires_ms = excluded.expires_ms WHERE seen_messages.expires_ms <= ?",
    );
    // Found by outbox_by_reply; usually no row (an id is rarely used twice).
    this.#unlinkAnswers = db.prepare("UPDATE outbox SET re = NULL WHERE device_id = ? AND re = ?");
    this.#putToken = db.prepare(
      "INSERT INTO used_tokens (device_id, nonce, expires_ms) VALUES (?, ?, ?) ON CONFLICT (device_id, nonce) DO UPDATE SET expires_ms = excluded.expires_ms WHERE used_tokens.expires_ms <= ?",
    );
    // Bounded deletes (oldest first, by the expiry index): a purge never stalls the broker for long.
    this.#purgeSeen = db.prepare(
      "DELETE FROM seen_messages WHERE (device_id, msg_id) IN (SELECT device_id, msg_id FROM seen_messages WHERE expires_ms < ? ORDER BY expires_ms LIMIT ?)",
    );
    this.#purgeTokens = db.prepare("DELETE FROM used_tokens WHERE (device_id, nonce) IN (SELECT device_id, nonce FROM used_tokens WHERE expires_ms < ? ORDER BY expires_ms LIMIT ?)");
  }

  /**
   * Records a message id; says whether it is new, the same message again, or another message
   * under an id still remembered at `nowMs`. Call it inside the message's transaction.
   */
  remember(deviceId: string, msgId: string, digest: Uint8Array, expiresMs: number, nowMs: number): SeenResult {
    const row = this.#getSeen.get(deviceId, msgId, nowMs);
    if (row !== undefined) return Buffer.from(digest).equals(row.digest) ? "duplicate" : "conflict";
    const changes = this.#putSeen.run(deviceId, msgId, digest, expiresMs, nowMs).changes;
    if (changes !== 1) throw new Error(`replay memory: ${deviceId}/${msgId} is live but was not found`);
    // Whether the earlier message's row was expired or already purged (its answers are kept a day).
    this.#unlinkAnswers.run(deviceId, msgId);
    return "new";
  }

  /** Consumes a connect-token nonce; false when it was used before and that use has not expired at `nowMs`. */
  useToken(deviceId: string, nonce: string, expiresMs: number, nowMs: number): boolean {
    return this.#putToken.run(deviceId, nonce, expiresMs, nowMs).changes === 1;
  }

  /** The purges' SQL as prepared: a test EXPLAINs these very statements to see that they use their index. */
  get purgeSql(): { readonly seen: string; readonly tokens: string } {
    return { seen: this.#purgeSeen.source, tokens: this.#purgeTokens.source };
  }

  /** Deletes up to `limit` expired rows of each table; returns how many went (call again while > 0). */
  purge(nowMs: number, limit: number): number {
    return this.#purgeSeen.run(nowMs, limit).changes + this.#purgeTokens.run(nowMs, limit).changes;
  }
}
