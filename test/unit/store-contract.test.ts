/**
 * The store seam's contract (src/store/db.ts): every test here runs against both
 * implementations, the embedded SQLite file and PostgreSQL (src/store/pg.ts), and expects the
 * same answers. What the services rely on — statements, types, transactions and savepoints,
 * the schema, the repositories' rules — holds on both, or a test here fails.
 */
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Signer, generateKeyPair } from "../../src/crypto/ed25519.ts";
import { Keyring } from "../../src/crypto/keyring.ts";
import { isStorageFault } from "../../src/service/inbox.ts";
import { addMerchant, creditWallet, walletBalance } from "../../src/service/ledger.ts";
import { registerDevice, revokeDevice } from "../../src/service/devices.ts";
import { appendAudit, AuditLog, verifyAudit } from "../../src/store/audit.ts";
import { isPostgres, openPostgres, schemaVersion, type Db } from "../../src/store/db.ts";
import { MIGRATIONS } from "../../src/store/migrations.ts";
import { PG_MIGRATIONS } from "../../src/store/migrations-pg.ts";
import { OutboxRepo } from "../../src/store/outbox.ts";
import { PaymentRepo } from "../../src/store/payments.ts";
import { ReplayRepo } from "../../src/store/replay.ts";
import { LedgerRepo } from "../../src/store/ledger.ts";
import { AgreementRepo, PairingRepo } from "../../src/store/binding.ts";
import { WRITE_LOCK, toPgPlaceholders } from "../../src/store/pg.ts";
import { newDeviceKey } from "../../device-sim/keyfile.ts";
import { toBase64 } from "../../src/crypto/encoding.ts";
import { openTempDb } from "../helpers.ts";
import { freshPostgresDatabase } from "../services.ts";

interface Store {
  readonly db: Db;
  readonly url?: string;
  dispose(): void;
}

const STORES: Record<string, () => Promise<Store>> = {
  sqlite: async () => openTempDb(),
  postgres: async () => {
    const url = await freshPostgresDatabase();
    const db = openPostgres(url);
    return { db, url, dispose: () => db.close() };
  },
};

const NOW = 1_796_000_000_000;

