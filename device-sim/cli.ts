/**
 * `npm run sim -- <command>`: the device simulator.
 *   keygen     make a device key pair file (optionally register it in one step)
 *   terminal   be a terminal: connect and print what arrives
 *   phone      be a phone: connect and print what arrives
 */
import { createInterface } from "node:readline";
import { defaultBrokerUrl, defaultDataDir, masterKeyFromEnv } from "../src/config.ts";
import { OperationError, UsageError, parseFlags, requireString, runCli } from "../src/cli/args.ts";
import { fromBase64, toBase64 } from "../src/crypto/encoding.ts";
import { registerDevice } from "../src/service/devices.ts";
import { ensureDataDir, loadKeyring, openDataDb, readBrokerPublicKey } from "../broker/data-dir.ts";
import { Device, type Received } from "./device.ts";
import { newDeviceKey, readKeyFile, writeKeyFile, type DeviceKey } from "./keyfile.ts";

const USAGE = `Usage: npm run sim -- <command> [options]

Commands:
  keygen --out FILE [--kind terminal|phone] [--name NAME] [--force]
         [--register [--user USER_ID] [--data-dir DIR]]
                       make a key pair file (mode 0600); --register also adds the device to
                       the broker's data dir, as "npm run admin -- device add" would
  terminal --key FILE  connect as a terminal and print what arrives
  phone --key FILE     connect as a phone and print what arrives

Connection options (terminal, phone):
  --url URL            broker URL (env HANDOFF_URL, default mqtt://127.0.0.1:1883)
  --broker-key BASE64  the broker public key to pin (default: read <data-dir>/broker.pub)
  --data-dir DIR       where broker.pub is (env HANDOFF_DATA_DIR, default ./data)

Once connected, type a command: ping, help, quit.

Examples:
  npm run sim -- keygen --out tv.key --kind terminal --name "Living room TV" --register
  npm run sim -- keygen --out phone.key --kind phone --name "Alice's phone" --register --user alice
  npm run sim -- terminal --key tv.key
  npm run sim -- phone --key phone.key --url mqtt://127.0.0.1:1883`;

const FLAGS = {
  out: { type: "string" },
  kind: { type: "string" },
  name: { type: "string" },
  force: { type: "boolean" },
  register: { type: "boolean" },
  user: { type: "string" },
  "data-dir": { type: "string" },
  key: { type: "string" },
  url: { type: "string" },
  "broker-key": { type: "string" },
} as const;

type Values = ReturnType<typeof parseFlags<typeof FLAGS>>["values"];

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseFlags(argv, FLAGS, USAGE);
  const command = positionals[0];
  if (values.help || command === undefined) {
    process.stdout.write(USAGE + "\n");
    return values.help ? 0 : 2;
  }
  switch (command) {
    case "keygen":
      return keygen(values);
    case "terminal":
    case "phone":
      return runDevice(command, values);
    default:
      throw new UsageError(`unknown command "${command}"\n\n${USAGE}`);
  }
}

function keygen(values: Values): number {
  const out = requireString(values, "out", USAGE);
  const kind = values.kind;
  if (kind !== undefined && kind !== "terminal" && kind !== "phone") throw new UsageError(`--kind must be terminal or phone\n\n${USAGE}`);
  if (values.register && kind === undefined) throw new UsageError(`--register needs --kind terminal|phone\n\n${USAGE}`);
  const key = newDeviceKey(kind, values.name);
  if (values.register) {
    // Register first: a key file is only written for a device the broker will accept.
    const dataDir = ensureDataDir(values["data-dir"] ?? defaultDataDir());
    const { keyring } = loadKeyring(dataDir, masterKeyFromEnv());
    const db = openDataDb(dataDir);
    try {
      const res = registerDevice(
        db,
        keyring,
        { kind: kind!, name: values.name ?? (kind === "phone" ? "Simulated phone" : "Simulated terminal"), publicKey: toBase64(key.pair.publicKey), ...(values.user ? { userId: values.user } : {}) },
        Date.now(),
      );
      if (!res.ok) throw new OperationError(res.error);
    } finally {
      db.close();
    }
  }
  try {
    writeKeyFile(out, key, values.force === true);
  } catch (err) {
    throw new OperationError((err as Error).message);
  }
  process.stdout.write(`${key.deviceId}\n`);
  process.stderr.write(
    values.register
      ? `wrote ${out} and registered ${kind} ${key.deviceId}\n`
      : `wrote ${out}; register it with:\n  npm run admin -- device add --kind ${kind ?? "terminal|phone"} --name "..." --public-key ${toBase64(key.pair.publicKey)}${kind === "phone" ? " --user USER_ID" : ""}\n`,
  );
  return 0;
}

