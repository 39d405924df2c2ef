import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { DeviceKey } from "../../device-sim/keyfile.ts";
import { downTopic, upTopic } from "../../src/protocol/topics.ts";
import { startTestBroker, type TestBroker } from "../helpers.ts";
import { closed, connectAs, RawDevice, sealWith, subscribeGranted } from "../wire.ts";

const REFUSED = 128;

describe("topic ACL", () => {
  let broker: TestBroker;
  let self: DeviceKey;
  let other: DeviceKey;
  const devices: RawDevice[] = [];

  beforeEach(async () => {
    broker = await startTestBroker();
    self = broker.register("terminal");
    other = broker.register("phone");
  });
  afterEach(async () => {
    await Promise.all(devices.splice(0).map((d) => d.close()));
    await broker.stop();
  });

  async function connect(key: DeviceKey, subscribe = false): Promise<RawDevice> {
    const d = await RawDevice.connect(broker.url, key, broker.publicKey, subscribe);
    devices.push(d);
    return d;
  }

  describe("subscribe", () => {
    it.each([
      ["its own down topic", (me: string) => downTopic(me)],
      ["a multi-level filter under its own down topic", (me: string) => `${downTopic(me)}/#`],
      ["a single-level filter under its own down topic", (me: string) => `${downTopic(me)}/+`],
      ["a literal level under its own down topic", (me: string) => `${downTopic(me)}/x/+/#`],
    ])("grants %s", async (_label, filter) => {
      const d = await connect(self);
      expect(await subscribeGranted(d.client, filter(self.deviceId))).toBe(1);
    });

    it.each([
      ["another device's down topic", (_me: string, them: string) => downTopic(them)],
      ["another device's up topic", (_me: string, them: string) => upTopic(them)],
      ["everything (#)", () => "#"],
      ["the whole tree (hp/#)", () => "hp/#"],
      ["every device's down topic (hp/v1/+/down)", () => "hp/v1/+/down"],
      ["any four levels (+/+/+/+)", () => "+/+/+/+"],
      ["$SYS/#", () => "$SYS/#"],
      ["its own up topic", (me: string) => upTopic(me)],
      ["its own subtree (hp/v1/<id>/#)", (me: string) => `hp/v1/${me}/#`],
      ["its own subtree's single level (hp/v1/<id>/+)", (me: string) => `hp/v1/${me}/+`],
      ["the topic root with a wildcard version (hp/+/<id>/down)", (me: string) => `hp/+/${me}/down`],
    ])("refuses %s with SUBACK 0x80", async (_label, filter) => {
      const d = await connect(self);
      expect(await subscribeGranted(d.client, filter(self.deviceId, other.deviceId))).toBe(REFUSED);
    });

    it("keeps the connection usable after a refused subscription", async () => {
      const d = await connect(self);
      expect(await subscribeGranted(d.client, "#")).toBe(REFUSED);
      expect(await subscribeGranted(d.client, downTopic(self.deviceId))).toBe(1);
      expect((await d.ping()).type).toBe("pong");
    });
  });

  describe("publish", () => {
    it("accepts a publish on its own up topic", async () => {
      const d = await connect(self, true);
      expect((await d.ping()).type).toBe("pong");
      expect(d.client.connected).toBe(true);
    });

    it.each([
      ["another device's up topic", (_me: string, them: string) => upTopic(them)],
      ["another device's down topic", (_me: string, them: string) => downTopic(them)],
      ["its own down topic", (me: string) => downTopic(me)],
      ["$SYS/x", () => "$SYS/x"],
      ["a topic outside hp/v1", () => "elsewhere/x"],
      ["a level below its own up topic", (me: string) => `${upTopic(me)}/extra`],
      ["its own up topic under another version", (me: string) => `hp/v2/${me}/up`],
    ])("closes the connection on a publish to %s", async (_label, topic) => {
      const d = await connect(self);
      const gone = closed(d.client);
      d.client.publish(topic(self.deviceId, other.deviceId), Buffer.from("{}"), { qos: 1 });
      await gone;
      expect(d.client.connected).toBe(false);
    });

    it("does not deliver a refused publish to the owner of the topic", async () => {
      const victim = await connect(other, true);
      const attacker = await connect(self);
      const gone = closed(attacker.client);
      attacker.client.publish(downTopic(other.deviceId), Buffer.from("forged"), { qos: 1 });
      await gone;
      // The victim's own ping answer comes after anything the broker would have routed to it.
      expect((await victim.ping()).type).toBe("pong");
      expect(victim.received.map((m) => m.bytes.toString())).not.toContain("forged");
      expect(victim.received.every((m) => m.payload !== null)).toBe(true);
    });
  });

  it("never acts on a will, even a signed message left on the device's own up topic", async () => {
    const victim = await connect(other, true);
    const signed = sealWith(self.pair, { type: "ping", from: self.deviceId, body: { echo: "from the grave" } });
    const dropper = await connectAs(broker.url, self, { will: { topic: upTopic(self.deviceId), payload: Buffer.from(signed.bytes), qos: 1, retain: false } });
    dropper.stream.destroy(); // an abrupt drop, no DISCONNECT: the case a will is for
    // Aedes hands a will to authorizePublish (and so to the inbox) before it forgets the client.
    await vi.waitFor(() => expect(Object.keys((broker.aedes as unknown as { clients: Record<string, unknown> }).clients)).not.toContain(self.deviceId));
    await broker.inbox.idle();
    await dropper.endAsync(true);
    expect(broker.db.prepare("SELECT count(*) AS n FROM seen_messages WHERE msg_id = ?").get(signed.id)).toEqual({ n: 0 });
    expect((await victim.ping()).type).toBe("pong");
    expect(victim.received).toHaveLength(1);
  });

  it("never delivers one device's messages to another", async () => {
    const a = await connect(self, true);
    const b = await connect(other, true);
    const aReply = await a.ping("for a only");
    const bReply = await b.ping("for b only");
    expect(aReply.type).toBe("pong");
    expect(bReply.type).toBe("pong");
    // Each connection delivers in order, so b's own pong arrives after anything routed to it earlier.
    expect(b.received.map((m) => m.topic)).toEqual([downTopic(other.deviceId)]);
    expect(b.received.map((m) => m.payload?.to)).toEqual([other.deviceId]);
    expect(a.received.map((m) => m.payload?.to)).toEqual([self.deviceId]);
  });
});
