import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { Device, Received } from "../../device-sim/device.ts";
import type { DeviceKey } from "../../device-sim/keyfile.ts";
import { generateKeyPair, Signer, type KeyPair } from "../../src/crypto/ed25519.ts";
import { BROKER_ID, type Payload } from "../../src/protocol/envelope.ts";
import type { ErrorCode } from "../../src/protocol/errors.ts";
import { downBodies } from "../../src/protocol/messages.ts";
import { downTopic } from "../../src/protocol/topics.ts";
import { isStorageFault } from "../../src/service/inbox.ts";
import { startTestBroker, type TestBroker } from "../helpers.ts";
import { count, envelopeOf, RawDevice, sealWith } from "../wire.ts";

const FRESHNESS_MS = 60_000;
const utf8 = new TextEncoder();

/** Asserts a reply is the broker's signed `error` answer with this code to this message. */
function expectError(reply: Received, deviceId: string, code: ErrorCode, inReplyTo: string | null): void {
  expect(reply.type).toBe("error");
  expect(reply.from).toBe(BROKER_ID);
  expect(reply.to).toBe(deviceId);
  const body = downBodies.error.parse(reply.body);
  expect(body).toEqual({ code, detail: expect.any(String), inReplyTo });
  expect(body.detail).not.toMatch(/\n\s+at /); // no stack trace reaches a device
  expect(reply.re).toBe(inReplyTo ?? undefined);
}

