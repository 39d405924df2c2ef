/**
 * The four listeners over real sockets: plain TCP, TLS, WebSocket and WebSocket over TLS. A
 * device connects, pays and is refused on each exactly as on TCP; the frame limit and the connect
 * timeout hold on each; the wrong protocol on a port fails cleanly; a disallowed Origin is refused
 * before the upgrade; and a running broker takes new certificate files on SIGHUP.
 */
import { spawn, spawnSync } from "node:child_process";
import { X509Certificate } from "node:crypto";
import type { EventEmitter } from "node:events";
import { mkdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { connect as netConnect } from "node:net";
import { join } from "node:path";
import { connect as tlsConnect } from "node:tls";
import type { IClientOptions } from "mqtt";
import { generate } from "selfsigned";
import { afterEach, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import { loadKeyring, openDataDb, readBrokerPublicKey } from "../../broker/data-dir.ts";
import type { ListenerKind } from "../../broker/listener.ts";
import { newDeviceKey, type DeviceKey } from "../../device-sim/keyfile.ts";
import { generateKeyPair } from "../../src/crypto/ed25519.ts";
import { toBase64 } from "../../src/crypto/encoding.ts";
import type { Payload } from "../../src/protocol/envelope.ts";
import { upTopic } from "../../src/protocol/topics.ts";
import { ConfigError, brokerConfig } from "../../src/config.ts";
import { registerDevice } from "../../src/service/devices.ts";
import { addMerchant, creditWallet, walletBalance } from "../../src/service/ledger.ts";
import { spawnProgram, startTestBroker, tempDir, type TestBroker } from "../helpers.ts";
import { RawDevice, closed, rawConnect, sealWith, tokenFor } from "../wire.ts";
import { onJsonLines } from "../../device-sim/util.ts";

const ALL_ON = { port: 0, tlsPort: 0, wsPort: 0, wssPort: 0 } as const;
const KINDS: readonly ListenerKind[] = ["tcp", "tls", "ws", "wss"];
const LIMITS = { currency: "CNY", autoConfirmMaxMinor: 5000, autoConfirmDailyMinor: 20000, perPaymentMaxMinor: 100000 };

let broker: TestBroker | undefined;
const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
  await broker?.stop();
  broker = undefined;
});

/** The URL of a listener and the MQTT.js options that trust the broker's certificate. */
function endpoint(b: TestBroker, kind: ListenerKind): { url: string; options: IClientOptions } {
  const a = b.listeners[kind];
  if (a === undefined) throw new Error(`${kind} listener is off`);
  return { url: a.url, options: kind === "tls" || kind === "wss" ? { ca: b.certificate!.pem } : {} };
}

async function device(b: TestBroker, kind: ListenerKind, key: DeviceKey): Promise<RawDevice> {
  const { url, options } = endpoint(b, kind);
  const d = await RawDevice.connect(url, key, b.publicKey, true, options);
  cleanups.push(() => d.close());
  return d;
}

/** Sends a signed request and returns the broker's answer to it. */
async function call(d: RawDevice, type: string, body: Record<string, unknown>): Promise<Payload> {
  const { id, bytes } = d.seal(type, body);
  await d.publish(bytes);
  return (await d.waitFor((m) => m.payload?.re === id)).payload!;
}

