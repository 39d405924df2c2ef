/**
 * A device client: what the simulator, the demo and the tests use to be a terminal or phone.
 *
 * It connects with a fresh signed token (a new one on every reconnect), subscribes to its own
 * down topic, signs every message it sends, checks every message it receives against the pinned
 * broker key, drops duplicates by message id, and matches replies to requests by `re`.
 *
 * Transports: mqtt:// (TCP), mqtts:// (TLS), ws:// and wss:// (MQTT over WebSocket, sub-protocol
 * `mqtt`). Over TLS the broker's certificate must be trusted before the CONNECT, which carries
 * the token, is sent: by the system's CAs, by `ca`, or by its pinned SHA-256 fingerprint. The
 * certificate is never accepted unchecked (no rejectUnauthorized false on a connection that
 * carries MQTT).
 */
import { EventEmitter } from "node:events";
import { X509Certificate, randomBytes, randomUUID } from "node:crypto";
import { isIP } from "node:net";
import { connect as tlsConnect, rootCertificates, type ConnectionOptions, type PeerCertificate } from "node:tls";
import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import { Signer, verify } from "../src/crypto/ed25519.ts";
import { BROKER_ID, PROTOCOL_VERSION, parseEnvelope, sealEnvelope, type Payload } from "../src/protocol/envelope.ts";
import { makeToken } from "../src/protocol/token.ts";
import { downTopic, upTopic } from "../src/protocol/topics.ts";
import type { DeviceKey } from "./keyfile.ts";

export interface DeviceOptions {
  /** mqtt://, mqtts://, ws:// or wss://host:port[/path]. */
  readonly url: string;
  /**
   * mqtts and wss: the certificates (PEM) to trust instead of the system's CAs, e.g. the
   * broker's own self-signed tls.crt. The host name is still checked unless a pin is given.
   */
  readonly ca?: string | Buffer;
  /**
   * mqtts and wss: the SHA-256 fingerprint of the broker's certificate ("AB:CD:…", as
   * `openssl x509 -fingerprint -sha256` or X509Certificate.fingerprint256 print it; colons and
   * case optional). Only that certificate is accepted, whatever its host names.
   */
  readonly fingerprint256?: string;
  readonly key: DeviceKey;
  /** The broker's Ed25519 public key; messages that do not verify against it are dropped. */
  readonly brokerPublicKey: Uint8Array;
  readonly clock?: () => number;
  /** Reconnect by itself after a drop (default true); ms between tries. */
  readonly reconnectMs?: number;
  readonly reconnect?: boolean;
  readonly connectTimeoutMs?: number;
  readonly keepaliveS?: number;
}

/** A broker message that passed every check. */
export type Received = Payload;

export class DeviceError extends Error {
  constructor(
    readonly code: string,
    readonly detail: string,
    readonly reply: Received,
  ) {
    super(`${code}: ${detail}`);
  }
}

export interface DeviceEvents {
  message: [Received];
  rejected: [reason: string];
  connect: [];
  /** The broker refused the CONNECT (code = CONNACK return code); the device stops reconnecting. */
  refused: [code: number, message: string];
  offline: [];
  reconnecting: [];
  error: [Error];
}

const SEEN_MAX = 4096;

const SCHEMES = ["mqtt:", "mqtts:", "ws:", "wss:"];

/** "ab cd…" or "AB:CD:…" → "AB:CD:…" (32 bytes), or null if it is not a SHA-256 fingerprint. */
export function normalizeFingerprint(text: string): string | null {
  const hex = text.replace(/[:\s]/g, "").toUpperCase();
  if (!/^[0-9A-F]{64}$/.test(hex)) return null;
  return hex.match(/../g)!.join(":");
}

/** The SHA-256 fingerprint of a PEM certificate, as X509Certificate prints it. */
export function certificateFingerprint(pem: string | Buffer): string {
  return new X509Certificate(pem).fingerprint256;
}

/** The broker's certificate is not the pinned one. */
export class CertificatePinError extends Error {
  // MQTT.js passes a stream error on to the client only if it has a code (the wss path).
  readonly code = "ERR_TLS_CERT_PIN_MISMATCH";
  constructor(actual: string, pinned: string) {
    super(`the broker's TLS certificate has SHA-256 fingerprint ${actual}, not the pinned ${pinned}: refusing to connect`);
  }
}