function brokerKey(values: Values): Uint8Array {
  if (values["broker-key"] !== undefined) {
    const key = fromBase64(values["broker-key"]);
    if (key === null || key.length !== 32) throw new UsageError("--broker-key must be 32 bytes of base64 (npm run admin -- broker pubkey prints it)");
    return key;
  }
  const dir = values["data-dir"] ?? defaultDataDir();
  const key = readBrokerPublicKey(dir);
  if (key === null) throw new OperationError(`no broker.pub in ${dir}: pass --broker-key (npm run admin -- broker pubkey prints it) or --data-dir`);
  return key;
}

function stamp(): string {
  return new Date().toISOString().slice(11, 23);
}

function describe(m: Received): string {
  if (m.type === "error") {
    const b = m.body as { code: string; detail: string; inReplyTo: string | null };
    return `error ${b.code}: ${b.detail}${b.inReplyTo ? ` (re ${b.inReplyTo})` : ""}`;
  }
  return `${m.type} ${JSON.stringify(m.body)}`;
}

async function runDevice(kind: "terminal" | "phone", values: Values): Promise<number> {
  const keyFile = requireString(values, "key", USAGE);
  let key: DeviceKey;
  try {
    key = readKeyFile(keyFile);
  } catch (err) {
    throw new OperationError((err as Error).message);
  }
  if (key.kind !== undefined && key.kind !== kind) process.stderr.write(`warning: ${keyFile} was made for a ${key.kind}\n`);
  const url = values.url ?? defaultBrokerUrl();
  const device = new Device({ url, key, brokerPublicKey: brokerKey(values) });
  const say = (line: string) => process.stdout.write(`${stamp()}  ${line}\n`);
  device.on("message", (m) => say(`← ${describe(m)}`));
  device.on("rejected", (reason) => say(`dropped a message: ${reason}`));
  device.on("offline", () => say("offline; reconnecting…"));
  device.on("connect", () => say(`connected to ${url} as ${kind} ${device.id}`));
  device.on("error", (err) => say(`connection error: ${err.message}`));
  const refused = new Promise<number>((resolve) =>
    device.on("refused", (code, text) => {
      say(`the broker refused this device (CONNACK ${code}): ${text}`);
      resolve(1);
    }),
  );
  say(`connecting to ${url} as ${device.id}…`);
  try {
    await device.connect();
  } catch (err) {
    throw new OperationError(`could not connect to ${url}: ${(err as Error).message}`);
  }
  const rl = createInterface({ input: process.stdin, terminal: false });
  const session = new Promise<number>((resolve) => {
    const quit = async () => {
      rl.close();
      await device.close();
      resolve(0);
    };
    process.once("SIGINT", () => void quit());
    rl.on("line", (line) => {
      const cmd = line.trim();
      if (cmd === "") return;
      if (cmd === "quit" || cmd === "exit") return void quit();
      if (cmd === "help") return say("commands: ping, help, quit");
      if (cmd === "ping") {
        const id = device.send("ping", { echo: "hello" });
        return say(`→ ping (${id})`);
      }
      say(`unknown command "${cmd}"; type help`);
    });
    rl.on("close", () => {
      // stdin closed (e.g. piped input ran out): keep printing until Ctrl-C
    });
  });
  const code = await Promise.race([session, refused]);
  rl.close();
  await device.close();
  return code;
}

runCli(main);
