/**
 * Past capacity a new payment is refused at once with `busy` and a retry-after, before any work
 * on it; messages of payments already under way are always handled (docs/protocol.md §Errors,
 * docs/operations.md §Load). The broker judges "behind" by message age: here messages are made
 * old by their timestamps, which is what a wait in a socket buffer looks like to the broker.
 */
import { afterEach, describe, expect, it } from "vitest";
import { pay } from "../../device-sim/agents.ts";
import { Device } from "../../device-sim/device.ts";
import { startTestBroker, type TestBroker } from "../helpers.ts";
import { RawDevice } from "../wire.ts";

let broker: TestBroker;
const devices: RawDevice[] = [];
afterEach(async () => {
  await Promise.all(devices.splice(0).map((d) => d.close()));
  await broker?.stop();
});

const PAY = { login: "alice@tv", merchantId: "coffee-corner", amountMinor: 1280, currency: "CNY", orderRef: "o-1", idempotencyKey: "k-1" };
const count = (table: string) => (broker.db.prepare(`SELECT count(*) AS n FROM ${table}`).get() as { n: number }).n;

async function connect(kind: "terminal" | "phone"): Promise<RawDevice> {
  const d = await RawDevice.connect(broker.url, broker.register(kind), broker.publicKey, true);
  devices.push(d);
  return d;
}

async function send(d: RawDevice, type: string, body: Record<string, unknown>, ageMs = 0) {
  const { id, bytes } = d.seal(type, body, { ts: Date.now() - ageMs });
  await d.publish(bytes);
  return (await d.waitFor((m) => m.payload?.re === id)).payload!;
}

describe("admission past capacity", () => {
  it("refuses a pay request that waited longer than --busy-after-ms with busy and a retry-after, storing nothing", async () => {
    broker = await startTestBroker({ busyAfterMs: 100 });
    const terminal = await connect("terminal");
    await send(terminal, "ping", {}); // the broker learns this device's clock
    const replayBefore = count("seen_messages");
    const refused = await send(terminal, "pay_request", PAY, 2000);
    // It waited 2 s (and the trip): come back in twice that.
    expect(refused).toMatchObject({ type: "error", body: { code: "busy", retryAfterMs: expect.any(Number) } });
    expect(refused.body.retryAfterMs).toBeGreaterThanOrEqual(4000);
    expect(refused.body.retryAfterMs).toBeLessThanOrEqual(5000);
    expect(refused.body.detail).toMatch(/behind/);
    expect(count("payments")).toBe(0);
    expect(count("seen_messages")).toBe(replayBefore);
    // The same request, fresh, is handled (this terminal is not bound: not_bound is a handler's answer).
    expect(await send(terminal, "pay_request", PAY)).toMatchObject({ type: "error", body: { code: "not_bound" } });
  });

  it("judges a device by its waits, not its clock: a terminal whose clock runs 20 s ahead or behind is admitted when it is not waiting", async () => {
    broker = await startTestBroker({ busyAfterMs: 100 });
    for (const skew of [20_000, -20_000]) {
      const terminal = await connect("terminal");
      await send(terminal, "ping", {}, -skew);
      expect(await send(terminal, "pay_request", { ...PAY, idempotencyKey: `k${skew}` }, -skew)).toMatchObject({ body: { code: "not_bound" } });
    }
  });

  it("refuses every new payment while the messages it handles are old, handles the other messages all the same, and admits again once it catches up", async () => {
    broker = await startTestBroker({ busyAfterMs: 100 });
    const terminal = await connect("terminal");
    const phone = await connect("phone");
    await send(terminal, "ping", {});
    await send(phone, "ping", {});
    // The phone's messages arrive 3 s late: the broker is behind.
    for (let i = 0; i < 3; i++) expect(await send(phone, "ping", { echo: String(i) }, 3000)).toMatchObject({ type: "pong" });
    // A fresh pay request from another device is refused too: the broker as a whole is behind.
    expect(await send(terminal, "pay_request", PAY)).toMatchObject({ body: { code: "busy" } });
    // A payment's own messages are always handled (an unknown payment: the handler's answer, not busy).
    expect(await send(phone, "payment_approve", { paymentId: "pay_aaaaaaaaaaaaaaaaaaaa", amountMinor: 1, currency: "CNY", merchantName: "x", terminalName: "y" }, 3000)).toMatchObject({
      body: { code: "payment_not_found" },
    });
    // A second without old messages: it is not behind any more.
    await new Promise((r) => setTimeout(r, 1100));
    expect(await send(terminal, "pay_request", PAY)).toMatchObject({ body: { code: "not_bound" } });
  });

  it("never refuses with --busy-after-ms 0", async () => {
    broker = await startTestBroker({ busyAfterMs: 0 });
    const terminal = await connect("terminal");
    await send(terminal, "ping", {});
    expect(await send(terminal, "pay_request", PAY, 5000)).toMatchObject({ body: { code: "not_bound" } });
  });

  it("the simulator's pay() waits out a busy answer and asks again with the same idempotency key", async () => {
    broker = await startTestBroker({ busyAfterMs: 100 });
    // The terminal's clock can be set back: a request stamped 600 ms ago looks to the broker
    // like one that waited 600 ms.
    let lagMs = 0;
    const terminal = new Device({ url: broker.url, key: broker.register("terminal"), brokerPublicKey: broker.publicKey, reconnect: false, clock: () => Date.now() - lagMs });
    try {
      await terminal.connect();
      await terminal.request("ping", {}, 10_000); // the broker learns this device's clock
      const asked: unknown[] = [];
      const request = terminal.request.bind(terminal);
      terminal.request = ((type: string, body: Record<string, unknown>, timeoutMs?: number) => {
        if (type === "pay_request") asked.push(body.idempotencyKey);
        return request(type as Parameters<typeof request>[0], body, timeoutMs);
      }) as typeof terminal.request;
      const steps: string[] = [];
      lagMs = 600;
      const startedMs = Date.now();
      const outcome = await pay(terminal, { login: PAY.login, merchantId: PAY.merchantId, amountMinor: PAY.amountMinor, currency: PAY.currency, orderRef: PAY.orderRef }, (step, m) => {
        steps.push(step);
        if (step === "busy") {
          expect(m.body.retryAfterMs).toBeGreaterThanOrEqual(1000);
          lagMs = 0; // the broker has caught up by the time it is asked again
        }
      }, 20_000);
      // Asked twice, the second time after the retry-after, with one idempotency key; the second
      // answer is the handler's own (this terminal is not bound).
      expect(steps).toEqual(["busy"]);
      expect(asked).toHaveLength(2);
      expect(asked[0]).toBe(asked[1]);
      expect(Date.now() - startedMs).toBeGreaterThanOrEqual(1000);
      expect(outcome).toMatchObject({ kind: "rejected", code: "not_bound" });
    } finally {
      await terminal.close();
    }
  });
});
