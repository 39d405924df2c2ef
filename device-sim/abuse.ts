/**
 * `npm run test:abuse`: no single device can take the broker down, or slow honest devices much.
 *
 * The broker runs as a child process on a temporary data dir with its default per-device rate
 * limit and packet size (what the attacks aim at), a 2 s connect timeout and a 5 s drain
 * timeout (so a silent or unread socket is dropped within a short run). Honest terminal/phone
 * pairs, bound beforehand, pay one payment after another (auto-confirmed, and prompted then
 * approved) for the whole run, while a few attack workers keep misbehaving devices going, each
 * attack picked at random from the seed (every kind once early, then at random), several at
 * once: floods at and above the rate limit, sockets never read, answers never confirmed,
 * SUBSCRIBE storms over a backlog, reconnect loops, half-open sockets, oversize and malformed
 * packets, backlogs at their bound, QoS 2 and MQTT 3.1 (device-sim/abuse/attacks.ts).
 *
 * At the end the attacks stop, the honest payments in flight get a grace period to end, and a
 * fresh device asks for a pong. It reports honest payments completed and their latency, the
 * broker's peak RSS, the database's growth and the connections the broker refused or closed,
 * by reason (from its log); the last line is JSON. The figures are reported, never asserted:
 * `ok` means the broker is up and serving, honest payments completed, and none was lost.
 */
import { randomInt } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { DB_FILE, loadKeyring, openDataDb, readBrokerPublicKey } from "../broker/data-dir.ts";
import { UsageError, parseFlags, runCli } from "../src/cli/args.ts";
import { TCP_ONLY_FLAGS } from "../src/config.ts";
import { toBase64 } from "../src/crypto/encoding.ts";
import { registerDevice } from "../src/service/devices.ts";
import { addMerchant, creditWallet } from "../src/service/ledger.ts";
import { ATTACKS, ATTACK_FNS, KeyPool, type AttackContext, type AttackName } from "./abuse/attacks.ts";
import { CURRENCY, HonestPair, LIMITS, MERCHANT, probe, type HonestPayment } from "./abuse/honest.ts";
import type { Sockets } from "./abuse/raw.ts";
import { BrokerProcess, freePort } from "./broker-process.ts";
import { newDeviceKey, type DeviceKey } from "./keyfile.ts";
import { between, mulberry32, sleep, within } from "./util.ts";

export const ABUSE_DEFAULTS = { seconds: 60, pairs: 8, attackers: 6 } as const;

/** The broker's defaults that the attacks aim at (src/config.ts); passed explicitly so they are known. */
const RATE_PER_SEC = 50;
const BURST = 200;
const MAX_PACKET_BYTES = 65_536;
/** Short enough that a silent socket or an unread one is dropped within a short run. */
const CONNECT_TIMEOUT_MS = 2000;
const DRAIN_TIMEOUT_MS = 5000;
/** Short deadlines so that a payment stuck by the abuse still ends (expired) within the grace period. */
const PROMPT_TTL_MS = 10_000;
const TASK_TTL_MS = 10_000;
/** After the attacks stop: how long honest payments in flight may take to end. */
const GRACE_MS = PROMPT_TTL_MS + TASK_TTL_MS + 5000;
const ATTACKER_KEYS = 200;
const PROGRESS_EVERY_MS = 5000;
const RSS_EVERY_MS = 250;

export interface AbuseOptions {
  readonly seed?: number;
  readonly seconds?: number;
  readonly pairs?: number;
  /** Attacks running at once (default 6). */
  readonly attackers?: number;
  /** Only these kinds of attack (default: all), to find which one hurts. */
  readonly only?: readonly AttackName[];
  readonly keepDataDir?: boolean;
  /** Where progress lines go (default: stdout). */
  readonly log?: (line: string) => void;
}

export interface AttackTally {
  runs: number;
  counts: Record<string, number>;
}