/** Node's codes for a certificate that does not verify (chain or host name). */
const TLS_TRUST_CODES = new Set([
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "UNABLE_TO_GET_ISSUER_CERT",
  "CERT_HAS_EXPIRED",
  "CERT_NOT_YET_VALID",
  "CERT_UNTRUSTED",
  "ERR_TLS_CERT_ALTNAME_INVALID",
]);

/** A refused certificate, said so that the person knows what to pass. */
function explainTlsError(err: Error): Error {
  const code = (err as { code?: unknown }).code;
  if (typeof code !== "string" || !TLS_TRUST_CODES.has(code)) return err;
  const wrapped = new Error(
    `the broker's TLS certificate is not trusted (${err.message}): trust it with ca (--ca FILE, e.g. <data-dir>/tls.crt) or pin its SHA-256 fingerprint (--fingerprint)`,
    { cause: err },
  );
  return Object.assign(wrapped, { code });
}

/**
 * The certificate a TLS server presents, read with a handshake that sends nothing else: only
 * used to compare it with a pin before the real connection, which then trusts exactly it.
 */
function presentedCertificate(host: string, port: number, timeoutMs: number): Promise<PeerCertificate> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host, port, ...(isIP(host) === 0 ? { servername: host } : {}), rejectUnauthorized: false }, () => {
      const cert = socket.getPeerCertificate();
      socket.destroy();
      if (cert?.raw === undefined) reject(new Error(`${host}:${port} presented no TLS certificate`));
      else resolve(cert);
    });
    socket.setTimeout(timeoutMs, () => socket.destroy(new Error(`no TLS handshake with ${host}:${port} within ${timeoutMs} ms`)));
    socket.once("error", reject);
  });
}

/** MQTT 3.1.1 CONNACK return codes and what they mean for this broker (docs/protocol.md §Connecting). */
export const CONNACK_TEXT: Record<number, string> = {
  1: "unacceptable protocol version (the broker speaks MQTT 3.1.1)",
  2: "identifier rejected: unknown device, or clientId is not the device id",
  3: "broker unavailable",
  4: "bad token: signature, freshness or reuse",
  5: "not authorized: anonymous or revoked device",
};

export class Device extends EventEmitter<DeviceEvents> {
  readonly id: string;
  readonly #o: DeviceOptions;
  readonly #signer: Signer;
  readonly #clock: () => number;
  readonly #waiters = new Map<string, { resolve: (m: Received) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  readonly #seen = new Set<string>();
  #client: MqttClient | null = null;

  readonly #pin: string | null;
  readonly #secure: boolean;

