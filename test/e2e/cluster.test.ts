/**
 * Two broker nodes on one PostgreSQL database, routing through one Redis: what a device sees is
 * what it sees on one node, wherever its peer is connected (docs/operations.md §Several nodes).
 */
import { copyFileSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { adminMain } from "../../broker/admin.ts";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { Device, Received } from "../../device-sim/device.ts";
import { addMerchant, creditWallet, walletBalance } from "../../src/service/ledger.ts";
import { registerDevice } from "../../src/service/devices.ts";
import { toBase64 } from "../../src/crypto/encoding.ts";
import { newDeviceKey, type DeviceKey } from "../../device-sim/keyfile.ts";
import { Device as NodeDevice } from "../../device-sim/device.ts";
import { LedgerRepo } from "../../src/store/ledger.ts";
import { revokeDevice } from "../../src/service/devices.ts";
import { findRedisServer, startRedis, type RedisService } from "../../device-sim/services.ts";
import { freePort } from "../../device-sim/broker-process.ts";
import { spawn } from "node:child_process";
import { startTestBroker, tempDir, type TestBroker, acceptsTcp } from "../helpers.ts";
import { freshPostgresDatabase } from "../services.ts";
import { rawConnect, tokenFor } from "../wire.ts";
import { loadBrokerIdentity } from "../../broker/data-dir.ts";
import { Signer } from "../../src/crypto/ed25519.ts";
import { signedDown } from "../../src/service/outgoing.ts";
import { OutboxRepo } from "../../src/store/outbox.ts";

// A Redis of this file's own: pub/sub channels are global to a server, and nodes of another
// file's tests must not hear these nodes' presence and notices. Each test gets its own database.
let redis: RedisService;
beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis.stop();
});

async function clusterServices(): Promise<{ database: string; cluster: string }> {
  return { database: await freshPostgresDatabase(), cluster: redis.url };
}

const LIMITS = { currency: "CNY", autoConfirmMaxMinor: 5000, autoConfirmDailyMinor: 20000, perPaymentMaxMinor: 100000 };

const nodes: TestBroker[] = [];
const devices: Device[] = [];
afterEach(async () => {
  await Promise.all(devices.splice(0).map((d) => d.close()));
  for (const n of nodes.splice(0)) await n.stop();
});

/** Two nodes sharing the database, Redis, the master key and the broker identity. */
async function twoNodes(overrides: Parameters<typeof startTestBroker>[0] = {}): Promise<[TestBroker, TestBroker, string]> {
  const { database, cluster } = await clusterServices();
  const a = await startTestBroker({ database, cluster, nodeId: "node-a", ...overrides });
  nodes.push(a);
  const dirB = tempDir();
  for (const f of ["master.key", "broker.key", "broker.pub"]) copyFileSync(join(a.dataDir, f), join(dirB, f));
  const b = await startTestBroker({ database, cluster, nodeId: "node-b", ...overrides }, dirB);
  nodes.push(b);
  return [a, b, database];
}

async function on(node: TestBroker, key: DeviceKey, reconnect = false): Promise<Device> {
  const d = new NodeDevice({ url: node.url, key, brokerPublicKey: node.publicKey, reconnect });
  devices.push(d);
  await d.connect();
  return d;
}

function register(node: TestBroker, kind: "terminal" | "phone", userId?: string): DeviceKey {
  const key = newDeviceKey(kind);
  const res = registerDevice(node.db, node.keyring, { kind, name: `test ${kind}`, publicKey: toBase64(key.pair.publicKey), ...(userId ? { userId } : {}) }, Date.now());
  if (!res.ok) throw new Error(res.error);
  return key;
}

async function boundPair(a: TestBroker, b: TestBroker, funds = 50_000) {
  const userId = `user-${Math.random().toString(36).slice(2, 8)}`;
  const login = `${userId}@tv`;
  addMerchant(a.db, { id: "coffee-corner", name: "Coffee Corner" }, Date.now());
  expect(creditWallet(a.db, a.keyring, { userId, amountMinor: funds, currency: "CNY" }, Date.now()).ok).toBe(true);
  const terminal = await on(a, register(a, "terminal"));
  const phoneKey = register(a, "phone", userId);
  const phone = await on(b, phoneKey);
  const code = (await terminal.call("bind_request", { login, terminal: { model: "TV", serial: "SN1", displayName: "Living room TV" } })).body.code;
  const agreementId = (await phone.call("bind_confirm", { code, limits: LIMITS })).body.agreementId as string;
  let seq = 0;
  const pay = (amountMinor: number) =>
    terminal.request("pay_request", { login, merchantId: "coffee-corner", amountMinor, currency: "CNY", orderRef: `o-${++seq}`, idempotencyKey: `k-${seq}-${Math.random()}` });
  return { userId, login, terminal, phone, phoneKey, agreementId, pay };
}

