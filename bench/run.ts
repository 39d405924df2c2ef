/**
 * `npm run bench`: how fast the broker hands payments off, and how close that is to what MQTT
 * and Ed25519 alone would allow on this machine. `npm run bench -- --help` lists the options;
 * docs/performance.md explains the method and the figures.
 *
 * Three kinds of process, so each one's CPU time can be read from /proc:
 *   this orchestrator   sets the data dir up, starts the others, samples their CPU and memory,
 *                       measures the Ed25519 rates, prints the figures
 *   the broker(s)       broker/main.ts, exactly as `npm start` runs it, on a fresh temp data dir:
 *                       one node on SQLite (the default) or PostgreSQL (--database), or N nodes
 *                       sharing a PostgreSQL database and a Redis (--nodes), as `npm run
 *                       cluster` runs them (device-sim/cluster.ts)
 *   load generator(s)   bench/load.ts: real Device clients, driven by JSON-lines commands
 * and, for the bound, a bare Aedes (bench/bare-aedes.ts). The PostgreSQL and Redis servers are
 * the bench's own, started from Debian's binaries in temporary dirs (device-sim/services.ts).
 *
 * stdout: a short human summary, then, as the last line, one JSON object with every figure.
 * stderr: the progress line, and whatever goes wrong.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync, closeSync, existsSync } from "node:fs";
import { createConnection, createServer, type AddressInfo } from "node:net";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import pg from "pg";
import { TCP_ONLY_FLAGS } from "../src/config.ts";
import { loadBrokerIdentity, loadKeyring, openDataDb } from "../broker/data-dir.ts";
import { CLUSTER_DATABASE, CLUSTER_FLAGS, clusterArgs, prepareNodeDirs } from "../device-sim/cluster.ts";
import { createDatabase, startPostgres, startRedis, type PostgresService, type RedisService } from "../device-sim/services.ts";
import { toBase64 } from "../src/crypto/encoding.ts";
import { openPostgres, type Db } from "../src/store/db.ts";
import { redactUrl } from "../src/store/pg.ts";
import { registerDevice } from "../src/service/devices.ts";
import { addMerchant, creditWallet } from "../src/service/ledger.ts";
import {
  BENCH_MERCHANT,
  benchKey,
  cpuSeconds,
  fileLimits,
  round,
  statusKB,
  writeBytes,
  type BenchKey,
  type BenchPair,
  type Command,
  type KeysFile,
  type LoadConfig,
  type LoadEvent,
  type PhaseCommand,
  type PhaseResult,
} from "./common.ts";
import { measureCrypto, type CryptoRates } from "./crypto-rate.ts";
import { formatSummary, summarize } from "./profile.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** A compiled program (scripts/build.mjs; `npm run bench` builds them first if a source changed). */
const program = (name: string): string => join(ROOT, "dist", `${name}.mjs`);

/** The issue's targets on a 2-core machine, load generator included. */
const TARGETS = { flowsPerSec: 600, p99MsAt300: 30, autoFlowsPerSec: 1000, rssPerConnectionKB: 15 } as const;

/**
 * Size of the signed payload the crypto rates use, and of the bare round trip's message: a
 * broker message signs 255-361 bytes and is 404-524 bytes on the wire (payment_update,
 * payment_task, payment_result).
 */
const SIGNED_BYTES = 360;
const ENVELOPE_BYTES = 480;
const WALLET_FUNDS_MINOR = 1_000_000_000_000; // never the limit
const PHASES = ["mixed", "auto", "open300", "overload"] as const;
type PhaseName = (typeof PHASES)[number];
/** As many nodes as `npm run cluster` starts at most. */
const MAX_NODES = 16;

const HELP = `Usage: npm run bench -- [options]

Starts the broker (broker/main.ts) on a fresh temporary data dir and a load generator
(bench/load.ts) as separate processes, runs complete payments through real MQTT devices,
measures the bound (bare Aedes QoS 1 round trips, native Ed25519 sign and verify) and prints
the figures; the last line of stdout is one JSON object with all of them.

Store and nodes:
  --database STORE         where the broker keeps its state (default sqlite):
                             sqlite          the data dir's SQLite file, one node
                             postgres        a PostgreSQL server the bench starts from Debian's
                                             binaries (apt-get install postgresql) in a temporary
                                             dir, database "${CLUSTER_DATABASE}"; removed at the end
                             postgres://…    an existing server: the bench creates a fresh database
                                             hp_bench_<random> on it and drops it at the end
  --nodes N                N broker nodes (2 to ${MAX_NODES}) sharing one PostgreSQL database (the
                           bench's own, or --database postgres://…) and a Redis the bench starts
                           (apt-get install redis-server), each with its own data dir holding the
                           same keys, as npm run cluster runs them. Pair i's terminal connects to
                           node i mod N and its phone to node i+1 mod N: every payment crosses
                           nodes. Reported per node and in total: the flows whose terminal is on
                           the node (flows/s, p50/p99), the node's CPU per flow (all flows) and its
                           peak RSS; PostgreSQL's and Redis's CPU per flow beside them.
                           Not with --connections or --profile.

Payments (default mode):
  K terminal/phone pairs are registered, funded and bound over MQTT. In the mixed phases every
  pair alternates an auto-confirmed payment (amount <= the agreement's auto-confirm maximum) and
  a prompted one (the phone approves at once, then executes), so half the flows are each kind.
  Phases, in order:
    warm-up   2 flows per pair, not reported
    mixed     closed loop: each pair runs one payment after another at full speed, --flows in
              total (flowsPerSec); with --rate N, open loop at N flows/s instead
    auto      closed loop, auto-confirmed payments only, --auto-flows in total (autoFlowsPerSec)
    open300   open loop at --open-rate flows/s (default 300) for --open-seconds (p99MsAt300)
    overload  open loop at --overload-rate flows/s (default: twice the mixed phase's closed-loop
              rate measured in this run, else 600) for --open-seconds: past capacity the broker
              refuses new payments busy (docs/protocol.md §Load); reports the accepted flows'
              p99, the refused ones and how soon each heard so, and what was left unfinished.
              Refused requests are not retried here.
  Then the bound: a bare Aedes with the same number of clients, each publishing QoS 1 to a topic
  it subscribes to; and node:crypto Ed25519 sign and verify rates.

Options:
  --quick                  rougher figures in under 40 s (fewer pairs, flows and seconds)
  --pairs K                terminal/phone pairs (default 100; quick 50)
  --flows M                payments in the mixed phase (default 15000; quick 3000)
  --auto-flows M           payments in the auto phase (default 10000; quick 2500)
  --rate N                 run the mixed phase open loop at N flows/s (spread over the pairs)
                           for M/N seconds, instead of closed loop at full speed
  --open-rate N            the open-loop phase's rate (default 300)
  --open-seconds S         the open-loop phases' length (default 12; quick 3)
  --overload-rate N        the overload phase's rate (default: twice the measured capacity)
  --phases LIST            which phases to run, comma-separated: mixed,auto,open300,overload
                           (default all)
  --max-phase-seconds S    no phase starts new flows after S seconds (default 25; quick 5);
                           an open-loop phase then waits at most 5 s (quick 2 s) for flows
                           in flight and counts the rest as unfinished errors
  --bound-seconds S        length of the bare-Aedes round-trip measurement (default 5; quick 1.5)
  --no-bound               skip the bound (no bare Aedes, no crypto rates, no ratio)
  --profile                run the broker under node --cpu-prof and print its top functions
                           (the .cpuprofile is kept; the data dir is kept)
  --profile-load           the same for the load generator
  --broker-arg FLAG=VALUE  extra broker flag, e.g. --broker-arg --prompt-ttl-ms=5000 (repeatable)
  --keep                   keep the temporary data dir (its path is printed)

Connections (--connections N):
  N idle devices are registered (one transaction), then connected from load generator
  process(es) with fresh signed tokens, --connect-concurrency at a time per process, and held.
  Reports the connect rate and the broker's RSS per connection: (RSS after - RSS before) / N,
  where "before" is taken once the first 1% of the devices (at most 100) are connected, so that
  one-time allocations are not charged to the connections (those devices are not in N).
  --connections N          how many devices (e.g. 10000)
  --connect-concurrency C  connects in flight per load process (default 200)
  --load-procs P           load generator processes (default: one per 5,000 devices)
  --hold-seconds S         how long to hold them before measuring RSS (default 5)
  Each connection is a file descriptor in the broker and in a load process: the bench raises
  each child's soft limit (ulimit -n) to the hard limit; if the hard limit is below N + 100, it
  stops and says how to raise it.

Broker flags the bench always sets: --device-rate 1000000 --device-burst 1000000
  --max-consecutive-auto 1000 --log-level warn (the broker's own defaults would rate-limit the
  load and prompt every sixth auto payment).

Figures depend on the machine and on what else runs on it: see docs/performance.md. The bound
is always one bare Aedes: with --nodes its ratio compares all nodes together with one broker.

Examples:
  npm run bench
  npm run bench -- --quick
  npm run bench -- --quick --database postgres
  npm run bench -- --nodes 2 --flows 6000 --auto-flows 4000
  npm run bench -- --database postgres://postgres@db.example:5432/postgres
  npm run bench -- --rate 400 --flows 8000
  npm run bench -- --quick --profile
  npm run bench -- --connections 10000
  -h, --help               show this help`;

