/**
 * Schema migrations, in order; migration N is MIGRATIONS[N - 1]. Never edit a released one:
 * add the next. No column holds a login, user id or serial in clear: those are sealed or
 * blind-indexed (an HMAC under a key derived from the master key).
 */
export const MIGRATIONS: readonly string[] = [
  // 1: devices, replay memory, used connect tokens, the outbox, and the admin event feed.
  `
  CREATE TABLE devices (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('terminal', 'phone')),
    name         TEXT NOT NULL,
    public_key   BLOB NOT NULL UNIQUE CHECK (length(public_key) = 32),
    user_index   BLOB,
    user_sealed  BLOB,
    status       TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    created_ms   INTEGER NOT NULL,
    revoked_ms   INTEGER,
    CHECK ((kind = 'phone') = (user_index IS NOT NULL))
  );
  CREATE INDEX devices_by_user ON devices (user_index) WHERE user_index IS NOT NULL;

  CREATE TABLE seen_messages (
    device_id   TEXT NOT NULL,
    msg_id      TEXT NOT NULL,
    digest      BLOB NOT NULL,
    expires_ms  INTEGER NOT NULL,
    PRIMARY KEY (device_id, msg_id)
  ) WITHOUT ROWID;
  CREATE INDEX seen_messages_by_expiry ON seen_messages (expires_ms);

  CREATE TABLE used_tokens (
    device_id   TEXT NOT NULL,
    nonce       TEXT NOT NULL,
    expires_ms  INTEGER NOT NULL,
    PRIMARY KEY (device_id, nonce)
  ) WITHOUT ROWID;
  CREATE INDEX used_tokens_by_expiry ON used_tokens (expires_ms);

  CREATE TABLE outbox (
    seq           INTEGER PRIMARY KEY,
    device_id     TEXT NOT NULL,
    msg_id        TEXT NOT NULL,
    re            TEXT,
    bytes         BLOB NOT NULL,
    created_ms    INTEGER NOT NULL,
    delivered_ms  INTEGER,
    UNIQUE (device_id, msg_id)
  );
  CREATE INDEX outbox_undelivered ON outbox (device_id, seq) WHERE delivered_ms IS NULL;
  CREATE INDEX outbox_by_reply ON outbox (device_id, re) WHERE re IS NOT NULL;

  CREATE TABLE admin_events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL,
    device_id  TEXT,
    at_ms      INTEGER NOT NULL
  );
  `,
];
