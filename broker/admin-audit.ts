/**
 * The admin tool's `audit` and `receipt` commands (docs/operations.md §Audit log). They only
 * read: the database opened read-only, no running broker needed, and `receipt verify` needs
 * nothing but the receipt file and the broker's public key.
 */
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { OperationError, UsageError } from "../src/cli/args.ts";
import { leafHash, verifyInclusion } from "../src/core/merkle.ts";
import { formatAmount } from "../src/core/money.ts";
import { verify } from "../src/crypto/ed25519.ts";
import { fromBase64, toBase64 } from "../src/crypto/encoding.ts";
import { BROKER_ID, parseEnvelope } from "../src/protocol/envelope.ts";
import { AuditLog, verifyAudit, verifyHeadSignature, type AuditProblem, type SignedHead } from "../src/store/audit.ts";
import type { Db } from "../src/store/db.ts";
import { DB_FILE, openDataDb, readBrokerPublicKey } from "./data-dir.ts";

export const AUDIT_USAGE = `  audit verify [--broker-key BASE64]
                                  recompute the audit log and check every stored hash and
                                  signed head; names the first entry or head that fails (exit 1)
  audit show --payment ID         a payment's audit entries, in order
  audit head                      the latest signed tree head
  receipt verify FILE [--broker-key BASE64]
                                  check a saved receipt: the broker's signature, and if it
                                  carries an inclusion proof, that its entry is in the signed log
                                  (offline with --broker-key; else the data dir's broker.pub)`;

export const AUDIT_FLAGS = {
  payment: { type: "string" },
  "broker-key": { type: "string" },
} as const;

interface AuditCtx {
  readonly dataDir: string;
  readonly json: boolean;
  readonly out: (line: string) => void;
  readonly values: Record<string, unknown>;
}

export function auditCommand(ctx: AuditCtx, command: string | undefined, rest: string[], usage: string): number {
  if (rest.length > 0) throw new UsageError(`audit ${command ?? ""} takes no argument "${rest.join(" ")}"\n\n${usage}`);
  const db = openLog(ctx.dataDir);
  try {
    switch (command) {
      case "verify":
        return auditVerify(ctx, db);
      case "show":
        return auditShow(ctx, db, usage);
      case "head":
        return auditHead(ctx, db);
      default:
        throw new UsageError(`unknown audit command "${command ?? ""}"\n\n${usage}`);
    }
  } finally {
    db.close();
  }
}

function openLog(dataDir: string): Db {
  if (!existsSync(join(resolve(dataDir), DB_FILE))) throw new OperationError(`no database in ${resolve(dataDir)} (is --data-dir right?)`);
  // Read-only: inspecting the log never writes to it, and needs no running broker.
  return openDataDb(dataDir, { readonly: true });
}

function brokerKey(ctx: AuditCtx): Uint8Array {
  const given = ctx.values["broker-key"];
  if (typeof given === "string") {
    const key = fromBase64(given);
    if (key === null || key.length !== 32) throw new UsageError("--broker-key must be the broker's 32-byte Ed25519 public key in base64 (npm run admin -- broker pubkey)");
    return key;
  }
  const key = readBrokerPublicKey(ctx.dataDir);
  if (key === null) throw new OperationError(`no broker.pub in ${resolve(ctx.dataDir)}: pass --broker-key BASE64`);
  return key;
}

export function describeProblem(p: AuditProblem): string {
  return p.at === "entry" ? `entry ${p.index}: ${p.code}: ${p.detail}` : `head ${p.treeSize}: ${p.code}: ${p.detail}`;
}

function auditVerify(ctx: AuditCtx, db: Db): number {
  const v = verifyAudit(db, brokerKey(ctx));
  if (ctx.json) {
    ctx.out(JSON.stringify(v));
    return v.ok ? 0 : 1;
  }
  if (v.ok) {
    ctx.out(`ok: ${v.size} entries recomputed, ${v.headsChecked} signed heads checked`);
    return 0;
  }
  ctx.out(`FAILED at ${describeProblem(v.problem)}`);
  return 1;
}

