/**
 * Replay memory: message ids and connect-token nonces seen within the freshness window.
 * Rows live until their expiry (timestamp + window); after that the freshness check alone
 * refuses the message, so the row can go. Kept in SQLite so a restart does not forget.
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
    this.#getSeen = db.prepare<[string, string], { digest: Buffer }>("SELECT digest FROM seen_messages WHERE device_id = ? AND msg_id = ?");
    this.#putSeen = db.prepare("INSERT INTO seen_messages (device_id, msg_id, digest, expires_ms) VALUES (?, ?, ?, ?)");
    this.#putToken = db.prepare("INSERT OR IGNORE INTO used_tokens (device_id, nonce, expires_ms) VALUES (?, ?, ?)");
    // Bounded deletes (oldest first, by the expiry index): a purge never stalls the broker for long.
    this.#purgeSeen = db.prepare(
      "DELETE FROM seen_messages WHERE (device_id, msg_id) IN (SELECT device_id, msg_id FROM seen_messages WHERE expires_ms < ? ORDER BY expires_ms LIMIT ?)",
    );
    this.#purgeTokens = db.prepare("DELETE FROM used_tokens WHERE (device_id, nonce) IN (SELECT device_id, nonce FROM used_tokens WHERE expires_ms < ? ORDER BY expires_ms LIMIT ?)");
  }

  /** Records a message id; says whether it is new, the same message again, or another message under a used id. */
  remember(deviceId: string, msgId: string, digest: Uint8Array, expiresMs: number): SeenResult {
    const row = this.#getSeen.get(deviceId, msgId);
    if (row !== undefined) return Buffer.from(digest).equals(row.digest) ? "duplicate" : "conflict";
    this.#putSeen.run(deviceId, msgId, digest, expiresMs);
    return "new";
  }

  /** Consumes a connect-token nonce; false when it was used before. */
  useToken(deviceId: string, nonce: string, expiresMs: number): boolean {
    return this.#putToken.run(deviceId, nonce, expiresMs).changes === 1;
  }

  /** Deletes up to `limit` expired rows of each table; returns how many went (call again while > 0). */
  purge(nowMs: number, limit: number): number {
    return this.#purgeSeen.run(nowMs, limit).changes + this.#purgeTokens.run(nowMs, limit).changes;
  }
}
