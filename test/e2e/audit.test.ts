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
import { headSignedBytes, leafHash, verifyConsistency, verifyInclusion } from "../../src/core/merkle.ts";
import { verify } from "../../src/crypto/ed25519.ts";
import { fromBase64, toBase64 } from "../../src/crypto/encoding.ts";
import { addMerchant, creditWallet } from "../../src/service/ledger.ts";
import { AUDIT_KINDS, verifyAudit } from "../../src/store/audit.ts";
import { openDatabase, type Db } from "../../src/store/db.ts";
import { startTestBroker, tempDir, type TestBroker } from "../helpers.ts";
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

    // The whole log, written by the broker and the admin tool side by side, recomputes and verifies.
    broker.auditHeads.step();
    await broker.inbox.idle();
    expect(verifyAudit(broker.db, broker.publicKey)).toMatchObject({ ok: true });
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

// ── Receipts and proofs ──────────────────────────────────────────────────────────────────────

const utf8 = new TextEncoder();
const bytes64 = (b64: string) => fromBase64(b64)!;

interface HeadJson {
  treeSize: number;
  rootHash: string;
  timestampMs: number;
  signature: string;
}

/** A signed head checked with the broker's public key alone. */
function headVerifies(h: HeadJson, publicKey: Uint8Array): boolean {
  return verify(publicKey, headSignedBytes(h.treeSize, bytes64(h.rootHash), h.timestampMs), bytes64(h.signature));
}

interface Inclusion {
  index: number;
  treeSize: number;
  entry: string;
  head: HeadJson;
  path: string[];
}

/** Checks an audit_inclusion answer as a device offline would (docs/protocol.md §audit_inclusion). */
function inclusionVerifies(p: Inclusion, publicKey: Uint8Array): boolean {
  return p.treeSize === p.head.treeSize && headVerifies(p.head, publicKey) && verifyInclusion(leafHash(utf8.encode(p.entry)), p.index, p.treeSize, p.path.map(bytes64), bytes64(p.head.rootHash));
}

/** A receipt: the payment_result envelope exactly as received, its signature checked with the broker's key. */
function openReceipt(m: DownMessage, publicKey: Uint8Array) {
  const envelope = JSON.parse(m.bytes.toString("utf8")) as { payload: string; sig: string };
  expect(verify(publicKey, utf8.encode(envelope.payload), bytes64(envelope.sig))).toBe(true);
  const payload = JSON.parse(envelope.payload) as { type: string; body: { paymentId: string; status: string; amountMinor: number; currency: string; transferId: string | null; auditIndex: number; atMs: number } };
  expect(payload.type).toBe("payment_result");
  return payload.body;
}

/** The entry proven is the receipt's result. */
function expectEntryOfReceipt(p: Inclusion, r: ReturnType<typeof openReceipt>): void {
  expect(p.index).toBe(r.auditIndex);
  expect(JSON.parse(p.entry)).toMatchObject({ index: r.auditIndex, kind: "payment.event", subject: r.paymentId, status: r.status, amountMinor: r.amountMinor, currency: r.currency, transferId: r.transferId, atMs: r.atMs });
}

async function inclusion(d: RawDevice, body: { index: number; treeSize?: number }): Promise<Inclusion> {
  const { reply } = await ask(d, "audit_inclusion_request", body);
  expect(reply.payload!.type, JSON.stringify(reply.payload!.body)).toBe("audit_inclusion");
  return bodyOf<Inclusion>(reply);
}

const errorOf = (s: Sent) => (s.reply.payload!.type === "error" ? bodyOf<{ code: string }>(s.reply).code : `not an error: ${s.reply.payload!.type}`);

/** Every signed head stored in a data dir's database, oldest first. */
function storedHeads(db: Db): HeadJson[] {
  return (db.prepare("SELECT tree_size, root_hash, timestamp_ms, signature FROM audit_heads ORDER BY tree_size").all() as { tree_size: number; root_hash: Buffer; timestamp_ms: number; signature: Buffer }[]).map((r) => ({
    treeSize: r.tree_size,
    rootHash: toBase64(r.root_hash),
    timestampMs: r.timestamp_ms,
    signature: toBase64(r.signature),
  }));
}

