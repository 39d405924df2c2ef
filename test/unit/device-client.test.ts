/**
 * The device client every device shares (src/device/client.ts) and the browser's half of it
 * (src/device/browser.ts): message ids, the emitter that replaces node:events in a page, the page's
 * tweetnacl signatures against node:crypto's, the register command a page shows, and a
 * BrowserDevice (it runs in Node too: it only needs globalThis.crypto) against a real broker.
 */
import { spawnSync } from "node:child_process";
import fc from "fast-check";
import { afterEach, describe, expect, it, vi } from "vitest";
import { adminMain } from "../../broker/admin.ts";
import { Signer, generateKeyPair, keyPairFromSeed, verify } from "../../src/crypto/ed25519.ts";
import { toBase64, uuidV7 } from "../../src/crypto/encoding.ts";
import { deviceIdFor } from "../../src/crypto/ids.ts";
import { BrowserDevice, browserKeyFromSeed, browserPlatform, brokerUrlFor, generateBrowserKey, registerCommand, type BrowserKey } from "../../src/device/browser.ts";
import { DeviceClient, type Received } from "../../src/device/client.ts";
import { Emitter } from "../../src/device/emitter.ts";
import { MESSAGE_ID_RE } from "../../src/protocol/envelope.ts";
import { makeToken } from "../../src/protocol/token.ts";
import { deviceUserId } from "../../src/service/devices.ts";
import { DeviceRepo } from "../../src/store/devices.ts";
import { startTestBroker, type TestBroker } from "../helpers.ts";

const UUID_V7_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const seedArb = fc.uint8Array({ minLength: 32, maxLength: 32 });

describe("DeviceClient.newId", () => {
  it("makes version-7 UUIDs from the device's clock and platform randomness, later ids sorting later, each a valid message id", () => {
    let now = 1_767_225_600_000;
    const device = new DeviceClient({
      url: "mqtt://127.0.0.1:1",
      identity: { deviceId: "d", sign: () => new Uint8Array(64) },
      brokerPublicKey: new Uint8Array(32),
      platform: { verify: () => false, randomBytes: (n) => new Uint8Array(n).fill(0xff) },
      clock: () => now,
      reconnect: false,
    });
    const first = device.newId();
    expect(first).toMatch(UUID_V7_RE);
    expect(first).toMatch(MESSAGE_ID_RE);
    expect(first).toBe(uuidV7(now, new Uint8Array(10).fill(0xff)));
    now += 1;
    expect(device.newId() > first).toBe(true);
  });
});

type TestEvents = { a: [n: number]; b: [] };

describe("Emitter", () => {
  it("calls a once listener on the first emit only", () => {
    const e = new Emitter<TestEvents>();
    const seen: number[] = [];
    e.once("a", (n) => seen.push(n));
    expect(e.listenerCount("a")).toBe(1);
    expect(e.emit("a", 1)).toBe(true);
    expect(e.emit("a", 2)).toBe(false);
    expect(seen).toEqual([1]);
    expect(e.listenerCount("a")).toBe(0);
  });

  it("removes a once listener by the function that was passed in (off before it fired)", () => {
    const e = new Emitter<TestEvents>();
    const listener = vi.fn();
    e.once("a", listener);
    e.off("a", listener);
    e.emit("a", 1);
    expect(listener).not.toHaveBeenCalled();
    expect(e.listenerCount("a")).toBe(0);
  });

  it("off removes one registration of a listener, leaves the others, and ignores an unknown one", () => {
    const e = new Emitter<TestEvents>();
    const seen: string[] = [];
    const x = () => seen.push("x");
    const y = () => seen.push("y");
    e.on("b", x).on("b", y).on("b", x);
    e.off("b", x);
    e.off("b", () => undefined);
    expect(e.listenerCount("b")).toBe(2);
    e.emit("b");
    expect(seen).toEqual(["y", "x"]);
  });

  it("runs every listener in order even when one removes itself while the event is emitted", () => {
    const e = new Emitter<TestEvents>();
    const seen: string[] = [];
    e.once("a", () => seen.push("first"));
    e.on("a", () => seen.push("second"));
    e.once("a", () => seen.push("third"));
    e.emit("a", 0);
    expect(seen).toEqual(["first", "second", "third"]);
    expect(e.listenerCount("a")).toBe(1);
  });

  it("removeAllListeners empties one event, or every event", () => {
    const e = new Emitter<TestEvents>();
    e.on("a", () => undefined).on("a", () => undefined).on("b", () => undefined);
    e.removeAllListeners("a");
    expect([e.listenerCount("a"), e.listenerCount("b")]).toEqual([0, 1]);
    e.on("a", () => undefined);
    e.removeAllListeners();
    expect([e.listenerCount("a"), e.listenerCount("b")]).toEqual([0, 0]);
    expect(e.emit("b")).toBe(false);
  });
});

