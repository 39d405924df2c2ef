/**
 * `npm run cluster`: several broker nodes on one machine, sharing one PostgreSQL database and one
 * Redis (issue 17), everything temporary, until Ctrl-C.
 *
 * It starts PostgreSQL and Redis from Debian's packages in temporary dirs (device-sim/services.ts),
 * creates the database "handoff", makes the first node's data dir (a master key and a broker
 * identity, as the broker would on its first start, broker/data-dir.ts) and copies those key files
 * into every other node's data dir: devices pin one broker key, and every node must open what
 * another sealed. Then it starts the nodes, the compiled `npm start` program, each with its own
 * data dir and ports, and CLUSTER_FLAGS pointing it at the shared database and Redis. It prints
 * every URL once all nodes listen; on Ctrl-C (or SIGTERM) it stops the nodes, then Redis and
 * PostgreSQL, and removes every temporary dir.
 */
import { chmodSync, copyFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { ensureDataDir, loadBrokerIdentity, loadKeyring, MASTER_KEY_FILE } from "../broker/data-dir.ts";
import { UsageError, parseFlags } from "../src/cli/args.ts";
import { toBase64 } from "../src/crypto/encoding.ts";
import { BrokerProcess } from "./broker-process.ts";
import { createDatabase, startPostgres, startRedis, type PostgresService, type RedisService } from "./services.ts";

/** The broker flags that make a node a cluster member (src/config.ts: database, cluster, nodeId). */
export const CLUSTER_FLAGS = {
  /** The shared PostgreSQL database, instead of the data dir's SQLite. */
  database: "--database",
  /** The shared Redis the nodes route messages through. */
  cluster: "--cluster",
  /** The node's name in logs, metrics and Redis (node-1, node-2, …). */
  nodeId: "--node-id",
} as const;

/** The database the nodes share, on the cluster's own PostgreSQL server. */
export const CLUSTER_DATABASE = "handoff";
/** The key files every node has the same copy of (broker/data-dir.ts): the master keyring and the broker identity. */
export const SHARED_KEY_FILES = [MASTER_KEY_FILE, "broker.key", "broker.pub"] as const;
const MAX_NODES = 16;
/** pino's levels: a node logs at most at info (its "broker listening" line is how we know it is up); the cluster prints the lines at or above the chosen level. */
const LOG_LEVELS = ["trace", "debug", "info", "warn", "error", "fatal", "silent"];
const LEVEL_NUMBER: Record<string, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60, silent: Infinity };
/** How long a node may take from spawn to "broker listening". */
const LISTEN_TIMEOUT_MS = 60_000;

const USAGE = `Usage: npm run cluster -- [options]

Starts a Handoff Pay cluster on this machine: a PostgreSQL and a Redis of its own (from
Debian's packages: apt-get install postgresql redis-server), in temporary dirs on free ports
on 127.0.0.1, and N broker nodes (the program npm start runs), each with its own data dir and
ports, all sharing the PostgreSQL database "${CLUSTER_DATABASE}" (${CLUSTER_FLAGS.database}), the Redis
(${CLUSTER_FLAGS.cluster}), the master key and the broker identity key: a device may connect to any node.
It prints every node's URLs, then runs until Ctrl-C, when it stops the nodes, then Redis and
PostgreSQL, and removes every temporary dir. Nothing is kept.

Options:
  --nodes N          how many broker nodes (default 2, at most ${MAX_NODES})
  --port P           node 1's MQTT port; node i gets P+i-1 (default 0: free ports, printed)
  --ws-port P        also a WebSocket listener per node, which serves the browser pages
                     (/terminal, /phone): node 1 on P, node i on P+i-1; 0 picks free ports.
                     Without it: no WebSocket listener
  --log-level LEVEL  the nodes' log level: ${LOG_LEVELS.join(" | ")} (default warn); every line a
                     node logs is printed on stderr, prefixed with its node number
  -h, --help         this help

Exit status: 0 after Ctrl-C or SIGTERM and a clean stop; 1 if a server or a node could not
start, or a node stopped by itself (its last words are printed); 2 a bad command line.

As root, PostgreSQL runs as the postgres user (it refuses root).

Examples:
  npm run cluster
  npm run cluster -- --nodes 3 --ws-port 0
  npm run cluster -- --port 18830 --log-level info`;

