/**
 * Each device's backlog of undelivered messages is bounded (docs/protocol.md §Delivery, §Limits):
 * a device that never receives what it is sent cannot fill the disk. Answers that carry nothing
 * to learn later expire; past its bound a device's new messages are refused `backlog_full`,
 * while its receipts are always taken. (What it must learn is never dropped: test/e2e/payment.test.ts.)
 */
import { afterEach, describe, expect, it } from "vitest";
import type { DeviceKey } from "../../device-sim/keyfile.ts";
import { upTopic } from "../../src/protocol/topics.ts";
import { startTestBroker, type TestBroker } from "../helpers.ts";
import { RawDevice, connectAs, sealWith, tokenFor } from "../wire.ts";

let broker: TestBroker;
const devices: RawDevice[] = [];
afterEach(async () => {
  await Promise.all(devices.splice(0).map((d) => d.close()));
  await broker?.stop();
});

const undelivered = (deviceId: string) => (broker.db.prepare("SELECT count(*) AS n FROM outbox WHERE device_id = ? AND delivered_ms IS NULL").get(deviceId) as { n: number }).n;

async function connect(key: DeviceKey, opts: { subscribe?: boolean; pubacks?: boolean } = {}): Promise<RawDevice> {
  const d = await RawDevice.connect(broker.url, key, broker.publicKey, opts.subscribe ?? true, {}, opts.pubacks ?? true);
  devices.push(d);
  return d;
}

describe("a device's backlog", () => {
  it("refuses new messages with backlog_full once a device has its bound undelivered, takes its receipts, and serves it again once they are received", async () => {
    broker = await startTestBroker({ deviceBacklog: 40, deviceRatePerSec: 100_000, deviceBurst: 100_000 });
    const key = broker.register("terminal");
    // Subscribed, but it never confirms what it receives: every pong stays undelivered.
    const d = await connect(key, { pubacks: false });
    const pings: string[] = [];
    for (let i = 0; i < 40; i++) {
      const { id, bytes } = d.seal("ping", { echo: String(i) });
      pings.push(id);
      await d.publish(bytes);
    }
    await expect.poll(() => d.received.length).toBe(40);
    expect(undelivered(key.deviceId)).toBe(40);
    // The 41st is refused, told why, and nothing of it is stored.
    const { id, bytes } = d.seal("ping", { echo: "one too many" });
    await d.publish(bytes);
    const refusal = await d.waitFor((m) => m.payload?.re === id);
    expect(refusal.payload).toMatchObject({ type: "error", body: { code: "backlog_full", inReplyTo: id } });
    expect(undelivered(key.deviceId)).toBe(40);
    // Its receipts are always taken; then it is served again.
    await d.ack(d.received.slice(0, 40).map((m) => m.payload!.id));
    await expect.poll(() => undelivered(key.deviceId)).toBe(0);
    expect((await d.ping("served again")).type).toBe("pong");
  });

  it("holds a device that pings at full speed and never subscribes to its bound, however long it goes on", async () => {
    broker = await startTestBroker({ deviceBacklog: 100, deviceRatePerSec: 100_000, deviceBurst: 100_000 });
    const key = broker.register("terminal");
    const client = await connectAs(broker.url, key);
    for (let i = 0; i < 400; i++) await client.publishAsync(upTopic(key.deviceId), Buffer.from(sealWith(key.pair, { type: "ping", from: key.deviceId, body: {} }).bytes), { qos: 1 });
    await client.endAsync(true);
    // The count is refreshed each second, with what is stored in between added to it.
    expect(undelivered(key.deviceId)).toBe(100);
  });
});

describe("answers that carry nothing to learn later", () => {
  it("are not resent once no duplicate can ask for them, and the purge deletes them, while a bind code is kept and resent", async () => {
    let offsetMs = 0;
    const clock = () => Date.now() + offsetMs;
    broker = await startTestBroker({ freshnessMs: 60_000, purgeEveryMs: 3_600_000 }, undefined, undefined, { clock });
    const key = broker.register("terminal");
    const d = await connect(key, { subscribe: false });
    const ping = d.seal("ping", {});
    await d.publish(ping.bytes);
    const bind = d.seal("bind_request", { login: "alice", terminal: { model: "TV", serial: "SN-1", displayName: "Living room" } });
    await d.publish(bind.bytes);
    expect(broker.db.prepare("SELECT re, expires_ms IS NOT NULL AS expires FROM outbox WHERE device_id = ? ORDER BY seq").all(key.deviceId)).toEqual([
      { re: ping.id, expires: 1 },
      { re: bind.id, expires: 0 },
    ]);
    await d.close();
    offsetMs = 60_002;
    // The device's clock follows the broker's (a stale token would be refused).
    const again = await RawDevice.connect(broker.url, key, broker.publicKey, true, { password: tokenFor(key.deviceId, key.pair, clock()) });
    devices.push(again);
    await again.waitFor((m) => m.payload?.re === bind.id);
    expect(again.repliesTo(ping.id)).toEqual([]);
    while (broker.housekeeping.step() > 0);
    expect(broker.db.prepare("SELECT re FROM outbox WHERE device_id = ?").pluck().all(key.deviceId)).toEqual([bind.id]);
  });
});
