/**
 * The device side of the protocol, once, for every device this project ships: the Node
 * simulator, the demo, the tests (device-sim/device.ts) and the browser pages (src/device/browser.ts).
 *
 * It connects with a fresh signed token (a new one on every reconnect), subscribes to its own
 * down topic, signs every message it sends, checks every message it receives against the pinned
 * broker key, drops duplicates by message id, and matches replies to requests by `re`
 * (docs/protocol.md §Connecting, §Envelope, §Delivery).
 *
 * What differs between Node and a browser comes in through a DevicePlatform: how the connection
 * is secured (Node: TLS options and certificate pins; a browser: its own TLS), how signatures are
 * checked (node:crypto or tweetnacl) and where randomness comes from. MQTT.js itself is the same
 * package in both: bundled for a page, esbuild picks its browser build.
 */
import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import { toBase64 } from "../crypto/encoding.ts";
import { BROKER_ID, PROTOCOL_VERSION, parseEnvelope, sealEnvelope, type Payload } from "../protocol/envelope.ts";
import { ERROR_CODES, isErrorCode } from "../protocol/errors.ts";
import { makeToken } from "../protocol/token.ts";
import { downTopic, upTopic } from "../protocol/topics.ts";
import { Emitter } from "./emitter.ts";

/** What differs between the platforms a device runs on. */
export interface DevicePlatform {
  /** Ed25519 verification; false (never a throw) for anything that does not verify. */
  verify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean;
  /** n bytes from a cryptographically secure generator. */
  randomBytes(n: number): Uint8Array;
  /** Options MQTT.js needs to reach the broker securely (TLS trust); called before each connect. */
  transportOptions?(url: URL): Promise<IClientOptions>;
  /** Called on every (re)connection, before the subscription (Node turns Nagle off here). */
  onConnected?(client: MqttClient): void;
  /** Turns a connection error into one that says what to do (e.g. how to trust a certificate). */
  explainError?(err: Error): Error;
}

/** The device's identity: its id and a signer holding its private key. */
export interface DeviceIdentity {
  readonly deviceId: string;
  sign(bytes: Uint8Array): Uint8Array;
}

export interface DeviceClientOptions {
  /** mqtt://, mqtts://, ws:// or wss://host:port[/path], as the platform allows. */
  readonly url: string;
  readonly identity: DeviceIdentity;
  /** The broker's Ed25519 public key; messages that do not verify against it are dropped. */
  readonly brokerPublicKey: Uint8Array;
  readonly platform: DevicePlatform;
  readonly clock?: () => number;
  /** Reconnect by itself after a drop (default true); ms between tries. */
  readonly reconnectMs?: number;
  readonly reconnect?: boolean;
  readonly connectTimeoutMs?: number;
  readonly keepaliveS?: number;
}

/** A broker message that passed every check. */
export type Received = Payload;

/** The broker answered with `error`: `code` is one of docs/protocol.md §Errors. */
export class DeviceError extends Error {
  constructor(
    readonly code: string,
    readonly detail: string,
    readonly reply: Received,
  ) {
    super(`${code}: ${detail}`);
  }

  /** The sentence the protocol gives for this code (what a person should read), or the detail. */
  get sentence(): string {
    return isErrorCode(this.code) ? ERROR_CODES[this.code] : this.detail;
  }
}

export interface DeviceEvents {
  message: [Received];
  /**
   * A checked broker message with its envelope as it came on the wire ({"payload","sig"} text):
   * what a device keeps when it must show the broker's signature later (a payment_result is a
   * receipt, docs/protocol.md §Audit log and receipts).
   */
  envelope: [Received, string];
  rejected: [reason: string];
  connect: [];
  /** The broker refused the CONNECT (code = CONNACK return code); the device stops reconnecting. */
  refused: [code: number, message: string];
  offline: [];
  reconnecting: [];
  error: [Error];
}

/** Message ids remembered to drop redelivered copies. */
export const SEEN_MAX = 4096;

/** MQTT 3.1.1 CONNACK return codes and what they mean for this broker (docs/protocol.md §Connecting). */
export const CONNACK_TEXT: Record<number, string> = {
  1: "unacceptable protocol version (the broker speaks MQTT 3.1.1)",
  2: "identifier rejected: unknown device, or clientId is not the device id",
  3: "broker unavailable",
  4: "bad token: signature, freshness or reuse",
  5: "not authorized: anonymous or revoked device",
};