export interface AbuseReport {
  readonly ok: boolean;
  readonly brokerAlive: boolean;
  readonly honestStarted: number;
  readonly honestCompleted: number;
  /** Honest payments that ended otherwise (expired, failed...), by status. */
  readonly honestOtherOutcomes: Readonly<Record<string, number>>;
  /** Started, and no final result by the end of the grace period (or refused outright). */
  readonly honestLost: number;
  readonly honestRejected: number;
  /** Times an honest pay request was answered `busy` (the broker past capacity) and sent again. */
  readonly honestBusy: number;
  readonly honestP50Ms: number | null;
  readonly honestP99Ms: number | null;
  readonly peakRssMB: number | null;
  readonly dbGrowthMB: number;
  readonly seed: number;
  readonly seconds: number;
  readonly pairs: number;
  /** Connections the broker refused or closed, by reason (from its log). */
  readonly refusedOrClosed: Readonly<Record<string, number>>;
  readonly attacks: Readonly<Record<string, AttackTally>>;
  /** When the broker died: how, when, what it said last, what was running. */
  readonly brokerDeath: { readonly atS: number; readonly exit: string; readonly error: string | null; readonly stderrTail: string; readonly attacksRunning: readonly string[] } | null;
  readonly problems: readonly string[];
}

/** A log line's reason key, with numbers folded so that like reasons count together. */
function reasonOf(line: Record<string, unknown>): string | null {
  const msg = String(line.msg ?? "");
  const err = String(line.err ?? "").replace(/\d+/g, "N").slice(0, 80);
  if (msg.startsWith("connection refused")) return `refused: ${String(line.reason ?? msg)}`;
  if (msg.startsWith("connection dropped")) return `dropped: ${err === "" ? msg.replace(/^connection dropped: /, "").slice(0, 80) : err.includes("exceeds") ? "packet too large" : err}`;
  if (msg === "client error; connection closed") return `client error: ${err}`;
  if (msg === "connection error") return `connection error: ${err}`;
  if (msg === "keepalive timeout") return "keepalive timeout";
  if (msg.startsWith("publish refused")) return "publish refused (foreign topic)";
  if (msg.startsWith("subscription refused")) return "subscription refused (foreign filter)";
  if (msg === "disconnected") return "disconnected (any cause)";
  return null;
}

function rssMB(pid: number): number | null {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m === null ? null : Number(m[1]) / 1024;
  } catch {
    return null;
  }
}

function dbBytes(dataDir: string): number {
  let n = 0;
  for (const f of [DB_FILE, `${DB_FILE}-wal`]) {
    try {
      n += statSync(join(dataDir, f)).size;
    } catch {
      // not there (yet)
    }
  }
  return n;
}

function percentile(sorted: readonly number[], q: number): number | null {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!;
}

const round1 = (n: number) => Math.round(n * 10) / 10;

