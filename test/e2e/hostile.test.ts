import fc from "fast-check";
import { afterEach, describe, expect, it } from "vitest";
import { verify } from "../../src/crypto/ed25519.ts";
import type { ErrorCode } from "../../src/protocol/errors.ts";
import { checkMemberNames } from "../../src/protocol/strict-json.ts";
import { upTopic } from "../../src/protocol/topics.ts";
import type { Db } from "../../src/store/db.ts";
import { startTestBroker, type TestBroker } from "../helpers.ts";
import { closed, envelopeOf, RawDevice, snapshot, type DownMessage } from "../wire.ts";

/**
 * Every table (read from the schema, so tables added later are covered too); unauthenticated
 * bytes may change none of them, the outbox included.
 */
const tables = (db: Db) =>
  (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name").all() as { name: string }[]).map((r) => r.name);
const utf8 = new TextEncoder();

const isObject = (x: unknown): x is Record<string, unknown> => typeof x === "object" && x !== null && !Array.isArray(x);
const ID_RE = /^[A-Za-z0-9_.:-]{1,64}$/;
const STRICT_BASE64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/**
 * What the broker must answer to `bytes` from `deviceId`, worked out from docs/protocol.md
 * §Envelope ("How the broker checks a message from a device, in order", steps 2 to 11) and
 * written apart from the broker's parser: the first failing check's code, or "duplicate" for
 * bytes that pass every check (they can only carry the already handled payload, so the broker
 * answers with the reply it stored for it). Member-name rules use the shared scanner.
 */
function expectedAnswer(bytes: Uint8Array, deviceId: string, publicKey: Uint8Array, freshnessMs: number): ErrorCode | "duplicate" {
  let outerText: string;
  let outer: unknown;
  try {
    outerText = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    outer = JSON.parse(outerText);
  } catch {
    return "malformed"; // step 2
  }
  if (checkMemberNames(outerText).first !== null) return "malformed"; // step 2
  // Step 3: exactly {payload: string of 2 or more characters, sig: string of 100 or fewer}.
  if (!isObject(outer) || Object.keys(outer).sort().join() !== "payload,sig") return "malformed";
  const { payload, sig } = outer;
  if (typeof payload !== "string" || payload.length < 2 || typeof sig !== "string" || sig.length > 100) return "malformed";
  let inner: unknown;
  try {
    inner = JSON.parse(payload);
  } catch {
    return "malformed"; // step 4
  }
  if (checkMemberNames(payload).first !== null) return "malformed"; // step 4
  if (typeof inner === "object" && inner !== null && (inner as { v?: unknown }).v !== undefined && (inner as { v?: unknown }).v !== 1) return "unsupported_version"; // step 5
  // Step 6: the field table.
  if (!isObject(inner)) return "malformed";
  const allowed = new Set(["v", "type", "id", "from", "to", "ts", "re", "body"]);
  if (Object.keys(inner).some((k) => !allowed.has(k))) return "malformed";
  const { v, type, id, from, to, ts, re, body } = inner;
  if (v !== 1 || typeof type !== "string" || !/^[a-z][a-z0-9_]{0,31}$/.test(type) || typeof id !== "string" || !ID_RE.test(id)) return "malformed";
  if (typeof from !== "string" || from.length < 1 || from.length > 64 || typeof to !== "string" || to.length < 1 || to.length > 64) return "malformed";
  if (typeof ts !== "number" || !Number.isSafeInteger(ts) || ts < 0) return "malformed";
  if ((re !== undefined && (typeof re !== "string" || !ID_RE.test(re))) || !isObject(body)) return "malformed";
  // Step 7: strict base64 of exactly 64 bytes.
  if (!STRICT_BASE64_RE.test(sig) || Buffer.from(sig, "base64").length !== 64) return "malformed";
  if (from !== deviceId) return "sender_mismatch"; // step 8
  if (to !== "broker") return "misaddressed"; // step 9
  if (!verify(publicKey, utf8.encode(payload), new Uint8Array(Buffer.from(sig, "base64")))) return "bad_signature"; // step 10
  if (Math.abs(Date.now() - ts) > freshnessMs) return "stale"; // step 11
  return "duplicate";
}

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

  it("never crashes the broker nor changes stored state, answers each input once with the code the documented check order gives, and a valid ping still gets a pong", async () => {
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

    // Mutations of the signed message that each stop at a known check, run before the random ones.
    const validPayload = JSON.parse(new TextDecoder().decode(validBytes)) as { payload: string; sig: string };
    const inner = JSON.parse(validPayload.payload) as Record<string, unknown>;
    const withInner = (change: Record<string, unknown>) => envelopeOf(JSON.stringify({ ...inner, ...change }), validPayload.sig);
    const sigBytes = Buffer.from(validPayload.sig, "base64");
    sigBytes[0]! ^= 0x01;
    const examples: [Uint8Array][] = [
      [withInner({ from: "someone-else" })], // sender_mismatch
      [withInner({ to: "elsewhere" })], // misaddressed
      [withInner({ body: { echo: "changed" } })], // bad_signature
      [withInner({ v: 2 })], // unsupported_version
      [envelopeOf(validPayload.payload, sigBytes)], // bad_signature: another signature
      [utf8.encode(`{ ${new TextDecoder().decode(validBytes).slice(1)}`)], // the same message, with a space: a duplicate
      [utf8.encode(JSON.stringify({ ...validPayload, x: 1 }))], // malformed
    ];
    const pong = d.repliesTo(valid.id)[0]!;
    /** The answer as the broker's check order names it: a code, or "duplicate" for the stored pong again. */
    const outcome = (m: DownMessage) => {
      if (m.payload?.type === "error") return (m.payload.body as { code: string }).code;
      return m.bytes.equals(pong.bytes) ? "duplicate" : `unexpected ${m.payload?.type ?? "unverified message"}`;
    };

    let published = 0;
    await fc.assert(
      fc.asyncProperty(hostile, async (bytes) => {
        // Compared per run, so a failure names (with the seed) the input that wrote or was misanswered.
        const runBefore = snapshot(broker.db, TABLES);
        const seen = d.received.length;
        // The PUBACK comes once the broker has handled the message (its answer may come after).
        await d.publish(bytes);
        published++;
        const answer = await d.waitFor((m) => d.received.indexOf(m) >= seen);
        expect(d.client.connected).toBe(true);
        expect(snapshot(broker.db, TABLES)).toEqual(runBefore);
        // The answer the documented check order gives: never handled as a new message.
        expect(outcome(answer)).toBe(expectedAnswer(bytes, d.id, d.key.pair.publicKey, 120_000));
      }),
      // No shrinking: each try is a round trip to the broker, and a wrong code would take minutes to shrink.
      { numRuns: 150, examples, endOnFailure: true },
    );

    expect(published).toBe(150); // the examples count among the runs
    expect(snapshot(broker.db, TABLES)).toEqual(before);
    // Every broker message the device got verifies against the broker key.
    expect(d.received.every((m) => m.payload !== null)).toBe(true);
    // One answer each: the pong to this ping comes after every earlier answer.
    expect((await d.ping()).type).toBe("pong");
    expect(d.received).toHaveLength(1 + published + 1);
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
