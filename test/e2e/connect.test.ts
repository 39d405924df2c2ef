import mqtt, { type MqttClient } from "mqtt";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { generateKeyPair } from "../../src/crypto/ed25519.ts";
import { CONNACK } from "../../src/service/connect.ts";
import { revokeDevice } from "../../src/service/devices.ts";
import { newDeviceKey } from "../../device-sim/keyfile.ts";
import { startTestBroker, type TestBroker } from "../helpers.ts";
import { downTopic, upTopic } from "../../src/protocol/topics.ts";
import { closed, nonce, rawConnect, sealWith, subscribeGranted, tokenFor, withholdPubacks, type ConnectOutcome } from "../wire.ts";
import { parseEnvelope } from "../../src/protocol/envelope.ts";

const FRESHNESS_MS = 120_000;

describe("CONNECT", () => {
  let broker: TestBroker;
  const clients: MqttClient[] = [];

  beforeEach(async () => {
    broker = await startTestBroker({ freshnessMs: FRESHNESS_MS });
  });
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.endAsync(true)));
    await broker.stop();
  });

  /** Connects and keeps an accepted client for afterEach to close. */
  async function connect(options: Parameters<typeof rawConnect>[1]): Promise<ConnectOutcome> {
    const outcome = await rawConnect(broker.url, options);
    if (outcome.accepted) clients.push(outcome.client);
    return outcome;
  }

  function refusalCode(outcome: ConnectOutcome): number | "accepted" | undefined {
    return outcome.accepted ? "accepted" : outcome.code;
  }

  it("accepts a registered device with a fresh token signed by its key", async () => {
    const key = broker.register("terminal");
    const outcome = await connect({ clientId: key.deviceId, username: key.deviceId, password: tokenFor(key.deviceId, key.pair) });
    expect(refusalCode(outcome)).toBe("accepted");
  });

  it("refuses an anonymous client with CONNACK 5 (not authorized)", async () => {
    const key = broker.register("terminal");
    const outcome = await connect({ clientId: key.deviceId });
    expect(refusalCode(outcome)).toBe(CONNACK.notAuthorized);
  });

  it("refuses a username without a password with CONNACK 5", async () => {
    const key = broker.register("terminal");
    const outcome = await connect({ clientId: key.deviceId, username: key.deviceId });
    expect(refusalCode(outcome)).toBe(CONNACK.notAuthorized);
  });

  it("refuses a valid token of an unregistered key with CONNACK 2 (identifier rejected)", async () => {
    const stranger = newDeviceKey("terminal");
    const outcome = await connect({ clientId: stranger.deviceId, username: stranger.deviceId, password: tokenFor(stranger.deviceId, stranger.pair) });
    expect(refusalCode(outcome)).toBe(CONNACK.identifierRejected);
  });

  it("refuses a revoked device with CONNACK 5", async () => {
    const key = broker.register("terminal");
    expect(revokeDevice(broker.db, key.deviceId, Date.now())).toEqual({ ok: true });
    const outcome = await connect({ clientId: key.deviceId, username: key.deviceId, password: tokenFor(key.deviceId, key.pair) });
    expect(refusalCode(outcome)).toBe(CONNACK.notAuthorized);
  });

  it("refuses a token signed by another key with CONNACK 4 (bad username or password)", async () => {
    const key = broker.register("terminal");
    const outcome = await connect({ clientId: key.deviceId, username: key.deviceId, password: tokenFor(key.deviceId, generateKeyPair()) });
    expect(refusalCode(outcome)).toBe(CONNACK.badUsernameOrPassword);
  });

  it.each([
    ["older than the freshness window", -FRESHNESS_MS - 60_000],
    ["newer than the freshness window", FRESHNESS_MS + 60_000],
  ])("refuses a token %s with CONNACK 4", async (_label, offsetMs) => {
    const key = broker.register("terminal");
    const outcome = await connect({ clientId: key.deviceId, username: key.deviceId, password: tokenFor(key.deviceId, key.pair, Date.now() + offsetMs) });
    expect(refusalCode(outcome)).toBe(CONNACK.badUsernameOrPassword);
  });

  it("accepts a token once and refuses the same token again with CONNACK 4", async () => {
    const key = broker.register("terminal");
    const password = tokenFor(key.deviceId, key.pair);
    const first = await connect({ clientId: key.deviceId, username: key.deviceId, password });
    expect(refusalCode(first)).toBe("accepted");
    const second = await connect({ clientId: key.deviceId, username: key.deviceId, password });
    expect(refusalCode(second)).toBe(CONNACK.badUsernameOrPassword);
  });

  it("accepts exactly one of several CONNECTs that arrive together with the same token", async () => {
    const key = broker.register("terminal");
    const password = tokenFor(key.deviceId, key.pair);
    const outcomes = await Promise.all(Array.from({ length: 5 }, () => connect({ clientId: key.deviceId, username: key.deviceId, password })));
    const codes = outcomes.map(refusalCode);
    expect(codes.filter((c) => c === "accepted")).toHaveLength(1);
    expect(codes.filter((c) => c === CONNACK.badUsernameOrPassword)).toHaveLength(4);
  });

  it("accepts many devices connecting at once and records each one's token as used", async () => {
    const keys = Array.from({ length: 40 }, () => broker.register("terminal"));
    const outcomes = await Promise.all(keys.map((k) => connect({ clientId: k.deviceId, username: k.deviceId, password: tokenFor(k.deviceId, k.pair) })));
    expect(outcomes.every((o) => o.accepted)).toBe(true);
    const used = broker.db.prepare("SELECT count(DISTINCT device_id) AS n FROM used_tokens").get() as { n: number };
    expect(used.n).toBe(40);
  });

  it("does not consume a token whose connect was refused for another reason", async () => {
    const key = broker.register("terminal");
    const password = tokenFor(key.deviceId, key.pair);
    const wrongUser = await connect({ clientId: key.deviceId, username: "someone-else", password });
    expect(refusalCode(wrongUser)).toBe(CONNACK.badUsernameOrPassword);
    const retry = await connect({ clientId: key.deviceId, username: key.deviceId, password });
    expect(refusalCode(retry)).toBe("accepted");
  });

  it("answers CONNACK 3 (server unavailable) when it cannot record the token, and accepts the same token once storage is back", async () => {
    const key = broker.register("terminal");
    const password = tokenFor(key.deviceId, key.pair);
    broker.db.pragma("query_only = ON");
    let during: ConnectOutcome;
    try {
      during = await connect({ clientId: key.deviceId, username: key.deviceId, password });
    } finally {
      broker.db.pragma("query_only = OFF");
    }
    expect(refusalCode(during)).toBe(CONNACK.serverUnavailable);
    const after = await connect({ clientId: key.deviceId, username: key.deviceId, password });
    expect(refusalCode(after)).toBe("accepted");
  });

  it("refuses a clientId that is not the device the token names with CONNACK 2", async () => {
    const key = broker.register("terminal");
    const other = broker.register("terminal");
    const outcome = await connect({ clientId: other.deviceId, username: key.deviceId, password: tokenFor(key.deviceId, key.pair) });
    expect(refusalCode(outcome)).toBe(CONNACK.identifierRejected);
  });

  it("refuses a username that is not the device the token names with CONNACK 4", async () => {
    const key = broker.register("terminal");
    const other = broker.register("terminal");
    const outcome = await connect({ clientId: key.deviceId, username: other.deviceId, password: tokenFor(key.deviceId, key.pair) });
    expect(refusalCode(outcome)).toBe(CONNACK.badUsernameOrPassword);
  });

  it.each([
    ["free text", () => "hunter2"],
    ["the wrong prefix", (id: string) => `hp2.${id}.${Date.now()}.${nonce()}.${"A".repeat(86)}==`],
    ["too few parts", (id: string) => `hp1.${id}.${Date.now()}.${nonce()}`],
    ["a short nonce", (id: string) => `hp1.${id}.${Date.now()}.short.${"A".repeat(86)}==`],
    ["a non-decimal timestamp", (id: string) => `hp1.${id}.0x10.${nonce()}.${"A".repeat(86)}==`],
    ["a signature that is not base64", (id: string) => `hp1.${id}.${Date.now()}.${nonce()}.${"*".repeat(88)}`],
    ["a 32-byte signature", (id: string) => `hp1.${id}.${Date.now()}.${nonce()}.${Buffer.alloc(32).toString("base64")}`],
    ["more than 512 bytes", (id: string) => `hp1.${id}.${Date.now()}.${nonce()}.${"A".repeat(600)}`],
  ])("refuses a password with %s with CONNACK 4", async (_label, password) => {
    const key = broker.register("terminal");
    const outcome = await connect({ clientId: key.deviceId, username: key.deviceId, password: password(key.deviceId) });
    expect(refusalCode(outcome)).toBe(CONNACK.badUsernameOrPassword);
  });

  it("refuses an empty clientId with CONNACK 2", async () => {
    const key = broker.register("terminal");
    const outcome = await connect({ clientId: "", username: key.deviceId, password: tokenFor(key.deviceId, key.pair) });
    expect(refusalCode(outcome)).toBe(CONNACK.identifierRejected);
  });

  it("closes a CONNECT with a password but no username without a CONNACK [MQTT-3.1.2-22]", async () => {
    const key = broker.register("terminal");
    const outcome = await connect({ clientId: key.deviceId, password: tokenFor(key.deviceId, key.pair) });
    expect(outcome).toMatchObject({ accepted: false, code: undefined });
  });

  it("accepts a keepalive of exactly the 300 s limit", async () => {
    const key = broker.register("terminal");
    const outcome = await connect({ keepalive: 300, clientId: key.deviceId, username: key.deviceId, password: tokenFor(key.deviceId, key.pair) });
    expect(refusalCode(outcome)).toBe("accepted");
  });

  it("keeps no MQTT session: clean session 0 is accepted as 1, the CONNACK says no session present, and nothing of the last connection comes from a session", async () => {
    // docs/protocol.md §Transport: "a CONNECT with clean session 0 is accepted but handled as 1,
    // and the CONNACK's session-present flag is always 0".
    const key = broker.register("terminal");
    const persistent = { clean: false, clientId: key.deviceId, username: key.deviceId, protocolVersion: 4 as const, reconnectPeriod: 0 };
    /** Connects and resolves with the CONNACK's session-present flag, or the refusal. */
    const connectPersistent = () => {
      const client = mqtt.connect(broker.url, { ...persistent, password: tokenFor(key.deviceId, key.pair) });
      clients.push(client);
      return new Promise<{ client: MqttClient; sessionPresent: boolean } | { refused: number | undefined }>((resolve) => {
        client.once("connect", (connack) => resolve({ client, sessionPresent: connack.sessionPresent }));
        client.once("error", (err) => resolve({ refused: (err as { code?: number }).code }));
        client.once("close", () => resolve({ refused: undefined }));
      });
    };
    const pongIds = (all: { bytes: Buffer }[], re: string) =>
      all.map((m) => parseEnvelope(m.bytes)).flatMap((p) => (p.ok && p.msg.payload.re === re ? [p.msg.payload.id] : []));

    const first = await connectPersistent();
    if (!("client" in first)) throw new Error(`clean session 0 refused: ${JSON.stringify(first)}`);
    expect(first.sessionPresent).toBe(false);
    // A subscription and a QoS 1 message never acknowledged: what a kept session would hold.
    withholdPubacks(first.client);
    const firstGot: { bytes: Buffer }[] = [];
    first.client.on("message", (_t, bytes) => firstGot.push({ bytes }));
    expect(await subscribeGranted(first.client, downTopic(key.deviceId))).toBe(1);
    const ping = sealWith(key.pair, { type: "ping", from: key.deviceId });
    await first.client.publishAsync(upTopic(key.deviceId), Buffer.from(ping.bytes), { qos: 1 });
    await expect.poll(() => pongIds(firstGot, ping.id).length, { timeout: 5000 }).toBe(1);
    const [pongId] = pongIds(firstGot, ping.id);
    await first.client.endAsync();

    const second = await connectPersistent();
    if (!("client" in second)) throw new Error(`clean session 0 refused: ${JSON.stringify(second)}`);
    expect(second.sessionPresent).toBe(false);
    const secondGot: { bytes: Buffer; dup: boolean }[] = [];
    second.client.on("message", (_t, bytes, packet) => secondGot.push({ bytes, dup: packet.dup }));
    expect(await subscribeGranted(second.client, downTopic(key.deviceId))).toBe(1);
    // A sync point: the answer to this ping comes after anything sent on connect or subscribe.
    const sync = sealWith(key.pair, { type: "ping", from: key.deviceId });
    await second.client.publishAsync(upTopic(key.deviceId), Buffer.from(sync.bytes), { qos: 1 });
    await expect.poll(() => pongIds(secondGot, sync.id).length, { timeout: 5000 }).toBe(1);
    // The unacknowledged pong comes again once, from the broker's outbox after the new SUBSCRIBE,
    // not a second time from an MQTT session (which would also flag it dup).
    expect(pongIds(secondGot, ping.id)).toEqual([pongId]);
    expect(secondGot.filter((m) => m.dup)).toEqual([]);
  });

  it("refuses an MQTT 5 CONNECT with return code 1 (unacceptable protocol version)", async () => {
    const key = broker.register("terminal");
    const outcome = await connect({ protocolVersion: 5, clientId: key.deviceId, username: key.deviceId, password: tokenFor(key.deviceId, key.pair) });
    expect(refusalCode(outcome)).toBe(1);
  });

  it("keeps the token of a refused MQTT 5 CONNECT unused", async () => {
    const key = broker.register("terminal");
    const password = tokenFor(key.deviceId, key.pair);
    await connect({ protocolVersion: 5, clientId: key.deviceId, username: key.deviceId, password });
    const outcome = await connect({ clientId: key.deviceId, username: key.deviceId, password });
    expect(refusalCode(outcome)).toBe("accepted");
  });

  it("disconnects a connected device once it is revoked, and refuses it afterwards", async () => {
    const key = broker.register("terminal");
    const outcome = await connect({ clientId: key.deviceId, username: key.deviceId, password: tokenFor(key.deviceId, key.pair) });
    if (!outcome.accepted) throw new Error(outcome.message);
    const gone = closed(outcome.client, 5000);
    expect(revokeDevice(broker.db, key.deviceId, Date.now())).toEqual({ ok: true });
    await gone;
    const again = await connect({ clientId: key.deviceId, username: key.deviceId, password: tokenFor(key.deviceId, key.pair) });
    expect(refusalCode(again)).toBe(CONNACK.notAuthorized);
  });

  it("keeps other devices connected when one is revoked", async () => {
    const revoked = broker.register("terminal");
    const kept = await broker.device(broker.register("terminal"));
    const outcome = await connect({ clientId: revoked.deviceId, username: revoked.deviceId, password: tokenFor(revoked.deviceId, revoked.pair) });
    if (!outcome.accepted) throw new Error(outcome.message);
    const gone = closed(outcome.client, 5000);
    revokeDevice(broker.db, revoked.deviceId, Date.now());
    await gone;
    expect(kept.connected).toBe(true);
    expect((await kept.call("ping", {})).type).toBe("pong");
  });
});
