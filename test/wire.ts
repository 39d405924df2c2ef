/**
 * Wire-level test tools: raw MQTT.js connections (the test picks clientId, username and
 * password), hand-built envelopes, and table snapshots. The Device client is the polite way to
 * talk to the broker; these are for the impolite tests that need every byte under control.
 */
import { randomBytes, randomUUID } from "node:crypto";
import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import { Signer, verify, type KeyPair } from "../src/crypto/ed25519.ts";
import { BROKER_ID, PROTOCOL_VERSION, parseEnvelope, sealEnvelope, type Payload } from "../src/protocol/envelope.ts";
import { makeToken } from "../src/protocol/token.ts";
import { downTopic, upTopic } from "../src/protocol/topics.ts";
import type { Db } from "../src/store/db.ts";
import type { DeviceKey } from "../device-sim/keyfile.ts";

const utf8 = new TextEncoder();

/** A fresh random nonce of the documented form. */
export function nonce(): string {
  return randomBytes(16).toString("base64url");
}

/** A connect token for `deviceId`, signed by `pair` (which need not be the device's own key). */
export function tokenFor(deviceId: string, pair: KeyPair, tsMs: number = Date.now(), n: string = nonce()): string {
  const signer = new Signer(pair);
  return makeToken(deviceId, tsMs, n, (b) => signer.sign(b));
}

/** How a raw CONNECT ended: CONNACK 0 (the client is returned, connected) or a refusal. */
export type ConnectOutcome = { accepted: true; client: MqttClient } | { accepted: false; code: number | undefined; message: string };

/** Connects with exactly these options (MQTT 3.1.1 and no reconnect unless overridden). */
export function rawConnect(url: string, options: IClientOptions): Promise<ConnectOutcome> {
  const client = mqtt.connect(url, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5000, ...options });
  return new Promise((resolve) => {
    const onConnect = () => settle({ accepted: true, client });
    const onError = (err: Error) => settle({ accepted: false, code: (err as { code?: number }).code, message: err.message });
    const onClose = () => settle({ accepted: false, code: undefined, message: "closed before CONNACK" });
    // Only this function's own listeners go: MQTT.js keeps its state in listeners of its own.
    const settle = (outcome: ConnectOutcome) => {
      client.off("connect", onConnect);
      client.off("error", onError);
      client.off("close", onClose);
      client.on("error", () => {});
      if (!outcome.accepted) client.end(true);
      resolve(outcome);
    };
    client.on("connect", onConnect);
    client.on("error", onError);
    client.on("close", onClose);
  });
}

/** Connects as the device with a valid token; throws if the broker refuses. */
export async function connectAs(url: string, key: DeviceKey, options: IClientOptions = {}): Promise<MqttClient> {
  const outcome = await rawConnect(url, { clientId: key.deviceId, username: key.deviceId, password: tokenFor(key.deviceId, key.pair), ...options });
  if (!outcome.accepted) throw new Error(`connect refused: ${outcome.message} (code ${outcome.code})`);
  outcome.client.on("error", () => {});
  return outcome.client;
}

/**
 * Makes a client that never sends PUBACK for what it receives (it still sees every message):
 * a device that got the bytes but never confirmed them, so the broker must send them again.
 */
export function withholdPubacks(client: MqttClient): void {
  const c = client as unknown as { _sendPacket: (packet: { cmd: string }, cb?: () => void, ...rest: unknown[]) => void };
  const send = c._sendPacket.bind(client);
  c._sendPacket = (packet, cb, ...rest) => {
    if (packet.cmd === "puback") return cb?.();
    send(packet, cb, ...rest);
  };
}

/**
 * Makes a client withhold the PUBACK of each message `withhold` picks (given its envelope's
 * payload, unverified, or null when it does not parse) and send the others as usual: a device
 * that confirmed some messages and not others. Install it before subscribing, so it sees every
 * message the broker sends.
 */
export function withholdPubacksFor(client: MqttClient, withhold: (payload: Payload | null) => boolean): void {
  const picked = new Set<number>();
  // MQTT.js emits 'packetreceive' before it answers the PUBLISH with its PUBACK.
  client.on("packetreceive", (packet) => {
    if (packet.cmd !== "publish" || packet.messageId === undefined) return;
    const parsed = parseEnvelope(Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload));
    if (withhold(parsed.ok ? parsed.msg.payload : null)) picked.add(packet.messageId);
    else picked.delete(packet.messageId);
  });
  const c = client as unknown as { _sendPacket: (packet: { cmd: string; messageId?: number }, cb?: () => void, ...rest: unknown[]) => void };
  const send = c._sendPacket.bind(client);
  c._sendPacket = (packet, cb, ...rest) => {
    if (packet.cmd === "puback" && packet.messageId !== undefined && picked.delete(packet.messageId)) return cb?.();
    send(packet, cb, ...rest);
  };
}

/** The SUBACK return code for one filter: the granted QoS, or 128 when refused. */
export function subscribeGranted(client: MqttClient, filter: string): Promise<number> {
  return new Promise((resolve, reject) => {
    client.subscribe(filter, { qos: 1 }, (err, _subs, packet) => {
      // MQTT 3.1.1: one return code per filter; 0x80 means refused [MQTT-3.9.3].
      const granted = packet?.granted[0];
      if (typeof granted === "number") resolve(granted);
      else reject(err ?? new Error("no SUBACK return code"));
    });
  });
}

