/**
 * The bench's load generator: a process of its own, so that its CPU time is not the broker's.
 *
 *   node dist/bench/load.mjs <config.json>   (compiled by scripts/build.mjs)
 *
 * It reads commands from stdin and answers on stdout, one JSON object a line (bench/common.ts
 * has both vocabularies); anything else it has to say goes to stderr. The orchestrator
 * (bench/run.ts) samples the broker's CPU time between a command and its answer.
 *
 *   setup      connect every pair's terminal and phone (real Device clients: signed tokens,
 *              signed messages, every broker message verified) and bind each pair over MQTT
 *   phase      run payments, closed loop (each pair one flow after another) or open loop (a
 *              fixed rate over all pairs, latency counted from each flow's scheduled start)
 *   connect    connect idle devices, `concurrency` at a time, and keep them connected
 *   roundtrip  raw QoS 1 round trips through a bare MQTT broker (the bound measurement)
 *   exit       close everything and stop
 */
import { readFileSync } from "node:fs";
import net from "node:net";
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import mqtt, { type MqttClient } from "mqtt";
import { Device, type DeviceOptions } from "../device-sim/device.ts";
import { PhoneAgent, pay } from "../device-sim/agents.ts";
import type { Payload } from "../src/protocol/envelope.ts";
import {
  BENCH_LIMITS,
  BENCH_MERCHANT,
  deviceKey,
  percentiles,
  round,
  type BenchKey,
  type BenchPair,
  type Command,
  type KeysFile,
  type LoadConfig,
  type LoadEvent,
  type ModeStats,
  type NodeStats,
  type PhaseCommand,
  type PhaseResult,
} from "./common.ts";

const AUTO_AMOUNT_MINOR = 1_250;
const PROMPT_AMOUNT_MINOR = 12_800;
const FLOW_TIMEOUT_MS = 30_000;
const CONNECT_TIMEOUT_MS = 60_000;
const PROGRESS_EVERY_MS = 1_000;

/**
 * TCP_NODELAY on every client socket. MQTT.js does not set it: with Nagle on, a client's PUBACK
 * followed by its next PUBLISH waits for the broker's delayed ACK, ~40 ms per exchange on
 * loopback, and the bench would measure that, not the broker (docs/performance.md §Client
 * sockets). Device now sets it itself on connect; the raw MQTT.js clients of the round-trip
 * measurement do not, and a bench of an older Device must not depend on it. MQTT.js builds its
 * TCP stream through net.createConnection (mqtt/build/lib/connect/tcp.js), so wrapping that one
 * function covers every client of this process.
 */
const createConnection = net.createConnection;
net.createConnection = ((...args: Parameters<typeof net.createConnection>) => createConnection(...args).setNoDelay(true)) as typeof net.createConnection;

const config = JSON.parse(readFileSync(process.argv[2] ?? "", "utf8")) as LoadConfig;
const keys = JSON.parse(readFileSync(config.keysFile, "utf8")) as KeysFile;
const brokerPublicKey = new Uint8Array(Buffer.from(config.brokerPublicKey, "base64"));

function emit(e: LoadEvent): void {
  process.stdout.write(JSON.stringify(e) + "\n");
}

// ── Counting what crosses the wire ──────────────────────────────────────────────────────────

/** Per phase: messages the devices signed and sent, and distinct broker messages they received. */
let upCounts: Record<string, number> = {};
let downCounts: Record<string, number> = {};
let rejectedCount = 0;
/** Per phase: ms from each broker message's signed ts to its handling here (PhaseResult.downLagMs). */
let downLags: number[] = [];
/** Per phase: when each device message went out (Date.now(), by id), until the broker first answers it. */
let sentAt = new Map<string, number>();
/**
 * Per phase: ms from each device message's sending to the signed `ts` of the broker's first
 * answer to it (PhaseResult.answeredMs), `busy` refusals apart (busyAnsweredMs).
 */
