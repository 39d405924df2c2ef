/** Test helpers: a real broker on port 0 with a temporary data dir, registered devices, and the programs run as a person runs them. */
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import pino, { type Logger } from "pino";
import { startBroker, type BrokerHandle } from "../broker/server.ts";
import { Device } from "../device-sim/device.ts";
import { newDeviceKey, type DeviceKey } from "../device-sim/keyfile.ts";
import { TCP_ONLY, brokerConfig, type BrokerConfig } from "../src/config.ts";
import { toBase64 } from "../src/crypto/encoding.ts";
import { registerDevice } from "../src/service/devices.ts";
import { openDatabase, type Db } from "../src/store/db.ts";
import { freshPostgresDatabase } from "./services.ts";
import type { WalIo } from "../src/store/wal-sync.ts";

export interface TestBroker extends BrokerHandle {
  /** Registers a device and returns its key. */
  register(kind: "terminal" | "phone", opts?: { name?: string; userId?: string }): DeviceKey;
  /** A connected device client (closed by stop()). */
  device(key: DeviceKey, opts?: { connect?: boolean; reconnect?: boolean }): Promise<Device>;
  /** Closes every device, the broker, and removes the data dir (unless keepData). */
  stop(opts?: { keepData?: boolean }): Promise<void>;
}

/** The repository root: where the npm scripts run. */
export const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** The command line an npm script uses: the compiled program (dist/, built by vitest's global setup) through scripts/run.mjs, no TypeScript loader. */
function programArgs(entry: string, args: readonly string[]): string[] {
  return ["--enable-source-maps", join(ROOT, "scripts/run.mjs"), entry, ...args];
}

/**
 * Starts a program as its npm script does (`entry` is its source path without .ts, e.g.
 * "device-sim/cli"), from the repository root, with `env` (default: this process's) and its
 * stdin, stdout and stderr piped to the test.
 */
export function spawnProgram(entry: string, args: readonly string[], opts: { env?: NodeJS.ProcessEnv } = {}): ChildProcessWithoutNullStreams {
  return spawn(process.execPath, programArgs(entry, args), { cwd: ROOT, env: opts.env ?? process.env });
}

/**
 * Runs a program (as spawnProgram, stdin empty) to its end without blocking this process, whose
 * event loop may serve the broker: its exit code (null if a signal ended it, as after
 * `timeoutMs`, default 60 s, so that a hung program does not outlive its test) and what it printed: stdout, stderr, and `output`, the one then the other.
 */
export function runProgram(entry: string, args: readonly string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<{ code: number | null; stdout: string; stderr: string; output: string }> {
  const child = spawn(process.execPath, programArgs(entry, args), { cwd: ROOT, env: opts.env ?? process.env, stdio: ["ignore", "pipe", "pipe"], timeout: opts.timeoutMs ?? 60_000 });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => child.on("close", (code) => resolve({ code, stdout, stderr, output: stdout + stderr })));
}

export function tempDir(prefix = "hp-test-"): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** A migrated database in a fresh temporary dir; `dispose` closes it and removes the dir. */
export function openTempDb(prefix = "hp-db-"): { db: Db; dispose(): void } {
  const dir = tempDir(prefix);
  const db = openDatabase(join(dir, "handoff.db"));
  return {
    db,
    dispose() {
      db.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** What a test may inject into the broker: a clock it moves instead of sleeping, a log it reads. */
export interface TestBrokerDeps {
  readonly clock?: () => number;
  readonly log?: Logger;
  readonly walIo?: WalIo;
}

export async function startTestBroker(
  overrides: Partial<BrokerConfig> = {},
  dataDir: string = tempDir(),
  onFatal?: (err: Error) => void,
  deps: TestBrokerDeps = {},
): Promise<TestBroker> {
  const database = overrides.database ?? (await testDatabase(dataDir));
  // Admission off unless a test asks for it (test/e2e/admission.test.ts): files running side by
  // side on two cores delay a message by tens of ms, and a `busy` there would be noise.
  const config = brokerConfig({}, {}, { port: 0, ...TCP_ONLY, dataDir, logLevel: "silent", database, busyAfterMs: 0, ...overrides });
  const log = deps.log ?? pino({ level: process.env.TEST_LOG_LEVEL ?? "silent" });
  const handle = await startBroker(config, {
    log,
    ...(onFatal === undefined ? {} : { onFatal }),
    ...(deps.clock === undefined ? {} : { clock: deps.clock }),
    ...(deps.walIo === undefined ? {} : { walIo: deps.walIo }),
  });
  const devices: Device[] = [];
  let userSeq = 0;
  return {
    ...handle,
    // The broker reloads its keyring on rotation: read it live, not the copy the spread made.
    get keyring() {
      return handle.keyring;
    },
    // Likewise the certificate, which a reload replaces.
    get certificate() {
      return handle.certificate;
    },
    register(kind, opts = {}) {
      const key = newDeviceKey(kind);
      const userId = kind === "phone" ? (opts.userId ?? `user-${++userSeq}`) : undefined;
      const res = registerDevice(handle.db, handle.keyring, { kind, name: opts.name ?? `test ${kind}`, publicKey: toBase64(key.pair.publicKey), ...(userId ? { userId } : {}) }, Date.now());
      if (!res.ok) throw new Error(res.error);
      return key;
    },
    async device(key, opts = {}) {
      const d = new Device({ url: handle.url, key, brokerPublicKey: handle.publicKey, reconnect: opts.reconnect ?? false });
      devices.push(d);
      if (opts.connect !== false) await d.connect();
      return d;
    },
    async stop(opts = {}) {
      await Promise.all(devices.map((d) => d.close()));
      await handle.close();
      if (!opts.keepData) rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

const databases = new Map<string, string>();
/**
 * With HANDOFF_TEST_PG=1, the PostgreSQL database of a data dir on the run's shared server (one
 * per dir: a restart finds its data), so `HANDOFF_TEST_PG=1 npx vitest run test/e2e` plays the
 * broker's tests on PostgreSQL; else "" (SQLite).
 */
async function testDatabase(dataDir: string): Promise<string> {
  const flag = process.env.HANDOFF_TEST_PG;
  if (flag === undefined || flag === "" || flag === "0") return "";
  let url = databases.get(dataDir);
  if (url === undefined) {
    url = await freshPostgresDatabase();
    databases.set(dataDir, url);
  }
  return url;
}

/** True if something accepts TCP connections on 127.0.0.1:port. */
export function acceptsTcp(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ port, host: "127.0.0.1" });
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}