function auditShow(ctx: AuditCtx, db: Db, usage: string): number {
  const id = ctx.values.payment;
  if (typeof id !== "string" || id.length === 0) throw new UsageError(`audit show needs --payment ID\n\n${usage}`);
  const entries = new AuditLog(db).forSubject(id);
  if (entries.length === 0) throw new OperationError(`no audit entries for payment ${id}`);
  if (ctx.json) {
    ctx.out(JSON.stringify({ paymentId: id, entries: entries.map((e) => JSON.parse(e.text) as unknown) }));
    return 0;
  }
  for (const e of entries) {
    const { v: _v, index: _i, atMs: _a, kind: _k, subject: _s, ...fields } = JSON.parse(e.text) as Record<string, unknown>;
    const facts = Object.entries(fields).map(([k, v]) => `${k}=${typeof v === "object" && v !== null ? JSON.stringify(v) : String(v)}`);
    ctx.out(`#${String(e.index).padEnd(7)} ${new Date(e.atMs).toISOString()}  ${e.kind.padEnd(24)} ${facts.join(" ")}`);
  }
  return 0;
}

function auditHead(ctx: AuditCtx, db: Db): number {
  const head = new AuditLog(db).latestHead();
  if (head === null) throw new OperationError("no signed tree head yet: the broker signs one at a regular interval and when it stops");
  const key = ctx.values["broker-key"] !== undefined || readBrokerPublicKey(ctx.dataDir) !== null ? brokerKey(ctx) : null;
  const signatureValid = key === null ? null : verifyHeadSignature(head, key);
  if (ctx.json) {
    ctx.out(JSON.stringify({ ...head, signatureValid }));
    return 0;
  }
  ctx.out(`treeSize    ${head.treeSize}`);
  ctx.out(`rootHash    ${head.rootHash}`);
  ctx.out(`timestamp   ${head.timestampMs} (${new Date(head.timestampMs).toISOString()})`);
  ctx.out(`signature   ${head.signature} (${signatureValid === null ? "not checked: no broker.pub" : signatureValid ? "valid" : "INVALID"})`);
  return signatureValid === false ? 1 : 0;
}

/** What a valid receipt says (its payment_result body, docs/protocol.md §Receipts). */
export interface ReceiptFacts {
  readonly paymentId: string;
  readonly status: string;
  readonly amountMinor: number;
  readonly currency: string;
  readonly merchantName: string;
  readonly transferId: string | null;
  readonly auditIndex: number;
  readonly atMs: number;
  /** Present when the file carried an inclusion proof that verified. */
  readonly inclusion: { readonly treeSize: number; readonly head: SignedHead } | null;
}

export type ReceiptVerdict = { ok: true; receipt: ReceiptFacts } | { ok: false; reason: string };

/**
 * Checks a receipt file's text with the broker's public key alone: the envelope's signature, that
 * it is the broker's payment_result, and, if the file has "inclusion", that the entry hashes with
 * the path to the signed head's root, the head's signature, and that the entry records this result.
 */
