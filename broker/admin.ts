/**
 * `npm run admin -- <command>`: the operator's tool. It works on the data dir's database
 * directly, whether or not a broker is running (SQLite WAL lets both write); a running broker
 * picks up revocations within a fraction of a second.
 */
import { masterKeyFromEnv, defaultDataDir } from "../src/config.ts";
import { OperationError, UsageError, parseFlags, requireString, runCli } from "../src/cli/args.ts";
import { toBase64 } from "../src/crypto/encoding.ts";
import type { Keyring } from "../src/crypto/keyring.ts";
import { deviceUserId, registerDevice, revokeDevice } from "../src/service/devices.ts";
import type { Db } from "../src/store/db.ts";
import { DeviceRepo, type DeviceRow } from "../src/store/devices.ts";
import { ensureDataDir, loadKeyring, openDataDb, readBrokerPublicKey } from "./data-dir.ts";

const USAGE = `Usage: npm run admin -- <command> [options]

Commands:
  device add --kind terminal|phone --name NAME --public-key BASE64 [--user USER_ID]
                                  register a device; prints its id (phones need --user)
  device list                     all devices, newest last
  device show ID                  one device
  device revoke ID                revoke a device; a connected one is disconnected at once
  broker pubkey                   the broker public key devices pin

Options for every command:
  --data-dir DIR    the broker's data dir (env HANDOFF_DATA_DIR, default ./data)
  --json            machine-readable output
  -h, --help        this help

Examples:
  npm run admin -- device add --kind terminal --name "Living room TV" --public-key ZXhhbXBsZS4uLg==
  npm run admin -- device add --kind phone --name "Alice's phone" --public-key <b64> --user alice
  npm run admin -- device list
  npm run admin -- device revoke d3k2...`;

const FLAGS = {
  "data-dir": { type: "string" },
  json: { type: "boolean" },
  kind: { type: "string" },
  name: { type: "string" },
  "public-key": { type: "string" },
  user: { type: "string" },
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
  const dataDir = ensureDataDir(values["data-dir"] ?? defaultDataDir());
  const [group, command, ...rest] = positionals;
  if (group === "broker" && command === "pubkey") {
    const key = readBrokerPublicKey(dataDir);
    if (key === null) throw new OperationError(`no broker identity in ${dataDir} yet: start the broker once (npm start -- --data-dir ${dataDir})`);
    out(values.json ? JSON.stringify({ brokerPublicKey: toBase64(key) }) : toBase64(key));
    return 0;
  }
  if (group !== "device") throw new UsageError(`unknown command "${positionals.join(" ")}"\n\n${USAGE}`);
  const { keyring } = loadKeyring(dataDir, masterKeyFromEnv(), (msg) => process.stderr.write(`warning: ${msg}\n`));
  const db = openDataDb(dataDir);
  const ctx: Ctx = { db, keyring, dataDir, json: values.json === true, out };
  try {
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

function needId(rest: string[], command: string): string {
  if (rest.length !== 1) throw new UsageError(`device ${command} takes one device id\n\n${USAGE}`);
  return rest[0]!;
}

function deviceAdd(ctx: Ctx, values: Record<string, unknown>): number {
  const kind = requireString(values, "kind", USAGE);
  const res = registerDevice(
    ctx.db,
    ctx.keyring,
    {
      kind: kind as "terminal",
      name: requireString(values, "name", USAGE),
      publicKey: requireString(values, "public-key", USAGE),
      ...(typeof values.user === "string" ? { userId: values.user } : {}),
    },
    Date.now(),
  );
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
  const res = revokeDevice(ctx.db, id, Date.now());
  if (!res.ok) throw new OperationError(res.error);
  ctx.out(ctx.json ? JSON.stringify({ id, status: "revoked" }) : `revoked ${id}; a running broker disconnects it within a second`);
  return 0;
}

if (import.meta.url === `file://${process.argv[1]}`) runCli(adminMain);
