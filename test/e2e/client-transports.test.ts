/**
 * The Device client over every transport: mqtts://, ws:// and wss://, besides mqtt://.
 *
 * The broker's own TLS and WebSocket listeners are not needed to prove the client: the test puts
 * real front ends before a test broker's TCP port (a node:tls server, and a `ws` server on http
 * and https) that pipe every connection to it. Each front end counts the application bytes it
 * receives, so a refused certificate can be shown to have sent nothing, the token least of all.
 */
import { once } from "node:events";
import { rmSync, writeFileSync } from "node:fs";
import { createServer as createHttpServer, type Server as HttpServer } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { connect as netConnect, type AddressInfo, type Socket } from "node:net";
import { join } from "node:path";
import { createServer as createTlsServer, type Server as TlsServer } from "node:tls";
import type { Duplex } from "node:stream";
import { generate } from "selfsigned";
import { WebSocketServer, createWebSocketStream } from "ws";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { runDemo } from "../../device-sim/demo.ts";
import { Device, certificateFingerprint } from "../../device-sim/device.ts";
import { writeKeyFile } from "../../device-sim/keyfile.ts";
import { runProgram, startTestBroker, tempDir, type TestBroker } from "../helpers.ts";


interface FrontEnd {
  readonly url: string;
  /** Application bytes received from clients (after TLS), over all connections. */
  bytesIn: number;
  /** Connections piped to the broker. */
  piped: number;
  /** Cuts every open connection, as a network failure would. */
  cut(): void;
  close(): Promise<void>;
}

let broker: TestBroker;
let pems: { cert: string; private: string };
let otherPems: { cert: string; private: string };
const fronts: FrontEnd[] = [];
const devices: Device[] = [];

beforeAll(async () => {
  broker = await startTestBroker();
  const san = { name: "subjectAltName" as const, altNames: [{ type: 2 as const, value: "localhost" }, { type: 7 as const, ip: "127.0.0.1" }] };
  pems = await generate([{ name: "commonName", value: "localhost" }], { keyType: "ec", extensions: [san] });
  otherPems = await generate([{ name: "commonName", value: "localhost" }], { keyType: "ec", extensions: [san] });
});
afterEach(async () => {
  await Promise.all(devices.splice(0).map((d) => d.close()));
  await Promise.all(fronts.splice(0).map((f) => f.close()));
});
afterAll(async () => {
  await broker?.stop();
});

/** Pipes one client stream to a new TCP connection to the broker, counting what the client sends. */
function pipeToBroker(front: FrontEnd, client: Duplex, open: Set<Duplex>): void {
  const upstream = netConnect(broker.port, "127.0.0.1");
  front.piped++;
  open.add(client).add(upstream);
  client.on("data", (d: Buffer) => (front.bytesIn += d.length));
  client.pipe(upstream).pipe(client);
  const drop = () => {
    client.destroy();
    upstream.destroy();
    open.delete(client);
    open.delete(upstream);
  };
  client.on("error", drop).on("close", drop);
  upstream.on("error", drop).on("close", drop);
}

