/**
 * PostgreSQL and Redis for tests, `npm run cluster` and CI: Debian's own server binaries, started
 * by this process in a temporary directory, on 127.0.0.1 and a free port, and removed again.
 * Nothing of the machine's own PostgreSQL or Redis (a service, /etc, /var/lib) is used or touched.
 *
 *   startPostgres(): initdb (-A trust, superuser "postgres") in <tmp>/data, then the postmaster
 *     on 127.0.0.1:<port>, its unix socket in <tmp>, fsync on (durability is what the cluster
 *     store is for, so the tests run against a server that syncs). Ready once a client connects.
 *   startRedis(): redis-server on 127.0.0.1:<port>, no snapshots, no append-only file, its
 *     working dir a temporary one. Ready once it answers PING.
 *   createDatabase(url, name): a new, empty database on that server; its URL.
 *
 * Binaries: the newest /usr/lib/postgresql/<version>/bin (initdb, postgres) and
 * /usr/bin/redis-server, where Debian's packages put them (apt-get install postgresql
 * redis-server). initdb and postgres refuse to run as root: as root, this module runs them as the
 * `postgres` user (the postgresql package creates it), through spawn's uid/gid (what runuser would
 * do, without a wrapper process between us and the postmaster to relay signals), and gives that
 * user the temporary dir.
 *
 * Each server is its own process group (spawned detached), so a Ctrl-C on the terminal reaches
 * only this process, which stops the servers in order. stop() asks politely (postgres: SIGINT, a
 * fast shutdown; redis: SIGTERM), SIGKILLs the group after a grace period, and removes the dir.
 * If the process exits without stop() (process.exit, an uncaught error, or SIGINT/SIGTERM that no
 * one else handles), an exit hook SIGKILLs every server still running and removes its dir. A
 * SIGKILL of this process leaves them running: nothing can run then.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { accessSync, chownSync, constants, existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import pg from "pg";
import { freePort } from "./broker-process.ts";

/** What to install when a binary is missing (Debian and Ubuntu package names). */
export const INSTALL_HINT = "apt-get install postgresql redis-server";
export const POSTGRES_ROOT = "/usr/lib/postgresql";
export const REDIS_SERVER = "/usr/bin/redis-server";

export class ServiceError extends Error {}

export interface ServiceOptions {
  /** Hears progress lines ("postgres: initdb in /tmp/... (1.1 s)"); silent without it. */
  readonly log?: (line: string) => void;
  /** How long start-up may take before it fails with the server's log tail (default 60 s). */
  readonly timeoutMs?: number;
}

export interface PostgresService {
  /** postgres://postgres@127.0.0.1:<port>/postgres (trust auth: no password). */
  readonly url: string;
  readonly port: number;
  /** The temporary dir: data/ (the cluster) and the unix socket. */
  readonly dir: string;
  /** Stops the server and removes `dir`; safe to call more than once. */
  stop(): Promise<void>;
}

export interface RedisService {
  /** redis://127.0.0.1:<port> */
  readonly url: string;
  readonly port: number;
  /** The temporary working dir. */
  readonly dir: string;
  /** Stops the server and removes `dir`; safe to call more than once. */
  stop(): Promise<void>;
}

/** The bin dir of the newest PostgreSQL under /usr/lib/postgresql with initdb and postgres; throws ServiceError naming the package if none. */
export function findPostgresBin(root: string = POSTGRES_ROOT): string {
  const versions = existsSync(root)
    ? readdirSync(root)
        .filter((v) => /^\d+(\.\d+)?$/.test(v))
        .sort((a, b) => Number(b) - Number(a))
    : [];
  for (const v of versions) {
    const bin = join(root, v, "bin");
    if (isExecutable(join(bin, "initdb")) && isExecutable(join(bin, "postgres"))) return bin;
  }
  throw new ServiceError(`PostgreSQL's server programs (initdb, postgres) are not in ${root}/<version>/bin: install them with \`${INSTALL_HINT}\` (as root, or with sudo)`);
}

/** /usr/bin/redis-server; throws ServiceError naming the package if it is missing. */
export function findRedisServer(path: string = REDIS_SERVER): string {
  if (isExecutable(path)) return path;
  throw new ServiceError(`${path} is missing: install it with \`${INSTALL_HINT}\` (as root, or with sudo)`);
}

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Who runs the PostgreSQL programs: this process's user, or `postgres` when we are root. */
function postgresUser(): { uid: number; gid: number } | null {
  if (process.getuid?.() !== 0) return null;
  let ids: string[];
  try {
    ids = [execFileSync("id", ["-u", "postgres"], { encoding: "utf8" }), execFileSync("id", ["-g", "postgres"], { encoding: "utf8" })];
  } catch {
    throw new ServiceError(`running as root, and there is no \`postgres\` user to run PostgreSQL as (initdb and postgres refuse root): \`${INSTALL_HINT}\` creates it`);
  }
  return { uid: Number(ids[0]!.trim()), gid: Number(ids[1]!.trim()) };
}

// ---------------------------------------------------------------------------------------------
// Processes: one registry, for stop() and for the exit hook.

