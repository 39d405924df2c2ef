/**
 * The audit log end to end (docs/protocol.md §Audit log, issue 16): every change a real broker
 * makes is an entry naming what caused it, a payment's result is a receipt provable against a
 * signed head, and the proofs a device asks for verify with the broker's public key alone.
 */
import { createHash } from "node:crypto";
import { userInfo } from "node:os";
import { afterEach, describe, expect, it } from "vitest";
import { adminMain } from "../../broker/admin.ts";
import { newDeviceKey } from "../../device-sim/keyfile.ts";
import { toBase64 } from "../../src/crypto/encoding.ts";
import { addMerchant, creditWallet } from "../../src/service/ledger.ts";
import { AUDIT_KINDS } from "../../src/store/audit.ts";
import type { Db } from "../../src/store/db.ts";
import { startTestBroker, type TestBroker } from "../helpers.ts";
import { RawDevice, sealWith, type DownMessage } from "../wire.ts";

const LIMITS = { currency: "CNY", autoConfirmMaxMinor: 5000, autoConfirmDailyMinor: 100_000, perPaymentMaxMinor: 100_000 };
/** What the log must never hold in clear. */
const USER_ID = "alice-user-7f3a";
const LOGIN = "alice@living-room-tv";
const SERIAL = "SERIAL-93C1-XQ";
const TERMINAL_NAME = "Living room TV";

let brokers: TestBroker[] = [];
let devices: RawDevice[] = [];
afterEach(async () => {
  await Promise.all(devices.map((d) => d.close()));
  devices = [];
  for (const b of brokers.reverse()) await b.stop();
  brokers = [];
});

async function start(...args: Parameters<typeof startTestBroker>): Promise<TestBroker> {
  const b = await startTestBroker(...args);
  brokers.push(b);
  return b;
}

async function connect(broker: TestBroker, key: ReturnType<TestBroker["register"]>): Promise<RawDevice> {
  const d = await RawDevice.connect(broker.url, key, broker.publicKey);
  devices.push(d);
  return d;
}

const sha256b64 = (text: string) => createHash("sha256").update(text).digest("base64");

/** A message this test signed and sent: its id, the digest the log must name, and the answer. */
interface Sent {
  readonly id: string;
  readonly digest: string;
  readonly reply: DownMessage;
}

async function ask(d: RawDevice, type: string, body: Record<string, unknown>): Promise<Sent> {
  const { id, bytes, text } = sealWith(d.key.pair, { type, body, from: d.id });
  await d.publish(bytes);
  const reply = await d.waitFor((m) => m.payload?.re === id);
  // The digest is over the exact signed payload bytes, which the envelope carries as a string.
  return { id, digest: sha256b64((JSON.parse(text) as { payload: string }).payload), reply };
}

const bodyOf = <T = Record<string, unknown>>(m: DownMessage) => m.payload!.body as T;
const trigger = (s: Sent) => ({ msgId: s.id, digest: s.digest });

interface Entry {
  v: number;
  index: number;
  atMs: number;
  kind: string;
  subject?: string;
  [field: string]: unknown;
}

function entries(db: Db, subject?: string): Entry[] {
  const rows = (subject === undefined ? db.prepare("SELECT entry FROM audit_entries ORDER BY idx").all() : db.prepare("SELECT entry FROM audit_entries WHERE subject = ? ORDER BY idx").all(subject)) as { entry: string }[];
  return rows.map((r) => JSON.parse(r.entry) as Entry);
}

/** A bound terminal and phone on raw connections, the merchant, and a funded wallet. */
async function world(broker: TestBroker, userId = USER_ID) {
  if (entries(broker.db).every((e) => e.kind !== "merchant.added")) expect(addMerchant(broker.db, { id: "coffee-corner", name: "Coffee Corner" }, Date.now())).toEqual({ ok: true });
  expect(creditWallet(broker.db, broker.keyring, { userId, amountMinor: 1_000_000, currency: "CNY" }, Date.now()).ok).toBe(true);
  const terminal = await connect(broker, broker.register("terminal", { name: TERMINAL_NAME }));
  const phone = await connect(broker, broker.register("phone", { userId }));
  const asked = await ask(terminal, "bind_request", { login: LOGIN, terminal: { model: "TV", serial: SERIAL, displayName: TERMINAL_NAME } });
  const bound = await ask(phone, "bind_confirm", { code: bodyOf<{ code: string }>(asked.reply).code, limits: LIMITS });
  expect(bound.reply.payload!.type).toBe("bound");
  const agreementId = bodyOf<{ agreementId: string }>(bound.reply).agreementId;
  let order = 0;
  return {
    terminal,
    phone,
    agreementId,
    bound,
    async payRequest(amountMinor: number): Promise<{ sent: Sent; paymentId: string }> {
      const sent = await ask(terminal, "pay_request", { login: LOGIN, merchantId: "coffee-corner", amountMinor, currency: "CNY", orderRef: `order-${++order}`, idempotencyKey: `idem-${order}-${Date.now()}` });
      expect(sent.reply.payload!.type).toBe("payment_accepted");
      return { sent, paymentId: bodyOf<{ paymentId: string }>(sent.reply).paymentId };
    },
    execute: (paymentId: string, amountMinor: number) => ask(phone, "payment_execute", { paymentId, amountMinor, currency: "CNY", payee: "coffee-corner" }),
    approve: (paymentId: string, amountMinor: number) => ask(phone, "payment_approve", { paymentId, amountMinor, currency: "CNY", merchantName: "Coffee Corner", terminalName: TERMINAL_NAME }),
  };
}