/** Where the broker keeps its state: the data dir's SQLite, or PostgreSQL (url null: the bench's own server). */
type StoreOption = { readonly kind: "sqlite" } | { readonly kind: "postgres"; readonly url: string | null };

interface Options {
  readonly quick: boolean;
  readonly store: StoreOption;
  /** Broker nodes: 1, or 2 or more sharing PostgreSQL and Redis. */
  readonly nodes: number;
  readonly pairs: number;
  readonly flows: number;
  readonly autoFlows: number;
  readonly rate: number | null;
  readonly openRate: number;
  readonly openSeconds: number;
  readonly overloadRate: number | null;
  readonly phases: readonly PhaseName[];
  readonly maxPhaseSeconds: number;
  readonly boundSeconds: number;
  readonly bound: boolean;
  readonly profile: boolean;
  readonly profileLoad: boolean;
  readonly brokerArgs: readonly string[];
  readonly keep: boolean;
  readonly connections: number | null;
  readonly connectConcurrency: number;
  readonly loadProcs: number | null;
  readonly holdSeconds: number;
}

class UsageError extends Error {}

function parseOptions(argv: string[]): Options | null {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      help: { type: "boolean", short: "h" },
      quick: { type: "boolean" },
      pairs: { type: "string" },
      flows: { type: "string" },
      "auto-flows": { type: "string" },
      rate: { type: "string" },
      "open-rate": { type: "string" },
      "open-seconds": { type: "string" },
      "overload-rate": { type: "string" },
      phases: { type: "string" },
      "max-phase-seconds": { type: "string" },
      "bound-seconds": { type: "string" },
      "no-bound": { type: "boolean" },
      profile: { type: "boolean" },
      "profile-load": { type: "boolean" },
      "broker-arg": { type: "string", multiple: true },
      keep: { type: "boolean" },
      connections: { type: "string" },
      "connect-concurrency": { type: "string" },
      "load-procs": { type: "string" },
      "hold-seconds": { type: "string" },
      database: { type: "string" },
      nodes: { type: "string" },
    },
  });
  if (values.help) return null;
  const quick = values.quick === true;
  const num = (name: string, v: string | undefined, def: number, min: number, max: number): number => {
    if (v === undefined) return def;
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || n > max) throw new UsageError(`--${name} must be a number from ${min} to ${max}, got ${v}`);
    return n;
  };
  const phases = (values.phases ?? PHASES.join(",")).split(",").map((s) => s.trim());
  for (const p of phases) if (!(PHASES as readonly string[]).includes(p)) throw new UsageError(`--phases: unknown phase ${p}; the phases are ${PHASES.join(", ")}`);
  let nodes = 1;
  if (values.nodes !== undefined) {
    nodes = Number(values.nodes);
    if (!/^\d+$/.test(values.nodes) || nodes < 2 || nodes > MAX_NODES) {
      throw new UsageError(`--nodes must be a whole number from 2 to ${MAX_NODES}, got ${values.nodes} (one node is the default: leave --nodes out)`);
    }
    if (values.connections !== undefined) throw new UsageError("--nodes runs payments only: --connections measures one node (leave --nodes out)");
    if (values.profile === true) throw new UsageError("--profile profiles one broker: leave --nodes out (--profile-load works with --nodes)");
  }
  const database = values.database ?? (nodes > 1 ? "postgres" : "sqlite");
  let store: StoreOption;
  if (database === "sqlite") {
    if (nodes > 1) throw new UsageError(`--nodes ${nodes} share one PostgreSQL database: use --database postgres (the default with --nodes) or postgres://…, not sqlite`);
    store = { kind: "sqlite" };
  } else if (database === "postgres") store = { kind: "postgres", url: null };
  else if (/^postgres(ql)?:\/\/\S+$/i.test(database)) store = { kind: "postgres", url: database };
  else throw new UsageError(`--database must be sqlite, postgres or a postgres://… URL, got ${database}`);
  return {
    quick,
    store,
    nodes,
    pairs: Math.round(num("pairs", values.pairs, quick ? 50 : 100, 1, 5000)),
    flows: Math.round(num("flows", values.flows, quick ? 3000 : 15000, 1, 10_000_000)),
    autoFlows: Math.round(num("auto-flows", values["auto-flows"], quick ? 2500 : 10000, 1, 10_000_000)),
    rate: values.rate === undefined ? null : num("rate", values.rate, 0, 1, 1_000_000),
    openRate: num("open-rate", values["open-rate"], 300, 1, 1_000_000),
    openSeconds: num("open-seconds", values["open-seconds"], quick ? 3 : 12, 1, 3600),
    overloadRate: values["overload-rate"] === undefined ? null : num("overload-rate", values["overload-rate"], 0, 1, 1_000_000),
    phases: phases as PhaseName[],
    maxPhaseSeconds: num("max-phase-seconds", values["max-phase-seconds"], quick ? 5 : 25, 1, 3600),
    boundSeconds: num("bound-seconds", values["bound-seconds"], quick ? 1.5 : 5, 0.5, 600),
    bound: values["no-bound"] !== true,
    profile: values.profile === true,
    profileLoad: values["profile-load"] === true,
    brokerArgs: values["broker-arg"] ?? [],
    keep: values.keep === true,
    connections: values.connections === undefined ? null : Math.round(num("connections", values.connections, 0, 1, 1_000_000)),
    connectConcurrency: Math.round(num("connect-concurrency", values["connect-concurrency"], 200, 1, 100_000)),
    loadProcs: values["load-procs"] === undefined ? null : Math.round(num("load-procs", values["load-procs"], 1, 1, 64)),
    holdSeconds: Math.round(num("hold-seconds", values["hold-seconds"], 5, 0, 3600)),
  };
}

// ── Child processes ─────────────────────────────────────────────────────────────────────────

const children = new Set<ChildProcess>();

/** Runs node on a compiled program, its soft open-file limit raised to the hard limit (one fd per connection). */
function spawnNode(args: readonly string[], logFile: string | null, nodeFlags: readonly string[] = []): ChildProcess {
  const env: NodeJS.ProcessEnv = {};
  // The broker reads HANDOFF_* variables: the bench's broker must not pick up the caller's.
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("HANDOFF_")) env[k] = v;
  const out = logFile === null ? "pipe" : openSync(logFile, "a");
  const child = spawn("/bin/sh", ["-c", 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$0" "$@"', process.execPath, "--enable-source-maps", ...nodeFlags, ...args], {
    cwd: ROOT,
    env,
    stdio: ["pipe", out, logFile === null ? "inherit" : out],
  });
  if (typeof out === "number") closeSync(out);
  children.add(child);
  child.once("exit", () => children.delete(child));
  return child;
}

