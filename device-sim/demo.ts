/**
 * `npm run demo`: the whole handoff, told as the terminal and the phone see it, side by side.
 *
 * It plays a scenario (scenarios/demo.json unless --scenario says otherwise; the format is in
 * device-sim/scenario.ts) on a broker it starts in this process on a free port with a temporary
 * data dir, or on a running broker (--url). It exits 0 only when every step ended as expected.
 * With --web it plays nothing: it sets up a broker for a person to try the browser pages with
 * (device-sim/demo-web.ts) and runs until Ctrl-C.
 */
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import pino from "pino";
import { loadKeyring, openDataDb, readBrokerPublicKey, MASTER_KEY_FILE } from "../broker/data-dir.ts";
import { startBroker, type BrokerHandle } from "../broker/server.ts";
import { UsageError, databaseUrl, parseFlags } from "../src/cli/args.ts";
import { TCP_ONLY, brokerConfig, masterKeyFromEnv } from "../src/config.ts";
import { formatAmount } from "../src/core/money.ts";
import type { Keyring } from "../src/crypto/keyring.ts";
import { openPostgres, type Db } from "../src/store/db.ts";
import { redactUrl } from "../src/store/pg.ts";
import { brokerTrust, brokerUrlsFlag } from "./cli.ts";
import { WEB_CREDIT, WEB_MERCHANT, WEB_PHONE, WEB_TERMINAL, runWebDemo } from "./demo-web.ts";
import { ScenarioError, loadScenario, runScenario, type Balances, type Scenario, type ScenarioEvent, type ScenarioReport } from "./scenario.ts";

export const DEFAULT_SCENARIO = fileURLToPath(new URL("../scenarios/demo.json", import.meta.url));
const DEFAULT_MAX_WAIT_MS = 15_000;
const LOG_LEVELS = ["trace", "debug", "info", "warn", "error", "fatal", "silent"];

