/**
 * `npm run admin -- <command>`: the operator's tool. It works on the data dir's database
 * directly, whether or not a broker is running (SQLite WAL lets both write); a running broker
 * picks up revocations within a fraction of a second.
 */
import { X509Certificate } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { masterKeyFromEnv, defaultDataDir } from "../src/config.ts";
import { OperationError, UsageError, databaseUrl, parseFlags, requireString, runCli } from "../src/cli/args.ts";
import { toBase64 } from "../src/crypto/encoding.ts";
import type { Keyring } from "../src/crypto/keyring.ts";
import { adminTrigger, type Trigger } from "../src/service/audit-trail.ts";
import { deviceUserId, registerDevice, revokeDevice } from "../src/service/devices.ts";
import { appendAudit } from "../src/store/audit.ts";
import { isPostgres, openPostgres, type Db } from "../src/store/db.ts";
import { DeviceRepo, type DeviceRow } from "../src/store/devices.ts";
import { keyUsage, keysChanged, removalProblem, reseal } from "../src/service/keys.ts";
import { addMerchant, creditWallet, walletBalance } from "../src/service/ledger.ts";
import { LedgerRepo } from "../src/store/ledger.ts";
import { CURRENCY_EXPONENTS, formatAmount, parseAmount } from "../src/core/money.ts";
import { openAgreement } from "../src/service/sealing.ts";
import { AgreementRepo, type AgreementRow } from "../src/store/binding.ts";
import { SELF_SIGNED_CERT_FILE } from "./certs.ts";
import { ensureDataDir, loadKeyring, openDataDb, readBrokerPublicKey, saveKeyring } from "./data-dir.ts";
import { AUDIT_FLAGS, AUDIT_USAGE, auditCommand, receiptCommand } from "./admin-audit.ts";

const USAGE = `Usage: npm run admin -- <command> [options]

Commands:
  device add --kind terminal|phone --name NAME --public-key BASE64 [--user USER_ID]
                                  register a device; prints its id (phones need --user)
  device list                     all devices, newest last
  device show ID                  one device
  device revoke ID                revoke a device; a connected one is disconnected at once
  agreement list                  all agreements: ids, devices, status, key version (no secrets)
  agreement show ID [--reveal]    one agreement; --reveal also opens the sealed data (prints
                                  the login, user id and terminal serial: handle with care)
  merchant add --id ID --name NAME
                                  register a merchant payments can go to
  merchant list                   all merchants
  ledger credit --user USER_ID --amount 100.00 --currency CNY [--reference REF]
                                  fund a user's wallet from the funding account
                                  (a repeated --reference does not pay twice)
  ledger balance [--user USER_ID] every account's balance, and per currency the sum (always 0);
                                  --user shows that user's wallets
  ledger transfers [--limit N]    the latest transfers (default 20)
  keys list                       master key versions and what each still seals
  keys rotate                     add a master key version; new seals use it
  keys reseal [--batch N]         re-seal older data under the current version (default N 200)
  keys remove VERSION             drop a version that nothing uses any more
  broker pubkey                   the broker public key devices pin
  broker cert [--tls-cert FILE]   the TLS certificate (PEM) and its SHA-256 fingerprint, for
                                  devices to trust or pin (default: the self-signed one in the
                                  data dir; env HANDOFF_TLS_CERT)
${AUDIT_USAGE}

Options for every command:
  --data-dir DIR    the broker's data dir (env HANDOFF_DATA_DIR, default ./data): its keys,
                    and its SQLite database unless --database names another
  --database URL    postgres://… : the PostgreSQL database the broker nodes share (env
                    HANDOFF_DATABASE_URL); the master key still comes from --data-dir or
                    HANDOFF_MASTER_KEY
  --json            machine-readable output
  -h, --help        this help

Examples:
  npm run admin -- device add --kind terminal --name "Living room TV" --public-key ZXhhbXBsZS4uLg==
  npm run admin -- device add --kind phone --name "Alice's phone" --public-key <b64> --user alice
  npm run admin -- device list
  npm run admin -- device revoke d3k2...
  npm run admin -- merchant add --id coffee-corner --name "Coffee Corner"
  npm run admin -- ledger credit --user alice --amount 500.00 --currency CNY
  npm run admin -- keys rotate && npm run admin -- keys reseal && npm run admin -- keys remove 2`;