describe("error replies", () => {
  let broker: TestBroker;
  let key: DeviceKey;
  let d: Device;

  beforeEach(async () => {
    broker = await startTestBroker({ freshnessMs: FRESHNESS_MS });
    key = broker.register("terminal");
    d = await broker.device(key);
  });
  afterEach(async () => {
    await broker.stop();
  });

  /** Publishes bytes whose message id the broker can read, and returns its answer. */
  async function answerTo(id: string, bytes: Uint8Array): Promise<Received> {
    const answer = d.waitFor(id, 5000);
    d.publishRaw(bytes);
    return answer;
  }

  /** Publishes bytes without a readable id and returns the next error that answers no id. */
  async function anonymousAnswer(bytes: Uint8Array | string): Promise<Received> {
    const answer = d.next("error", 5000, (m) => m.re === undefined);
    d.publishRaw(bytes);
    return answer;
  }

  async function expectStillAnswersPing(): Promise<void> {
    const pong = await d.call("ping", { echo: "after" });
    expect(pong.type).toBe("pong");
    expect(pong.body.echo).toBe("after");
  }

  function sealed(fields: Partial<Payload> = {}, pair: KeyPair = key.pair) {
    return sealWith(pair, { type: "ping", from: key.deviceId, body: {}, ...fields });
  }

  describe("malformed", () => {
    it.each([
      ["bytes that are not UTF-8", new Uint8Array([0xff, 0xfe, 0x00, 0x80])],
      ["text that is not JSON", utf8.encode("hello broker")],
      ["an empty payload", new Uint8Array(0)],
      ["JSON null", utf8.encode("null")],
      ["a JSON array", utf8.encode("[1,2,3]")],
      ["an object of the wrong shape", utf8.encode('{"hello":"world"}')],
      ["an envelope with an extra field", utf8.encode('{"payload":"{}","sig":"","x":1}')],
      ["an envelope whose payload is not a string", utf8.encode('{"payload":{"v":1},"sig":""}')],
      ["an envelope whose payload text is not JSON", utf8.encode('{"payload":"not json","sig":""}')],
    ])("answers %s with malformed and no inReplyTo", async (_label, bytes) => {
      const reply = await anonymousAnswer(bytes);
      expectError(reply, key.deviceId, "malformed", null);
      await expectStillAnswersPing();
    });

    it.each([
      ["a signature that is not base64", "!!not base64!!"],
      ["base64 of 63 bytes", Buffer.alloc(63).toString("base64")],
      ["base64 without padding", Buffer.alloc(64).toString("base64").replace(/=+$/, "")],
    ])("answers a readable message with %s as its signature with malformed, in reply to its id", async (_label, sig) => {
      const { id, text } = sealed({ body: { echo: "x" } });
      const payloadText = (JSON.parse(text) as { payload: string }).payload;
      const reply = await answerTo(id, envelopeOf(payloadText, sig));
      expectError(reply, key.deviceId, "malformed", id);
      await expectStillAnswersPing();
    });

    it.each([
      ["a missing timestamp", (p: Record<string, unknown>) => delete p.ts],
      ["a negative timestamp", (p: Record<string, unknown>) => (p.ts = -1)],
      ["a type with capitals", (p: Record<string, unknown>) => (p.type = "Ping")],
      ["a body that is an array", (p: Record<string, unknown>) => (p.body = [])],
      ["an unknown payload field", (p: Record<string, unknown>) => (p.extra = true)],
    ])("answers a payload with %s with malformed, in reply to its id", async (_label, mutate) => {
      const id = `m-${Math.random().toString(36).slice(2)}`;
      const payload: Record<string, unknown> = { v: 1, type: "ping", id, from: key.deviceId, to: BROKER_ID, ts: Date.now(), body: {} };
      mutate(payload);
      const text = JSON.stringify(payload);
      const reply = await answerTo(id, envelopeOf(text, new Signer(key.pair).sign(utf8.encode(text))));
      expectError(reply, key.deviceId, "malformed", id);
      await expectStillAnswersPing();
    });

    it("answers a payload whose id breaks the id rules with malformed and no inReplyTo", async () => {
      const payload = { v: 1, type: "ping", id: "has spaces", from: key.deviceId, to: BROKER_ID, ts: Date.now(), body: {} };
      const text = JSON.stringify(payload);
      const reply = await anonymousAnswer(envelopeOf(text, new Signer(key.pair).sign(utf8.encode(text))));
      expectError(reply, key.deviceId, "malformed", null);
      await expectStillAnswersPing();
    });
  });

  it("answers protocol version 2 with unsupported_version", async () => {
    const { id, bytes } = sealed({ v: 2 as 1 });
    expectError(await answerTo(id, bytes), key.deviceId, "unsupported_version", id);
    await expectStillAnswersPing();
  });

  it("answers a message that names another device as its sender with sender_mismatch", async () => {
    const other = broker.register("phone");
    const { id, bytes } = sealed({ from: other.deviceId });
    expectError(await answerTo(id, bytes), key.deviceId, "sender_mismatch", id);
    await expectStillAnswersPing();
  });

  it("does not answer a sender_mismatch message on the named device's topic", async () => {
    const other = broker.register("phone");
    const victim = await broker.device(other);
    const victimGot: Received[] = [];
    victim.on("message", (m) => victimGot.push(m));
    const { id, bytes } = sealed({ from: other.deviceId }, other.pair);
    expectError(await answerTo(id, bytes), key.deviceId, "sender_mismatch", id);
    // The victim's own pong comes after anything the broker would have sent it for `id`.
    expect((await victim.call("ping", {})).type).toBe("pong");
    expect(victimGot.map((m) => m.type)).toEqual(["pong"]);
  });

  it.each([
    ["another device", () => broker.register("phone").deviceId],
    ["the sender itself", () => key.deviceId],
    ["a name close to the broker's", () => "Broker"],
  ])("answers a message addressed to %s with misaddressed", async (_label, to) => {
    const { id, bytes } = sealed({ to: to() });
    expectError(await answerTo(id, bytes), key.deviceId, "misaddressed", id);
    await expectStillAnswersPing();
  });

  describe("bad_signature", () => {
    it("answers a message signed by another key", async () => {
      const { id, bytes } = sealed({}, generateKeyPair());
      expectError(await answerTo(id, bytes), key.deviceId, "bad_signature", id);
      await expectStillAnswersPing();
    });

    it("answers a message signed by another registered device's key", async () => {
      const other = broker.register("phone");
      const { id, bytes } = sealed({}, other.pair);
      expectError(await answerTo(id, bytes), key.deviceId, "bad_signature", id);
      await expectStillAnswersPing();
    });

    it("answers a message whose payload changed after signing", async () => {
      const { id, text } = sealed({ body: { echo: "pay 10" } });
      const env = JSON.parse(text) as { payload: string; sig: string };
      const tampered = env.payload.replace("pay 10", "pay 99");
      expect(tampered).not.toBe(env.payload);
      expectError(await answerTo(id, envelopeOf(tampered, env.sig)), key.deviceId, "bad_signature", id);
      await expectStillAnswersPing();
    });

    it("answers a message whose signature has one flipped bit", async () => {
      const { id, text } = sealed({});
      const env = JSON.parse(text) as { payload: string; sig: string };
      const sig = Buffer.from(env.sig, "base64");
      sig[10] = sig[10]! ^ 0x01;
      expectError(await answerTo(id, envelopeOf(env.payload, sig)), key.deviceId, "bad_signature", id);
      await expectStillAnswersPing();
    });

    it("answers a payload re-serialised with other whitespace (the signature covers the exact text)", async () => {
      const { id, text } = sealed({ body: { echo: "x" } });
      const env = JSON.parse(text) as { payload: string; sig: string };
      const reformatted = JSON.stringify(JSON.parse(env.payload), null, 1);
      expectError(await answerTo(id, envelopeOf(reformatted, env.sig)), key.deviceId, "bad_signature", id);
      await expectStillAnswersPing();
    });
  });

  it.each([
    ["older than the window", -FRESHNESS_MS - 5_000],
    ["newer than the window", FRESHNESS_MS + 5_000],
  ])("answers a timestamp %s with stale", async (_label, offsetMs) => {
    const { id, bytes } = sealed({ ts: Date.now() + offsetMs });
    expectError(await answerTo(id, bytes), key.deviceId, "stale", id);
    await expectStillAnswersPing();
  });

  it("answers a used message id with a different body with message_id_reused", async () => {
    const id = "order-42";
    const first = await d.request("ping", { echo: "first" }, 5000, { id });
    expect(first.type).toBe("pong");
    const second = await d.request("ping", { echo: "second" }, 5000, { id });
    expectError(second, key.deviceId, "message_id_reused", id);
    await expectStillAnswersPing();
  });

  it("answers an unknown message type with unknown_type", async () => {
    const { id, bytes } = sealed({ type: "teleport" });
    expectError(await answerTo(id, bytes), key.deviceId, "unknown_type", id);
    await expectStillAnswersPing();
  });

  it.each([
    ["a number as echo", { echo: 123 }],
    ["an extra field", { echo: "x", extra: 1 }],
    ["an echo longer than 256 characters", { echo: "x".repeat(257) }],
  ])("answers a ping with %s with invalid_body", async (_label, body) => {
    const { id, bytes } = sealed({ body });
    expectError(await answerTo(id, bytes), key.deviceId, "invalid_body", id);
    await expectStillAnswersPing();
  });

  describe("precedence", () => {
    it.each<[string, () => Partial<Payload> & { pair?: KeyPair }, ErrorCode]>([
      ["version 2 from another sender", () => ({ v: 2 as 1, from: "dsomeoneelse" }), "unsupported_version"],
      ["another sender and another address", () => ({ from: "dsomeoneelse", to: "dnobody" }), "sender_mismatch"],
      ["another address and a bad signature", () => ({ to: "dnobody", pair: generateKeyPair() }), "misaddressed"],
      ["a bad signature and a stale timestamp", () => ({ ts: Date.now() - 10 * FRESHNESS_MS, pair: generateKeyPair() }), "bad_signature"],
      ["a stale timestamp and an unknown type", () => ({ ts: Date.now() - 10 * FRESHNESS_MS, type: "teleport" }), "stale"],
      ["an unknown type and an invalid body", () => ({ type: "teleport", body: { echo: 1 } }), "unknown_type"],
    ])("answers a message with %s with the earlier code", async (_label, make, code) => {
      const { pair, ...fields } = make();
      const { id, bytes } = sealed(fields, pair ?? key.pair);
      expectError(await answerTo(id, bytes), key.deviceId, code, id);
    });
  });

  it("answers a storage fault with unavailable, writes nothing, and handles the same id once storage is back", async () => {
    const tables = ["seen_messages", "outbox"];
    const before = tables.map((t) => count(broker.db, t));
    broker.db.pragma("query_only = ON");
    try {
      let writeError: unknown;
      try {
        broker.db.prepare("INSERT INTO admin_events (kind, at_ms) VALUES ('probe', 0)").run();
      } catch (err) {
        writeError = err;
      }
      expect(writeError).toMatchObject({ code: "SQLITE_READONLY" });
      expect(isStorageFault(writeError)).toBe(true);

      const refused = await d.request("ping", { echo: "x" }, 5000, { id: "retry-me" });
      expectError(refused, key.deviceId, "unavailable", "retry-me");
    } finally {
      broker.db.pragma("query_only = OFF");
    }
    expect(tables.map((t) => count(broker.db, t))).toEqual(before);

    const handled = await d.request("ping", { echo: "x" }, 5000, { id: "retry-me" });
    expect(handled.type).toBe("pong");
    expect(handled.body.echo).toBe("x");
  });
});