describe("every listener", () => {
  it.each(KINDS)("over %s: a device connects, pays, and is refused as on TCP", async (kind) => {
    const b = (broker = await startTestBroker(ALL_ON));
    const { url, options } = endpoint(b, kind);
    expect(url.startsWith({ tcp: "mqtt://", tls: "mqtts://", ws: "ws://", wss: "wss://" }[kind])).toBe(true);

    // A refused CONNECT: a token signed by another key gets CONNACK 4, as on TCP.
    const terminalKey = b.register("terminal");
    const badToken = await rawConnect(url, { ...options, clientId: terminalKey.deviceId, username: terminalKey.deviceId, password: tokenFor(terminalKey.deviceId, generateKeyPair()) });
    expect(badToken).toMatchObject({ accepted: false, code: 4 });

    const terminal = await device(b, kind, terminalKey);
    expect((await terminal.ping()).type).toBe("pong");

    // A refused message: signed by another key, answered bad_signature; the connection stays.
    const { id: forgedId, bytes: forgedBytes } = sealWith(generateKeyPair(), { type: "ping", body: { echo: "x" }, from: terminal.id });
    await terminal.publish(forgedBytes);
    const refused = (await terminal.waitFor((m) => m.payload?.re === forgedId)).payload!;
    expect(refused.type).toBe("error");
    expect(refused.body).toMatchObject({ code: "bad_signature" });

    // A short auto-confirmed payment, end to end.
    const userId = `user-${kind}`;
    expect(addMerchant(b.db, { id: "coffee-corner", name: "Coffee Corner" }, Date.now())).toEqual({ ok: true });
    expect(creditWallet(b.db, b.keyring, { userId, amountMinor: 10_000, currency: "CNY" }, Date.now()).ok).toBe(true);
    const phone = await device(b, kind, b.register("phone", { userId }));
    const login = `${userId}@tv`;
    const code = (await call(terminal, "bind_request", { login, terminal: { model: "TV", serial: "SN1", displayName: "Living room TV" } })).body.code;
    expect((await call(phone, "bind_confirm", { code, limits: LIMITS })).type).toBe("bound");
    const accepted = await call(terminal, "pay_request", { login, merchantId: "coffee-corner", amountMinor: 1280, currency: "CNY", orderRef: "order-1", idempotencyKey: `idem-${kind}` });
    expect(accepted.body).toMatchObject({ status: "executing", mode: "auto", amountMinor: 1280 });
    const task = (await phone.waitFor((m) => m.payload?.type === "payment_task")).payload!.body as { paymentId: string; amountMinor: number; currency: string; payee: string };
    const result = await call(phone, "payment_execute", { paymentId: task.paymentId, amountMinor: task.amountMinor, currency: task.currency, payee: task.payee });
    expect(result.body).toMatchObject({ paymentId: accepted.body.paymentId, status: "completed" });
    expect(walletBalance(b.db, b.keyring, userId, "CNY")).toBe(10_000 - 1280);

    // A publish on another device's topic closes the connection, as on TCP.
    const gone = closed(terminal.client);
    terminal.client.publish(upTopic(phone.id), Buffer.from("{}"), { qos: 1 });
    await gone;
    expect(terminal.client.connected).toBe(false);
    expect((await phone.ping()).type).toBe("pong");
  });

  it.each(KINDS)("over %s: a packet announcing more than the limit drops the connection before its body arrives", async (kind) => {
    // A long connect timeout: only the frame guard can close this connection within the test.
    const b = (broker = await startTestBroker({ ...ALL_ON, maxPacketBytes: 4096, connectTimeoutMs: 120_000 }));
    const conn = await rawStream(b, kind);
    // A CONNECT announcing 200,000 bytes (remaining-length varint), and none of them.
    conn.write(Buffer.from([0x10, 0xc0, 0x9a, 0x0c]));
    await conn.closed;
    expect(conn.isClosed()).toBe(true);
  });

  it.each(KINDS)("over %s: a connection that sends no CONNECT is closed after the connect timeout", async (kind) => {
    const b = (broker = await startTestBroker({ ...ALL_ON, connectTimeoutMs: 300 }));
    const conn = await rawStream(b, kind);
    await conn.closed;
    expect(conn.isClosed()).toBe(true);
  });

  it("refuses a plain-text client on the TLS port and a TLS client on the TCP port, and keeps serving", async () => {
    const b = (broker = await startTestBroker(ALL_ON));
    const plainOnTls = await rawConnect(`mqtt://127.0.0.1:${b.listeners.tls!.port}`, { clientId: "x", connectTimeout: 3000 });
    expect(plainOnTls.accepted).toBe(false);
    const tlsOnTcp = await rawConnect(`mqtts://127.0.0.1:${b.listeners.tcp!.port}`, { clientId: "x", ca: b.certificate!.pem, connectTimeout: 3000 });
    expect(tlsOnTcp.accepted).toBe(false);
    const wsOnWss = await rawConnect(`ws://127.0.0.1:${b.listeners.wss!.port}`, { clientId: "x", connectTimeout: 3000 });
    expect(wsOnWss.accepted).toBe(false);
    // An unpinned certificate is not trusted: a client without the broker's certificate is refused by its own TLS.
    const untrusted = await rawConnect(b.listeners.tls!.url, { clientId: "x", connectTimeout: 3000 });
    expect(untrusted).toMatchObject({ accepted: false });
    expect(untrusted.accepted === false && untrusted.message).toMatch(/self.signed|certificate/i);
    for (const kind of KINDS) expect((await (await device(b, kind, b.register("terminal"))).ping()).type).toBe("pong");
  });

  it("speaks TLS 1.3 to a client that offers it and TLS 1.2 to one that offers no more, and refuses TLS 1.1", async () => {
    const b = (broker = await startTestBroker(ALL_ON));
    const version = (opts: { maxVersion?: "TLSv1.2" | "TLSv1.1"; minVersion?: "TLSv1.1" }) =>
      new Promise<string>((resolve) => {
        const s = tlsConnect({ host: "127.0.0.1", port: b.listeners.tls!.port, ca: b.certificate!.pem, ...opts }, () => {
          resolve(s.getProtocol() ?? "none");
          s.end();
        });
        s.on("error", (err) => resolve(`error: ${err.message}`));
      });
    expect(await version({})).toBe("TLSv1.3");
    expect(await version({ maxVersion: "TLSv1.2" })).toBe("TLSv1.2");
    expect(await version({ maxVersion: "TLSv1.1", minVersion: "TLSv1.1" })).toMatch(/^error: /);
  });
});