const FLAGS = {
  nodes: { type: "string" },
  port: { type: "string" },
  "ws-port": { type: "string" },
  "log-level": { type: "string" },
} as const;

export interface ClusterOptions {
  readonly nodes: number;
  /** Node 1's MQTT port (node i: +i-1); 0: each node picks a free one. */
  readonly port: number;
  /** Node 1's WebSocket port (node i: +i-1); 0: free ones; null: no WebSocket listener. */
  readonly wsPort: number | null;
  readonly logLevel: string;
}

/** The command line, checked; null for --help. Throws UsageError (with the usage) when it is wrong. */
export function parseClusterArgs(argv: readonly string[]): ClusterOptions | null {
  const { values, positionals } = parseFlags(argv, FLAGS, USAGE);
  if (values.help) return null;
  if (positionals.length > 0) throw new UsageError(`unexpected argument ${positionals[0]!}\n\n${USAGE}`);
  const nodes = wholeNumber(values.nodes ?? "2", "--nodes", 1, MAX_NODES);
  const port = wholeNumber(values.port ?? "0", "--port", 0, 65535);
  const wsPort = values["ws-port"] === undefined ? null : wholeNumber(values["ws-port"], "--ws-port", 0, 65535);
  for (const [flag, base] of [["--port", port], ["--ws-port", wsPort ?? 0]] as const) {
    if (base !== 0 && base + nodes - 1 > 65535) throw new UsageError(`${flag} ${base} with ${nodes} nodes goes past port 65535`);
  }
  if (port !== 0 && wsPort !== null && wsPort !== 0 && Math.max(port, wsPort) <= Math.min(port, wsPort) + nodes - 1) {
    throw new UsageError(`--port ${port} and --ws-port ${wsPort} overlap with ${nodes} nodes (each node takes the next port)`);
  }
  const logLevel = values["log-level"] ?? "warn";
  if (!LOG_LEVELS.includes(logLevel)) throw new UsageError(`--log-level must be one of ${LOG_LEVELS.join(", ")}`);
  return { nodes, port, wsPort, logLevel };
}

function wholeNumber(text: string, flag: string, min: number, max: number): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < min || n > max) throw new UsageError(`${flag} must be a whole number from ${min} to ${max}`);
  return n;
}

/**
 * Makes `count` data dirs under `root` (node-1 ... node-N) holding the same master key and
 * broker identity: node-1's are made as the broker makes them on a first start, the others get
 * copies, private (0600) as the originals. Returns the dirs and the broker public key (base64).
 */
export function prepareNodeDirs(root: string, count: number): { dirs: string[]; brokerPublicKey: string } {
  const first = ensureDataDir(join(root, "node-1"));
  // No HANDOFF_MASTER_KEY: the nodes read master.key (the broker processes get no HANDOFF_* variable).
  loadKeyring(first, undefined);
  const identity = loadBrokerIdentity(first);
  const dirs = [first];
  for (let i = 2; i <= count; i++) {
    const dir = ensureDataDir(join(root, `node-${i}`));
    for (const file of SHARED_KEY_FILES) {
      copyFileSync(join(first, file), join(dir, file));
      chmodSync(join(dir, file), file === "broker.pub" ? 0o644 : 0o600);
    }
    dirs.push(dir);
  }
  return { dirs, brokerPublicKey: toBase64(identity.publicKey) };
}

/** The flags that point a node at the shared database and Redis. */
export function clusterArgs(pgUrl: string, redisUrl: string): string[] {
  return [CLUSTER_FLAGS.database, pgUrl, CLUSTER_FLAGS.cluster, redisUrl];
}

/**
 * The broker command line of node `index` (1-based): its data dir and ports, then `cluster`
 * (clusterArgs(): the shared database and Redis). It logs at info or below whatever --log-level
 * says: its "broker listening" line, at info, is how the cluster knows it is up.
 */
export function nodeArgs(o: ClusterOptions, index: number, dataDir: string, cluster: readonly string[]): string[] {
  const at = (base: number) => String(base === 0 ? 0 : base + index - 1);
  return [
    "--data-dir", dataDir,
    "--host", "127.0.0.1",
    "--port", at(o.port),
    "--ws-port", o.wsPort === null ? "off" : at(o.wsPort),
    "--tls-port", "off",
    "--wss-port", "off",
    "--metrics-port", "off",
    "--log-level", LEVEL_NUMBER[o.logLevel]! < LEVEL_NUMBER.info! ? o.logLevel : "info",
    CLUSTER_FLAGS.nodeId, `node-${index}`,
    ...cluster,
  ];
}