describe("rate limit", () => {
  let broker: TestBroker;
  afterEach(async () => {
    await broker.stop();
  });

  it("answers messages beyond the device's burst with rate_limited, in reply to each id", async () => {
    broker = await startTestBroker({ deviceBurst: 2, deviceRatePerSec: 1 });
    const d = await broker.device(broker.register("terminal"));
    const answers = await Promise.all(["r1", "r2", "r3", "r4", "r5", "r6"].map((id) => d.request("ping", {}, 5000, { id })));
    const limited = answers.filter((a) => a.type === "error");
    // 2 at once, then 1 a second: at most one more token can refill while six messages go out.
    expect(answers.filter((a) => a.type === "pong").length).toBeGreaterThanOrEqual(2);
    expect(limited.length).toBeGreaterThanOrEqual(3);
    for (const reply of limited) expectError(reply, d.id, "rate_limited", reply.re!);
  });

  it("limits each device on its own: the noisy one is answered rate_limited, the quiet one never", async () => {
    // The broker's clock stands still, so no bucket refills: exactly `burst` messages pass.
    const frozenMs = Date.now();
    broker = await startTestBroker({ deviceBurst: 2, deviceRatePerSec: 1 }, undefined, undefined, { clock: () => frozenMs });
    const noisy = await broker.device(broker.register("terminal"));
    const quiet = await broker.device(broker.register("phone"));
    const heard = (d: Device) => {
      const all: Received[] = [];
      d.on("message", (m) => all.push(m));
      return all;
    };
    const [noisyHeard, quietHeard] = [heard(noisy), heard(quiet)];
    const outcome = (m: Received) => (m.type === "error" ? String(m.body.code) : m.type);
    const noisyAnswers = await Promise.all(["a", "b", "c", "d", "e"].map((id) => noisy.request("ping", {}, 5000, { id })));
    expect(noisyAnswers.map(outcome).sort()).toEqual(["pong", "pong", "rate_limited", "rate_limited", "rate_limited"]);
    // The quiet device's own budget is whole, whatever the noisy one spent.
    const quietAnswers = await Promise.all(["f", "g"].map((id) => quiet.request("ping", {}, 5000, { id })));
    expect(quietAnswers.map(outcome)).toEqual(["pong", "pong"]);
    expect(noisyHeard.filter((m) => outcome(m) === "rate_limited")).toHaveLength(3);
    expect(quietHeard.filter((m) => m.type === "error")).toEqual([]);
  });
});