const USAGE = `Usage: npm run demo -- [options]

Plays a scenario (by default scenarios/demo.json) with simulated terminals and phones over real
MQTT, and narrates what each device sees, side by side: the terminal on the left, the phone on
the right, seconds since the start in the margin. The demo binds a TV to Alice's phone, then
pays: auto-confirmed, approved, declined, over the limit, left to expire, cancelled, retried with
the same idempotency key, and refused after an unbind; then it prints the ledger.

Exit status: 0 every step ended as expected; 1 one did not (a line on stderr names the first)
or the broker could not be reached; 2 a bad command line or scenario file.

Without --url, it starts its own broker in this process on a free port (127.0.0.1, port 0),
with a temporary data dir that it removes at the end, and with the settings of the scenario's
"broker" section: the demo's prompts expire after 1.5 s, so the expiry step is quick.

Options:
  --scenario FILE    the scenario to play (default scenarios/demo.json); the format is
                     described at the top of device-sim/scenario.ts
  --json             one JSON event per line instead of columns; the last line is the summary:
                     {"ok", "steps": [{"name", "expected", "actual", "ok"}], "balances",
                      "login", "terminalSerial", ...} (login and serial carry a random suffix,
                     so you can check they are not stored in clear in the data dir)
  --data-dir DIR     keep the broker's data in DIR (created if missing) instead of a temporary
                     dir; with --url, the data dir of the running broker (required)
  --url URL          play against a broker that is already running, e.g. mqtt://127.0.0.1:1883
                     (or mqtts://, ws://, wss://); several, separated by commas, are the nodes
                     of one cluster, tried in turn.
                     Devices, merchants and wallet credits are then written into the database in
                     --data-dir directly, as "npm run admin" does, and devices pin the key in
                     <data-dir>/broker.pub. That broker keeps its own settings: the scenario's
                     "broker" section does not apply. A prompt the scenario leaves to expire is
                     waited for only if the deadline the broker put in the prompt is at most
                     --max-wait-ms away; otherwise the terminal cancels that payment and the
                     step is reported as skipped, with the reason (a skipped step does not fail
                     the run). Start that broker with --prompt-ttl-ms 1500 to see the expiry.
  --database URL     with --url: the PostgreSQL database of the running broker or cluster
                     (postgres://user@host:port/db, or HANDOFF_DATABASE_URL), where the demo
                     registers its devices instead of <data-dir>/handoff.db; --data-dir is then
                     the data dir of any node (for broker.pub and master.key)
  --ca FILE          with an mqtts:// or wss:// --url: trust the broker certificate or CA in FILE
                     (PEM) instead of the system's CAs (for each such URL of a list)
  --fingerprint SHA256
                     with an mqtts:// or wss:// --url: accept only the broker certificate with
                     this SHA-256 fingerprint. With neither, <data-dir>/tls.crt is trusted if
                     there is one, else the system's CAs
  --max-wait-ms N    the longest wait for a prompt to expire (default ${DEFAULT_MAX_WAIT_MS})
  --log-level LEVEL  the in-process broker's log on stderr: ${LOG_LEVELS.join(" | ")} (default silent)
  --web              instead of playing a scenario, set up a broker to try the browser pages with:
                     start it in this process with a WebSocket listener (which serves the pages)
                     and plain TCP on a free port, register a terminal "${WEB_TERMINAL.name}" and a
                     phone "${WEB_PHONE.name}" (user ${WEB_PHONE.user}) with keys it makes, add the merchant
                     ${WEB_MERCHANT.id}, credit ${WEB_PHONE.user} ${formatAmount(WEB_CREDIT.amountMinor, WEB_CREDIT.currency)}, and print a link to each page:
                       http://127.0.0.1:<port>/terminal#key=<seed>&name=...
                       http://127.0.0.1:<port>/phone#key=<seed>&name=...
                     Each link carries its device's private key (base64url of the 32-byte seed,
                     after the #: the browser keeps it and never sends it): for this throw-away
                     broker only. Runs until Ctrl-C (exit 0), then closes the broker and removes
                     the temporary data dir. Takes --ws-port, --data-dir and --log-level; no
                     other option. A page pins the broker's key per address: reopening a link on
                     a port an earlier demo used shows "the broker's key changed" (use a fresh
                     port, the same --data-dir, or a private window)
  --ws-port PORT     with --web: the port of the pages and of MQTT over WebSocket (default 0: a
                     free port, printed in the links)
  -h, --help         this help

Environment: HANDOFF_MASTER_KEY, when the broker uses it instead of <data-dir>/master.key; with
--url the demo must seal and index with the same key as the broker.

Examples:
  npm run demo
  npm run demo -- --json | tail -1
  npm run demo -- --scenario scenarios/two-households.json
  npm run demo -- --data-dir /tmp/hp-demo && npm run admin -- --data-dir /tmp/hp-demo ledger balance
  npm run demo -- --web --ws-port 18080                                       (then open the two links)
  npm start -- --port 18830 --data-dir ./demo-data --prompt-ttl-ms 1500      (in one shell)
  npm run demo -- --url mqtt://127.0.0.1:18830 --data-dir ./demo-data         (in another)
  npm run cluster                                      (in one shell: prints the line to try)
  npm run demo -- --url mqtt://127.0.0.1:41001,mqtt://127.0.0.1:41002 --data-dir /tmp/hp-cluster-x/node-1 --database postgres://postgres@127.0.0.1:41000/handoff`;

const FLAGS = {
  scenario: { type: "string" },
  json: { type: "boolean" },
  "data-dir": { type: "string" },
  url: { type: "string" },
  database: { type: "string" },
  ca: { type: "string" },
  fingerprint: { type: "string" },
  "max-wait-ms": { type: "string" },
  "log-level": { type: "string" },
  web: { type: "boolean" },
  "ws-port": { type: "string" },
} as const;

/** The scenario options --web does not take. */
const NOT_WITH_WEB = ["scenario", "json", "url", "database", "ca", "fingerprint", "max-wait-ms"] as const;

export interface DemoIo {
  out(line: string): void;
  err(line: string): void;
  /** Width for the columns (default: the terminal's, or 120). */
  readonly columns?: number;
  /** Close the broker and remove the temporary dir on Ctrl-C (the program does; tests do not). */
  readonly handleSignals?: boolean;
  /** --web: stop when this is aborted (besides Ctrl-C and SIGTERM when handleSignals is set). */
  readonly stop?: AbortSignal;
}

// A reader that goes away (`npm run demo | head`) must not stop the cleanup: stop writing instead.
let stdoutOpen = true;
const stdio: DemoIo = {
  out: (line) => void (stdoutOpen && process.stdout.write(line + "\n")),
  err: (line) => void process.stderr.write(line + "\n"),
};

