// The audit log's store (src/store/audit.ts): appends keep the stored subtree hashes right
// across rollbacks and other connections, roots and proofs from stored hashes agree with the
// pure Merkle code, and verifyAudit names the first entry or head that each kind of tampering
// breaks.
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { adminMain } from "../../broker/admin.ts";
import { leafHash, nodeHash, rootOf, verifyConsistency, verifyInclusion } from "../../src/core/merkle.ts";
import { generateKeyPair, Signer } from "../../src/crypto/ed25519.ts";
import { fromBase64 } from "../../src/crypto/encoding.ts";
import { sealEnvelope } from "../../src/protocol/envelope.ts";
import { appendAudit, AuditLog, verifyAudit, verifyHeadSignature, type AuditProblem, type SignedHead } from "../../src/store/audit.ts";
import { openDatabase, type Db } from "../../src/store/db.ts";

const utf8 = new TextEncoder();
const N = 23;
const HEADS = [5, 12, 23];

let dir: string;
let db: Db;
const opened: Db[] = [];
const broker = generateKeyPair();
const signer = new Signer(broker);
const sign = (m: Uint8Array) => signer.sign(m);

function open(): Db {
  const d = openDatabase(join(dir, "handoff.db"));
  opened.push(d);
  return d;
}

function appendMany(d: Db, from: number, count: number): void {
  for (let i = from; i < from + count; i++) {
    d.transaction(() => appendAudit(d, 1_700_000_000_000 + i, i % 3 === 0 ? "payment.event" : "ledger.transfer", `pay-${i % 4}`, { amountMinor: 100 + i, currency: "EUR" }))();
  }
}

/** A log of N entries with heads signed at HEADS. */
function buildLog(d: Db): void {
  const log = new AuditLog(d);
  let at = 0;
  for (const size of HEADS) {
    appendMany(d, at, size - at);
    at = size;
    log.signHead(sign, 1_700_000_100_000 + size);
  }
}

function problem(): AuditProblem {
  const v = verifyAudit(db, broker.publicKey);
  if (v.ok) throw new Error("verifyAudit found nothing wrong");
  return v.problem;
}

const textOf = (i: number) => (db.prepare("SELECT entry FROM audit_entries WHERE idx = ?").pluck().get(i) as string);
const setText = (i: number, text: string, rehashLeaf: boolean) => {
  db.prepare("UPDATE audit_entries SET entry = ? WHERE idx = ?").run(text, i);
  if (rehashLeaf) db.prepare("UPDATE audit_entries SET leaf_hash = ? WHERE idx = ?").run(leafHash(utf8.encode(text)), i);
};

/** What a thorough forger does after editing entries: recompute every stored hash from the texts. */
function rehashEverything(d: Db): void {
  const rows = d.prepare("SELECT idx, entry FROM audit_entries ORDER BY idx").all() as { idx: number; entry: string }[];
  d.prepare("DELETE FROM audit_nodes").run();
  const insert = d.prepare("INSERT INTO audit_nodes (leaf, level, pos, hash) VALUES (((? + 1) << ?) - 1, ?, ?, ?)");
  let level = rows.map((r) => leafHash(utf8.encode(r.entry)));
  rows.forEach((r, i) => d.prepare("UPDATE audit_entries SET leaf_hash = ? WHERE idx = ?").run(level[i]!, r.idx));
  for (let l = 0; level.length > 0; l++) {
    level.forEach((h, pos) => insert.run(pos, l, l, pos, h));
    const up: Uint8Array[] = [];
    for (let p = 0; p + 1 < level.length; p += 2) up.push(nodeHash(level[p]!, level[p + 1]!));
    level = up;
  }
}

function renumberFrom(d: Db, from: number, by: number): void {
  // Two steps, so the primary key never collides midway.
  d.prepare("UPDATE audit_entries SET idx = -idx - 1 WHERE idx >= ?").run(from);
  d.prepare("UPDATE audit_entries SET idx = -idx - 1 + ? WHERE idx < 0").run(by);
}

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "hp-audit-"));
  db = open();
});

afterEach(() => {
  for (const d of opened.splice(0)) d.close();
  rmSync(dir, { recursive: true, force: true });
});