let answered: number[] = [];
let busyAnswered: number[] = [];
const bump = (m: Record<string, number>, k: string) => void (m[k] = (m[k] ?? 0) + 1);

/** A Device that counts what it sends (`send` is also how receipts and requests go out). */
class CountingDevice extends Device {
  constructor(options: DeviceOptions) {
    super(options);
    this.on("message", (m) => {
      bump(downCounts, m.type);
      downLags.push(Date.now() - m.ts);
      const sent = m.re === undefined ? undefined : sentAt.get(m.re);
      if (sent !== undefined) {
        sentAt.delete(m.re!);
        (m.type === "error" && m.body["code"] === "busy" ? busyAnswered : answered).push(m.ts - sent);
      }
    });
    this.on("rejected", () => void rejectedCount++);
    this.on("error", () => {}); // connection errors surface as failed requests
  }

  override send(type: string, body: Record<string, unknown>, overrides: Partial<Payload> = {}): string {
    bump(upCounts, type);
    const sent = Date.now();
    const id = super.send(type, body, overrides);
    sentAt.set(id, sent);
    return id;
  }
}

/** Which node (index into config.urls) a pair's terminal or phone connects to: phones one node on. */
const nodeOf = (pairIndex: number, kind: "terminal" | "phone"): number => (pairIndex + (kind === "phone" ? 1 : 0)) % config.urls.length;

