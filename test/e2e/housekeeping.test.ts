import { afterEach, describe, expect, it, vi } from "vitest";
import { startTestBroker, type TestBroker } from "../helpers.ts";
import { RawDevice } from "../wire.ts";

describe("housekeeping (docs/operations.md §Housekeeping)", () => {
  let broker: TestBroker;
  const devices: RawDevice[] = [];
  afterEach(async () => {
    await Promise.all(devices.splice(0).map((d) => d.close()));
    await broker.stop();
  });

  const count = (sql: string) => (broker.db.prepare(sql).get() as { n: number }).n;

  it("clears a large backlog of expired rows in steps, answering devices meanwhile, and keeps undelivered messages", async () => {
    broker = await startTestBroker({ purgeEveryMs: 200 });
    const key = broker.register("terminal");
    const d = await RawDevice.connect(broker.url, key, broker.publicKey);
    devices.push(d);
    const dayAgo = Date.now() - 2 * 86_400_000;
    broker.db.transaction(() => {
      const seen = broker.db.prepare("INSERT INTO seen_messages (device_id, msg_id, digest, expires_ms) VALUES (?, ?, ?, ?)");
      for (let i = 0; i < 3000; i++) seen.run(key.deviceId, `old-${i}`, Buffer.alloc(32), 1000 + i);
      const out = broker.db.prepare("INSERT INTO outbox (device_id, msg_id, re, bytes, created_ms, delivered_ms) VALUES (?, ?, NULL, ?, ?, ?)");
      for (let i = 0; i < 1000; i++) out.run("d-gone", `sent-${i}`, Buffer.from("x"), dayAgo, dayAgo);
      for (let i = 0; i < 5; i++) out.run("d-offline", `waiting-${i}`, Buffer.from("x"), dayAgo, null);
    })();

    // Every step the purge runs, and how many rows it deleted (the timer calls this.step()).
    const step = vi.spyOn(broker.housekeeping, "step");
    // The purge needs several steps (250 rows a table each); pings are answered throughout.
    const answered: string[] = [];
    await vi.waitFor(
      async () => {
        answered.push((await d.ping("during the purge")).type);
        expect(count("SELECT count(*) AS n FROM seen_messages WHERE msg_id LIKE 'old-%'")).toBe(0);
        expect(count("SELECT count(*) AS n FROM outbox WHERE delivered_ms IS NOT NULL AND msg_id LIKE 'sent-%'")).toBe(0);
      },
      { timeout: 15_000, interval: 50 },
    );
    expect(answered.every((t) => t === "pong")).toBe(true);
    // In steps: 3000 message ids at 250 a step take at least 12, and no step deleted more than
    // 250 ids and 250 outbox rows (docs/operations.md §Housekeeping).
    const deleted = step.mock.results.map((r) => r.value as number).filter((n) => n > 0);
    expect(deleted.length).toBeGreaterThanOrEqual(3000 / 250);
    expect(Math.max(...deleted)).toBeLessThanOrEqual(2 * 250);
    expect(deleted.reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(4000);
    expect(count("SELECT count(*) AS n FROM outbox WHERE delivered_ms IS NULL AND device_id = 'd-offline'")).toBe(5);
    // The pings' own ids are still remembered: their freshness window has not passed.
    expect(count(`SELECT count(*) AS n FROM seen_messages WHERE device_id = '${key.deviceId}'`)).toBeGreaterThan(0);
  });
});
