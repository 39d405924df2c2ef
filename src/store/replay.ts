/**
 * Replay memory: message ids and connect-token nonces seen within the freshness window.
 * Rows live until their expiry (timestamp + window + 1 ms); after that the freshness check alone
 * refuses the message, so the row can go. Kept in SQLite so a restart does not forget.
 *
 * A row whose expiry has passed counts as absent, whether or not housekeeping has deleted it yet
 * (docs/protocol.md: an id is remembered until ts + window + 1 ms, and after `stale` a device may
 * re-sign under the same id). A new message or token under an expired id or nonce replaces the
 * row in place: the primary key has room for one row, and the replacement is one statement, so
 * it shares the caller's transaction. A row records when its message was handled (`since_ms`):
 * the answers stored for the id's earlier message stay in the outbox for delivery, and are not
 * answers to the new message, because they were made before it (OutboxRepo.repliesTo).
 *
 * A new message costs one statement (the insert); only an id already present is read.
 */
import type { Db } from "./db.ts";

export type SeenResult = "new" | "duplicate" | "conflict";

export class ReplayRepo {
  readonly #getSeen;
  readonly #putSeen;
  readonly #putToken;
  readonly #purgeSeen;
  readonly #purgeTokens;

  constructor(db: Db) {
    this.#getSeen = db.prepare<[string, string, number], { digest: Buffer }>("SELECT digest FROM seen_messages WHERE device_id = ? AND msg_id = ? AND expires_ms > ?");
    // Only an expired row is replaced (the WHERE): a live one is never overwritten, even if a caller skipped the lookup.
    this.#putSeen = db.prepare(
      "INSERT INTO seen_messages (device_id, msg_id, digest, expires_ms, since_ms) VALUES (?, ?, ?, ?, ?) ON CONFLICT (msg_id, device_id) DO UPDATE SET digest = excluded.digest, expires_ms = excluded.expires_ms, since_ms = excluded.since_ms WHERE seen_messages.expires_ms <= ?",
    );
    this.#putToken = db.prepare(
      "INSERT INTO used_tokens (device_id, nonce, expires_ms) VALUES (?, ?, ?) ON CONFLICT (device_id, nonce) DO UPDATE SET expires_ms = excluded.expires_ms WHERE used_tokens.expires_ms <= ?",
    );
    // Bounded deletes (oldest first, by the expiry index): a purge never stalls the broker for long.
    this.#purgeSeen = db.prepare(
      "DELETE FROM seen_messages WHERE (msg_id, device_id) IN (SELECT msg_id, device_id FROM seen_messages WHERE expires_ms < ? ORDER BY expires_ms LIMIT ?)",
    );
    this.#purgeTokens = db.prepare("DELETE FROM used_tokens WHERE (device_id, nonce) IN (SELECT device_id, nonce FROM used_tokens WHERE expires_ms < ? ORDER BY expires_ms LIMIT ?)");
  }

  /**
   * Records a message id; says whether it is new, the same message again, or another message
   * under an id still remembered at `nowMs`. Call it inside the message's transaction.
   */
  remember(deviceId: string, msgId: string, digest: Uint8Array, expiresMs: number, nowMs: number): SeenResult {
    // A new id, or one whose row has expired: taken (inserted or replaced) in one statement.
    if (this.#putSeen.run(deviceId, msgId, digest, expiresMs, nowMs, nowMs).changes === 1) return "new";
    // Refused only by a live row: the same message again, or another under its id.
    const row = this.#getSeen.get(deviceId, msgId, nowMs);
    if (row === undefined) throw new Error(`replay memory: ${deviceId}/${msgId} was neither taken nor found live`);
    return Buffer.from(digest).equals(row.digest) ? "duplicate" : "conflict";
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
