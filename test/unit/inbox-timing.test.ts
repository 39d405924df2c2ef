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
import { Inbox, type Durability, type InboxOptions } from "../../src/service/inbox.ts";
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
    const published: string[] = [];
    const admission = new Admission(40);
    const terminal = { id: "terminal-1", pair: keyPairFromSeed(new Uint8Array(32).fill(7)) };
    // The broker knows this terminal's clock: a message stamped 5 s ago waited 5 s.
    admission.observe(terminal.id, NOW, NOW);
    const inbox = newInbox({
      publish: (to, bytes) => {
        const parsed = parseEnvelope(bytes);
        published.push(`${to} ${parsed.ok ? parsed.msg.payload.type + ((parsed.msg.payload.body as { code?: string }).code ?? "") : "?"}`);
      },
      durable,
      admission,
    });
    inbox.internal("test", (ctx) => ctx.send("device-1", "pong", { brokerTs: ctx.nowMs }));
    const { bytes } = sealWith(terminal.pair, { type: "pay_request", from: terminal.id, ts: NOW - 5_000, body: { login: "alice", merchantId: "m", amountMinor: 100, currency: "CNY", orderRef: "o", idempotencyKey: "k" } });
    let handled = false;
    inbox.submit(terminal.id, bytes, () => (handled = true));
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