  constructor(options: DeviceOptions) {
    super();
    let scheme: string;
    try {
      scheme = new URL(options.url).protocol;
    } catch {
      throw new Error(`broker URL ${options.url} is not a URL (mqtt://, mqtts://, ws:// or wss://host:port)`);
    }
    if (!SCHEMES.includes(scheme)) throw new Error(`broker URL ${options.url}: the scheme must be mqtt://, mqtts://, ws:// or wss://`);
    this.#secure = scheme === "mqtts:" || scheme === "wss:";
    if (!this.#secure && (options.ca !== undefined || options.fingerprint256 !== undefined)) {
      throw new Error(`broker URL ${options.url} is not TLS: a CA or fingerprint applies only to mqtts:// and wss://`);
    }
    this.#pin = null;
    if (options.fingerprint256 !== undefined) {
      this.#pin = normalizeFingerprint(options.fingerprint256);
      if (this.#pin === null) throw new Error(`fingerprint ${options.fingerprint256} is not a SHA-256 fingerprint (64 hex digits, colons optional)`);
    }
    this.#o = options;
    this.id = options.key.deviceId;
    this.#signer = new Signer(options.key.pair);
    this.#clock = options.clock ?? Date.now;
  }

  get connected(): boolean {
    return this.#client?.connected === true;
  }

  /** A fresh connect token: new nonce, current time. */
  token(tsMs: number = this.#clock(), nonce: string = randomBytes(16).toString("base64url")): string {
    return makeToken(this.id, tsMs, nonce, (b) => this.#signer.sign(b));
  }

  /**
   * What TLS trusts: the given CA or the system's, and with a pin only the pinned certificate.
   * Without a CA, a pinned certificate is first read from the server and compared: node checks a
   * pin (checkServerIdentity) only for a certificate whose chain verifies, so the real connection
   * trusts that certificate as its CA and checks its fingerprint again.
   */
  async #tlsOptions(url: URL): Promise<ConnectionOptions> {
    const pin = this.#pin;
    let ca: (string | Buffer)[] | undefined = this.#o.ca === undefined ? undefined : [this.#o.ca];
    if (pin !== null && ca === undefined) {
      const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
      const port = Number(url.port || (url.protocol === "wss:" ? 443 : 8883));
      const cert = await presentedCertificate(host, port, this.#o.connectTimeoutMs ?? 10_000);
      if (cert.fingerprint256 !== pin) throw new CertificatePinError(cert.fingerprint256, pin);
      // A pinned certificate a public CA issued verifies by the system's CAs; a self-signed one by itself.
      ca = [...rootCertificates, new X509Certificate(cert.raw).toString()];
    }
    return {
      rejectUnauthorized: true,
      ...(ca === undefined ? {} : { ca }),
      ...(pin === null ? {} : { checkServerIdentity: (_host: string, cert: PeerCertificate) => (cert.fingerprint256 === pin ? undefined : new CertificatePinError(cert.fingerprint256, pin)) }),
    };
  }

  /** Connects and subscribes; rejects with the broker's refusal (CONNACK code) if it refuses. */
  async connect(): Promise<void> {
    const url = new URL(this.#o.url);
    let transport: IClientOptions = {};
    if (this.#secure) {
      const tls = await this.#tlsOptions(url);
      // mqtts hands these options to tls.connect; wss hands wsOptions to ws, which hands them to tls.connect.
      transport = url.protocol === "wss:" ? { wsOptions: tls } : (tls as IClientOptions);
    }
    const client = mqtt.connect(this.#o.url, {
      ...transport,
      clientId: this.id,
      username: this.id,
      password: this.token(),
      protocolVersion: 4,
      clean: true,
      keepalive: this.#o.keepaliveS ?? 30,
      reconnectPeriod: this.#o.reconnect === false ? 0 : (this.#o.reconnectMs ?? 1000),
      connectTimeout: this.#o.connectTimeoutMs ?? 10_000,
    });
    this.#client = client;
    client.on("reconnect", () => {
      // A token is single-use: every attempt needs a new one.
      client.options.password = this.token();
      this.emit("reconnecting");
    });
    client.on("offline", () => this.emit("offline"));
    client.on("message", (topic, payload) => this.#receive(topic, payload));
    client.on("connect", () => {
      // Nagle + delayed ACK cost a device 25-45 ms a round trip (docs/performance.md).
      (client.stream as { setNoDelay?: (on: boolean) => void } | undefined)?.setNoDelay?.(true);
      client.subscribe(downTopic(this.id), { qos: 1 }, (err, granted) => {
        if (err || granted?.[0]?.qos === 128) this.emit("error", err ?? new Error("subscription to the down topic was refused"));
        else this.emit("connect");
      });
    });
    return new Promise((resolve, reject) => {
      const onConnect = () => {
        client.off("error", onError);
        resolve();
      };
      const onError = (err: Error) => {
        this.off("connect", onConnect);
        client.end(true);
        reject(explainTlsError(err));
      };
      this.once("connect", onConnect);
      client.once("error", onError);
      client.on("error", (err) => {
        const code = (err as { code?: unknown }).code;
        if (typeof code === "number" && code >= 1 && code <= 5) {
          // A refusal will not change by retrying with the same key: stop, and say so once.
          client.end(true);
          this.emit("refused", code, CONNACK_TEXT[code] ?? err.message);
          return;
        }
        if (this.listenerCount("error") > 0) this.emit("error", explainTlsError(err));
      });
    });
  }

  /** Builds, signs and publishes a message; returns its id. */
  send(type: string, body: Record<string, unknown>, overrides: Partial<Payload> = {}): string {
    const payload: Payload = { v: PROTOCOL_VERSION, type, id: randomUUID(), from: this.id, to: BROKER_ID, ts: this.#clock(), body, ...overrides };
    const { bytes } = sealEnvelope(payload, (b) => this.#signer.sign(b));
    this.publishRaw(bytes);
    return payload.id;
  }

  /** Publishes bytes as they are on the device's up topic (tests use it for hostile input). */
  publishRaw(bytes: Uint8Array | string, topic: string = upTopic(this.id)): void {
    if (this.#client === null) throw new Error("not connected");
    this.#client.publish(topic, Buffer.from(bytes), { qos: 1 });
  }

  /** Waits for the broker's message that answers `msgId`. */
  waitFor(msgId: string, timeoutMs = 10_000): Promise<Received> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters.delete(msgId);
        reject(new Error(`no answer to ${msgId} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#waiters.set(msgId, { resolve, reject, timer });
    });
  }

  /** Sends and waits for the answer, whatever it is (an `error` answer included). */
  request(type: string, body: Record<string, unknown>, timeoutMs = 10_000, overrides: Partial<Payload> = {}): Promise<Received> {
    const id = overrides.id ?? randomUUID();
    const answer = this.waitFor(id, timeoutMs);
    this.send(type, body, { ...overrides, id });
    return answer;
  }

  /** Sends and waits; an `error` answer becomes a thrown DeviceError. */
  async call(type: string, body: Record<string, unknown>, timeoutMs = 10_000): Promise<Received> {
    const reply = await this.request(type, body, timeoutMs);
    if (reply.type === "error") {
      const b = reply.body as { code: string; detail: string };
      throw new DeviceError(b.code, b.detail, reply);
    }
    return reply;
  }

  /** Waits for the next message of a type (optionally matching a predicate). */
  next(type: string, timeoutMs = 10_000, match: (m: Received) => boolean = () => true): Promise<Received> {
    return new Promise((resolve, reject) => {
      const onMessage = (m: Received) => {
        if (m.type !== type || !match(m)) return;
        clearTimeout(timer);
        this.off("message", onMessage);
        resolve(m);
      };
      const timer = setTimeout(() => {
        this.off("message", onMessage);
        reject(new Error(`no ${type} message within ${timeoutMs} ms`));
      }, timeoutMs);
      this.on("message", onMessage);
    });
  }

  async close(): Promise<void> {
    const graceful = this.connected;
    for (const w of this.#waiters.values()) {
      clearTimeout(w.timer);
      w.reject(new Error("device closed"));
    }
    this.#waiters.clear();
    const client = this.#client;
    this.#client = null;
    // A graceful end lets the last PUBACKs (receipts) reach the broker; otherwise it would resend those messages.
    if (client !== null) await client.endAsync(!graceful);
  }

  /**
   * Every broker message. MQTT.js sends its PUBACK, which the broker takes as the receipt, once
   * this returns: a message is confirmed only after it was checked and handed to the listeners.
   */
  #receive(topic: string, bytes: Buffer): void {
    const reject = (reason: string) => void this.emit("rejected", reason);
    if (topic !== downTopic(this.id)) return reject(`message on foreign topic ${topic}`);
    const parsed = parseEnvelope(bytes);
    if (!parsed.ok) return reject(`malformed broker message: ${parsed.detail}`);
    const { payload, payloadBytes, signature } = parsed.msg;
    if (!verify(this.#o.brokerPublicKey, payloadBytes, signature)) return reject("broker message signature does not verify against the pinned key");
    if (payload.from !== BROKER_ID || payload.to !== this.id) return reject(`message from ${payload.from} to ${payload.to} is not for this device`);
    // QoS 1 and the outbox both redeliver: the message id makes a second copy harmless.
    if (this.#seen.has(payload.id)) return;
    this.#seen.add(payload.id);
    if (this.#seen.size > SEEN_MAX) this.#seen.delete(this.#seen.values().next().value!);
    this.emit("message", payload);
    if (payload.re !== undefined) {
      const w = this.#waiters.get(payload.re);
      if (w !== undefined) {
        clearTimeout(w.timer);
        this.#waiters.delete(payload.re);
        w.resolve(payload);
      }
    }
  }
}

/**
 * A Device that remembers the type of every message it sent, by id, so that an answer's `re`
 * tells what it answers (a task or result may be pushed or be the answer to the device's own
 * message). For tools that watch the protocol: the map grows with every message sent.
 */
export class RecordingDevice extends Device {
  readonly sentTypes = new Map<string, string>();

  override send(type: string, body: Record<string, unknown>, overrides: Partial<Payload> = {}): string {
    const id = super.send(type, body, overrides);
    this.sentTypes.set(id, type);
    return id;
  }
}
