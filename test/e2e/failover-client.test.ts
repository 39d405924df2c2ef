/**
 * A device given several broker URLs, the nodes of one cluster (issue 17; docs/protocol.md
 * §Connecting, "Several broker addresses"): it connects to the first that answers, moves to the
 * next by itself when its connection is lost, and stops at a refusal that another node would
 * repeat.
 *
 * The nodes here are two in-process brokers with the same identity key and master key (copied
 * from the first data dir before the second starts) and the same device registered in each: what
 * a device sees of a cluster that shares one database.
 */
import { copyFileSync, rmSync } from "node:fs";
import { once } from "node:events";
import { createServer, type AddressInfo } from "node:net";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { MASTER_KEY_FILE } from "../../broker/data-dir.ts";
import { CONNECT_BURST } from "../../broker/hooks.ts";
import { brokerTrust, brokerUrlsFlag } from "../../device-sim/cli.ts";
import { Device, parseUrlList } from "../../device-sim/device.ts";
import { newDeviceKey, writeKeyFile, type DeviceKey } from "../../device-sim/keyfile.ts";
import { BrowserDevice, generateBrowserKey } from "../../src/device/browser.ts";
import { DeviceClient, brokerUrls } from "../../src/device/client.ts";
import { UsageError } from "../../src/cli/args.ts";
import { toBase64 } from "../../src/crypto/encoding.ts";
import { registerDevice } from "../../src/service/devices.ts";
import { runProgram, startTestBroker, tempDir, type TestBroker, type TestBrokerDeps } from "../helpers.ts";
import { rawConnect, tokenFor } from "../wire.ts";

const brokers: TestBroker[] = [];
const devices: DeviceClient[] = [];
const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(devices.splice(0).map((d) => d.close()));
  await Promise.all(brokers.splice(0).map((b) => b.stop()));
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A mqtt:// URL on which nothing listens: a port the system gave out and took back. */
async function closedUrl(): Promise<string> {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  server.close();
  await once(server, "close");
  return `mqtt://127.0.0.1:${port}`;
}

/** Two nodes of one cluster: B starts from a data dir holding A's broker key and master key. */
async function cluster(depsA: TestBrokerDeps = {}): Promise<{ a: TestBroker; b: TestBroker }> {
  const a = await startTestBroker({}, undefined, undefined, depsA);
  brokers.push(a);
  const dirB = tempDir();
  for (const file of ["broker.key", MASTER_KEY_FILE]) copyFileSync(join(a.dataDir, file), join(dirB, file));
  const b = await startTestBroker({}, dirB);
  brokers.push(b);
  expect(toBase64(b.publicKey)).toBe(toBase64(a.publicKey));
  return { a, b };
}

/** Registers the device of `key` in a node's database, as A registered it (same id, same key). */
function registerIn(node: TestBroker, key: DeviceKey, kind: "terminal" | "phone" = "terminal"): void {
  const res = registerDevice(node.db, node.keyring, { kind, name: "failover terminal", publicKey: toBase64(key.pair.publicKey), ...(kind === "phone" ? { userId: "alice" } : {}) }, Date.now());
  if (!res.ok) throw new Error(res.error);
}

function device(urls: readonly string[], key: DeviceKey, brokerPublicKey: Uint8Array): Device {
  const d = new Device({ url: urls, key, brokerPublicKey, reconnectMs: 50, connectTimeoutMs: 5000 });
  devices.push(d);
  return d;
}

