/** The operator endpoints over real HTTP: health, readiness, and Prometheus metrics that follow a real payment. */
import { afterEach, describe, expect, it } from "vitest";
import { downType } from "../../broker/delivery.ts";
import { Signer } from "../../src/crypto/ed25519.ts";
import { newDeviceKey } from "../../device-sim/keyfile.ts";
import { downBodies, type DownType } from "../../src/protocol/messages.ts";
import { Refusal } from "../../src/service/inbox.ts";
import { signedDown } from "../../src/service/outgoing.ts";
import { addMerchant, creditWallet } from "../../src/service/ledger.ts";
import { OutboxRepo } from "../../src/store/outbox.ts";
import { startTestBroker, type TestBroker } from "../helpers.ts";

let broker: TestBroker | undefined;
afterEach(async () => {
  await broker?.stop();
  broker = undefined;
});

async function start(): Promise<TestBroker & { operator: { url: string } }> {
  broker = await startTestBroker({ metricsPort: 0 });
  expect(broker.operator).toBeDefined();
  return broker as TestBroker & { operator: { url: string } };
}

async function get(b: { operator: { url: string } }, path: string, method = "GET"): Promise<{ status: number; type: string | null; text: string }> {
  const res = await fetch(`${b.operator.url}${path}`, { method });
  return { status: res.status, type: res.headers.get("content-type"), text: await res.text() };
}

// ---- A small reader of Prometheus' text exposition format (version 0.0.4), strict enough to fail on a bad line.

interface Family {
  help?: string;
  type?: string;
}
interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}
interface Exposition {
  readonly families: Map<string, Family>;
  readonly samples: Sample[];
}

const NAME = "[a-zA-Z_:][a-zA-Z0-9_:]*";
const SAMPLE_RE = new RegExp(`^(${NAME})(?:\\{(.*)\\})? (\\S+)(?: -?\\d+)?$`);
const LABEL_RE = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)/y;

function parseExposition(text: string): Exposition {
  const families = new Map<string, Family>();
  const samples: Sample[] = [];
  const family = (name: string) => families.get(name) ?? (families.set(name, {}), families.get(name)!);
  for (const line of text.split("\n")) {
    if (line === "") continue;
    const meta = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line);
    if (meta !== null) {
      if (meta[1] === "HELP") family(meta[2]!).help = meta[3]!;
      else {
        expect(["counter", "gauge", "histogram", "summary", "untyped"], `TYPE of ${meta[2]}`).toContain(meta[3]);
        family(meta[2]!).type = meta[3]!;
      }
      continue;
    }
    if (line.startsWith("#")) continue;
    const m = SAMPLE_RE.exec(line);
    if (m === null) throw new Error(`not a Prometheus sample line: ${line}`);
    const labels: Record<string, string> = {};
    if (m[2] !== undefined && m[2] !== "") {
      LABEL_RE.lastIndex = 0;
      let at = 0;
      while (at < m[2].length) {
        LABEL_RE.lastIndex = at;
        const l = LABEL_RE.exec(m[2]);
        if (l === null) throw new Error(`bad labels in: ${line}`);
        labels[l[1]!] = l[2]!.replace(/\\n/g, "\n").replace(/\\"/g, '"').replace(/\\\\/g, "\\");
        at = LABEL_RE.lastIndex;
      }
    }
    const value = m[3] === "+Inf" ? Infinity : m[3] === "-Inf" ? -Infinity : Number(m[3]);
    // Prometheus reads values with Go's ParseFloat, which takes NaN in any case (prom-client writes "Nan").
    if (Number.isNaN(value) && m[3]!.toLowerCase() !== "nan") throw new Error(`bad value in: ${line}`);
    // Every sample belongs to a declared family (a histogram's _bucket, _sum and _count to its own).
    const base = [m[1]!, m[1]!.replace(/_(bucket|sum|count)$/, "")].find((n) => families.get(n)?.type !== undefined);
    if (base === undefined) throw new Error(`sample of an undeclared metric: ${line}`);
    samples.push({ name: m[1]!, labels, value });
  }
  return { families, samples };
}

function value(e: Exposition, name: string, labels: Record<string, string> = {}): number {
  const found = e.samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  if (found.length !== 1) throw new Error(`${found.length} samples of ${name}${JSON.stringify(labels)}`);
  return found[0]!.value;
}

async function scrape(b: { operator: { url: string } }): Promise<Exposition> {
  const res = await get(b, "/metrics");
  expect(res.status).toBe(200);
  expect(res.type).toMatch(/^text\/plain; version=0\.0\.4/);
  return parseExposition(res.text);
}

