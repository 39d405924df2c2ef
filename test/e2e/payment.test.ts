/** Payments end to end over real MQTT: every path of the handoff, exactly once, on the ledger. */
import { afterEach, describe, expect, it } from "vitest";
import type { Device, Received } from "../../device-sim/device.ts";
import type { DeviceKey } from "../../device-sim/keyfile.ts";
import { addMerchant, creditWallet, walletBalance } from "../../src/service/ledger.ts";
import { parseEnvelope } from "../../src/protocol/envelope.ts";
import { LedgerRepo } from "../../src/store/ledger.ts";
import { startTestBroker, type TestBroker } from "../helpers.ts";
import { RawDevice } from "../wire.ts";

const LIMITS = { currency: "CNY", autoConfirmMaxMinor: 5000, autoConfirmDailyMinor: 20000, perPaymentMaxMinor: 100000 };

let broker: TestBroker;
afterEach(async () => {
  await broker?.stop();
});

interface World {
  terminal: Device;
  phone: Device;
  phoneKey: DeviceKey;
  login: string;
  userId: string;
  agreementId: string;
  pay(amountMinor: number, extra?: Record<string, unknown>): Promise<Received>;
}

let orderSeq = 0;

async function world(overrides: Parameters<typeof startTestBroker>[0] = {}, fundsMinor = 50_000, deps: Parameters<typeof startTestBroker>[3] = {}): Promise<World> {
  broker = await startTestBroker(overrides, undefined, undefined, deps);
  const userId = `user-${Math.random().toString(36).slice(2, 8)}`;
  const login = `${userId}@tv`;
  expect(addMerchant(broker.db, { id: "coffee-corner", name: "Coffee Corner" }, Date.now())).toEqual({ ok: true });
  if (fundsMinor > 0) expect(creditWallet(broker.db, broker.keyring, { userId, amountMinor: fundsMinor, currency: "CNY" }, Date.now()).ok).toBe(true);
  const terminal = await broker.device(broker.register("terminal", { name: "Living room TV" }));
  const phoneKey = broker.register("phone", { userId });
  const phone = await broker.device(phoneKey);
  const code = (await terminal.call("bind_request", { login, terminal: { model: "TV", serial: "SN1", displayName: "Living room TV" } })).body.code;
  const agreementId = (await phone.call("bind_confirm", { code, limits: LIMITS })).body.agreementId as string;
  return {
    terminal,
    phone,
    phoneKey,
    login,
    userId,
    agreementId,
    pay: (amountMinor, extra = {}) =>
      terminal.request("pay_request", { login, merchantId: "coffee-corner", amountMinor, currency: "CNY", orderRef: `order-${++orderSeq}`, idempotencyKey: `idem-${orderSeq}-${Math.random()}`, ...extra }),
  };
}

const errorCode = (m: Received) => {
  expect(m.type).toBe("error");
  return (m.body as { code: string }).code;
};

/** The phone's side of the happy path: approve exactly what it showed (answered by the task), execute it. */
async function approveAndExecute(phone: Device, prompt: Received): Promise<Received> {
  const b = prompt.body as { paymentId: string; amountMinor: number; currency: string; merchantName: string; terminalName: string };
  const task = await phone.call("payment_approve", { paymentId: b.paymentId, amountMinor: b.amountMinor, currency: b.currency, merchantName: b.merchantName, terminalName: b.terminalName });
  expect(task.type).toBe("payment_task");
  expect(task.body.paymentId).toBe(b.paymentId);
  return execute(phone, task);
}

/** Every message about payments (or a pong) a device receives from now on, in order. */
function recordAll(device: Device): Received[] {
  const all: Received[] = [];
  device.on("message", (m) => (m.type.startsWith("payment_") || m.type === "pong") && all.push(m));
  return all;
}

async function execute(phone: Device, task: Received): Promise<Received> {
  const t = task.body as { paymentId: string; amountMinor: number; currency: string; payee: string };
  return phone.call("payment_execute", { paymentId: t.paymentId, amountMinor: t.amountMinor, currency: t.currency, payee: t.payee });
}