describe("listener ports", () => {
  it("runs TLS only with --port off: the handle's url is the TLS listener's, where a device connects", async () => {
    const b = (broker = await startTestBroker({ port: "off", tlsPort: 0 }));
    expect(Object.keys(b.listeners)).toEqual(["tls"]);
    expect(b.url).toBe(b.listeners.tls!.url);
    expect(b.url).toMatch(/^mqtts:\/\/127\.0\.0\.1:\d+$/);
    expect((await device(b, "tls", b.register("terminal")).then((d) => d.ping())).type).toBe("pong");
  });

  it("refuses a configuration with every listener off, and a certificate without its key", () => {
    expect(() => brokerConfig({ port: "off", "tls-port": "off", "ws-port": "off", "wss-port": "off" }, {})).toThrow(ConfigError);
    expect(() => brokerConfig({ "tls-cert": "/etc/handoff/tls.crt" }, {})).toThrow(/--tls-cert and --tls-key go together/);
    expect(brokerConfig({ port: "off" }, {}).port).toBe("off");
  });
});

describe("WebSocket upgrade", () => {
  const upgrade = (url: string, protocols: string[], origin?: string) =>
    new Promise<number>((resolve) => {
      const ws = new WebSocket(url, protocols, origin === undefined ? {} : { origin });
      ws.on("open", () => {
        resolve(101);
        ws.terminate();
      });
      ws.on("unexpected-response", (_req, res) => {
        resolve(res.statusCode ?? 0);
        ws.terminate();
      });
      ws.on("error", () => {});
    });

  it("refuses a disallowed Origin with 403 before the upgrade, and upgrades an allowed one or none", async () => {
    const b = (broker = await startTestBroker({ ...ALL_ON, wsOrigin: ["https://shop.example.com"] }));
    const ws = b.listeners.ws!.url;
    expect(await upgrade(ws, ["mqtt"], "https://evil.example.com")).toBe(403);
    expect(await upgrade(ws, ["mqtt"], "https://shop.example.com")).toBe(101);
    // No Origin header: not a browser; the device's token still decides.
    expect(await upgrade(ws, ["mqtt"])).toBe(101);
  });

  it("upgrades any Origin when none is configured", async () => {
    const b = (broker = await startTestBroker(ALL_ON));
    expect(await upgrade(b.listeners.ws!.url, ["mqtt"], "https://anywhere.example")).toBe(101);
  });

  it("refuses an upgrade that does not offer the mqtt sub-protocol, and answers plain HTTP for anything but a page with 404", async () => {
    const b = (broker = await startTestBroker(ALL_ON));
    expect(await upgrade(b.listeners.ws!.url, ["chat"])).toBe(400);
    const res = await fetch(`http://127.0.0.1:${b.listeners.ws!.port}/mqtt`);
    expect(res.status).toBe(404);
  });
});

describe("certificate", () => {
  it("creates a self-signed certificate for localhost once, with a 0600 key, and keeps it across restarts", async () => {
    const dataDir = tempDir();
    const b1 = await startTestBroker({ tlsPort: 0 }, dataDir);
    const first = b1.certificate!;
    await b1.stop({ keepData: true });
    const b2 = (broker = await startTestBroker({ tlsPort: 0 }, dataDir));
    expect(b2.certificate!.fingerprint256).toBe(first.fingerprint256);
    const x509 = new X509Certificate(first.pem);
    expect(x509.fingerprint256).toBe(first.fingerprint256);
    expect(x509.subjectAltName).toContain("DNS:localhost");
    expect(x509.subjectAltName).toContain("IP Address:127.0.0.1");
    expect(statSync(join(dataDir, "tls.key")).mode & 0o777).toBe(0o600);
  });

  it("uses new certificate files for the next connection after a reload, while an open connection keeps working", async () => {
    const dir = tempDir();
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const a = await certificatePair();
    const c = await certificatePair();
    writePair(dir, a);
    const b = (broker = await startTestBroker({ ...ALL_ON, tlsCert: join(dir, "cert.pem"), tlsKey: join(dir, "key.pem") }));
    expect(b.certificate!.fingerprint256).toBe(a.fingerprint256);
    const open = await device(b, "tls", b.register("terminal"));
    writePair(dir, c);
    expect(b.reloadCertificates()).toBe(true);
    for (const port of [b.listeners.tls!.port, b.listeners.wss!.port]) expect(await peerFingerprint(port, c.cert)).toBe(c.fingerprint256);
    expect((await open.ping()).type).toBe("pong");
    // A file that does not load keeps the certificate in use.
    writeFileSync(join(dir, "cert.pem"), "not a certificate");
    expect(b.reloadCertificates()).toBe(false);
    expect(await peerFingerprint(b.listeners.tls!.port, c.cert)).toBe(c.fingerprint256);
  });
});

