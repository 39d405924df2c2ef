/**
 * When the inbox writes and answers: receipts (a device's PUBACK for an outbox message) ride
 * along with the next batch of messages instead of each being a commit of its own, and wait at
 * most `receiptDelayMs` for one; a `busy` refusal leaves at once, without waiting for its
 * batch's commit to reach the disk.
 */
import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { keyPairFromSeed, Signer } from "../../src/crypto/ed25519.ts";
import { parseEnvelope } from "../../src/protocol/envelope.ts";
import { Admission } from "../../src/service/admission.ts";
import { Inbox, MIN_BATCH, type Durability, type InboxOptions } from "../../src/service/inbox.ts";
import { NO_METRICS } from "../../src/service/metrics.ts";
import { openDatabase, type Db } from "../../src/store/db.ts";
import { sealWith } from "../wire.ts";

const NOW = 1_767_225_600_000;
let db: Db | null = null;

afterEach(() => {
  db?.close();
  db = null;
});

/** An inbox over a new in-memory database, the broker's clock stopped at NOW. */
function newInbox(options: Pick<InboxOptions, "publish" | "durable"> & Partial<InboxOptions>): Inbox {
  db = openDatabase(":memory:");
  return new Inbox({ db, signer: new Signer(keyPairFromSeed(new Uint8Array(32).fill(9))), log: pino({ level: "silent" }), freshnessMs: 30_000, clock: () => NOW, ...options });
}