export async function runAbuse(options: AbuseOptions = {}): Promise<AbuseReport> {
  const started = Date.now();
  const seed = (options.seed ?? randomInt(0, 2 ** 31)) >>> 0;
  const seconds = options.seconds ?? ABUSE_DEFAULTS.seconds;
  const pairCount = options.pairs ?? ABUSE_DEFAULTS.pairs;
  const attackers = options.attackers ?? ABUSE_DEFAULTS.attackers;
  const say = options.log ?? ((line: string) => process.stdout.write(`${line}\n`));
  const at = () => `${((Date.now() - started) / 1000).toFixed(1)}s`;
  if (!(seconds > 0) || !(pairCount >= 1) || !(attackers >= 1)) throw new UsageError("seconds, pairs and attackers must be positive");

  const onlyFlag = options.only !== undefined && options.only.length > 0 ? ` --only ${options.only.join(",")}` : "";
  say(`abuse: seed ${seed}, ${seconds} s, ${pairCount} honest pairs, ${attackers} attacks at once (replay: npm run test:abuse -- --seed ${seed} --seconds ${seconds} --pairs ${pairCount} --attackers ${attackers}${onlyFlag})`);
  const rootRng = mulberry32(seed);
  const problems: string[] = [];
  const refusedOrClosed: Record<string, number> = {};
  const tallies: Record<string, AttackTally> = Object.fromEntries(ATTACKS.map((a) => [a, { runs: 0, counts: {} }]));
  const dataDir = mkdtempSync(join(tmpdir(), "hp-abuse-"));
  const port = await freePort();
  const url = `mqtt://127.0.0.1:${port}`;
  const broker = new BrokerProcess(
    [
      "--host", "127.0.0.1",
      "--port", String(port),
      ...TCP_ONLY_FLAGS,
      "--data-dir", dataDir,
      "--log-level", "info",
      "--device-rate", String(RATE_PER_SEC),
      "--device-burst", String(BURST),
      "--max-packet-bytes", String(MAX_PACKET_BYTES),
      "--connect-timeout-ms", String(CONNECT_TIMEOUT_MS),
      "--drain-timeout-ms", String(DRAIN_TIMEOUT_MS),
      "--prompt-ttl-ms", String(PROMPT_TTL_MS),
      "--task-ttl-ms", String(TASK_TTL_MS),
    ],
    (line) => {
      const reason = reasonOf(line);
      if (reason !== null) refusedOrClosed[reason] = (refusedOrClosed[reason] ?? 0) + 1;
    },
  );

  const pairs: HonestPair[] = [];
  const payments: HonestPayment[] = [];
  const sockets: Sockets = new Set();
  const running = new Map<number, AttackName>();
  let stopAttacks = false;
  let stopNew = false;
  let stoppingBroker = false;
  let giveUpAt = Number.POSITIVE_INFINITY;
  let peakRss: number | null = null;
  let rssTimer: NodeJS.Timeout | undefined;
  let progressTimer: NodeJS.Timeout | undefined;
  let death: AbuseReport["brokerDeath"] = null;
  let dbStart = 0;

  let alive = false;
  let report: AbuseReport | null = null;
  /** What the report says however the run ended, given the database's size at the end. */
  const common = (dbEndBytes: number) => ({
    honestStarted: payments.length,
    honestBusy: payments.reduce((n, p) => n + p.busy, 0),
    peakRssMB: peakRss === null ? null : round1(peakRss),
    dbGrowthMB: round1((dbEndBytes - dbStart) / (1024 * 1024)),
    seed,
    seconds,
    pairs: pairCount,
    refusedOrClosed,
    attacks: tallies,
    brokerDeath: death,
    problems,
  });

  try {
    // Setup, in the database, as the admin tool does it: the merchant, the honest pairs with
    // rich wallets, the attacker devices and a probe device for the end.
    const specs: { index: number; login: string; terminalKey: DeviceKey; phoneKey: DeviceKey }[] = [];
    const attackerKeys: DeviceKey[] = [];
    const probeKey = newDeviceKey("terminal", "Abuse probe");
    {
      const { keyring } = loadKeyring(dataDir, undefined);
      const db = openDataDb(dataDir);
      try {
        const now = Date.now();
        const register = (key: DeviceKey, kind: "terminal" | "phone", userId?: string) => {
          const res = registerDevice(db, keyring, { kind, name: key.name!, publicKey: toBase64(key.pair.publicKey), ...(userId === undefined ? {} : { userId }) }, now);
          if (!res.ok) throw new Error(res.error);
        };
        const added = addMerchant(db, MERCHANT, now);
        if (!added.ok) throw new Error(added.error);
        for (let i = 0; i < pairCount; i++) {
          const userId = `abuse-user-${i}`;
          const spec = { index: i, login: `${userId}@abuse-tv`, terminalKey: newDeviceKey("terminal", `Abuse terminal ${i}`), phoneKey: newDeviceKey("phone", `Abuse phone ${i}`) };
          register(spec.terminalKey, "terminal");
          register(spec.phoneKey, "phone", userId);
          const credit = creditWallet(db, keyring, { userId, amountMinor: 1_000_000_000, currency: CURRENCY, reference: `abuse-credit-${i}` }, now);
          if (!credit.ok) throw new Error(credit.error);
          specs.push(spec);
        }
        for (let i = 0; i < ATTACKER_KEYS; i++) {
          const key = newDeviceKey("terminal", `Abuser ${i}`);
          register(key, "terminal");
          attackerKeys.push(key);
        }
        register(probeKey, "terminal");
      } finally {
        db.close();
      }
    }

    const spawned = broker.spawn();
    if (!(await within(spawned.listening, 30_000)) || !spawned.listened) throw new Error(`the broker did not start within 30 s${broker.stderrTail ? `: ${broker.stderrTail.trim()}` : ""}`);
    const pid = spawned.child.pid!;
    rssTimer = setInterval(() => {
      const mb = rssMB(pid);
      if (mb !== null && (peakRss === null || mb > peakRss)) peakRss = mb;
    }, RSS_EVERY_MS);
    const brokerPublicKey = readBrokerPublicKey(dataDir);
    if (brokerPublicKey === null) throw new Error(`${dataDir}/broker.pub is missing after the broker started`);

    for (const spec of specs) pairs.push(new HonestPair(spec, url, brokerPublicKey));
    if (!(await within(Promise.all(pairs.map((p) => p.connect(30_000))), 30_000))) throw new Error("the honest devices could not connect within 30 s");
    if (!(await within(Promise.all(pairs.map((p) => p.bind(LIMITS))), 30_000))) throw new Error("the honest pairs could not bind within 30 s");
    dbStart = dbBytes(dataDir);
    say(`setup: ${pairCount} pairs bound, ${ATTACKER_KEYS} attacker devices registered, broker pid ${pid} on ${url} (data dir ${dataDir}) at ${at()}`);

    // The run: honest pairs pay; attack workers keep misbehaving devices going.
    const runStart = Date.now();
    const runEnd = runStart + seconds * 1000;
    const brokerDied = spawned.exited.then(() => {
      if (stoppingBroker) return; // our own stop at the end
      const e = spawned.exit;
      death = {
        atS: round1((Date.now() - runStart) / 1000),
        exit: e?.signal ? `killed by ${e.signal}` : `exit code ${String(e?.code)}`,
        error: /^\w*Error\b.*$/m.exec(broker.stderrTail)?.[0] ?? null,
        stderrTail: broker.stderrTail.trim().split("\n").slice(-8).join("\n"),
        attacksRunning: [...new Set(running.values())],
      };
      say(`BROKER DIED at ${death.atS}s into the run${stopAttacks ? ", after the attacks stopped" : ""} (${death.exit}${death.error === null ? "" : `: ${death.error}`}) while these attacks ran: ${death.attacksRunning.join(", ") || "none"}`);
      if (death.stderrTail) say(`its last words on stderr:\n  ${death.stderrTail.split("\n").join("\n  ")}`);
    });
    const honestLoops = pairs.map((p, i) => p.payLoop(mulberry32(seed ^ (0x9e3779b9 * (i + 1))), payments, () => stopNew || death !== null, () => giveUpAt));

    const kinds: readonly AttackName[] = options.only !== undefined && options.only.length > 0 ? options.only : ATTACKS;
    const order = [...kinds];
    const pickRng = mulberry32(Math.floor(rootRng() * 2 ** 32));
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(pickRng() * (i + 1));
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    const keys = new KeyPool(attackerKeys);
    let runId = 0;
    const workers = Array.from({ length: attackers }, async (_, w) => {
      const rng = mulberry32(Math.floor(rootRng() * 2 ** 32) ^ w);
      while (!stopAttacks && Date.now() < runEnd) {
        const name = order.shift() ?? kinds[Math.floor(pickRng() * kinds.length)]!;
        const tally = tallies[name]!;
        tally.runs++;
        const id = ++runId;
        running.set(id, name);
        const ctx: AttackContext = {
          port,
          ratePerSec: RATE_PER_SEC,
          burst: BURST,
          maxPacketBytes: MAX_PACKET_BYTES,
          keys,
          sockets,
          stopped: () => stopAttacks,
          count: (what, n = 1) => void (tally.counts[what] = (tally.counts[what] ?? 0) + n),
        };
        const untilMs = Math.min(runEnd, Date.now() + between(rng, 2000, 8000));
        try {
          await ATTACK_FNS[name](ctx, rng, untilMs);
        } catch (err) {
          ctx.count(`threw: ${(err as Error).message.slice(0, 60)}`);
        } finally {
          running.delete(id);
        }
      }
    });

    progressTimer = setInterval(() => {
      const done = payments.filter((p) => p.status === "completed").length;
      const rss = rssMB(pid);
      say(`[${String(Math.round((Date.now() - runStart) / 1000)).padStart(3)}s] honest completed ${done} of ${payments.length}; attacks running: ${[...running.values()].join(", ") || "none"}; broker RSS ${rss === null ? "gone" : `${rss.toFixed(0)} MB`}; open attack sockets ${sockets.size}`);
    }, PROGRESS_EVERY_MS);

    await Promise.race([sleep(Math.max(0, runEnd - Date.now())), brokerDied]);
    stopAttacks = true;
    stopNew = true;
    clearInterval(progressTimer);
    if (!(await within(Promise.all(workers), 10_000))) problems.push("attack workers were still running 10 s after the stop");
    for (const s of sockets) s.destroy();
    sockets.clear();
    say(`attacks stopped at ${at()}; honest payments in flight get up to ${GRACE_MS / 1000} s to end`);

    giveUpAt = death === null ? Date.now() + GRACE_MS : Date.now();
    if (!(await within(Promise.all(honestLoops), GRACE_MS + 15_000))) problems.push("honest payment loops were still running after the grace period");
    const dbEnd = dbBytes(dataDir);

    // Alive: the process runs, and a fresh device gets a pong.
    if (spawned.exit === null) {
      const p = await probe(url, probeKey, brokerPublicKey);
      alive = p.ok;
      say(`probe: ${p.detail}`);
      if (!p.ok) problems.push(`the broker process runs but does not serve: ${p.detail}`);
    }
    const died = death as AbuseReport["brokerDeath"];
    if (died !== null) problems.push(`the broker died ${died.atS} s into the run (${died.exit}${died.error === null ? "" : `: ${died.error}`})`);

    // Honest figures.
    const completed = payments.filter((p) => p.status === "completed");
    const latencies = completed.map((p) => p.endMs! - p.startMs).sort((a, b) => a - b);
    const other: Record<string, number> = {};
    for (const p of payments) if (p.status !== null && p.status !== "completed") other[p.status] = (other[p.status] ?? 0) + 1;
    const lost = payments.filter((p) => p.status === null && p.rejected === null).length;
    const rejected = payments.filter((p) => p.rejected !== null);
    if (lost > 0) problems.push(`${lost} honest payments got no final result`);
    if (rejected.length > 0) problems.push(`${rejected.length} honest pay requests were refused: ${[...new Set(rejected.map((p) => p.rejected))].join(", ")}`);
    if (completed.length === 0) problems.push("no honest payment completed");
    // A connect token is single-use: the broker accepting one it had accepted before is a breach.
    const replayed = tallies.reconnect_loop?.counts["USED TOKEN ACCEPTED AGAIN"] ?? 0;
    if (replayed > 0) problems.push(`${replayed} used connect tokens were accepted again`);

    report = {
      ...common(dbEnd),
      ok: alive && completed.length > 0 && lost === 0 && rejected.length === 0 && problems.length === 0,
      brokerAlive: alive,
      honestCompleted: completed.length,
      honestOtherOutcomes: other,
      honestLost: lost,
      honestRejected: rejected.length,
      honestP50Ms: percentile(latencies, 0.5),
      honestP99Ms: percentile(latencies, 0.99),
    };
    printSummary(report, say);
    return report;
  } catch (err) {
    problems.push(`the run stopped: ${(err as Error).message}`);
    report = {
      ...common(dbBytes(dataDir)),
      ok: false,
      brokerAlive: false,
      honestCompleted: payments.filter((p) => p.status === "completed").length,
      honestOtherOutcomes: {},
      honestLost: 0,
      honestRejected: 0,
      honestP50Ms: null,
      honestP99Ms: null,
    };
    for (const line of problems) say(`PROBLEM: ${line}`);
    return report;
  } finally {
    stopAttacks = true;
    stopNew = true;
    giveUpAt = 0;
    clearInterval(progressTimer);
    clearInterval(rssTimer);
    for (const s of sockets) s.destroy();
    await within(Promise.all(pairs.map((p) => p.close())), 10_000);
    stoppingBroker = true;
    const code = await broker.stop();
    if (report !== null && report.brokerAlive && code !== 0) say(`note: the broker's clean stop exited ${String(code)}`);
    const keep = options.keepDataDir === true || report === null || !report.ok;
    if (keep) say(`data dir kept: ${dataDir}`);
    else rmSync(dataDir, { recursive: true, force: true });
  }
}