/** The demo, played across the nodes: its devices registered in the shared database, with the keys of any node's data dir. */
export function demoCommand(urls: readonly string[], dataDir: string, database: string): string {
  return `npm run demo -- --url ${urls.join(",")} --data-dir ${dataDir} --database ${database}`;
}

export interface ClusterIo {
  out(line: string): void;
  err(line: string): void;
  /** Stop on Ctrl-C and SIGTERM (the program does; tests abort `stop` instead). */
  readonly handleSignals?: boolean;
  /** Stop when this is aborted. */
  readonly stop?: AbortSignal;
  /** Hears each node's "broker listening" log line once all nodes listen (tests). */
  readonly onListening?: (nodes: readonly { dataDir: string; listening: Record<string, unknown> }[]) => void;
}

export interface ClusterDeps {
  /**
   * The cluster flags of every node (default: clusterArgs). Tests that run the nodes before the
   * broker knows those flags pass () => []: each node then keeps its own SQLite.
   */
  readonly clusterArgs?: (pgUrl: string, redisUrl: string) => string[];
}

const stdio: ClusterIo = {
  out: (line) => void process.stdout.write(line + "\n"),
  err: (line) => void process.stderr.write(line + "\n"),
};

/** Runs the cluster as the command line would, until stopped; returns the exit status. */
export async function runCluster(argv: readonly string[], io: ClusterIo = stdio, deps: ClusterDeps = {}): Promise<number> {
  let o: ClusterOptions | null;
  try {
    o = parseClusterArgs(argv);
  } catch (err) {
    if (err instanceof UsageError) {
      io.err(err.message);
      return 2;
    }
    throw err;
  }
  if (o === null) {
    io.out(USAGE);
    return 0;
  }

  const stopRequested = stopSignal(io);
  let pgService: PostgresService | null = null;
  let redisService: RedisService | null = null;
  const nodes: BrokerProcess[] = [];
  const root = mkdtempSync(join(tmpdir(), "hp-cluster-"));
  // The nodes' data dirs go even when a second Ctrl-C ends this process before cleanup does.
  const removeRoot = () => rmSync(root, { recursive: true, force: true });
  process.on("exit", removeRoot);
  let stopping = false;
  const cleanup = async () => {
    stopping = true;
    // Nodes first, while the database and Redis they finish their work with are still there.
    await Promise.all(nodes.map((n) => n.stop()));
    await Promise.all([redisService?.stop(), pgService?.stop()]);
    removeRoot();
    process.off("exit", removeRoot);
  };
  const log = (line: string) => io.err(`cluster: ${line}`);

  try {
    const started = await untilStopped(Promise.all([startPostgres({ log }), startRedis({ log })]), stopRequested);
    if (started === null) return await cleanup().then(() => 0);
    [pgService, redisService] = started;
    const pgUrl = await createDatabase(pgService.url, CLUSTER_DATABASE);
    const { dirs, brokerPublicKey } = prepareNodeDirs(root, o.nodes);
    log(`${o.nodes} data dirs in ${root}, sharing broker key ${brokerPublicKey}`);

    const shared = (deps.clusterArgs ?? clusterArgs)(pgUrl, redisService.url);
    const shown = LEVEL_NUMBER[o.logLevel]!;
    const opts = o;
    const spawned = dirs.map((dataDir, i) => {
      const node = new BrokerProcess(nodeArgs(opts, i + 1, dataDir, shared), (line) => {
        if (typeof line.level === "number" && line.level >= shown) io.err(`node ${i + 1} | ${JSON.stringify(line)}`);
      });
      nodes.push(node);
      return { dataDir, node, run: node.spawn() };
    });
    // Every node listening, or the first failure: the others are then stopped too. A node that
    // exits first says why in the rejection (its stderr tail); one that hangs, here.
    const listening = await untilStopped(
      Promise.all(
        spawned.map(({ node, run }, i) =>
          withTimeout(run.listening, LISTEN_TIMEOUT_MS, () => `did not listen within ${LISTEN_TIMEOUT_MS / 1000} s; its stderr: ${node.stderrTail.trim() || "(nothing)"}`).catch((err: Error) => {
            throw new Error(`node ${i + 1}: ${err.message}`);
          }),
        ),
      ),
      stopRequested,
    );
    if (listening === null) return await cleanup().then(() => 0);

    io.onListening?.(listening.map((l, i) => ({ dataDir: spawned[i]!.dataDir, listening: l })));
    io.out(`PostgreSQL  ${pgUrl}`);
    io.out(`Redis       ${redisService.url}`);
    const mqttUrls: string[] = [];
    listening.forEach((l, i) => {
      const urls = (l.listeners ?? {}) as Record<string, string>;
      if (urls.tcp !== undefined) mqttUrls.push(urls.tcp);
      io.out(`node ${i + 1}      ${Object.values(urls).join("  ")}  (data dir ${spawned[i]!.dataDir})`);
      if (urls.ws !== undefined) {
        const http = urls.ws.replace(/^ws/, "http");
        io.out(`            pages: ${http}/terminal  ${http}/phone`);
      }
    });
    io.out(`broker key  ${brokerPublicKey} (every node)`);
    if (mqttUrls.length > 0) io.out(`try         ${demoCommand(mqttUrls, spawned[0]!.dataDir, pgUrl)}`);
    io.out(`            kill -9 a node's pid (${spawned.map(({ run }, i) => `node ${i + 1}: ${String(run.child.pid)}`).join(", ")}) to watch its devices move to another`);
    io.out("Ctrl-C stops every node, Redis and PostgreSQL, and removes their temporary dirs.");

    // Until Ctrl-C. A node that stops by itself (or is killed, to try failover) is reported and
    // the others carry on; when none is left, the cluster ends.
    let alive = spawned.length;
    const allGone = new Promise<void>((resolve) => {
      spawned.forEach(({ run, node }, i) => {
        void run.exited.then(() => {
          if (stopping) return;
          const how = run.exit?.signal ?? `code ${String(run.exit?.code)}`;
          const tail = node.stderrTail.trim();
          alive--;
          io.err(`cluster: node ${i + 1} stopped by itself (${how}); ${alive === 0 ? "no node left" : `${alive} node${alive === 1 ? "" : "s"} carry on`}${tail === "" ? "" : `\nnode ${i + 1}'s last words:\n${tail}`}`);
          if (alive === 0) resolve();
        });
      });
    });
    const ended = await Promise.race([stopRequested.then(() => "stop" as const), allGone.then(() => "gone" as const)]);
    if (ended === "gone") {
      await cleanup();
      return 1;
    }
    io.err("cluster: stopping the nodes, then Redis and PostgreSQL");
    await cleanup();
    io.err("cluster: stopped; temporary dirs removed");
    return 0;
  } catch (err) {
    io.err(`cluster: ${(err as Error).message}`);
    await cleanup().catch((e: Error) => io.err(`cluster: cleaning up: ${e.message}`));
    return 1;
  }
}

/** `p`'s value, or null if `stop` resolves first (p's later rejection is then ignored). */
async function untilStopped<T>(p: Promise<T>, stop: Promise<void>): Promise<T | null> {
  p.catch(() => {});
  return Promise.race([p, stop.then(() => null)]);
}

/** `p`, or a rejection with `message()` (read when the time is up) after `ms`. */
async function withTimeout<T>(p: Promise<T>, ms: number, message: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(message())), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** Resolves on the first Ctrl-C or SIGTERM (when the program handles signals) or when io.stop is aborted. */
function stopSignal(io: ClusterIo): Promise<void> {
  return new Promise((resolve) => {
    const signals = ["SIGINT", "SIGTERM"] as const;
    const done = () => {
      // A second Ctrl-C while the cluster stops ends this process at once; the exit hook of
      // services.ts still kills PostgreSQL and Redis and removes their dirs.
      if (io.handleSignals) {
        for (const s of signals) process.off(s, done);
        for (const s of signals) process.once(s, () => process.exit(130));
      }
      io.stop?.removeEventListener("abort", done);
      resolve();
    };
    if (io.handleSignals) for (const s of signals) process.once(s, done);
    if (io.stop?.aborted) done();
    else io.stop?.addEventListener("abort", done, { once: true });
  });
}

const isMain = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isMain) {
  runCluster(process.argv.slice(2), { ...stdio, handleSignals: true }).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`cluster: ${(err as Error).stack ?? String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
