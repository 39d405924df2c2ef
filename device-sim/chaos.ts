/**
 * `npm run test:chaos`: pays through a broker that keeps being killed, then proves nothing was
 * lost or paid twice.
 *
 * The broker runs as a child process (the compiled `dist/broker/main.mjs`) on a temporary data
 * dir, with short prompt and task deadlines and a per-device rate limit high enough not to
 * interfere. Devices, the merchant and wallet credits are written into the database first, as
 * the admin tool does; each terminal is then bound to its phone over MQTT. Then every pair pays,
 * one payment after another, while the broker is SIGKILLed at seeded random moments (some during
 * its start) and restarted on the same data dir and port:
 *
 *   - the terminal re-sends its pay_request, with the same idempotency key, until it is answered;
 *     then follows the payment to its end (the payment_result, or payment_status when quiet);
 *   - the phone approves, declines or ignores each prompt, and executes or ignores each task, as
 *     the payment's plan says (the plan is the amount's last digit, so the phone needs no side
 *     channel), re-sending each answer until the broker answers it; it sends no prompt_received
 *     (its PUBACK of the prompt is the receipt), and a task or result may come as the answer to
 *     its approval or execution;
 *   - some payments are cancelled by the terminal, racing the phone's execution, and some wallets
 *     are small enough to run out of money;
 *   - a fifth of requests are sent twice at once under different message ids (a double tap), so
 *     idempotency is tested on every run, not only when a kill happens to cut a request short.
 *
 * Devices reconnect by themselves with fresh tokens; the broker's outbox sends what they missed.
 * After the last restart the driver lets every payment end, waits for every result to reach
 * both devices, stops the broker cleanly and checks, from the devices' records and the database:
 * every payment final (or live within its deadline); one ledger transfer per completed payment
 * and one completed payment per payment transfer; balances summing to zero per currency, and
 * each wallet and the merchant holding exactly what the completed payments moved; one result
 * per payment per device, the same on both, matching the database, and arriving as the answer
 * to the device's own message that ended the payment, or pushed when the other device or a
 * deadline ended it (the message that ended it gets the result once, never again pushed); no
 * payment lost (every
 * idempotency key answered, every answered payment in the database) and none doubled (one
 * payment id per idempotency key); and no payment completed, confirmed or declined that its
 * phone did not ask for.
 *
 * The audit log is checked after every kill, before the restart, and after the clean stop: every
 * entry, subtree hash and signed head recomputes (verifyAudit), so nothing was half-appended; and
 * at the end each result a device received names, in its auditIndex, the entry of that result.
 *
 * With `nodes` ≥ 2 (`--nodes N`) the same storm hits a cluster: N broker processes sharing a
 * PostgreSQL database and routing through Redis (both started for the run, services.ts), every
 * device given every node's URL (a pair's terminal and phone start on neighbouring nodes), and
 * each kill picks a node at random; the audit log is then checked while the other nodes write,
 * inside a transaction (which holds the write lock every node's transactions take).
 *
 * The seed fixes the kill moments and every device's choices; the interleaving of messages is up
 * to the machine, so a replay re-creates the same storm, not the same microseconds.
 */
import { randomInt } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { loadKeyring, openDataDb, readBrokerPublicKey } from "../broker/data-dir.ts";
import { openPostgres, type Db } from "../src/store/db.ts";
import { UsageError, parseFlags, runCli } from "../src/cli/args.ts";
import { TCP_ONLY_FLAGS } from "../src/config.ts";
import { FINAL_STATUSES, type Payment, type PaymentStatus } from "../src/core/payment.ts";
import { toBase64 } from "../src/crypto/encoding.ts";
import { registerDevice } from "../src/service/devices.ts";
import { openAgreement } from "../src/service/sealing.ts";
import { verifyAudit } from "../src/store/audit.ts";
import { AgreementRepo } from "../src/store/binding.ts";
import { addMerchant, creditWallet, walletBalance } from "../src/service/ledger.ts";
import { LedgerRepo } from "../src/store/ledger.ts";
import { BrokerProcess, freePort } from "./broker-process.ts";
import { clusterArgs, CLUSTER_DATABASE, CLUSTER_FLAGS, prepareNodeDirs } from "./cluster.ts";
import { createDatabase, startPostgres, startRedis, type PostgresService, type RedisService } from "./services.ts";
import { RecordingDevice, type Received } from "./device.ts";
import { newDeviceKey, type DeviceKey } from "./keyfile.ts";
import { between, mulberry32, sleep, within } from "./util.ts";

export const CHAOS_DEFAULTS = { kills: 20, pairs: 24, promptTtlMs: 3000, taskTtlMs: 3000 } as const;

export interface ChaosOptions {
  /** Fixes kill moments and device choices; random when absent (and printed). */
  readonly seed?: number;
  /** SIGKILLs before the final restart (default 20). */
  readonly kills?: number;
  /** Terminal/phone pairs paying at once (default 24). */
  readonly pairs?: number;
  /**
   * Broker nodes (default 1: one broker on its SQLite data dir). Two or more: the nodes share a
   * PostgreSQL database and route through Redis (both started for the run), every device is
   * given every node's URL, and each kill picks a node at random.
   */
  readonly nodes?: number;
  readonly promptTtlMs?: number;
  readonly taskTtlMs?: number;
  /** Keep the data dir afterwards (it is always kept when the run fails). */
  readonly keepDataDir?: boolean;
  /** Where progress lines go (default: stdout). */
  readonly log?: (line: string) => void;
}

export interface ChaosReport {
  readonly seed: number;
  readonly kills: number;
  /** Payments the driver started (idempotency keys). */
  readonly payments: number;
  readonly completed: number;
  /** Started payments without a known final outcome, or answered but missing from the database. */
  readonly lost: number;
  /** Idempotency keys (order references) that led to more than one payment. */
  readonly doubled: number;
  readonly ok: boolean;
  readonly outcomes: Readonly<Record<string, number>>;
  readonly checked: Record<string, number>;
  readonly problems: readonly string[];
  readonly durationMs: number;
  readonly dataDir: string | null;
  /** How many broker nodes ran (1: the single broker on SQLite). */
  readonly nodes: number;
  /** Kills per node (index 0 is node-1). */
  readonly killsPerNode: readonly number[];
}

// ── Timing ──────────────────────────────────────────────────────────────────────────────────

/**
 * How long one try waits for the broker's answer before sending again (with a new message id).
 * Short on purpose: a try that straddles a kill is re-sent by MQTT.js after the reconnect as well
 * as by this driver, so the broker sees both kinds of duplicate.
 */
const ANSWER_MS = 1200;
/** How long a device waits for its connection before a try is skipped. */
const READY_MS = 3000;
/** A quiet payment: the terminal asks payment_status after this long without a result. */
const STATUS_POLL_MS = 2000;
/** Broker uptime before a kill, after it logged "listening" (uniform in this range). */
const UPTIME_MS: readonly [number, number] = [400, 2600];
/** Share of kills that land while the broker starts: within EARLY_KILL_MS of its spawn (it takes ~0.7 s to listen). */
const EARLY_KILL_SHARE = 0.15;
const EARLY_KILL_MS = 1000;
/** Share of requests a device sends twice at once (an impatient user, a double tap). */
const DOUBLE_TAP_SHARE = 0.2;
/** With --kills 0, how long the pairs pay (a baseline: the same checks without a storm). */
const NO_KILL_RUN_MS = 5000;
/** After the last payment ended: how long results may take to reach both devices. */
const DELIVERY_WAIT_MS = 20_000;