describe("duplicates", () => {
  let broker: TestBroker;
  let d: RawDevice;
  beforeEach(async () => {
    broker = await startTestBroker();
    d = await RawDevice.connect(broker.url, broker.register("terminal"), broker.publicKey);
  });
  afterEach(async () => {
    await d.close();
    await broker.stop();
  });

  it("answers the exact same message twice with the same stored reply and handles it once", async () => {
    const { id, bytes } = d.seal("ping", { echo: "once" });
    await d.publish(bytes);
    const first = await d.waitFor((m) => m.payload?.re === id);
    await d.publish(bytes);
    await d.waitFor((m) => m.payload?.re === id && m !== first);

    const replies = d.repliesTo(id);
    expect(replies).toHaveLength(2);
    expect(replies.every((m) => m.topic === downTopic(d.id))).toBe(true);
    expect(replies[0]!.payload!.type).toBe("pong");
    expect(replies[1]!.payload!.id).toBe(replies[0]!.payload!.id);
    expect(replies[1]!.bytes.equals(replies[0]!.bytes)).toBe(true);
    expect(broker.db.prepare("SELECT count(*) AS n FROM seen_messages WHERE msg_id = ?").get(id)).toEqual({ n: 1 });
    expect(broker.db.prepare("SELECT count(*) AS n FROM outbox WHERE re = ?").get(id)).toEqual({ n: 1 });
    expect((await d.ping()).type).toBe("pong");
  });

  it("answers a duplicate of the original with only its own answer after the id was reused", async () => {
    const original = d.seal("ping", { echo: "original" }, { id: "reused-then-retried" });
    await d.publish(original.bytes);
    const pong = await d.waitFor((m) => m.payload?.re === "reused-then-retried");
    const other = d.seal("ping", { echo: "other" }, { id: "reused-then-retried" });
    await d.publish(other.bytes);
    await d.waitFor((m) => m.payload?.re === "reused-then-retried" && m.payload.type === "error");
    const mark = d.received.length;
    await d.publish(original.bytes);
    await d.ping("sync"); // answers go out in order: the retry's answers arrive before this pong
    const retryAnswers = d.received.slice(mark).filter((m) => m.payload?.re === "reused-then-retried");
    expect(retryAnswers.map((m) => m.payload!.id)).toEqual([pong.payload!.id]);
  });

  it("answers a duplicate of a refused message with the same stored error", async () => {
    const { id, bytes } = d.seal("teleport", {});
    await d.publish(bytes);
    await d.publish(bytes);
    await d.waitFor((m) => d.repliesTo(id).length === 2 && m.payload?.re === id);
    const [a, b] = d.repliesTo(id);
    expect(a!.payload!.type).toBe("error");
    expect((a!.payload!.body as { code: string }).code).toBe("unknown_type");
    expect(b!.payload!.id).toBe(a!.payload!.id);
    expect(broker.db.prepare("SELECT count(*) AS n FROM outbox WHERE re = ?").get(id)).toEqual({ n: 1 });
  });
});