describe("a device with several broker URLs", () => {
  it("skips a URL where nothing listens, connects to the next, and after that node closes reconnects to the one after by itself, where a request sent while offline is answered", async () => {
    const { a, b } = await cluster();
    const key = a.register("terminal");
    registerIn(b, key);
    const down = await closedUrl();
    const d = device([down, a.url, b.url], key, a.publicKey);
    const connects: string[] = [];
    const errors: string[] = [];
    d.on("connect", (url) => connects.push(url));
    d.on("error", (err) => errors.push(err.message));

    // (a) The closed port is tried first and fails; connect() goes on to A instead of giving up.
    expect(d.currentUrl).toBe(down);
    await d.connect();
    expect(d.currentUrl).toBe(a.url);
    expect(connects).toEqual([a.url]);
    expect(errors.join("\n")).toMatch(/ECONNREFUSED/);
    expect((await d.call("ping", { echo: "at A" })).body.echo).toBe("at A");

    // (b) A goes away: the device notices, and its next attempt is B, with a new token.
    const reconnecting: string[] = [];
    d.on("reconnecting", (url) => reconnecting.push(url));
    let whileOffline: Promise<unknown> | null = null;
    const offline = new Promise<void>((resolve) =>
      d.once("offline", () => {
        // Sent with no connection: it waits in the device's store and goes to the node reached next.
        whileOffline = d.request("ping", { echo: "sent offline" });
        resolve();
      }),
    );
    const atB = new Promise<string>((resolve) => d.once("connect", resolve));
    await a.close();
    await offline;
    expect(await atB).toBe(b.url);
    expect(reconnecting[0]).toBe(b.url);
    expect(d.currentUrl).toBe(b.url);
    expect(d.connected).toBe(true);
    expect(((await whileOffline!) as { body: { echo: string } }).body.echo).toBe("sent offline");
    // B signs with the key the device pinned from A: the same identity on every node.
    const pong = await d.call("ping", { echo: "at B" });
    expect(pong.type).toBe("pong");
    expect(pong.body.echo).toBe("at B");
  });

  it("gives up on connect() with an error naming every URL when none answers", async () => {
    const { a } = await cluster();
    const key = a.register("terminal");
    const [x, y] = [await closedUrl(), await closedUrl()];
    const d = device([x, y], key, a.publicKey);
    const err = (await d.connect().then(
      () => null,
      (e: unknown) => e,
    )) as Error;
    expect(err).toBeInstanceOf(Error);
    expect(err.message).toContain(`${x} (`);
    expect(err.message).toContain(`${y} (`);
    expect(d.connected).toBe(false);
  });

  it("stops at a refusal that every node would repeat (unknown device, CONNACK 2) instead of moving to the next URL", async () => {
    const { a, b } = await cluster();
    const key = b.register("terminal"); // known to B only: A refuses it
    const d = device([a.url, b.url], key, a.publicKey);
    const refusals: number[] = [];
    d.on("refused", (code) => refusals.push(code));
    const err = (await d.connect().then(
      () => null,
      (e: unknown) => e,
    )) as Error & { code?: unknown };
    expect(err.code).toBe(2);
    expect(refusals).toEqual([2]);
    expect(d.currentUrl).toBe(a.url);
    expect(d.connected).toBe(false);
  });

  it("moves on from a node that answers CONNACK 3 (broker unavailable) when it has another, and stops there when it has not", async () => {
    const frozenMs = Date.now();
    const { a, b } = await cluster({ clock: () => frozenMs });
    const key = a.register("terminal");
    registerIn(b, key);
    // Spend the device's connect budget at A: A now answers it with CONNACK 3.
    for (let i = 0; i < CONNECT_BURST; i++) {
      const outcome = await rawConnect(a.url, { clientId: key.deviceId, username: key.deviceId, password: tokenFor(key.deviceId, key.pair, frozenMs), reconnectPeriod: 0 });
      expect(outcome.accepted, `connect ${i + 1}`).toBe(true);
      if (outcome.accepted) await outcome.client.endAsync(true);
    }

    const alone = device([a.url], key, a.publicKey);
    const refusedAlone: number[] = [];
    alone.on("refused", (code) => refusedAlone.push(code));
    await expect(alone.connect()).rejects.toMatchObject({ code: 3 });
    expect(refusedAlone).toEqual([3]);

    const d = device([a.url, b.url], key, a.publicKey);
    const refused: number[] = [];
    const errors: string[] = [];
    d.on("refused", (code) => refused.push(code));
    d.on("error", (err) => errors.push(err.message));
    await d.connect();
    expect(d.currentUrl).toBe(b.url);
    expect(refused).toEqual([]);
    expect(errors).toContain(`${a.url} refused the connection (CONNACK 3): broker unavailable`);
    expect((await d.call("ping", {})).type).toBe("pong");
  });

  it("the simulator takes --url as a comma-separated list: it skips the closed port and says which node it connected to", async () => {
    const { a } = await cluster();
    const key = a.register("phone", { userId: "alice" });
    const dir = tempDir();
    dirs.push(dir);
    const file = join(dir, "phone.key");
    writeKeyFile(file, key);
    const down = await closedUrl();
    const run = await runProgram("device-sim/cli", ["phone", "--key", file, "--url", `${down},${a.url}`, "--data-dir", a.dataDir, "agreements"], { timeoutMs: 30_000 });
    expect(run.code, run.output).toBe(0);
    expect(run.stdout).toContain(`connection error (${down}): connect ECONNREFUSED`);
    expect(run.stdout).toContain(`connected to ${a.url}`);
    expect(run.stdout).toContain("no agreements");
  });
});