/** --nodes at most: each node is a process of its own on this machine. */
const MAX_NODES = 8;
/** Answers that mean "try again later", not "no". */
const RETRY_CODES = new Set(["unavailable", "rate_limited", "stale", "busy"]);

const CURRENCY = "CNY";
const MERCHANT = { id: "chaos-mart", name: "Chaos Mart" } as const;
const LIMITS = { currency: CURRENCY, autoConfirmMaxMinor: 5000, autoConfirmDailyMinor: 1_000_000_000, perPaymentMaxMinor: 100_000 } as const;
const RICH_MINOR = 100_000_000;
/** Every fifth pair's wallet runs dry after a few payments: insufficient_funds is an outcome too. */
const POOR_MINOR = 30_000;

// ── Plans: what each payment's devices do, carried in the amount's last digit ──────────────

type Plan = "approve" | "decline" | "ignore_prompt" | "ignore_task" | "cancel";
const PLAN_DIGIT: Record<Plan, number> = { approve: 1, decline: 2, ignore_prompt: 3, ignore_task: 4, cancel: 5 };
const PLAN_WEIGHTS: readonly [Plan, number][] = [
  ["approve", 50],
  ["decline", 15],
  ["ignore_prompt", 10],
  ["ignore_task", 10],
  ["cancel", 15],
];

function pickPlan(rng: () => number): Plan {
  let r = rng() * 100;
  for (const [plan, w] of PLAN_WEIGHTS) if ((r -= w) < 0) return plan;
  return "approve";
}

function planOf(amountMinor: number): Plan {
  const digit = amountMinor % 10;
  return (Object.keys(PLAN_DIGIT) as Plan[]).find((p) => PLAN_DIGIT[p] === digit) ?? "approve";
}

/** The phone's answer to a prompt and to a task, by plan. */
const promptAnswer = (plan: Plan): "approve" | "decline" | "ignore" => (plan === "decline" ? "decline" : plan === "ignore_prompt" ? "ignore" : "approve");
const executesTask = (plan: Plan): boolean => plan !== "ignore_task";

// ── Small helpers ──────────────────────────────────────────────────────────────────────────

const isFinal = (status: string) => (FINAL_STATUSES as readonly string[]).includes(status);
const errorCode = (m: Received) => (m.body as { code?: string }).code ?? "?";

// ── A device as the driver uses it ─────────────────────────────────────────────────────────

interface ResultRecord {
  readonly msgIds: string[];
  readonly bodies: string[];
  readonly status: string;
  /** For each copy: the type of this device's message it answered, or null if it was pushed. */
  readonly answered: (string | null)[];
}


class SimDevice {
  readonly device: RecordingDevice;
  /** Connected and subscribed to its down topic. */
  ready = false;
  closed = false;
  refusals = 0;
  /** Every payment_result received, pushed or as an answer, by payment id (the Device already drops same-id copies). */
  readonly results = new Map<string, ResultRecord>();
  readonly #waiters = new Map<string, Set<() => void>>();
  #connecting = false;

