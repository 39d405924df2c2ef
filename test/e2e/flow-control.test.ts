/**
 * What the broker sends a device is flow-controlled (docs/protocol.md §Delivery): one resend
 * pass per connection, a bounded number of messages awaiting their PUBACK, and SUBSCRIBEs that
 * count against a per-connection limit. Seen before: a device with ~1000 undelivered answers
 * that sent 300 SUBSCRIBEs in one write (or 30 while not reading) made the broker resend its
 * backlog once per SUBSCRIBE, write megabytes, stall everyone and die of a stack overflow.
 */
import type { Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { downTopic, upTopic } from "../../src/protocol/topics.ts";
import { startTestBroker, type TestBroker } from "../helpers.ts";
import { RawSocket, connectPacket, subscribePacket } from "../raw-mqtt.ts";
import { RawDevice, connectAs, sealWith, subscribeGranted } from "../wire.ts";
import type { DeviceKey } from "../../device-sim/keyfile.ts";

let broker: TestBroker;
const sockets: RawSocket[] = [];
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await broker?.stop();
});

/** Makes `n` answers pile up undelivered for a device that never subscribes. */
async function pileUp(key: DeviceKey, n: number): Promise<void> {
  const client = await connectAs(broker.url, key);
  for (let i = 0; i < n; i++) {
    const { bytes } = sealWith(key.pair, { type: "ping", from: key.deviceId, body: { echo: "x".repeat(200) } });
    await client.publishAsync(upTopic(key.deviceId), Buffer.from(bytes), { qos: 1 });
  }
  await client.endAsync(true);
}

const undelivered = (deviceId: string) => (broker.db.prepare("SELECT count(*) AS n FROM outbox WHERE device_id = ? AND delivered_ms IS NULL").get(deviceId) as { n: number }).n;

async function rawConnected(key: DeviceKey): Promise<RawSocket> {
  const s = await RawSocket.open(broker.url);
  sockets.push(s);
  s.write(connectPacket(key));
  const connack = await s.next("connack");
  expect(connack).toMatchObject({ returnCode: 0 });
  return s;
}

/** An honest device still connects and is answered. */
async function stillServes(): Promise<void> {
  const honest = await RawDevice.connect(broker.url, broker.register("terminal"), broker.publicKey);
  expect((await honest.ping("still there?")).type).toBe("pong");
  await honest.close();
}

describe("a device with a large backlog", () => {
  it("gets its backlog once, not once per SUBSCRIBE, when it sends 300 SUBSCRIBEs in one write", async () => {
    broker = await startTestBroker({ deviceRatePerSec: 100_000, deviceBurst: 100_000 });
    const key = broker.register("terminal");
    await pileUp(key, 1000);
    expect(undelivered(key.deviceId)).toBe(1000);
    const s = await rawConnected(key);
    s.write(Buffer.concat(Array.from({ length: 300 }, (_, i) => subscribePacket(downTopic(key.deviceId), 0, i + 1))));
    await s.whenClosed(10_000);
    // 11.4 KB of SUBSCRIBEs once made the broker write 6.6 MB; each answer here is ~600 bytes.
    expect(s.bytesReceived).toBeLessThan(1000 * 700);
    await stillServes();
  }, 60_000);

  it("survives 30 SUBSCRIBEs from a device that does not read its socket, and keeps serving others", async () => {
    broker = await startTestBroker({ deviceRatePerSec: 100_000, deviceBurst: 100_000, drainTimeoutMs: 2000 });
    const key = broker.register("terminal");
    await pileUp(key, 1000);
    const s = await rawConnected(key);
    (s.socket as Socket).pause();
    for (let i = 0; i < 30; i++) s.write(subscribePacket(downTopic(key.deviceId), i % 2 === 0 ? 0 : 1, i + 1));
    await stillServes();
    await stillServes();
  }, 60_000);
});