/** Runs the demo as the command line would; returns the exit status. */
export async function runDemo(argv: readonly string[], io: DemoIo = stdio): Promise<number> {
  const startMs = Date.now();
  let values;
  let scenario: Scenario;
  let maxPromptWaitMs = DEFAULT_MAX_WAIT_MS;
  /** --url: the running broker's URLs (several for the nodes of one cluster). */
  let urls: string[] = [];
  let database: string | undefined;
  try {
    ({ values } = parseFlags(argv, FLAGS, USAGE));
    if (values.help) {
      io.out(USAGE);
      return 0;
    }
    if (values["max-wait-ms"] !== undefined) {
      maxPromptWaitMs = Number(values["max-wait-ms"]);
      if (!Number.isSafeInteger(maxPromptWaitMs) || maxPromptWaitMs < 0) throw new UsageError("--max-wait-ms must be a whole number of milliseconds");
    }
    if (values["log-level"] !== undefined && !LOG_LEVELS.includes(values["log-level"])) throw new UsageError(`--log-level must be one of ${LOG_LEVELS.join(", ")}`);
    if (values.web === true) {
      const given: Record<string, unknown> = values;
      const other = NOT_WITH_WEB.find((f) => given[f] !== undefined);
      if (other !== undefined) throw new UsageError(`--${other} is for playing a scenario; --web takes only --ws-port, --data-dir and --log-level`);
      const wsPort = values["ws-port"] === undefined ? 0 : Number(values["ws-port"]);
      if (!/^\d+$/.test(values["ws-port"] ?? "0") || wsPort > 65535) throw new UsageError("--ws-port must be a port number, 0 to 65535 (0 picks a free port)");
      return await runWebDemo(
        { wsPort, logLevel: values["log-level"] ?? "silent", ...(values["data-dir"] === undefined ? {} : { dataDir: values["data-dir"] }) },
        { out: io.out, err: io.err, stopped: stopSignal(io) },
      );
    }
    if (values["ws-port"] !== undefined) throw new UsageError("--ws-port is for --web");
    if (values.url !== undefined && values["data-dir"] === undefined) {
      throw new UsageError("--url needs --data-dir: the running broker's data dir, where the demo registers its devices and reads broker.pub");
    }
    if (values.url !== undefined) urls = brokerUrlsFlag(values.url);
    if (values.database !== undefined && values.url === undefined) throw new UsageError("--database is for --url: the database of the running broker (the demo's own broker keeps SQLite)");
    database = values.url === undefined ? undefined : databaseUrl(values.database);
    if ((values.ca !== undefined || values.fingerprint !== undefined) && !urls.some((u) => /^(mqtts|wss):/i.test(u))) {
      throw new UsageError("--ca and --fingerprint are for an mqtts:// or wss:// --url (the demo's own broker listens on plain TCP)");
    }
    if (values.url !== undefined && values["log-level"] !== undefined) throw new UsageError("--log-level is for the broker the demo starts; with --url, see that broker's own log");
    scenario = loadScenario(values.scenario ?? DEFAULT_SCENARIO);
  } catch (err) {
    if (err instanceof UsageError || err instanceof ScenarioError) {
      io.err(err.message);
      return 2;
    }
    throw err;
  }

  const json = values.json === true;
  const show = json ? jsonPresenter(io) : columnPresenter(io, scenario);
  let broker: BrokerHandle | null = null;
  let ownDb: Db | null = null;
  let tempDir: string | null = null;
  let cleaned = false;
  const cleanup = async () => {
    if (cleaned) return;
    cleaned = true;
    if (broker !== null) await broker.close().catch((err: Error) => io.err(`closing the broker: ${err.message}`));
    ownDb?.close();
    if (tempDir !== null) rmSync(tempDir, { recursive: true, force: true });
  };
  const onSigint = () => {
    io.err("interrupted: closing the broker and removing the temporary data dir");
    void cleanup().finally(() => process.exit(130));
  };
  if (io.handleSignals) process.once("SIGINT", onSigint);

  let report: ScenarioReport | null = null;
  let failure: string | null = null;
  let where: { url: string; dataDir: string; kept: boolean; database?: string } = { url: values.url ?? "", dataDir: values["data-dir"] ?? "", kept: true };
  try {
    let target: { url: string | readonly string[]; brokerPublicKey: Uint8Array; db: Db; keyring: Keyring; trust?: ReturnType<typeof brokerTrust> };
    if (values.url !== undefined) {
      const dataDir = resolve(values["data-dir"]!);
      const trust = brokerTrust(urls, values, dataDir);
      const opened = openRunningBrokerData(dataDir, database);
      ownDb = opened.db;
      target = { url: urls, trust, ...opened };
      where = { url: values.url, dataDir, kept: true, ...(database === undefined ? {} : { database: redactUrl(database) }) };
      show.start({ url: values.url, dataDir, kept: true, running: true, scenario });
    } else {
      const kept = values["data-dir"] !== undefined;
      const dataDir = kept ? resolve(values["data-dir"]!) : (tempDir = mkdtempSync(join(tmpdir(), "hp-demo-")));
      const logLevel = values["log-level"] ?? "silent";
      const config = brokerConfig({}, {}, { host: "127.0.0.1", port: 0, ...TCP_ONLY, dataDir, logLevel: logLevel as "silent", ...scenario.broker });
      const log = logLevel === "silent" ? pino({ level: "silent" }) : pino({ level: logLevel }, pino.destination(2));
      broker = await startBroker(config, { log, masterKeyEnv: masterKeyFromEnv() });
      target = { url: broker.url, brokerPublicKey: broker.publicKey, db: broker.db, keyring: broker.keyring };
      where = { url: broker.url, dataDir, kept };
      show.start({ url: broker.url, dataDir, kept, running: false, scenario, promptTtlMs: config.promptTtlMs });
    }
    report = await runScenario(scenario, { ...target, maxPromptWaitMs, startMs }, show.event);
  } catch (err) {
    failure = (err as Error).message;
  } finally {
    await cleanup();
    if (io.handleSignals) process.off("SIGINT", onSigint);
  }

  if (report === null) {
    const hint = values.url !== undefined ? ` (is a broker running at ${values.url} with data dir ${values["data-dir"]}${database === undefined ? "" : ` and database ${redactUrl(database)}`}?)` : "";
    io.err(`demo: ${failure ?? "no report"}${hint}`);
    if (json) io.out(JSON.stringify({ ok: false, error: failure, steps: [], balances: null, login: null, terminalSerial: null }));
    return 1;
  }
  show.end(report, where, Date.now() - startMs);
  if (report.firstFailure !== null) {
    const f = report.firstFailure;
    io.err(`demo: unexpected outcome at step ${f.index + 1} "${f.name}": expected ${f.expected}, got ${f.actual}`);
  } else if (!report.ok) {
    const bad = report.steps.find((r) => !r.ok)!;
    io.err(`demo: unexpected outcome at "${bad.name}": expected ${bad.expected}, got ${bad.actual}`);
  }
  return report.ok ? 0 : 1;
}