const FLAGS = {
  "data-dir": { type: "string" },
  database: { type: "string" },
  json: { type: "boolean" },
  kind: { type: "string" },
  name: { type: "string" },
  "public-key": { type: "string" },
  user: { type: "string" },
  reveal: { type: "boolean" },
  batch: { type: "string" },
  id: { type: "string" },
  ...AUDIT_FLAGS,
  amount: { type: "string" },
  currency: { type: "string" },
  reference: { type: "string" },
  limit: { type: "string" },
  "tls-cert": { type: "string" },
} as const;

interface Ctx {
  readonly db: Db;
  readonly keyring: Keyring;
  readonly dataDir: string;
  readonly json: boolean;
  readonly out: (line: string) => void;
}

export async function adminMain(argv: string[], out: (line: string) => void = (l) => process.stdout.write(l + "\n")): Promise<number> {
  const { values, positionals } = parseFlags(argv, FLAGS, USAGE);
  if (values.help || positionals.length === 0) {
    out(USAGE);
    return values.help ? 0 : 2;
  }
  // The audit log's commands only read, and a receipt needs no data dir at all: neither creates one.
  if (positionals[0] === "audit" || positionals[0] === "receipt") {
    const [auditGroup, auditSub, ...auditRest] = positionals;
    const auditCtx = { dataDir: values["data-dir"] ?? defaultDataDir(), database: databaseUrl(values.database), json: values.json === true, out, values };
    return auditGroup === "audit" ? auditCommand(auditCtx, auditSub, auditRest, USAGE) : receiptCommand(auditCtx, auditSub, auditRest, USAGE);
  }
  const dataDir = ensureDataDir(values["data-dir"] ?? defaultDataDir());
  const [group, command, ...rest] = positionals;
  if (group === "broker" && command === "pubkey") {
    const key = readBrokerPublicKey(dataDir);
    if (key === null) throw new OperationError(`no broker identity in ${dataDir} yet: start the broker once (npm start -- --data-dir ${dataDir})`);
    out(values.json ? JSON.stringify({ brokerPublicKey: toBase64(key) }) : toBase64(key));
    return 0;
  }
  if (group === "broker" && command === "cert") {
    const file = values["tls-cert"] ?? (process.env.HANDOFF_TLS_CERT || join(dataDir, SELF_SIGNED_CERT_FILE));
    if (!existsSync(file)) throw new OperationError(`no TLS certificate at ${file} yet: start the broker once (npm start -- --data-dir ${dataDir}) and it creates a self-signed one`);
    let x509: X509Certificate;
    try {
      x509 = new X509Certificate(readFileSync(file));
    } catch (err) {
      throw new OperationError(`${file} is not a PEM certificate: ${(err as Error).message}`);
    }
    const pem = x509.toString();
    if (values.json) out(JSON.stringify({ pem, fingerprint256: x509.fingerprint256, subject: x509.subject, subjectAltName: x509.subjectAltName, validTo: new Date(x509.validTo).toISOString(), file }));
    else {
      out(pem.trimEnd());
      out(`SHA-256 fingerprint: ${x509.fingerprint256}`);
      process.stderr.write(`${file}: ${x509.subjectAltName ?? x509.subject}, valid until ${new Date(x509.validTo).toISOString()}\n`);
    }
    return 0;
  }
  if (!["device", "keys", "agreement", "merchant", "ledger"].includes(group ?? "")) throw new UsageError(`unknown command "${positionals.join(" ")}"\n\n${USAGE}`);
  const masterKeyEnv = masterKeyFromEnv();
  const { keyring } = loadKeyring(dataDir, masterKeyEnv, (msg) => process.stderr.write(`warning: ${msg}\n`));
  const database = databaseUrl(values.database);
  const db = database === undefined ? openDataDb(dataDir) : openPostgres(database, { applicationName: "handoff-pay admin" });
  const ctx: Ctx = { db, keyring, dataDir, json: values.json === true, out };
  try {
    if (group === "keys") return keysCommand(ctx, command, rest, values, masterKeyEnv !== undefined);
    if (group === "agreement") return agreementCommand(ctx, command, rest, values.reveal === true);
    if (group === "merchant") return merchantCommand(ctx, command, values);
    if (group === "ledger") return ledgerCommand(ctx, command, values);
    switch (command) {
      case "add":
        return deviceAdd(ctx, values);
      case "list":
        return deviceList(ctx);
      case "show":
        return deviceShow(ctx, needId(rest, "show"));
      case "revoke":
        return deviceRevoke(ctx, needId(rest, "revoke"));
      default:
        throw new UsageError(`unknown device command "${command ?? ""}"\n\n${USAGE}`);
    }
  } finally {
    db.close();
  }
}