type Timer = ReturnType<typeof setTimeout>;

const utf8 = new TextDecoder();

/** A random version-4 UUID from the platform's generator (crypto.randomUUID needs a secure context in a page). */
export function uuidFrom(bytes: Uint8Array): string {
  const b = Uint8Array.from(bytes.subarray(0, 16));
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export class DeviceClient extends Emitter<DeviceEvents> {
  readonly id: string;
  readonly #o: DeviceClientOptions;
  readonly #clock: () => number;
  readonly #waiters = new Map<string, { resolve: (m: Received) => void; reject: (e: Error) => void; timer: Timer }>();
  readonly #seen = new Set<string>();
  #client: MqttClient | null = null;

  constructor(options: DeviceClientOptions) {
    super();
    this.#o = options;
    this.id = options.identity.deviceId;
    this.#clock = options.clock ?? Date.now;
  }

  get connected(): boolean {
    return this.#client?.connected === true;
  }

  /** A new message id. */
  newId(): string {
    return uuidFrom(this.#o.platform.randomBytes(16));
  }

  /** A fresh connect token: new nonce, current time. */
  token(tsMs: number = this.#clock(), nonce: string = toBase64(this.#o.platform.randomBytes(16)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "")): string {
    return makeToken(this.id, tsMs, nonce, (b) => this.#o.identity.sign(b));
  }

  /** Connects and subscribes; rejects with the broker's refusal (CONNACK code) if it refuses. */
  async connect(): Promise<void> {
    const { platform } = this.#o;
    const explain = (err: Error) => platform.explainError?.(err) ?? err;
    const transport = (await platform.transportOptions?.(new URL(this.#o.url))) ?? {};
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
      platform.onConnected?.(client);
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
        reject(explain(err));
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
        if (this.listenerCount("error") > 0) this.emit("error", explain(err));
      });
    });
  }

  /** Builds, signs and publishes a message; returns its id. */
  send(type: string, body: Record<string, unknown>, overrides: Partial<Payload> = {}): string {
    const payload: Payload = { v: PROTOCOL_VERSION, type, id: this.newId(), from: this.id, to: BROKER_ID, ts: this.#clock(), body, ...overrides };
    // As text: MQTT.js encodes it as UTF-8, the exact bytes that were signed, on every platform.
    this.publishRaw(sealEnvelope(payload, (b) => this.#o.identity.sign(b)).text);
    return payload.id;
  }

  /** Publishes bytes as they are on the device's up topic (tests use it for hostile input). */
  publishRaw(bytes: Uint8Array | string, topic: string = upTopic(this.id)): void {
    if (this.#client === null) throw new Error("not connected");
    // MQTT.js takes a string or a Buffer; Node has Buffer, a page only has bytes, which its build accepts.
    const NodeBuffer = (globalThis as { Buffer?: { from(b: Uint8Array): Uint8Array } }).Buffer;
    const message = typeof bytes === "string" || NodeBuffer === undefined ? bytes : NodeBuffer.from(bytes);
    this.#client.publish(topic, message as Parameters<MqttClient["publish"]>[1], { qos: 1 });
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
    const id = overrides.id ?? this.newId();
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
  #receive(topic: string, bytes: Uint8Array): void {
    const reject = (reason: string) => void this.emit("rejected", reason);
    if (topic !== downTopic(this.id)) return reject(`message on foreign topic ${topic}`);
    const parsed = parseEnvelope(bytes);
    if (!parsed.ok) return reject(`malformed broker message: ${parsed.detail}`);
    const { payload, payloadBytes, signature } = parsed.msg;
    if (!this.#o.platform.verify(this.#o.brokerPublicKey, payloadBytes, signature)) return reject("broker message signature does not verify against the pinned key");
    if (payload.from !== BROKER_ID || payload.to !== this.id) return reject(`message from ${payload.from} to ${payload.to} is not for this device`);
    // QoS 1 and the outbox both redeliver: the message id makes a second copy harmless.
    if (this.#seen.has(payload.id)) return;
    this.#seen.add(payload.id);
    if (this.#seen.size > SEEN_MAX) this.#seen.delete(this.#seen.values().next().value!);
    this.emit("message", payload);
    if (this.listenerCount("envelope") > 0) this.emit("envelope", payload, utf8.decode(bytes));
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
