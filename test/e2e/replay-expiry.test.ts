/**
 * Replay memory ends at its documented expiry, whether or not housekeeping has run
 * (docs/protocol.md §Connecting "Single use" and §Envelope step 13): a message id is remembered
 * until ts + window + 1 ms, a connect-token nonce until tsMs + window + 1 ms. The broker's clock
 * is injected, so the test moves time past the window instead of sleeping, and the purge is set
 * to run once an hour so that no expired row is deleted behind the test's back.
 */
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { DeviceKey } from "../../device-sim/keyfile.ts";
import { startTestBroker, type TestBroker } from "../helpers.ts";
import { nonce, rawConnect, RawDevice, tokenFor, type DownMessage } from "../wire.ts";

const FRESHNESS_MS = 60_000;

describe("replay memory expiry", () => {
  let broker: TestBroker;
  let key: DeviceKey;
  let offsetMs = 0;
  const clock = () => Date.now() + offsetMs;
  const devices: RawDevice[] = [];

  beforeEach(async () => {
    offsetMs = 0;
    broker = await startTestBroker({ freshnessMs: FRESHNESS_MS, purgeEveryMs: 3_600_000 }, undefined, undefined, { clock });
    key = broker.register("terminal");
  });
  afterEach(async () => {
    await Promise.all(devices.splice(0).map((d) => d.close()));
    await broker.stop();
  });

  const rows = (sql: string, ...args: string[]) => (broker.db.prepare(sql).get(...args) as { n: number }).n;

  /** Publishes a ping under `id` signed at `ts`, and returns the new answer to it. */
  async function answer(d: RawDevice, id: string, ts: number, echo: string): Promise<DownMessage> {
    const before = d.repliesTo(id).length;
    const { bytes } = d.seal("ping", { echo }, { id, ts });
    await d.publish(bytes);
    return d.waitFor((m) => m.payload?.re === id && d.repliesTo(id).indexOf(m) >= before);
  }

  it("handles a message re-signed under a used id after the id's window as new, though housekeeping has not purged the id", async () => {
    const d = await RawDevice.connect(broker.url, key, broker.publicKey);
    devices.push(d);
    const id = "order-7";
    const first = await answer(d, id, clock(), "first");
    expect(first.payload?.type).toBe("pong");
    // Within the window, the same id with other bytes is still refused.
    const within = await answer(d, id, clock() + 1, "within the window");
    expect(within.payload?.type).toBe("error");
    expect((within.payload?.body as { code: string }).code).toBe("message_id_reused");

    offsetMs += FRESHNESS_MS + 5_000;
    // The expired row is still there: only the lookup can tell that it no longer counts.
    expect(rows("SELECT count(*) AS n FROM seen_messages WHERE device_id = ? AND msg_id = ?", key.deviceId, id)).toBe(1);
    const ts = clock();
    const after = await answer(d, id, ts, "after the window");
    expect(after.payload?.type).toBe("pong");
    expect((after.payload?.body as { echo: string }).echo).toBe("after the window");
    // The new message now holds the id for its own window: its own retry is a duplicate, other bytes a conflict.
    const row = broker.db.prepare("SELECT expires_ms AS e FROM seen_messages WHERE device_id = ? AND msg_id = ?").get(key.deviceId, id) as { e: number };
    expect(row.e).toBe(ts + FRESHNESS_MS + 1);
    const reused = await answer(d, id, ts + 1, "another body");
    expect((reused.payload?.body as { code: string }).code).toBe("message_id_reused");
  });

  it("answers a duplicate of the message that took over an expired id with its own answer only, not the old message's", async () => {
    const d = await RawDevice.connect(broker.url, key, broker.publicKey);
    devices.push(d);
    const id = "order-8";
    await answer(d, id, clock(), "old");
    offsetMs += FRESHNESS_MS + 5_000;
    const { bytes } = d.seal("ping", { echo: "new" }, { id, ts: clock() });
    await d.publish(bytes);
    await d.waitFor((m) => (m.payload?.body as { echo?: string } | undefined)?.echo === "new");
    const before = d.repliesTo(id).length;
    // The identical bytes again: a duplicate, answered with what was stored for it.
    await d.publish(bytes);
    await d.ping("a later message, so the duplicate's answers have arrived");
    const again = d.repliesTo(id).slice(before).map((m) => (m.payload?.body as { echo?: string }).echo);
    expect(again).toEqual(["new"]);
  });

  it("accepts a connect token whose nonce was used by a token that has expired, though housekeeping has not purged the nonce", async () => {
    const n = nonce();
    const connect = (tsMs: number) => rawConnect(broker.url, { clientId: key.deviceId, username: key.deviceId, password: tokenFor(key.deviceId, key.pair, tsMs, n) });
    const first = await connect(clock());
    expect(first.accepted).toBe(true);
    if (first.accepted) await first.client.endAsync(true);
    // Within the first token's window, the nonce stays used, whatever the new token's ts.
    const within = await connect(clock() + 1);
    expect(within.accepted).toBe(false);
    if (!within.accepted) expect(within.code).toBe(4);

    offsetMs += FRESHNESS_MS + 5_000;
    expect(rows("SELECT count(*) AS n FROM used_tokens WHERE device_id = ? AND nonce = ?", key.deviceId, n)).toBe(1);
    const after = await connect(clock());
    expect(after.accepted).toBe(true);
    if (after.accepted) await after.client.endAsync(true);
    // ...and the nonce is used again, for the new token's window.
    const again = await connect(clock() + 1);
    expect(again.accepted).toBe(false);
  });
});