function printSummary(r: AbuseReport, say: (line: string) => void): void {
  const row = (k: string, v: string) => say(`  ${k.padEnd(34)} ${v}`);
  say("summary:");
  row("broker alive at the end", r.brokerAlive ? "yes (a fresh device got a pong)" : "NO");
  if (r.brokerDeath !== null) row("broker died", `${r.brokerDeath.atS} s into the run, ${r.brokerDeath.exit}${r.brokerDeath.error === null ? "" : ` (${r.brokerDeath.error})`}, during ${r.brokerDeath.attacksRunning.join(", ")}`);
  row("honest payments", `${r.honestStarted} started, ${r.honestCompleted} completed, ${r.honestLost} lost, ${r.honestRejected} refused, other ${JSON.stringify(r.honestOtherOutcomes)}`);
  row("honest requests answered busy", `${r.honestBusy} (each sent again after its retryAfterMs, as docs/protocol.md §Load asks)`);
  row("honest latency (request → result)", `p50 ${r.honestP50Ms ?? "-"} ms, p99 ${r.honestP99Ms ?? "-"} ms`);
  row("broker peak RSS", r.peakRssMB === null ? "not measured (no /proc)" : `${r.peakRssMB} MB`);
  row("database growth (db + wal)", `${r.dbGrowthMB} MB`);
  say("  connections refused or closed, by reason (broker log):");
  for (const [k, n] of Object.entries(r.refusedOrClosed).sort((a, b) => b[1] - a[1])) row(`    ${k}`, String(n));
  say("  attacks (runs; what they did):");
  for (const [k, t] of Object.entries(r.attacks)) row(`    ${k}`, `${t.runs} runs; ${Object.entries(t.counts).map(([c, n]) => `${c} ${n}`).join(", ") || "-"}`);
  for (const p of r.problems) say(`PROBLEM: ${p}`);
}