function newDevice(k: BenchKey, node: number, keepaliveS = 60): CountingDevice {
  return new CountingDevice({
    url: config.urls[node]!,
    key: deviceKey(k),
    brokerPublicKey,
    reconnect: false,
    connectTimeoutMs: CONNECT_TIMEOUT_MS,
    keepaliveS,
  });
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms} ms`)), ms);
    }),
  ]);
}

/** Runs `fn` over `items`, at most `concurrency` at a time. */
async function pool<T>(items: readonly T[], concurrency: number, fn: (item: T, i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, items.length)) }, worker));
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Error texts without ids and numbers, so equal causes count together. */
function errorKey(text: string): string {
  return text
    .replace(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g, "<id>")
    .replace(/\b(pay|ag|tr)_[a-z2-7]{20}\b/g, "<$1>")
    .replace(/\d+/g, "N")
    .slice(0, 160);
}

// ── Pairs and payments ──────────────────────────────────────────────────────────────────────

interface LivePair {
  readonly index: number;
  readonly keys: BenchPair;
  readonly terminal: CountingDevice;
  readonly phone: CountingDevice;
  /** Flows this pair has run: the mixed phases alternate auto and prompt per pair. */
  n: number;
}

let pairs: LivePair[] = [];
let orderSeq = 0;

async function setup(): Promise<void> {
  const t0 = performance.now();
  pairs = keys.pairs.map((p, index) => ({ index, keys: p, terminal: newDevice(p.terminal, nodeOf(index, "terminal")), phone: newDevice(p.phone, nodeOf(index, "phone")), n: 0 }));
  const devices = pairs.flatMap((p) => [p.terminal, p.phone]);
  await pool(devices, 100, (d) => withTimeout(d.connect(), CONNECT_TIMEOUT_MS, `connecting ${d.id}`));
  const t1 = performance.now();
  for (const p of pairs) {
    // The simulated user approves every prompt at once; the agent then executes the task.
    new PhoneAgent(p.phone, () => "approve", (line) => {
      if (line.startsWith("could not")) process.stderr.write(`phone ${p.phone.id}: ${line}\n`);
    });
  }
  await pool(pairs, 50, async (p) => {
    const code = (await p.terminal.call("bind_request", { login: p.keys.login, terminal: { model: "bench", serial: `SN-${p.index}`, displayName: `Bench TV ${p.index}` } })).body.code;
    await p.phone.call("bind_confirm", { code, limits: BENCH_LIMITS });
  });
  emit({ event: "ready", devices: devices.length, connectMs: Math.round(t1 - t0), bindMs: Math.round(performance.now() - t1) });
}

class PhaseStats {
  completed = 0;
  errors = 0;
  readonly errorCounts: Record<string, number> = {};
  readonly all: number[] = [];
  /** Flows refused busy: ms from their start to the refusal. */
  readonly refused: number[] = [];
  /** ms from each flow's scheduled start to when the load generator began it (0 in a closed loop). */
  readonly startLag: number[] = [];
  /** Per node of the flow's terminal: latencies and errors. */
  readonly nodes = config.urls.map(() => ({ latency: [] as number[], errors: 0 }));
  readonly byMode = { auto: { latency: [] as number[], steps: new Map<string, number[]>() }, prompt: { latency: [] as number[], steps: new Map<string, number[]>() } };

  ok(node: number, mode: "auto" | "prompt", latencyMs: number, steps: readonly (readonly [string, number])[]): void {
    this.completed++;
    this.all.push(latencyMs);
    this.nodes[node]!.latency.push(latencyMs);
    const m = this.byMode[mode];
    m.latency.push(latencyMs);
    const seen = new Set<string>();
    for (const [step, ms] of [...steps, ["result", latencyMs] as const]) {
      if (seen.has(step)) continue;
      seen.add(step);
      let xs = m.steps.get(step);
      if (xs === undefined) m.steps.set(step, (xs = []));
      xs.push(ms);
    }
  }

  error(text: string, node: number | null = null): void {
    this.errors++;
    if (node !== null) this.nodes[node]!.errors++;
    bump(this.errorCounts, errorKey(text));
  }

  modeStats(mode: "auto" | "prompt"): ModeStats | undefined {
    const m = this.byMode[mode];
    if (m.latency.length === 0) return undefined;
    const stepsMs: Record<string, ReturnType<typeof percentiles>> = {};
    for (const [step, xs] of m.steps) stepsMs[step] = percentiles(xs);
    return { completed: m.latency.length, latencyMs: percentiles(m.latency), stepsMs };
  }

  nodeStats(seconds: number): NodeStats[] | null {
    if (this.nodes.length < 2) return null;
    return this.nodes.map((n) => ({ completed: n.latency.length, errors: n.errors, flowsPerSec: round(n.latency.length / seconds, 1), latencyMs: percentiles(n.latency) }));
  }
}

/** One payment, request to result. `t0` is when it was meant to start (open loop) or started. */
async function flow(pair: LivePair, kind: "mixed" | "auto", t0: number, stats: PhaseStats): Promise<void> {
  const prompted = kind === "mixed" && (pair.index + pair.n) % 2 === 1;
  const node = nodeOf(pair.index, "terminal");
  pair.n++;
  const steps: [string, number][] = [];
  stats.startLag.push(performance.now() - t0);
  try {
    const outcome = await pay(
      pair.terminal,
      { login: pair.keys.login, merchantId: BENCH_MERCHANT.id, amountMinor: prompted ? PROMPT_AMOUNT_MINOR : AUTO_AMOUNT_MINOR, currency: "CNY", orderRef: `bench-${++orderSeq}` },
      (step) => void steps.push([step, performance.now() - t0]),
      FLOW_TIMEOUT_MS,
      false,
    );
    const ms = performance.now() - t0;
    // Past capacity the broker refuses new payments at once: counted apart, not as errors.
    if (outcome.kind === "rejected" && outcome.code === "busy") return void stats.refused.push(ms);
    if (outcome.kind === "rejected") return stats.error(`refused: ${outcome.code}`, node);
    if (outcome.result.status !== "completed") return stats.error(`ended ${outcome.result.status}: ${outcome.result.reason ?? ""}`, node);
    stats.ok(node, outcome.mode, ms, steps);
  } catch (err) {
    stats.error((err as Error).message, node);
  }
}

async function phase(c: PhaseCommand): Promise<void> {
  upCounts = {};
  downCounts = {};
  downLags = [];
  sentAt = new Map();
  answered = [];
  busyAnswered = [];
  rejectedCount = 0;
  const stats = new PhaseStats();
  const start = performance.now();
  const deadline = start + c.maxSeconds * 1000;
  const target = c.loop === "closed" ? c.flows : Math.round(c.rate * c.seconds);
  let started = 0;
  let unfinished = 0;
  const progress = setInterval(() => {
    emit({ event: "progress", label: c.name, done: stats.completed, target, errors: stats.errors, elapsedMs: Math.round(performance.now() - start) });
  }, PROGRESS_EVERY_MS);
  try {
    if (c.loop === "closed") {
      await Promise.all(
        pairs.map(async (pair) => {
          while (started < c.flows && performance.now() < deadline) {
            started++;
            await flow(pair, c.kind, performance.now(), stats);
          }
        }),
      );
    } else {
      // Open loop: flow i is due at start + i/rate whatever happened to earlier ones, and its
      // latency counts from then, so a stalled broker shows as latency, not as a lower rate.
      const intervalMs = 1000 / c.rate;
      const inFlight = new Set<Promise<void>>();
      while (started < target && performance.now() < deadline) {
        const now = performance.now();
        while (started < target && start + started * intervalMs <= now) {
          const pair = pairs[started % pairs.length]!;
          const p = flow(pair, c.kind, start + started * intervalMs, stats);
          inFlight.add(p);
          void p.finally(() => inFlight.delete(p));
          started++;
        }
        await sleep(1);
      }
      // An overloaded broker can leave flows hanging for as long as their timeouts: bounded here,
      // so the bench's run time stays bounded; what is left counts as unfinished.
      await Promise.race([Promise.all(inFlight), sleep(c.drainSeconds * 1000)]);
      unfinished = inFlight.size;
    }
  } finally {
    clearInterval(progress);
  }
  const seconds = (performance.now() - start) / 1000;
  for (let i = 0; i < unfinished; i++) stats.error(`unfinished ${c.drainSeconds} s after the last flow started`);
  if (rejectedCount > 0) stats.error(`${rejectedCount} broker messages rejected by the device (signature or address)`);
  const byMode: PhaseResult["byMode"] = {};
  for (const mode of ["auto", "prompt"] as const) {
    const s = stats.modeStats(mode);
    if (s !== undefined) byMode[mode] = s;
  }
  emit({
    event: "phase_done",
    result: {
      name: c.name,
      kind: c.kind,
      loop: c.loop,
      targetRate: c.loop === "open" ? c.rate : null,
      started,
      completed: stats.completed,
      errors: stats.errors,
      errorCounts: stats.errorCounts,
      seconds: round(seconds, 3),
      flowsPerSec: round(stats.completed / seconds, 1),
      capped: started < target,
      unfinished,
      refused: stats.refused.length,
      refusedMs: percentiles(stats.refused),
      startLagMs: percentiles(stats.startLag),
      downLagMs: percentiles(downLags),
      answeredMs: percentiles(answered),
      busyAnsweredMs: percentiles(busyAnswered),
      all: percentiles(stats.all),
      byMode,
      byNode: stats.nodeStats(seconds),
      up: { ...upCounts },
      down: { ...downCounts },
    },
  });
}

// ── Idle connections ────────────────────────────────────────────────────────────────────────

const idle: CountingDevice[] = [];

async function connectIdle(from: number, to: number, concurrency: number): Promise<void> {
  const slice = keys.idle.slice(from, to);
  const failures: Record<string, number> = {};
  let connected = 0;
  let failed = 0;
  const start = performance.now();
  const progress = setInterval(() => {
    emit({ event: "progress", label: "connect", done: connected, target: slice.length, errors: failed, elapsedMs: Math.round(performance.now() - start) });
  }, PROGRESS_EVERY_MS);
  // Keepalive at the broker's limit: 10,000 idle devices pinging every 30 s would not be idle.
  await pool(slice, concurrency, async (k) => {
    const d = newDevice(k, 0, 300);
    try {
      await withTimeout(d.connect(), CONNECT_TIMEOUT_MS, "connect");
      idle.push(d);
      connected++;
    } catch (err) {
      failed++;
      bump(failures, errorKey((err as Error).message));
      void d.close().catch(() => {});
    }
  });
  clearInterval(progress);
  emit({ event: "connected", connected, failed, errorCounts: failures, ms: Math.round(performance.now() - start) });
}

// ── The bound: raw QoS 1 round trips ────────────────────────────────────────────────────────

async function roundtrip(url: string, count: number, seconds: number, payloadBytes: number): Promise<void> {
  const payload = Buffer.alloc(payloadBytes, 0x61);
  const clients: MqttClient[] = [];
  await pool(Array.from({ length: count }, (_, i) => i), 100, async (i) => {
    const c = mqtt.connect(url, { clientId: `rt-${i}`, protocolVersion: 4, clean: true, reconnectPeriod: 0, keepalive: 60 });
    await withTimeout(new Promise<void>((resolve, reject) => {
      c.once("connect", () => resolve());
      c.once("error", reject);
    }), CONNECT_TIMEOUT_MS, "connecting to the bare broker");
    await c.subscribeAsync(`rt/${i}`, { qos: 1 });
    clients.push(c);
  });
  let counting = false;
  let stop = false;
  let roundTrips = 0;
  const latencies: number[] = [];
  const loops = clients.map(async (c, i) => {
    const topic = `rt/${i}`;
    let back: (() => void) | null = null;
    c.on("message", () => back?.());
    while (!stop) {
      const t0 = performance.now();
      await new Promise<void>((resolve) => {
        back = resolve;
        c.publish(topic, payload, { qos: 1 });
      });
      if (counting) {
        roundTrips++;
        latencies.push(performance.now() - t0);
      }
    }
  });
  await sleep(Math.min(1000, seconds * 250)); // warm-up, not counted
  emit({ event: "mark", label: "start" });
  counting = true;
  const start = performance.now();
  await sleep(seconds * 1000);
  counting = false;
  emit({ event: "mark", label: "stop" });
  const elapsed = (performance.now() - start) / 1000;
  stop = true;
  await withTimeout(Promise.all(loops), 10_000, "stopping the round-trip clients").catch(() => {});
  await Promise.all(clients.map((c) => c.endAsync(true)));
  emit({ event: "roundtrip_done", clients: count, roundTrips, seconds: round(elapsed, 3), latencyMs: percentiles(latencies) });
}

// ── Command loop ────────────────────────────────────────────────────────────────────────────

async function exit(): Promise<never> {
  const all = [...pairs.flatMap((p) => [p.terminal, p.phone]), ...idle];
  await withTimeout(Promise.all(all.map((d) => d.close().catch(() => {}))), 5_000, "closing devices").catch(() => {});
  process.exit(0);
}

async function run(c: Command): Promise<void> {
  switch (c.cmd) {
    case "setup":
      return setup();
    case "phase":
      return phase(c);
    case "connect":
      return connectIdle(c.from, c.to, c.concurrency);
    case "roundtrip":
      return roundtrip(c.url, c.clients, c.seconds, c.payloadBytes);
    case "exit":
      return exit();
  }
}

let chain = Promise.resolve();
createInterface({ input: process.stdin }).on("line", (line) => {
  if (line.trim() === "") return;
  const c = JSON.parse(line) as Command;
  chain = chain.then(() =>
    run(c).catch((err: unknown) => {
      emit({ event: "fatal", message: `${c.cmd}: ${(err as Error).stack ?? String(err)}` });
    }),
  );
});
// The orchestrator gone means the bench is over.
process.stdin.on("end", () => void exit());
emit({ event: "hello", pid: process.pid });
