/**
 * `npm run sim -- <command>`: the device simulator.
 *   keygen     make a device key pair file (optionally register it in one step)
 *   terminal   be a terminal: connect and print what arrives
 *   phone      be a phone: connect and print what arrives
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { defaultBrokerUrl, defaultDataDir, masterKeyFromEnv } from "../src/config.ts";
import { OperationError, UsageError, parseFlags, requireString, runCli } from "../src/cli/args.ts";
import { fromBase64, toBase64 } from "../src/crypto/encoding.ts";
import { registerDevice } from "../src/service/devices.ts";
import { ensureDataDir, loadKeyring, openDataDb, readBrokerCertificate, readBrokerPublicKey } from "../broker/data-dir.ts";
import { PhoneAgent, pay, type PromptAnswer } from "./agents.ts";
import { STEP_TEXT, acceptedText, codeBox, limitsText } from "./present.ts";
import { Device, certificateFingerprint, parseUrlList, type DeviceOptions, type Received } from "./device.ts";
import type { Limits } from "../src/core/agreement.ts";
import { CURRENCY_EXPONENTS, formatAmount, isCurrency, parseAmount } from "../src/core/money.ts";
import { newDeviceKey, readKeyFile, writeKeyFile, type DeviceKey } from "./keyfile.ts";
import { checkReceipt, receiptBody, receiptFromEnvelope, receiptText, type ReceiptFile } from "../src/device/receipt.ts";
import { verify } from "../src/crypto/ed25519.ts";

export const USAGE = `Usage: npm run sim -- <command> [options]

Commands:
  keygen --out FILE [--kind terminal|phone] [--name NAME] [--force]
         [--register [--user USER_ID] [--data-dir DIR]]
                       make a key pair file (mode 0600); --register also adds the device to
                       the broker's data dir, as "npm run admin -- device add" would
  terminal --key FILE [--login LOGIN] [--merchant ID] [--name NAME]
                       connect as a terminal, print what arrives, and take typed commands
                       (bind, pay, ...); --login and --merchant are their defaults
  phone --key FILE [--auto approve|decline|ignore]
                       connect as a phone, print what arrives, and answer payment prompts

One-shot device commands (connect, do one thing, print the outcome, exit):
  terminal --key FILE bind --login LOGIN [--model M] [--serial S] [--name NAME]
                       ask for a pairing code, show it, wait until a phone confirms it
  phone --key FILE pair CODE [--currency CNY] [--auto-max 50.00] [--auto-daily 200.00] [--max 1000.00]
                       confirm the code a terminal shows, with these limits
  phone --key FILE agreements
                       the terminals this phone is bound to
  phone --key FILE limits AGREEMENT_ID [--auto-max A] [--auto-daily A] [--max A]
                       change an agreement's limits (others stay as they are)
  terminal|phone --key FILE unbind AGREEMENT_ID
                       end an agreement; both devices are told
  terminal --key FILE pay AMOUNT CURRENCY --login LOGIN --merchant ID [--order REF]
                       [--idempotency-key KEY] [--description TEXT]
                       ask for a payment and follow it to its result (exit 0 only if completed)
  terminal --key FILE cancel PAYMENT_ID
  terminal|phone --key FILE status PAYMENT_ID
                       the payment's state and every event so far
  terminal|phone --key FILE receipt RECEIPT_FILE
                       ask the broker for the proof that a saved receipt is in its signed audit
                       log, and add it to the file (then: npm run admin -- receipt verify FILE)

The phone, when connected without a command, answers payment prompts: it asks
"Approve ¥128.00 to Coffee Corner, from Living room TV? [y/N]" and executes approved
payments. --auto approve|decline|ignore answers every prompt that way without asking.

Once connected without a command, type a command: the one-shot commands above without
"terminal --key FILE" (e.g. bind, pay 12.50 CNY), or ping, help, quit.

Options:
  --out FILE               keygen: the key file to write
  --kind terminal|phone    keygen: the device kind (needed with --register)
  --name NAME              keygen: the device's name; terminal bind: the displayName shown
                           on the phone (default: the key file's name)
  --force                  keygen: overwrite an existing key file
  --register               keygen: also register the device in the broker's data dir
  --user USER_ID           keygen --register --kind phone: the user whose wallet the
                           phone's payments debit (phones need it)
  --key FILE               terminal, phone: the device's key file (from keygen)
  --url URL[,URL...]       terminal, phone: broker URL, mqtt://, mqtts:// (TLS), ws:// or
                           wss:// (MQTT over WebSocket) host:port (env HANDOFF_URL, default
                           mqtt://127.0.0.1:1883). Several, separated by commas, are the nodes
                           of one cluster: the device tries the first, and after a failure or a
                           lost connection the next, in turn, printing the one it connected to
  --ca FILE                terminal, phone with mqtts:// or wss://: trust the broker certificate
                           or CA in FILE (PEM) instead of the system's CAs; the host name must
                           match it. With several URLs, for each mqtts:// and wss:// one
  --fingerprint SHA256     terminal, phone with mqtts:// or wss://: accept only the broker
                           certificate with this SHA-256 fingerprint (AB:CD:…, as the broker
                           logs it at start); with several URLs, from each mqtts:// and wss://
                           one. With neither --ca nor --fingerprint, the certificate in
                           <data-dir>/tls.crt is trusted, if there is one, and otherwise the
                           system's CAs
  --broker-key BASE64      terminal, phone: the broker public key to pin (default: read
                           <data-dir>/broker.pub)
  --data-dir DIR           the broker's data dir: where broker.pub and tls.crt are, and where
                           keygen --register registers (env HANDOFF_DATA_DIR, default ./data)
  --login LOGIN            terminal bind, pay: the name of the user logged in on the
                           terminal; pay must send the login that was bound
  --model M                terminal bind: the terminal's model (default "Handoff simulator")
  --serial S               terminal bind: the terminal's serial (default SIM-<id>)
  --merchant ID            terminal pay: the merchant id to pay (a registered merchant)
  --order REF              terminal pay: the order reference (default order-<ms>)
  --idempotency-key KEY    terminal pay: the idempotency key (default: a new one)
  --description TEXT       terminal pay: the text shown on the phone's prompt
  --currency CODE          phone pair: the agreement's currency (default CNY)
  --auto-max AMOUNT        phone pair, limits: auto-confirm payments up to this amount
  --auto-daily AMOUNT      phone pair, limits: auto-confirm at most this much per UTC day
  --max AMOUNT             phone pair, limits: the most one payment may be
  --auto approve|decline|ignore
                           phone: answer every prompt this way without asking
  --receipts DIR           terminal, phone: save every payment result, as the broker signed it,
                           to DIR/<payment id>.<terminal|phone>.json (a receipt; see receipt)
  -h, --help               print this help and exit

Examples:
  npm run sim -- keygen --out tv.key --kind terminal --name "Living room TV" --register
  npm run sim -- keygen --out phone.key --kind phone --name "Alice's phone" --register --user alice
  npm run sim -- terminal --key tv.key --login alice --merchant coffee-corner
  npm run sim -- phone --key phone.key --url mqtt://127.0.0.1:1883
  npm run sim -- phone --key phone.key --url mqtts://127.0.0.1:8883 --ca data/tls.crt
  npm run sim -- phone --key phone.key --url wss://broker.example:8443 --fingerprint AB:CD:…
  npm run sim -- phone --key phone.key --url mqtt://node-a:1883,mqtt://node-b:1883
  npm run sim -- terminal --key tv.key bind --login alice
  npm run sim -- phone --key phone.key pair BCDF-GHJK --auto-max 50 --max 500
  npm run sim -- phone --key phone.key agreements
  npm run sim -- terminal --key tv.key pay 12.50 CNY --login alice --merchant coffee-corner --order A-1001
  npm run sim -- phone --key phone.key --auto approve
  npm run sim -- terminal --key tv.key pay 12.50 CNY --login alice --merchant coffee-corner --receipts receipts
  npm run sim -- terminal --key tv.key receipt receipts/pay_….terminal.json`;

export const FLAGS = {
  out: { type: "string" },
  kind: { type: "string" },
  name: { type: "string" },
  force: { type: "boolean" },
  register: { type: "boolean" },
  user: { type: "string" },
  "data-dir": { type: "string" },
  key: { type: "string" },
  url: { type: "string" },
  ca: { type: "string" },
  fingerprint: { type: "string" },
  "broker-key": { type: "string" },
  login: { type: "string" },
  model: { type: "string" },
  serial: { type: "string" },
  currency: { type: "string" },
  "auto-max": { type: "string" },
  "auto-daily": { type: "string" },
  max: { type: "string" },
  merchant: { type: "string" },
  order: { type: "string" },
  "idempotency-key": { type: "string" },
  description: { type: "string" },
  auto: { type: "string" },
  receipts: { type: "string" },
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
      return runDevice(command, values, positionals.slice(1));
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

/**
 * The broker URLs of --url (or HANDOFF_URL): one, or several separated by commas; a malformed
 * list or URL is a usage error.
 */