// ── The command line ───────────────────────────────────────────────────────────────────────

const USAGE = `Usage: npm run test:abuse -- [options]

Runs the broker as a child process and, for a bounded time, has honest terminal/phone pairs pay
through it while misbehaving devices attack it, several at once, picked at random from the seed:
floods at and above the rate limit, sockets never read, answers never confirmed, SUBSCRIBE
storms over a backlog, reconnect loops, half-open sockets, oversize and malformed packets,
backlogs at their bound, QoS 2 publishes and MQTT 3.1 CONNECTs. The broker must stay up and
keep serving the honest devices.

It prints its seed first, a progress line every 5 s, a summary (honest payments completed, how
often an honest request was answered busy (the broker past capacity: the device waits its
retryAfterMs and asks again, as a device should), their p50/p99 latency, broker peak RSS,
database growth, connections refused or closed by reason, what each attack did), and last one
JSON line: {"ok", "brokerAlive", "honestCompleted", "honestP99Ms", "peakRssMB", "dbGrowthMB",
"seed", "seconds", "honestLost", "honestBusy", "refusedOrClosed", "attacks", ...}. The figures
are reported, never judged: ok means the broker is alive and answers a fresh device, honest
payments completed, and none was lost (each got a final result within ${GRACE_MS / 1000} s after
the attacks stopped).
Exit status: 0 ok; 1 not ok (the lines before say why; the data dir is kept); 2 a bad command line.

Options:
  --seconds N    how long the attacks run (default ${ABUSE_DEFAULTS.seconds}); the whole run takes ~15-45 s more
  --seed N       replay a run's choices of attacks and payments (default: random)
  --pairs N      honest terminal/phone pairs paying (default ${ABUSE_DEFAULTS.pairs})
  --attackers N  attacks running at once (default ${ABUSE_DEFAULTS.attackers})
  --only A,B     only these attacks (default all): ${ATTACKS.join(", ")}
  --keep-data    keep the data dir afterwards (it is always kept when not ok)
  -h, --help     show this help`;