/** What the issue asks for, each with its type and a unit (or _total) at the end of its name. */
const REQUIRED: readonly [name: string, type: string, label: string | null][] = [
  ["handoff_connections_open", "gauge", "listener"],
  ["handoff_connects_accepted_total", "counter", null],
  ["handoff_connects_refused_total", "counter", "reason"],
  ["handoff_messages_in_total", "counter", "type"],
  ["handoff_messages_out_total", "counter", "type"],
  ["handoff_error_answers_total", "counter", "code"],
  ["handoff_payments_started_total", "counter", "mode"],
  ["handoff_payments_ended_total", "counter", "outcome"],
  ["handoff_payment_duration_seconds", "histogram", null],
  ["handoff_commit_batch_messages", "histogram", null],
  ["handoff_commit_duration_seconds", "histogram", null],
  ["handoff_disk_sync_duration_seconds", "histogram", null],
  ["handoff_outbox_undelivered_messages", "gauge", null],
  ["handoff_nodejs_eventloop_lag_seconds", "gauge", null],
  ["handoff_nodejs_eventloop_lag_p99_seconds", "gauge", null],
  ["handoff_process_cpu_seconds_total", "counter", null],
  ["handoff_process_resident_memory_bytes", "gauge", null],
];

describe("operator endpoints", () => {
  it("answers /healthz with 200, unknown paths with 404 and other methods with 405", async () => {
    const b = await start();
    expect(await get(b, "/healthz")).toMatchObject({ status: 200, text: "ok\n" });
    expect((await get(b, "/nope")).status).toBe(404);
    expect((await get(b, "/metrics", "POST")).status).toBe(405);
  });

  it("is off when --metrics-port is off (the test default)", async () => {
    broker = await startTestBroker();
    expect(broker.operator).toBeUndefined();
  });

  it("turns /readyz 503 with the reason once the database is closed", async () => {
    const b = await start();
    const ready = await get(b, "/readyz");
    expect(ready.status).toBe(200);
    expect(JSON.parse(ready.text)).toEqual({ ready: true });
    b.db.close();
    const notReady = await get(b, "/readyz");
    expect(notReady.status).toBe(503);
    expect(JSON.parse(notReady.text)).toEqual({ ready: false, reasons: ["database closed"] });
    // Liveness is another question: the process still serves.
    expect((await get(b, "/healthz")).status).toBe(200);
    // And the metrics still scrape (the backlog, read from the database, is left as it was).
    await scrape(b);
  });

  it("serves every listed metric as Prometheus text, with help and a unit in its name", async () => {
    const b = await start();
    const e = await scrape(b);
    for (const [name, type, label] of REQUIRED) {
      const f = e.families.get(name);
      expect(f?.type, name).toBe(type);
      expect(f?.help, name).toMatch(/\S/);
      expect(name).toMatch(/_(total|seconds|bytes|messages|open)$/);
      if (label !== null) expect(e.samples.some((s) => s.name === name && s.labels[label] !== undefined), `${name} by ${label}`).toBe(true);
    }
    // The backlog is read on each scrape: a message stored for a device that is not connected counts.
    new OutboxRepo(b.db).add({ deviceId: "offline-device", msgId: "m-1", re: null, bytes: new Uint8Array(8), createdMs: Date.now() });
    expect(value(await scrape(b), "handoff_outbox_undelivered_messages")).toBe(value(e, "handoff_outbox_undelivered_messages") + 1);
  });

  it("moves the counters as an auto payment completes, and counts an error answer by its code", async () => {
    const b = await start();
    const userId = "user-metrics";
    const login = `${userId}@tv`;
    expect(addMerchant(b.db, { id: "coffee-corner", name: "Coffee Corner" }, Date.now())).toEqual({ ok: true });
    expect(creditWallet(b.db, b.keyring, { userId, amountMinor: 50_000, currency: "CNY" }, Date.now()).ok).toBe(true);
    const terminal = await b.device(b.register("terminal", { name: "Living room TV" }));
    const phone = await b.device(b.register("phone", { userId }));
    const code = (await terminal.call("bind_request", { login, terminal: { model: "TV", serial: "SN1", displayName: "Living room TV" } })).body.code;
    await phone.call("bind_confirm", { code, limits: { currency: "CNY", autoConfirmMaxMinor: 5000, autoConfirmDailyMinor: 20000, perPaymentMaxMinor: 100000 } });

    const before = await scrape(b);
    expect(value(before, "handoff_connections_open", { listener: "tcp" })).toBe(2);
    expect(value(before, "handoff_connects_accepted_total")).toBe(2);

    const task = phone.next("payment_task");
    const result = terminal.next("payment_result");
    const accepted = await terminal.request("pay_request", { login, merchantId: "coffee-corner", amountMinor: 1280, currency: "CNY", orderRef: "order-1", idempotencyKey: "idem-1" });
    expect(accepted.body).toMatchObject({ mode: "auto", status: "executing" });
    const t = (await task).body as { paymentId: string; amountMinor: number; currency: string; payee: string };
    const executed = await phone.call("payment_execute", { paymentId: t.paymentId, amountMinor: t.amountMinor, currency: t.currency, payee: t.payee });
    expect(executed.body).toMatchObject({ status: "completed" });
    await result;
    const refused = await terminal.request("pay_request", { login, merchantId: "nobody", amountMinor: 100, currency: "CNY", orderRef: "order-2", idempotencyKey: "idem-2" });
    expect(refused.body).toMatchObject({ code: "unknown_merchant" });

    const after = await scrape(b);
    const moved = (name: string, labels: Record<string, string> = {}) => value(after, name, labels) - value(before, name, labels);
    expect(moved("handoff_messages_in_total", { type: "pay_request" })).toBe(2);
    expect(moved("handoff_messages_in_total", { type: "payment_execute" })).toBe(1);
    expect(moved("handoff_messages_out_total", { type: "payment_accepted" })).toBe(1);
    expect(moved("handoff_messages_out_total", { type: "payment_task" })).toBe(1);
    expect(moved("handoff_messages_out_total", { type: "payment_result" })).toBe(2);
    expect(moved("handoff_error_answers_total", { code: "unknown_merchant" })).toBe(1);
    expect(moved("handoff_payments_started_total", { mode: "auto" })).toBe(1);
    expect(moved("handoff_payments_started_total", { mode: "prompt" })).toBe(0);
    expect(moved("handoff_payments_ended_total", { outcome: "completed" })).toBe(1);
    expect(moved("handoff_payment_duration_seconds_count")).toBe(1);
    expect(moved("handoff_payment_duration_seconds_sum")).toBeGreaterThanOrEqual(0);
    expect(moved("handoff_commit_batch_messages_count")).toBeGreaterThanOrEqual(3);
    expect(moved("handoff_commit_duration_seconds_count")).toBe(moved("handoff_commit_batch_messages_count"));
    expect(moved("handoff_disk_sync_duration_seconds_count")).toBeGreaterThan(0);
    // Every commit's answer waited for a sync: the buckets are cumulative, +Inf holds them all.
    expect(value(after, "handoff_disk_sync_duration_seconds_bucket", { le: "+Inf" })).toBe(value(after, "handoff_disk_sync_duration_seconds_count"));
  });
});