function exited(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    child.once("exit", () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/** SIGTERM, then SIGKILL if it has not gone within `ms`. */
async function stop(child: ChildProcess, ms = 15_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill("SIGTERM");
  if (!(await exited(child, ms))) {
    child.kill("SIGKILL");
    await exited(child, 2_000);
  }
}

function killAll(): void {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
}

/** A load generator: commands in on stdin, events out on stdout. */
class Load {
  readonly child: ChildProcess;
  readonly #waiters: { match: (e: LoadEvent) => boolean; resolve: (e: LoadEvent) => void; reject: (e: Error) => void }[] = [];
  onEvent: (e: LoadEvent) => void = () => {};
  /** Resolves once the process has started and reads commands. */
  readonly started: Promise<void>;

  constructor(configFile: string, profileDir: string | null = null) {
    this.child = spawnNode([program("bench/load"), configFile], null, profileDir === null ? [] : ["--cpu-prof", "--cpu-prof-dir", profileDir]);
    this.started = new Promise<void>((resolve, reject) => {
      this.#waiters.push({ match: (e) => e.event === "hello", resolve: () => resolve(), reject });
    });
    void this.started.catch(() => {});
    createInterface({ input: this.child.stdout! }).on("line", (line) => {
      let e: LoadEvent;
      try {
        e = JSON.parse(line) as LoadEvent;
      } catch {
        process.stderr.write(`load: ${line}\n`);
        return;
      }
      if (e.event === "fatal") {
        for (const w of this.#waiters.splice(0)) w.reject(new Error(`load generator failed: ${e.message}`));
        return;
      }
      this.onEvent(e);
      const i = this.#waiters.findIndex((w) => w.match(e));
      if (i >= 0) this.#waiters.splice(i, 1)[0]!.resolve(e);
    });
    this.child.once("exit", (code, signal) => {
      for (const w of this.#waiters.splice(0)) w.reject(new Error(`load generator exited (${signal ?? code}) before answering`));
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  send(c: Command): void {
    this.child.stdin!.write(JSON.stringify(c) + "\n");
  }

  /** Sends a command (once the process has started) and waits for the event that answers it. */
  async request<E extends LoadEvent["event"]>(c: Command, answer: E): Promise<Extract<LoadEvent, { event: E }>> {
    await withTimeout(this.started, STARTUP_TIMEOUT_MS, `the load generator (pid ${this.child.pid}) did not start`);
    const p = new Promise<LoadEvent>((resolve, reject) => this.#waiters.push({ match: (e) => e.event === answer, resolve, reject }));
    this.send(c);
    return p as Promise<Extract<LoadEvent, { event: E }>>;
  }

  async exit(): Promise<void> {
    if (this.child.exitCode !== null) return;
    this.send({ cmd: "exit" });
    if (!(await exited(this.child, 10_000))) await stop(this.child, 2_000);
  }
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as AddressInfo).port;
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

async function waitForPort(port: number, child: ChildProcess, logFile: string, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`the broker exited with code ${child.exitCode}:\n${tail(logFile)}`);
    const ok = await new Promise<boolean>((r) => {
      const s = createConnection({ port, host: "127.0.0.1" }, () => {
        s.destroy();
        r(true);
      });
      s.once("error", () => r(false));
    });
    if (ok) return;
    await sleep(100);
  }
  throw new Error(`the broker did not listen on port ${port} within ${ms} ms:\n${tail(logFile)}`);
}

function tail(file: string, lines = 20): string {
  try {
    return readFileSync(file, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A child that has not said hello by then is stuck. */
const STARTUP_TIMEOUT_MS = 60_000;

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} within ${ms / 1000} s`)), ms);
    }),
  ]);
}

// ── Progress (stderr) ───────────────────────────────────────────────────────────────────────

const tty = process.stderr.isTTY === true;
let progressShown = false;

function progress(text: string): void {
  if (tty) {
    process.stderr.write(`\r\x1b[K${text}`);
    progressShown = true;
  } else process.stderr.write(`${text}\n`);
}

const startedAt = performance.now();

function note(text: string): void {
  if (progressShown) process.stderr.write("\r\x1b[K");
  progressShown = false;
  process.stderr.write(`${text.replace(/^bench: /, `bench: [${((performance.now() - startedAt) / 1000).toFixed(1).padStart(5)} s] `)}\n`);
}

function showProgress(e: LoadEvent): void {
  if (e.event !== "progress") return;
  const s = e.elapsedMs / 1000;
  progress(`bench: ${e.label.padEnd(8)} ${String(e.done).padStart(6)}/${e.target} in ${s.toFixed(1)} s (${Math.round(e.done / Math.max(s, 0.001))}/s), errors ${e.errors}`);
}

// ── PostgreSQL and Redis ────────────────────────────────────────────────────────────────────

/** The run's PostgreSQL database and Redis, when it needs them: started or created for it, gone after it. */
interface Services {
  /** The database every node uses; null: each node's SQLite file (one node). */
  readonly pgUrl: string | null;
  /** The Redis the nodes route through; null: one node. */
  readonly redisUrl: string | null;
  /** The store as the figures name it. */
  readonly store: "sqlite" | "postgres";
  /** Where the PostgreSQL server is: the bench's own, or the --database URL's (redacted). */
  readonly server: string | null;
  /** CPU seconds so far of PostgreSQL (postmaster and backends) and Redis; null for a server not the bench's. */
  cpu(): { readonly postgres: number | null; readonly redis: number | null };
  stop(): Promise<void>;
}

async function startServices(o: Options): Promise<Services> {
  if (o.store.kind === "sqlite") return { pgUrl: null, redisUrl: null, store: "sqlite", server: null, cpu: () => ({ postgres: null, redis: null }), stop: async () => {} };
  const external = o.store.url;
  const log = (line: string) => note(`bench: ${line}`);
  // Both at once; if one fails, the other is stopped before the error goes on.
  const [pgStart, redisStart] = await Promise.allSettled([external === null ? startPostgres({ log }) : Promise.resolve(null), o.nodes > 1 ? startRedis({ log }) : Promise.resolve(null)]);
  const pgService: PostgresService | null = pgStart.status === "fulfilled" ? pgStart.value : null;
  const redisService: RedisService | null = redisStart.status === "fulfilled" ? redisStart.value : null;
  const stopServers = () => Promise.all([pgService?.stop(), redisService?.stop()]).then(() => {});
  const failed = [pgStart, redisStart].find((r): r is PromiseRejectedResult => r.status === "rejected");
  if (failed !== undefined) {
    await stopServers();
    throw failed.reason;
  }
  let pgUrl: string;
  let dropDatabase: (() => Promise<void>) | null = null;
  try {
    if (pgService !== null) pgUrl = await createDatabase(pgService.url, CLUSTER_DATABASE);
    else {
      // An existing server: a database of the run's own, dropped at the end (unless --keep).
      const name = `hp_bench_${randomBytes(6).toString("hex")}`;
      pgUrl = await createDatabase(external!, name);
      note(`bench: database ${name} created on ${redactUrl(external!)}`);
      if (!o.keep) dropDatabase = () => dropDatabaseOn(external!, name);
    }
  } catch (err) {
    await stopServers();
    throw err;
  }
  const postmaster = pgService === null ? null : postmasterPid(pgService.dir);
  const redisPid = redisService === null ? null : findRedisPid(redisService.port);
  return {
    pgUrl,
    redisUrl: redisService?.url ?? null,
    store: "postgres",
    server: pgService === null ? redactUrl(external!) : "the bench's own",
    cpu: () => ({ postgres: postmaster === null ? null : familyCpuSeconds(postmaster), redis: redisPid === null ? null : cpuSeconds(redisPid) }),
    stop: async () => {
      await stopServers();
      await dropDatabase?.().catch((err: Error) => note(`bench: could not drop the bench's database: ${err.message}`));
    },
  };
}

async function dropDatabaseOn(serverUrl: string, name: string): Promise<void> {
  const client = new pg.Client({ connectionString: serverUrl });
  client.on("error", () => {});
  await client.connect();
  try {
    // The name is the bench's own (hex): quoting is enough. FORCE: a stopped node's session may linger.
    await client.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
  } finally {
    await client.end();
  }
}

/** The postmaster's pid (first line of postmaster.pid): the parent of every backend and worker. */
function postmasterPid(dir: string): number | null {
  try {
    const pid = Number(readFileSync(join(dir, "data", "postmaster.pid"), "utf8").split("\n")[0]);
    return Number.isInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}

/** redis-server names itself "redis-server 127.0.0.1:<port>" in its command line. */
function findRedisPid(port: number): number | null {
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const cmd = readFileSync(`/proc/${name}/cmdline`, "utf8").replaceAll("\0", " ");
      if (cmd.includes("redis-server") && cmd.includes(`:${port}`)) return Number(name);
    } catch {
      // gone meanwhile
    }
  }
  return null;
}

/**
 * CPU seconds of a process and its live children: PostgreSQL's postmaster, its backends and
 * workers (each backend calls setsid(), so they share no process group with the postmaster).
 */
function familyCpuSeconds(parent: number): number | null {
  let total = 0;
  let found = false;
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      // After the command name: state, ppid.
      if (Number(name) !== parent && Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) !== parent) continue;
    } catch {
      continue;
    }
    const s = cpuSeconds(Number(name));
    if (s !== null) {
      total += s;
      found = true;
    }
  }
  return found ? total : null;
}

// ── The broker(s) on fresh data dirs ────────────────────────────────────────────────────────

interface BrokerNode {
  /** node-1, node-2, …: the broker's --node-id when there are several. */
  readonly name: string;
  readonly child: ChildProcess;
  readonly pid: number;
  readonly url: string;
  readonly logFile: string;
}

interface Started {
  readonly dir: string;
  readonly nodes: readonly BrokerNode[];
  /** Node 1's process (the only one, but with --nodes). */
  readonly broker: ChildProcess;
  readonly configFile: string;
  readonly profileDir: string | null;
  readonly loadProfileDir: string | null;
}

/** Writes the data dirs and the database (keys, devices, merchant, funds) and starts the broker(s) on them. */
async function startBroker(o: Options, services: Services, keys: KeysFile, funded: readonly string[]): Promise<Started> {
  const dir = mkdtempSync(join(tmpdir(), "hp-bench-"));
  const t0 = performance.now();
  // Every node's data dir holds the same master key and broker identity (npm run cluster's way).
  const { dirs } = prepareNodeDirs(dir, o.nodes);
  const dataDir = dirs[0]!;
  // Setup writes the database directly, before the broker starts: what `npm run admin` would do.
  const { keyring } = loadKeyring(dataDir, undefined);
  const identity = loadBrokerIdentity(dataDir);
  const db: Db = services.pgUrl === null ? openDataDb(dataDir) : openPostgres(services.pgUrl);
  const now = Date.now();
  const register = (k: BenchKey, name: string, userId?: string) => {
    const r = registerDevice(db, keyring, { kind: k.kind, name, publicKey: k.pub, ...(userId === undefined ? {} : { userId }) }, now);
    if (!r.ok) throw new Error(`registering ${k.id}: ${r.error}`);
  };
  try {
    db.transaction(() => {
      keys.pairs.forEach((p, i) => {
        register(p.terminal, `Bench TV ${i}`);
        register(p.phone, `Bench phone ${i}`, p.userId);
      });
      keys.idle.forEach((k, i) => register(k, `Idle ${i}`));
      if (funded.length > 0) {
        const m = addMerchant(db, BENCH_MERCHANT, now);
        if (!m.ok) throw new Error(m.error);
        for (const userId of funded) {
          const c = creditWallet(db, keyring, { userId, amountMinor: WALLET_FUNDS_MINOR, currency: "CNY" }, now);
          if (!c.ok) throw new Error(c.error);
        }
      }
    })();
  } finally {
    db.close();
  }
  const keysFile = join(dir, "keys.json");
  writeFileSync(keysFile, JSON.stringify(keys));
  note(`bench: ${o.nodes === 1 ? `data dir ${dataDir}` : `${o.nodes} data dirs in ${dir}`}${services.pgUrl === null ? "" : " and PostgreSQL"} set up in ${Math.round(performance.now() - t0)} ms (${keys.pairs.length * 2 + keys.idle.length} devices)`);

  const profileDir = o.profile ? join(dir, "profile") : null;
  const storeArgs = (name: string): string[] => {
    if (services.pgUrl === null) return [];
    if (services.redisUrl === null) return [CLUSTER_FLAGS.database, services.pgUrl];
    return [...clusterArgs(services.pgUrl, services.redisUrl), CLUSTER_FLAGS.nodeId, name];
  };
  const nodes: BrokerNode[] = [];
  for (const [i, nodeDir] of dirs.entries()) {
    const name = `node-${i + 1}`;
    const port = await freePort();
    const logFile = join(dir, o.nodes === 1 ? "broker.log" : `${name}.log`);
    const brokerArgs = [
      program("broker/main"),
      "--port",
      String(port),
      ...TCP_ONLY_FLAGS,
      "--data-dir",
      nodeDir,
      ...storeArgs(name),
      "--log-level",
      "warn",
      "--device-rate",
      "1000000",
      "--device-burst",
      "1000000",
      "--max-consecutive-auto",
      "1000",
      ...o.brokerArgs,
    ];
    const child = spawnNode(brokerArgs, logFile, profileDir === null ? [] : ["--cpu-prof", "--cpu-prof-dir", profileDir]);
    nodes.push({ name, child, pid: child.pid!, url: `mqtt://127.0.0.1:${port}`, logFile });
  }
  await Promise.all(nodes.map((n) => waitForPort(Number(new URL(n.url).port), n.child, n.logFile)));
  const configFile = join(dir, "load.json");
  const config: LoadConfig = { urls: nodes.map((n) => n.url), brokerPublicKey: toBase64(identity.publicKey), keysFile };
  writeFileSync(configFile, JSON.stringify(config));
  return { dir, nodes, broker: nodes[0]!.child, configFile, profileDir, loadProfileDir: o.profileLoad ? join(dir, "load-profile") : null };
}

/** The main thread's profile in a --cpu-prof dir (worker threads, pino's and the checkpointer's, write one too). */
function mainThreadProfile(dir: string | null): string | null {
  if (dir === null || !existsSync(dir)) return null;
  // CPU.<date>.<time>.<pid>.<thread id>.<seq>.cpuprofile; thread 0 is the main thread.
  const files = readdirSync(dir).filter((n) => n.endsWith(".cpuprofile"));
  const f = files.find((n) => n.split(".")[4] === "0") ?? files[0];
  return f === undefined ? null : join(dir, f);
}

async function finish(s: Started, o: Options): Promise<string | null> {
  // After an overloaded phase the broker works through its backlog before it exits; the data dir
  // is thrown away, so it gets 3 s, unless its CPU profile (written at exit) is wanted.
  await Promise.all(s.nodes.map((n) => stop(n.child, o.profile ? 60_000 : 3_000)));
  const profile = mainThreadProfile(s.profileDir);
  if (o.keep || o.profile || o.profileLoad) note(`bench: kept ${s.dir}`);
  else rmSync(s.dir, { recursive: true, force: true });
  return profile;
}

// ── Payments ────────────────────────────────────────────────────────────────────────────────

interface PhaseFigures {
  readonly result: PhaseResult;
  /** All nodes together. */
  readonly brokerCpuMsPerFlow: number | null;
  readonly brokerCpuUtil: number | null;
  /** Each node's CPU time over all the phase's flows (they add up to brokerCpuMsPerFlow). */
  readonly nodes: readonly { readonly brokerCpuMsPerFlow: number | null; readonly brokerCpuUtil: number | null }[];
  /** The bench's own PostgreSQL server (postmaster and backends) and Redis; null when absent or not the bench's. */
  readonly postgresCpuMsPerFlow: number | null;
  readonly redisCpuMsPerFlow: number | null;
  readonly loadCpuMsPerFlow: number | null;
  /**
   * KB the broker process(es) wrote to storage per completed flow (WAL and checkpoints; on
   * PostgreSQL the server writes, so this is near 0): pages changed per flow, steadier than CPU.
   */
  readonly brokerDiskKBPerFlow: number | null;
  /** Per completed flow: messages up (each a broker verify) and down (each a broker sign). */
  readonly upPerFlow: number;
  readonly downPerFlow: number;
}

/** CPU seconds so far of every process that works on the flows. */
function readCpu(s: Started, load: Load, services: Services) {
  return { brokers: s.nodes.map((n) => cpuSeconds(n.pid)), load: cpuSeconds(load.pid), ...services.cpu() };
}

async function runPhase(load: Load, s: Started, services: Services, c: PhaseCommand): Promise<PhaseFigures> {
  const before = readCpu(s, load, services);
  const writtenBefore = s.nodes.map((n) => writeBytes(n.pid));
  const t0 = performance.now();
  const { result } = await load.request(c, "phase_done");
  const wall = (performance.now() - t0) / 1000;
  const after = readCpu(s, load, services);
  const writtenAfter = s.nodes.map((n) => writeBytes(n.pid));
  const written = writtenBefore.some((b) => b === null) || writtenAfter.some((b) => b === null) ? null : writtenAfter.reduce((a: number, b, i) => a + b! - writtenBefore[i]!, 0);
  const sum = (m: Record<string, number>) => Object.values(m).reduce((a, b) => a + b, 0);
  const per = (x: number) => (result.completed === 0 ? NaN : x / result.completed);
  const used = (a: number | null | undefined, b: number | null | undefined) => (a == null || b == null ? null : b - a);
  const msPerFlow = (x: number | null) => (x === null ? null : round(per(x * 1000), 3));
  const nodes = s.nodes.map((_, i) => {
    const cpu = used(before.brokers[i], after.brokers[i]);
    return { cpu, brokerCpuMsPerFlow: msPerFlow(cpu), brokerCpuUtil: cpu === null ? null : round(cpu / wall, 2) };
  });
  const brokerCpu = nodes.some((n) => n.cpu === null) ? null : nodes.reduce((a, n) => a + n.cpu!, 0);
  note(
    `bench: ${c.name.padEnd(8)} ${result.completed} flows in ${result.seconds} s = ${result.flowsPerSec}/s` +
      `, p50 ${result.all.p50} ms, p99 ${result.all.p99} ms, errors ${result.errors}${result.capped ? " (capped by --max-phase-seconds)" : ""}` +
      `${result.loop === "open" && result.targetRate !== null && result.flowsPerSec < 0.95 * result.targetRate ? ` (overloaded: offered ${result.targetRate}/s)` : ""}`,
  );
  return {
    result,
    brokerCpuMsPerFlow: msPerFlow(brokerCpu),
    brokerCpuUtil: brokerCpu === null ? null : round(brokerCpu / wall, 2),
    nodes: nodes.map(({ brokerCpuMsPerFlow, brokerCpuUtil }) => ({ brokerCpuMsPerFlow, brokerCpuUtil })),
    postgresCpuMsPerFlow: msPerFlow(used(before.postgres, after.postgres)),
    redisCpuMsPerFlow: msPerFlow(used(before.redis, after.redis)),
    loadCpuMsPerFlow: msPerFlow(used(before.load, after.load)),
    brokerDiskKBPerFlow: written === null || result.completed === 0 ? null : round(written / 1024 / result.completed, 2),
    upPerFlow: round(per(sum(result.up)), 2),
    downPerFlow: round(per(sum(result.down)), 2),
  };
}

interface Bound {
  readonly clients: number;
  readonly roundTripsPerSec: number;
  readonly roundTripLatencyMs: { p50: number; p99: number };
  /** Bare broker CPU while counting: 1.0 is one core busy. */
  readonly bareBrokerCpuUtil: number | null;
  readonly bareBrokerCpuUsPerRoundTrip: number | null;
  /** The clients' side of the same round trips: the load generator's CPU per round trip. */
  readonly clientCpuUsPerRoundTrip: number | null;
  readonly crypto: CryptoRates;
}

/** Bare Aedes QoS 1 round trips with `clients` clients, then the Ed25519 rates. */
async function measureBound(o: Options, clients: number, load: Load): Promise<Bound> {
  const bare = spawnNode([program("bench/bare-aedes")], null);
  const port = await withTimeout(
    new Promise<number>((resolve, reject) => {
      createInterface({ input: bare.stdout! }).once("line", (line) => resolve((JSON.parse(line) as { port: number }).port));
      bare.once("exit", (code) => reject(new Error(`bare Aedes exited (${code})`)));
    }),
    STARTUP_TIMEOUT_MS,
    "the bare Aedes did not start",
  );
  let c0: number | null = null;
  let c1: number | null = null;
  let l0: number | null = null;
  let l1: number | null = null;
  let m0 = 0;
  let m1 = 0;
  load.onEvent = (e) => {
    if (e.event !== "mark") return;
    if (e.label === "start") [c0, l0, m0] = [cpuSeconds(bare.pid!), cpuSeconds(load.pid), performance.now()];
    else [c1, l1, m1] = [cpuSeconds(bare.pid!), cpuSeconds(load.pid), performance.now()];
  };
  progress(`bench: bound    ${clients} clients, QoS 1 round trips through a bare Aedes for ${o.boundSeconds} s`);
  const rt = await load.request({ cmd: "roundtrip", url: `mqtt://127.0.0.1:${port}`, clients, seconds: o.boundSeconds, payloadBytes: ENVELOPE_BYTES }, "roundtrip_done");
  await stop(bare);
  const cpu = c0 !== null && c1 !== null ? (c1 as number) - (c0 as number) : null;
  const clientCpu = l0 !== null && l1 !== null ? (l1 as number) - (l0 as number) : null;
  progress(`bench: bound    Ed25519 sign and verify rates`);
  const crypto = measureCrypto(o.quick ? 0.6 : 2, SIGNED_BYTES);
  const perSec = rt.roundTrips / rt.seconds;
  note(`bench: bound    ${Math.round(perSec)} QoS 1 round trips/s (${clients} clients), ${crypto.signsPerSec} signs/s, ${crypto.verifiesPerSec} verifies/s`);
  return {
    clients,
    roundTripsPerSec: Math.round(perSec),
    roundTripLatencyMs: { p50: rt.latencyMs.p50, p99: rt.latencyMs.p99 },
    bareBrokerCpuUtil: cpu === null ? null : round(cpu / ((m1 - m0) / 1000), 2),
    bareBrokerCpuUsPerRoundTrip: cpu === null || rt.roundTrips === 0 ? null : round((cpu * 1e6) / rt.roundTrips, 1),
    clientCpuUsPerRoundTrip: clientCpu === null || rt.roundTrips === 0 ? null : round((clientCpu * 1e6) / rt.roundTrips, 1),
    crypto,
  };
}

/**
 * The flow rate the broker's unavoidable work allows (docs/performance.md §The bound). Each
 * message up is one QoS 1 publish in (PUBLISH in, PUBACK out) and one Ed25519 verify; each
 * message down is one QoS 1 publish out (PUBLISH out, PUBACK in) and one sign. A bare round trip
 * is one publish in plus one publish out, so one message costs half a round trip. The broker is
 * one thread: the costs add up, and the bound is one over their sum.
 *
 *   ms/flow = (up + down) × msgMs + up / verifies per ms + down / signs per ms
 *
 * msgMs is the bare broker's CPU time per round trip / 2 (what a message costs Aedes itself);
 * the wall-clock variant uses 1 / (2 × round trips per second) instead, which also charges the
 * client side of the round-trip test when that, not the bare broker, is the slower part.
 */
function boundFor(b: Bound, upPerFlow: number, downPerFlow: number) {
  const verifyMs = (upPerFlow / b.crypto.verifiesPerSec) * 1000;
  const signMs = (downPerFlow / b.crypto.signsPerSec) * 1000;
  const wallMsgMs = 1000 / (2 * b.roundTripsPerSec);
  const msgMs = b.bareBrokerCpuUsPerRoundTrip === null ? wallMsgMs : b.bareBrokerCpuUsPerRoundTrip / 2000;
  const mqttMs = (upPerFlow + downPerFlow) * msgMs;
  const msPerFlow = mqttMs + verifyMs + signMs;
  const wallMsPerFlow = (upPerFlow + downPerFlow) * wallMsgMs + verifyMs + signMs;
  // The whole machine, devices included: every message is signed on one side and verified on
  // the other, and moved by both the broker and a client. Divided among all the cores.
  const messages = upPerFlow + downPerFlow;
  const clientMsgMs = b.clientCpuUsPerRoundTrip === null ? null : b.clientCpuUsPerRoundTrip / 2000;
  const machineMsPerFlow = clientMsgMs === null ? null : messages * (msgMs + clientMsgMs) + messages * (1000 / b.crypto.verifiesPerSec + 1000 / b.crypto.signsPerSec);
  return {
    upPerFlow,
    downPerFlow,
    msgMs: round(msgMs, 4),
    mqttMs: round(mqttMs, 4),
    verifyMs: round(verifyMs, 4),
    signMs: round(signMs, 4),
    msPerFlow: round(msPerFlow, 4),
    flowsPerSec: Math.round(1000 / msPerFlow),
    wallMsPerFlow: round(wallMsPerFlow, 4),
    wallFlowsPerSec: Math.round(1000 / wallMsPerFlow),
    clientMsgMs: clientMsgMs === null ? null : round(clientMsgMs, 4),
    machineCpuMsPerFlow: machineMsPerFlow === null ? null : round(machineMsPerFlow, 4),
    machineFlowsPerSec: machineMsPerFlow === null ? null : Math.round((cpus().length * 1000) / machineMsPerFlow),
  };
}

async function benchFlows(o: Options): Promise<Record<string, unknown>> {
  const began = performance.now();
  const pairs: BenchPair[] = Array.from({ length: o.pairs }, (_, i) => {
    const userId = `bench-user-${i}`;
    return { userId, login: `${userId}@tv`, terminal: benchKey("terminal"), phone: benchKey("phone") };
  });
  const services = await startServices(o);
  let s: Started;
  try {
    s = await startBroker(o, services, { pairs, idle: [] }, pairs.map((p) => p.userId));
  } catch (err) {
    killAll();
    await services.stop();
    throw err;
  }
  const load = new Load(s.configFile, s.loadProfileDir);
  load.onEvent = showProgress;
  const phases: Partial<Record<PhaseName, PhaseFigures>> = {};
  let nodePeakRssKB: (number | null)[] = [];
  let profile: string | null;
  let finished = false;
  let bound: Bound | null = null;
  try {
    progress(`bench: setup    connecting and binding ${o.pairs} pairs`);
    const ready = await load.request({ cmd: "setup" }, "ready");
    note(`bench: setup    ${ready.devices} devices connected in ${ready.connectMs} ms, ${o.pairs} pairs bound in ${ready.bindMs} ms`);
    const base = { cmd: "phase" as const, rate: 0, seconds: 0, maxSeconds: o.maxPhaseSeconds, drainSeconds: o.quick ? 2 : 5 };
    await runPhase(load, s, services, { ...base, name: "warm-up", kind: "mixed", loop: "closed", flows: o.pairs * 2 });
    if (o.phases.includes("mixed")) {
      phases.mixed =
        o.rate === null
          ? await runPhase(load, s, services, { ...base, name: "mixed", kind: "mixed", loop: "closed", flows: o.flows })
          : await runPhase(load, s, services, { ...base, name: "mixed", kind: "mixed", loop: "open", flows: 0, rate: o.rate, seconds: Math.min(o.flows / o.rate, o.maxPhaseSeconds) });
    }
    if (o.phases.includes("auto")) phases.auto = await runPhase(load, s, services, { ...base, name: "auto", kind: "auto", loop: "closed", flows: o.autoFlows });
    if (o.phases.includes("open300")) {
      phases.open300 = await runPhase(load, s, services, { ...base, name: "open300", kind: "mixed", loop: "open", flows: 0, rate: o.openRate, seconds: Math.min(o.openSeconds, o.maxPhaseSeconds) });
    }
    if (o.phases.includes("overload")) {
      const capacity = phases.mixed !== undefined && o.rate === null ? phases.mixed.result.flowsPerSec : null;
      const rate = o.overloadRate ?? (capacity !== null && capacity > 0 ? Math.round(2 * capacity) : 600);
      phases.overload = await runPhase(load, s, services, { ...base, name: "overload", kind: "mixed", loop: "open", flows: 0, rate, seconds: Math.min(o.openSeconds, o.maxPhaseSeconds) });
    }
    nodePeakRssKB = s.nodes.map((n) => statusKB(n.pid, "VmHWM"));
    // The broker goes first, so the bound is measured on a machine without it (nor its servers).
    profile = await finish(s, o);
    finished = true;
    await services.stop();
    if (o.bound) {
      load.onEvent = () => {};
      bound = await measureBound(o, o.pairs * 2, load);
    }
  } finally {
    await load.exit();
    if (!finished) {
      await finish(s, o);
      await services.stop();
    }
  }
  const brokerPeakRssKB = nodePeakRssKB.some((kb) => kb === null) ? null : nodePeakRssKB.reduce((a: number, kb) => a + kb!, 0);

  const mixed = phases.mixed;
  const auto = phases.auto;
  const open = phases.open300;
  const over = phases.overload;
  const mixedBound = bound !== null && mixed !== undefined ? boundFor(bound, mixed.upPerFlow, mixed.downPerFlow) : null;
  const autoBound = bound !== null && auto !== undefined ? boundFor(bound, auto.upPerFlow, auto.downPerFlow) : null;
  const errorCounts: Record<string, number> = {};
  for (const p of Object.values(phases)) for (const [k, n] of Object.entries(p.result.errorCounts)) errorCounts[k] = (errorCounts[k] ?? 0) + n;
  // Per node: the flows whose terminal it holds (one node: all of them), and its own CPU time over all flows.
  const byNode = s.nodes.map((n, i) => ({
    node: n.name,
    peakRssMB: nodePeakRssKB[i] == null ? null : round(nodePeakRssKB[i] / 1024, 1),
    phases: Object.fromEntries(
      Object.entries(phases).map(([name, p]) => {
        const own = p.result.byNode?.[i] ?? { completed: p.result.completed, errors: p.result.errors, flowsPerSec: p.result.flowsPerSec, latencyMs: p.result.all };
        return [name, { completed: own.completed, errors: own.errors, flowsPerSec: own.flowsPerSec, p50: own.latencyMs.p50, p99: own.latencyMs.p99, ...p.nodes[i]! }];
      }),
    ),
  }));
  const figures = {
    bench: "flows",
    quick: o.quick,
    store: services.store,
    storeServer: services.server,
    nodes: o.nodes,
    flowsPerSec: mixed?.result.flowsPerSec ?? null,
    flowsLoop: mixed === undefined ? null : o.rate === null ? "closed" : `open at ${o.rate}/s`,
    autoFlowsPerSec: auto?.result.flowsPerSec ?? null,
    p99MsAt300: open?.result.all.p99 ?? null,
    // Past capacity: what was accepted, how late; what was refused busy, how soon it heard so.
    overload:
      over === undefined
        ? null
        : {
            rate: over.result.targetRate,
            accepted: over.result.completed,
            acceptedP99Ms: over.result.all.p99,
            refused: over.result.refused,
            refusedP99Ms: over.result.refusedMs.p99,
            // The load generator's own lateness, included in both figures above.
            startLagP99Ms: over.result.startLagMs.p99,
            // From the broker's signature to the load generator's handling, per broker message.
            downLagP50Ms: over.result.downLagMs.p50,
            downLagP99Ms: over.result.downLagMs.p99,
            // The broker's own part: from a message's sending to the start of the batch that answered it.
            brokerAnsweredP99Ms: over.result.answeredMs.p99,
            brokerRefusedP99Ms: over.result.busyAnsweredMs.p99,
            unfinished: over.result.unfinished,
            errors: over.result.errors,
          },
    openRate: o.openRate,
    boundFlowsPerSec: mixedBound?.flowsPerSec ?? null,
    ratio: mixedBound === null || mixed === undefined ? null : round(mixed.result.flowsPerSec / mixedBound.flowsPerSec, 3),
    autoBoundFlowsPerSec: autoBound?.flowsPerSec ?? null,
    autoRatio: autoBound === null || auto === undefined ? null : round(auto.result.flowsPerSec / autoBound.flowsPerSec, 3),
    boundWallFlowsPerSec: mixedBound?.wallFlowsPerSec ?? null,
    // The same unavoidable work for broker and devices together, on all of this machine's cores:
    // no broker, however lean, can go faster with its load generator on the same machine.
    machineBoundFlowsPerSec: mixedBound?.machineFlowsPerSec ?? null,
    autoMachineBoundFlowsPerSec: autoBound?.machineFlowsPerSec ?? null,
    // Broker and load generator CPU per flow together, against the machine bound's (1 = no overhead anywhere).
    machineCpuMsPerFlow: mixed?.brokerCpuMsPerFlow == null || mixed.loadCpuMsPerFlow == null ? null : round(mixed.brokerCpuMsPerFlow + mixed.loadCpuMsPerFlow, 3),
    // Of the broker's CPU time per flow, the share the bound's costs account for (1 = no overhead).
    cpuEfficiency: mixedBound === null || mixed?.brokerCpuMsPerFlow == null ? null : round(mixedBound.msPerFlow / mixed.brokerCpuMsPerFlow, 3),
    autoCpuEfficiency: autoBound === null || auto?.brokerCpuMsPerFlow == null ? null : round(autoBound.msPerFlow / auto.brokerCpuMsPerFlow, 3),
    // All nodes together; byNode has each one's share.
    brokerCpuMsPerFlow: mixed?.brokerCpuMsPerFlow ?? null,
    autoBrokerCpuMsPerFlow: auto?.brokerCpuMsPerFlow ?? null,
    errors: Object.values(phases).reduce((n, p) => n + p.result.errors, 0),
    errorCounts,
    brokerPeakRssMB: brokerPeakRssKB === null ? null : round(brokerPeakRssKB / 1024, 1),
    byNode,
    targets: {
      flowsPerSec: { target: TARGETS.flowsPerSec, met: mixed === undefined ? null : mixed.result.flowsPerSec >= TARGETS.flowsPerSec },
      p99MsAt300: { target: TARGETS.p99MsAt300, met: open === undefined ? null : open.result.all.p99 <= TARGETS.p99MsAt300 },
      autoFlowsPerSec: { target: TARGETS.autoFlowsPerSec, met: auto === undefined ? null : auto.result.flowsPerSec >= TARGETS.autoFlowsPerSec },
    },
    phases: Object.fromEntries(
      Object.entries(phases).map(([name, p]) => [
        name,
        {
          loop: p.result.loop,
          targetRate: p.result.targetRate,
          completed: p.result.completed,
          seconds: p.result.seconds,
          flowsPerSec: p.result.flowsPerSec,
          capped: p.result.capped,
          // An open-loop phase whose broker could not keep up: its latencies are queueing time.
          overloaded: p.result.loop === "open" && (p.result.targetRate === null || p.result.flowsPerSec < 0.95 * p.result.targetRate || p.result.unfinished > 0),
          unfinished: p.result.unfinished,
          refused: p.result.refused,
          refusedMs: p.result.refusedMs,
          startLagMs: p.result.startLagMs,
          downLagMs: p.result.downLagMs,
          answeredMs: p.result.answeredMs,
          busyAnsweredMs: p.result.busyAnsweredMs,
          errors: p.result.errors,
          latencyMs: p.result.all,
          byMode: p.result.byMode,
          brokerCpuMsPerFlow: p.brokerCpuMsPerFlow,
          brokerCpuUtil: p.brokerCpuUtil,
          postgresCpuMsPerFlow: p.postgresCpuMsPerFlow,
          redisCpuMsPerFlow: p.redisCpuMsPerFlow,
          loadCpuMsPerFlow: p.loadCpuMsPerFlow,
          brokerDiskKBPerFlow: p.brokerDiskKBPerFlow,
          upPerFlow: p.upPerFlow,
          downPerFlow: p.downPerFlow,
          up: p.result.up,
          down: p.result.down,
        },
      ]),
    ),
    bound: bound === null ? null : { ...bound, mixed: mixedBound, auto: autoBound },
    setup: { store: services.store, nodes: o.nodes, pairs: o.pairs, devices: o.pairs * 2, flows: o.flows, autoFlows: o.autoFlows, openSeconds: o.openSeconds, maxPhaseSeconds: o.maxPhaseSeconds },
    machine: machine(),
    profile,
    loadProfile: mainThreadProfile(s.loadProfileDir),
    durationSec: round((performance.now() - began) / 1000, 1),
  };

  const storeText = services.store === "sqlite" ? "SQLite (the data dir's file)" : `PostgreSQL (${services.server ?? "-"})`;
  const lines = [
    `store: ${storeText}; ${o.nodes === 1 ? "1 node" : `${o.nodes} nodes through Redis, every payment across two nodes (terminal and phone on different ones)`}`,
    `flows/s (mixed, ${figures.flowsLoop ?? "-"}): ${figures.flowsPerSec ?? "-"}   target >= ${TARGETS.flowsPerSec}`,
    `auto flows/s: ${figures.autoFlowsPerSec ?? "-"}   target >= ${TARGETS.autoFlowsPerSec}`,
    `p99 at ${o.openRate} flows/s: ${figures.p99MsAt300 ?? "-"} ms   target <= ${TARGETS.p99MsAt300} ms`,
  ];
  if (figures.overload !== null) {
    const v = figures.overload;
    lines.push(
      `overload at ${v.rate ?? "-"} flows/s: ${v.accepted} accepted (p99 ${v.acceptedP99Ms} ms), ${v.refused} refused busy (heard within p99 ${v.refusedP99Ms} ms), ` +
        `${v.unfinished} unfinished, ${v.errors} errors; the load generator started flows late by up to p99 ${v.startLagP99Ms ?? "-"} ms (in both latencies), ` +
        `and handled broker messages p50/p99 ${v.downLagP50Ms ?? "-"}/${v.downLagP99Ms ?? "-"} ms after the broker signed them; ` +
        `the broker itself began answering devices' messages within p99 ${v.brokerAnsweredP99Ms ?? "-"} ms of their sending, and refused busy within p99 ${v.brokerRefusedP99Ms ?? "-"} ms`,
    );
  }
  for (const [name, p] of Object.entries(phases)) {
    const m = p.result.byMode;
    const step = (mode: "auto" | "prompt", k: string) => m[mode]?.stepsMs[k]?.p99 ?? "-";
    lines.push(
      `  ${name}: p50/p95/p99 ${p.result.all.p50}/${p.result.all.p95}/${p.result.all.p99} ms; p99 auto accepted ${step("auto", "accepted")} result ${step("auto", "result")}` +
        `; p99 prompt accepted ${step("prompt", "accepted")} delivered ${step("prompt", "prompt_delivered")} executing ${step("prompt", "executing")} result ${step("prompt", "result")}` +
        (p.result.loop === "open" ? `; started late p99 ${p.result.startLagMs.p99 ?? "-"} ms` : "") +
        `; broker messages handled p50/p99 ${p.result.downLagMs.p50 ?? "-"}/${p.result.downLagMs.p99 ?? "-"} ms after signing` +
        `; broker began answering p50/p99 ${p.result.answeredMs.p50 ?? "-"}/${p.result.answeredMs.p99 ?? "-"} ms after sending` +
        `; broker ${p.brokerCpuMsPerFlow ?? "-"} ms CPU/flow (${p.brokerCpuUtil ?? "-"} cores), ${p.brokerDiskKBPerFlow ?? "-"} KB written/flow, load ${p.loadCpuMsPerFlow ?? "-"} ms CPU/flow; ${p.upPerFlow} up + ${p.downPerFlow} down msgs/flow` +
        (p.postgresCpuMsPerFlow === null ? "" : `; PostgreSQL ${p.postgresCpuMsPerFlow} ms CPU/flow`) +
        (p.redisCpuMsPerFlow === null ? "" : `, Redis ${p.redisCpuMsPerFlow} ms CPU/flow`),
    );
    if (o.nodes > 1) {
      for (const n of byNode) {
        const f = n.phases[name]!;
        lines.push(`    ${n.node}: ${f.flowsPerSec} flows/s with the terminal here, p50/p99 ${f.p50}/${f.p99} ms, errors ${f.errors}; ${f.brokerCpuMsPerFlow ?? "-"} ms CPU/flow (${f.brokerCpuUtil ?? "-"} cores)`);
      }
    }
  }
  if (bound !== null) {
    lines.push(
      `bound: ${bound.roundTripsPerSec} round trips/s (bare Aedes at ${bound.bareBrokerCpuUtil ?? "-"} cores, ${bound.bareBrokerCpuUsPerRoundTrip ?? "-"} us CPU each), ` +
        `${bound.crypto.verifiesPerSec} verifies/s, ${bound.crypto.signsPerSec} signs/s` +
        ` -> mixed ${mixedBound?.flowsPerSec ?? "-"} flows/s (ratio ${figures.ratio ?? "-"}; broker CPU efficiency ${figures.cpuEfficiency ?? "-"})` +
        `, auto ${autoBound?.flowsPerSec ?? "-"} flows/s (ratio ${figures.autoRatio ?? "-"}; efficiency ${figures.autoCpuEfficiency ?? "-"})`,
    );
    lines.push(
      `machine bound (devices on the same ${cpus().length} cores, ${bound.clientCpuUsPerRoundTrip ?? "-"} us client CPU per round trip): ` +
        `mixed ${mixedBound?.machineFlowsPerSec ?? "-"} flows/s (${mixedBound?.machineCpuMsPerFlow ?? "-"} ms CPU per flow; measured broker + load ${figures.machineCpuMsPerFlow ?? "-"} ms), ` +
        `auto ${autoBound?.machineFlowsPerSec ?? "-"} flows/s (${autoBound?.machineCpuMsPerFlow ?? "-"} ms)`,
    );
  }
  if (o.nodes > 1) lines.push(`peak RSS per node: ${byNode.map((n) => `${n.node} ${n.peakRssMB ?? "-"} MB`).join(", ")}`);
  lines.push(`broker peak RSS ${figures.brokerPeakRssMB ?? "-"} MB${o.nodes > 1 ? " (all nodes)" : ""}; errors ${figures.errors}${figures.errors > 0 ? ` ${JSON.stringify(errorCounts)}` : ""}`);
  process.stdout.write(lines.join("\n") + "\n");
  if (profile !== null) process.stderr.write(`broker ${formatSummary(summarize(profile, 30))}\n`);
  const loadProfile = mainThreadProfile(s.loadProfileDir);
  if (loadProfile !== null) process.stderr.write(`load generator ${formatSummary(summarize(loadProfile, 30))}\n`);
  return figures;
}

// ── Connections ─────────────────────────────────────────────────────────────────────────────

async function benchConnections(o: Options, n: number): Promise<Record<string, unknown>> {
  const began = performance.now();
  const procs = o.loadProcs ?? Math.max(1, Math.ceil(n / 5000));
  const limits = fileLimits();
  if (limits !== null && limits.hard < n + 100) {
    throw new UsageError(
      `--connections ${n} needs ${n + 100} open files in the broker, but the hard limit (ulimit -Hn) is ${limits.hard}.\n` +
        `Raise it first: as root, ulimit -Hn ${n + 1000}; for a user, /etc/security/limits.conf (nofile); in Docker, --ulimit nofile=${n + 1000}.`,
    );
  }
  const portRange = (() => {
    try {
      const [lo, hi] = readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/).map(Number);
      return hi! - lo! + 1;
    } catch {
      return null;
    }
  })();
  if (portRange !== null && portRange < n + 100) note(`bench: warning: only ${portRange} local ports (net.ipv4.ip_local_port_range); ${n} connections to one port may run out`);

  progress(`bench: setup    generating and registering ${n} device keys`);
  const idle = Array.from({ length: n }, () => benchKey("terminal"));
  const services = await startServices(o);
  let s: Started;
  try {
    s = await startBroker(o, services, { pairs: [], idle }, []);
  } catch (err) {
    killAll();
    await services.stop();
    throw err;
  }
  const brokerPid = s.broker.pid!;
  const loads = Array.from({ length: procs }, () => new Load(s.configFile));
  let figures: Record<string, unknown>;
  let profile: string | null;
  try {
    // A few devices connect first, so the "before" figure already holds what the first
    // connections allocate once for all (mqtt-packet's 64 K message-id buffer cache, compiled
    // code, SQLite's page cache); then the rest, split over the load processes.
    const warm = Math.min(100, Math.max(1, Math.floor(n / 100)));
    const warmed = await loads[0]!.request({ cmd: "connect", from: 0, to: warm, concurrency: o.connectConcurrency }, "connected");
    if (warmed.failed > 0) throw new Error(`the first ${warm} devices could not connect: ${JSON.stringify(warmed.errorCounts)}`);
    const per = Math.ceil((n - warm) / procs);
    await sleep(1500);
    const rssBefore = statusKB(brokerPid, "VmRSS");
    const cpu0 = cpuSeconds(brokerPid);
    let done = 0;
    const counts = new Map<Load, number>();
    for (const l of loads) {
      l.onEvent = (e) => {
        if (e.event !== "progress") return;
        counts.set(l, e.done);
        done = [...counts.values()].reduce((a, b) => a + b, 0);
        progress(`bench: connect  ${warm + done}/${n} in ${(e.elapsedMs / 1000).toFixed(1)} s (${Math.round(done / Math.max(e.elapsedMs / 1000, 0.001))}/s)`);
      };
    }
    const t0 = performance.now();
    const results = await Promise.all(
      loads.map((l, i) => l.request({ cmd: "connect", from: warm + i * per, to: Math.min(n, warm + (i + 1) * per), concurrency: o.connectConcurrency }, "connected")),
    );
    const seconds = (performance.now() - t0) / 1000;
    const cpu1 = cpuSeconds(brokerPid);
    // The measured ones: the warm-up devices stay connected but are not in the figures.
    const measured = results.reduce((a, r) => a + r.connected, 0);
    const connected = warm + measured;
    const failed = results.reduce((a, r) => a + r.failed, 0);
    const errorCounts: Record<string, number> = {};
    for (const r of results) for (const [k, v] of Object.entries(r.errorCounts)) errorCounts[k] = (errorCounts[k] ?? 0) + v;
    note(`bench: connect  ${connected} connected, ${failed} failed, in ${seconds.toFixed(1)} s`);
    // RSS is sampled every second of the hold: garbage from the connects themselves goes once
    // V8's memory reducer runs on an idle heap, which takes a few seconds.
    const rssSamples: number[] = [];
    for (let t = 0; t < o.holdSeconds; t++) {
      await sleep(1000);
      const kb = statusKB(brokerPid, "VmRSS");
      if (kb !== null) rssSamples.push(kb);
      progress(`bench: hold     ${connected} idle connections, ${t + 1}/${o.holdSeconds} s, broker RSS ${kb === null ? "-" : round(kb / 1024, 1)} MB`);
    }
    const rssAfter = statusKB(brokerPid, "VmRSS");
    const hwm = statusKB(brokerPid, "VmHWM");
    const loadRss = loads.map((l) => statusKB(l.pid, "VmRSS") ?? 0).reduce((a, b) => a + b, 0);
    const perConn = rssBefore === null || rssAfter === null || measured === 0 ? null : round((rssAfter - rssBefore) / measured, 2);
    figures = {
      bench: "connections",
      store: services.store,
      nodes: 1,
      connections: connected,
      requested: n,
      failed,
      errorCounts,
      connectSeconds: round(seconds, 2),
      connectPerSec: Math.round(measured / seconds),
      warmUpConnections: warm,
      rssPerConnectionKB: perConn,
      brokerRssBeforeMB: rssBefore === null ? null : round(rssBefore / 1024, 1),
      brokerRssAfterMB: rssAfter === null ? null : round(rssAfter / 1024, 1),
      brokerPeakRssMB: hwm === null ? null : round(hwm / 1024, 1),
      brokerRssDuringHoldMB: rssSamples.map((kb) => round(kb / 1024, 1)),
      brokerCpuMsPerConnect: cpu0 === null || cpu1 === null || measured === 0 ? null : round(((cpu1 - cpu0) * 1000) / measured, 3),
      loadProcs: procs,
      loadRssMB: round(loadRss / 1024, 1),
      connectConcurrency: o.connectConcurrency,
      targets: { rssPerConnectionKB: { target: TARGETS.rssPerConnectionKB, met: perConn === null ? null : perConn <= TARGETS.rssPerConnectionKB } },
      fileLimits: limits,
      machine: machine(),
      durationSec: 0,
    };
  } finally {
    // The broker first: closing 10,000 connections from the client side would make it log each.
    await stop(s.broker, 60_000);
    await Promise.all(loads.map((l) => stop(l.child, 10_000)));
    profile = await finish(s, o);
    await services.stop();
  }
  if (profile !== null) process.stderr.write(`broker ${formatSummary(summarize(profile, 30))}\n`);
  figures.durationSec = round((performance.now() - began) / 1000, 1);
  process.stdout.write(
    `connections: ${figures.connections}/${n} (${figures.failed} failed) at ${figures.connectPerSec}/s; broker RSS ${figures.brokerRssBeforeMB} -> ${figures.brokerRssAfterMB} MB = ` +
      `${figures.rssPerConnectionKB} KB per connection (target <= ${TARGETS.rssPerConnectionKB} KB); ${figures.brokerCpuMsPerConnect} ms broker CPU per connect\n`,
  );
  return figures;
}

function machine() {
  return { cpus: cpus().length, cpuModel: cpus()[0]?.model ?? null, node: process.version, loadavg: loadavg().map((x) => round(x, 2)), sharedMachineWarning: "figures measured while other work may run; re-measure on a quiet machine" };
}

async function main(): Promise<number> {
  let o: Options | null;
  try {
    o = parseOptions(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\nRun with --help to see the options.\n`);
    return 2;
  }
  if (o === null) {
    process.stdout.write(HELP + "\n");
    return 0;
  }
  const figures = o.connections !== null ? await benchConnections(o, o.connections) : await benchFlows(o);
  note("bench: done");
  process.stdout.write(JSON.stringify(figures) + "\n");
  return 0;
}

process.once("SIGINT", () => {
  killAll();
  process.exit(130);
});

// A last resort: whatever hangs, the bench ends and takes its children with it.
setTimeout(() => {
  note("bench: gave up after 15 minutes");
  killAll();
  process.exit(1);
}, 15 * 60_000).unref();

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    note(`bench failed: ${err instanceof UsageError ? err.message : ((err as Error).stack ?? String(err))}`);
    killAll();
    process.exit(err instanceof UsageError ? 2 : 1);
  },
);