function ledgerHolds() {
  const ledger = new LedgerRepo(broker.db);
  for (const [currency, sum] of ledger.sums()) expect(sum, currency).toBe(0);
}

describe("payment", () => {
  it("auto-confirms a small payment: the phone gets the task, executes, and both devices get the completed result", async () => {
    const w = await world();
    const task = w.phone.next("payment_task");
    const toTerminal = recordAll(w.terminal);
    const toPhone = recordAll(w.phone);
    const terminalResult = w.terminal.next("payment_result");
    const accepted = await w.pay(1280);
    expect(accepted.type).toBe("payment_accepted");
    expect(accepted.body).toMatchObject({ status: "executing", mode: "auto", amountMinor: 1280, currency: "CNY", merchantName: "Coffee Corner" });
    const executed = await execute(w.phone, await task);
    const tr = await terminalResult;
    expect(tr.body).toMatchObject({ paymentId: accepted.body.paymentId, status: "completed", reason: null, amountMinor: 1280 });
    // The phone's result is the answer to its payment_execute, not a second message.
    expect(executed.type).toBe("payment_result");
    expect(executed.body).toEqual(tr.body);
    await w.phone.request("ping", {});
    await w.terminal.request("ping", {});
    // Four messages down in all: the accepted answer already says "executing", so no payment_update.
    expect(toTerminal.map((m) => m.type)).toEqual(["payment_accepted", "payment_result", "pong"]);
    expect(toPhone.map((m) => m.type)).toEqual(["payment_task", "payment_result", "pong"]);
    expect(walletBalance(broker.db, broker.keyring, w.userId, "CNY")).toBe(50_000 - 1280);
    expect(new LedgerRepo(broker.db).transferForPayment(accepted.body.paymentId as string)?.amountMinor).toBe(1280);
    ledgerHolds();
  });

  it("prompts the phone for a larger payment; approval, then execution, completes it with progress the terminal sees", async () => {
    const w = await world();
    const prompt = w.phone.next("payment_prompt");
    const steps: string[] = [];
    w.terminal.on("message", (m) => m.type === "payment_update" && steps.push(m.body.step as string));
    const toPhone = recordAll(w.phone);
    const delivered = w.terminal.next("payment_update", 5000, (m) => m.body.step === "prompt_delivered");
    const result = w.terminal.next("payment_result");
    const accepted = await w.pay(12_800, { description: "Two flat whites" });
    expect(accepted.body).toMatchObject({ status: "awaiting_confirmation", mode: "prompt" });
    const p = await prompt;
    expect(p.body).toMatchObject({ amountMinor: 12_800, currency: "CNY", merchantName: "Coffee Corner", terminalName: "Living room TV", description: "Two flat whites" });
    expect(p.body.deadlineMs as number).toBeGreaterThan(Date.now() + 100_000);
    // The phone's PUBACK of the prompt is the receipt: no prompt_received is sent.
    await delivered;
    const executed = await approveAndExecute(w.phone, p);
    expect(executed.type).toBe("payment_result");
    expect((await result).body).toMatchObject({ status: "completed" });
    expect(executed.body).toEqual((await result).body);
    await w.phone.request("ping", {});
    expect(steps).toEqual(["prompt_delivered", "executing"]);
    expect(toPhone.map((m) => m.type)).toEqual(["payment_prompt", "payment_task", "payment_result", "pong"]);
  });

  it("answers an approval sent twice with the same message id by the same task, and sends no second one", async () => {
    const w = await world();
    const prompt = w.phone.next("payment_prompt");
    await w.pay(12_800);
    const p = (await prompt).body;
    const approval = { paymentId: p.paymentId, amountMinor: p.amountMinor, currency: p.currency, merchantName: p.merchantName, terminalName: p.terminalName };
    const answers: Received[] = [];
    w.phone.on("message", (m) => m.re === "approve-once" && answers.push(m));
    // Same id, same timestamp: the same bytes (Ed25519 signatures are deterministic), as a QoS 1 redelivery would be.
    const same = { id: "approve-once", ts: Date.now() };
    const first = await w.phone.request("payment_approve", approval, 5000, same);
    w.phone.send("payment_approve", approval, same);
    await w.phone.request("ping", {});
    expect(first.type).toBe("payment_task");
    // Handled afresh, the second approval would be answered payment_not_pending (a new message id);
    // the stored answer is the same task, which the device drops as already seen.
    expect(answers.map((m) => (m.type === "error" ? `error ${String(m.body.code)}` : m.type))).toEqual(["payment_task"]);
    const events = (await w.phone.call("payment_status", { paymentId: p.paymentId })).body.events as { kind: string }[];
    expect(events.filter((e) => e.kind === "confirmed")).toHaveLength(1);
  });

  it("ends the payment declined when the phone declines, and moves no money", async () => {
    const w = await world();
    const prompt = w.phone.next("payment_prompt");
    const result = w.terminal.next("payment_result");
    await w.pay(12_800);
    const answer = await w.phone.call("payment_decline", { paymentId: (await prompt).body.paymentId });
    expect(answer.type).toBe("payment_result");
    expect((await result).body).toMatchObject({ status: "declined", reason: "declined" });
    expect(answer.body).toEqual((await result).body);
    expect(walletBalance(broker.db, broker.keyring, w.userId, "CNY")).toBe(50_000);
  });

  // The broker's clock is moved past the deadline (the default 120 s prompt, 60 s task) and the
  // deadlines polled: the test waits for no timer.
  it("expires a prompt nobody answers once the broker's clock passes its deadline, telling both devices", async () => {
    // Real time until the prompt is out, then a clock the test holds still and moves itself.
    let frozenMs: number | null = null;
    const w = await world({}, 50_000, { clock: () => frozenMs ?? Date.now() });
    const prompt = w.phone.next("payment_prompt");
    const phoneResult = w.phone.next("payment_result");
    const result = w.terminal.next("payment_result");
    await w.pay(12_800);
    const deadlineMs = (await prompt).body.deadlineMs as number;
    frozenMs = deadlineMs - 1;
    expect(broker.deadlines.poll()).toBe(0);
    await broker.inbox.idle();
    expect(broker.db.prepare("SELECT status FROM payments").pluck().all()).toEqual(["awaiting_confirmation"]);
    frozenMs = deadlineMs;
    expect(broker.deadlines.poll()).toBe(1);
    expect((await result).body).toMatchObject({ status: "expired", reason: "prompt_expired" });
    expect((await phoneResult).body).toMatchObject({ status: "expired" });
  });

  it("expires a confirmed payment the phone never executes once the broker's clock passes the task's deadline", async () => {
    let offsetMs = 0;
    const w = await world({}, 50_000, { clock: () => Date.now() + offsetMs });
    const task = w.phone.next("payment_task");
    const result = w.terminal.next("payment_result");
    await w.pay(1000);
    offsetMs = ((await task).body.deadlineMs as number) - Date.now() + 1;
    expect(broker.deadlines.poll()).toBe(1);
    expect((await result).body).toMatchObject({ status: "expired", reason: "task_expired" });
    expect(walletBalance(broker.db, broker.keyring, w.userId, "CNY")).toBe(50_000);
  });

  it("lets the terminal cancel before execution; the phone's prompt is withdrawn", async () => {
    const w = await world();
    const prompt = w.phone.next("payment_prompt");
    const phoneResult = w.phone.next("payment_result");
    const accepted = await w.pay(12_800);
    await prompt;
    const cancelled = await w.terminal.call("payment_cancel", { paymentId: accepted.body.paymentId });
    expect(cancelled.type).toBe("payment_result");
    expect(cancelled.body).toMatchObject({ status: "cancelled", reason: "cancelled" });
    expect((await phoneResult).body).toMatchObject({ status: "cancelled", reason: "cancelled" });
    const p = (await prompt).body;
    expect(errorCode(await w.phone.request("payment_approve", { paymentId: p.paymentId, amountMinor: p.amountMinor, currency: p.currency, merchantName: p.merchantName, terminalName: p.terminalName }))).toBe("payment_not_pending");
  });

  it("fails a payment at once when its agreement is unbound while the prompt is open, telling both devices", async () => {
    const w = await world();
    const prompt = w.phone.next("payment_prompt");
    const result = w.terminal.next("payment_result");
    const phoneResult = w.phone.next("payment_result");
    await w.pay(12_800);
    const p = (await prompt).body;
    await w.terminal.call("unbind", { agreementId: w.agreementId });
    expect((await result).body).toMatchObject({ status: "failed", reason: "unbound" });
    expect((await phoneResult).body).toMatchObject({ status: "failed", reason: "unbound" });
    expect(errorCode(await w.phone.request("payment_approve", { paymentId: p.paymentId, amountMinor: p.amountMinor, currency: p.currency, merchantName: p.merchantName, terminalName: p.terminalName }))).toBe("payment_not_pending");
    expect(errorCode(await w.pay(100))).toBe("not_bound");
  });

  it("never pays from an agreement unbound after confirmation: the executing payment fails, execution is refused", async () => {
    const w = await world();
    const task = w.phone.next("payment_task");
    const result = w.terminal.next("payment_result");
    await w.pay(1000);
    const t = await task;
    await w.phone.call("unbind", { agreementId: w.agreementId });
    expect((await result).body).toMatchObject({ status: "failed", reason: "unbound" });
    const b = t.body as { paymentId: string; amountMinor: number; currency: string; payee: string };
    expect(errorCode(await w.phone.request("payment_execute", { paymentId: b.paymentId, amountMinor: b.amountMinor, currency: b.currency, payee: b.payee }))).toBe("payment_not_pending");
    expect(walletBalance(broker.db, broker.keyring, w.userId, "CNY")).toBe(50_000);
    expect(new LedgerRepo(broker.db).transferForPayment(b.paymentId)).toBeNull();
  });

  it("fails the payment on approval when the agreement was unbound by other means (the second agreement state)", async () => {
    const w = await world();
    const prompt = w.phone.next("payment_prompt");
    const result = w.terminal.next("payment_result");
    await w.pay(12_800);
    const p = (await prompt).body;
    // Shredded directly in the database, as if by an operator: no unbound event reached the payment.
    broker.db.prepare("UPDATE agreements SET status = 'unbound', sealed = NULL, lookup = NULL WHERE id = ?").run(w.agreementId);
    await w.phone.call("payment_approve", { paymentId: p.paymentId, amountMinor: p.amountMinor, currency: p.currency, merchantName: p.merchantName, terminalName: p.terminalName });
    expect((await result).body).toMatchObject({ status: "failed", reason: "unbound" });
  });

  it("fails with insufficient funds and never takes the wallet below zero", async () => {
    const w = await world({}, 500);
    const task = w.phone.next("payment_task");
    const result = w.terminal.next("payment_result");
    await w.pay(1000);
    await execute(w.phone, await task);
    expect((await result).body).toMatchObject({ status: "failed", reason: "insufficient_funds", transferId: null });
    expect(walletBalance(broker.db, broker.keyring, w.userId, "CNY")).toBe(500);
    ledgerHolds();
  });

  it.each([
    [200_000, {}, "over_limit"],
    [0, {}, "invalid_amount"],
    [-5, {}, "invalid_amount"],
    [12.5, {}, "invalid_amount"],
    [100, { currency: "EUR" }, "currency_mismatch"],
    [100, { merchantId: "nobody" }, "unknown_merchant"],
    [100, { login: "someone-else" }, "not_bound"],
  ])("rejects %j %j with %s", async (amount, extra, code) => {
    const w = await world();
    expect(errorCode(await w.pay(amount, extra))).toBe(code);
  });

  it("accepts a payment of exactly the per-payment maximum and completes it; one minor unit more is over_limit", async () => {
    const w = await world({}, 200_000);
    expect(errorCode(await w.pay(LIMITS.perPaymentMaxMinor + 1))).toBe("over_limit");
    const prompt = w.phone.next("payment_prompt");
    const result = w.terminal.next("payment_result");
    const accepted = await w.pay(LIMITS.perPaymentMaxMinor);
    expect(accepted.body).toMatchObject({ status: "awaiting_confirmation", amountMinor: LIMITS.perPaymentMaxMinor });
    expect((await approveAndExecute(w.phone, await prompt)).body).toMatchObject({ status: "completed", amountMinor: LIMITS.perPaymentMaxMinor });
    expect((await result).body).toMatchObject({ paymentId: accepted.body.paymentId, status: "completed" });
    expect(walletBalance(broker.db, broker.keyring, w.userId, "CNY")).toBe(200_000 - LIMITS.perPaymentMaxMinor);
    ledgerHolds();
  });

  it("refuses an execution in another currency with dynamic_link_mismatch: nothing moves, and the payment still executes as it was", async () => {
    const w = await world();
    const task = w.phone.next("payment_task");
    const accepted = await w.pay(1000);
    const t = (await task).body as { paymentId: string; amountMinor: number; currency: string; payee: string };
    expect(errorCode(await w.phone.request("payment_execute", { paymentId: t.paymentId, amountMinor: t.amountMinor, currency: "EUR", payee: t.payee }))).toBe("dynamic_link_mismatch");
    expect(walletBalance(broker.db, broker.keyring, w.userId, "CNY")).toBe(50_000);
    expect(new LedgerRepo(broker.db).transferForPayment(t.paymentId)).toBeNull();
    expect((await w.terminal.call("payment_status", { paymentId: accepted.body.paymentId })).body).toMatchObject({ payment: { status: "executing", transferId: null } });
    // The task as it was given still completes the payment, once.
    expect((await execute(w.phone, await task)).body).toMatchObject({ status: "completed", amountMinor: 1000, currency: "CNY" });
    expect(walletBalance(broker.db, broker.keyring, w.userId, "CNY")).toBe(50_000 - 1000);
    ledgerHolds();
  });

  it("returns the same payment for a retried request and sends no second prompt; other fields under the key conflict", async () => {
    const w = await world();
    // The phone on a raw connection: it keeps every message it gets, duplicates included (the
    // Device client would drop a second prompt under the same id).
    await w.phone.close();
    const phone = await RawDevice.connect(broker.url, w.phoneKey, broker.publicKey);
    const fields = { idempotencyKey: "retry-me", orderRef: "order-r" };
    const first = await w.pay(12_800, fields);
    const again = await w.pay(12_800, fields);
    expect(again.type).toBe("payment_accepted");
    expect(again.body.paymentId).toBe(first.body.paymentId);
    expect(errorCode(await w.pay(12_900, fields))).toBe("idempotency_conflict");
    // Anything sent to the phone before its ping was handled arrives before the pong.
    await phone.ping("sync");
    const storedPrompts = (broker.db.prepare("SELECT bytes FROM outbox WHERE device_id = ?").all(w.phoneKey.deviceId) as { bytes: Buffer }[])
      .map((r) => parseEnvelope(r.bytes))
      .filter((r) => r.ok && r.msg.payload.type === "payment_prompt");
    expect(storedPrompts).toHaveLength(1);
    const prompts = phone.received.filter((m) => m.payload?.type === "payment_prompt");
    expect(prompts.map((m) => m.payload!.body.paymentId)).toEqual([first.body.paymentId]);
    await phone.close();
  });

  it.each([
    ["amount", { amountMinor: 1 }],
    ["currency", { currency: "EUR" }],
    ["merchant", { merchantName: "Evil Corp" }],
    ["terminal", { terminalName: "Other TV" }],
  ])("refuses an approval whose %s differs from the prompt (dynamic linking)", async (_what, change) => {
    const w = await world();
    const prompt = w.phone.next("payment_prompt");
    await w.pay(12_800);
    const p = (await prompt).body;
    const approval = { paymentId: p.paymentId, amountMinor: p.amountMinor, currency: p.currency, merchantName: p.merchantName, terminalName: p.terminalName, ...change };
    expect(errorCode(await w.phone.request("payment_approve", approval))).toBe("dynamic_link_mismatch");
    const state = await w.phone.call("payment_status", { paymentId: p.paymentId });
    expect(state.body).toMatchObject({ payment: { status: "awaiting_confirmation" } });
  });

  it("refuses an execution naming another payee or amount", async () => {
    const w = await world();
    const task = w.phone.next("payment_task");
    await w.pay(1000);
    const t = (await task).body;
    expect(errorCode(await w.phone.request("payment_execute", { paymentId: t.paymentId, amountMinor: t.amountMinor, currency: "CNY", payee: "evil" }))).toBe("dynamic_link_mismatch");
    expect(errorCode(await w.phone.request("payment_execute", { paymentId: t.paymentId, amountMinor: 1, currency: "CNY", payee: t.payee }))).toBe("dynamic_link_mismatch");
  });

  it("prompts again after five auto-confirmations in a row, and auto-confirms again once the user confirmed", async () => {
    const w = await world();
    const modes: string[] = [];
    const prompt = w.phone.next("payment_prompt");
    for (let i = 0; i < 6; i++) modes.push((await w.pay(100)).body.mode as string);
    expect(modes).toEqual(["auto", "auto", "auto", "auto", "auto", "prompt"]);
    await approveAndExecute(w.phone, await prompt);
    expect((await w.pay(100)).body.mode).toBe("auto");
  });

  it("prompts once today's auto-confirmed total would pass the daily limit", async () => {
    const w = await world();
    const modes: string[] = [];
    for (let i = 0; i < 5; i++) modes.push((await w.pay(4500)).body.mode as string);
    expect(modes).toEqual(["auto", "auto", "auto", "auto", "prompt"]);
  });

  it("tells a device the current state and the events it missed, in order, by sequence number", async () => {
    const w = await world();
    const prompt = w.phone.next("payment_prompt");
    const result = w.terminal.next("payment_result");
    const accepted = await w.pay(12_800);
    await approveAndExecute(w.phone, await prompt);
    await result;
    const state = await w.terminal.call("payment_status", { paymentId: accepted.body.paymentId });
    const events = state.body.events as { seq: number; kind: string }[];
    expect(events.map((e) => e.kind)).toEqual(["accepted", "prompt_sent", "prompt_delivered", "confirmed", "executing", "completed"]);
    expect(events.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6]);
    const since = await w.phone.call("payment_status", { paymentId: accepted.body.paymentId, sinceSeq: 4 });
    expect((since.body.events as { kind: string }[]).map((e) => e.kind)).toEqual(["executing", "completed"]);
    const stranger = await broker.device(broker.register("terminal"));
    expect(errorCode(await stranger.request("payment_status", { paymentId: accepted.body.paymentId }))).toBe("payment_not_found");
  });

  it("stores and sends the prompt for a phone whose backlog is full: what a device must learn is never dropped", async () => {
    const w = await world({ deviceBacklog: 10, deviceRatePerSec: 100_000, deviceBurst: 100_000 });
    await w.phone.close();
    // The phone pings without ever subscribing, until its backlog is full.
    const filler = await RawDevice.connect(broker.url, w.phoneKey, broker.publicKey, false);
    for (let i = 0; i < 10; i++) await filler.publish(filler.seal("ping", {}).bytes);
    const refused = filler.seal("ping", {});
    await filler.publish(refused.bytes);
    await filler.close();
    const backlog = () => (broker.db.prepare("SELECT count(*) AS n FROM outbox WHERE device_id = ? AND delivered_ms IS NULL").get(w.phoneKey.deviceId) as { n: number }).n;
    expect(backlog()).toBe(10);
    // The terminal's payment needs the phone: its prompt is stored past the phone's bound.
    const accepted = await w.pay(10_000);
    expect(accepted.type).toBe("payment_accepted");
    expect(backlog()).toBe(11);
    const phone = await RawDevice.connect(broker.url, w.phoneKey, broker.publicKey);
    const prompt = await phone.waitFor((m) => m.payload?.type === "payment_prompt");
    expect(prompt.payload!.body).toMatchObject({ paymentId: accepted.body.paymentId, amountMinor: 10_000 });
    await phone.close();
  });

  it("fires deadlines that were armed before a restart", async () => {
    let offsetMs = 0;
    const clock = () => Date.now() + offsetMs;
    const w = await world({}, 50_000, { clock });
    const accepted = await w.pay(12_800);
    const paymentId = accepted.body.paymentId as string;
    const deadlineMs = accepted.body.deadlineMs as number;
    const state = () => ({
      status: broker.db.prepare("SELECT status FROM payments WHERE id = ?").pluck().get(paymentId),
      deadlines: broker.db.prepare("SELECT which, due_ms FROM deadlines WHERE payment_id = ?").all(paymentId),
    });
    // Live at the restart: still awaiting the phone, its prompt deadline armed and not yet due.
    expect(deadlineMs).toBeGreaterThan(clock());
    expect(state()).toEqual({ status: "awaiting_confirmation", deadlines: [{ which: "prompt", due_ms: deadlineMs }] });
    const dataDir = broker.dataDir;
    await broker.stop({ keepData: true });
    broker = await startTestBroker({}, dataDir, undefined, { clock });
    expect(state()).toEqual({ status: "awaiting_confirmation", deadlines: [{ which: "prompt", due_ms: deadlineMs }] });
    // The restarted broker's clock passes the deadline it only knows from its row.
    offsetMs = deadlineMs - Date.now() + 1;
    expect(broker.deadlines.poll()).toBe(1);
    await broker.inbox.idle();
    expect(state()).toEqual({ status: "expired", deadlines: [] });
  });
});