export function verifyReceipt(fileText: string, brokerPublicKey: Uint8Array): ReceiptVerdict {
  const fail = (reason: string): ReceiptVerdict => ({ ok: false, reason });
  let file: Record<string, unknown>;
  try {
    const parsed: unknown = JSON.parse(fileText);
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) return fail("the file is not a JSON object");
    file = parsed as Record<string, unknown>;
  } catch {
    return fail("the file is not JSON");
  }
  if (file.format !== "handoff-pay-receipt/1") return fail(`the file's format is ${JSON.stringify(file.format)}, not "handoff-pay-receipt/1"`);
  const env = parseEnvelope(new TextEncoder().encode(JSON.stringify(file.envelope ?? null)));
  if (!env.ok) return fail(`its envelope is not a message: ${env.detail}`);
  if (!verify(brokerPublicKey, env.msg.payloadBytes, env.msg.signature)) return fail("the envelope's signature does not verify with the broker key");
  const p = env.msg.payload;
  if (p.from !== BROKER_ID) return fail(`the message is from ${JSON.stringify(p.from)}, not the broker`);
  if (p.type !== "payment_result") return fail(`the message is a ${p.type}, not a payment_result`);
  const b = p.body;
  const str = (v: unknown) => typeof v === "string";
  const int = (v: unknown) => Number.isSafeInteger(v);
  if (!str(b.paymentId) || !str(b.status) || !int(b.amountMinor) || !str(b.currency) || !str(b.merchantName) || !(b.transferId === null || str(b.transferId))) {
    return fail("its payment_result body lacks paymentId, status, amountMinor, currency, merchantName or transferId");
  }
  if (!int(b.auditIndex) || (b.auditIndex as number) < 0 || !int(b.atMs)) return fail("its payment_result has no auditIndex or atMs: it is not a receipt");
  const facts = {
    paymentId: b.paymentId as string,
    status: b.status as string,
    amountMinor: b.amountMinor as number,
    currency: b.currency as string,
    merchantName: b.merchantName as string,
    transferId: b.transferId as string | null,
    auditIndex: b.auditIndex as number,
    atMs: b.atMs as number,
  };
  if (file.inclusion === undefined) return { ok: true, receipt: { ...facts, inclusion: null } };
  const inc = file.inclusion as Record<string, unknown> | null;
  if (typeof inc !== "object" || inc === null) return fail("its inclusion is not an object");
  if (inc.index !== facts.auditIndex) return fail(`the inclusion proof is for entry ${JSON.stringify(inc.index)}, the receipt's auditIndex is ${facts.auditIndex}`);
  const head = inc.head as SignedHead | undefined;
  if (typeof head !== "object" || head === null || !int(inc.treeSize) || head.treeSize !== inc.treeSize) return fail("the inclusion's head is missing or not for its treeSize");
  if (!verifyHeadSignature(head, brokerPublicKey)) return fail(`the signed head of ${head.treeSize} entries does not verify with the broker key`);
  if (typeof inc.entry !== "string") return fail("the inclusion has no entry text");
  const path = Array.isArray(inc.path) ? inc.path.map((h) => (typeof h === "string" ? fromBase64(h) : null)) : null;
  if (path === null || path.some((h) => h === null || h.length !== 32)) return fail("the inclusion's path is not a list of base64 SHA-256 hashes");
  const root = fromBase64(head.rootHash)!;
  if (!verifyInclusion(leafHash(new TextEncoder().encode(inc.entry)), facts.auditIndex, head.treeSize, path as Uint8Array[], root)) {
    return fail(`the entry and path do not lead to the signed root of ${head.treeSize} entries: entry ${facts.auditIndex} is not in the signed log as shown`);
  }
  let entry: Record<string, unknown>;
  try {
    entry = JSON.parse(inc.entry) as Record<string, unknown>;
  } catch {
    return fail("the entry text is not JSON");
  }
  // The entry that records a result names the payment (as its subject) and the result's facts.
  const entryPayment = entry.paymentId ?? entry.subject;
  const mismatches = [
    entry.index !== facts.auditIndex ? "index" : null,
    entryPayment !== facts.paymentId || (entry.paymentId !== undefined && entry.subject !== undefined && entry.paymentId !== entry.subject) ? "paymentId" : null,
    entry.status !== facts.status ? "status" : null,
    entry.amountMinor !== facts.amountMinor ? "amountMinor" : null,
    entry.currency !== facts.currency ? "currency" : null,
    (entry.transferId ?? null) !== facts.transferId ? "transferId" : null,
  ].filter((m) => m !== null);
  if (mismatches.length > 0) return fail(`the audit entry ${facts.auditIndex} does not record this result: ${mismatches.join(", ")} differ`);
  return { ok: true, receipt: { ...facts, inclusion: { treeSize: head.treeSize, head } } };
}

export function receiptCommand(ctx: AuditCtx, command: string | undefined, rest: string[], usage: string): number {
  if (command !== "verify" || rest.length !== 1) throw new UsageError(`receipt verify takes one receipt file\n\n${usage}`);
  const file = rest[0]!;
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new OperationError(`cannot read ${file}: ${(err as Error).message}`);
  }
  const v = verifyReceipt(text, brokerKey(ctx));
  if (ctx.json) {
    ctx.out(JSON.stringify(v));
    return v.ok ? 0 : 1;
  }
  if (!v.ok) throw new OperationError(`receipt ${file} does not verify: ${v.reason}`);
  const r = v.receipt;
  ctx.out(`ok: signed by the broker key ${toBase64(brokerKey(ctx)).slice(0, 12)}…`);
  ctx.out(`payment     ${r.paymentId}`);
  ctx.out(`status      ${r.status}`);
  ctx.out(`amount      ${formatAmount(r.amountMinor, r.currency)} (${r.amountMinor} minor units of ${r.currency})`);
  ctx.out(`merchant    ${r.merchantName}`);
  ctx.out(`transfer    ${r.transferId ?? "-"}`);
  ctx.out(`time        ${r.atMs} (${new Date(r.atMs).toISOString()})`);
  ctx.out(`auditIndex  ${r.auditIndex}`);
  ctx.out(
    r.inclusion === null
      ? "inclusion   none in the file (ask the broker with audit_inclusion_request to check it against a signed head)"
      : `inclusion   entry ${r.auditIndex} is in the signed log of ${r.inclusion.treeSize} entries (head signed ${new Date(r.inclusion.head.timestampMs).toISOString()})`,
  );
  return 0;
}