describe("appendAudit and AuditLog", () => {
  it("numbers entries from 0 and writes each as JSON text carrying its own index", () => {
    appendMany(db, 0, 3);
    const log = new AuditLog(db);
    expect(log.size()).toBe(3);
    const e = log.entry(2)!;
    expect(JSON.parse(e.text)).toEqual({ v: 1, index: 2, atMs: 1_700_000_000_002, kind: "ledger.transfer", subject: "pay-2", amountMinor: 102, currency: "EUR" });
    expect(Buffer.from(e.leafHash).equals(Buffer.from(leafHash(utf8.encode(e.text))))).toBe(true);
  });

  it("serves every root and every inclusion and consistency proof from stored hashes, matching a recomputation", () => {
    appendMany(db, 0, 37);
    const log = new AuditLog(db);
    const leaves = Array.from({ length: 37 }, (_, i) => leafHash(utf8.encode(log.entry(i)!.text)));
    for (let n = 0; n <= 37; n++) {
      const root = log.root(n);
      expect(Buffer.from(root).toString("hex"), `root(${n})`).toBe(Buffer.from(rootOf(leaves.slice(0, n))).toString("hex"));
      for (let i = 0; i < n; i++) expect(verifyInclusion(leaves[i]!, i, n, log.inclusionProof(i, n), root), `inclusion ${i} in ${n}`).toBe(true);
      for (let m = 0; m <= n; m++) expect(verifyConsistency(m, n, log.root(m), root, log.consistencyProof(m, n)), `consistency ${m} → ${n}`).toBe(true);
    }
    expect(() => log.root(38)).toThrow(/37 entries/);
  });

  it("keeps the tree right when an append's transaction rolls back", () => {
    appendMany(db, 0, 5);
    // Entry 5 is written (and would complete subtrees 4..5) and then undone.
    expect(() =>
      db.transaction(() => {
        appendAudit(db, 1, "payment.event", "pay-x", { n: 1 });
        throw new Error("the change failed");
      })(),
    ).toThrow("the change failed");
    appendMany(db, 5, 4);
    expect(new AuditLog(db).size()).toBe(9);
    expect(verifyAudit(db, broker.publicKey)).toEqual({ ok: true, size: 9, headsChecked: 0 });
  });

  it("picks up appends another connection made to the same file", () => {
    const other = open();
    appendMany(db, 0, 3);
    appendMany(other, 3, 5);
    appendMany(db, 8, 3);
    appendMany(other, 11, 1);
    expect(new AuditLog(db).size()).toBe(12);
    expect(verifyAudit(db, broker.publicKey)).toEqual({ ok: true, size: 12, headsChecked: 0 });
  });

  it("rebuilds when another connection wrote the index its own rolled-back append had used", () => {
    const other = open();
    appendMany(db, 0, 2);
    expect(() =>
      db.transaction(() => {
        appendAudit(db, 1, "payment.event", "pay-x", { n: 1 });
        throw new Error("undone");
      })(),
    ).toThrow("undone");
    // The same size as this connection last saw, but another leaf at its end.
    appendMany(other, 2, 1);
    appendMany(db, 3, 2);
    expect(verifyAudit(db, broker.publicKey)).toEqual({ ok: true, size: 5, headsChecked: 0 });
  });

  it("signs a head over the current root, and returns the latest one while the log has not grown", () => {
    const log = new AuditLog(db);
    const empty = log.signHead(sign, 1000);
    expect(empty.treeSize).toBe(0);
    appendMany(db, 0, 6);
    const h = log.signHead(sign, 2000);
    expect(h).toMatchObject({ treeSize: 6, timestampMs: 2000, rootHash: Buffer.from(log.root(6)).toString("base64") });
    expect(verifyHeadSignature(h, broker.publicKey)).toBe(true);
    expect(verifyHeadSignature(h, generateKeyPair().publicKey)).toBe(false);
    expect(log.signHead(sign, 3000)).toEqual(h);
    expect(log.latestHead()).toEqual(h);
    expect(log.head(0)).toEqual(empty);
    expect(log.head(3)).toBeNull();
    expect(log.headCovering(5)).toEqual(h);
    expect(log.headCovering(6)).toBeNull();
    appendMany(db, 6, 4);
    // A clock that went back does not make a head older than its predecessor.
    const later = log.signHead(sign, 1500);
    expect(later).toMatchObject({ treeSize: 10, timestampMs: 2000 });
    expect(verifyConsistency(6, 10, fromBase64(h.rootHash)!, fromBase64(later.rootHash)!, log.consistencyProof(6, 10))).toBe(true);
  });

  it("finds a subject's entries in log order", () => {
    appendMany(db, 0, 9);
    expect(new AuditLog(db).forSubject("pay-1").map((e) => e.index)).toEqual([1, 5]);
    expect(new AuditLog(db).forSubject("nobody")).toEqual([]);
  });
});

