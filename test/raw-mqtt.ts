/**
 * MQTT over a bare TCP socket, for tests that must send what no polite client sends: many
 * packets in one write, a socket that is never read, QoS 2, MQTT 3.1. Packets are built with
 * mqtt-packet (the codec MQTT.js and Aedes use) and parsed with it as they come back.
 */
import mqttPacket, { type Packet } from "mqtt-packet";
import { connect as tcpConnect, type Socket } from "node:net";
import type { DeviceKey } from "../device-sim/keyfile.ts";
import { tokenFor } from "./wire.ts";

export const encode = (packet: Record<string, unknown>): Buffer => mqttPacket.generate(packet as unknown as Packet);

/** A CONNECT for a registered device with a fresh token (MQTT 3.1.1 unless `protocolVersion` says otherwise). */
export function connectPacket(key: DeviceKey, overrides: Record<string, unknown> = {}): Buffer {
  return encode({ cmd: "connect", protocolId: "MQTT", protocolVersion: 4, clean: true, keepalive: 60, clientId: key.deviceId, username: key.deviceId, password: Buffer.from(tokenFor(key.deviceId, key.pair)), ...overrides });
}

export function subscribePacket(topic: string, qos: 0 | 1 | 2, messageId: number): Buffer {
  return encode({ cmd: "subscribe", messageId, subscriptions: [{ topic, qos }] });
}

/** A raw connection that records every packet it reads and every byte it received. */
export class RawSocket {
  readonly packets: Packet[] = [];
  bytesReceived = 0;
  closed = false;
  readonly #closedWaiters: (() => void)[] = [];

  private constructor(readonly socket: Socket) {
    const parser = mqttPacket.parser({ protocolVersion: 4 });
    parser.on("packet", (p: Packet) => this.packets.push(p));
    parser.on("error", () => {});
    socket.on("data", (chunk: Buffer) => {
      this.bytesReceived += chunk.length;
      parser.parse(chunk);
    });
    socket.on("error", () => {});
    socket.on("close", () => {
      this.closed = true;
      for (const w of this.#closedWaiters.splice(0)) w();
    });
  }

  static open(url: string): Promise<RawSocket> {
    const { hostname, port } = new URL(url);
    return new Promise((resolve, reject) => {
      const socket = tcpConnect({ host: hostname, port: Number(port) }, () => resolve(new RawSocket(socket)));
      socket.once("error", reject);
    });
  }

  write(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  /** Resolves with the first packet of this kind (already received ones included), or rejects after `timeoutMs`. */
  async next(cmd: string, timeoutMs = 5000): Promise<Packet> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const p = this.packets.find((x) => x.cmd === cmd);
      if (p !== undefined) return p;
      if (this.closed) throw new Error(`closed before a ${cmd}`);
      if (Date.now() > end) throw new Error(`no ${cmd} within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** Resolves when the broker has closed the connection; rejects after `timeoutMs`. */
  whenClosed(timeoutMs = 5000): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`connection still open after ${timeoutMs} ms`)), timeoutMs);
      this.#closedWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  destroy(): void {
    this.socket.destroy();
  }
}