export function brokerUrlsFlag(text: string): string[] {
  try {
    const urls = parseUrlList(text);
    for (const url of urls) if (!URL.canParse(url)) throw new Error(`broker URL ${url} is not a URL (mqtt://, mqtts://, ws:// or wss://host:port)`);
    return urls;
  } catch (err) {
    throw new UsageError(`--url: ${(err as Error).message}`);
  }
}

/**
 * What a device trusts of the broker's TLS certificate (mqtts://, wss://): --ca, --fingerprint,
 * or else the certificate in the data dir, trusted exactly (whatever host names it lists); with
 * none of them, the system's CAs. Plain mqtt:// and ws:// take none. With several URLs, the
 * trust is for each mqtts:// and wss:// one.
 */
export function brokerTrust(url: string | readonly string[], flags: { ca?: string | undefined; fingerprint?: string | undefined }, dataDir: string): Pick<DeviceOptions, "ca" | "fingerprint256"> {
  const urls = typeof url === "string" ? [url] : url;
  const secure = urls.some((u) => /^(mqtts|wss):/i.test(u));
  if (!secure) {
    if (flags.ca !== undefined || flags.fingerprint !== undefined) throw new UsageError(`--ca and --fingerprint are for mqtts:// and wss:// URLs, not ${urls.join(", ")}`);
    return {};
  }
  const trust: { ca?: string; fingerprint256?: string } = {};
  if (flags.ca !== undefined) {
    try {
      trust.ca = readFileSync(flags.ca, "utf8");
      certificateFingerprint(trust.ca);
    } catch (err) {
      throw new OperationError(`--ca ${flags.ca}: not a readable PEM certificate (${(err as Error).message})`);
    }
  }
  if (flags.fingerprint !== undefined) trust.fingerprint256 = flags.fingerprint;
  if (trust.ca !== undefined || trust.fingerprint256 !== undefined) return trust;
  const cert = readBrokerCertificate(dataDir);
  if (cert === null) return {};
  try {
    return { ca: cert, fingerprint256: certificateFingerprint(cert) };
  } catch (err) {
    throw new OperationError(`${dataDir}/tls.crt is not a PEM certificate (${(err as Error).message}): pass --ca or --fingerprint`);
  }
}