/** Resolves on Ctrl-C or SIGTERM (when the program handles signals) or when io.stop is aborted. */
function stopSignal(io: DemoIo): Promise<void> {
  return new Promise((resolve) => {
    const signals = ["SIGINT", "SIGTERM"] as const;
    const done = () => {
      // Only the first: a second Ctrl-C while the broker closes ends the process at once.
      if (io.handleSignals) for (const s of signals) process.off(s, done);
      io.stop?.removeEventListener("abort", done);
      resolve();
    };
    if (io.handleSignals) for (const s of signals) process.once(s, done);
    if (io.stop?.aborted) done();
    else io.stop?.addEventListener("abort", done, { once: true });
  });
}

/** The data of a broker that is already running: its database, keyring and public key. */
function openRunningBrokerData(dataDir: string, database: string | undefined): { db: Db; keyring: Keyring; brokerPublicKey: Uint8Array } {
  if (!existsSync(dataDir)) throw new Error(`data dir ${dataDir} does not exist`);
  const brokerPublicKey = readBrokerPublicKey(dataDir);
  if (brokerPublicKey === null || brokerPublicKey.length !== 32) throw new Error(`no broker.pub in ${dataDir}: is it the data dir of the running broker?`);
  const masterKeyEnv = masterKeyFromEnv();
  // loadKeyring would create a fresh master key: data sealed with it would mean nothing to the broker.
  if (masterKeyEnv === undefined && !existsSync(join(dataDir, MASTER_KEY_FILE))) {
    throw new Error(`no ${MASTER_KEY_FILE} in ${dataDir} and HANDOFF_MASTER_KEY is not set: the demo needs the broker's master key`);
  }
  const { keyring } = loadKeyring(dataDir, masterKeyEnv);
  const db = database === undefined ? openDataDb(dataDir) : openPostgres(database, { applicationName: "handoff-pay demo" });
  return { db, keyring, brokerPublicKey };
}