describe("a page's keys and signatures (tweetnacl) against the broker's (node:crypto)", () => {
  it("derives the same public key and device id from a seed", () => {
    fc.assert(
      fc.property(seedArb, (seed) => {
        const key = browserKeyFromSeed("phone", "p", seed);
        const pair = keyPairFromSeed(seed);
        expect(key.publicKey).toEqual(pair.publicKey);
        expect(key.deviceId).toBe(deviceIdFor(pair.publicKey));
      }),
      { numRuns: 30 },
    );
    const fresh = generateBrowserKey("terminal", "t");
    expect(fresh.seed).toHaveLength(32);
    expect(keyPairFromSeed(fresh.seed).publicKey).toEqual(fresh.publicKey);
  });

  it("signs a connect token byte for byte as Signer does, for any seed, time and nonce", () => {
    fc.assert(
      fc.property(seedArb, fc.nat({ max: 2 ** 45 }), fc.stringMatching(/^[A-Za-z0-9_-]{22}$/), (seed, tsMs, nonce) => {
        const key = browserKeyFromSeed("terminal", "t", seed);
        const device = new BrowserDevice({ url: "ws://127.0.0.1:1/mqtt", key, brokerPublicKey: new Uint8Array(32) });
        const signer = new Signer(keyPairFromSeed(seed));
        expect(device.token(tsMs, nonce)).toBe(makeToken(key.deviceId, tsMs, nonce, (b) => signer.sign(b)));
      }),
      { numRuns: 50 },
    );
  });

  it("verifies exactly what node:crypto verifies: good signatures, and not a flipped bit, another key or a wrong length", () => {
    fc.assert(
      fc.property(seedArb, fc.uint8Array({ maxLength: 200 }), fc.nat(), (seed, message, at) => {
        const pair = keyPairFromSeed(seed);
        const sig = new Signer(pair).sign(message);
        const flipped = Uint8Array.from(sig);
        flipped[at % 64]! ^= 1 << (at % 8);
        const other = generateKeyPair().publicKey;
        const cases: [Uint8Array, Uint8Array][] = [
          [pair.publicKey, sig],
          [pair.publicKey, flipped],
          [other, sig],
          [pair.publicKey, sig.subarray(0, 63)],
          [pair.publicKey.subarray(0, 31), sig],
        ];
        for (const [pk, s] of cases) expect(browserPlatform.verify(pk, message, s)).toBe(verify(pk, message, s));
        expect(browserPlatform.verify(pair.publicKey, message, sig)).toBe(true);
      }),
      { numRuns: 50 },
    );
    // ~200 tweetnacl verifies at ~65/s: 3 s on a quiet machine, more beside other work.
  }, 60_000);

  it("takes random bytes of the length asked for from the platform's generator", () => {
    const a = browserPlatform.randomBytes(16);
    const b = browserPlatform.randomBytes(16);
    expect([a.length, b.length]).toEqual([16, 16]);
    expect(a).not.toEqual(b);
  });
});

describe("registerCommand", () => {
  /** The arguments a shell makes of the command, after `npm run admin --`. */
  function shellArgs(command: string): string[] {
    const prefix = "npm run admin -- ";
    expect(command.startsWith(prefix)).toBe(true);
    const r = spawnSync("bash", ["-c", `set -- ${command.slice(prefix.length)}; printf '%s\\0' "$@"`], { encoding: "utf8" });
    expect(r.status, r.stderr).toBe(0);
    return r.stdout.split("\0").slice(0, -1);
  }
  const arg = (args: string[], flag: string) => args[args.indexOf(flag) + 1];

  it.each(["Alice's phone", `it's "quoted" $HOME \`id\` \\ ok`, "Living room TV", "''"])("quotes the name %j so a shell passes it on unchanged", (name) => {
    const key: BrowserKey = { ...generateBrowserKey("terminal", "x"), name };
    const args = shellArgs(registerCommand(key));
    expect(args.slice(0, 2)).toEqual(["device", "add"]);
    expect(arg(args, "--name")).toBe(name);
    expect(arg(args, "--kind")).toBe("terminal");
    expect(arg(args, "--public-key")).toBe(toBase64(key.publicKey));
    expect(args).not.toContain("--user");
  });

  it("names the phone's user, or a placeholder to replace when none was typed; a terminal has none", () => {
    const phone = generateBrowserKey("phone", "P");
    expect(arg(shellArgs(registerCommand(phone, "alice")), "--user")).toBe("alice");
    expect(arg(shellArgs(registerCommand(phone)), "--user")).toBe("USER_ID");
    expect(arg(shellArgs(registerCommand(phone, "")), "--user")).toBe("USER_ID");
    expect(shellArgs(registerCommand(generateBrowserKey("terminal", "T"), "alice"))).not.toContain("--user");
  });
});