describe.each(Object.keys(STORES))("store contract: %s", (kind) => {
  let store: Store;
  let db: Db;
  beforeAll(async () => {
    store = await STORES[kind]!();
    db = store.db;
  }, 60_000);
  afterAll(() => store?.dispose());

  it("is this store, at the newest schema version both dialects know", () => {
    expect(isPostgres(db)).toBe(kind === "postgres");
    expect(PG_MIGRATIONS.length).toBe(MIGRATIONS.length);
    expect(schemaVersion(db)).toBe(MIGRATIONS.length);
  });

  it("has the same tables and columns as the other dialect (SQLite's implicit rowid aside)", () => {
    const columns =
      kind === "postgres"
        ? (db.prepare("SELECT table_name AS t, column_name AS c FROM information_schema.columns WHERE table_schema = 'public'").all() as { t: string; c: string }[])
        : (db.prepare("SELECT m.name AS t, p.name AS c FROM sqlite_master m, pragma_table_info(m.name) p WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'").all() as { t: string; c: string }[]);
    const names = columns.filter((r) => !(r.t === "pairings" && r.c === "rowid")).map((r) => `${r.t}.${r.c}`).sort();
    expect(names).toEqual(SCHEMA_COLUMNS);
  });

  it("returns integers as exact numbers, bytes as Buffers and NULL as null", () => {
    db.prepare("INSERT INTO merchants (id, name, created_ms) VALUES (?, ?, ?)").run("m-types", "Types", NOW);
    const row = db.prepare("SELECT id, name, created_ms, NULL AS absent FROM merchants WHERE id = ?").get("m-types") as Record<string, unknown>;
    expect(row).toEqual({ id: "m-types", name: "Types", created_ms: NOW, absent: null });
    const bytes = Buffer.from([0, 1, 2, 255, 254]);
    db.prepare("INSERT INTO audit_nodes (leaf, level, pos, hash) VALUES (?, ?, ?, ?)").run(8 * 2 ** 40 - 1, 40, 7, bytes);
    const back = db.prepare("SELECT hash FROM audit_nodes WHERE level = ? AND pos = ?").pluck().get(40, 7);
    expect(Buffer.isBuffer(back)).toBe(true);
    expect(back).toEqual(bytes);
    expect(db.prepare("SELECT level, pos FROM audit_nodes WHERE level = 40").raw().all()).toEqual([[40, 7]]);
    // Not a real subtree: gone again, so the audit log this suite appends to later verifies.
    db.prepare("DELETE FROM audit_nodes WHERE level = 40").run();
    const sum = db.prepare("SELECT sum(created_ms) AS s, count(*) AS n FROM merchants WHERE id = 'm-types'").get() as { s: number; n: number };
    expect(sum).toEqual({ s: NOW, n: 1 });
  });

  it("binds ? and @name placeholders, and leaves a ? inside a string literal alone", () => {
    expect(db.prepare("SELECT '?' AS q, ? AS v").get("x")).toEqual({ q: "?", v: "x" });
    const named = db.prepare("SELECT id FROM merchants WHERE id = @id AND created_ms = @at").all({ id: "m-types", at: NOW });
    expect(named).toEqual([{ id: "m-types" }]);
  });

  it("commits a transaction whole, or rolls it back whole when it throws", () => {
    const insert = db.prepare("INSERT INTO merchants (id, name, created_ms) VALUES (?, ?, ?)");
    const count = () => (db.prepare("SELECT count(*) AS n FROM merchants WHERE id LIKE 'tx-%'").get() as { n: number }).n;
    expect(() =>
      db.transaction(() => {
        insert.run("tx-1", "One", NOW);
        throw new Error("a handler's bug");
      }).immediate(),
    ).toThrow("a handler's bug");
    expect(count()).toBe(0);
    db.transaction(() => insert.run("tx-2", "Two", NOW)).immediate();
    expect(count()).toBe(1);
  });

  it("rolls back only a failed savepoint, including one failed by the database itself, and the transaction goes on", () => {
    const insert = db.prepare("INSERT INTO merchants (id, name, created_ms) VALUES (?, ?, ?)");
    const savepoint = db.transaction((fn: () => void) => fn());
    db.transaction(() => {
      insert.run("sp-outer", "Outer", NOW);
      expect(() => savepoint(() => {
        insert.run("sp-inner", "Inner", NOW);
        throw new Error("refused");
      })).toThrow("refused");
      // A duplicate primary key: the database refuses the statement; only its savepoint goes.
      expect(() => savepoint(() => insert.run("sp-outer", "Again", NOW))).toThrow();
      savepoint(() => insert.run("sp-after", "After", NOW));
    }).immediate();
    const ids = (db.prepare("SELECT id FROM merchants WHERE id LIKE 'sp-%' ORDER BY id").pluck().all() as string[]);
    expect(ids).toEqual(["sp-after", "sp-outer"]);
  });

  it("numbers outbox rows in commit order, reads a device's undelivered rows past a cursor, and marks one delivered once", () => {
    const outbox = new OutboxRepo(db);
    const rows = [1, 2, 3].map((i) => db.transaction(() => outbox.add({ deviceId: "dev-o", msgId: `m${i}`, re: null, bytes: Buffer.from([i]), createdMs: NOW }))());
    expect(rows[1]!.seq).toBeGreaterThan(rows[0]!.seq);
    expect(rows[2]!.seq).toBeGreaterThan(rows[1]!.seq);
    expect(outbox.undelivered("dev-o", NOW, 10, rows[0]!.seq).map((r) => r.msgId)).toEqual(["m2", "m3"]);
    expect(outbox.markDelivered("dev-o", "m2", NOW)).toBe(true);
    expect(outbox.markDelivered("dev-o", "m2", NOW)).toBe(false);
    expect(outbox.undelivered("dev-o", NOW).map((r) => r.msgId)).toEqual(["m1", "m3"]);
    expect(outbox.backlog("dev-o", NOW, 10)).toBe(2);
  });

  it("remembers a message id (new, duplicate, conflict) and uses a connect token once", () => {
    const replay = new ReplayRepo(db);
    const digest = Buffer.alloc(32, 1);
    expect(db.transaction(() => replay.remember("dev-r", "id-1", digest, NOW + 1000, NOW))()).toBe("new");
    expect(replay.remember("dev-r", "id-1", digest, NOW + 1000, NOW)).toBe("duplicate");
    expect(replay.remember("dev-r", "id-1", Buffer.alloc(32, 2), NOW + 1000, NOW)).toBe("conflict");
    expect(replay.useToken("dev-r", "nonce-1", NOW + 1000, NOW)).toBe(true);
    expect(replay.useToken("dev-r", "nonce-1", NOW + 1000, NOW)).toBe(false);
    // Once its use has expired, the same nonce is a new token (it is refused as stale first).
    expect(replay.useToken("dev-r", "nonce-1", NOW + 5000, NOW + 2000)).toBe(true);
  });

  it("arms a deadline once per payment and kind, the later due time winning, and finds it due", () => {
    const setup = world(db);
    const payments = new PaymentRepo(db);
    const payment = setup.payment("p-deadline");
    payments.arm(payment, "prompt", NOW + 100);
    payments.arm(payment, "prompt", NOW + 200);
    expect(payments.due(NOW + 150, 10)).toEqual([]);
    expect(payments.due(NOW + 250, 10)).toEqual([{ paymentId: payment, which: "prompt", dueMs: NOW + 200 }]);
    expect(payments.nextDueMs()).toBe(NOW + 200);
    payments.disarm(payment);
    expect(payments.armedCount()).toBe(0);
  });

  it("reseals an agreement only at the version it was read at, with the same key version or a new one", () => {
    const id = world(db).agreement;
    const agreements = new AgreementRepo(db);
    // The same key version (a payment's usage counters): the blob and the version move.
    expect(agreements.reseal(id, Buffer.alloc(8, 7), 1, 2, 1)).toBe(true);
    expect(agreements.get(id)).toMatchObject({ version: 2, keyVersion: 1 });
    // A stale version is refused, whichever key it names.
    expect(agreements.reseal(id, Buffer.alloc(8, 8), 1, 3, 1)).toBe(false);
    expect(agreements.reseal(id, Buffer.alloc(8, 8), 2, 3, 1)).toBe(false);
    // A new key version (a master key rotation) is written with it.
    expect(agreements.reseal(id, Buffer.alloc(8, 9), 2, 3, 2)).toBe(true);
    expect(agreements.get(id)).toMatchObject({ version: 3, keyVersion: 2 });
    expect(Buffer.from(agreements.get(id)!.sealed!)).toEqual(Buffer.alloc(8, 9));
  });

  it("keeps the ledger balanced and a wallet from going below zero", () => {
    const keyring = Keyring.fresh();
    expect(addMerchant(db, { id: "shop", name: "Shop" }, NOW)).toEqual({ ok: true });
    expect(creditWallet(db, keyring, { userId: "alice", amountMinor: 1234, currency: "EUR" }, NOW).ok).toBe(true);
    expect(creditWallet(db, keyring, { userId: "alice", amountMinor: 1, currency: "EUR", reference: "r-1" }, NOW).ok).toBe(true);
    // The same reference again is the same credit, not a second one.
    expect(creditWallet(db, keyring, { userId: "alice", amountMinor: 1, currency: "EUR", reference: "r-1" }, NOW)).toMatchObject({ ok: true, repeated: true });
    expect(walletBalance(db, keyring, "alice", "EUR")).toBe(1235);
    const ledger = new LedgerRepo(db);
    for (const [currency, sum] of ledger.sums()) expect(sum, currency).toBe(0);
    const wallet = ledger.accounts().find((a) => a.kind === "wallet")!;
    expect(() => db.prepare("UPDATE accounts SET balance_minor = -1 WHERE id = ?").run(wallet.id)).toThrow();
  });

  it("finds pairings by selector newest first, insertion order breaking a tie in the same ms", () => {
    const setup = world(db);
    const pairings = new PairingRepo(db);
    for (const id of ["pa-1", "pa-2", "pa-3"]) {
      pairings.insert({ id, terminalId: setup.terminal, selector: "SAME", verifierHash: Buffer.alloc(32), requestSealed: Buffer.alloc(8), createdMs: NOW, expiresAtMs: NOW + 1000 });
      if (id !== "pa-3") pairings.update(id, "replaced", 0);
    }
    expect(pairings.bySelector("SAME").map((p) => p.id)).toEqual(["pa-3", "pa-2", "pa-1"]);
  });

  it("appends audit entries in one order, proves them against a signed head, and verifies the whole log", () => {
    const pair = generateKeyPair();
    const signer = new Signer(pair);
    db.transaction(() => {
      for (let i = 0; i < 5; i++) appendAudit(db, NOW + i, "merchant.added", `m-${i}`, { i });
    }).immediate();
    const log = new AuditLog(db);
    const size = log.size();
    expect(size).toBeGreaterThanOrEqual(5);
    const head = db.transaction(() => log.signHead((b) => signer.sign(b), NOW + 10))();
    expect(head.treeSize).toBe(size);
    const proof = log.inclusionProof(size - 1, size);
    expect(proof.length).toBeGreaterThan(0);
    const verified = verifyAudit(db, pair.publicKey);
    expect(verified, JSON.stringify(verified)).toMatchObject({ ok: true });
  });

  it("registers and revokes a device, recording the revocation for every node's feed", () => {
    const keyring = Keyring.fresh();
    const key = newDeviceKey("terminal");
    const res = registerDevice(db, keyring, { kind: "terminal", name: "TV", publicKey: toBase64(key.pair.publicKey) }, NOW);
    expect(res.ok).toBe(true);
    expect(revokeDevice(db, key.deviceId, NOW).ok).toBe(true);
    expect(revokeDevice(db, key.deviceId, NOW)).toMatchObject({ ok: false });
    const events = db.prepare("SELECT kind, device_id FROM admin_events WHERE device_id = ?").all(key.deviceId);
    expect(events).toEqual([{ kind: "device_revoked", device_id: key.deviceId }]);
  });

  it("calls a lost or refused store a storage fault (the whole batch fails), and a constraint a handler's own error", () => {
    let constraint: unknown;
    try {
      db.prepare("INSERT INTO merchants (id, name, created_ms) VALUES (?, ?, ?)").run("m-types", "Again", NOW);
    } catch (err) {
      constraint = err;
    }
    expect(constraint).toBeDefined();
    expect(isStorageFault(constraint)).toBe(false);
    expect(isStorageFault(Object.assign(new Error("disk"), { code: kind === "postgres" ? "PG_08006" : "SQLITE_IOERR_WRITE" }))).toBe(true);
  });
});