interface StartInfo {
  readonly url: string;
  readonly dataDir: string;
  readonly kept: boolean;
  readonly running: boolean;
  readonly scenario: Scenario;
  readonly promptTtlMs?: number;
}

interface Presenter {
  start(info: StartInfo): void;
  event(e: ScenarioEvent): void;
  /** `database`: the running broker's PostgreSQL, when it keeps its state there (--database). */
  end(report: ScenarioReport, where: { url: string; dataDir: string; kept: boolean; database?: string }, elapsedMs: number): void;
}

function jsonPresenter(io: DemoIo): Presenter {
  return {
    start(info) {
      io.out(JSON.stringify({ event: "broker", t: 0, url: info.url, dataDir: info.dataDir, kept: info.kept, running: info.running, scenario: info.scenario.name, ...(info.promptTtlMs !== undefined ? { promptTtlMs: info.promptTtlMs } : {}) }));
    },
    event(e) {
      io.out(JSON.stringify(e));
    },
    end(r, where, elapsedMs) {
      io.out(
        JSON.stringify({
          ok: r.ok,
          scenario: r.scenario,
          steps: r.steps.map((s) => ({ name: s.name, expected: s.expected, actual: s.actual, ok: s.ok, ...(s.skipped !== undefined ? { skipped: s.skipped } : {}) })),
          balances: r.balances,
          login: r.logins[0] ?? null,
          terminalSerial: r.terminalSerials[0] ?? null,
          logins: r.logins,
          terminalSerials: r.terminalSerials,
          firstFailure: r.firstFailure,
          skipped: r.skipped,
          url: where.url,
          dataDir: where.dataDir,
          dataDirKept: where.kept,
          elapsedMs,
        }),
      );
    },
  };
}

const TIME_W = 7;

/** Two columns, terminal and phone, with the time since the start in the margin. */
function columnPresenter(io: DemoIo, s: Scenario): Presenter {
  const detected = io.columns ?? (process.stdout.isTTY ? process.stdout.columns : undefined) ?? 120;
  const width = Math.max(80, Math.min(180, detected));
  const colW = Math.floor((width - TIME_W - 6) / 2);
  const manyTerminals = s.terminals.length > 1;
  const manyPhones = s.phones.length > 1;
  const background = new Set<number>();
  const stamp = (t: number) => (t / 1000).toFixed(3).padStart(TIME_W);
  const blank = " ".repeat(TIME_W);
  const full = (t: number | null, text: string) => {
    wrap(text, width - TIME_W - 2).forEach((line, i) => io.out(`${i === 0 && t !== null ? stamp(t) : blank}  ${line}`));
  };
  const row = (t: number, column: "terminal" | "phone", text: string) => {
    const lines = wrap(text, colW);
    lines.forEach((line, i) => {
      const left = column === "terminal" ? line : "";
      const right = column === "phone" ? line : "";
      io.out(`${i === 0 ? stamp(t) : blank} │ ${left.padEnd(colW)} │ ${right}`.trimEnd());
    });
  };
  const who = (e: { column: "terminal" | "phone"; device: string }) => ((e.column === "terminal" ? manyTerminals : manyPhones) ? `${e.device}: ` : "");
  return {
    start(info) {
      io.out(`Handoff Pay demo: scenario "${s.name}"${s.description ? `\n${wrap(s.description, width - 2).join("\n")}` : ""}`);
      io.out("");
      const where = info.running
        ? `broker ${info.url} (already running), data dir ${info.dataDir}`
        : `broker ${info.url}, started in this process; prompts expire after ${((info.promptTtlMs ?? 0) / 1000).toFixed(1)} s; data dir ${info.dataDir}${info.kept ? " (kept)" : " (temporary)"}`;
      for (const line of wrap(where, width - 2)) io.out(line);
      io.out("");
      const terminalTitle = manyTerminals ? "TERMINALS" : `TERMINAL: ${s.terminals[0]!.name}`;
      const phoneTitle = manyPhones ? "PHONES" : `PHONE: ${s.phones[0]!.name}`;
      io.out(`${"time s".padStart(TIME_W)} │ ${terminalTitle.padEnd(colW)} │ ${phoneTitle}`);
      io.out(`${"─".repeat(TIME_W + 1)}┼${"─".repeat(colW + 2)}┼${"─".repeat(colW + 1)}`);
    },
    event(e) {
      switch (e.event) {
        case "setup":
          full(e.t, `· ${e.text}`);
          break;
        case "step":
          if (e.background) background.add(e.index);
          io.out("");
          full(e.t, `▶ ${e.index + 1}. ${e.name}${e.expected !== null ? `   [expect: ${e.expected}]` : ""}${e.background ? "   (goes on in the background)" : ""}`);
          break;
        case "message":
        case "note":
          row(e.t, e.column, `${who(e)}${e.text}`);
          break;
        case "step_end": {
          const label = background.has(e.index) ? `${e.index + 1}. ${e.name}: ` : "";
          if (e.skipped !== undefined) full(e.t, `– ${label}skipped: ${e.skipped}`);
          else if (e.ok) full(e.t, `✓ ${label}${e.actual}`);
          else full(e.t, `✗ ${label}expected ${e.expected}, got ${e.actual}`);
          break;
        }
      }
    },
    end(r, where, elapsedMs) {
      io.out("");
      io.out("Ledger at the end");
      for (const line of balanceLines(r.balances, s)) io.out(`  ${line}`);
      io.out("");
      if (!where.kept) io.out(`The temporary data dir was removed.`);
      else io.out(`Data kept in ${where.database ?? where.dataDir}; look: npm run admin -- --data-dir ${where.dataDir}${where.database === undefined ? "" : ` --database ${where.database}`} ledger balance`);
      const steps = r.steps.length;
      const passed = r.steps.filter((x) => x.ok && x.skipped === undefined).length;
      const skipped = r.steps.filter((x) => x.skipped !== undefined).length;
      const time = `${(elapsedMs / 1000).toFixed(1)} s`;
      if (r.ok) io.out(`✓ All ${steps} steps ended as expected${skipped > 0 ? ` (${skipped} skipped, see above)` : ""}, in ${time}.`);
      else io.out(`✗ ${passed} of ${steps} steps ended as expected, in ${time}.`);
    },
  };
}