describe("brokerUrlFor", () => {
  it.each([
    ["http:", "127.0.0.1:8080", "ws://127.0.0.1:8080/mqtt"],
    ["https:", "pay.example.com:8443", "wss://pay.example.com:8443/mqtt"],
    ["https:", "[::1]:8443", "wss://[::1]:8443/mqtt"],
  ])("a page served over %s from %s reaches the broker at %s", (protocol, host, url) => {
    expect(brokerUrlFor({ protocol, host })).toBe(url);
  });
});

describe("BrowserDevice against a real broker over WebSocket", () => {
  let broker: TestBroker | null = null;
  const devices: DeviceClient[] = [];
  afterEach(async () => {
    await Promise.all(devices.splice(0).map((d) => d.close()));
    await broker?.stop();
    broker = null;
  });

  it("registered with the command its page shows (name with a quote), connects over ws and gets a verified pong to its ping", { timeout: 20_000 }, async () => {
    broker = await startTestBroker({ wsPort: 0 });
    const key = browserKeyFromSeed("phone", "Alice's phone", keyPairFromSeed(new Uint8Array(32).fill(7)).seed);
    const command = registerCommand(key, "alice");
    const args = spawnSync("bash", ["-c", `set -- ${command.slice("npm run admin -- ".length)}; printf '%s\\0' "$@"`], { encoding: "utf8" }).stdout.split("\0").slice(0, -1);
    const out: string[] = [];
    expect(await adminMain([...args, "--data-dir", broker.dataDir], (l) => out.push(l))).toBe(0);
    const row = new DeviceRepo(broker.db).get(key.deviceId)!;
    expect(row.name).toBe("Alice's phone");
    expect(deviceUserId(broker.keyring, row)).toBe("alice");

    const wsUrl = broker.listeners.ws!.url;
    expect(wsUrl).toMatch(/^ws:\/\//);
    const device = new BrowserDevice({ url: `${wsUrl.replace(/\/$/, "")}/mqtt`, key, brokerPublicKey: toBase64(broker.publicKey), reconnectMs: 60_000 });
    devices.push(device);
    const rejected: string[] = [];
    device.on("rejected", (r) => rejected.push(r));
    await device.connect();
    expect(device.connected).toBe(true);
    const pong = await device.call("ping", { echo: "from a page" });
    expect(pong.type).toBe("pong");
    expect(pong.to).toBe(key.deviceId);
    expect(pong.body).toMatchObject({ echo: "from a page" });
    expect(rejected).toEqual([]);
  });

  it("drops a broker message its platform does not verify, instead of answering a request with it", { timeout: 20_000 }, async () => {
    broker = await startTestBroker({ wsPort: 0 });
    const registered = broker.register("terminal");
    const signer = new Signer(registered.pair);
    const device = new DeviceClient({
      url: broker.listeners.ws!.url,
      identity: { deviceId: registered.deviceId, sign: (b) => signer.sign(b) },
      brokerPublicKey: broker.publicKey,
      // A platform whose check fails every message: as if the pinned key were another broker's.
      platform: { verify: () => false, randomBytes: (n) => browserPlatform.randomBytes(n) },
      reconnect: false,
    });
    devices.push(device);
    await device.connect();
    const messages: Received[] = [];
    device.on("message", (m) => messages.push(m));
    const rejection = new Promise<string>((resolve) => device.once("rejected", resolve));
    const answer = device.request("ping", {}, 60_000);
    answer.catch(() => undefined);
    expect(await rejection).toMatch(/signature does not verify/);
    expect(messages).toEqual([]);
  });
});