describe("receipts and proofs", () => {
  it("proves a receipt's entry against a signed head after a broker restart and a master key rotation, and the later head consistent with the earlier", async () => {
    const dataDir = tempDir();
    const first = await start({}, dataDir);
    const w = await world(first);
    const { paymentId } = await w.payRequest(1200);
    const executed = await w.execute(paymentId, 1200);
    const receipt = openReceipt(executed.reply, first.publicKey);
    expect(receipt).toMatchObject({ paymentId, status: "completed", amountMinor: 1200 });
    const terminalReceipt = openReceipt(await resultOn(w.terminal, paymentId), first.publicKey);
    expect(terminalReceipt).toEqual(receipt);

    // No head covers the new entry yet: the broker signs one now.
    const before = await inclusion(w.terminal, { index: receipt.auditIndex });
    expect(inclusionVerifies(before, first.publicKey)).toBe(true);
    expectEntryOfReceipt(before, receipt);
    const phoneKey = w.phone.key;
    await Promise.all([w.terminal.close(), w.phone.close()]);
    devices = [];
    await first.stop({ keepData: true });
    brokers = [];

    // The operator rotates the master key while the broker is down; then it starts again.
    const out: string[] = [];
    expect(await adminMain(["keys", "rotate", "--data-dir", dataDir], (l) => out.push(l))).toBe(0);
    const second = await start({}, dataDir);
    expect(second.publicKey).toEqual(first.publicKey);
    expect(second.keyring.current).toBe(2);
    const phone = await connect(second, phoneKey);
    // The rotation's entries are not under any head yet; the next head covers them.
    second.auditHeads.step();
    await second.inbox.idle();
    const heads = storedHeads(second.db);
    const latest = heads.at(-1)!;
    expect(latest.treeSize).toBeGreaterThan(before.treeSize);
    expect(entries(second.db).slice(before.treeSize).map((e) => e.kind)).toEqual(["keys.rotated", "admin.action"]);

    // The receipt, checked against the old head and the new one, with the broker's public key alone.
    expect(openReceipt(executed.reply, second.publicKey)).toEqual(receipt);
    for (const body of [{ index: receipt.auditIndex }, { index: receipt.auditIndex, treeSize: before.treeSize }, { index: receipt.auditIndex, treeSize: latest.treeSize }]) {
      const proof = await inclusion(phone, body);
      expect(proof.treeSize).toBe(body.treeSize ?? latest.treeSize);
      expect(inclusionVerifies(proof, second.publicKey)).toBe(true);
      expectEntryOfReceipt(proof, receipt);
    }
    // A proof that does not match its head fails the same check.
    const proof = await inclusion(phone, { index: receipt.auditIndex, treeSize: latest.treeSize });
    expect(inclusionVerifies({ ...proof, entry: proof.entry.replace('"amountMinor":1200', '"amountMinor":1201') }, second.publicKey)).toBe(false);
    expect(inclusionVerifies({ ...proof, head: { ...proof.head, timestampMs: proof.head.timestampMs + 1 } }, second.publicKey)).toBe(false);

    // The new head extends the old one: the consistency proof between the two heads the device has seen.
    const { reply } = await ask(phone, "audit_consistency_request", { fromSize: before.treeSize, toSize: latest.treeSize });
    expect(reply.payload!.type).toBe("audit_consistency");
    const c = bodyOf<{ from: HeadJson; to: HeadJson; path: string[] }>(reply);
    expect(c.from).toEqual(before.head);
    expect(c.to).toEqual(latest);
    expect(headVerifies(c.from, second.publicKey) && headVerifies(c.to, second.publicKey)).toBe(true);
    expect(verifyConsistency(c.from.treeSize, c.to.treeSize, bytes64(c.from.rootHash), bytes64(c.to.rootHash), c.path.map(bytes64))).toBe(true);
    expect(verifyConsistency(c.from.treeSize, c.to.treeSize, bytes64(c.from.rootHash), bytes64(c.to.rootHash), c.path.slice(1).map(bytes64))).toBe(false);
    expect(verifyAudit(second.db, second.publicKey)).toMatchObject({ ok: true });
  });

  it("answers audit_entry_not_found to a device asking for an entry that is not about its own payment", async () => {
    const broker = await start();
    const w = await world(broker);
    const { paymentId } = await w.payRequest(1200);
    const receipt = openReceipt((await w.execute(paymentId, 1200)).reply, broker.publicKey);
    // A stranger with its own bound pair: it may not see the first pair's entries, nor learn they exist.
    const stranger = await world(broker, "bob-user-2");
    const size = entries(broker.db).length;
    for (const index of [receipt.auditIndex, receipt.auditIndex - 1, size + 10]) {
      expect(errorOf(await ask(stranger.terminal, "audit_inclusion_request", { index }))).toBe("audit_entry_not_found");
      expect(errorOf(await ask(stranger.phone, "audit_inclusion_request", { index }))).toBe("audit_entry_not_found");
    }
    // Its own device's registration is not a payment of it either.
    const registered = entries(broker.db).find((e) => e.kind === "device.registered" && e.subject === w.terminal.id)!;
    expect(errorOf(await ask(w.terminal, "audit_inclusion_request", { index: registered.index }))).toBe("audit_entry_not_found");
    // The payment's own devices get the proof of every entry about it, the transfer's included.
    for (const e of entries(broker.db, paymentId)) expect(inclusionVerifies(await inclusion(w.phone, { index: e.index }), broker.publicKey)).toBe(true);
  });

  it("answers audit_head_not_found for a size the broker never signed, and invalid_body for sizes out of order", async () => {
    const broker = await start();
    const w = await world(broker);
    const { paymentId } = await w.payRequest(1200);
    const receipt = openReceipt((await w.execute(paymentId, 1200)).reply, broker.publicKey);
    const signed = await inclusion(w.phone, { index: receipt.auditIndex });
    expect(errorOf(await ask(w.phone, "audit_inclusion_request", { index: receipt.auditIndex, treeSize: signed.treeSize + 1 }))).toBe("audit_head_not_found");
    expect(errorOf(await ask(w.phone, "audit_consistency_request", { fromSize: signed.treeSize - 1, toSize: signed.treeSize }))).toBe("audit_head_not_found");
    expect(errorOf(await ask(w.phone, "audit_consistency_request", { fromSize: signed.treeSize, toSize: signed.treeSize + 1 }))).toBe("audit_head_not_found");
    expect(errorOf(await ask(w.phone, "audit_consistency_request", { fromSize: signed.treeSize, toSize: signed.treeSize - 1 }))).toBe("invalid_body");
    // A head that does not cover the entry.
    const { paymentId: later } = await w.payRequest(1300);
    const laterIndex = entries(broker.db, later)[0]!.index;
    expect(errorOf(await ask(w.phone, "audit_inclusion_request", { index: laterIndex, treeSize: signed.treeSize }))).toBe("audit_head_not_found");
    // The same size on both sides: an empty proof.
    const same = await ask(w.phone, "audit_consistency_request", { fromSize: signed.treeSize, toSize: signed.treeSize });
    expect(bodyOf<{ path: string[] }>(same.reply).path).toEqual([]);
  });

  it("signs a head when the log has grown, at the configured interval and on shutdown, and only then", async () => {
    const dataDir = tempDir();
    const broker = await start({}, dataDir);
    const w = await world(broker);
    broker.auditHeads.step();
    await broker.inbox.idle();
    const size = () => entries(broker.db).length;
    expect(storedHeads(broker.db).map((h) => h.treeSize)).toEqual([size()]);
    // Nothing new: no new head.
    broker.auditHeads.step();
    await broker.inbox.idle();
    expect(storedHeads(broker.db)).toHaveLength(1);
    const { paymentId } = await w.payRequest(1200);
    await w.execute(paymentId, 1200);
    const finalSize = size();
    await Promise.all(devices.map((d) => d.close()));
    devices = [];
    await broker.stop({ keepData: true });
    brokers = [];
    const db = openDatabase(`${dataDir}/handoff.db`, { readonly: true });
    try {
      const heads = storedHeads(db);
      expect(heads.map((h) => h.treeSize)).toEqual([heads[0]!.treeSize, finalSize]);
      for (const h of heads) expect(headVerifies(h, broker.publicKey)).toBe(true);
      expect(verifyAudit(db, broker.publicKey)).toMatchObject({ ok: true });
    } finally {
      db.close();
    }

    // By the clock: with a short interval, a head follows new entries without being asked.
    const timed = await start({ auditHeadEveryMs: 100 }, dataDir);
    const grown = entries(timed.db).length;
    expect(grown).toBe(finalSize);
    timed.register("terminal");
    await expect.poll(() => storedHeads(timed.db).at(-1)!.treeSize, { timeout: 10_000 }).toBe(grown + 1);
  });
});