describe("two nodes", { timeout: 30_000 }, () => {
  it("binds a terminal on one node to a phone on the other, and pays both ways of confirming", async () => {
    const [a, b, database] = await twoNodes();
    const w = await boundPair(a, b);
    // Auto-confirmed: the task reaches the phone on node B, the result the terminal on node A.
    const task = w.phone.next("payment_task");
    const result = w.terminal.next("payment_result");
    const accepted = await w.pay(1280);
    expect(accepted.body).toMatchObject({ status: "executing", mode: "auto" });
    const t = (await task).body as { paymentId: string; amountMinor: number; currency: string; payee: string };
    const executed = await w.phone.call("payment_execute", { paymentId: t.paymentId, amountMinor: t.amountMinor, currency: t.currency, payee: t.payee });
    expect(executed.body).toMatchObject({ status: "completed" });
    expect((await result).body).toMatchObject({ paymentId: accepted.body.paymentId, status: "completed" });
    // Prompted: the phone approves on B; the terminal on A follows every step.
    const prompt = w.phone.next("payment_prompt");
    const result2 = w.terminal.next("payment_result");
    await w.pay(9000);
    const p = (await prompt).body as { paymentId: string; amountMinor: number; currency: string; merchantName: string; terminalName: string };
    const task2 = await w.phone.call("payment_approve", { paymentId: p.paymentId, amountMinor: p.amountMinor, currency: p.currency, merchantName: p.merchantName, terminalName: p.terminalName });
    const t2 = task2.body as { paymentId: string; amountMinor: number; currency: string; payee: string };
    await w.phone.call("payment_execute", { paymentId: t2.paymentId, amountMinor: t2.amountMinor, currency: t2.currency, payee: t2.payee });
    expect((await result2).body).toMatchObject({ paymentId: p.paymentId, status: "completed" });
    expect(walletBalance(b.db, b.keyring, w.userId, "CNY")).toBe(50_000 - 1280 - 9000);
    for (const [currency, sum] of new LedgerRepo(a.db).sums()) expect(sum, currency).toBe(0);
    // The admin tool reads the same store: the wallet, and an audit log that verifies.
    const out: string[] = [];
    expect(await adminMain(["ledger", "balance", "--user", w.userId, "--json", "--data-dir", b.dataDir, "--database", database], (l) => out.push(l))).toBe(0);
    expect(out.join("\n")).toContain(String(50_000 - 1280 - 9000));
    expect(await adminMain(["audit", "verify", "--data-dir", b.dataDir, "--database", database], (l) => out.push(l))).toBe(0);
  });

  it("serializes a cancel on one node against the execution on the other: one outcome per payment, told alike to both", async () => {
    const [a, b] = await twoNodes({ maxConsecutiveAuto: 100 });
    const w = await boundPair(a, b);
    const outcomes: string[] = [];
    for (let i = 0; i < 8; i++) {
      const task = w.phone.next("payment_task");
      const accepted = await w.pay(100 + i);
      const t = (await task).body as { paymentId: string; amountMinor: number; currency: string; payee: string };
      // The same instant on both nodes: the phone (on B) executes, the terminal (on A) cancels.
      const [executed, cancelled] = await Promise.all([
        w.phone.request("payment_execute", { paymentId: t.paymentId, amountMinor: t.amountMinor, currency: t.currency, payee: t.payee }),
        w.terminal.request("payment_cancel", { paymentId: accepted.body.paymentId }),
      ]);
      // Whichever committed first decided; the other heard that decision, or that it came too late.
      const row = a.db.prepare("SELECT status FROM payments WHERE id = ?").pluck().get(t.paymentId) as string;
      expect(["completed", "cancelled"]).toContain(row);
      for (const reply of [executed, cancelled]) {
        const body = reply.body as { status?: string; code?: string; detail?: string };
        if (reply.type === "error") expect(`${body.code}: ${body.detail}`).toMatch(new RegExp(`^payment_not_pending: .*${row}`));
        else expect(body.status).toBe(row);
      }
      const transfers = a.db.prepare("SELECT count(*) FROM transfers WHERE payment_id = ?").pluck().get(t.paymentId);
      expect(transfers).toBe(row === "completed" ? 1 : 0);
      outcomes.push(row);
    }
    const spent = outcomes.reduce((sum, o, i) => sum + (o === "completed" ? 100 + i : 0), 0);
    expect(walletBalance(a.db, a.keyring, w.userId, "CNY")).toBe(50_000 - spent);
    for (const [currency, sum] of new LedgerRepo(a.db).sums()) expect(sum, currency).toBe(0);
  });

  it("keeps a message for a device on the other node while Redis is down, and delivers it when Redis is back", async () => {
    // A Redis of this test's own on a fixed port, so that it can come back where the nodes look.
    const port = await freePort();
    const startOwnRedis = async () => {
      const child = spawn(findRedisServer(), ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" });
      await expect.poll(() => acceptsTcp(port), { timeout: 10_000 }).toBe(true);
      return child;
    };
    let own = await startOwnRedis();
    try {
      const [a, b] = await twoNodes({ cluster: `redis://127.0.0.1:${port}` });
      const w = await boundPair(a, b);
      own.kill("SIGKILL");
      await new Promise((r) => own.once("exit", r));
      // The terminal (node A) pays; the task for the phone (node B) is committed but cannot be announced.
      const heard: string[] = [];
      w.phone.on("message", (m: Received) => heard.push(m.type));
      const task = w.phone.next("payment_task", 20_000);
      const accepted = await w.pay(700);
      expect(accepted.body).toMatchObject({ status: "executing" });
      await new Promise((r) => setTimeout(r, 500));
      expect(heard).not.toContain("payment_task");
      own = await startOwnRedis();
      expect((await task).body).toMatchObject({ paymentId: accepted.body.paymentId });
    } finally {
      own.kill("SIGKILL");
    }
  }, 40_000);

  it("accepts a connect token once, whichever node sees it first", async () => {
    const [a, b] = await twoNodes();
    const key = register(a, "terminal");
    const token = tokenFor(key.deviceId, key.pair);
    const first = await rawConnect(a.url, { clientId: key.deviceId, username: key.deviceId, password: token });
    expect(first.accepted).toBe(true);
    if (first.accepted) first.client.end(true);
    // The same CONNECT (id and token) at node B: refused, the token is spent (CONNACK 4).
    const replay = await rawConnect(b.url, { clientId: key.deviceId, username: key.deviceId, password: token });
    expect(replay).toMatchObject({ accepted: false, code: 4 });
  });

  it("holds a device's message rate limit when it moves to the other node", async () => {
    const [a, b] = await twoNodes({ deviceBurst: 5, deviceRatePerSec: 1 });
    const key = register(a, "terminal");
    const onA = await on(a, key);
    const answers: string[] = [];
    for (let i = 0; i < 6; i++) answers.push((await onA.request("ping", {})).type);
    expect(answers).toEqual(["pong", "pong", "pong", "pong", "pong", "error"]);
    // Node A writes the device's bucket to Redis when it sees the device go. A device back on
    // another node before that may gain up to LIMITS_SYNC_MS of its own traffic (the periodic
    // write, broker/cluster.ts): that race, which a loaded machine once won, is not this test.
    const leftA = new Promise<void>((resolve) => a.aedes.on("clientDisconnect", (c) => c.id === key.deviceId && resolve()));
    await onA.close();
    await leftA;
    // At node B at once: the bucket it left on node A came along, nearly empty. A fresh bucket of
    // 5 would answer five pings; this one refuses within them, whatever the refill (1/s) gave back
    // while the device moved on a loaded machine.
    const onB = await on(b, key);
    const onBAnswers: Received[] = [];
    for (let i = 0; i < 5; i++) onBAnswers.push(await onB.request("ping", {}));
    expect(onBAnswers.map((m) => m.type)).toContain("error");
    expect(onBAnswers.find((m) => m.type === "error")!.body).toMatchObject({ code: "rate_limited" });
  });

  it("refuses to start a node whose broker key or master key is not the cluster's, saying which", async () => {
    const { database, cluster } = await clusterServices();
    const a = await startTestBroker({ database, cluster, nodeId: "node-a" });
    nodes.push(a);
    register(a, "phone", "alice");
    // A fresh data dir: a new broker key and a new master key.
    await expect(startTestBroker({ database, cluster, nodeId: "node-b" })).rejects.toThrow(/broker key .* is not the one the database's devices pin/);
    // The cluster's broker key, but its own master key.
    const dir = tempDir();
    for (const f of ["broker.key", "broker.pub"]) copyFileSync(join(a.dataDir, f), join(dir, f));
    await expect(startTestBroker({ database, cluster, nodeId: "node-b" }, dir)).rejects.toThrow(/master key does not open/);
  });

  it("refuses a master key rotation written into one node's key file while other nodes share the database", async () => {
    const [a, b, database] = await twoNodes();
    const out: string[] = [];
    await expect(adminMain(["keys", "rotate", "--data-dir", a.dataDir, "--database", database], (l) => out.push(l))).rejects.toThrow(/2 broker nodes share this database \(node-a, node-b\)/);
    expect(readFileSync(join(a.dataDir, "master.key"), "utf8")).toBe(readFileSync(join(b.dataDir, "master.key"), "utf8"));
    // With one node left, the file is the only copy in use, and the rotation goes ahead.
    await b.stop();
    nodes.splice(nodes.indexOf(b), 1);
    const rotate = () => adminMain(["keys", "rotate", "--data-dir", a.dataDir, "--database", database], (l) => out.push(l)).then(String, (err: Error) => err.message);
    await expect.poll(rotate, { timeout: 5000 }).toBe("0");
    expect(out.join("\n")).toContain("added master key version 2");
  });

  it("disconnects a revoked device wherever it is connected", async () => {
    const [a, b] = await twoNodes();
    const key = register(a, "terminal");
    await on(b, key);
    const heldByB = () => (b.aedes as unknown as { clients: Record<string, unknown> }).clients[key.deviceId] !== undefined;
    expect(heldByB()).toBe(true);
    // Revoked through node A's connection to the database: node B closes the connection it holds.
    expect(revokeDevice(a.db, key.deviceId, Date.now()).ok).toBe(true);
    await expect.poll(heldByB, { timeout: 5000 }).toBe(false);
  });

  it("resends what waited for a device from the node it reconnects to, and fires each deadline once", async () => {
    const [a, b] = await twoNodes({ promptTtlMs: 1500 });
    const w = await boundPair(a, b);
    // The phone goes away; a prompt is stored for it by node A's handling of the pay request.
    await w.phone.close();
    const accepted = await w.pay(9000);
    expect(accepted.body).toMatchObject({ status: "awaiting_confirmation" });
    // It comes back to node A this time: the prompt is resent from there.
    const back = new NodeDevice({ url: a.url, key: w.phoneKey, brokerPublicKey: a.publicKey, reconnect: false });
    devices.push(back);
    const prompt = back.next("payment_prompt");
    await back.connect();
    expect((await prompt).body).toMatchObject({ paymentId: accepted.body.paymentId });
    // Nobody answers: both nodes poll deadlines, the payment expires once.
    const updates: Received[] = [];
    w.terminal.on("message", (m) => m.type === "payment_result" && updates.push(m));
    await expect.poll(() => updates.length, { timeout: 10_000 }).toBe(1);
    expect(updates[0]!.body).toMatchObject({ status: "expired" });
    await new Promise((r) => setTimeout(r, 1000));
    expect(updates.length).toBe(1);
    const events = a.db.prepare("SELECT count(*) AS n FROM payment_events WHERE payment_id = ? AND kind = 'expired'").get(accepted.body.paymentId) as { n: number };
    expect(events.n).toBe(1);
  });

  it("never skips a message another node committed for a device when this node sends it a newer one", async () => {
    const [a] = await twoNodes();
    const terminalKey = register(a, "terminal");
    const terminal = await on(a, terminalKey);
    // Another node commits a message for the terminal (node A holds it); its notice is still on its
    // way through Redis (here: never sent), so node A has not read it from the outbox yet.
    const signer = new Signer(loadBrokerIdentity(a.dataDir));
    const other = signedDown(signer, terminalKey.deviceId, "payment_result", { paymentId: "pay_from_the_other_node", seq: 3, status: "expired", reason: "prompt_timeout", transferId: null, amountMinor: 900, currency: "CNY", merchantName: "Coffee Corner", terminalName: "TV", auditIndex: 0, atMs: Date.now() }, null, Date.now());
    new OutboxRepo(a.db).add({ deviceId: terminalKey.deviceId, msgId: other.msgId, re: null, bytes: other.bytes, createdMs: Date.now() });
    const seen: string[] = [];
    terminal.on("message", (m) => seen.push(m.id));
    // Node A then commits a newer message for it (the pong): sending that one straight away would
    // move the terminal's cursor past the older row, and the notice, when it came, would find
    // nothing past the cursor. Node A reads the outbox instead: both arrive, in commit order.
    const pong = await terminal.call("ping", { echo: "after" });
    await expect.poll(() => seen.includes(other.msgId), { timeout: 3000 }).toBe(true);
    expect(seen.indexOf(other.msgId)).toBeLessThan(seen.indexOf(pong.id));
  });
});