/** Resolves on the client's next 'close' (call it before the action that should close it). */
export function closed(client: MqttClient, timeoutMs = 5000): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`connection still open after ${timeoutMs} ms`)), timeoutMs);
    client.once("close", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** A broker message received on a raw connection, with what the test needs to judge it. */
export interface DownMessage {
  readonly topic: string;
  readonly bytes: Buffer;
  /** The payload when the envelope parsed and the broker's signature verified; else null. */
  readonly payload: Payload | null;
}

/**
 * A device on a raw connection that keeps every message it receives, duplicates included
 * (the Device client drops a message id it has seen; a test of the stored answer must not).
 */
export class RawDevice {
  readonly received: DownMessage[] = [];
  readonly #waiters: { match: (m: DownMessage) => boolean; resolve: (m: DownMessage) => void }[] = [];

  private constructor(
    readonly client: MqttClient,
    readonly key: DeviceKey,
    readonly brokerPublicKey: Uint8Array,
  ) {
    client.on("message", (topic, bytes) => {
      const parsed = parseEnvelope(bytes);
      const payload = parsed.ok && verify(brokerPublicKey, parsed.msg.payloadBytes, parsed.msg.signature) ? parsed.msg.payload : null;
      const m = { topic, bytes, payload };
      this.received.push(m);
      for (const w of this.#waiters.splice(0)) {
        if (w.match(m)) w.resolve(m);
        else this.#waiters.push(w);
      }
    });
  }

  /** `pubacks: false`: the device never confirms what it receives (see withholdPubacks). */
  static async connect(url: string, key: DeviceKey, brokerPublicKey: Uint8Array, subscribe = true, options: IClientOptions = {}, pubacks = true): Promise<RawDevice> {
    const client = await connectAs(url, key, options);
    if (!pubacks) withholdPubacks(client);
    const d = new RawDevice(client, key, brokerPublicKey);
    if (subscribe) {
      const granted = await subscribeGranted(client, downTopic(key.deviceId));
      if (granted !== 1) throw new Error(`own down topic granted qos ${granted}`);
    }
    return d;
  }

  get id(): string {
    return this.key.deviceId;
  }

  /** Publishes bytes with QoS 1; resolves on the PUBACK (sent once the broker has handled them). */
  async publish(bytes: Uint8Array | string, topic: string = upTopic(this.id)): Promise<void> {
    await this.client.publishAsync(topic, Buffer.from(bytes), { qos: 1 });
  }

  /** Seals a message with the device's own key (fields overridable) and returns id and bytes. */
  seal(type: string, body: Record<string, unknown>, overrides: Partial<Payload> = {}): { id: string; bytes: Uint8Array } {
    return sealWith(this.key.pair, { type, body, from: this.id, ...overrides });
  }

  /** The next received message (already received ones included) that matches. */
  waitFor(match: (m: DownMessage) => boolean, timeoutMs = 5000): Promise<DownMessage> {
    const seen = this.received.find(match);
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no matching message within ${timeoutMs} ms`)), timeoutMs);
      this.#waiters.push({
        match,
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
      });
    });
  }

  /** Every received message that answers `msgId`. */
  repliesTo(msgId: string): DownMessage[] {
    return this.received.filter((m) => m.payload?.re === msgId);
  }

  /** Sends a signed `ack` receipt for broker message ids (never answered: the PUBACK of the ack is the sync point). */
  async ack(ids: string[]): Promise<string> {
    const { id, bytes } = this.seal("ack", { ids });
    await this.publish(bytes);
    return id;
  }

  /** Sends a valid ping and waits for its answer. */
  async ping(echo = "still there?"): Promise<Payload> {
    const { id, bytes } = this.seal("ping", { echo });
    await this.publish(bytes);
    const m = await this.waitFor((x) => x.payload?.re === id);
    return m.payload!;
  }

  async close(): Promise<void> {
    await this.client.endAsync(true);
  }
}

/** Seals a payload (defaults: a v1 message to the broker, now, a random id) with `pair`. */
export function sealWith(pair: KeyPair, fields: Partial<Payload> & { type: string; from: string }): { id: string; bytes: Uint8Array; text: string } {
  const signer = new Signer(pair);
  const payload: Payload = { v: PROTOCOL_VERSION, id: randomUUID(), to: BROKER_ID, ts: Date.now(), body: {}, ...fields };
  const { text, bytes } = sealEnvelope(payload, (b) => signer.sign(b));
  return { id: payload.id, bytes, text };
}

/** An envelope whose `payload` text is exactly `payloadText`, with the given signature. */
export function envelopeOf(payloadText: string, sig: Uint8Array | string): Uint8Array {
  const sigText = typeof sig === "string" ? sig : Buffer.from(sig).toString("base64");
  return utf8.encode(JSON.stringify({ payload: payloadText, sig: sigText }));
}

/** Every row of each table, in a stable order, for before/after comparisons (`columns` narrows a table). */
export function snapshot(db: Db, tables: readonly string[], columns: Readonly<Record<string, string>> = {}): Record<string, unknown[]> {
  const out: Record<string, unknown[]> = {};
  for (const t of tables) {
    const rows = db.prepare(`SELECT ${columns[t] ?? "*"} FROM ${t}`).all();
    out[t] = rows.map((r) => [JSON.stringify(r), r] as const).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, r]) => r);
  }
  return out;
}

export function count(db: Db, table: string): number {
  return (db.prepare(`SELECT count(*) AS n FROM ${table}`).get() as { n: number }).n;
}
