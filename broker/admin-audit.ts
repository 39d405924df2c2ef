/**
 * The admin tool's `audit` and `receipt` commands (docs/operations.md §Audit log). They only
 * read: the database opened read-only, no running broker needed, and `receipt verify` needs
 * nothing but the receipt file and the broker's public key.
 */
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { OperationError, UsageError } from "../src/cli/args.ts";
import { formatAmount } from "../src/core/money.ts";
import { verify } from "../src/crypto/ed25519.ts";
import { fromBase64, toBase64 } from "../src/crypto/encoding.ts";
import { checkReceipt, type ReceiptVerdict } from "../src/device/receipt.ts";
import { AuditLog, verifyAudit, verifyHeadSignature, type AuditProblem } from "../src/store/audit.ts";
import { openPostgres, type Db } from "../src/store/db.ts";
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
  /** A PostgreSQL URL: the log is read there instead of the data dir's SQLite file. */
  readonly database?: string | undefined;
  readonly json: boolean;
  readonly out: (line: string) => void;
  readonly values: Record<string, unknown>;
}

export function auditCommand(ctx: AuditCtx, command: string | undefined, rest: string[], usage: string): number {
  if (rest.length > 0) throw new UsageError(`audit ${command ?? ""} takes no argument "${rest.join(" ")}"\n\n${usage}`);
  const db = openLog(ctx.dataDir, ctx.database);
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

function openLog(dataDir: string, database: string | undefined): Db {
  if (database !== undefined) return openPostgres(database, { applicationName: "handoff-pay admin", readonly: true });
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

/** Checks a receipt file's text with the broker's public key alone (src/device/receipt.ts). */
export function verifyReceipt(fileText: string, brokerPublicKey: Uint8Array): ReceiptVerdict {
  return checkReceipt(fileText, brokerPublicKey, verify);
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
