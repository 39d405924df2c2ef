import { rmSync } from "node:fs";
import { afterEach, describe, expect, it } from "vitest";
import { startTestBroker, tempDir, type TestBroker } from "../helpers.ts";
import { count, RawDevice, rawConnect, tokenFor } from "../wire.ts";

describe("restart", () => {
  const brokers: TestBroker[] = [];
  const devices: RawDevice[] = [];
  let dataDir: string;

  afterEach(async () => {
    await Promise.all(devices.splice(0).map((d) => d.close()));
    for (const b of brokers.splice(0).reverse()) await b.stop({ keepData: true });
    rmSync(dataDir, { recursive: true, force: true });
  });

  async function start(): Promise<TestBroker> {
    const b = await startTestBroker({}, dataDir);
    brokers.push(b);
    return b;
  }

  async function stop(b: TestBroker): Promise<void> {
    brokers.splice(brokers.indexOf(b), 1);
    await b.stop({ keepData: true });
  }

  it("keeps devices and replay memory: a resent message gets the stored answer, a reused id a conflict", async () => {
    dataDir = tempDir();
    const first = await start();
    const key = first.register("terminal");
    const d1 = await RawDevice.connect(first.url, key, first.publicKey);
    devices.push(d1);
    const msg = d1.seal("ping", { echo: "before restart" }, { id: "restart-1" });
    await d1.publish(msg.bytes);
    const original = await d1.waitFor((m) => m.payload?.re === "restart-1");
    expect(original.payload!.type).toBe("pong");
    await d1.close();
    devices.splice(0);
    await stop(first);

    const second = await start();
    expect(second.publicKey).toEqual(first.publicKey);
    const d2 = await RawDevice.connect(second.url, key, second.publicKey);
    devices.push(d2);
    // A first ping is a sync point: whatever the broker resends on subscribe arrives before its pong,
    // so only answers received after `mark` can be answers to the resent message.
    expect((await d2.ping()).type).toBe("pong");
    const mark = d2.received.length;
    const after = (re: string) => (m: (typeof d2.received)[number]) => d2.received.indexOf(m) >= mark && m.payload?.re === re;
    const seenBefore = count(second.db, "seen_messages");
    const outboxBefore = count(second.db, "outbox");

    await d2.publish(msg.bytes);
    const again = await d2.waitFor(after("restart-1"));
    expect(again.payload!.id).toBe(original.payload!.id);
    expect(again.bytes.equals(original.bytes)).toBe(true);
    expect(count(second.db, "seen_messages")).toBe(seenBefore);
    expect(count(second.db, "outbox")).toBe(outboxBefore);

    const conflicting = d2.seal("ping", { echo: "something else" }, { id: "restart-1" });
    await d2.publish(conflicting.bytes);
    const conflict = await d2.waitFor((m) => after("restart-1")(m) && m.payload?.type === "error");
    expect(conflict.payload!.body).toEqual({ code: "message_id_reused", detail: expect.any(String), inReplyTo: "restart-1" });
  });

  it("keeps used connect tokens: a token used before the restart is refused after it", async () => {
    dataDir = tempDir();
    const first = await start();
    const key = first.register("terminal");
    const password = tokenFor(key.deviceId, key.pair);
    const accepted = await rawConnect(first.url, { clientId: key.deviceId, username: key.deviceId, password });
    expect(accepted.accepted).toBe(true);
    if (accepted.accepted) await accepted.client.endAsync(true);
    await stop(first);

    const second = await start();
    const replayed = await rawConnect(second.url, { clientId: key.deviceId, username: key.deviceId, password });
    expect(replayed.accepted ? "accepted" : replayed.code).toBe(4);
  });

  it("refuses to start a second broker on a data dir in use, saying another broker is running", async () => {
    dataDir = tempDir();
    const running = await start();
    await expect(startTestBroker({}, dataDir)).rejects.toThrow(/another broker is already running/);
    // The refused start must not have disturbed the running one.
    const d = await RawDevice.connect(running.url, running.register("terminal"), running.publicKey);
    devices.push(d);
    expect((await d.ping()).type).toBe("pong");
  });

  it("starts on the data dir again once the broker holding it has stopped", async () => {
    dataDir = tempDir();
    await stop(await start());
    const again = await start();
    expect(again.port).toBeGreaterThan(0);
  });
});