interface Running {
  readonly name: string;
  readonly child: ChildProcess;
  readonly dir: string;
  /** Whether it has exited (the exit event fired). */
  readonly exited: boolean;
  readonly exit: Promise<void>;
  /** The last few kilobytes the server wrote (stdout and stderr): for errors. */
  tail: string;
}

const running = new Set<Running>();
let hooksInstalled = false;

/** SIGKILLs a server's process group (ignoring one that is gone). */
function killGroup(r: Running): void {
  if (r.child.pid === undefined) return;
  try {
    process.kill(-r.child.pid, "SIGKILL");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ESRCH") throw err;
  }
}

function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 50 });
}

/** Synchronous: what can still run in an exit handler. */
function killAllNow(): void {
  for (const r of running) {
    killGroup(r);
    removeDir(r.dir);
  }
  running.clear();
}

function installHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on("exit", killAllNow);
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    const onSignal = () => {
      // Someone else handles this signal (the cluster program stops its brokers first, then
      // calls stop()): leave it to them; process.exit still ends in the exit hook.
      if (process.listenerCount(signal) > 1) return;
      killAllNow();
      // Then die of the signal, as this process would have without our listener.
      process.removeListener(signal, onSignal);
      process.kill(process.pid, signal);
    };
    process.on(signal, onSignal);
  }
}

function track(name: string, child: ChildProcess, dir: string): Running {
  installHooks();
  let failed = false;
  const r: Running = {
    name,
    child,
    dir,
    get exited() {
      return failed || child.exitCode !== null || child.signalCode !== null;
    },
    exit: new Promise<void>((resolve) => {
      child.once("exit", () => resolve());
      // Could not be started at all (no exit event follows): say so where errors look.
      child.once("error", (err) => {
        failed = true;
        r.tail += `\n${err.message}`;
        resolve();
      });
    }),
    tail: "",
  };
  const keep = (d: Buffer) => {
    r.tail = (r.tail + d.toString()).slice(-4000);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  running.add(r);
  return r;
}

/** Polite signal, then SIGKILL to the group after `graceMs`; then the dir goes. */
async function stopRunning(r: Running, polite: NodeJS.Signals, graceMs: number): Promise<void> {
  if (!r.exited) r.child.kill(polite);
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([r.exit, new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs)))]);
  clearTimeout(timer);
  // Whatever is left of the group (a backend the postmaster did not reap, or all of it).
  killGroup(r);
  await r.exit;
  running.delete(r);
  removeDir(r.dir);
}

function tailOf(r: Running): string {
  const t = r.tail.trim();
  return t === "" ? "(it wrote nothing)" : `its last lines:\n${t.split("\n").slice(-15).join("\n")}`;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Polls `ready` until it resolves true; fails when the process exits first or `timeoutMs` passes,
 * with the server's log tail. `ready` is a real client attempt, not a timed guess.
 */
async function waitReady(r: Running, what: string, timeoutMs: number, ready: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (r.exited) throw new ServiceError(`${what} exited (${exitText(r.child)}) before it accepted connections; ${tailOf(r)}`);
    if (await ready()) return;
    if (Date.now() > deadline) throw new ServiceError(`${what} did not accept connections within ${timeoutMs} ms; ${tailOf(r)}`);
    await sleep(50);
  }
}

function exitText(child: ChildProcess): string {
  return child.signalCode !== null ? `signal ${child.signalCode}` : `code ${String(child.exitCode)}`;
}

const ms = (t0: number) => `${((performance.now() - t0) / 1000).toFixed(2)} s`;

