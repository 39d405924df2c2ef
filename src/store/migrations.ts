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
  // 2: binding. Pairing codes (selector in clear, verifier as an HMAC, the request sealed) and
  // agreements (sealed, found by a blind index, shredded on unbind).
  `
  CREATE TABLE pairings (
    id              TEXT PRIMARY KEY,
    terminal_id     TEXT NOT NULL REFERENCES devices (id),
    selector        TEXT NOT NULL,
    verifier_hash   BLOB NOT NULL,
    request_sealed  BLOB,
    status          TEXT NOT NULL CHECK (status IN ('live', 'used', 'void', 'replaced')),
    wrong_tries     INTEGER NOT NULL,
    created_ms      INTEGER NOT NULL,
    expires_ms      INTEGER NOT NULL
  );
  CREATE UNIQUE INDEX pairings_live_selector ON pairings (selector) WHERE status = 'live';
  CREATE INDEX pairings_by_selector ON pairings (selector, created_ms);
  CREATE INDEX pairings_by_terminal ON pairings (terminal_id, created_ms);

  CREATE TABLE agreements (
    id           TEXT PRIMARY KEY,
    lookup       BLOB,
    terminal_id  TEXT NOT NULL REFERENCES devices (id),
    phone_id     TEXT NOT NULL REFERENCES devices (id),
    status       TEXT NOT NULL CHECK (status IN ('active', 'unbound')),
    sealed       BLOB,
    key_version  INTEGER,
    version      INTEGER NOT NULL,
    created_ms   INTEGER NOT NULL,
    unbound_ms   INTEGER,
    unbound_by   TEXT,
    CHECK ((status = 'active') = (sealed IS NOT NULL AND lookup IS NOT NULL))
  );
  CREATE UNIQUE INDEX agreements_by_lookup ON agreements (lookup) WHERE status = 'active';
  CREATE INDEX agreements_by_phone ON agreements (phone_id) WHERE status = 'active';
  CREATE INDEX agreements_by_key_version ON agreements (key_version) WHERE status = 'active';
  `,
  // 3: payments and the double-entry ledger. Wallets are found by a blind index of the user id.
  `
  CREATE TABLE merchants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_ms  INTEGER NOT NULL
  );

  CREATE TABLE accounts (
    id             TEXT PRIMARY KEY,
    kind           TEXT NOT NULL CHECK (kind IN ('wallet', 'merchant', 'funding')),
    owner          BLOB NOT NULL,
    currency       TEXT NOT NULL,
    balance_minor  INTEGER NOT NULL DEFAULT 0,
    created_ms     INTEGER NOT NULL,
    UNIQUE (kind, owner, currency),
    -- A wallet never goes below zero; the funding account is where credited money comes from.
    CHECK (kind = 'funding' OR balance_minor >= 0)
  );

  CREATE TABLE transfers (
    id              TEXT PRIMARY KEY,
    payment_id      TEXT UNIQUE,
    kind            TEXT NOT NULL CHECK (kind IN ('payment', 'credit')),
    debit_account   TEXT NOT NULL REFERENCES accounts (id),
    credit_account  TEXT NOT NULL REFERENCES accounts (id),
    amount_minor    INTEGER NOT NULL CHECK (amount_minor > 0),
    currency        TEXT NOT NULL,
    reference       TEXT,
    created_ms      INTEGER NOT NULL
  );
  CREATE INDEX transfers_by_time ON transfers (created_ms);
  CREATE UNIQUE INDEX transfers_credit_reference ON transfers (reference) WHERE kind = 'credit' AND reference IS NOT NULL;

  CREATE TABLE payments (
    id                 TEXT PRIMARY KEY,
    terminal_id        TEXT NOT NULL REFERENCES devices (id),
    phone_id           TEXT NOT NULL REFERENCES devices (id),
    agreement_id       TEXT NOT NULL REFERENCES agreements (id),
    merchant_id        TEXT NOT NULL REFERENCES merchants (id),
    idempotency_key    TEXT NOT NULL,
    request_digest     BLOB NOT NULL,
    order_ref          TEXT NOT NULL,
    description        TEXT,
    state              TEXT NOT NULL,
    status             TEXT NOT NULL,
    seq                INTEGER NOT NULL,
    created_ms         INTEGER NOT NULL,
    updated_ms         INTEGER NOT NULL,
    UNIQUE (terminal_id, idempotency_key)
  );
  CREATE INDEX payments_live_by_terminal ON payments (terminal_id) WHERE status IN ('awaiting_confirmation', 'executing');
  CREATE INDEX payments_live_by_phone ON payments (phone_id) WHERE status IN ('awaiting_confirmation', 'executing');

  CREATE TABLE payment_events (
    payment_id  TEXT NOT NULL REFERENCES payments (id),
    seq         INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    body        TEXT NOT NULL,
    at_ms       INTEGER NOT NULL,
    PRIMARY KEY (payment_id, seq)
  ) WITHOUT ROWID;

  CREATE TABLE deadlines (
    payment_id  TEXT NOT NULL REFERENCES payments (id),
    which       TEXT NOT NULL CHECK (which IN ('prompt', 'task')),
    due_ms      INTEGER NOT NULL,
    PRIMARY KEY (payment_id, which)
  ) WITHOUT ROWID;
  CREATE INDEX deadlines_by_due ON deadlines (due_ms);
  `,
  // 4: unbinding ends the agreement's live payments, found by this index.
  `
  CREATE INDEX payments_live_by_agreement ON payments (agreement_id) WHERE status IN ('awaiting_confirmation', 'executing');
  `,
  // 5: the purge finds delivered outbox rows by this index instead of scanning the outbox.
  `
  CREATE INDEX outbox_delivered ON outbox (delivered_ms) WHERE delivered_ms IS NOT NULL;
  `,
  // 6: answers that carry nothing a device must learn later (pong, refusals, query answers)
  // expire: they are not resent past expires_ms, and the purge finds them by this index.
  `
  ALTER TABLE outbox ADD COLUMN expires_ms INTEGER;
  CREATE INDEX outbox_by_expiry ON outbox (expires_ms) WHERE expires_ms IS NOT NULL;
  `,
  // 7: the audit log (src/store/audit.ts, docs/protocol.md §Audit log): an append-only Merkle
  // tree (RFC 9162) of every state change. Entries are JSON text hashed exactly as stored; the
  // hashes of complete subtrees are kept so that roots and proofs need O(log n) reads; tree heads
  // are signed by the broker's identity key. subject names the payment, agreement or device an
  // entry is about (audit show --payment).
  `
  CREATE TABLE audit_entries (
    idx        INTEGER PRIMARY KEY,
    at_ms      INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    subject    TEXT,
    entry      TEXT NOT NULL,
    leaf_hash  BLOB NOT NULL
  );
  CREATE INDEX audit_entries_by_subject ON audit_entries (subject) WHERE subject IS NOT NULL;
  CREATE TABLE audit_nodes (
    level  INTEGER NOT NULL,
    pos    INTEGER NOT NULL,
    hash   BLOB NOT NULL,
    PRIMARY KEY (level, pos)
  ) WITHOUT ROWID;
  CREATE TABLE audit_heads (
    tree_size     INTEGER PRIMARY KEY,
    root_hash     BLOB NOT NULL,
    timestamp_ms  INTEGER NOT NULL,
    signature     BLOB NOT NULL
  );
  `,
  // 8: the broker identity the data was made under (one row): a node started with another
  // broker.key — whose messages every device would refuse — is stopped at start instead.
  `
  CREATE TABLE broker_identity (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    public_key  BLOB NOT NULL CHECK (length(public_key) = 32),
    created_ms  INTEGER NOT NULL
  );
  `,
  // 9: when each remembered message was handled: a duplicate's stored answers are the rows
  // answering its id made since then, so a new message under an expired id needs no update of
  // the earlier message's answers (src/store/replay.ts). 0 for rows from before: their earlier
  // answers were unlinked when they were remembered.
  `
  ALTER TABLE seen_messages ADD COLUMN since_ms INTEGER NOT NULL DEFAULT 0;
  `,
  // 10: the keys that hold message ids lead with the id, not the device. Ids are time-ordered
  // (the broker's are v7 UUIDs or payment ids; the device library's are v7 UUIDs), so each
  // insert lands at the end of its index: one page per commit instead of one page per device
  // the commit touched (docs/performance.md §Fifth session). Lookups give both columns, so any
  // order serves them. SQLite changes a table's key only by copying the table.
  `
  CREATE TABLE seen_messages_new (
    msg_id      TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    digest      BLOB NOT NULL,
    expires_ms  INTEGER NOT NULL,
    since_ms    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (msg_id, device_id)
  ) WITHOUT ROWID;
  INSERT INTO seen_messages_new (msg_id, device_id, digest, expires_ms, since_ms) SELECT msg_id, device_id, digest, expires_ms, since_ms FROM seen_messages;
  DROP TABLE seen_messages;
  ALTER TABLE seen_messages_new RENAME TO seen_messages;
  CREATE INDEX seen_messages_by_expiry ON seen_messages (expires_ms);

  CREATE TABLE outbox_new (
    seq           INTEGER PRIMARY KEY,
    device_id     TEXT NOT NULL,
    msg_id        TEXT NOT NULL,
    re            TEXT,
    bytes         BLOB NOT NULL,
    created_ms    INTEGER NOT NULL,
    delivered_ms  INTEGER,
    expires_ms    INTEGER,
    UNIQUE (msg_id, device_id)
  );
  INSERT INTO outbox_new (seq, device_id, msg_id, re, bytes, created_ms, delivered_ms, expires_ms) SELECT seq, device_id, msg_id, re, bytes, created_ms, delivered_ms, expires_ms FROM outbox;
  DROP TABLE outbox;
  ALTER TABLE outbox_new RENAME TO outbox;
  CREATE INDEX outbox_undelivered ON outbox (device_id, seq) WHERE delivered_ms IS NULL;
  CREATE INDEX outbox_by_reply ON outbox (re, device_id) WHERE re IS NOT NULL;
  CREATE INDEX outbox_delivered ON outbox (delivered_ms) WHERE delivered_ms IS NOT NULL;
  CREATE INDEX outbox_by_expiry ON outbox (expires_ms) WHERE expires_ms IS NOT NULL;
  `,
  // 11: the audit log's stored subtree hashes are keyed by the entry whose append completed them
  // (leaf = the subtree's last entry index, ((pos + 1) << level) - 1) and then level, instead of
  // by level and position: every append writes at the end of one index, not at the end of one
  // range per level (~12 pages per commit, docs/performance.md §Fifth session).
  `
  CREATE TABLE audit_nodes_new (
    leaf   INTEGER NOT NULL,
    level  INTEGER NOT NULL,
    pos    INTEGER NOT NULL,
    hash   BLOB NOT NULL,
    PRIMARY KEY (leaf, level),
    CHECK (leaf = ((pos + 1) << level) - 1)
  ) WITHOUT ROWID;
  INSERT INTO audit_nodes_new (leaf, level, pos, hash) SELECT ((pos + 1) << level) - 1, level, pos, hash FROM audit_nodes;
  DROP TABLE audit_nodes;
  ALTER TABLE audit_nodes_new RENAME TO audit_nodes;
  `,
];
