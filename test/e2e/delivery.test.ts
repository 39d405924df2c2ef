import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { DeviceKey } from "../../device-sim/keyfile.ts";
import { downTopic } from "../../src/protocol/topics.ts";
import { startTestBroker, type TestBroker } from "../helpers.ts";
import { RawDevice, subscribeGranted, withholdPubacksFor } from "../wire.ts";

describe("outbox delivery and receipts", () => {
  let broker: TestBroker;
  let key: DeviceKey;
  const devices: RawDevice[] = [];

  beforeEach(async () => {
    broker = await startTestBroker();
    key = broker.register("terminal");
  });
  afterEach(async () => {
    await Promise.all(devices.splice(0).map((d) => d.close()));
    await broker.stop();
  });

  /** `pubacks: false`: a device that receives but never sends PUBACK (so nothing is delivered). */
  async function connect(k: DeviceKey = key, subscribe = true, pubacks = true): Promise<RawDevice> {
    const d = await RawDevice.connect(broker.url, k, broker.publicKey, subscribe, {}, pubacks);
    devices.push(d);
    return d;
  }

  async function reconnect(d: RawDevice, pubacks = true): Promise<RawDevice> {
    devices.splice(devices.indexOf(d), 1);
    await d.close();
    const again = await connect(d.key, true, pubacks);
    // A ping is a sync point: whatever is resent on subscribe arrives before its pong.
    await again.ping("sync");
    return again;
  }

  const deliveredMs = (msgId: string) => (broker.db.prepare("SELECT delivered_ms FROM outbox WHERE msg_id = ?").get(msgId) as { delivered_ms: number | null } | undefined)?.delivered_ms;
  const isDelivered = (msgId: string) => vi.waitFor(() => expect(deliveredMs(msgId)).toEqual(expect.any(Number)), { timeout: 3000, interval: 10 });

  it("sends a reply stored while the device was not subscribed once it subscribes", async () => {
    const d = await connect(key, false);
    const { id, bytes } = d.seal("ping", { echo: "kept" });
    await d.publish(bytes); // PUBACK: handled and stored; nobody was subscribed to receive it
    expect(d.received).toEqual([]);
    expect(await subscribeGranted(d.client, downTopic(d.id))).toBe(1);
    const reply = await d.waitFor((m) => m.payload?.re === id);
    expect(reply.payload!.body.echo).toBe("kept");
  });

  it("sends a reply whose PUBACK never came again, byte for byte, on every reconnect", async () => {
    const first = await connect(key, true, false);
    const pong = await first.ping("no receipt");
    const original = first.repliesTo(pong.re!)[0]!;
    const second = await reconnect(first, false);
    const third = await reconnect(second, false);
    for (const d of [second, third]) {
      const again = d.received.filter((m) => m.payload?.id === pong.id);
      expect(again).toHaveLength(1);
      expect(again[0]!.bytes.equals(original.bytes)).toBe(true);
    }
    expect(deliveredMs(pong.id)).toBeNull();
  });

  it("marks a reply delivered when the device's PUBACK for it arrives, and does not send it again", async () => {
    const first = await connect();
    const pong = await first.ping("the PUBACK is the receipt");
    await isDelivered(pong.id);
    const second = await reconnect(first);
    expect(second.received.filter((m) => m.payload?.id === pong.id)).toEqual([]);
  });

  it("marks a resent reply delivered on its PUBACK, so it goes at most once more", async () => {
    const first = await connect(key, true, false);
    const pong = await first.ping("late receipt");
    const second = await reconnect(first); // this one confirms what it gets
    expect(second.received.filter((m) => m.payload?.id === pong.id)).toHaveLength(1);
    await isDelivered(pong.id);
    const third = await reconnect(second);
    expect(third.received.filter((m) => m.payload?.id === pong.id)).toEqual([]);
  });

  it("does not mark a direct refusal, which is not stored, nor anything else, on its PUBACK", async () => {
    const d = await connect(key, false);
    const { id, bytes } = d.seal("ping", {}, { to: "somebody-else" });
    // Only the refusal is confirmed: every stored reply stays unconfirmed, so a row marked
    // delivered could only have been marked by the refusal's PUBACK.
    withholdPubacksFor(d.client, (p) => p?.re !== id);
    expect(await subscribeGranted(d.client, downTopic(d.id))).toBe(1);
    const waiting = await d.ping("stays undelivered");
    await d.publish(bytes);
    const refusal = await d.waitFor((m) => m.payload?.re === id);
    expect((refusal.payload!.body as { code: string }).code).toBe("misaddressed");
    await d.ping("sync");
    await d.ping("sync again"); // the refusal's PUBACK went before this ping: any receipt it made is written
    expect(broker.db.prepare("SELECT count(*) AS n FROM outbox WHERE msg_id = ?").get(refusal.payload!.id)).toEqual({ n: 0 });
    expect(deliveredMs(waiting.id)).toBeNull();
    expect(broker.db.prepare("SELECT count(*) AS n FROM outbox WHERE device_id = ? AND delivered_ms IS NOT NULL").get(d.id)).toEqual({ n: 0 });
    expect(broker.db.prepare("SELECT count(*) AS n FROM outbox WHERE device_id = ? AND delivered_ms IS NULL").get(d.id)).toEqual({ n: 3 });
  });

  it("marks only the message its PUBACK names: withhold the PUBACK of A, acknowledge B, reconnect, and A comes again", async () => {
    const first = await connect(key, false);
    const a = first.seal("ping", { echo: "A" });
    withholdPubacksFor(first.client, (p) => p?.re === a.id);
    expect(await subscribeGranted(first.client, downTopic(first.id))).toBe(1);
    await first.publish(a.bytes);
    const pongA = (await first.waitFor((m) => m.payload?.re === a.id)).payload!;
    const pongB = await first.ping("B");
    await isDelivered(pongB.id);
    expect(deliveredMs(pongA.id)).toBeNull();
    const second = await reconnect(first);
    expect(second.received.filter((m) => m.payload?.id === pongA.id)).toHaveLength(1);
    expect(second.received.filter((m) => m.payload?.id === pongB.id)).toEqual([]);
    await isDelivered(pongA.id); // confirmed this time
  });

  it("keeps a reply sent at QoS 0 (a device subscribed at QoS 0 sends no PUBACK) undelivered until a signed ack", async () => {
    const d = await connect(key, false);
    await new Promise<void>((resolve, reject) => d.client.subscribe(downTopic(d.id), { qos: 0 }, (err) => (err ? reject(err) : resolve())));
    const pong = await d.ping("at most once");
    await d.ping("sync");
    expect(deliveredMs(pong.id)).toBeNull();
    const again = await reconnect(d);
    expect(again.received.filter((m) => m.payload?.id === pong.id)).toHaveLength(1);
    await isDelivered(pong.id); // this time at QoS 1, confirmed by its PUBACK
  });

  // The signed `ack` is still accepted: the same receipt, for a device that wants to send it.
  it("marks a reply delivered on the device's signed receipt, which is neither answered nor remembered", async () => {
    const d = await connect(key, true, false);
    const pong = await d.ping("ack me");
    expect(deliveredMs(pong.id)).toBeNull();
    const ackId = await d.ack([pong.id]);
    expect(deliveredMs(pong.id)).toEqual(expect.any(Number));
    await d.ping("sync");
    expect(d.repliesTo(ackId)).toEqual([]);
    expect(broker.db.prepare("SELECT count(*) AS n FROM seen_messages WHERE msg_id = ?").get(ackId)).toEqual({ n: 0 });
  });

  it("does not send a reply acknowledged by a signed receipt again after a reconnect", async () => {
    const first = await connect(key, true, false);
    const pong = await first.ping("once is enough");
    await first.ack([pong.id]);
    const second = await reconnect(first, false);
    expect(second.received.filter((m) => m.payload?.id === pong.id)).toEqual([]);
  });

  it("accepts the same receipt twice (receipts are idempotent)", async () => {
    const d = await connect(key, true, false);
    const pong = await d.ping();
    await d.ack([pong.id]);
    const firstMark = deliveredMs(pong.id);
    await d.ack([pong.id]);
    expect(deliveredMs(pong.id)).toBe(firstMark);
  });

  it("ignores a receipt for another device's message", async () => {
    const owner = await connect(key, true, false);
    const pong = await owner.ping();
    const meddler = await connect(broker.register("phone"));
    await meddler.ack([pong.id]);
    expect(deliveredMs(pong.id)).toBeNull();
    const again = await reconnect(owner, false);
    expect(again.received.filter((m) => m.payload?.id === pong.id)).toHaveLength(1);
  });

  it("does not answer a receipt it could not store, so a device that acks every message cannot loop with it", async () => {
    // docs/protocol.md §ack: "A valid ack is never answered" and "Acknowledge every broker
    // message ..., error included". An `unavailable` answer to an ack would be acked in turn,
    // answered again, and so on for as long as storage stays down.
    const d = await connect(key, true, false);
    const pong = await d.ping();
    broker.db.pragma("query_only = ON");
    try {
      const ackId = await d.ack([pong.id]);
      // Replies go out in order: anything answering the ack arrives before the answer to this ping.
      const probe = await d.ping("storage down");
      expect((probe.body as { code?: string }).code).toBe("unavailable");
      expect(d.repliesTo(ackId)).toEqual([]);
    } finally {
      broker.db.pragma("query_only = OFF");
    }
  });

  it.each([
    ["no ids", { ids: [] }],
    ["more than 100 ids", { ids: Array.from({ length: 101 }, (_, i) => `id-${i}`) }],
    ["an id that breaks the id rules", { ids: ["has space"] }],
    ["an extra field", { ids: ["x"], extra: 1 }],
  ])("answers a receipt with %s with invalid_body", async (_label, body) => {
    const d = await connect();
    const { id, bytes } = d.seal("ack", body);
    await d.publish(bytes);
    const reply = await d.waitFor((m) => m.payload?.re === id);
    expect(reply.payload!.type).toBe("error");
    expect((reply.payload!.body as { code: string }).code).toBe("invalid_body");
  });
});
