/**
 * The device side of the protocol, once, for every device this project ships: the Node
 * simulator, the demo, the tests (device-sim/device.ts) and the browser pages (src/device/browser.ts).
 *
 * It connects with a fresh signed token (a new one on every attempt), subscribes to its own
 * down topic, signs every message it sends, checks every message it receives against the pinned
 * broker key, drops duplicates by message id, and matches replies to requests by `re`
 * (docs/protocol.md §Connecting, §Envelope, §Delivery). Given several broker URLs (the nodes of
 * one cluster), each attempt after a failure or a drop goes to the next URL in the list.
 *
 * What differs between Node and a browser comes in through a DevicePlatform: how the connection
 * is secured (Node: TLS options and certificate pins; a browser: its own TLS), how signatures are
 * checked (node:crypto or tweetnacl) and where randomness comes from. MQTT.js itself is the same
 * package in both: bundled for a page, esbuild picks its browser build.
 */
import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import { toBase64, uuidV7 } from "../crypto/encoding.ts";
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
  /** Options MQTT.js needs to reach the broker at `url` securely (TLS trust); called before each attempt. */
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
  /**
   * mqtt://, mqtts://, ws:// or wss://host:port[/path], as the platform allows; or several, the
   * nodes of one cluster, tried in turn (the first first, then the next after each failure or drop).
   */
  readonly url: string | readonly string[];
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
  /** Connected and subscribed, to this URL (one of `urls`; `currentUrl` says it too). */
  connect: [url: string];
  /**
   * The broker refused the CONNECT (code = CONNACK return code); the device stops reconnecting.
   * With several URLs, code 3 (broker unavailable) is not final: the next URL is tried instead.
   */
  refused: [code: number, message: string];
  /** An established connection was lost (only when the client reconnects by itself). */
  offline: [];
  /** An automatic reconnect attempt starts, to this URL. */
  reconnecting: [url: string];
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

/**
 * One connect() until close() or a refusal: the MQTT.js stores and message ids that every
 * attempt's client shares, so that a QoS 1 message not yet acknowledged is sent again on the
 * next connection, whichever node it reaches.
 */
interface Session {
  readonly incomingStore: InstanceType<typeof mqtt.Store>;
  readonly outgoingStore: InstanceType<typeof mqtt.Store>;
  readonly messageIdProvider: InstanceType<typeof mqtt.DefaultMessageIdProvider>;
  timer: Timer | null;
  /** Closed, refused, or its first connect() failed: no further attempt. */
  over: boolean;
}

/** How one attempt ended: connected, or closed without connecting (`refusal`: its CONNACK code). */
type Attempt = { ok: true } | { ok: false; error: Error; refusal: number | null };

/**
 * The broker URLs of a client's `url` option: at least one, each a URL (its scheme is the
 * platform's to check). Throws an Error that names the URL that is not one.
 */
export function brokerUrls(url: string | readonly string[]): readonly string[] {
  const urls = typeof url === "string" ? [url] : [...url];
  if (urls.length === 0) throw new Error("no broker URL: give at least one");
  for (const u of urls) {
    try {
      new URL(u);
    } catch {
      throw new Error(`broker URL ${JSON.stringify(u)} is not a URL (scheme://host:port, e.g. mqtt://127.0.0.1:1883)`);
    }
  }
  return urls;
}

const utf8 = new TextDecoder();

export class DeviceClient extends Emitter<DeviceEvents> {
  readonly id: string;
  /** The broker URLs, in the order they are tried. */
  readonly urls: readonly string[];
  readonly #o: DeviceClientOptions;
  readonly #clock: () => number;
  readonly #waiters = new Map<string, { resolve: (m: Received) => void; reject: (e: Error) => void; timer: Timer }>();
  readonly #seen = new Set<string>();
  /** The client of the current (or last) attempt: a message sent while offline waits in its session's store. */
  #client: MqttClient | null = null;
  #session: Session | null = null;
  /** Index in `urls` of the current (or last) attempt; -1 before the first. */
  #at = -1;