/** A port was taken between freePort() and the server's bind: worth another try with another port. */
const PORT_TAKEN = /address already in use|could not bind|could not create any TCP\/IP sockets/i;

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/** Starts a throw-away PostgreSQL server (see the top of this file). */
export async function startPostgres(opts: ServiceOptions = {}): Promise<PostgresService> {
  const log = opts.log ?? (() => {});
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const bin = findPostgresBin();
  const user = postgresUser();
  const ids = user === null ? {} : { uid: user.uid, gid: user.gid };
  const dir = mkdtempSync(join(tmpdir(), "hp-pg-"));
  try {
    if (user !== null) chownSync(dir, user.uid, user.gid);
    const data = join(dir, "data");
    let t0 = performance.now();
    // Runs as the server's user; its output only matters when it fails.
    await new Promise<void>((resolve, reject) => {
      const child = spawn(join(bin, "initdb"), ["-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-instructions"], { ...ids, cwd: dir, env: serverEnv(), stdio: ["ignore", "pipe", "pipe"] });
      let out = "";
      child.stdout.on("data", (d: Buffer) => (out += d.toString()));
      child.stderr.on("data", (d: Buffer) => (out += d.toString()));
      child.once("error", reject);
      child.once("close", (code) => (code === 0 ? resolve() : reject(new ServiceError(`initdb failed (code ${String(code)}) in ${data}:\n${out.trim().split("\n").slice(-15).join("\n")}`))));
    });
    log(`postgres: initdb in ${dir} (${ms(t0)})`);
    for (let attempt = 1; ; attempt++) {
      t0 = performance.now();
      const port = await freePort();
      const args = [
        "-D", data,
        "-p", String(port),
        "-c", "listen_addresses=127.0.0.1",
        "-c", `unix_socket_directories=${dir}`,
        // Durability is the point: the cluster store's commits must reach the disk here too.
        "-c", "fsync=on",
        "-c", "synchronous_commit=on",
        "-c", "shared_buffers=16MB",
        // Every test file opens its own pools, and every cluster node its own.
        "-c", "max_connections=200",
      ];
      const child = spawn(join(bin, "postgres"), args, { ...ids, cwd: dir, env: serverEnv(), detached: true, stdio: ["ignore", "pipe", "pipe"] });
      const r = track("postgres", child, dir);
      const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
      try {
        await waitReady(r, `postgres on port ${port}`, timeoutMs, () => canConnect(url));
      } catch (err) {
        killGroup(r);
        await r.exit;
        running.delete(r);
        if (attempt < 3 && PORT_TAKEN.test(r.tail)) {
          log(`postgres: port ${port} was taken meanwhile; another one`);
          continue;
        }
        throw err;
      }
      log(`postgres: ${url} ready (${ms(t0)}), data in ${data}`);
      let stopping: Promise<void> | null = null;
      return {
        url,
        port,
        dir,
        // SIGINT: fast shutdown (clients are disconnected, a checkpoint is written).
        stop: () => (stopping ??= stopRunning(r, "SIGINT", 15_000)),
      };
    }
  } catch (err) {
    removeDir(dir);
    throw err;
  }
}

/** The servers' environment: ours, without the libpq variables that could point initdb or postgres elsewhere, and a locale that exists. */
function serverEnv(): NodeJS.ProcessEnv {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("PG")));
  return { ...env, LC_ALL: "C", LANG: "C" };
}

/** One real connection attempt: true if the server accepted it and answered a query. */
async function canConnect(url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000 });
  // A server shutting down mid-connect emits 'error' on the client: heard here, not uncaught.
  client.on("error", () => {});
  try {
    await client.connect();
    await client.query("SELECT 1");
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => {});
  }
}

/** PostgreSQL identifiers this module creates: lower case, digits and _, at most 63 bytes. */
const DB_NAME = /^[a-z_][a-z0-9_]{0,62}$/;

/**
 * Creates an empty database `name` on the server at `pgUrl` (which names any database of it)
 * and returns the URL of the new one. `name`: lower-case letters, digits and _, at most 63.
 */
export async function createDatabase(pgUrl: string, name: string): Promise<string> {
  if (!DB_NAME.test(name)) throw new ServiceError(`database name ${JSON.stringify(name)}: use lower-case letters, digits and _ (at most 63, not starting with a digit)`);
  const client = new pg.Client({ connectionString: pgUrl });
  client.on("error", () => {});
  await client.connect();
  try {
    // The name is checked above: quoting it is enough, and CREATE DATABASE takes no parameters.
    await client.query(`CREATE DATABASE "${name}"`);
  } finally {
    await client.end();
  }
  const url = new URL(pgUrl);
  url.pathname = `/${name}`;
  return url.href;
}

// ---------------------------------------------------------------------------------------------
// Redis

/** Starts a throw-away Redis server (see the top of this file). */
export async function startRedis(opts: ServiceOptions = {}): Promise<RedisService> {
  const log = opts.log ?? (() => {});
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const server = findRedisServer();
  const dir = mkdtempSync(join(tmpdir(), "hp-redis-"));
  try {
    for (let attempt = 1; ; attempt++) {
      const t0 = performance.now();
      const port = await freePort();
      const args = ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir, "--daemonize", "no", "--logfile", ""];
      const child = spawn(server, args, { cwd: dir, detached: true, stdio: ["ignore", "pipe", "pipe"] });
      const r = track("redis", child, dir);
      try {
        await waitReady(r, `redis-server on port ${port}`, timeoutMs, () => redisPing(port));
      } catch (err) {
        killGroup(r);
        await r.exit;
        running.delete(r);
        if (attempt < 3 && PORT_TAKEN.test(r.tail)) {
          log(`redis: port ${port} was taken meanwhile; another one`);
          continue;
        }
        throw err;
      }
      const url = `redis://127.0.0.1:${port}`;
      log(`redis: ${url} ready (${ms(t0)})`);
      let stopping: Promise<void> | null = null;
      return { url, port, dir, stop: () => (stopping ??= stopRunning(r, "SIGTERM", 10_000)) };
    }
  } catch (err) {
    removeDir(dir);
    throw err;
  }
}

/** One PING over a raw connection: true on +PONG. */
export function redisPing(port: number, host = "127.0.0.1"): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ port, host });
    let reply = "";
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(2000, () => done(false));
    socket.once("error", () => done(false));
    socket.once("connect", () => socket.write("PING\r\n"));
    socket.on("data", (d: Buffer) => {
      reply += d.toString();
      if (reply.includes("\r\n")) done(reply.startsWith("+PONG"));
    });
    socket.once("end", () => done(false));
  });
}