function balanceLines(b: Balances, s: Scenario): string[] {
  const rows: [string, string, number, string][] = [];
  for (const [user, per] of Object.entries(b.wallets)) for (const [c, v] of Object.entries(per)) rows.push(["wallet", user, v, c]);
  for (const [id, per] of Object.entries(b.merchants)) for (const [c, v] of Object.entries(per)) rows.push(["merchant", s.merchants.find((m) => m.id === id)?.name ?? id, v, c]);
  for (const [c, v] of Object.entries(b.funding)) rows.push(["funding", "(money paid in)", v, c]);
  const sums = Object.entries(b.sums).map(([c, v]) => ["sum", `all ${c} accounts`, v, c] as [string, string, number, string]);
  const all = [...rows, ...sums];
  const w1 = Math.max(...all.map((r) => r[1].length));
  const w2 = Math.max(...all.map((r) => formatAmount(r[2], r[3]).length));
  const line = ([kind, label, v, c]: [string, string, number, string]) => `${kind.padEnd(9)}${label.padEnd(w1 + 2)}${formatAmount(v, c).padStart(w2)}`;
  return [
    ...rows.map(line),
    ...sums.map((r) => `${line(r)}   ${r[2] === 0 ? "✓ zero: every transfer debits one account and credits another" : "✗ NOT ZERO"}`),
  ];
}

/** Wraps each line of `text` to `width` columns, at spaces where it can. */
function wrap(text: string, width: number): string[] {
  const out: string[] = [];
  for (const raw of text.split("\n")) {
    let line = raw;
    while (line.length > width) {
      const cut = line.lastIndexOf(" ", width);
      const at = cut > width / 3 ? cut : width;
      out.push(line.slice(0, at));
      line = "  " + line.slice(at).trimStart();
    }
    out.push(line);
  }
  return out;
}

const isMain = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isMain) {
  process.stdout.on("error", (err: NodeJS.ErrnoException) => {
    if (err.code !== "EPIPE") throw err;
    stdoutOpen = false;
  });
  runDemo(process.argv.slice(2), { ...stdio, handleSignals: true }).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`demo: ${(err as Error).stack ?? String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