describe("npm start", () => {
  it("logs every listener it opened, and reloads the certificate on SIGHUP while an open connection keeps working", async () => {
    const dir = tempDir();
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const dataDir = join(dir, "data");
    mkdirSync(dataDir);
    const a = await certificatePair();
    const c = await certificatePair();
    writePair(dir, a);
    const proc = startBrokerProcess(["--port", "0", "--tls-port", "0", "--ws-port", "0", "--wss-port", "0", "--metrics-port", "off", "--data-dir", dataDir, "--tls-cert", join(dir, "cert.pem"), "--tls-key", join(dir, "key.pem")]);
    cleanups.push(() => proc.stop());
    await proc.waitFor((l) => String(l.msg).startsWith("broker listening on "));
    const urls = Object.fromEntries(proc.lines.filter((l) => typeof l.listener === "string" && String(l.msg).startsWith("listening on ")).map((l) => [l.listener, l.url as string]));
    expect(Object.keys(urls).sort()).toEqual(["tcp", "tls", "ws", "wss"]);
    expect(urls.tls).toMatch(/^mqtts:\/\/127\.0\.0\.1:\d+$/);
    expect(urls.wss).toMatch(/^wss:\/\/127\.0\.0\.1:\d+$/);
    expect(proc.lines.some((l) => l.fingerprint256 === a.fingerprint256)).toBe(true);

    // A device registered in the data dir, connected over TLS.
    const key = newDeviceKey("terminal");
    const db = openDataDb(dataDir);
    expect(registerDevice(db, loadKeyring(dataDir, undefined).keyring, { kind: "terminal", name: "tv", publicKey: toBase64(key.pair.publicKey) }, Date.now()).ok).toBe(true);
    db.close();
    const open = await RawDevice.connect(urls.tls!, key, readBrokerPublicKey(dataDir)!, true, { ca: a.cert });
    cleanups.push(() => open.close());

    writePair(dir, c);
    proc.child.kill("SIGHUP");
    await proc.waitFor((l) => String(l.msg).startsWith("TLS certificate reloaded"));
    const tlsPort = Number(new URL(urls.tls!).port);
    expect(await peerFingerprint(tlsPort, c.cert)).toBe(c.fingerprint256);
    expect((await open.ping()).type).toBe("pong");

  }, 60_000);
});

const HAS_MOSQUITTO = spawnSync("mosquitto_sub", ["--help"], { stdio: "ignore" }).error === undefined;

describe("mosquitto_sub", () => {
  it.skipIf(!HAS_MOSQUITTO)(
    HAS_MOSQUITTO ? "is refused as a stranger with --cafile on the TLS port, exactly as on TCP" : "is refused as a stranger on TLS as on TCP (SKIPPED: mosquitto_sub not installed; apt-get install -y mosquitto-clients)",
    async () => {
      const b = (broker = await startTestBroker(ALL_ON));
      const dir = tempDir();
      cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
      const caFile = join(dir, "broker.crt");
      writeFileSync(caFile, b.certificate!.pem);
      // Asynchronous: the broker runs in this process and must answer while mosquitto_sub waits.
      const stranger = (port: number, extra: string[]) =>
        new Promise<{ status: number | null; stderr: string }>((resolve) => {
          const child = spawn("mosquitto_sub", ["-h", "127.0.0.1", "-p", String(port), "-V", "mqttv311", "-i", "stranger", "-u", "stranger", "-P", "not-a-token", "-t", "hp/v1/stranger/down", "-C", "1", "-W", "5", ...extra]);
          let stderr = "";
          child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
          child.once("exit", (status) => resolve({ status, stderr }));
        });
      const overTcp = await stranger(b.listeners.tcp!.port, []);
      const overTls = await stranger(b.listeners.tls!.port, ["--cafile", caFile]);
      expect(overTcp.status).not.toBe(0);
      expect(overTcp.stderr).toMatch(/Connection Refused/i);
      expect(overTls).toEqual(overTcp);
      // Without the certificate, mosquitto_sub's own TLS refuses the broker.
      const otherCa = join(dir, "other.crt");
      writeFileSync(otherCa, (await certificatePair()).cert);
      const unpinned = await stranger(b.listeners.tls!.port, ["--cafile", otherCa]);
      expect(unpinned.status).not.toBe(0);
      expect(unpinned.stderr).not.toMatch(/Connection Refused/i);
      expect(unpinned.stderr).toMatch(/certificate|TLS|SSL|protocol/i);
    },
    30_000,
  );
});