/** The result of `paymentId` as `d` received it (pushed or as an answer). */
const resultOn = (d: RawDevice, paymentId: string) => d.waitFor((m) => m.payload?.type === "payment_result" && bodyOf<{ paymentId: string }>(m).paymentId === paymentId);

async function admin(broker: TestBroker, ...args: string[]): Promise<string[]> {
  const out: string[] = [];
  expect(await adminMain([...args, "--data-dir", broker.dataDir], (l) => out.push(l))).toBe(0);
  return out;
}

describe("audit entries", () => {
  it("records every kind of change, each with what caused it, and no login, user id or serial in clear", async () => {
    const broker = await start();
    const w = await world(broker);
    const limits = await ask(w.phone, "set_limits", { agreementId: w.agreementId, limits: { ...LIMITS, autoConfirmMaxMinor: 4000 } });
    expect(limits.reply.payload!.type).toBe("limits_updated");
    const { paymentId } = await w.payRequest(1200);
    expect((await w.execute(paymentId, 1200)).reply.payload!.type).toBe("payment_result");
    // A second terminal of the same user, bound and then unbound by the phone.
    const other = await connect(broker, broker.register("terminal"));
    const code = bodyOf<{ code: string }>((await ask(other, "bind_request", { login: "bob@kitchen", terminal: { model: "Fridge", serial: "FR-1", displayName: "Kitchen" } })).reply).code;
    const second = bodyOf<{ agreementId: string }>((await ask(w.phone, "bind_confirm", { code, limits: LIMITS })).reply).agreementId;
    const unbind = await ask(w.phone, "unbind", { agreementId: second });
    expect(unbind.reply.payload!.type).toBe("unbound");

    // The operator's commands, as the admin tool runs them next to the broker.
    const key = newDeviceKey("terminal");
    await admin(broker, "device", "add", "--kind", "terminal", "--name", "Kiosk", "--public-key", toBase64(key.pair.publicKey));
    await admin(broker, "device", "revoke", key.deviceId);
    await admin(broker, "merchant", "add", "--id", "tea-house", "--name", "Tea House");
    await admin(broker, "ledger", "credit", "--user", USER_ID, "--amount", "10.00", "--currency", "CNY");
    await admin(broker, "keys", "rotate");
    await admin(broker, "keys", "reseal");
    await admin(broker, "keys", "rotate");
    await admin(broker, "keys", "reseal");
    await admin(broker, "keys", "remove", "2");

    const all = entries(broker.db);
    expect(all.map((e) => e.index)).toEqual(all.map((_, i) => i));
    expect([...new Set(all.map((e) => e.kind))].sort()).toEqual([...AUDIT_KINDS].sort());
    for (const e of all) expect(e.v).toBe(1);
    const text = JSON.stringify(all);
    for (const secret of [USER_ID, LOGIN, SERIAL, "bob@kitchen", "FR-1"]) expect(text).not.toContain(secret);

    // Devices, agreements and the limits change name the device or agreement and the message that did it.
    const ofKind = (kind: string) => all.filter((e) => e.kind === kind);
    expect(ofKind("agreement.bound").map((e) => e.subject)).toEqual([w.agreementId, second]);
    expect(ofKind("agreement.bound")[0]).toMatchObject({ terminalId: w.terminal.id, phoneId: w.phone.id, trigger: trigger(w.bound), sealedDigest: expect.stringMatching(/^[A-Za-z0-9+/]{43}=$/) });
    expect(ofKind("agreement.limits_changed")).toEqual([expect.objectContaining({ subject: w.agreementId, trigger: trigger(limits) })]);
    expect(ofKind("agreement.unbound")).toEqual([expect.objectContaining({ subject: second, by: "phone", trigger: trigger(unbind) })]);
    // The sealed agreement is named by a digest of the sealed bytes as stored.
    const sealed = (broker.db.prepare("SELECT sealed FROM agreements WHERE id = ?").get(w.agreementId) as { sealed: Buffer }).sealed;
    expect(ofKind("agreement.resealed").filter((e) => e.subject === w.agreementId).at(-1)!.sealedDigest).toBe(createHash("sha256").update(sealed).digest("base64"));

    // Every operator command is an admin.action naming its OS user, and its changes carry the same trigger.
    const osUser = userInfo().username;
    const commands = ["device add", "device revoke", "merchant add", "ledger credit", "keys rotate", "keys reseal", "keys rotate", "keys reseal", "keys remove"];
    expect(ofKind("admin.action").map((e) => e.trigger)).toEqual(commands.map((admin) => ({ admin, osUser })));
    expect(ofKind("device.registered").filter((e) => e.subject === key.deviceId)).toEqual([expect.objectContaining({ publicKey: toBase64(key.pair.publicKey), trigger: { admin: "device add", osUser } })]);
    expect(ofKind("device.revoked")).toEqual([expect.objectContaining({ subject: key.deviceId, trigger: { admin: "device revoke", osUser } })]);
    expect(ofKind("merchant.added").map((e) => e.subject)).toEqual(["coffee-corner", "tea-house"]);
    expect(ofKind("keys.rotated").map((e) => e.version)).toEqual([2, 3]);
    expect(ofKind("keys.removed")).toEqual([expect.objectContaining({ version: 2, versions: [1, 3], trigger: { admin: "keys remove", osUser } })]);
    expect(ofKind("agreement.resealed").map((e) => [e.subject, e.fromKeyVersion, e.keyVersion])).toEqual([
      [w.agreementId, 1, 2],
      [w.agreementId, 2, 3],
    ]);
    // Each ledger transfer: two credits (one by the operator) and the payment.
    expect(ofKind("ledger.transfer").map((e) => [e.transferKind, e.amountMinor])).toEqual([
      ["credit", 1_000_000],
      ["payment", 1200],
      ["credit", 1000],
    ]);
  });

  it("records each payment transition with the id and digest of the message that caused it, and its transfer", async () => {
    const broker = await start();
    const w = await world(broker);
    // Prompted: the phone's PUBACK of the prompt, its approval, its execution.
    const { sent: request, paymentId } = await w.payRequest(7000);
    await w.terminal.waitFor((m) => m.payload?.type === "payment_update" && bodyOf<{ step: string }>(m).step === "prompt_delivered");
    const approve = await w.approve(paymentId, 7000);
    expect(approve.reply.payload!.type).toBe("payment_task");
    const execute = await w.execute(paymentId, 7000);
    const result = bodyOf<{ auditIndex: number; atMs: number; transferId: string; status: string }>(execute.reply);
    expect(result.status).toBe("completed");

    const history = entries(broker.db, paymentId);
    expect(history.map((e) => [e.kind, e.event ?? e.transferKind, e.status ?? null, e.trigger])).toEqual([
      ["payment.event", "pay_request", "awaiting_confirmation", trigger(request)],
      ["payment.event", "prompt_received", "awaiting_confirmation", { delivered: `${paymentId}.prompt` }],
      ["payment.event", "approve", "executing", trigger(approve)],
      ["payment.event", "execute", "completed", trigger(execute)],
      ["ledger.transfer", "payment", null, trigger(execute)],
    ]);
    // The receipt names the entry that records the result; the terminal's copy says the same.
    const recorded = history[3]!;
    expect(recorded).toMatchObject({ index: result.auditIndex, atMs: result.atMs, subject: paymentId, amountMinor: 7000, currency: "CNY", merchantId: "coffee-corner", transferId: result.transferId, terminalId: w.terminal.id, phoneId: w.phone.id });
    expect(history[4]).toMatchObject({ transferId: result.transferId, paymentId, amountMinor: 7000, currency: "CNY" });
    expect(bodyOf(await resultOn(w.terminal, paymentId))).toEqual(bodyOf(execute.reply));

    // Cancelled by the terminal; failed by an unbind; expired by a deadline.
    const cancelled = await w.payRequest(8000);
    const cancel = await ask(w.terminal, "payment_cancel", { paymentId: cancelled.paymentId });
    expect(entries(broker.db, cancelled.paymentId).at(-1)).toMatchObject({ event: "cancel", status: "cancelled", trigger: trigger(cancel), index: bodyOf<{ auditIndex: number }>(cancel.reply).auditIndex });
    const orphan = await w.payRequest(9000);
    const unbind = await ask(w.terminal, "unbind", { agreementId: w.agreementId });
    expect(entries(broker.db, orphan.paymentId).at(-1)).toMatchObject({ event: "unbound", status: "failed", trigger: trigger(unbind) });
  });

  it("records a deadline as the cause when a prompt expires", async () => {
    let offsetMs = 0;
    const broker = await start({ promptTtlMs: 1000 }, undefined, undefined, { clock: () => Date.now() + offsetMs });
    const w = await world(broker);
    const { paymentId } = await w.payRequest(6000);
    offsetMs = 5000;
    broker.deadlines.poll();
    const result = bodyOf<{ auditIndex: number; status: string }>(await resultOn(w.terminal, paymentId));
    expect(result.status).toBe("expired");
    expect(entries(broker.db, paymentId).at(-1)).toMatchObject({ index: result.auditIndex, event: "deadline", status: "expired", trigger: { deadline: "prompt" } });
    expect(bodyOf(await resultOn(w.phone, paymentId))).toEqual(result);
  });
});