describe("verifyAudit", () => {
  beforeEach(() => buildLog(db));

  it("accepts an untouched log and counts the heads it checked", () => {
    expect(verifyAudit(db, broker.publicKey)).toEqual({ ok: true, size: N, headsChecked: HEADS.length });
  });

  it("names an entry whose text was edited and its leaf hash left", () => {
    setText(9, textOf(9).replace('"amountMinor":109', '"amountMinor":9'), false);
    expect(problem()).toMatchObject({ at: "entry", index: 9, code: "leaf_hash_mismatch" });
  });

  it("names an entry whose text was edited and its leaf hash recomputed", () => {
    setText(9, textOf(9).replace('"amountMinor":109', '"amountMinor":9'), true);
    expect(problem()).toMatchObject({ at: "entry", index: 9, code: "node_mismatch" });
  });

  it("names the first head after an entry edited with every stored hash recomputed", () => {
    setText(9, textOf(9).replace('"amountMinor":109', '"amountMinor":9'), true);
    rehashEverything(db);
    expect(problem()).toMatchObject({ at: "head", treeSize: 12, code: "root_mismatch" });
  });

  it("names a deleted entry", () => {
    db.prepare("DELETE FROM audit_entries WHERE idx = 9").run();
    expect(problem()).toMatchObject({ at: "entry", index: 9, code: "missing" });
  });

  it("names the first of two swapped entries", () => {
    const a = db.prepare("SELECT at_ms, kind, subject, entry, leaf_hash FROM audit_entries WHERE idx = 7").raw().get() as unknown[];
    const b = db.prepare("SELECT at_ms, kind, subject, entry, leaf_hash FROM audit_entries WHERE idx = 8").raw().get() as unknown[];
    const put = db.prepare("UPDATE audit_entries SET at_ms = ?, kind = ?, subject = ?, entry = ?, leaf_hash = ? WHERE idx = ?");
    put.run(...b, 7);
    put.run(...a, 8);
    expect(problem()).toMatchObject({ at: "entry", index: 7, code: "index_mismatch" });
  });

  it("names an entry inserted in the middle, with the rest renumbered", () => {
    renumberFrom(db, 9, 1);
    const text = JSON.stringify({ v: 1, index: 9, atMs: 5, kind: "ledger.transfer", subject: "pay-1", amountMinor: 1_000_000, currency: "EUR" });
    db.prepare("INSERT INTO audit_entries (idx, at_ms, kind, subject, entry, leaf_hash) VALUES (9, 5, 'ledger.transfer', 'pay-1', ?, ?)").run(text, leafHash(utf8.encode(text)));
    expect(problem()).toMatchObject({ at: "entry", index: 9, code: "node_mismatch" });
  });

  it("names an entry inserted in the middle even when the rest were renumbered inside their texts too", () => {
    renumberFrom(db, 9, 1);
    for (let i = 10; i <= N; i++) setText(i, textOf(i).replace(`"index":${i - 1},`, `"index":${i},`), true);
    const text = JSON.stringify({ v: 1, index: 9, atMs: 5, kind: "ledger.transfer", subject: "pay-1", amountMinor: 1_000_000, currency: "EUR" });
    db.prepare("INSERT INTO audit_entries (idx, at_ms, kind, subject, entry, leaf_hash) VALUES (9, 5, 'ledger.transfer', 'pay-1', ?, ?)").run(text, leafHash(utf8.encode(text)));
    expect(problem()).toMatchObject({ at: "entry", index: 9, code: "node_mismatch" });
  });

  it("names the first missing entry of a truncated log", () => {
    db.prepare("DELETE FROM audit_entries WHERE idx >= 20").run();
    expect(problem()).toMatchObject({ at: "entry", index: 20, code: "missing" });
  });

  it("names the head a truncated log falls short of, when its stored hashes went too", () => {
    db.prepare("DELETE FROM audit_entries WHERE idx >= 20").run();
    db.prepare("DELETE FROM audit_nodes WHERE ((pos + 1) << level) > 20").run();
    expect(problem()).toMatchObject({ at: "head", treeSize: 23, code: "beyond_log" });
  });

  it("names a head whose root was edited", () => {
    db.prepare("UPDATE audit_heads SET root_hash = ? WHERE tree_size = 12").run(new AuditLog(db).root(11));
    expect(problem()).toMatchObject({ at: "head", treeSize: 12, code: "head_edited" });
  });

  it("names a head whose signature was edited", () => {
    const sig = Buffer.from(db.prepare("SELECT signature FROM audit_heads WHERE tree_size = 12").pluck().get() as Uint8Array);
    sig[10]! ^= 1;
    db.prepare("UPDATE audit_heads SET signature = ? WHERE tree_size = 12").run(sig);
    expect(problem()).toMatchObject({ at: "head", treeSize: 12, code: "signature_invalid" });
  });

  it("names the first head when checked against another broker's key", () => {
    const v = verifyAudit(db, generateKeyPair().publicKey);
    expect(v.ok ? null : v.problem).toMatchObject({ at: "head", treeSize: 5, code: "signature_invalid" });
  });

  it("names an entry whose subject column was edited (so `audit show` would miss it)", () => {
    db.prepare("UPDATE audit_entries SET subject = 'someone-else' WHERE idx = 14").run();
    expect(problem()).toMatchObject({ at: "entry", index: 14, code: "column_mismatch" });
  });

  it("names an entry whose text is no longer JSON", () => {
    setText(3, textOf(3).slice(0, -1), true);
    expect(problem()).toMatchObject({ at: "entry", index: 3, code: "unparsable" });
  });

  it("names the entry completing a stored subtree hash that was edited", () => {
    // Entries 8..11 are one complete subtree (level 2, pos 2), stored when entry 11 was appended.
    db.prepare("UPDATE audit_nodes SET hash = ? WHERE level = 2 AND pos = 2").run(new Uint8Array(32));
    expect(problem()).toMatchObject({ at: "entry", index: 11, code: "node_mismatch" });
  });
});