function wholeNumber(values: Record<string, unknown>, name: string, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined {
  const raw = values[name];
  if (raw === undefined) return undefined;
  const n = Number(raw);
  if (typeof raw !== "string" || !/^\d+$/.test(raw) || !Number.isSafeInteger(n) || n < min || n > max) throw new UsageError(`--${name} must be a whole number from ${min} to ${max}\n\n${USAGE}`);
  return n;
}

export async function abuseMain(argv: readonly string[]): Promise<number> {
  const { values, positionals } = parseFlags(argv, { seed: { type: "string" }, seconds: { type: "string" }, pairs: { type: "string" }, attackers: { type: "string" }, only: { type: "string" }, "keep-data": { type: "boolean" } }, USAGE);
  if (values.help === true) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (positionals.length > 0) throw new UsageError(`unexpected argument ${positionals[0]}\n\n${USAGE}`);
  const seed = wholeNumber(values, "seed", 0, 0xffffffff);
  const only = typeof values.only === "string" ? values.only.split(",").map((a) => a.trim()) : [];
  for (const a of only) if (!(ATTACKS as readonly string[]).includes(a)) throw new UsageError(`--only: unknown attack ${a}; the attacks are ${ATTACKS.join(", ")}\n\n${USAGE}`);
  const r = await runAbuse({
    ...(seed === undefined ? {} : { seed }),
    seconds: wholeNumber(values, "seconds", 1, 3600) ?? ABUSE_DEFAULTS.seconds,
    pairs: wholeNumber(values, "pairs", 1, 500) ?? ABUSE_DEFAULTS.pairs,
    attackers: wholeNumber(values, "attackers", 1, 100) ?? ABUSE_DEFAULTS.attackers,
    keepDataDir: values["keep-data"] === true,
    only: only as AttackName[],
  });
  const attacks = Object.fromEntries(Object.entries(r.attacks).map(([k, t]) => [k, t.runs]));
  const json = {
    ok: r.ok,
    brokerAlive: r.brokerAlive,
    honestCompleted: r.honestCompleted,
    honestP99Ms: r.honestP99Ms,
    peakRssMB: r.peakRssMB,
    dbGrowthMB: r.dbGrowthMB,
    seed: r.seed,
    seconds: r.seconds,
    pairs: r.pairs,
    honestStarted: r.honestStarted,
    honestLost: r.honestLost,
    honestBusy: r.honestBusy,
    honestP50Ms: r.honestP50Ms,
    brokerDied: r.brokerDeath === null ? null : { atS: r.brokerDeath.atS, exit: r.brokerDeath.exit, error: r.brokerDeath.error, during: r.brokerDeath.attacksRunning },
    refusedOrClosed: r.refusedOrClosed,
    attacks,
  };
  process.stdout.write(`${JSON.stringify(json)}\n`);
  return r.ok ? 0 : 1;
}

const isMain = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isMain) runCli(abuseMain);