  constructor(
    readonly label: string,
    url: string | readonly string[],
    key: DeviceKey,
    brokerPublicKey: Uint8Array,
  ) {
    this.device = new RecordingDevice({ url, key, brokerPublicKey, reconnectMs: 200, connectTimeoutMs: 3000, keepaliveS: 10 });
    this.device.on("connect", () => (this.ready = true));
    this.device.on("offline", () => (this.ready = false));
    this.device.on("reconnecting", () => (this.ready = false));
    this.device.on("error", () => {}); // a broker that vanished: the client reconnects by itself
    this.device.on("refused", () => {
      // A refusal stops the client. A registered device with a fresh token should never see one
      // (a CONNACK 3 while the broker opens its database is the only excusable one): count it,
      // and come back.
      this.ready = false;
      this.refusals++;
      void sleep(300).then(() => this.connect());
    });
    this.device.on("message", (m) => {
      if (m.type !== "payment_result") return;
      const body = m.body as { paymentId: string; status: string };
      const rec = this.results.get(body.paymentId) ?? { msgIds: [], bodies: [], status: body.status, answered: [] };
      rec.msgIds.push(m.id);
      rec.bodies.push(JSON.stringify(m.body));
      rec.answered.push(m.re === undefined ? null : (this.device.sentTypes.get(m.re) ?? `an unknown message ${m.re}`));
      this.results.set(body.paymentId, rec);
      for (const w of this.#waiters.get(body.paymentId) ?? []) w();
    });
  }

  /** Connects, retrying until it works or the device is closed; one attempt loop at a time. */
  async connect(): Promise<void> {
    if (this.#connecting) return;
    this.#connecting = true;
    try {
      while (!this.closed) {
        try {
          await this.device.connect();
          return;
        } catch {
          await sleep(300);
        }
      }
    } finally {
      this.#connecting = false;
    }
  }

  async waitReady(maxMs: number): Promise<boolean> {
    const until = Date.now() + maxMs;
    while (!this.ready && !this.closed && Date.now() < until) await sleep(25);
    return this.ready;
  }

  /** Resolves true when the payment's result is here, false after `ms`. */
  waitResult(paymentId: string, ms: number): Promise<boolean> {
    if (this.results.has(paymentId)) return Promise.resolve(true);
    return new Promise((resolveWait) => {
      const set = this.#waiters.get(paymentId) ?? new Set();
      this.#waiters.set(paymentId, set);
      const done = (got: boolean) => {
        clearTimeout(timer);
        set.delete(wake);
        if (set.size === 0) this.#waiters.delete(paymentId);
        resolveWait(got);
      };
      const wake = () => done(true);
      const timer = setTimeout(() => done(false), ms);
      set.add(wake);
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.device.close().catch(() => {});
  }
}

interface Stats {
  tries: number;
  timeouts: number;
  retryAnswers: number;
  /** pay_requests sent more than once with the same idempotency key. */
  payResends: number;
}

/**
 * Sends a message until the broker answers it (with anything but "try later"), each try with a
 * new message id: the broker is idempotent by idempotency key and by payment state, so a second
 * copy that arrives after all is harmless. Null when `stop` says to give up or time runs out.
 */
async function askUntilAnswered(
  sim: SimDevice,
  type: string,
  body: Record<string, unknown>,
  stats: Stats,
  stop: () => boolean,
  maxMs: number,
  onTry: (n: number) => void = () => {},
): Promise<Received | null> {
  const until = Date.now() + maxMs;
  let sent = 0;
  for (let attempt = 0; Date.now() < until; attempt++) {
    if (stop() || sim.closed) return null;
    if (!(await sim.waitReady(READY_MS))) continue;
    if (stop()) return null;
    let reply: Received;
    stats.tries++;
    onTry(++sent);
    try {
      reply = await sim.device.request(type, body, ANSWER_MS);
    } catch {
      stats.timeouts++;
      continue;
    }
    if (reply.type === "error" && RETRY_CODES.has(errorCode(reply))) {
      stats.retryAnswers++;
      await sleep(Math.min(100 * (attempt + 1), 1000));
      continue;
    }
    return reply;
  }
  return null;
}

// ── What the driver remembers ──────────────────────────────────────────────────────────────

interface Track {
  readonly pair: number;
  readonly key: string;
  readonly orderRef: string;
  readonly amountMinor: number;
  readonly plan: Plan;
  paymentId: string | null;
  mode: "auto" | "prompt" | null;
  /** The final status, from a payment_result or a payment_status answer. */
  outcome: string | null;
  /** An answer that was neither an acceptance nor "try later". */
  rejected: string | null;
}

interface Pair {
  readonly index: number;
  readonly userId: string;
  readonly login: string;
  readonly creditMinor: number;
  readonly terminalKey: DeviceKey;
  readonly phoneKey: DeviceKey;
  terminal: SimDevice | null;
  phone: SimDevice | null;
  /** What the phone sent at least once, by payment id. */
  readonly approved: Set<string>;
  readonly declined: Set<string>;
  readonly executed: Set<string>;
}

// ── The run ────────────────────────────────────────────────────────────────────────────────

export async function runChaos(options: ChaosOptions = {}): Promise<ChaosReport> {
  const started = Date.now();
  const seed = (options.seed ?? randomInt(0, 2 ** 31)) >>> 0;
  const killsWanted = options.kills ?? CHAOS_DEFAULTS.kills;
  const pairCount = options.pairs ?? CHAOS_DEFAULTS.pairs;
  const promptTtlMs = options.promptTtlMs ?? CHAOS_DEFAULTS.promptTtlMs;
  const taskTtlMs = options.taskTtlMs ?? CHAOS_DEFAULTS.taskTtlMs;
  const say = options.log ?? ((line: string) => process.stdout.write(`${line}\n`));
  const elapsed = () => `${((Date.now() - started) / 1000).toFixed(1)}s`;
  if (!Number.isInteger(killsWanted) || killsWanted < 0) throw new UsageError("--kills must be a whole number, 0 or more");
  if (!Number.isInteger(pairCount) || pairCount < 1) throw new UsageError("--pairs must be a whole number, 1 or more");
  const nodeCount = options.nodes ?? 1;
  if (!Number.isInteger(nodeCount) || nodeCount < 1 || nodeCount > MAX_NODES) throw new UsageError(`--nodes must be a whole number from 1 to ${MAX_NODES}`);
  const clustered = nodeCount > 1;
  const replay = `npm run test:chaos -- --seed ${seed} --kills ${killsWanted} --pairs ${pairCount}${clustered ? ` --nodes ${nodeCount}` : ""}`;

  const problems: string[] = [];
  const problem = (line: string) => {
    if (problems.length < 200) problems.push(line);
  };
  const stats: Stats = { tries: 0, timeouts: 0, retryAnswers: 0, payResends: 0 };
  const rootRng = mulberry32(seed);
  const killRng = mulberry32(Math.floor(rootRng() * 2 ** 32));
  const pairSeeds = Array.from({ length: pairCount }, () => Math.floor(rootRng() * 2 ** 32));

  say(
    `chaos: seed ${seed}, ${killsWanted} kills, ${pairCount} pairs, ${clustered ? `${nodeCount} nodes on PostgreSQL and Redis` : "one broker on SQLite"}; ` +
      `prompt ttl ${promptTtlMs} ms, task ttl ${taskTtlMs} ms (replay: ${replay})`,
  );

  const dataDir = mkdtempSync(join(tmpdir(), "hp-chaos-"));
  const pairs: Pair[] = [];
  let postgres: PostgresService | null = null;
  let redis: RedisService | null = null;
  const brokers: BrokerProcess[] = [];
  /** Each node's URL, in node order. */
  const urls: string[] = [];
  /** Where the master key and broker identity are (every node's data dir holds copies of node-1's). */
  let keyDir = dataDir;
  /** Opens the database the brokers share: the data dir's SQLite file, or the cluster's PostgreSQL. */
  let openStore: (readonly: boolean) => Db = (readonly) => openDataDb(dataDir, { readonly });

  /** Starts node `i` (or waits for its start in flight) until it listens; a failed start is retried a few times. */
  const startListening = async (i: number, inFlight = false): Promise<Record<string, unknown>> => {
    const broker = brokers[i]!;
    for (let attempt = 1; ; attempt++) {
      const s = inFlight && attempt === 1 && broker.current !== null ? broker.current : broker.spawn();
      try {
        return await s.listening;
      } catch (err) {
        broker.errors.push(`start ${attempt} failed: ${(err as Error).message}`);
        await broker.kill();
        if (attempt >= 5) throw err;
        await sleep(500);
      }
    }
  };

  const tracks: Track[] = [];
  /** Every payment id each terminal was told for an order reference (payment_accepted). */
  const acceptedByOrder = new Map<string, Set<string>>();
  let stopNew = false;
  let abandon = false;
  let kills = 0;
  const killsPerNode = Array.from({ length: nodeCount }, () => 0);
  /** How many times the audit log verified (after each kill and after the clean stop). */
  let auditVerified = 0;
  const sims: SimDevice[] = [];
  let report: ChaosReport | null = null;

  try {
    // The nodes: one broker on the data dir, or N sharing a PostgreSQL database and Redis.
    const common = [
      ...TCP_ONLY_FLAGS,
      "--prompt-ttl-ms", String(promptTtlMs),
      "--task-ttl-ms", String(taskTtlMs),
      "--device-rate", "100000",
      "--device-burst", "100000",
      // Heads signed often, so that kills land between heads and the checks after them cover heads too.
      "--audit-head-every-ms", "250",
      "--log-level", "info",
    ];
    if (clustered) {
      postgres = await startPostgres({ log: say });
      redis = await startRedis({ log: say });
      const pgUrl = await createDatabase(postgres.url, CLUSTER_DATABASE);
      const { dirs } = prepareNodeDirs(dataDir, nodeCount);
      keyDir = dirs[0]!;
      openStore = (readonly) => openPostgres(pgUrl, { readonly });
      for (const [i, dir] of dirs.entries()) {
        const port = await freePort();
        urls.push(`mqtt://127.0.0.1:${port}`);
        brokers.push(new BrokerProcess(["--port", String(port), "--data-dir", dir, ...common, CLUSTER_FLAGS.nodeId, `node-${i + 1}`, ...clusterArgs(pgUrl, redis.url)]));
      }
    } else {
      const port = await freePort();
      urls.push(`mqtt://127.0.0.1:${port}`);
      brokers.push(new BrokerProcess(["--port", String(port), "--data-dir", dataDir, ...common]));
    }

    // Setup, in the database, as the admin tool does it.
    {
      // The key file first: a database without one is refused (the wrong dir, or a lost key).
      const { keyring } = loadKeyring(keyDir, undefined);
      const db = openStore(false);
      try {
        const now = Date.now();
        const added = addMerchant(db, MERCHANT, now);
        if (!added.ok) throw new Error(added.error);
        for (let i = 0; i < pairCount; i++) {
          const userId = `chaos-user-${i}`;
          const terminalKey = newDeviceKey("terminal", `Chaos terminal ${i}`);
          const phoneKey = newDeviceKey("phone", `Chaos phone ${i}`);
          for (const [key, kind] of [
            [terminalKey, "terminal"],
            [phoneKey, "phone"],
          ] as const) {
            const res = registerDevice(db, keyring, { kind, name: key.name!, publicKey: toBase64(key.pair.publicKey), ...(kind === "phone" ? { userId } : {}) }, now);
            if (!res.ok) throw new Error(res.error);
          }
          const creditMinor = i % 5 === 4 ? POOR_MINOR : RICH_MINOR;
          const credit = creditWallet(db, keyring, { userId, amountMinor: creditMinor, currency: CURRENCY, reference: `chaos-credit-${i}` }, now);
          if (!credit.ok) throw new Error(credit.error);
          pairs.push({ index: i, userId, login: `${userId}@chaos-tv`, creditMinor, terminalKey, phoneKey, terminal: null, phone: null, approved: new Set(), declined: new Set(), executed: new Set() });
        }
      } finally {
        db.close();
      }
    }

    await Promise.all(brokers.map((_, i) => startListening(i)));
    const brokerPublicKey = readBrokerPublicKey(keyDir);
    if (brokerPublicKey === null) throw new Error(`${keyDir}/broker.pub is missing after the broker started`);

    // Devices connect, and each terminal binds to its phone, while the brokers are left alone.
    // Each device gets every node's URL, starting from its own: a pair's terminal and phone start
    // on neighbouring nodes, so their messages cross between nodes from the first.
    const rotated = (start: number) => urls.map((_, k) => urls[(start + k) % urls.length]!);
    for (const p of pairs) {
      p.terminal = new SimDevice(`terminal ${p.index}`, rotated(p.index), p.terminalKey, brokerPublicKey);
      p.phone = new SimDevice(`phone ${p.index}`, rotated(p.index + 1), p.phoneKey, brokerPublicKey);
      sims.push(p.terminal, p.phone);
    }
    if (!(await within(Promise.all(sims.map((s) => s.connect())), 30_000))) throw new Error("the devices could not connect within 30 s");
    await Promise.all(
      pairs.map(async (p) => {
        const code = (await p.terminal!.device.call("bind_request", { login: p.login, terminal: { model: "ChaosTV", serial: `CH-${p.index}`, displayName: `Chaos TV ${p.index}` } })).body.code;
        await p.phone!.device.call("bind_confirm", { code, limits: LIMITS });
      }),
    );
    say(`setup: ${pairCount} pairs registered, bound and connected to ${urls.join(", ")} (data dir ${dataDir}) at ${elapsed()}`);

    for (const p of pairs) {
      p.terminal!.device.on("message", (m) => {
        if (m.type !== "payment_accepted") return;
        const b = m.body as { orderRef: string; paymentId: string };
        const set = acceptedByOrder.get(b.orderRef) ?? new Set();
        set.add(b.paymentId);
        acceptedByOrder.set(b.orderRef, set);
      });
      wirePhone(p, mulberry32(pairSeeds[p.index]! ^ 0x5bd1e995), stats, () => abandon);
    }

    // Every pair pays, one payment after another, until the kills are over.
    const payTimeoutMs = promptTtlMs + taskTtlMs + 60_000;
    const loops = pairs.map(async (p) => {
      const rng = mulberry32(pairSeeds[p.index]!);
      for (let n = 1; !stopNew && !abandon; n++) {
        const plan = pickPlan(rng);
        const prompted = rng() < 0.5;
        const base = prompted ? between(rng, 501, 5000) : between(rng, 10, 499);
        const track: Track = {
          pair: p.index,
          key: `chaos-${seed}-${p.index}-${n}`,
          orderRef: `order-${p.index}-${n}`,
          amountMinor: base * 10 + PLAN_DIGIT[plan],
          plan,
          paymentId: null,
          mode: null,
          outcome: null,
          rejected: null,
        };
        tracks.push(track);
        await followPayment(p, track, rng, stats, () => abandon, payTimeoutMs);
        await sleep(between(rng, 0, 150));
      }
    });

    // The storm: kill a node, wait a little, restart it. Some kills land while the node is
    // starting: those do not wait for it to listen. With several nodes, each kill picks one at
    // random (its devices move to the others), and the next kill may pick another while this one
    // is still starting.
    const spawnedAt = brokers.map(() => Date.now());
    for (let k = 1; k <= killsWanted; k++) {
      const early = killRng() < EARLY_KILL_SHARE;
      const uptime = early ? between(killRng, 0, EARLY_KILL_MS) : between(killRng, UPTIME_MS[0], UPTIME_MS[1]);
      const downtime = between(killRng, 0, 400);
      const target = clustered ? Math.floor(killRng() * nodeCount) : 0;
      const broker = brokers[target]!;
      if (early) await sleep(Math.max(0, spawnedAt[target]! + uptime - Date.now()));
      else {
        await broker.listening();
        await sleep(uptime);
      }
      const listened = broker.current?.listened === true;
      await broker.kill();
      kills++;
      killsPerNode[target]!++;
      const audit = checkAudit(openStore, brokerPublicKey, clustered);
      if (audit.problem === null) auditVerified++;
      else problem(`after kill ${kills}: the audit log does not verify: ${audit.problem}`);
      const ended = tracks.filter((t) => t.outcome !== null);
      say(
        `kill ${kills}/${killsWanted}${clustered ? ` (node-${target + 1})` : ""} at ${elapsed()} (${early ? `${uptime} ms after spawn` : `${uptime} ms after listening`}, ${listened ? "serving" : "before it listened"}; down ${downtime} ms): ` +
          `${tracks.length} payments, ${ended.filter((t) => t.outcome === "completed").length} completed, ${ended.length} ended, ${stats.timeouts} tries timed out; ` +
          `audit log ${audit.problem === null ? "verifies" : "BROKEN"} (${audit.entries} entries, ${audit.heads} signed heads)`,
      );
      await sleep(downtime);
      broker.spawn();
      spawnedAt[target] = Date.now();
    }
    if (killsWanted > 0) {
      const lines = await Promise.all(brokers.map((_, i) => startListening(i, true)));
      const sum = (key: string) => lines.reduce((n, l) => n + Number(l[key] ?? 0), 0);
      say(`restarted for good at ${elapsed()}: ${sum("undeliveredOutbox")} undelivered outbox messages, ${sum("armedDeadlines")} armed deadlines`);
    }
    if (killsWanted === 0) {
      say(`no kills asked for: paying for ${NO_KILL_RUN_MS / 1000} s on a broker left alone`);
      await sleep(NO_KILL_RUN_MS);
    }

    // The end: no new payments; every payment runs to its end; every result reaches both devices.
    stopNew = true;
    if (!(await within(Promise.all(loops), payTimeoutMs + 10_000))) {
      abandon = true;
      problem(`payments still unresolved ${Math.round((payTimeoutMs + 10_000) / 1000)} s after the last restart`);
      await within(Promise.all(loops), ANSWER_MS + READY_MS + 1000);
    }
    say(`all ${tracks.length} payments ended at ${elapsed()}; waiting for every result to reach both devices`);
    const answered = tracks.filter((t) => t.paymentId !== null);
    const delivered = () => answered.every((t) => pairs[t.pair]!.terminal!.results.has(t.paymentId!) && pairs[t.pair]!.phone!.results.has(t.paymentId!));
    const deliveryUntil = Date.now() + DELIVERY_WAIT_MS;
    while (!delivered() && Date.now() < deliveryUntil) await sleep(100);
    abandon = true;
    // Let the last receipts reach the broker, then stop everything cleanly.
    await sleep(200);
    await Promise.all(sims.map((s) => s.close()));
    const exitCodes = await Promise.all(brokers.map((b) => b.stop()));
    for (const [i, exitCode] of exitCodes.entries()) if (exitCode !== 0) problem(`${clustered ? `node-${i + 1}'s` : "the broker's"} clean stop exited ${String(exitCode)}, not 0`);
    const audit = checkAudit(openStore, brokerPublicKey, false);
    if (audit.problem === null) auditVerified++;
    else problem(`after the clean stop: the audit log does not verify: ${audit.problem}`);
    say(`audit log after the clean stop: ${audit.problem === null ? "verifies" : "BROKEN"} (${audit.entries} entries, ${audit.heads} signed heads); verified ${auditVerified} times in all`);

    report = verify({ seed, kills, killsPerNode, dataDir, keyDir, openStore, pairs, tracks, acceptedByOrder, problems, problem, started });
    report.checked.auditVerified = auditVerified;
    const r = report;
    say(
      `checked: ${r.checked.paymentsInDb} payments in the database (${r.checked.liveInDb} live), ${r.checked.paymentTransfers} payment transfers, ` +
        `${r.checked.paymentHistories} event histories, ${r.checked.agreements} agreements' usage, ${r.checked.currencies} currency sums, ${r.checked.balances} balances, ` +
        `${r.checked.resultsDelivered} results on devices (${r.checked.resultsAsAnswers} as answers, ${r.checked.resultsPushed} pushed), ${r.checked.receiptsInLog} of them naming their audit entry; ` +
        `outcomes ${JSON.stringify(r.outcomes)}; ${stats.tries} requests, ${stats.timeouts} timed out, ${stats.retryAnswers} answered "try later", ` +
        `${stats.payResends} pay_requests re-sent with their idempotency key; ${brokers.reduce((n, b) => n + b.resent, 0)} messages resent by the outbox on reconnect; ` +
        `${sims.reduce((n, s) => n + s.refusals, 0)} connect refusals`,
    );
    for (const [i, b] of brokers.entries()) {
      if (b.errors.length > 0) say(`${clustered ? `node-${i + 1}` : "broker"} error lines (${b.errors.length}):\n  ${b.errors.slice(0, 10).join("\n  ")}`);
    }
    for (const line of r.problems.slice(0, 40)) say(`PROBLEM: ${line}`);
    if (r.problems.length > 40) say(`... and ${r.problems.length - 40} more problems`);
    return report;
  } catch (err) {
    problem(`the run stopped: ${(err as Error).message}`);
    report = { seed, kills, payments: tracks.length, completed: 0, lost: 0, doubled: 0, ok: false, outcomes: {}, checked: {}, problems, durationMs: Date.now() - started, dataDir, nodes: nodeCount, killsPerNode };
    for (const line of problems) say(`PROBLEM: ${line}`);
    return report;
  } finally {
    abandon = true;
    await Promise.all(sims.map((s) => s.close()));
    await Promise.all(brokers.map((b) => b.kill()));
    await redis?.stop();
    await postgres?.stop();
    const keep = options.keepDataDir === true || report === null || !report.ok;
    if (keep) say(`data dir kept: ${dataDir}${clustered ? " (the nodes' key files and logs; the PostgreSQL database went with its server)" : ""}`);
    else rmSync(dataDir, { recursive: true, force: true });
    if (report !== null && !report.ok) say(`FAILED: replay with ${replay}`);
  }
}

/**
 * Recomputes the audit log (read-only): the first problem, or null when every entry, subtree hash
 * and signed head matches. With other nodes still writing (`live`), it reads inside one
 * transaction, which takes the write lock every node's transactions take: a snapshot between
 * two of their commits, so a head is never read without the entries it covers.
 */
function checkAudit(openStore: (readonly: boolean) => Db, brokerPublicKey: Uint8Array, live: boolean): { problem: string | null; entries: number; heads: number } {
  const db = openStore(!live);
  try {
    return db.transaction(() => {
      const verdict = verifyAudit(db, brokerPublicKey);
      const count = (table: string) => Number((db.prepare(`SELECT count(*) AS n FROM ${table}`).get() as { n: number | string }).n);
      return { problem: verdict.ok ? null : JSON.stringify(verdict.problem), entries: count("audit_entries"), heads: count("audit_heads") };
    })();
  } finally {
    db.close();
  }
}

/** Publishes a message and does not wait for its answer; offline, it is simply not sent. */
function sendOnce(sim: SimDevice, type: string, body: Record<string, unknown>): void {
  try {
    if (sim.ready) sim.device.send(type, body);
  } catch {
    // not connected
  }
}

/** The phone: answers prompts and tasks by the payment's plan, re-sending until answered. */
function wirePhone(p: Pair, rng: () => number, stats: Stats, abandoned: () => boolean): void {
  const phone = p.phone!;
  const done = (paymentId: string) => () => abandoned() || phone.results.has(paymentId);
  const handled = new Set<string>();
  phone.device.on("message", (m) => {
    if (m.type !== "payment_prompt" && m.type !== "payment_task") return;
    const b = m.body as { paymentId: string; amountMinor: number; currency: string; merchantName: string; terminalName: string; payee: string };
    const key = `${m.type}:${b.paymentId}`;
    if (handled.has(key)) return;
    handled.add(key);
    const plan = planOf(b.amountMinor);
    const think = between(rng, 0, 300);
    const doubleTap = rng() < DOUBLE_TAP_SHARE;
    void (async () => {
      if (m.type === "payment_prompt") {
        // No prompt_received: the client's PUBACK of the prompt is the receipt.
        const answer = promptAnswer(plan);
        if (answer === "ignore") return;
        await sleep(think);
        if (answer === "approve") {
          p.approved.add(b.paymentId);
          const body = { paymentId: b.paymentId, amountMinor: b.amountMinor, currency: b.currency, merchantName: b.merchantName, terminalName: b.terminalName };
          if (doubleTap) sendOnce(phone, "payment_approve", body);
          await askUntilAnswered(phone, "payment_approve", body, stats, done(b.paymentId), 60_000);
        } else {
          p.declined.add(b.paymentId);
          if (doubleTap) sendOnce(phone, "payment_decline", { paymentId: b.paymentId });
          await askUntilAnswered(phone, "payment_decline", { paymentId: b.paymentId }, stats, done(b.paymentId), 60_000);
        }
      } else {
        if (!executesTask(plan)) return;
        await sleep(think);
        p.executed.add(b.paymentId);
        const body = { paymentId: b.paymentId, amountMinor: b.amountMinor, currency: b.currency, payee: b.payee };
        if (doubleTap) sendOnce(phone, "payment_execute", body);
        await askUntilAnswered(phone, "payment_execute", body, stats, done(b.paymentId), 60_000);
      }
    })().catch(() => {});
  });
}

/** The terminal's side of one payment: ask until answered, cancel if planned, follow it to its end. */
async function followPayment(p: Pair, t: Track, rng: () => number, stats: Stats, abandoned: () => boolean, maxMs: number): Promise<void> {
  const terminal = p.terminal!;
  const until = Date.now() + maxMs;
  const body = { login: p.login, merchantId: MERCHANT.id, amountMinor: t.amountMinor, currency: CURRENCY, orderRef: t.orderRef, idempotencyKey: t.key };
  // A second copy under another message id: only the idempotency key can make it the same payment.
  if (rng() < DOUBLE_TAP_SHARE) sendOnce(terminal, "pay_request", body);
  const reply = await askUntilAnswered(terminal, "pay_request", body, stats, abandoned, maxMs, (n) => {
    if (n === 2) stats.payResends++;
  });
  if (reply === null) return; // never answered: counted as lost
  if (reply.type !== "payment_accepted") {
    t.rejected = reply.type === "error" ? errorCode(reply) : reply.type;
    return;
  }
  t.paymentId = reply.body.paymentId as string;
  t.mode = reply.body.mode as "auto" | "prompt";
  const paymentId = t.paymentId;
  if (t.plan === "cancel") {
    await sleep(between(rng, 0, 400));
    await askUntilAnswered(terminal, "payment_cancel", { paymentId }, stats, () => abandoned() || terminal.results.has(paymentId), maxMs);
  }
  while (t.outcome === null && !abandoned() && Date.now() < until) {
    if (await terminal.waitResult(paymentId, STATUS_POLL_MS)) {
      t.outcome = terminal.results.get(paymentId)!.status;
      break;
    }
    const state = await askUntilAnswered(terminal, "payment_status", { paymentId }, stats, () => abandoned() || terminal.results.has(paymentId), ANSWER_MS + READY_MS);
    const status = (state?.body.payment as { status?: string } | undefined)?.status;
    if (state?.type === "payment_state" && status !== undefined && isFinal(status)) t.outcome = status;
  }
}

// ── The checks ─────────────────────────────────────────────────────────────────────────────

/**
 * How a device hears a payment's result: as the answer to its own message that ended the
 * payment (this message type), never a second time; or pushed (null) when the other device or a
 * deadline ended it. Undefined where either can be right (an unbinding; chaos does not unbind).
 */
function resultCarrier(role: "terminal" | "phone", status: PaymentStatus, reason: string | null): string | null | undefined {
  if (status === "failed" && reason === "unbound") return undefined;
  if (role === "terminal") return status === "cancelled" ? "payment_cancel" : null;
  if (status === "completed" || (status === "failed" && reason === "insufficient_funds")) return "payment_execute";
  if (status === "declined") return "payment_decline";
  return null;
}

interface VerifyInput {
  readonly seed: number;
  readonly kills: number;
  readonly killsPerNode: readonly number[];
  readonly dataDir: string;
  /** The data dir holding the master key. */
  readonly keyDir: string;
  readonly openStore: (readonly: boolean) => Db;
  readonly pairs: readonly Pair[];
  readonly tracks: readonly Track[];
  readonly acceptedByOrder: ReadonlyMap<string, ReadonlySet<string>>;
  readonly problems: string[];
  readonly problem: (line: string) => void;
  readonly started: number;
}

interface PaymentRow {
  id: string;
  terminal_id: string;
  agreement_id: string;
  seq: number;
  idempotency_key: string;
  order_ref: string;
  status: PaymentStatus;
  state: string;
}

interface TransferRow {
  id: string;
  payment_id: string | null;
  amount_minor: number;
  currency: string;
  debit_account: string;
  credit_account: string;
}

function verify(v: VerifyInput): ChaosReport {
  const { pairs, tracks, problem } = v;
  const { keyring } = loadKeyring(v.keyDir, undefined);
  const db = v.openStore(false);
  const checked: Record<string, number> = {};
  let lost = 0;
  let doubled = 0;
  try {
    const now = Date.now();
    const rows = db.prepare<[], PaymentRow>("SELECT id, terminal_id, agreement_id, seq, idempotency_key, order_ref, status, state FROM payments").all();
    const byId = new Map(rows.map((r) => [r.id, r]));
    checked.paymentsInDb = rows.length;
    checked.liveInDb = 0;

    // Every payment is final, or still live within its deadline.
    for (const r of rows) {
      if (isFinal(r.status)) continue;
      checked.liveInDb++;
      const p = JSON.parse(r.state) as Payment;
      const due = r.status === "awaiting_confirmation" ? p.promptDeadlineMs : p.taskDeadlineMs;
      if (due === null || due <= now) problem(`payment ${r.id} is ${r.status} ${due === null ? "without a deadline" : `${now - due} ms past its deadline`}`);
    }

    // Each payment's history: events numbered 1..seq without a gap, and one final event if final.
    const events = db.prepare<[], { payment_id: string; n: number; max_seq: number; finals: number }>(
      `SELECT payment_id, count(*) AS n, max(seq) AS max_seq, sum(CASE WHEN kind IN (${FINAL_STATUSES.map((f) => `'${f}'`).join(", ")}) THEN 1 ELSE 0 END) AS finals FROM payment_events GROUP BY payment_id`,
    ).all();
    const eventsByPayment = new Map(events.map((e) => [e.payment_id, e]));
    checked.paymentHistories = 0;
    for (const r of rows) {
      const e = eventsByPayment.get(r.id);
      const finals = isFinal(r.status) ? 1 : 0;
      checked.paymentHistories++;
      if (e === undefined || e.n !== r.seq || e.max_seq !== r.seq || e.finals !== finals) {
        problem(`payment ${r.id} (${r.status}, seq ${r.seq}) has ${e?.n ?? 0} events up to seq ${e?.max_seq ?? 0}, ${e?.finals ?? 0} of them final (expected ${finals})`);
      }
    }

    // Each agreement still opens, and its usage counted every payment once.
    const paymentsByAgreement = new Map<string, number>();
    for (const r of rows) paymentsByAgreement.set(r.agreement_id, (paymentsByAgreement.get(r.agreement_id) ?? 0) + 1);
    checked.agreements = 0;
    for (const row of new AgreementRepo(db).list()) {
      checked.agreements++;
      const opened = openAgreement(keyring, row);
      if (!opened.ok) {
        problem(`agreement ${row.id} (${row.status}) does not open: ${opened.code}`);
        continue;
      }
      const expected = paymentsByAgreement.get(row.id) ?? 0;
      if (opened.value.usage.paymentCount !== expected) problem(`agreement ${row.id} counts ${opened.value.usage.paymentCount} payments in its usage; the database has ${expected}`);
    }
    if (checked.agreements !== pairs.length) problem(`${checked.agreements} agreements in the database, expected one per pair (${pairs.length})`);

    // One transfer per completed payment; one completed payment per payment transfer.
    const transfers = db.prepare<[], TransferRow>("SELECT id, payment_id, amount_minor, currency, debit_account, credit_account FROM transfers WHERE kind = 'payment'").all();
    checked.paymentTransfers = transfers.length;
    const transfersByPayment = new Map<string, TransferRow[]>();
    for (const t of transfers) {
      if (t.payment_id === null) {
        problem(`payment transfer ${t.id} names no payment`);
        continue;
      }
      transfersByPayment.set(t.payment_id, [...(transfersByPayment.get(t.payment_id) ?? []), t]);
      const r = byId.get(t.payment_id);
      if (r === undefined || r.status !== "completed") problem(`transfer ${t.id} pays for ${t.payment_id}, which is ${r?.status ?? "not in the database"}`);
    }
    for (const r of rows) {
      if (r.status !== "completed") continue;
      const ts = transfersByPayment.get(r.id) ?? [];
      const p = JSON.parse(r.state) as Payment;
      if (ts.length !== 1) problem(`completed payment ${r.id} has ${ts.length} ledger transfers`);
      else if (ts[0]!.amount_minor !== p.amountMinor || ts[0]!.id !== p.transferId) problem(`completed payment ${r.id}: transfer ${ts[0]!.id} of ${ts[0]!.amount_minor} does not match ${p.transferId} of ${p.amountMinor}`);
    }

    // Per currency the balances sum to zero; each wallet and the merchant hold exactly what moved.
    const ledger = new LedgerRepo(db);
    const sums = ledger.sums();
    checked.currencies = sums.size;
    for (const [currency, sum] of sums) if (sum !== 0) problem(`${currency} balances sum to ${sum}, not 0`);
    checked.balances = 0;
    let merchantExpected = 0;
    for (const pair of pairs) {
      const terminalId = pair.terminalKey.deviceId;
      const paid = rows.filter((r) => r.terminal_id === terminalId && r.status === "completed").reduce((n, r) => n + (JSON.parse(r.state) as Payment).amountMinor, 0);
      merchantExpected += paid;
      const balance = walletBalance(db, keyring, pair.userId, CURRENCY);
      checked.balances++;
      if (balance !== pair.creditMinor - paid) problem(`wallet of ${pair.userId} holds ${balance}, expected ${pair.creditMinor} - ${paid} = ${pair.creditMinor - paid}`);
    }
    const merchantBalance = ledger.accounts().find((a) => a.kind === "merchant" && a.id === `merchant:${MERCHANT.id}:${CURRENCY}`)?.balanceMinor ?? 0;
    checked.balances++;
    if (merchantBalance !== merchantExpected) problem(`merchant ${MERCHANT.id} holds ${merchantBalance}, expected ${merchantExpected}`);

    // Nothing lost, nothing doubled: the driver's view against the database's.
    const ordersInDb = new Map<string, string[]>();
    for (const r of rows) ordersInDb.set(`${r.terminal_id}/${r.order_ref}`, [...(ordersInDb.get(`${r.terminal_id}/${r.order_ref}`) ?? []), r.id]);
    const knownOrders = new Set<string>();
    checked.resultsDelivered = 0;
    checked.receiptsInLog = 0;
    const auditEntry = db.prepare<[number], { entry: string }>("SELECT entry FROM audit_entries WHERE idx = ?");
    checked.resultsAsAnswers = 0;
    checked.resultsPushed = 0;
    for (const t of tracks) {
      const pair = pairs[t.pair]!;
      const orderKey = `${pair.terminalKey.deviceId}/${t.orderRef}`;
      knownOrders.add(orderKey);
      const inDb = ordersInDb.get(orderKey) ?? [];
      const told = v.acceptedByOrder.get(t.orderRef) ?? new Set<string>();
      const ids = new Set([...inDb, ...told]);
      if (ids.size > 1) {
        doubled++;
        problem(`idempotency key ${t.key} (${t.orderRef}) led to ${ids.size} payments: ${[...ids].join(", ")}`);
      }
      if (t.rejected !== null) {
        problem(`pay_request ${t.key} was refused with ${t.rejected}`);
        continue;
      }
      if (t.paymentId === null) {
        lost++;
        problem(`pay_request ${t.key} was never answered${inDb.length > 0 ? ` (the database has ${inDb.join(", ")})` : ""}`);
        continue;
      }
      const row = byId.get(t.paymentId);
      if (row === undefined) {
        lost++;
        problem(`payment ${t.paymentId} (${t.key}) was accepted but is not in the database`);
        continue;
      }
      if (t.outcome === null) {
        lost++;
        problem(`payment ${t.paymentId} (${t.key}, plan ${t.plan}) has no known outcome; the database says ${row.status}`);
        continue;
      }
      if (t.outcome !== row.status) problem(`payment ${t.paymentId}: the terminal learned ${t.outcome}, the database says ${row.status}`);
      const p = JSON.parse(row.state) as Payment;
      // Every result reached both devices, once, the same: as the answer to the device's own
      // message that ended the payment, or pushed when the other device or a deadline ended it.
      const seen: string[] = [];
      for (const [sim, role] of [
        [pair.terminal!, "terminal"],
        [pair.phone!, "phone"],
      ] as const) {
        const rec = sim.results.get(t.paymentId);
        // The receipt: the result names the audit entry that records it.
        for (const text of new Set(rec?.bodies ?? [])) {
          const body = JSON.parse(text) as { auditIndex: number; status: string };
          const entry = auditEntry.get(body.auditIndex);
          const recorded = entry === undefined ? null : (JSON.parse(entry.entry) as { kind: string; subject?: string; status?: string; atMs: number });
          if (recorded === null || recorded.kind !== "payment.event" || recorded.subject !== t.paymentId || recorded.status !== body.status) {
            problem(`${sim.label}'s result for ${t.paymentId} names audit entry ${body.auditIndex}, which does not record it: ${entry?.entry ?? "no such entry"}`);
          } else checked.receiptsInLog = (checked.receiptsInLog ?? 0) + 1;
        }
        if (rec === undefined) {
          problem(`${sim.label} never received the result of ${t.paymentId} (${row.status})`);
          continue;
        }
        checked.resultsDelivered++;
        if (new Set(rec.bodies).size > 1) problem(`${sim.label} received ${new Set(rec.bodies).size} different results for ${t.paymentId}: ${rec.bodies.join(" / ")}`);
        else if (rec.msgIds.length > 1) problem(`${sim.label} received the result of ${t.paymentId} in ${rec.msgIds.length} messages (ids ${rec.msgIds.join(", ")})`);
        if (rec.status !== row.status) problem(`${sim.label} was told ${t.paymentId} ended ${rec.status}; the database says ${row.status}`);
        const want = resultCarrier(role, row.status, p.reason);
        const how = rec.answered[0] ?? null;
        const says = (carrier: string | null) => (carrier === null ? "pushed" : `as the answer to its ${carrier}`);
        if (want !== undefined && how !== want) problem(`${sim.label} received the result of ${t.paymentId} (${row.status}) ${says(how)}, expected ${says(want)}`);
        if (how === null) checked.resultsPushed = (checked.resultsPushed ?? 0) + 1;
        else checked.resultsAsAnswers = (checked.resultsAsAnswers ?? 0) + 1;
        seen.push(rec.bodies[0]!);
      }
      if (seen.length === 2 && seen[0] !== seen[1]) problem(`terminal and phone were told different results for ${t.paymentId}: ${seen[0]} / ${seen[1]}`);
      // Nothing happened that the phone did not ask for.
      if (row.status === "completed" && !pair.executed.has(t.paymentId)) problem(`payment ${t.paymentId} completed, but its phone never sent payment_execute`);
      if (row.status === "completed" && p.mode === "prompt" && !pair.approved.has(t.paymentId)) problem(`prompted payment ${t.paymentId} completed, but its phone never approved it`);
      if (row.status === "declined" && !pair.declined.has(t.paymentId)) problem(`payment ${t.paymentId} was declined, but its phone never declined it`);
      if (row.status === "cancelled" && t.plan !== "cancel") problem(`payment ${t.paymentId} was cancelled, but its terminal never cancelled it`);
    }
    for (const [orderKey, ids] of ordersInDb) if (!knownOrders.has(orderKey)) problem(`the database has payments ${ids.join(", ")} for ${orderKey}, which the driver never asked for`);
  } finally {
    db.close();
  }

  const outcomes: Record<string, number> = {};
  for (const t of tracks) {
    const k = t.outcome ?? (t.rejected !== null ? `rejected:${t.rejected}` : "unknown");
    outcomes[k] = (outcomes[k] ?? 0) + 1;
  }
  return {
    seed: v.seed,
    kills: v.kills,
    payments: tracks.length,
    completed: outcomes.completed ?? 0,
    lost,
    doubled,
    ok: v.problems.length === 0,
    outcomes,
    checked,
    problems: v.problems,
    durationMs: Date.now() - v.started,
    dataDir: v.dataDir,
    nodes: v.killsPerNode.length,
    killsPerNode: v.killsPerNode,
  };
}

// ── The command line ───────────────────────────────────────────────────────────────────────

const USAGE = `Usage: npm run test:chaos -- [options]

Runs the broker as a child process and SIGKILLs it at seeded random moments while terminal/phone
pairs pay through it (auto-confirmed and prompted; approved, declined, cancelled, left to expire),
restarting it on the same data dir each time. Then it checks that every payment ended once, on
both devices and in the ledger: none lost, none doubled, balances summing to zero; that the
audit log verifies after every kill and after the clean stop (nothing half-appended); and that
every result names the audit entry that records it.

With --nodes N (2 or more) it runs N broker nodes instead, sharing a PostgreSQL database and
routing through Redis (both started for the run from Debian's postgresql and redis-server
packages, in a temporary dir, on free ports). Every device is given every node's URL, a pair's
terminal and phone starting on neighbouring nodes; each kill picks a node at random, its devices
move to another node and carry on, and the same checks run on the shared database.

It prints its seed first, a line per kill, the counts it checked, and last one JSON line:
{"seed", "kills", "payments", "completed", "lost", "doubled", "ok"} (and with --nodes,
"nodes" and "killsPerNode").
Exit status: 0 all checks passed; 1 a check failed (the lines before say which, and how to
replay the seed; the data dir is kept); 2 a bad command line.

Options:
  --seed N           replay a run: the same kill moments and device choices (default: random)
  --kills N          SIGKILLs before the final restart (default ${CHAOS_DEFAULTS.kills})
  --pairs N          terminal/phone pairs paying at once (default ${CHAOS_DEFAULTS.pairs})
  --nodes N          broker nodes on PostgreSQL and Redis (default 1: one broker on SQLite;
                     at most ${MAX_NODES})
  --prompt-ttl-ms N  the broker's prompt deadline (default ${CHAOS_DEFAULTS.promptTtlMs})
  --task-ttl-ms N    the broker's task deadline (default ${CHAOS_DEFAULTS.taskTtlMs})
  --keep-data        keep the data dir afterwards (it is always kept when a check fails)
  -h, --help         show this help

Examples:
  npm run test:chaos
  npm run test:chaos -- --seed 20261125 --kills 5 --pairs 20
  npm run test:chaos -- --nodes 2 --kills 10`;

function wholeNumber(values: Record<string, unknown>, name: string, min: number): number | undefined {
  const raw = values[name];
  if (raw === undefined) return undefined;
  const n = Number(raw);
  if (typeof raw !== "string" || !/^\d+$/.test(raw) || !Number.isSafeInteger(n) || n < min) throw new UsageError(`--${name} must be a whole number, at least ${min}\n\n${USAGE}`);
  return n;
}

export async function chaosMain(argv: readonly string[]): Promise<number> {
  const { values, positionals } = parseFlags(
    argv,
    { seed: { type: "string" }, kills: { type: "string" }, pairs: { type: "string" }, nodes: { type: "string" }, "prompt-ttl-ms": { type: "string" }, "task-ttl-ms": { type: "string" }, "keep-data": { type: "boolean" } },
    USAGE,
  );
  if (values.help === true) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (positionals.length > 0) throw new UsageError(`unexpected argument ${positionals[0]}\n\n${USAGE}`);
  const seed = wholeNumber(values, "seed", 0);
  if (seed !== undefined && seed > 0xffffffff) throw new UsageError(`--seed must be at most ${0xffffffff}\n\n${USAGE}`);
  const report = await runChaos({
    ...(seed === undefined ? {} : { seed }),
    kills: wholeNumber(values, "kills", 0) ?? CHAOS_DEFAULTS.kills,
    pairs: wholeNumber(values, "pairs", 1) ?? CHAOS_DEFAULTS.pairs,
    nodes: wholeNumber(values, "nodes", 1) ?? 1,
    promptTtlMs: wholeNumber(values, "prompt-ttl-ms", 100) ?? CHAOS_DEFAULTS.promptTtlMs,
    taskTtlMs: wholeNumber(values, "task-ttl-ms", 100) ?? CHAOS_DEFAULTS.taskTtlMs,
    keepDataDir: values["keep-data"] === true,
  });
  const { seed: s, kills, payments, completed, lost, doubled, ok, nodes, killsPerNode } = report;
  process.stdout.write(`${JSON.stringify({ seed: s, kills, payments, completed, lost, doubled, ok, ...(nodes > 1 ? { nodes, killsPerNode } : {}) })}\n`);
  return ok ? 0 : 1;
}

const isMain = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isMain) runCli(chaosMain);
