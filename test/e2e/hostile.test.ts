import fc from "fast-check";
import { afterEach, describe, expect, it } from "vitest";
import { upTopic } from "../../src/protocol/topics.ts";
import type { Db } from "../../src/store/db.ts";
import { startTestBroker, type TestBroker } from "../helpers.ts";
import { closed, RawDevice, snapshot } from "../wire.ts";

/**
 * Every table (read from the schema, so tables added later are covered too); unauthenticated
 * bytes may change none of them, the outbox included.
 */
const tables = (db: Db) =>
  (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name").all() as { name: string }[]).map((r) => r.name);
const utf8 = new TextEncoder();

describe("hostile input on the device's own up topic", () => {
  let broker: TestBroker;
  const devices: RawDevice[] = [];
  afterEach(async () => {
    await Promise.all(devices.splice(0).map((d) => d.close()));
    await broker.stop();
  });

  async function connect(subscribe = true, pubacks = true): Promise<RawDevice> {
    const d = await RawDevice.connect(broker.url, broker.register("terminal"), broker.publicKey, subscribe, {}, pubacks);
    devices.push(d);
    return d;
  }

  it("never crashes the broker nor changes stored state, and a valid ping still gets a pong", async () => {
    // A burst well above the property's runs, so every input reaches the envelope checks.
    broker = await startTestBroker({ deviceBurst: 100_000, deviceRatePerSec: 100_000 });
    // It sends no PUBACK for what it receives (a PUBACK marks a reply delivered, a write of its
    // own), so any change to the tables could only come from the hostile bytes.
    const d = await connect(true, false);

    // A valid message goes first, so a mutation that still verifies is its duplicate (no write).
    const valid = d.seal("ping", { echo: "the original" });
    await d.publish(valid.bytes);
    await d.waitFor((m) => m.payload?.re === valid.id);
    const TABLES = tables(broker.db);
    expect(TABLES).toEqual(expect.arrayContaining(["devices", "seen_messages", "used_tokens", "admin_events", "schema_migrations", "outbox"]));
    const before = snapshot(broker.db, TABLES);
    expect(before.outbox).toHaveLength(1);

    const validBytes = valid.bytes;
    const mutated = fc
      .array(
        fc.oneof(
          fc.record({ kind: fc.constant("flip" as const), at: fc.nat(), mask: fc.integer({ min: 1, max: 255 }) }),
          fc.record({ kind: fc.constant("insert" as const), at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }),
          fc.record({ kind: fc.constant("delete" as const), at: fc.nat() }),
          fc.record({ kind: fc.constant("truncate" as const), at: fc.nat() }),
        ),
        { minLength: 1, maxLength: 4 },
      )
      .map((edits) => {
        let bytes = Array.from(validBytes);
        for (const e of edits) {
          const at = e.at % Math.max(bytes.length, 1);
          if (e.kind === "flip" && bytes.length > 0) bytes[at] = bytes[at]! ^ e.mask;
          else if (e.kind === "insert") bytes.splice(at, 0, e.byte);
          else if (e.kind === "delete") bytes.splice(at, 1);
          else if (e.kind === "truncate") bytes = bytes.slice(0, at);
        }
        return Uint8Array.from(bytes);
      });
    const hostile = fc.oneof(
      fc.uint8Array({ maxLength: 4096 }),
      fc.json().map((text) => utf8.encode(text)),
      fc.json().map((text) => utf8.encode(JSON.stringify({ payload: text, sig: Buffer.alloc(64).toString("base64") }))),
      mutated,
    );

    let published = 0;
    await fc.assert(
      fc.asyncProperty(hostile, async (bytes) => {
        // Compared per run, so a failure shrinks to (and prints the seed of) the input that wrote.
        const runBefore = snapshot(broker.db, TABLES);
        // The PUBACK comes once the broker has handled (and answered) the message.
        await d.publish(bytes);
        published++;
        expect(d.client.connected).toBe(true);
        expect(snapshot(broker.db, TABLES)).toEqual(runBefore);
      }),
      { numRuns: 150 },
    );

    expect(published).toBe(150);
    expect(snapshot(broker.db, TABLES)).toEqual(before);
    // Every broker message the device got verifies against the broker key.
    expect(d.received.every((m) => m.payload !== null)).toBe(true);
    expect((await d.ping()).type).toBe("pong");
  });

  describe("packet size limit", () => {
    const LIMIT = 2048;
    // A QoS 1 PUBLISH on hp/v1/<20-char id>/up: type byte, 2-byte length, 2 + 29 topic bytes,
    // 2-byte packet id, then the payload.
    const overhead = (deviceId: string) => 1 + 2 + 2 + utf8.encode(upTopic(deviceId)).length + 2;

    it("drops a connection that sends a packet over the limit and keeps the others", async () => {
      broker = await startTestBroker({ maxPacketBytes: LIMIT });
      const bystander = await connect();
      const offender = await connect();
      const gone = closed(offender.client);
      offender.client.publish(upTopic(offender.id), Buffer.alloc(4096, 0x61), { qos: 1 });
      await gone;
      expect(offender.client.connected).toBe(false);
      expect(bystander.client.connected).toBe(true);
      expect((await bystander.ping()).type).toBe("pong");
    });

    it("drops a packet one byte over the limit", async () => {
      broker = await startTestBroker({ maxPacketBytes: LIMIT });
      const d = await connect();
      const gone = closed(d.client);
      d.client.publish(upTopic(d.id), Buffer.alloc(LIMIT - overhead(d.id) + 1, 0x61), { qos: 1 });
      await gone;
      expect(d.client.connected).toBe(false);
    });

    it("accepts a packet of exactly the limit", async () => {
      broker = await startTestBroker({ maxPacketBytes: LIMIT });
      const d = await connect();
      await d.publish(Buffer.alloc(LIMIT - overhead(d.id), 0x61));
      expect(d.client.connected).toBe(true);
      expect((await d.ping()).type).toBe("pong");
    });
  });
});
