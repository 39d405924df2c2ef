/**
 * Transport rules a device cannot bend (docs/protocol.md §Transport, §Limits): MQTT 3.1.1 only,
 * no QoS 2, a bounded number of SUBSCRIBE/UNSUBSCRIBE packets, and a connection that sends no
 * CONNECT is closed within the connect timeout, however many there are.
 */
import { afterEach, describe, expect, it } from "vitest";
import type { DeviceKey } from "../../device-sim/keyfile.ts";
import { downTopic, upTopic } from "../../src/protocol/topics.ts";
import { startTestBroker, type TestBroker } from "../helpers.ts";
import { RawSocket, connectPacket, encode, subscribePacket } from "../raw-mqtt.ts";
import { RawDevice, count, sealWith } from "../wire.ts";

let broker: TestBroker;
const sockets: RawSocket[] = [];
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await broker?.stop();
});

async function open(): Promise<RawSocket> {
  const s = await RawSocket.open(broker.url);
  sockets.push(s);
  return s;
}

/** A raw connection whose CONNECT, as a newly registered device of `kind`, was accepted. */
async function connected(kind: "terminal" | "phone"): Promise<{ key: DeviceKey; s: RawSocket }> {
  const key = broker.register(kind);
  const s = await open();
  s.write(connectPacket(key));
  await s.next("connack");
  return { key, s };
}

async function stillServes(): Promise<void> {
  const honest = await RawDevice.connect(broker.url, broker.register("terminal"), broker.publicKey);
  expect((await honest.ping()).type).toBe("pong");
  await honest.close();
}

describe("transport rules", () => {
  it("answers an MQTT 3.1 (protocol level 3) CONNECT with CONNACK 1 and closes the connection", async () => {
    broker = await startTestBroker();
    const key = broker.register("terminal");
    const s = await open();
    s.write(connectPacket(key, { protocolId: "MQIsdp", protocolVersion: 3 }));
    expect(await s.next("connack")).toMatchObject({ returnCode: 1 });
    await s.whenClosed();
    // The same device with MQTT 3.1.1 is accepted.
    const ok = await open();
    ok.write(connectPacket(key));
    expect(await ok.next("connack")).toMatchObject({ returnCode: 0 });
  });

  it("closes a connection that publishes with QoS 2, before the message is kept or handled", async () => {
    broker = await startTestBroker();
    const { key, s } = await connected("terminal");
    const { bytes } = sealWith(key.pair, { type: "ping", from: key.deviceId, body: {} });
    s.write(encode({ cmd: "publish", topic: upTopic(key.deviceId), payload: Buffer.from(bytes), qos: 2, messageId: 1, retain: false, dup: false }));
    await s.whenClosed();
    expect(s.packets.map((p) => p.cmd)).toEqual(["connack"]); // no PUBREC: nothing was kept
    expect(count(broker.db, "seen_messages")).toBe(0);
    await stillServes();
  });

  it("delivers with QoS 1 to a device that subscribed with QoS 2 (the minimum of both [MQTT-3.8.4-6])", async () => {
    broker = await startTestBroker();
    const { key, s } = await connected("phone");
    s.write(subscribePacket(downTopic(key.deviceId), 2, 1));
    await s.next("suback");
    const { bytes } = sealWith(key.pair, { type: "ping", from: key.deviceId, body: {} });
    s.write(encode({ cmd: "publish", topic: upTopic(key.deviceId), payload: Buffer.from(bytes), qos: 1, messageId: 2, retain: false, dup: false }));
    expect(await s.next("publish")).toMatchObject({ qos: 1 });
  });

  it("closes a connection at its 11th SUBSCRIBE or UNSUBSCRIBE, and serves the others meanwhile", async () => {
    broker = await startTestBroker();
    const { key, s } = await connected("terminal");
    for (let i = 1; i <= 10; i++) s.write(i % 2 === 1 ? subscribePacket(downTopic(key.deviceId), 1, i) : encode({ cmd: "unsubscribe", messageId: i, unsubscriptions: [downTopic(key.deviceId)] }));
    await expect.poll(() => s.packets.filter((p) => p.cmd === "suback" || p.cmd === "unsuback").length).toBe(10);
    expect(s.closed).toBe(false);
    s.write(subscribePacket(downTopic(key.deviceId), 1, 11));
    await s.whenClosed();
    await stillServes();
  });

  it("closes every one of 600 connections that send no CONNECT, or half of one, within the connect timeout", async () => {
    broker = await startTestBroker({ connectTimeoutMs: 500 });
    const key = broker.register("terminal");
    const silent = await Promise.all(Array.from({ length: 600 }, () => open()));
    const half = connectPacket(key).subarray(0, 10);
    for (const s of silent.slice(0, 100)) s.write(half);
    // Honest devices still connect meanwhile.
    await stillServes();
    // Closed by the broker: 500 ms, plus what a loaded machine needs to run the timers.
    await Promise.all(silent.map((s) => s.whenClosed(15_000)));
    expect(silent.every((s) => s.packets.length === 0)).toBe(true);
  }, 30_000);
});