interface Pair {
  readonly cert: string;
  readonly key: string;
  readonly fingerprint256: string;
}

async function certificatePair(): Promise<Pair> {
  const pems = await generate([{ name: "commonName", value: "localhost" }], {
    keyType: "ec",
    algorithm: "sha256",
    extensions: [{ name: "subjectAltName", altNames: [{ type: 2, value: "localhost" }, { type: 7, ip: "127.0.0.1" }] }],
  });
  return { cert: pems.cert, key: pems.private, fingerprint256: new X509Certificate(pems.cert).fingerprint256 };
}

function writePair(dir: string, p: Pair): void {
  writeFileSync(join(dir, "key.pem"), p.key, { mode: 0o600 });
  writeFileSync(join(dir, "cert.pem"), p.cert);
}

/** The SHA-256 fingerprint of the certificate a TLS port presents to a new connection that trusts `ca`. */
function peerFingerprint(port: number, ca: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tlsConnect({ host: "127.0.0.1", port, ca, ALPNProtocols: [] }, () => {
      resolve(s.getPeerX509Certificate()!.fingerprint256);
      s.destroy();
    });
    s.on("error", reject);
  });
}

/** A bare connection to a listener (TLS and WebSocket set up, no MQTT yet). */
async function rawStream(b: TestBroker, kind: ListenerKind): Promise<{ write(bytes: Buffer): void; closed: Promise<void>; isClosed(): boolean }> {
  const a = b.listeners[kind]!;
  // A socket and a WebSocket emit alike: an opening event, "error" and "close".
  let conn: { write(bytes: Buffer): void; emitter: EventEmitter; opened: string; destroy(): void };
  if (kind === "tcp" || kind === "tls") {
    const s = kind === "tcp" ? netConnect(a.port, "127.0.0.1") : tlsConnect({ host: "127.0.0.1", port: a.port, ca: b.certificate!.pem });
    conn = { write: (bytes) => s.write(bytes), emitter: s, opened: kind === "tcp" ? "connect" : "secureConnect", destroy: () => s.destroy() };
  } else {
    const ws = new WebSocket(a.url, ["mqtt"], kind === "wss" ? { ca: b.certificate!.pem } : {});
    conn = { write: (bytes) => ws.send(bytes), emitter: ws, opened: "open", destroy: () => ws.terminate() };
  }
  const { emitter } = conn;
  await new Promise<void>((resolve, reject) => {
    emitter.once(conn.opened, () => resolve());
    emitter.once("error", reject);
  });
  emitter.on("error", () => {});
  let isClosed = false;
  const closed = new Promise<void>((resolve) =>
    emitter.once("close", () => {
      isClosed = true;
      resolve();
    }),
  );
  cleanups.push(conn.destroy);
  return { write: conn.write, closed, isClosed: () => isClosed };
}

/** `npm start`'s program (compiled, as npm start runs it) as a child process, its JSON log lines kept. */
function startBrokerProcess(args: string[]) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("HANDOFF_")));
  const child = spawnProgram("broker/main", args, { env });
  const lines: Record<string, unknown>[] = [];
  const waiters: { match: (l: Record<string, unknown>) => boolean; resolve: () => void }[] = [];
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  onJsonLines(child.stdout, (line) => {
    lines.push(line);
    for (const w of waiters.splice(0)) {
      if (w.match(line)) w.resolve();
      else waiters.push(w);
    }
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  return {
    child,
    lines,
    waitFor(match: (l: Record<string, unknown>) => boolean): Promise<void> {
      if (lines.some(match)) return Promise.resolve();
      return Promise.race([
        new Promise<void>((resolve) => waiters.push({ match, resolve })),
        exited.then((code) => Promise.reject(new Error(`broker exited (${code}) first: ${stderr.slice(-1000)}`))),
      ]);
    },
    async stop(): Promise<void> {
      if (child.exitCode === null) child.kill("SIGTERM");
      expect(await exited).toBe(0);
    },
  };
}