function stamp(): string {
  return new Date().toISOString().slice(11, 23);
}

function describe(m: Received): string | null {
  const b = m.body as Record<string, unknown>;
  const money = () => formatAmount(b.amountMinor as number, b.currency as string);
  if (m.type === "payment_state" || m.type === "payment_prompt" || m.type === "agreements") return null; // narrated elsewhere
  if (m.type === "payment_task") return `paying ${money()} to ${b.merchantName as string}…`;
  if (m.type === "payment_result") return `${String(b.status).toUpperCase()}${b.reason && b.reason !== b.status ? ` (${b.reason as string})` : ""}: ${money()} to ${b.merchantName as string}, from ${b.terminalName as string}`;
  if (m.type === "payment_update") return `${b.paymentId as string}: ${STEP_TEXT[b.step as string] ?? (b.step as string)}`;
  if (m.type === "unbound") return `unbound from ${(b.terminalName as string | null) ?? "a terminal"} (${b.agreementId as string}, by ${b.by as string})`;
  if (m.type === "bound") return `bound to ${b.terminalName as string} (${b.agreementId as string})`;
  if (m.type === "error") {
    const b = m.body as { code: string; detail: string; inReplyTo: string | null };
    return `error ${b.code}: ${b.detail}${b.inReplyTo ? ` (re ${b.inReplyTo})` : ""}`;
  }
  return `${m.type} ${JSON.stringify(m.body)}`;
}