/**
 * The audit entry of an operator's command that changed something, naming the OS user who ran
 * it; appended in the change's transaction where the command has one.
 */
function recordAction(ctx: Ctx, trigger: Trigger, subject: string | null, fields: Record<string, unknown> = {}): void {
  appendAudit(ctx.db, Date.now(), "admin.action", subject, { ...fields, trigger });
}

function needId(rest: string[], command: string): string {
  if (rest.length !== 1) throw new UsageError(`device ${command} takes one device id\n\n${USAGE}`);
  return rest[0]!;
}

function deviceAdd(ctx: Ctx, values: Record<string, unknown>): number {
  const kind = requireString(values, "kind", USAGE);
  const input = {
    kind: kind as "terminal",
    name: requireString(values, "name", USAGE),
    publicKey: requireString(values, "public-key", USAGE),
    ...(typeof values.user === "string" ? { userId: values.user } : {}),
  };
  const trigger = adminTrigger("device add");
  const res = ctx.db
    .transaction(() => {
      const r = registerDevice(ctx.db, ctx.keyring, input, Date.now(), trigger);
      if (r.ok) recordAction(ctx, trigger, r.device.id, { deviceKind: r.device.kind });
      return r;
    })
    .immediate();
  if (!res.ok) throw new OperationError(res.error);
  if (ctx.json) ctx.out(JSON.stringify(view(ctx, res.device)));
  else {
    ctx.out(res.device.id);
    process.stderr.write(`registered ${res.device.kind} "${res.device.name}" as ${res.device.id}\n`);
  }
  return 0;
}

function view(ctx: Ctx, d: DeviceRow) {
  return {
    id: d.id,
    kind: d.kind,
    name: d.name,
    status: d.status,
    publicKey: toBase64(d.publicKey),
    ...(d.kind === "phone" ? { user: deviceUserId(ctx.keyring, d) ?? "(sealed; does not open with this master key)" } : {}),
    created: new Date(d.createdMs).toISOString(),
    ...(d.revokedMs === null ? {} : { revoked: new Date(d.revokedMs).toISOString() }),
  };
}

function deviceList(ctx: Ctx): number {
  const rows = new DeviceRepo(ctx.db).list().map((d) => view(ctx, d));
  if (ctx.json) {
    ctx.out(JSON.stringify(rows));
    return 0;
  }
  if (rows.length === 0) {
    ctx.out(`no devices in ${ctx.dataDir}; add one with: npm run admin -- device add --help`);
    return 0;
  }
  ctx.out(`${"ID".padEnd(21)} ${"KIND".padEnd(9)} ${"STATUS".padEnd(8)} ${"USER".padEnd(16)} NAME`);
  for (const r of rows) ctx.out(`${r.id.padEnd(21)} ${r.kind.padEnd(9)} ${r.status.padEnd(8)} ${(r.user ?? "-").padEnd(16)} ${r.name}`);
  return 0;
}

function deviceShow(ctx: Ctx, id: string): number {
  const d = new DeviceRepo(ctx.db).get(id);
  if (d === null) throw new OperationError(`no device ${id} (npm run admin -- device list shows them all)`);
  const v = view(ctx, d);
  if (ctx.json) ctx.out(JSON.stringify(v));
  else for (const [k, val] of Object.entries(v)) ctx.out(`${k.padEnd(10)} ${val}`);
  return 0;
}