describe("PostgreSQL across connections", () => {
  it("makes a transaction wait for the write lock another connection holds, so it sees that connection's commit", async () => {
    const url = await freshPostgresDatabase();
    const db = openPostgres(url);
    try {
      // Another node (psql) takes the write lock, waits, inserts, commits.
      const other = spawn("psql", [url, "-v", "ON_ERROR_STOP=1", "-qc", `BEGIN; SELECT pg_advisory_xact_lock(${WRITE_LOCK}); SELECT pg_sleep(0.8); INSERT INTO merchants (id, name, created_ms) VALUES ('other-node', 'Other', 1); COMMIT;`], { stdio: "ignore" });
      const exited = new Promise<number | null>((r) => other.on("exit", r));
      // Wait until psql holds the lock (seen in pg_locks), then start a transaction here.
      for (let i = 0; i < 100; i++) {
        const held = db.prepare("SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND objid = ? AND granted").get(WRITE_LOCK) as { n: number };
        if (held.n > 0) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      const seen = db.transaction(() => db.prepare("SELECT count(*) AS n FROM merchants WHERE id = 'other-node'").pluck().get())();
      // Without the lock this read would have run at once and found nothing.
      expect(seen).toBe(1);
      expect(await exited).toBe(0);
    } finally {
      db.close();
    }
  }, 30_000);

  it("commits durably even where the server is set to synchronous_commit=off", async () => {
    const url = await freshPostgresDatabase();
    const name = new URL(url).pathname.slice(1);
    const admin = openPostgres(url);
    admin.prepare(`ALTER DATABASE "${name}" SET synchronous_commit = off`).run();
    admin.close();
    // A new session there starts with off; the broker's connection turns it back on.
    const db = openPostgres(url);
    try {
      expect(db.prepare("SHOW synchronous_commit").pluck().get()).toBe("on");
      const psql = spawnSync("psql", [url, "-Atc", "SHOW synchronous_commit"], { encoding: "utf8" });
      expect(psql.stdout.trim()).toBe("off");
    } finally {
      db.close();
    }
  });

  it("translates placeholders outside literals only", () => {
    expect(toPgPlaceholders("SELECT '?', ? FROM t WHERE a = ? AND b = 'it''s ?'").text).toBe("SELECT '?', $1 FROM t WHERE a = $2 AND b = 'it''s ?'");
    expect(toPgPlaceholders("VALUES (@a, @b, @a)")).toEqual({ text: "VALUES ($1, $2, $1)", names: ["a", "b"] });
  });
});

/** A terminal, phone, merchant and agreement to hang payments and pairings on. */
function world(db: Db) {
  // Keys and lookups are unique columns: random bytes, not one random byte (256 values collided
  // now and then between the worlds of one database).
  const suffix = Math.random().toString(36).slice(2, 8);
  const terminal = `t-${suffix}`;
  const phone = `p-${suffix}`;
  db.prepare("INSERT INTO devices (id, kind, name, public_key, status, created_ms) VALUES (?, 'terminal', 'T', ?, 'active', ?)").run(terminal, randomBytes(32), NOW);
  db.prepare("INSERT INTO devices (id, kind, name, public_key, user_index, status, created_ms) VALUES (?, 'phone', 'P', ?, ?, 'active', ?)").run(phone, randomBytes(32), Buffer.alloc(32, 3), NOW);
  db.prepare("INSERT INTO merchants (id, name, created_ms) VALUES (?, 'M', ?) ON CONFLICT DO NOTHING").run(`mer-${suffix}`, NOW);
  db.prepare("INSERT INTO agreements (id, lookup, terminal_id, phone_id, status, sealed, key_version, version, created_ms) VALUES (?, ?, ?, ?, 'active', ?, 1, 1, ?)").run(`ag-${suffix}`, randomBytes(32), terminal, phone, Buffer.alloc(8), NOW);
  return {
    terminal,
    agreement: `ag-${suffix}`,
    payment(id: string) {
      db.prepare(
        "INSERT INTO payments (id, terminal_id, phone_id, agreement_id, merchant_id, idempotency_key, request_digest, order_ref, state, status, seq, created_ms, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, 'o', '{}', 'awaiting_confirmation', 0, ?, ?)",
      ).run(id, terminal, phone, `ag-${suffix}`, `mer-${suffix}`, `k-${id}`, Buffer.alloc(32), NOW, NOW);
      return id;
    },
  };
}

const SCHEMA_COLUMNS = [
  "accounts.balance_minor", "accounts.created_ms", "accounts.currency", "accounts.id", "accounts.kind", "accounts.owner",
  "admin_events.at_ms", "admin_events.device_id", "admin_events.kind", "admin_events.seq",
  "agreements.created_ms", "agreements.id", "agreements.key_version", "agreements.lookup", "agreements.phone_id", "agreements.sealed", "agreements.status", "agreements.terminal_id", "agreements.unbound_by", "agreements.unbound_ms", "agreements.version",
  "audit_entries.at_ms", "audit_entries.entry", "audit_entries.idx", "audit_entries.kind", "audit_entries.leaf_hash", "audit_entries.subject",
  "audit_heads.root_hash", "audit_heads.signature", "audit_heads.timestamp_ms", "audit_heads.tree_size",
  "audit_nodes.hash", "audit_nodes.leaf", "audit_nodes.level", "audit_nodes.pos",
  "broker_identity.created_ms", "broker_identity.id", "broker_identity.public_key",
  "deadlines.due_ms", "deadlines.payment_id", "deadlines.which",
  "devices.created_ms", "devices.id", "devices.kind", "devices.name", "devices.public_key", "devices.revoked_ms", "devices.status", "devices.user_index", "devices.user_sealed",
  "merchants.created_ms", "merchants.id", "merchants.name",
  "outbox.bytes", "outbox.created_ms", "outbox.delivered_ms", "outbox.device_id", "outbox.expires_ms", "outbox.msg_id", "outbox.re", "outbox.seq",
  "pairings.created_ms", "pairings.expires_ms", "pairings.id", "pairings.request_sealed", "pairings.selector", "pairings.status", "pairings.terminal_id", "pairings.verifier_hash", "pairings.wrong_tries",
  "payment_events.at_ms", "payment_events.body", "payment_events.kind", "payment_events.payment_id", "payment_events.seq",
  "payments.agreement_id", "payments.created_ms", "payments.description", "payments.id", "payments.idempotency_key", "payments.merchant_id", "payments.order_ref", "payments.phone_id", "payments.request_digest", "payments.seq", "payments.state", "payments.status", "payments.terminal_id", "payments.updated_ms",
  "schema_migrations.applied_ms", "schema_migrations.version",
  "seen_messages.device_id", "seen_messages.digest", "seen_messages.expires_ms", "seen_messages.msg_id", "seen_messages.since_ms",
  "transfers.amount_minor", "transfers.created_ms", "transfers.credit_account", "transfers.currency", "transfers.debit_account", "transfers.id", "transfers.kind", "transfers.payment_id", "transfers.reference",
  "used_tokens.device_id", "used_tokens.expires_ms", "used_tokens.nonce",
];
