/**
 * A hand-driven MQTT connection for the abuse driver: node:net to 127.0.0.1 and packets built
 * by mqtt-packet, so an attack controls every byte (half a CONNECT, a PUBLISH it never
 * releases, a socket it stops reading) where MQTT.js would insist on being polite.
 *
 * Every connection is registered in a `Sockets` set as it opens, so the driver can destroy
 * whatever an attack left behind; every wait here is bounded.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { connect, type Socket } from "node:net";
import mqttPacket, { type Packet } from "mqtt-packet";
import { Signer } from "../../src/crypto/ed25519.ts";
import { BROKER_ID, PROTOCOL_VERSION, sealEnvelope, type Payload } from "../../src/protocol/envelope.ts";
import { makeToken } from "../../src/protocol/token.ts";
import { downTopic, upTopic } from "../../src/protocol/topics.ts";
import type { DeviceKey } from "../keyfile.ts";

/** Every socket an attack opened and has not yet seen closed. */
export type Sockets = Set<Socket>;

/** Opens a TCP connection to 127.0.0.1:port; null if it is not open within `ms`. */
export function openSocket(sockets: Sockets, port: number, ms = 3000): Promise<Socket | null> {
  return new Promise((resolve) => {
    const socket = connect({ host: "127.0.0.1", port });
    sockets.add(socket);
    socket.on("error", () => {}); // a reset by the broker is what several attacks are after
    socket.once("close", () => sockets.delete(socket));
    const timer = setTimeout(() => {
      socket.destroy();
      resolve(null);
    }, ms);
    socket.once("connect", () => {
      clearTimeout(timer);
      socket.setNoDelay(true);
      resolve(socket);
    });
    socket.once("close", () => {
      clearTimeout(timer);
      resolve(null);
    });
  });
}

/** A fresh single-use connect token for the device. */
export function freshToken(key: DeviceKey): string {
  const signer = new Signer(key.pair);
  return makeToken(key.deviceId, Date.now(), randomBytes(16).toString("base64url"), (b) => signer.sign(b));
}

/** The bytes of a CONNECT as the device, with a fresh token unless one is given. */
export function connectPacket(key: DeviceKey, options: { token?: string; protocolVersion?: 3 | 4; clientId?: string } = {}): Buffer {
  const v3 = options.protocolVersion === 3;
  return mqttPacket.generate({
    cmd: "connect",
    protocolId: v3 ? "MQIsdp" : "MQTT",
    protocolVersion: v3 ? 3 : 4,
    clientId: options.clientId ?? key.deviceId,
    username: key.deviceId,
    password: Buffer.from(options.token ?? freshToken(key)),
    clean: true,
    keepalive: 30,
  });
}

/** A signed ping from the device (the smallest message that makes the broker store an answer). */
export function signedPing(key: DeviceKey, echo = ""): Uint8Array {
  const signer = new Signer(key.pair);
  const payload: Payload = { v: PROTOCOL_VERSION, type: "ping", id: randomUUID(), from: key.deviceId, to: BROKER_ID, ts: Date.now(), body: echo === "" ? {} : { echo } };
  return sealEnvelope(payload, (b) => signer.sign(b)).bytes;
}

export function publishPacket(key: DeviceKey, payload: Uint8Array, qos: 0 | 1 | 2, messageId: number): Buffer {
  return mqttPacket.generate({ cmd: "publish", topic: upTopic(key.deviceId), payload: Buffer.from(payload), qos, messageId, retain: false, dup: false });
}

export function subscribePacket(key: DeviceKey, qos: 0 | 1, messageId: number): Buffer {
  return mqttPacket.generate({ cmd: "subscribe", messageId, subscriptions: [{ topic: downTopic(key.deviceId), qos }] });
}

/**
 * An authenticated raw connection: parses what the broker sends, optionally PUBACKs it, and
 * numbers what it publishes.
 */
export class RawClient {
  /** PUBLISH packets received from the broker. */
  received = 0;
  closedByPeer = false;
  #nextId = 1;
  #ended = false;
  readonly #waiters = new Set<{ cmd: string; resolve: (p: Packet | null) => void }>();
  readonly closed: Promise<void>;

  private constructor(
    readonly socket: Socket,
    readonly key: DeviceKey,
    /** Send a PUBACK for each QoS 1 message received (an honest reader); false: never confirm. */
    readonly acks: boolean,
  ) {
    const parser = mqttPacket.parser();
    parser.on("error", () => {});
    parser.on("packet", (p: Packet) => {
      if (p.cmd === "publish") {
        this.received++;
        if (this.acks && p.qos === 1 && p.messageId !== undefined) this.write(mqttPacket.generate({ cmd: "puback", messageId: p.messageId }));
      }
      for (const w of this.#waiters) {
        if (w.cmd !== p.cmd) continue;
        this.#waiters.delete(w);
        w.resolve(p);
      }
    });
    socket.on("data", (d: Buffer) => parser.parse(d));
    this.closed = new Promise((resolve) =>
      socket.once("close", () => {
        if (!this.#ended) this.closedByPeer = true;
        for (const w of this.#waiters) w.resolve(null);
        this.#waiters.clear();
        resolve();
      }),
    );
  }

  /**
   * Connects as the device and waits for the CONNACK: the client when it was accepted, else the
   * CONNACK return code (or null when there was no CONNACK within `ms`).
   */
  static async connect(sockets: Sockets, port: number, key: DeviceKey, options: { acks?: boolean; protocolVersion?: 3 | 4; token?: string; ms?: number } = {}): Promise<RawClient | { refused: number | null }> {
    const socket = await openSocket(sockets, port, options.ms);
    if (socket === null) return { refused: null };
    const client = new RawClient(socket, key, options.acks ?? true);
    const connack = client.next("connack", options.ms ?? 3000);
    client.write(connectPacket(key, { protocolVersion: options.protocolVersion ?? 4, ...(options.token === undefined ? {} : { token: options.token }) }));
    const p = (await connack) as { returnCode?: number } | null;
    if (p === null || p.returnCode !== 0) {
      client.destroy();
      return { refused: p?.returnCode ?? null };
    }
    return client;
  }

  get open(): boolean {
    return !this.socket.destroyed;
  }

  /** The next packet of this kind, or null after `ms` or when the connection closes. */
  next(cmd: string, ms: number): Promise<Packet | null> {
    if (!this.open) return Promise.resolve(null);
    return new Promise((resolve) => {
      const w = {
        cmd,
        resolve: (p: Packet | null) => {
          clearTimeout(timer);
          resolve(p);
        },
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(w);
        resolve(null);
      }, ms);
      this.#waiters.add(w);
    });
  }

  /** Writes bytes unless the connection is gone; false if it is. */
  write(bytes: Uint8Array): boolean {
    if (!this.open) return false;
    this.socket.write(bytes);
    return true;
  }

  /** The next packet identifier (1..65535). */
  messageId(): number {
    const id = this.#nextId;
    this.#nextId = id >= 65_535 ? 1 : id + 1;
    return id;
  }

  publishPing(qos: 0 | 1 | 2, echo = ""): boolean {
    return this.write(publishPacket(this.key, signedPing(this.key, echo), qos, this.messageId()));
  }

  async subscribe(qos: 0 | 1, ms = 3000): Promise<boolean> {
    const suback = this.next("suback", ms);
    this.write(subscribePacket(this.key, qos, this.messageId()));
    return (await suback) !== null;
  }

  destroy(): void {
    this.#ended = true;
    this.socket.destroy();
  }
}