function deviceRevoke(ctx: Ctx, id: string): number {
  const trigger = adminTrigger("device revoke");
  const res = ctx.db
    .transaction(() => {
      const r = revokeDevice(ctx.db, id, Date.now(), trigger);
      if (r.ok) recordAction(ctx, trigger, id);
      return r;
    })
    .immediate();
  if (!res.ok) throw new OperationError(res.error);
  ctx.out(ctx.json ? JSON.stringify({ id, status: "revoked" }) : `revoked ${id}; a running broker disconnects it within a second`);
  return 0;
}

function keysCommand(ctx: Ctx, command: string | undefined, rest: string[], values: Record<string, unknown>, fromEnv: boolean): number {
  const fileOnly = () => {
    if (fromEnv) throw new OperationError("the master key comes from HANDOFF_MASTER_KEY: change the variable (1:<b64>,2:<b64>; the highest version is current) and restart the broker");
    // Each node of a cluster reads the key file of its own data dir: a rotation written into one
    // would leave the others unable to open what that node then seals.
    const nodes = brokerNodesConnected(ctx.db);
    if (nodes.length > 1) {
      throw new OperationError(
        `${nodes.length} broker nodes share this database (${nodes.join(", ")}), and each reads the master key of its own data dir: ` +
          "change the keys of a cluster as docs/operations.md §Several nodes says (the same key file or HANDOFF_MASTER_KEY on every node, then restart them)",
      );
    }
  };
  switch (command) {
    case "list": {
      const use = keyUsage(ctx.db, ctx.keyring);
      if (ctx.json) ctx.out(JSON.stringify(use));
      else {
        ctx.out("VERSION  CURRENT  AGREEMENTS  PHONES  PAIRINGS");
        for (const u of use) ctx.out(`${String(u.version).padEnd(8)} ${(u.current ? "yes" : "").padEnd(8)} ${String(u.agreements).padEnd(11)} ${String(u.devices).padEnd(7)} ${u.pairings}${ctx.keyring.versions.includes(u.version) ? "" : "   (key missing!)"}`);
      }
      return 0;
    }
    case "rotate": {
      fileOnly();
      const next = ctx.keyring.rotated();
      saveKeyring(ctx.dataDir, next);
      const trigger = adminTrigger("keys rotate");
      ctx.db
        .transaction(() => {
          keysChanged(ctx.db, Date.now(), { kind: "keys.rotated", version: next.current, keyring: next }, trigger);
          recordAction(ctx, trigger, null, { version: next.current });
        })
        .immediate();
      ctx.out(ctx.json ? JSON.stringify({ current: next.current, versions: next.versions }) : `added master key version ${next.current}; new seals use it. Move older data with: npm run admin -- keys reseal`);
      return 0;
    }
    case "reseal": {
      const batch = Number(values.batch ?? 200);
      if (!Number.isInteger(batch) || batch < 1 || batch > 10_000) throw new UsageError("--batch must be a whole number from 1 to 10000");
      const started = Date.now();
      const trigger = adminTrigger("keys reseal");
      const report = reseal(ctx.db, ctx.keyring, batch, (done, total) => process.stderr.write(`resealed ${done}/${total} agreements…\n`), trigger);
      // Each agreement's reseal has its own entry, in its batch's transaction; this one sums up the command.
      recordAction(ctx, trigger, null, { keyVersion: ctx.keyring.current, resealed: report.resealed, devicesResealed: report.devicesResealed, unreadable: report.unreadable.length });
      if (ctx.json) ctx.out(JSON.stringify({ ...report, current: ctx.keyring.current, ms: Date.now() - started }));
      else {
        ctx.out(`resealed ${report.resealed} agreements and ${report.devicesResealed} phone registrations under key version ${ctx.keyring.current} in ${Date.now() - started} ms`);
        if (report.unreadable.length > 0) ctx.out(`could not open ${report.unreadable.length}, left as they are: ${report.unreadable.join(", ")}`);
      }
      return report.unreadable.length > 0 ? 1 : 0;
    }
    case "remove": {
      fileOnly();
      const version = Number(rest[0]);
      if (rest.length !== 1 || !Number.isInteger(version)) throw new UsageError(`keys remove takes one version number\n\n${USAGE}`);
      const problem = removalProblem(ctx.db, ctx.keyring, version);
      if (problem !== null) throw new OperationError(problem);
      const next = ctx.keyring.without(version);
      saveKeyring(ctx.dataDir, next);
      const trigger = adminTrigger("keys remove");
      ctx.db
        .transaction(() => {
          keysChanged(ctx.db, Date.now(), { kind: "keys.removed", version, keyring: next }, trigger);
          recordAction(ctx, trigger, null, { version });
        })
        .immediate();
      ctx.out(ctx.json ? JSON.stringify({ removed: version }) : `removed master key version ${version}`);
      return 0;
    }
    default:
      throw new UsageError(`unknown keys command "${command ?? ""}"\n\n${USAGE}`);
  }
}

