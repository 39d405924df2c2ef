/**
 * The programs as a person runs them: the broker process (flags, logs, signals, data dir lock),
 * the admin CLI and the simulator's keygen.
 */
import { existsSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { adminMain } from "../../broker/admin.ts";
import { TCP_ONLY_FLAGS } from "../../src/config.ts";
import { Device } from "../../device-sim/device.ts";
import { readKeyFile } from "../../device-sim/keyfile.ts";
import { fromBase64 } from "../../src/crypto/encoding.ts";
import { runProgram, spawnProgram, tempDir } from "../helpers.ts";
import { onJsonLines } from "../../device-sim/util.ts";

/** Starts the broker program and resolves once it logs its port. */
async function startProcess(dataDir: string | null, env: NodeJS.ProcessEnv = {}) {
  const child = spawnProgram("broker/main", dataDir === null ? [] : ["--port", "0", ...TCP_ONLY_FLAGS, "--data-dir", dataDir], { env: { ...process.env, ...env } });
  const lines: Record<string, unknown>[] = [];
  const port = await new Promise<number>((resolve, reject) => {
    onJsonLines(child.stdout, (obj) => {
      lines.push(obj);
      if (typeof obj.port === "number" && String(obj.msg).startsWith("broker listening")) resolve(obj.port);
    });
    child.on("close", (code) => reject(new Error(`broker exited with ${code}`)));
  });
  const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
  return { child, port, lines, exited };
}

const dirs: string[] = [];
function dir(): string {
  const d = tempDir();
  dirs.push(d);
  return d;
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe("broker program", () => {
  it("creates the data dir with a 0600 master key and broker identity, logs connections, and exits 0 on SIGTERM", async () => {
    const dataDir = join(dir(), "data");
    const broker = await startProcess(dataDir);
    expect(statSync(join(dataDir, "master.key")).mode & 0o777).toBe(0o600);
    expect(statSync(join(dataDir, "broker.key")).mode & 0o777).toBe(0o600);
    expect(existsSync(join(dataDir, "handoff.db"))).toBe(true);

    const keyFile = join(dataDir, "..", "tv.key");
    const out: string[] = [];
    const keygen = await runProgram("device-sim/cli", ["keygen", "--out", keyFile, "--kind", "terminal", "--name", "TV", "--register", "--data-dir", dataDir]);
    expect(keygen.code).toBe(0);
    const key = readKeyFile(keyFile);
    expect(keygen.stdout.trim()).toBe(key.deviceId);
    expect(await adminMain(["device", "show", key.deviceId, "--data-dir", dataDir, "--json"], (l) => out.push(l))).toBe(0);
    expect(JSON.parse(out[0]!)).toMatchObject({ id: key.deviceId, kind: "terminal", name: "TV", status: "active" });

    const brokerPub = fromBase64(readFileSync(join(dataDir, "broker.pub"), "utf8").trim())!;
    const device = new Device({ url: `mqtt://127.0.0.1:${broker.port}`, key, brokerPublicKey: brokerPub, reconnect: false });
    await device.connect();
    expect((await device.call("ping", {})).type).toBe("pong");
    await device.close();

    broker.child.kill("SIGTERM");
    expect(await broker.exited).toBe(0);
    const msgs = broker.lines.map((l) => l.msg);
    expect(msgs).toContain("connection accepted");
    expect(msgs).toContain("disconnected");
    expect(msgs).toContain("broker stopped");
    // The master key never reaches a log.
    const masterKey = JSON.parse(readFileSync(join(dataDir, "master.key"), "utf8")) as { keys: Record<string, string> };
    expect(JSON.stringify(broker.lines)).not.toContain(masterKey.keys["1"]);
  });

  it("refuses to start a second broker on the same data dir, naming the reason", async () => {
    const dataDir = dir();
    const first = await startProcess(dataDir);
    const second = await runProgram("broker/main", ["--port", "0", ...TCP_ONLY_FLAGS, "--data-dir", dataDir]);
    expect(second.code).toBe(1);
    expect(second.stderr).toContain("another broker is already running");
    first.child.kill("SIGINT");
    expect(await first.exited).toBe(0);
  });

  it("refuses a data dir whose database has lost its master key file, instead of making a new key", async () => {
    const dataDir = dir();
    const first = await startProcess(dataDir);
    first.child.kill("SIGTERM");
    expect(await first.exited).toBe(0);
    rmSync(join(dataDir, "master.key"));
    const again = await runProgram("broker/main", ["--port", "0", ...TCP_ONLY_FLAGS, "--data-dir", dataDir]);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain("has a database but no master.key");
    await expect(adminMain(["device", "list", "--data-dir", dataDir], () => {})).rejects.toThrow("no master.key");
    expect(existsSync(join(dataDir, "master.key"))).toBe(false);
  });

  it("prints help with every option, and exits 2 on a bad flag or value", async () => {
    const help = await runProgram("broker/main", ["--help"]);
    expect(help.code).toBe(0);
    for (const flag of ["--host", "--port", "--data-dir", "--log-level", "HANDOFF_MASTER_KEY"]) expect(help.stdout).toContain(flag);
    const bad = await runProgram("broker/main", ["--bogus"]);
    expect(bad.code).toBe(2);
    const badPort = await runProgram("broker/main", ["--port", "99999"]);
    expect(badPort.code).toBe(2);
    expect(badPort.stderr).toContain("--port");
    // Three program starts through the TypeScript loader: ~5 s on a loaded 2-core machine.
  }, 30_000);

  it("takes its options from the environment when no flag is given", async () => {
    const dataDir = dir();
    const broker = await startProcess(null, { HANDOFF_PORT: "0", HANDOFF_TLS_PORT: "off", HANDOFF_WS_PORT: "off", HANDOFF_WSS_PORT: "off", HANDOFF_METRICS_PORT: "off", HANDOFF_DATA_DIR: dataDir, HANDOFF_LOG_LEVEL: "debug" });
    const start = broker.lines.find((l) => String(l.msg).startsWith("broker listening"))!;
    expect(start.dataDir).toBe(dataDir);
    expect(start.port).not.toBe(1883);
    expect(start.level).toBe(30);
    broker.child.kill("SIGTERM");
    expect(await broker.exited).toBe(0);
  });
});

describe("admin CLI", () => {
  it("adds, lists, shows and revokes devices, with clear errors for bad input", async () => {
    const dataDir = dir();
    const out: string[] = [];
    const admin = (...args: string[]) => adminMain([...args, "--data-dir", dataDir], (l) => out.push(l));
    const pub = "A".repeat(43) + "=";
    expect(await admin("device", "add", "--kind", "phone", "--name", "Alice's phone", "--public-key", pub, "--user", "alice")).toBe(0);
    const id = out.pop()!;
    expect(id).toMatch(/^d[a-z2-7]{19}$/);
    expect(await admin("device", "list", "--json")).toBe(0);
    expect(JSON.parse(out.pop()!)).toEqual([expect.objectContaining({ id, kind: "phone", user: "alice", status: "active" })]);
    expect(await admin("device", "revoke", id)).toBe(0);
    await expect(admin("device", "revoke", id)).rejects.toThrow("already revoked");
    await expect(admin("device", "add", "--kind", "phone", "--name", "x", "--public-key", "nope", "--user", "a")).rejects.toThrow("32-byte Ed25519 public key");
    await expect(admin("device", "add", "--kind", "phone", "--name", "x", "--public-key", "B".repeat(43) + "=")).rejects.toThrow("needs --user");
    await expect(admin("device", "add", "--kind", "phone", "--name", "x", "--public-key", pub, "--user", "b")).rejects.toThrow("already registered");
    await expect(admin("device", "add", "--kind", "fridge", "--name", "x", "--public-key", "C".repeat(43) + "=")).rejects.toThrow();
    await expect(admin("device", "show", "dnope")).rejects.toThrow("no device dnope");
    await expect(admin("device", "frobnicate")).rejects.toThrow("unknown device command");
  });

  it("never stores a phone's user id in clear", async () => {
    const dataDir = dir();
    expect(await adminMain(["device", "add", "--kind", "phone", "--name", "Zelda's handset", "--public-key", "D".repeat(43) + "=", "--user", "zelda-unique-user-7", "--data-dir", dataDir], () => {})).toBe(0);
    // Every file in the data dir, whatever it is called: the database, its WAL, the keys.
    const files = readdirSync(dataDir).map((f) => join(dataDir, f)).filter((f) => statSync(f).isFile());
    const bytes = Buffer.concat(files.map((f) => readFileSync(f)));
    // The check reads the right bytes: what is stored in clear (the phone's name) is found.
    expect(bytes.includes("Zelda's handset")).toBe(true);
    expect(bytes.includes("zelda-unique-user-7")).toBe(false);
  });

  it("manages merchants and the ledger: idempotent credits by reference, balances that sum to zero, clear errors", async () => {
    const dataDir = dir();
    const out: string[] = [];
    const admin = (...args: string[]) => adminMain([...args, "--data-dir", dataDir, "--json"], (l) => out.push(l));
    expect(await admin("merchant", "add", "--id", "coffee-corner", "--name", "Coffee Corner")).toBe(0);
    await expect(admin("merchant", "add", "--id", "coffee-corner", "--name", "Again")).rejects.toThrow("already exists");
    await expect(admin("merchant", "add", "--id", "Bad Id", "--name", "x")).rejects.toThrow("merchant id");
    expect(await admin("ledger", "credit", "--user", "alice", "--amount", "500.00", "--currency", "CNY", "--reference", "r1")).toBe(0);
    expect(JSON.parse(out.pop()!)).toMatchObject({ balanceMinor: 50000, repeated: false });
    expect(await admin("ledger", "credit", "--user", "alice", "--amount", "500.00", "--currency", "cny", "--reference", "r1")).toBe(0);
    expect(JSON.parse(out.pop()!)).toMatchObject({ balanceMinor: 50000, repeated: true });
    await expect(admin("ledger", "credit", "--user", "alice", "--amount", "1.005", "--currency", "CNY")).rejects.toThrow("write an amount like");
    await expect(admin("ledger", "credit", "--user", "alice", "--amount=-1", "--currency", "CNY")).rejects.toThrow("write an amount like");
    expect(await admin("ledger", "balance")).toBe(0);
    expect(JSON.parse(out.pop()!).sums).toEqual({ CNY: 0 });
    expect(await admin("ledger", "balance", "--user", "alice")).toBe(0);
    expect(JSON.parse(out.pop()!).wallets).toEqual([{ currency: "CNY", balanceMinor: 50000 }]);
    expect(await admin("ledger", "transfers")).toBe(0);
    expect(JSON.parse(out.pop()!)).toHaveLength(1);
  });

  it("rotates, reseals and removes master key versions from the command line", async () => {
    const dataDir = dir();
    const out: string[] = [];
    const admin = (...args: string[]) => adminMain([...args, "--data-dir", dataDir, "--json"], (l) => out.push(l));
    await admin("device", "add", "--kind", "phone", "--name", "P", "--public-key", "E".repeat(43) + "=", "--user", "u1");
    expect(await admin("keys", "rotate")).toBe(0);
    expect(JSON.parse(out.pop()!)).toEqual({ current: 2, versions: [1, 2] });
    expect(await admin("keys", "rotate")).toBe(0);
    await expect(admin("keys", "remove", "2")).resolves.toBe(0); // nothing was sealed under 2
    await expect(admin("keys", "remove", "3")).rejects.toThrow("current");
    await expect(admin("keys", "remove", "1")).rejects.toThrow("blind indexes");
    expect(await admin("keys", "list")).toBe(0);
    expect(JSON.parse(out.pop()!)).toEqual([
      { version: 1, current: false, agreements: 0, devices: 1, pairings: 0 },
      { version: 3, current: true, agreements: 0, devices: 0, pairings: 0 },
    ]);
    expect(await admin("keys", "reseal")).toBe(0);
    expect(JSON.parse(out.pop()!)).toMatchObject({ resealed: 0, devicesResealed: 1, current: 3 });
    expect(await admin("device", "list")).toBe(0);
    expect(JSON.parse(out.pop()!)[0].user).toBe("u1");
    const env = { HANDOFF_MASTER_KEY: Buffer.alloc(32, 7).toString("base64") };
    const res = await runProgram("broker/admin", ["keys", "rotate", "--data-dir", dir()], { env: { ...process.env, ...env } });
    expect(res.code).toBe(1);
    expect(res.stderr).toContain("HANDOFF_MASTER_KEY");
  });
});