describe("offline phone", () => {
  it("tells the terminal it is waiting for the phone, and delivers the prompt when the phone connects", async () => {
    const w = await world();
    await w.phone.close();
    const waiting = w.terminal.next("payment_update", 5000, (m) => m.body.step === "waiting_for_phone");
    const accepted = await w.pay(12_800);
    expect((await waiting).body.paymentId).toBe(accepted.body.paymentId);
    const again = await broker.device(w.phoneKey, { connect: false });
    const prompt = again.next("payment_prompt");
    await again.connect();
    expect((await prompt).body.paymentId).toBe(accepted.body.paymentId);
    // The PUBACK of the prompt on connect is the receipt the terminal hears about.
    await w.terminal.next("payment_update", 5000, (m) => m.body.step === "prompt_delivered" && m.body.paymentId === accepted.body.paymentId);
  });

  it("still accepts prompt_received from a phone that sends it: answered with the state, nothing told twice", async () => {
    const w = await world();
    const steps: string[] = [];
    w.terminal.on("message", (m) => m.type === "payment_update" && steps.push(m.body.step as string));
    const delivered = w.terminal.next("payment_update", 5000, (m) => m.body.step === "prompt_delivered");
    const prompt = w.phone.next("payment_prompt");
    const accepted = await w.pay(12_800);
    await prompt;
    await delivered;
    const answer = await w.phone.call("prompt_received", { paymentId: accepted.body.paymentId });
    expect(answer.type).toBe("payment_state");
    expect(answer.body).toMatchObject({ payment: { status: "awaiting_confirmation" } });
    await w.terminal.request("ping", {});
    expect(steps).toEqual(["prompt_delivered"]);
  });

  it("gives both devices the expired result after the deadline, the phone on its next connect", async () => {
    // A short prompt: the phone reconnects with a token of real time, which the moved clock must still find fresh.
    let offsetMs = 0;
    const w = await world({ promptTtlMs: 1000 }, 50_000, { clock: () => Date.now() + offsetMs });
    await w.phone.close();
    const result = w.terminal.next("payment_result");
    const accepted = await w.pay(12_800);
    offsetMs = (accepted.body.deadlineMs as number) - Date.now() + 1;
    expect(broker.deadlines.poll()).toBe(1);
    expect((await result).body).toMatchObject({ status: "expired" });
    const again = await broker.device(w.phoneKey, { connect: false });
    const seen: string[] = [];
    again.on("message", (m) => m.body.paymentId === accepted.body.paymentId && seen.push(m.type));
    const phoneResult = again.next("payment_result");
    await again.connect();
    expect((await phoneResult).body).toMatchObject({ status: "expired" });
    // The prompt was withdrawn when the payment ended: only the result reaches the phone.
    expect(seen).toEqual(["payment_result"]);
  });
});