function merchantCommand(ctx: Ctx, command: string | undefined, values: Record<string, unknown>): number {
  const ledger = new LedgerRepo(ctx.db);
  if (command === "add") {
    const id = requireString(values, "id", USAGE);
    const name = requireString(values, "name", USAGE);
    const trigger = adminTrigger("merchant add");
    const res = ctx.db
      .transaction(() => {
        const r = addMerchant(ctx.db, { id, name }, Date.now(), trigger);
        if (r.ok) recordAction(ctx, trigger, id);
        return r;
      })
      .immediate();
    if (!res.ok) throw new OperationError(res.error);
    ctx.out(ctx.json ? JSON.stringify(ledger.merchant(id)) : `added merchant ${id}`);
    return 0;
  }
  if (command === "list") {
    const rows = ledger.merchants();
    if (ctx.json) ctx.out(JSON.stringify(rows));
    else if (rows.length === 0) ctx.out("no merchants yet: npm run admin -- merchant add --id ID --name NAME");
    else for (const m of rows) ctx.out(`${m.id.padEnd(24)} ${m.name}`);
    return 0;
  }
  throw new UsageError(`unknown merchant command "${command ?? ""}"\n\n${USAGE}`);
}

function ledgerCommand(ctx: Ctx, command: string | undefined, values: Record<string, unknown>): number {
  const ledger = new LedgerRepo(ctx.db);
  switch (command) {
    case "credit": {
      const currency = requireString(values, "currency", USAGE).toUpperCase();
      const amountText = requireString(values, "amount", USAGE);
      const amountMinor = parseAmount(amountText, currency);
      if (amountMinor === null) throw new UsageError(`--amount ${amountText}: write an amount like 100.00 in ${currency} (ISO 4217; ${CURRENCY_EXPONENTS[currency] ?? "unknown"} decimals)`);
      const input = { userId: requireString(values, "user", USAGE), amountMinor, currency, ...(typeof values.reference === "string" ? { reference: values.reference } : {}) };
      const trigger = adminTrigger("ledger credit");
      const res = ctx.db
        .transaction(() => {
          const r = creditWallet(ctx.db, ctx.keyring, input, Date.now(), trigger);
          // No user id here: the transfer's entry names the wallet by its blind index.
          if (r.ok && !r.repeated) recordAction(ctx, trigger, r.transfer.id, { transferId: r.transfer.id, amountMinor, currency });
          return r;
        })
        .immediate();
      if (!res.ok) throw new OperationError(res.error);
      if (ctx.json) ctx.out(JSON.stringify({ transfer: res.transfer, balanceMinor: res.balanceMinor, repeated: res.repeated }));
      else ctx.out(`${res.repeated ? "already credited" : "credited"} ${formatAmount(amountMinor, currency)} to ${values.user}: balance ${formatAmount(res.balanceMinor, currency)} (transfer ${res.transfer.id})`);
      return 0;
    }
    case "balance": {
      if (typeof values.user === "string") {
        const user = values.user;
        const wallets = Object.keys(CURRENCY_EXPONENTS)
          .map((c) => ({ currency: c, balanceMinor: walletBalance(ctx.db, ctx.keyring, user, c) }))
          .filter((w) => w.balanceMinor !== 0);
        if (ctx.json) ctx.out(JSON.stringify({ user, wallets }));
        else if (wallets.length === 0) ctx.out(`${user} has no money in any wallet`);
        else for (const w of wallets) ctx.out(`${user}  ${formatAmount(w.balanceMinor, w.currency)}`);
        return 0;
      }
      const accounts = ledger.accounts();
      const sums = Object.fromEntries(ledger.sums());
      if (ctx.json) ctx.out(JSON.stringify({ accounts, sums }));
      else {
        if (accounts.length === 0) ctx.out("no accounts yet: npm run admin -- ledger credit --help");
        for (const a of accounts) ctx.out(`${a.id.padEnd(48)} ${formatAmount(a.balanceMinor, a.currency).padStart(18)}`);
        for (const [currency, sum] of Object.entries(sums)) ctx.out(`sum of ${currency} balances: ${sum} (always 0: double entry)`);
      }
      return 0;
    }
    case "transfers": {
      const limit = Number(values.limit ?? 20);
      if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) throw new UsageError("--limit must be a whole number from 1 to 10000");
      const rows = ledger.transfers(limit);
      if (ctx.json) ctx.out(JSON.stringify(rows));
      else if (rows.length === 0) ctx.out("no transfers yet");
      else
        for (const t of rows) {
          ctx.out(`${new Date(t.createdMs).toISOString()}  ${t.id}  ${t.kind.padEnd(7)} ${formatAmount(t.amountMinor, t.currency).padStart(14)}  ${t.debitAccount} → ${t.creditAccount}${t.paymentId ? `  (${t.paymentId})` : ""}`);
        }
      return 0;
    }
    default:
      throw new UsageError(`unknown ledger command "${command ?? ""}"\n\n${USAGE}`);
  }
}