describe("admin audit and receipt commands", () => {
  const run = async (...args: string[]) => {
    const out: string[] = [];
    const code = await adminMain([...args, "--data-dir", dir], (l) => out.push(l));
    return { code, out: out.join("\n") };
  };
  const brokerKeyB64 = Buffer.from(broker.publicKey).toString("base64");
  const at = 1_700_000_200_000;

  beforeEach(() => {
    writeFileSync(join(dir, "broker.pub"), brokerKeyB64 + "\n");
    buildLog(db);
  });

  it("audit verify prints ok with the size and heads checked, and exits 1 naming the first problem", async () => {
    expect(await run("audit", "verify")).toEqual({ code: 0, out: `ok: ${N} entries recomputed, ${HEADS.length} signed heads checked` });
    db.prepare("DELETE FROM audit_entries WHERE idx = 9").run();
    const bad = await run("audit", "verify");
    expect(bad.code).toBe(1);
    expect(bad.out).toMatch(/^FAILED at entry 9: missing: /);
    const json = await run("audit", "verify", "--json");
    expect(json.code).toBe(1);
    expect(JSON.parse(json.out)).toMatchObject({ ok: false, problem: { at: "entry", index: 9, code: "missing" } });
  });

  it("audit show lists a payment's entries in order, and audit head the latest signed head", async () => {
    const shown = await run("audit", "show", "--payment", "pay-1");
    expect(shown.code).toBe(0);
    expect(shown.out.split("\n").map((l) => l.split(" ")[0])).toEqual(["#1", "#5", "#9", "#13", "#17", "#21"]);
    expect(shown.out).toContain("amountMinor=105 currency=EUR");
    const json = JSON.parse((await run("audit", "show", "--payment", "pay-1", "--json")).out) as { entries: { index: number }[] };
    expect(json.entries.map((e) => e.index)).toEqual([1, 5, 9, 13, 17, 21]);
    expect((await run("audit", "show", "--payment", "nobody").catch((e: Error) => ({ code: 1, out: e.message }))).out).toMatch(/no audit entries/);
    const head = JSON.parse((await run("audit", "head", "--json")).out) as SignedHead & { signatureValid: boolean };
    expect(head).toMatchObject({ treeSize: N, signatureValid: true });
  });

  /** A payment's result entry at the log's end, a head over it, and its receipt file. */
  function receiptFile(opts: { entryAmountMinor?: number; withInclusion?: boolean; signer?: Signer; type?: string } = {}): string {
    const index = appendAudit(db, at, "payment.event", "pay-R", { status: "completed", amountMinor: opts.entryAmountMinor ?? 1250, currency: "EUR", transferId: "t_1" });
    appendMany(db, index + 1, 3);
    const log = new AuditLog(db);
    const head = log.signHead(sign, at + 5);
    const body = { paymentId: "pay-R", seq: 4, status: "completed", reason: null, transferId: "t_1", amountMinor: 1250, currency: "EUR", merchantName: "Coffee Corner", terminalName: "TV", auditIndex: index, atMs: at };
    const by = opts.signer ?? signer;
    const envelope = JSON.parse(sealEnvelope({ v: 1, type: opts.type ?? "payment_result", id: "m_r1", from: "broker", to: "d_t", ts: at, body }, (m) => by.sign(m)).text) as unknown;
    const inclusion = { index, treeSize: head.treeSize, entry: log.entry(index)!.text, head, path: log.inclusionProof(index, head.treeSize).map((h) => Buffer.from(h).toString("base64")) };
    const file = join(dir, "receipt.json");
    writeFileSync(file, JSON.stringify({ format: "handoff-pay-receipt/1", envelope, ...(opts.withInclusion === false ? {} : { inclusion }) }));
    return file;
  }

  const rewrite = (file: string, edit: (r: { inclusion: Record<string, unknown> & { head: Record<string, unknown>; path: string[] } }) => void) => {
    const r = JSON.parse(readFileSync(file, "utf8"));
    edit(r);
    writeFileSync(file, JSON.stringify(r));
  };

  it("receipt verify accepts a receipt and its inclusion proof with the broker key alone", async () => {
    const file = receiptFile();
    rmSync(join(dir, "broker.pub"));
    const out: string[] = [];
    // No data dir at all: the key comes from the command line.
    expect(await adminMain(["receipt", "verify", file, "--broker-key", brokerKeyB64, "--data-dir", join(dir, "absent")], (l) => out.push(l))).toBe(0);
    expect(out.join("\n")).toMatch(/payment +pay-R/);
    expect(out.join("\n")).toMatch(/amount +€12\.50 \(1250 minor units of EUR\)/);
    expect(out.join("\n")).toMatch(new RegExp(`inclusion +entry ${N} is in the signed log of ${N + 4} entries`));
    expect(existsSync(join(dir, "absent"))).toBe(false);
  });

  it("receipt verify accepts a receipt without an inclusion proof, using the data dir's broker key", async () => {
    const r = await run("receipt", "verify", receiptFile({ withInclusion: false }), "--json");
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toMatchObject({ ok: true, receipt: { paymentId: "pay-R", auditIndex: N, inclusion: null } });
  });

  it.each([
    ["another key signed the envelope", () => receiptFile({ signer: new Signer(generateKeyPair()) }), /envelope's signature does not verify/],
    ["it is not a payment_result", () => receiptFile({ type: "payment_prompt" }), /not a payment_result/],
    ["the audit entry records another amount", () => receiptFile({ entryAmountMinor: 1300 }), /does not record this result: amountMinor differ/],
    [
      "a path hash was altered",
      () => {
        const f = receiptFile();
        rewrite(f, (r) => (r.inclusion.path[1] = Buffer.alloc(32, 7).toString("base64")));
        return f;
      },
      /do not lead to the signed root/,
    ],
    [
      "the entry text was altered",
      () => {
        const f = receiptFile();
        rewrite(f, (r) => (r.inclusion.entry = (r.inclusion.entry as string).replace('"t_1"', '"t_2"')));
        return f;
      },
      /do not lead to the signed root/,
    ],
    [
      "the head's signature was altered",
      () => {
        const f = receiptFile();
        rewrite(f, (r) => (r.inclusion.head.signature = Buffer.alloc(64, 1).toString("base64")));
        return f;
      },
      /signed head of \d+ entries does not verify/,
    ],
    [
      "the proof is for another entry",
      () => {
        const f = receiptFile();
        rewrite(f, (r) => (r.inclusion.index = 3));
        return f;
      },
      /proof is for entry 3/,
    ],
  ])("receipt verify exits 1 when %s", async (_what, make, reason) => {
    const r = await run("receipt", "verify", make(), "--json");
    expect(r.code).toBe(1);
    expect((JSON.parse(r.out) as { reason: string }).reason).toMatch(reason);
    await expect(run("receipt", "verify", make())).rejects.toThrow(reason);
  });
});
