/** Test helpers: a real broker on port 0 with a temporary data dir, and registered devices. */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino, { type Logger } from "pino";
import { startBroker, type BrokerHandle } from "../broker/server.ts";
import { Device } from "../device-sim/device.ts";
import { newDeviceKey, type DeviceKey } from "../device-sim/keyfile.ts";
import { TCP_ONLY, brokerConfig, type BrokerConfig } from "../src/config.ts";
import { toBase64 } from "../src/crypto/encoding.ts";
import { registerDevice } from "../src/service/devices.ts";
import { openDatabase, type Db } from "../src/store/db.ts";

export interface TestBroker extends BrokerHandle {
  /** Registers a device and returns its key. */
  register(kind: "terminal" | "phone", opts?: { name?: string; userId?: string }): DeviceKey;
  /** A connected device client (closed by stop()). */
  device(key: DeviceKey, opts?: { connect?: boolean; reconnect?: boolean }): Promise<Device>;
  /** Closes every device, the broker, and removes the data dir (unless keepData). */
  stop(opts?: { keepData?: boolean }): Promise<void>;
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
}

export async function startTestBroker(
  overrides: Partial<BrokerConfig> = {},
  dataDir: string = tempDir(),
  onFatal?: (err: Error) => void,
  deps: TestBrokerDeps = {},
): Promise<TestBroker> {
  const config = brokerConfig({}, {}, { port: 0, ...TCP_ONLY, dataDir, logLevel: "silent", ...overrides });
  const log = deps.log ?? pino({ level: process.env.TEST_LOG_LEVEL ?? "silent" });
  const handle = await startBroker(config, {
    log,
    ...(onFatal === undefined ? {} : { onFatal }),
    ...(deps.clock === undefined ? {} : { clock: deps.clock }),
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