function agreementFacts(r: AgreementRow) {
  return {
    id: r.id,
    status: r.status,
    terminal: r.terminalId,
    phone: r.phoneId,
    keyVersion: r.keyVersion,
    version: r.version,
    created: new Date(r.createdMs).toISOString(),
    ...(r.unboundMs === null ? {} : { unbound: new Date(r.unboundMs).toISOString(), unboundBy: r.unboundBy }),
  };
}

function agreementCommand(ctx: Ctx, command: string | undefined, rest: string[], reveal: boolean): number {
  const repo = new AgreementRepo(ctx.db);
  if (command === "list") {
    const rows = repo.list().map(agreementFacts);
    if (ctx.json) ctx.out(JSON.stringify(rows));
    else if (rows.length === 0) ctx.out("no agreements yet: a terminal and a phone make one by pairing");
    else {
      ctx.out(`${"ID".padEnd(24)} ${"STATUS".padEnd(8)} ${"TERMINAL".padEnd(21)} ${"PHONE".padEnd(21)} KEY  CREATED`);
      for (const r of rows) ctx.out(`${r.id.padEnd(24)} ${r.status.padEnd(8)} ${r.terminal.padEnd(21)} ${r.phone.padEnd(21)} ${String(r.keyVersion ?? "-").padEnd(4)} ${r.created}`);
    }
    return 0;
  }
  if (command !== "show") throw new UsageError(`unknown agreement command "${command ?? ""}"\n\n${USAGE}`);
  const id = needId(rest, "show");
  const row = repo.get(id);
  if (row === null) throw new OperationError(`no agreement ${id} (npm run admin -- agreement list shows them all)`);
  const facts: Record<string, unknown> = agreementFacts(row);
  if (reveal) {
    process.stderr.write("warning: --reveal prints the sealed plaintext (login, user id, terminal serial). Do not paste it anywhere.\n");
    const opened = openAgreement(ctx.keyring, row);
    facts.sealed = opened.ok ? opened.value : `cannot open: ${opened.code} (${opened.detail})`;
  }
  if (ctx.json) ctx.out(JSON.stringify(facts));
  else for (const [k, v] of Object.entries(facts)) ctx.out(`${k.padEnd(11)} ${typeof v === "object" ? JSON.stringify(v, null, 2) : String(v)}`);
  return 0;
}

if (import.meta.url === `file://${process.argv[1]}`) runCli(adminMain);

/** The broker nodes connected to this PostgreSQL database (by their application_name), or [] on SQLite. */
function brokerNodesConnected(db: Db): string[] {
  if (!isPostgres(db)) return [];
  const names = db.prepare("SELECT DISTINCT application_name FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'handoff-pay node %'").pluck().all() as string[];
  return names.map((n) => n.slice("handoff-pay node ".length)).sort();
}