describe("afterCommit (what metrics count)", () => {
  it("runs a job's callback once its writes commit, and never one whose writes were rolled back", async () => {
    broker = await startTestBroker();
    const calls: string[] = [];
    const ran = (label: string, fail: boolean) =>
      new Promise<boolean>((resolve) =>
        broker!.inbox.internal(
          label,
          (ctx) => {
            ctx.afterCommit(() => calls.push(label));
            if (fail) throw new Error("a bug in this job");
          },
          resolve,
        ),
      );
    expect(await Promise.all([ran("kept", false), ran("rolled back", true)])).toEqual([true, false]);
    expect(calls).toEqual(["kept"]);
  });

  it("never runs the callback of a message whose handler refused it", async () => {
    broker = await startTestBroker();
    const calls: string[] = [];
    broker.inbox.on("ping", (ctx, body) => {
      ctx.afterCommit(() => calls.push((body as { echo?: string }).echo ?? ""));
      if ((body as { echo?: string }).echo === "refuse") throw new Refusal("rate_limited", "refused by the test");
      ctx.reply("pong", { brokerTs: ctx.nowMs });
    });
    const device = await broker.device(broker.register("terminal"));
    expect((await device.request("ping", { echo: "refuse" })).body).toMatchObject({ code: "rate_limited" });
    expect((await device.request("ping", { echo: "keep" })).type).toBe("pong");
    expect(calls).toEqual(["keep"]);
  });
});

describe("downType", () => {
  it.each(Object.keys(downBodies) as DownType[])("reads the type of a signed %s from its first bytes", (type) => {
    const signer = new Signer(newDeviceKey("phone").pair);
    expect(downType(signedDown(signer, "dev-1", type, {} as never, null, Date.now()).bytes)).toBe(type);
  });
});