async function listen(server: TlsServer | HttpServer, scheme: string, open: Set<Duplex>, raw: Set<Socket>): Promise<FrontEnd> {
  server.on("connection", (s: Socket) => {
    raw.add(s);
    s.on("close", () => raw.delete(s));
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const front: FrontEnd = {
    url: `${scheme}://127.0.0.1:${(server.address() as AddressInfo).port}`,
    bytesIn: 0,
    piped: 0,
    cut() {
      for (const s of [...open, ...raw]) s.destroy();
    },
    async close() {
      front.cut();
      await new Promise((resolve) => server.close(resolve));
    },
  };
  fronts.push(front);
  return front;
}

/** mqtts:// — TLS terminated here, MQTT passed on to the broker's TCP port. */
async function tlsFront(tls = pems): Promise<FrontEnd> {
  const open = new Set<Duplex>();
  const server = createTlsServer({ cert: tls.cert, key: tls.private });
  const front = await listen(server, "mqtts", open, new Set());
  server.on("secureConnection", (s) => pipeToBroker(front, s, open));
  server.on("tlsClientError", () => {});
  return front;
}

/** ws:// or wss:// — a WebSocket server on path "/", sub-protocol `mqtt`, each one piped to the broker. */
async function wsFront(secure: boolean, tls = pems): Promise<FrontEnd> {
  const open = new Set<Duplex>();
  const raw = new Set<Socket>();
  const server = secure ? createHttpsServer({ cert: tls.cert, key: tls.private }) : createHttpServer();
  const front = await listen(server, secure ? "wss" : "ws", open, raw);
  server.on("tlsClientError", () => {});
  const wss = new WebSocketServer({ server, handleProtocols: (protocols) => (protocols.has("mqtt") ? "mqtt" : false) });
  wss.on("connection", (ws) => pipeToBroker(front, createWebSocketStream(ws), open));
  const close = front.close;
  front.close = async () => {
    wss.close();
    await close();
  };
  return front;
}

function device(url: string, trust: { ca?: string; fingerprint256?: string } = {}, reconnect = false): Device {
  const key = broker.register("terminal");
  const d = new Device({ url, key, brokerPublicKey: broker.publicKey, reconnect, reconnectMs: 50, connectTimeoutMs: 5000, ...trust });
  devices.push(d);
  return d;
}

/** Cuts the connection under a connected device and waits until it is back, refused or failed. */
async function reconnectAfterCut(d: Device, front: FrontEnd): Promise<"connect" | string> {
  const back = new Promise<string>((resolve) => {
    d.once("connect", () => resolve("connect"));
    d.once("refused", (code, text) => resolve(`refused ${code}: ${text}`));
  });
  await new Promise<void>((resolve) => {
    d.once("offline", resolve);
    front.cut();
  });
  return back;
}

describe("Device over TLS and WebSocket", () => {
  const cases: [string, () => Promise<FrontEnd>, () => { ca?: string; fingerprint256?: string }][] = [
    ["mqtts, trusting the broker's certificate (ca)", () => tlsFront(), () => ({ ca: pems.cert })],
    ["mqtts, pinning the certificate's fingerprint", () => tlsFront(), () => ({ fingerprint256: certificateFingerprint(pems.cert) })],
    ["ws", () => wsFront(false), () => ({})],
    ["wss, trusting the broker's certificate (ca)", () => wsFront(true), () => ({ ca: pems.cert })],
    ["wss, pinning the certificate's fingerprint", () => wsFront(true), () => ({ fingerprint256: certificateFingerprint(pems.cert).replaceAll(":", "").toLowerCase() })],
  ];

  it.each(cases)("%s: connects, is answered a ping, and reconnects with a fresh token after a cut", async (_name, start, trust) => {
    const front = await start();
    const d = device(front.url, trust(), true);
    await d.connect();
    expect((await d.call("ping", { echo: "first" })).body.echo).toBe("first");
    expect(front.piped).toBe(1);
    // The broker refuses a token it has seen (CONNACK 4): a reconnect that reused it would be refused.
    expect(await reconnectAfterCut(d, front)).toBe("connect");
    expect((await d.call("ping", { echo: "again" })).body.echo).toBe("again");
    expect(front.piped).toBe(2);
  });
});

describe("Device refuses a broker certificate it cannot trust, before sending anything", () => {
  it.each([
    ["mqtts", () => tlsFront()],
    ["wss", () => wsFront(true)],
  ])("%s: a certificate no CA vouches for, with no ca and no pin, is refused with a clear error", async (_name, start) => {
    const front = await start();
    const d = device(front.url);
    await expect(d.connect()).rejects.toThrow(/TLS certificate is not trusted \(self[- ]signed certificate\).*--ca FILE.*--fingerprint/);
    expect(d.connected).toBe(false);
    expect({ bytesIn: front.bytesIn, piped: front.piped }).toEqual({ bytesIn: 0, piped: 0 });
  });

  it.each([
    ["mqtts", () => tlsFront()],
    ["wss", () => wsFront(true)],
  ])("%s: a pin that does not match the presented certificate is refused, naming both fingerprints", async (_name, start) => {
    const front = await start();
    const pinned = certificateFingerprint(otherPems.cert);
    const d = device(front.url, { fingerprint256: pinned });
    const refused = d.connect();
    await expect(refused).rejects.toThrow(`has SHA-256 fingerprint ${certificateFingerprint(pems.cert)}, not the pinned ${pinned}`);
    expect(d.connected).toBe(false);
    expect({ bytesIn: front.bytesIn, piped: front.piped }).toEqual({ bytesIn: 0, piped: 0 });
  });

  it.each([
    ["mqtts", () => tlsFront()],
    ["wss", () => wsFront(true)],
  ])("%s: a pin is checked on the connection itself, even where the given ca trusts the certificate", async (_name, start) => {
    // ca makes the chain verify, so the handshake reaches the pin check; the pin must still refuse it.
    const front = await start();
    const d = device(front.url, { ca: pems.cert, fingerprint256: certificateFingerprint(otherPems.cert) });
    await expect(d.connect()).rejects.toThrow(/not the pinned/);
    expect({ bytesIn: front.bytesIn, piped: front.piped }).toEqual({ bytesIn: 0, piped: 0 });
  });

  it("mqtts: a ca that is not the broker's does not make its certificate trusted", async () => {
    const front = await tlsFront();
    const d = device(front.url, { ca: otherPems.cert });
    await expect(d.connect()).rejects.toThrow(/TLS certificate is not trusted/);
    expect({ bytesIn: front.bytesIn, piped: front.piped }).toEqual({ bytesIn: 0, piped: 0 });
  });
});

describe("Device options", () => {
  it.each([
    [{ url: "http://127.0.0.1:1883" }, /scheme must be mqtt:\/\/, mqtts:\/\/, ws:\/\/ or wss:\/\//],
    [{ url: "mqtt://127.0.0.1:1883", ca: "x" }, /not TLS: a CA or fingerprint applies only to mqtts:\/\/ and wss:\/\//],
    [{ url: "ws://127.0.0.1:8080", fingerprint256: "AB:CD" }, /not TLS/],
    [{ url: "mqtts://127.0.0.1:8883", fingerprint256: "AB:CD" }, /not a SHA-256 fingerprint/],
  ])("refuses %o", (o, message) => {
    const key = broker.register("terminal");
    expect(() => new Device({ key, brokerPublicKey: broker.publicKey, ...o })).toThrow(message);
  });
});

describe("the simulator and the demo over TLS", () => {
  it("sim: --url mqtts://… --ca FILE connects and runs a command; a wrong --fingerprint is refused and says why", { timeout: 60_000 }, async () => {
    const front = await tlsFront();
    const dir = tempDir();
    try {
      const keyFile = join(dir, "phone.key");
      writeKeyFile(keyFile, broker.register("phone"));
      const caFile = join(dir, "broker.crt");
      writeFileSync(caFile, pems.cert);
      const base = ["phone", "--key", keyFile, "agreements", "--url", front.url, "--data-dir", broker.dataDir];
      const ok = await runProgram("device-sim/cli", [...base, "--ca", caFile], { timeoutMs: 30_000 });
      expect(ok).toMatchObject({ code: 0, output: expect.stringContaining("no agreements") });
      expect(front.piped).toBe(1);
      const wrong = await runProgram("device-sim/cli", [...base, "--fingerprint", certificateFingerprint(otherPems.cert)], { timeoutMs: 30_000 });
      expect(wrong.code).toBe(1);
      expect(wrong.output).toContain(`could not connect to ${front.url}: the broker's TLS certificate has SHA-256 fingerprint`);
      expect(front.piped).toBe(1);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("demo: --url wss://… plays the whole story, trusting the certificate it finds in --data-dir (tls.crt)", { timeout: 60_000 }, async () => {
    const front = await wsFront(true);
    const certFile = join(broker.dataDir, "tls.crt");
    writeFileSync(certFile, pems.cert);
    try {
      const lines: string[] = [];
      const errors: string[] = [];
      // The test broker's prompts live long: --max-wait-ms 0 skips the expiry step (reported, not failed).
      const code = await runDemo(["--json", "--url", front.url, "--data-dir", broker.dataDir, "--max-wait-ms", "0"], { out: (l) => lines.push(l), err: (l) => errors.push(l) });
      expect({ code, errors }).toEqual({ code: 0, errors: [] });
      expect((JSON.parse(lines.at(-1)!) as { ok: boolean }).ok).toBe(true);
      expect(front.piped).toBeGreaterThan(1);
    } finally {
      rmSync(certFile);
    }
  });

  it("demo: --ca with a plain --url is a usage error", async () => {
    const errors: string[] = [];
    const code = await runDemo(["--url", "mqtt://127.0.0.1:1", "--data-dir", broker.dataDir, "--ca", "x.pem"], { out: () => {}, err: (l) => errors.push(l) });
    expect({ code, errors }).toEqual({ code: 2, errors: [expect.stringContaining("--ca and --fingerprint are for an mqtts:// or wss:// --url")] });
  });
});