  constructor(options: DeviceClientOptions) {
    super();
    this.#o = options;
    this.id = options.identity.deviceId;
    this.urls = brokerUrls(options.url);
    this.#clock = options.clock ?? Date.now;
  }

  get connected(): boolean {
    return this.#client?.connected === true;
  }

  /** The URL the device is connected to, or is trying or last tried (the first before any attempt). */
  get currentUrl(): string {
    return this.urls[Math.max(0, this.#at)]!;
  }

  /**
   * A new message id: a version-7 UUID, time-ordered (the broker's replay memory, keyed by id
   * first, then grows at its end instead of at random pages; docs/protocol.md §Envelope).
   */
  newId(): string {
    return uuidV7(this.#clock(), this.#o.platform.randomBytes(10));
  }

  /** A fresh connect token: new nonce, current time. */
  token(tsMs: number = this.#clock(), nonce: string = toBase64(this.#o.platform.randomBytes(16)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "")): string {
    return makeToken(this.id, tsMs, nonce, (b) => this.#o.identity.sign(b));
  }

  /**
   * Connects and subscribes, trying each URL once, from the one after the last tried (the first
   * on the first call). Rejects with the broker's refusal (CONNACK code) if one refuses for good;
   * if none can be reached, with that error (one URL) or an error naming each URL's failure.
   * Once connected, a drop is followed by attempts to the next URLs in turn, every reconnectMs.
   */
  async connect(): Promise<void> {
    this.#endSession();
    const session: Session = {
      incomingStore: new mqtt.Store(),
      outgoingStore: new mqtt.Store(),
      messageIdProvider: new mqtt.DefaultMessageIdProvider(),
      timer: null,
      over: false,
    };
    this.#session = session;
    const failures: string[] = [];
    let last: Error = new Error("device closed");
    for (let i = 0; i < this.urls.length; i++) {
      const url = this.#next();
      const attempt = await this.#attempt(session, url);
      if (attempt.ok) return;
      last = attempt.error;
      // Refused for good (that refusal is the answer), or closed meanwhile.
      if (session.over) throw last;
      failures.push(`${url} (${attempt.error.message})`);
    }
    session.over = true;
    // Nothing is connected: a send now fails at once instead of waiting for a connection.
    if (this.#session === session) this.#client = null;
    if (failures.length === 1) throw last;
    throw new Error(`no broker could be reached: ${failures.join("; ")}`, { cause: last });
  }

  /** Moves to the next URL (the first on the first attempt) and returns it. */
  #next(): string {
    this.#at = (this.#at + 1) % this.urls.length;
    return this.urls[this.#at]!;
  }

  /**
   * One connection attempt to `url` with a fresh token: resolves once subscribed, or when the
   * connection closed without that. A final refusal ends the session and emits `refused`; a
   * later drop of a connection it made starts the reconnects.
   */
  async #attempt(session: Session, url: string): Promise<Attempt> {
    const { platform } = this.#o;
    const explain = (err: Error) => platform.explainError?.(err) ?? err;
    let transport: IClientOptions;
    try {
      transport = (await platform.transportOptions?.(new URL(url))) ?? {};
    } catch (err) {
      const error = explain(err as Error);
      if (this.listenerCount("error") > 0) this.emit("error", error);
      return { ok: false, error, refusal: null };
    }
    if (session.over) return { ok: false, error: new Error("device closed"), refusal: null };
    const client = mqtt.connect(url, {
      ...transport,
      clientId: this.id,
      username: this.id,
      // A token is single-use: every attempt makes a new one.
      password: this.token(),
      protocolVersion: 4,
      clean: true,
      keepalive: this.#o.keepaliveS ?? 30,
      // This class reconnects, to the next URL, with a new client that shares the session's stores.
      reconnectPeriod: 0,
      connectTimeout: this.#o.connectTimeoutMs ?? 10_000,
      incomingStore: session.incomingStore,
      outgoingStore: session.outgoingStore,
      messageIdProvider: session.messageIdProvider,
    });
    this.#client = client;
    return new Promise<Attempt>((resolve) => {
      let connected = false;
      let error: Error | null = null;
      let refusal: number | null = null;
      client.on("message", (topic, payload) => this.#receive(topic, payload));
      client.on("connect", () => {
        platform.onConnected?.(client);
        client.subscribe(downTopic(this.id), { qos: 1 }, (err, granted) => {
          if (err || granted?.[0]?.qos === 128) {
            if (this.listenerCount("error") > 0) this.emit("error", err ?? new Error("subscription to the down topic was refused"));
            return;
          }
          if (!connected) {
            connected = true;
            resolve({ ok: true });
          }
          this.emit("connect", url);
        });
      });
      client.on("error", (err) => {
        const code = (err as { code?: unknown }).code;
        if (typeof code === "number" && code >= 1 && code <= 5) {
          refusal = code;
          error = err;
          // Code 3 (broker unavailable) at one of several nodes: the next may serve; say so.
          if (code === 3 && this.urls.length > 1 && this.listenerCount("error") > 0) this.emit("error", new Error(`${url} refused the connection (CONNACK 3): ${CONNACK_TEXT[3]}`));
          return; // the close follows
        }
        error = explain(err);
        if (this.listenerCount("error") > 0) this.emit("error", error);
      });
      client.on("close", () => {
        if (connected) return this.#dropped(session, client);
        const failed: Attempt = { ok: false, error: error ?? new Error(`${url} closed the connection without a CONNACK`), refusal };
        if (refusal !== null && (refusal !== 3 || this.urls.length === 1) && !session.over) {
          // A refusal will not change by retrying with the same key, at any node: stop, and say so once.
          session.over = true;
          client.end(true);
          this.emit("refused", refusal, CONNACK_TEXT[refusal] ?? failed.error.message);
        }
        resolve(failed);
      });
    });
  }

  /** The connection of `client` was lost: reconnect, to the next URL, unless that is off or over. */
  #dropped(session: Session, client: MqttClient): void {
    if (session.over || this.#session !== session || this.#client !== client || this.#o.reconnect === false) return;
    this.emit("offline");
    this.#retry(session);
  }

  /** The next attempt, after reconnectMs; and after it fails, the one after. */
  #retry(session: Session): void {
    session.timer = setTimeout(() => {
      session.timer = null;
      if (session.over) return;
      const url = this.#next();
      this.emit("reconnecting", url);
      void this.#attempt(session, url).then((attempt) => {
        if (!attempt.ok && !session.over) this.#retry(session);
      });
    }, this.#o.reconnectMs ?? 1000);
  }

  /** Ends the current session: no further attempt, and its client is closed at once. */
  #endSession(): void {
    const session = this.#session;
    if (session === null) return;
    session.over = true;
    if (session.timer !== null) clearTimeout(session.timer);
    session.timer = null;
    this.#session = null;
    const client = this.#client;
    this.#client = null;
    client?.end(true);
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

  /**
   * Sends and waits, and while the broker answers `busy` (past its capacity, docs/protocol.md
   * §Load) waits the answer's `retryAfterMs` and asks again, until `untilMs`: a new message with
   * the same body, so a pay_request keeps its idempotency key and makes one payment. Returns the
   * last answer; `onBusy` hears each `busy` answer and the wait before the next try.
   */
  async requestPastBusy(type: string, body: Record<string, unknown>, untilMs: number, onBusy: (reply: Received, waitMs: number) => void = () => {}, timeoutMs = 10_000): Promise<Received> {
    for (;;) {
      const reply = await this.request(type, body, timeoutMs);
      if (reply.type !== "error" || reply.body.code !== "busy" || Date.now() >= untilMs) return reply;
      const waitMs = Math.min(Number(reply.body.retryAfterMs ?? 1000), untilMs - Date.now());
      onBusy(reply, waitMs);
      await new Promise((r) => setTimeout(r, waitMs));
    }
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
    const session = this.#session;
    if (session !== null) {
      session.over = true;
      if (session.timer !== null) clearTimeout(session.timer);
      session.timer = null;
    }
    this.#session = null;
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