describe("the delivery window", () => {
  it("keeps at most 100 messages awaiting their PUBACK; the rest follow as PUBACKs arrive, in order, each once", async () => {
    broker = await startTestBroker({ deviceRatePerSec: 100_000, deviceBurst: 100_000 });
    const key = broker.register("terminal");
    await pileUp(key, 250);
    const order = broker.db.prepare("SELECT msg_id FROM outbox WHERE device_id = ? ORDER BY seq").pluck().all(key.deviceId) as string[];
    const d = await RawDevice.connect(broker.url, key, broker.publicKey);
    await expect.poll(() => d.received.length, { timeout: 10_000 }).toBe(250);
    expect(d.received.map((m) => m.payload?.id)).toEqual(order);
    await expect.poll(() => undelivered(key.deviceId)).toBe(0);
    await d.close();
  });

  it("sends a device that withholds its PUBACKs 100 messages and no more, closes it after the drain timeout, and sends the rest on its next connect", async () => {
    broker = await startTestBroker({ deviceRatePerSec: 100_000, deviceBurst: 100_000, drainTimeoutMs: 1000 });
    const key = broker.register("terminal");
    await pileUp(key, 250);
    const silent = await RawDevice.connect(broker.url, key, broker.publicKey, true, {}, false);
    await expect.poll(() => silent.received.length).toBe(100);
    // Nothing more comes while none of them is acknowledged: the broker closes the connection.
    await new Promise<void>((resolve) => silent.client.once("close", () => resolve()));
    expect(silent.received.length).toBe(100);
    expect(undelivered(key.deviceId)).toBe(250);
    await silent.close();
    const polite = await RawDevice.connect(broker.url, key, broker.publicKey);
    await expect.poll(() => polite.received.length, { timeout: 10_000 }).toBe(250);
    await expect.poll(() => undelivered(key.deviceId)).toBe(0);
    await polite.close();
  });

  it("sends a connected device that withholds its PUBACKs 100 of its live answers, and keeps the rest in the outbox", async () => {
    broker = await startTestBroker({ deviceRatePerSec: 100_000, deviceBurst: 100_000 });
    const key = broker.register("terminal");
    const d = await RawDevice.connect(broker.url, key, broker.publicKey, true, {}, false);
    // Each PUBACK of a ping comes after the broker has published (or held back) its pong on the
    // same connection, so once the last ping is acknowledged, what the device received is final.
    for (let i = 0; i < 150; i++) await d.publish(d.seal("ping", { echo: String(i) }).bytes);
    expect(d.received.length).toBe(100);
    expect(d.received.map((m) => m.payload?.body.echo)).toEqual(Array.from({ length: 100 }, (_, i) => String(i)));
    expect(undelivered(key.deviceId)).toBe(150);
    await d.close();
  });

  it("sends nothing again for a repeated SUBSCRIBE of the down topic", async () => {
    broker = await startTestBroker({ deviceRatePerSec: 100_000, deviceBurst: 100_000 });
    const key = broker.register("terminal");
    await pileUp(key, 30);
    const d = await RawDevice.connect(broker.url, key, broker.publicKey);
    await expect.poll(() => d.received.length).toBe(30);
    for (let i = 0; i < 3; i++) expect(await subscribeGranted(d.client, downTopic(key.deviceId))).toBe(1);
    // The pong to a ping sent after the SUBSCRIBEs comes after anything they could have caused.
    await d.ping("after");
    expect(d.received.length).toBe(31);
    await d.close();
  });

  it("counts a QoS 0 subscriber's messages as awaiting until its signed ack names them", async () => {
    broker = await startTestBroker({ deviceRatePerSec: 100_000, deviceBurst: 100_000 });
    const key = broker.register("terminal");
    await pileUp(key, 150);
    const d = await RawDevice.connect(broker.url, key, broker.publicKey, false);
    d.client.subscribe(downTopic(key.deviceId), { qos: 0 });
    await expect.poll(() => d.received.length).toBe(100);
    await d.ack(d.received.slice(0, 60).map((m) => m.payload!.id));
    await expect.poll(() => d.received.length).toBe(150);
    await d.close();
  });
});