async function runDevice(kind: "terminal" | "phone", values: Values, action: string[]): Promise<number> {
  const keyFile = requireString(values, "key", USAGE);
  let key: DeviceKey;
  try {
    key = readKeyFile(keyFile);
  } catch (err) {
    throw new OperationError((err as Error).message);
  }
  if (key.kind !== undefined && key.kind !== kind) process.stderr.write(`warning: ${keyFile} was made for a ${key.kind}\n`);
  const urls = brokerUrlsFlag(values.url ?? defaultBrokerUrl());
  const url = urls.join(", ");
  const trust = brokerTrust(urls, values, values["data-dir"] ?? defaultDataDir());
  const brokerPublicKey = brokerKey(values);
  let device: Device;
  try {
    device = new Device({ url: urls, key, brokerPublicKey, ...trust });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const say = (line: string) => process.stdout.write(`${stamp()}  ${line}\n`);
  const receipts = values.receipts;
  if (receipts !== undefined) {
    // Every result is a receipt: kept as the broker signed it, one file per payment and device kind.
    mkdirSync(receipts, { recursive: true });
    device.on("envelope", (m, text) => {
      if (m.type !== "payment_result") return;
      const file = join(receipts, `${String(m.body.paymentId)}.${kind}.json`);
      writeFileSync(file, receiptText(receiptFromEnvelope(text)));
      say(`receipt saved: ${file}`);
    });
  }
  device.on("message", (m) => {
    // A terminal's commands narrate their own replies, progress and results.
    if (kind === "terminal" && (["payment_update", "payment_result", "payment_accepted", "payment_state", "bind_code", "bound"].includes(m.type) || (m.type === "error" && m.re !== undefined))) return;
    const line = describe(m);
    if (line !== null) say(`← ${line}`);
  });
  device.on("rejected", (reason) => say(`dropped a message: ${reason}`));
  device.on("offline", () => say("offline; reconnecting…"));
  device.on("connect", (at) => say(`connected to ${at} as ${kind} ${device.id}; type help for commands`));
  device.on("error", (err) => say(`connection error${urls.length > 1 ? ` (${device.currentUrl})` : ""}: ${err.message}`));
  const refused = new Promise<number>((resolve) =>
    device.on("refused", (code, text) => {
      say(`the broker refused this device (CONNACK ${code}): ${text}`);
      resolve(1);
    }),
  );
  if (action.length > 0) {
    device.removeAllListeners("message");
    device.removeAllListeners("connect");
    try {
      await device.connect();
    } catch (err) {
      throw new OperationError(`could not connect to ${url}: ${(err as Error).message}`);
    }
    // Of several nodes, say which one serves (a one-shot command prints nothing else on connect).
    if (urls.length > 1) say(`connected to ${device.currentUrl}`);
    device.on("connect", (at) => say(`reconnected to ${at}`));
    try {
      return await oneShot(kind, device, action, values, key);
    } finally {
      await device.close();
    }
  }
  say(`connecting to ${url} as ${device.id}…`);
  try {
    await device.connect();
  } catch (err) {
    throw new OperationError(`could not connect to ${url}: ${(err as Error).message}`);
  }
  const rl = createInterface({ input: process.stdin, terminal: false });
  const auto = values.auto;
  if (auto !== undefined && auto !== "approve" && auto !== "decline" && auto !== "ignore") throw new UsageError("--auto must be approve, decline or ignore");
  // Prompts wait in line for the person's y/N; each is answered by the next line typed.
  const waiting: ((answer: PromptAnswer) => void)[] = [];
  if (kind === "phone") {
    const live = process.stdout.isTTY === true;
    new PhoneAgent(
      device,
      (p) => {
        const question = `Approve ${formatAmount(p.amountMinor, p.currency)} to ${p.merchantName}, from ${p.terminalName}?${p.description ? ` (${p.description})` : ""}`;
        const left = () => Math.max(0, Math.round((p.deadlineMs - Date.now()) / 1000));
        if (auto !== undefined) {
          say(`${question} → ${auto} (--auto)`);
          return auto as PromptAnswer;
        }
        say(`${question} [y/N] (${left()} s left)`);
        return new Promise<PromptAnswer>((resolve) => {
          // On a terminal the countdown ticks in place on the line below the question.
          const tick = live ? setInterval(() => process.stdout.write(`\r\x1b[K  ${left()} s left — y or n: `), 1000) : null;
          let settled = false;
          const settle = (answer: PromptAnswer) => {
            if (settled) return;
            settled = true;
            if (tick !== null) clearInterval(tick);
            if (live) process.stdout.write("\r\x1b[K");
            const i = waiting.indexOf(answerLine);
            if (i >= 0) waiting.splice(i, 1);
            device.off("message", ended);
            resolve(answer);
          };
          const answerLine = (answer: PromptAnswer) => settle(answer);
          // The prompt can end without an answer: expired, or cancelled by the terminal.
          const ended = (m: Received) => {
            if (m.type === "payment_result" && m.body.paymentId === p.paymentId) settle("ignore");
          };
          device.on("message", ended);
          waiting.push(answerLine);
        });
      },
      (line) => say(line),
    );
    // Shows what this phone is bound to, now and on every reconnect.
    const showBound = () =>
      device.request("agreements_list", {}).then(
        (reply) => {
          const items = (reply.body.items ?? []) as { terminalName?: string; agreementId: string; limits?: Limits }[];
          if (items.length === 0) say("not bound to any terminal yet: pair CODE binds one");
          for (const i of items) say(`bound to ${i.terminalName ?? "(unreadable agreement)"} (${i.agreementId})${i.limits ? `: ${limitsText(i.limits)}` : ""}`);
        },
        () => {},
      );
    void showBound();
    device.on("connect", () => void showBound());
  }
  const session = new Promise<number>((resolve) => {
    const quit = async () => {
      rl.close();
      await device.close();
      resolve(0);
    };
    process.once("SIGINT", () => void quit());
    rl.on("line", (line) => {
      const cmd = line.trim();
      const answer = waiting.shift();
      if (answer !== undefined) return answer(/^y(es)?$/i.test(cmd) ? "approve" : "decline");
      if (cmd === "") return;
      if (cmd === "quit" || cmd === "exit") return void quit();
      if (cmd === "help") return say(kind === "terminal" ? TERMINAL_HELP : PHONE_HELP);
      if (cmd === "ping") {
        const id = device.send("ping", { echo: "hello" });
        return say(`→ ping (${id})`);
      }
      // Anything else is a device command, as on the command line; the session's flags
      // (--login, --merchant, ...) are the defaults. It runs in the background, so a payment
      // can be cancelled while it waits for the phone.
      let parsed;
      try {
        parsed = parseFlags(splitWords(cmd), FLAGS, kind === "terminal" ? TERMINAL_HELP : PHONE_HELP);
      } catch (err) {
        return say((err as Error).message.split("\n")[0]!);
      }
      oneShot(kind, device, parsed.positionals, { ...values, ...parsed.values } as Values, key).then(
        () => {},
        (err: unknown) => say(err instanceof UsageError ? `${(err as Error).message.split("\n")[0]}; type help` : `error: ${(err as Error).message}`),
      );
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

function amountFlag(values: Values, flag: "auto-max" | "auto-daily" | "max", currency: string, fallback: number): number {
  const text = values[flag];
  if (text === undefined) return fallback;
  const minor = parseAmount(text, currency);
  if (minor === null) throw new UsageError(`--${flag} ${text}: write an amount like 12.50 (${currency} has ${CURRENCY_EXPONENTS[currency] ?? "?"} decimals)`);
  return minor;
}

function failure(reply: Received): string {
  const b = reply.body as { code: string; detail: string };
  return `${b.code}: ${b.detail}`;
}

const TERMINAL_HELP = `terminal commands:
  bind [--login LOGIN]                          show a pairing code and wait for the phone
  pay AMOUNT CURRENCY [--merchant ID] [--order REF] [--description TEXT] [--idempotency-key KEY]
  cancel PAYMENT_ID      status PAYMENT_ID      unbind AGREEMENT_ID
  receipt RECEIPT_FILE   ping   help   quit
(start with --login and --merchant to set them once, --receipts DIR to save receipts)`;

const PHONE_HELP = `phone commands (a prompt is answered with y or n):
  pair CODE [--auto-max A] [--max A]    agreements    limits AGREEMENT_ID [--auto-max A]
  status PAYMENT_ID    unbind AGREEMENT_ID    receipt RECEIPT_FILE    ping   help   quit`;

/** Splits a typed line into words; double quotes group words ("Two flat whites"). */
function splitWords(line: string): string[] {
  return [...line.matchAll(/"([^"]*)"|(\S+)/g)].map((m) => m[1] ?? m[2]!);
}

async function oneShot(kind: "terminal" | "phone", device: Device, action: string[], values: Values, key: DeviceKey): Promise<number> {
  const [verb, arg] = action;
  const out = (line: string) => process.stdout.write(line + "\n");
  const need = (what: string) => {
    if (arg === undefined) throw new UsageError(`${kind} ${verb} needs ${what}\n\n${USAGE}`);
    return arg;
  };
  if (verb === "receipt") {
    const file = need("a receipt file (saved with --receipts DIR)");
    let receipt: ReceiptFile;
    let body: ReturnType<typeof receiptBody>;
    try {
      receipt = JSON.parse(readFileSync(file, "utf8")) as ReceiptFile;
      body = receiptBody(receipt);
    } catch (err) {
      throw new OperationError(`${file} is not a receipt file: ${(err as Error).message}`);
    }
    const { auditIndex, paymentId } = body;
    if (!Number.isSafeInteger(auditIndex)) throw new OperationError(`${file}: its payment_result has no auditIndex (a broker from before the audit log sent it)`);
    const reply = await device.request("audit_inclusion_request", { index: auditIndex });
    if (reply.type === "error") throw new OperationError(failure(reply));
    const { format, envelope } = receipt;
    const proved = receiptText({ format, envelope, inclusion: reply.body });
    // The same check as admin receipt verify and the pages: a proof that does not prove is not kept.
    const verdict = checkReceipt(proved, brokerKey(values), verify);
    if (!verdict.ok) throw new OperationError(`the broker's answer is not a proof of ${file}: ${verdict.reason}`);
    writeFileSync(file, proved);
    const head = reply.body.head as { treeSize: number; timestampMs: number };
    out(`proof added to ${file}: ${paymentId} is entry ${auditIndex} of the audit log, under the head of ${head.treeSize} entries signed ${new Date(head.timestampMs).toISOString()}`);
    out(`check it offline with: npm run admin -- receipt verify ${file}`);
    return 0;
  }
  if (verb === "unbind") {
    const reply = await device.request("unbind", { agreementId: need("an agreement id") });
    if (reply.type === "error") throw new OperationError(failure(reply));
    out(`unbound ${reply.body.agreementId}${reply.body.terminalName ? ` (${reply.body.terminalName})` : ""}; both devices were told`);
    return 0;
  }
  if (kind === "terminal" && verb === "pay") {
    const currency = (action[2] ?? "").toUpperCase();
    if (arg === undefined || !isCurrency(currency)) throw new UsageError(`terminal pay needs an amount and a currency, e.g. pay 12.50 CNY\n\n${USAGE}`);
    const amountMinor = parseAmount(arg, currency);
    if (amountMinor === null) throw new UsageError(`${arg} is not an amount in ${currency} (${CURRENCY_EXPONENTS[currency]} decimals)`);
    const started = Date.now();
    const outcome = await pay(
      device,
      {
        login: requireString(values, "login", USAGE),
        merchantId: requireString(values, "merchant", USAGE),
        amountMinor,
        currency,
        orderRef: values.order ?? `order-${Date.now()}`,
        ...(values["idempotency-key"] ? { idempotencyKey: values["idempotency-key"] } : {}),
        ...(values.description ? { description: values.description } : {}),
      },
      // The answer says what the broker did with the request; updates follow only for later steps.
      (step, m) =>
        out(
          `${stamp()}  ${step === "accepted" ? `accepted ${String(m.body.paymentId)}: ${acceptedText(m.body)}` : step === "busy" ? `broker busy: asking again in ${String(m.body.retryAfterMs)} ms` : (STEP_TEXT[step] ?? step)}`,
        ),
    );
    if (outcome.kind === "rejected") throw new OperationError(`${outcome.code}: ${outcome.detail}`);
    const r = outcome.result;
    out(`${stamp()}  ${r.status.toUpperCase()}${r.reason && r.reason !== r.status ? ` (${r.reason})` : ""}: ${formatAmount(r.amountMinor, r.currency)} to ${r.merchantName}${r.transferId ? `, transfer ${r.transferId}` : ""} — ${Date.now() - started} ms`);
    return r.status === "completed" ? 0 : 1;
  }
  if (verb === "cancel" || verb === "status") {
    const paymentId = need("a payment id");
    const reply = verb === "cancel" ? await device.request("payment_cancel", { paymentId }) : await device.request("payment_status", { paymentId });
    if (reply.type === "error") throw new OperationError(failure(reply));
    if (reply.type === "payment_result") {
      // A cancel ends the payment: it is answered by the payment's result.
      const r = reply.body as { status: string; amountMinor: number; currency: string; merchantName: string };
      out(`${paymentId}: ${r.status}, ${formatAmount(r.amountMinor, r.currency)} to ${r.merchantName}`);
      return 0;
    }
    const p = reply.body.payment as { status: string; amountMinor: number; currency: string; merchantName: string; reason: string | null };
    out(`${paymentId}: ${p.status}${p.reason ? ` (${p.reason})` : ""}, ${formatAmount(p.amountMinor, p.currency)} to ${p.merchantName}`);
    for (const e of reply.body.events as { seq: number; kind: string; atMs: number }[]) out(`  #${e.seq} ${new Date(e.atMs).toISOString().slice(11, 23)} ${e.kind}`);
    return 0;
  }
  if (kind === "terminal" && verb === "bind") {
    const login = requireString(values, "login", USAGE);
    const reply = await device.request("bind_request", {
      login,
      terminal: { model: values.model ?? "Handoff simulator", serial: values.serial ?? `SIM-${device.id.slice(1, 9).toUpperCase()}`, displayName: values.name ?? key.name ?? "Simulated terminal" },
    });
    if (reply.type === "error") throw new OperationError(failure(reply));
    const body = reply.body as { code: string; ttlMs: number; expiresAtMs: number; display: string };
    out(body.display);
    out(codeBox(body.code));
    out(`valid for ${Math.round(body.ttlMs / 60_000)} minutes`);
    out("waiting for the phone…");
    try {
      const bound = await device.next("bound", Math.max(0, body.expiresAtMs - Date.now()) + 2000);
      const b = bound.body as { agreementId: string; phoneId: string; limits: Limits };
      out(`bound to phone ${b.phoneId}: agreement ${b.agreementId}`);
      out(`limits: ${limitsText(b.limits)}`);
      return 0;
    } catch {
      throw new OperationError("the code expired before a phone confirmed it; run bind again for a new one");
    }
  }
  if (kind === "phone" && verb === "pair") {
    const currency = (values.currency ?? "CNY").toUpperCase();
    if (!isCurrency(currency)) throw new UsageError(`--currency ${currency} is not a supported ISO 4217 code`);
    const perPaymentMaxMinor = amountFlag(values, "max", currency, 100_000);
    const autoConfirmMaxMinor = amountFlag(values, "auto-max", currency, Math.min(5_000, perPaymentMaxMinor));
    const limits = { currency, autoConfirmMaxMinor, autoConfirmDailyMinor: amountFlag(values, "auto-daily", currency, Math.max(autoConfirmMaxMinor, 20_000)), perPaymentMaxMinor };
    const reply = await device.request("bind_confirm", { code: need("the code the terminal shows"), limits });
    if (reply.type === "error") throw new OperationError(failure(reply));
    out(`bound to "${reply.body.terminalName}" (${reply.body.terminalId}): agreement ${reply.body.agreementId}`);
    out(`limits: ${limitsText(reply.body.limits as Limits)}`);
    return 0;
  }
  if (kind === "phone" && verb === "agreements") {
    const reply = await device.request("agreements_list", {});
    if (reply.type === "error") throw new OperationError(failure(reply));
    const items = reply.body.items as { agreementId: string; terminalName?: string; limits?: Limits; boundAtMs?: number; usage?: { paymentCount: number }; unreadable?: string }[];
    if (items.length === 0) out("no agreements: pair with a terminal first (terminal: bind, phone: pair CODE)");
    for (const i of items) {
      if (i.unreadable !== undefined) out(`${i.agreementId}  cannot be read (${i.unreadable}); you can still unbind it`);
      else out(`${i.agreementId}  ${i.terminalName}  bound ${new Date(i.boundAtMs!).toISOString().slice(0, 16).replace("T", " ")}  ${i.usage!.paymentCount} payments\n    ${limitsText(i.limits!)}`);
    }
    return 0;
  }
  if (kind === "phone" && verb === "limits") {
    const agreementId = need("an agreement id");
    const list = await device.request("agreements_list", {});
    const current = (list.body.items as { agreementId: string; limits?: Limits }[] | undefined)?.find((i) => i.agreementId === agreementId)?.limits;
    if (current === undefined) throw new OperationError(`no readable agreement ${agreementId} on this phone`);
    const c = current.currency;
    const limits = {
      currency: c,
      autoConfirmMaxMinor: amountFlag(values, "auto-max", c, current.autoConfirmMaxMinor),
      autoConfirmDailyMinor: amountFlag(values, "auto-daily", c, current.autoConfirmDailyMinor),
      perPaymentMaxMinor: amountFlag(values, "max", c, current.perPaymentMaxMinor),
    };
    const reply = await device.request("set_limits", { agreementId, limits });
    if (reply.type === "error") throw new OperationError(failure(reply));
    out(`limits of ${agreementId}: ${limitsText(reply.body.limits as Limits)}`);
    return 0;
  }
  throw new UsageError(`unknown ${kind} command "${action.join(" ")}"\n\n${USAGE}`);
}

// Run only as a program: the help test imports USAGE and FLAGS.
if (import.meta.url === `file://${process.argv[1]}`) runCli(main);
