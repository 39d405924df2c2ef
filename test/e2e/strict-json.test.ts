/**
 * Signed messages whose JSON repeats a member name or uses a prototype key, sent to a real
 * broker over MQTT: each is refused as `malformed` though its signature is good, and no table
 * changes (docs/protocol.md §Envelope, steps 2 and 4).
 */
import { randomUUID } from "node:crypto";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { Signer, verify } from "../../src/crypto/ed25519.ts";
import { downBodies } from "../../src/protocol/messages.ts";
import type { Db } from "../../src/store/db.ts";
import { startTestBroker, type TestBroker } from "../helpers.ts";
import { envelopeOf, RawDevice, snapshot, type DownMessage } from "../wire.ts";

const utf8 = new TextEncoder();

/** Every table, read from the schema, so tables added later are covered too. */
const tables = (db: Db) =>
  (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name").all() as { name: string }[]).map((r) => r.name);

/** The payload text of a ping from `from`, with `extra` spliced in as raw members. */
function pingText(from: string, id: string, { top = "", body = "" }: { top?: string; body?: string } = {}): string {
  return `{"v":1,"type":"ping","id":"${id}","from":"${from}","to":"broker","ts":${Date.now()},"body":{"echo":"hi"${body}}${top}}`;
}

describe("member names the broker refuses, in correctly signed messages", () => {
  let broker: TestBroker;
  let d: RawDevice;
  let signer: Signer;

  beforeEach(async () => {
    broker = await startTestBroker();
    // No PUBACKs: a PUBACK marks a stored answer delivered, a write of its own, so any change
    // to the tables could only come from the refused messages.
    d = await RawDevice.connect(broker.url, broker.register("terminal"), broker.publicKey, true, {}, false);
    signer = new Signer(d.key.pair);
  });
  afterEach(async () => {
    await d.close();
    await broker.stop();
  });

  /** Publishes the bytes and returns the broker's next message, which must be a signed error. */
  async function answerTo(bytes: Uint8Array): Promise<{ code: string; detail: string; inReplyTo: string | null; re: string | undefined }> {
    const seen = d.received.length;
    await d.publish(bytes);
    const m: DownMessage = await d.waitFor((x) => d.received.indexOf(x) >= seen);
    expect(m.payload, "the answer carries a good broker signature").not.toBeNull();
    expect(m.payload!.type).toBe("error");
    return { ...downBodies.error.parse(m.payload!.body), re: m.payload!.re };
  }

  /** An envelope around exactly this payload text, with the device's real signature over it. */
  function signed(text: string): Uint8Array {
    const sig = signer.sign(utf8.encode(text));
    expect(verify(d.key.pair.publicKey, utf8.encode(text), sig)).toBe(true);
    return envelopeOf(text, sig);
  }

  it.each<[string, (from: string, ids: [string, string]) => Uint8Array, string, "none" | "first"]>([
    ["a payload that repeats its id", (from, [a, b]) => signed(pingText(from, a, { top: `,"id":"${b}"` })), 'payload: duplicate member name "id"', "none"],
    ["a payload that repeats its id, spelled with escapes", (from, [a, b]) => signed(pingText(from, a, { top: `,"\\u0069d":"${b}"` })), 'payload: duplicate member name "id"', "none"],
    ["a payload that repeats v, the second one 2 (malformed comes before unsupported_version)", (from, [a]) => signed(pingText(from, a, { top: ',"v":2' })), 'payload: duplicate member name "v"', "first"],
    ["a payload that repeats a member of its body", (from, [a]) => signed(pingText(from, a, { body: ',"echo":"again"' })), 'payload: duplicate member name "echo" in body', "first"],
    ["a payload with __proto__ inside its body", (from, [a]) => signed(pingText(from, a, { body: ',"__proto__":{"admin":true}' })), 'payload: member name "__proto__" in body is not allowed', "first"],
    ["a payload with constructor at the top level", (from, [a]) => signed(pingText(from, a, { top: ',"constructor":{"prototype":{}}' })), 'payload: member name "constructor" is not allowed', "first"],
    [
      "an envelope that repeats payload, a good signed one last",
      (from, [a, b]) => {
        const good = JSON.parse(new TextDecoder().decode(signed(pingText(from, b)))) as { payload: string; sig: string };
        return utf8.encode(`{"payload":${JSON.stringify(pingText(from, a))},"payload":${JSON.stringify(good.payload)},"sig":"${good.sig}"}`);
      },
      'envelope: duplicate member name "payload"',
      "none",
    ],
  ])("answers %s with malformed, changes no table, and still answers a ping", async (_label, make, detail, replyTo) => {
    const TABLES = tables(broker.db);
    expect(TABLES).toEqual(expect.arrayContaining(["devices", "seen_messages", "outbox", "payments"]));
    const before = snapshot(broker.db, TABLES);

    const ids: [string, string] = [randomUUID(), randomUUID()];
    const answer = await answerTo(make(d.id, ids));
    const inReplyTo = replyTo === "first" ? ids[0] : null;
    expect(answer).toEqual({ code: "malformed", detail, inReplyTo, re: inReplyTo ?? undefined });

    expect(snapshot(broker.db, TABLES)).toEqual(before);
    const pong = await d.ping("after");
    expect(pong).toMatchObject({ type: "pong", body: { echo: "after" } });
  });
});