/** An inbox that counts its commits and the receipts it wrote. */
function setup(receiptDelayMs?: number) {
  const counts = { commits: 0 };
  const durable: Durability = { committed: () => void counts.commits++, afterDurable: (fn) => fn() };
  const receipted: string[] = [];
  const inbox = newInbox({ publish: () => {}, durable, onReceipt: (_device, msgId) => receipted.push(msgId), ...(receiptDelayMs === undefined ? {} : { receiptDelayMs }) });
  const d = db!;
  /** Stores one pong for device-1 and returns its message id once committed. */
  const stored = async (): Promise<string> => {
    inbox.internal("test", (ctx) => ctx.send("device-1", "pong", { brokerTs: ctx.nowMs }));
    await inbox.idle();
    return (d.prepare("SELECT msg_id FROM outbox ORDER BY seq DESC LIMIT 1").get() as { msg_id: string }).msg_id;
  };
  const deliveredMs = (msgId: string) => (d.prepare("SELECT delivered_ms FROM outbox WHERE msg_id = ?").get(msgId) as { delivered_ms: number | null }).delivered_ms;
  return { inbox, counts, receipted, stored, deliveredMs };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const TERMINAL = { id: "terminal-1", pair: keyPairFromSeed(new Uint8Array(32).fill(7)) };

/** A pay request from TERMINAL stamped `ts`. */
const payRequest = (ts: number, idempotencyKey = "k") =>
  sealWith(TERMINAL.pair, { type: "pay_request", from: TERMINAL.id, ts, body: { login: "alice", merchantId: "m", amountMinor: 100, currency: "CNY", orderRef: "o", idempotencyKey } }).bytes;

/** An inbox with `admission` that records what it publishes as "<to> <type><error code>". */
function recordingInbox(admission: Admission, durable: Durability = { committed: () => {}, afterDurable: (fn) => fn() }) {
  const published: string[] = [];
  const inbox = newInbox({
    publish: (to, bytes) => {
      const parsed = parseEnvelope(bytes);
      published.push(`${to} ${parsed.ok ? parsed.msg.payload.type + ((parsed.msg.payload.body as { code?: string }).code ?? "") : "?"}`);
    },
    durable,
    admission,
  });
  return { inbox, published };
}

describe("receipts share the next batch's transaction", () => {
  it("writes a receipt in the transaction of the work that follows it, not in one of its own", async () => {
    const { inbox, counts, receipted, stored, deliveredMs } = setup(60_000);
    const first = await stored();
    expect(counts.commits).toBe(1);
    inbox.delivered("device-1", first);
    await sleep(30);
    // Nothing else to do: the receipt waits (the delivery window freed at the PUBACK itself).
    expect(counts.commits).toBe(1);
    expect(deliveredMs(first)).toBeNull();
    expect(receipted).toEqual([]);
    // The next work's transaction carries it: one commit for both.
    await stored();
    expect(counts.commits).toBe(2);
    expect(deliveredMs(first)).toBe(NOW);
    expect(receipted).toEqual([first]);
  });

  it("writes a lone receipt within receiptDelayMs, and idle() waits for it", async () => {
    const { inbox, counts, receipted, stored, deliveredMs } = setup(20);
    const [a, b] = [await stored(), await stored()];
    inbox.delivered("device-1", a);
    inbox.delivered("device-1", b);
    await inbox.idle();
    // Two receipts, one transaction.
    expect(counts.commits).toBe(3);
    expect(receipted).toEqual([a, b]);
    expect(deliveredMs(a)).toBe(NOW);
    expect(deliveredMs(b)).toBe(NOW);
  });

  it("writes a receipt at once with receiptDelayMs 0", async () => {
    const { inbox, counts, stored, deliveredMs } = setup(0);
    const id = await stored();
    inbox.delivered("device-1", id);
    await new Promise((r) => setImmediate(r));
    expect(counts.commits).toBe(2);
    expect(deliveredMs(id)).toBe(NOW);
  });
});

describe("busy past capacity", () => {
  it("answers busy at once, before its batch's commit is on disk, while the batch's stored answers wait for the disk", async () => {
    const gate: (() => void)[] = [];
    const durable: Durability = { committed: () => {}, afterDurable: (fn) => void gate.push(fn) };
    const admission = new Admission(40);
    // The broker knows this terminal's clock: a message stamped 5 s ago waited 5 s.
    admission.observe(TERMINAL.id, NOW, NOW);
    const { inbox, published } = recordingInbox(admission, durable);
    inbox.internal("test", (ctx) => ctx.send("device-1", "pong", { brokerTs: ctx.nowMs }));
    let handled = false;
    inbox.submit(TERMINAL.id, payRequest(NOW - 5_000), () => (handled = true));
    await new Promise((r) => setImmediate(r));
    // The batch committed but its sync has not ended: the refusal is out, the pong is not.
    expect(published).toEqual(["terminal-1 errorbusy"]);
    expect(handled).toBe(true);
    const idle = inbox.idle();
    for (const fn of gate.splice(0)) fn();
    await idle;
    expect(published).toEqual(["terminal-1 errorbusy", "device-1 pong"]);
  });
});

describe("busy as the request arrives", () => {
  it("answers a pay request busy inside submit() while the broker is behind, before any batch, and queues anything else", async () => {
    const admission = new Admission(40);
    // The last turn's messages waited 500 ms on average: the broker is behind.
    admission.observe(TERMINAL.id, NOW, NOW);
    admission.observe(TERMINAL.id, NOW - 1_000, NOW);
    admission.endTurn(NOW);
    expect(admission.refusing(NOW)).toBe(true);
    const { inbox, published } = recordingInbox(admission);
    const ping = sealWith(TERMINAL.pair, { type: "ping", from: TERMINAL.id, ts: NOW, body: {} });
    const handled: string[] = [];
    inbox.submit(TERMINAL.id, payRequest(NOW), () => handled.push("pay"));
    inbox.submit(TERMINAL.id, ping.bytes, () => handled.push("ping"));
    // No turn of the event loop yet: the pay request is answered and acknowledged, the ping waits.
    expect(published).toEqual(["terminal-1 errorbusy"]);
    expect(handled).toEqual(["pay"]);
    await inbox.idle();
    expect(handled).toEqual(["pay", "ping"]);
  });
});

describe("busy by what is queued", () => {
  it("answers a pay request busy as it arrives when the messages queued before it would take busyAfterMs", async () => {
    const admission = new Admission(40);
    admission.observe(TERMINAL.id, NOW, NOW);
    const { inbox, published } = recordingInbox(admission);
    // Nothing queued: it waits for its batch like any message.
    inbox.submit(TERMINAL.id, payRequest(NOW, "a"));
    expect(published).toEqual([]);
    await inbox.idle();
    published.length = 0;
    // 1,000 messages queued at the starting guess of 0.1 ms each: 100 ms ahead of it.
    for (let i = 0; i < 1000; i++) inbox.submit(TERMINAL.id, sealWith(TERMINAL.pair, { type: "ping", from: TERMINAL.id, ts: NOW, body: {} }).bytes);
    inbox.submit(TERMINAL.id, payRequest(NOW, "b"));
    expect(published).toEqual(["terminal-1 errorbusy"]);
    await inbox.idle();
  });
});

describe("a batch's time budget", () => {
  /** Runs `n` jobs of ~1 ms each through an inbox with `batchBudgetMs`; the size of each batch. */
  async function batchSizes(batchBudgetMs: number, n: number): Promise<number[]> {
    const sizes: number[] = [];
    const inbox = newInbox({ publish: () => {}, durable: { committed: () => {}, afterDurable: (fn) => fn() }, batchBudgetMs, metrics: { ...NO_METRICS, batch: (size) => void sizes.push(size) } });
    for (let i = 0; i < n; i++) {
      inbox.internal("spin", () => {
        const end = performance.now() + 1;
        while (performance.now() < end);
      });
    }
    await inbox.idle();
    return sizes;
  }

  it("takes no more than fits in the budget at what the last batch cost, and never fewer than MIN_BATCH", async () => {
    const sizes = await batchSizes(20, 300);
    expect(sizes.reduce((a, b) => a + b, 0)).toBe(300);
    // The first batch goes by the starting guess; every later one knows a job costs >= 1 ms.
    for (const size of sizes.slice(1, -1)) {
      expect(size).toBeGreaterThanOrEqual(MIN_BATCH);
      expect(size).toBeLessThanOrEqual(20);
    }
    expect(sizes.length).toBeGreaterThan(5);
  });

  it("takes everything waiting into one batch with no budget", async () => {
    expect(await batchSizes(0, 300)).toEqual([300]);
  });
});