describe("broker URL lists", () => {
  it("--url and HANDOFF_URL: a comma-separated list, spaces ignored; an empty entry or a non-URL is a usage error that names it", () => {
    expect(brokerUrlsFlag("mqtt://127.0.0.1:1883")).toEqual(["mqtt://127.0.0.1:1883"]);
    expect(brokerUrlsFlag("mqtt://a:1883, mqtts://b:8883,wss://c:8443/mqtt")).toEqual(["mqtt://a:1883", "mqtts://b:8883", "wss://c:8443/mqtt"]);
    expect(parseUrlList("mqtt://a:1,mqtt://b:2")).toEqual(["mqtt://a:1", "mqtt://b:2"]);
    expect(() => brokerUrlsFlag("mqtt://a:1883,,mqtt://b:1883")).toThrow(UsageError);
    expect(() => brokerUrlsFlag("mqtt://a:1883,")).toThrow(/empty entry/);
    expect(() => brokerUrlsFlag("mqtt://a:1883,127.0.0.1:1884")).toThrow("--url: broker URL 127.0.0.1:1884 is not a URL");
    expect(() => brokerUrlsFlag("mqtt://a:1883, 127.0.0.1 1884")).toThrow("--url: broker URL 127.0.0.1 1884 is not a URL");
  });

  it("--ca and --fingerprint apply when any URL of the list is mqtts:// or wss://, and are refused when none is", () => {
    const dir = tempDir();
    dirs.push(dir);
    expect(brokerTrust(["mqtt://a:1883", "mqtts://b:8883"], { fingerprint: "AB" }, dir)).toEqual({ fingerprint256: "AB" });
    expect(() => brokerTrust(["mqtt://a:1883", "ws://b:80/mqtt"], { fingerprint: "AB" }, dir)).toThrow(/not mqtt:\/\/a:1883, ws:\/\/b:80\/mqtt/);
  });

  it("a device refuses a list with an invalid URL, an unsupported scheme or no URL at all, saying which", () => {
    const key = newDeviceKey("terminal");
    const pub = new Uint8Array(32);
    expect(() => new Device({ url: ["mqtt://127.0.0.1:1883", "127.0.0.1 1884"], key, brokerPublicKey: pub })).toThrow("broker URL 127.0.0.1 1884 is not a URL (mqtt://, mqtts://, ws:// or wss://host:port)");
    expect(() => new Device({ url: ["mqtt://127.0.0.1:1883", "http://127.0.0.1:1884"], key, brokerPublicKey: pub })).toThrow("broker URL http://127.0.0.1:1884: the scheme must be mqtt://, mqtts://, ws:// or wss://");
    expect(() => new Device({ url: [], key, brokerPublicKey: pub })).toThrow(/no broker URL/);
    expect(() => new Device({ url: ["mqtt://a:1883", "ws://b:80"], key, brokerPublicKey: pub, ca: "PEM" })).toThrow(/is not TLS/);
    expect(() => new Device({ url: ["mqtt://a:1883", "mqtts://b:8883"], key, brokerPublicKey: pub, fingerprint256: "00".repeat(32) })).not.toThrow();
    const page = generateBrowserKey("terminal", "t");
    expect(() => new BrowserDevice({ url: ["ws://a/mqtt", "mqtt://b:1883"], key: page, brokerPublicKey: pub })).toThrow("a page reaches the broker over WebSocket (ws:// or wss://), not mqtt:");
    expect(() => new BrowserDevice({ url: ["ws://a/mqtt", "::"], key: page, brokerPublicKey: pub })).toThrow('broker URL "::" is not a URL');
    expect(brokerUrls("ws://a/mqtt")).toEqual(["ws://a/mqtt"]);
    expect(() => brokerUrls([])).toThrow("no broker URL: give at least one");
  });

  it("keeps a single url string working, and starts at the first of a list", () => {
    const page = generateBrowserKey("terminal", "t");
    const one = new BrowserDevice({ url: "ws://a/mqtt", key: page, brokerPublicKey: new Uint8Array(32) });
    expect(one.urls).toEqual(["ws://a/mqtt"]);
    expect(one.currentUrl).toBe("ws://a/mqtt");
    const two = new BrowserDevice({ url: ["ws://a/mqtt", "wss://b/mqtt"], key: page, brokerPublicKey: new Uint8Array(32) });
    expect(two.urls).toEqual(["ws://a/mqtt", "wss://b/mqtt"]);
    expect(two.currentUrl).toBe("ws://a/mqtt");
  });
});
