/**
 * The honest devices of `npm run test:abuse`: terminal/phone pairs paying one payment after
 * another (auto-confirmed and prompted-and-approved) while the attacks run, and a probe that
 * asks the broker for a pong at the end. A payment's latency is from its first pay_request to
 * the payment_result (or, when the result is slow, the payment_status that says it ended).
 */
import { randomUUID } from "node:crypto";
import { FINAL_STATUSES } from "../../src/core/payment.ts";
import { PhoneAgent } from "../agents.ts";
import { Device, type Received } from "../device.ts";
import type { DeviceKey } from "../keyfile.ts";
import { between, sleep, within } from "../util.ts";

export const CURRENCY = "CNY";
export const MERCHANT = { id: "abuse-mart", name: "Abuse Mart" } as const;
export const LIMITS = { currency: CURRENCY, autoConfirmMaxMinor: 5000, autoConfirmDailyMinor: 1_000_000_000, perPaymentMaxMinor: 100_000 } as const;

/** One honest payment as the terminal saw it. */
export interface HonestPayment {
  readonly pair: number;
  readonly idempotencyKey: string;
  readonly startMs: number;
  paymentId: string | null;
  mode: "auto" | "prompt" | null;
  /** The final status, once known; null while it is not (at the end: lost). */
  status: string | null;
  endMs: number | null;
  /** An answer that was neither an acceptance nor "try later" (an error code). */
  rejected: string | null;
  /** How many times the request was answered `busy` and sent again after its retryAfterMs. */
  busy: number;
}

/** Answers that mean "try again", not "no" (`busy` says when: requestPastBusy waits for it). */
const RETRY_CODES = new Set(["unavailable", "rate_limited", "stale"]);
const ANSWER_MS = 5000;
const STATUS_POLL_MS = 3000;
const isFinal = (status: string) => (FINAL_STATUSES as readonly string[]).includes(status);

export interface HonestPairSpec {
  readonly index: number;
  readonly login: string;
  readonly terminalKey: DeviceKey;
  readonly phoneKey: DeviceKey;
}

export class HonestPair {
  readonly terminal: Device;
  readonly phone: Device;
  /** Final results the terminal was told, by payment id, with when. */
  readonly #results = new Map<string, { status: string; atMs: number }>();
  readonly #wake = new Set<() => void>();

  constructor(
    readonly spec: HonestPairSpec,
    url: string,
    brokerPublicKey: Uint8Array,
  ) {
    const options = { url, brokerPublicKey, reconnectMs: 250, connectTimeoutMs: 5000, keepaliveS: 10 };
    this.terminal = new Device({ ...options, key: spec.terminalKey });
    this.phone = new Device({ ...options, key: spec.phoneKey });
    for (const d of [this.terminal, this.phone]) d.on("error", () => {}); // the client reconnects by itself
    this.terminal.on("message", (m: Received) => {
      if (m.type !== "payment_result") return;
      const b = m.body as { paymentId: string; status: string };
      if (!this.#results.has(b.paymentId)) this.#results.set(b.paymentId, { status: b.status, atMs: Date.now() });
      for (const w of this.#wake) w();
    });
    // The phone approves every prompt and executes every task: an honest user.
    new PhoneAgent(this.phone, () => "approve");
  }

  async connect(ms: number): Promise<boolean> {
    return within(Promise.all([this.terminal.connect(), this.phone.connect()]), ms);
  }

  async bind(limits: typeof LIMITS): Promise<void> {
    const code = (await this.terminal.call("bind_request", { login: this.spec.login, terminal: { model: "AbuseTV", serial: `AB-${this.spec.index}`, displayName: `Abuse TV ${this.spec.index}` } })).body.code;
    await this.phone.call("bind_confirm", { code, limits });
  }

  /**
   * Pays one payment after another until `stopNew` says so, each followed to its end or until
   * `giveUpAt`; every payment started is pushed to `out` first.
   */
  async payLoop(rng: () => number, out: HonestPayment[], stopNew: () => boolean, giveUpAt: () => number): Promise<void> {
    for (let n = 1; !stopNew(); n++) {
      // Half below the auto-confirm limit, half above it (those are prompted, and approved).
      const amountMinor = rng() < 0.5 ? between(rng, 100, 4999) : between(rng, 5001, 50_000);
      const p: HonestPayment = { pair: this.spec.index, idempotencyKey: `abuse-${this.spec.index}-${n}-${randomUUID()}`, startMs: Date.now(), paymentId: null, mode: null, status: null, endMs: null, rejected: null, busy: 0 };
      out.push(p);
      await this.#pay(p, amountMinor, giveUpAt);
      await sleep(between(rng, 20, 200));
    }
  }

  async #pay(p: HonestPayment, amountMinor: number, giveUpAt: () => number): Promise<void> {
    const body = { login: this.spec.login, merchantId: MERCHANT.id, amountMinor, currency: CURRENCY, orderRef: p.idempotencyKey, idempotencyKey: p.idempotencyKey };
    // Past capacity the broker answers `busy`: a device waits as told and asks again (same key).
    const reply = await this.#ask("pay_request", body, giveUpAt, () => p.busy++);
    if (reply === null) return;
    if (reply.type !== "payment_accepted") {
      p.rejected = reply.type === "error" ? ((reply.body as { code?: string }).code ?? "?") : reply.type;
      return;
    }
    const paymentId = reply.body.paymentId as string;
    p.paymentId = paymentId;
    p.mode = reply.body.mode as "auto" | "prompt";
    while (Date.now() < giveUpAt()) {
      const r = this.#results.get(paymentId);
      if (r !== undefined) {
        p.status = r.status;
        p.endMs = r.atMs;
        return;
      }
      if (await this.#waitResult(paymentId, Math.min(STATUS_POLL_MS, Math.max(0, giveUpAt() - Date.now())))) continue;
      // Quiet for a while: ask. A final status ends it even if the result itself never comes.
      const state = await this.#ask("payment_status", { paymentId }, () => Math.min(giveUpAt(), Date.now() + ANSWER_MS));
      const status = (state?.body.payment as { status?: string } | undefined)?.status;
      if (state?.type === "payment_state" && status !== undefined && isFinal(status) && !this.#results.has(paymentId)) {
        p.status = status;
        p.endMs = Date.now();
        return;
      }
    }
  }

  /**
   * Sends until answered with anything but "try later", each try a new message id; null at
   * `giveUpAt`. A `busy` answer waits its retryAfterMs (the device library's requestPastBusy)
   * and is told to `onBusy`.
   */
  async #ask(type: string, body: Record<string, unknown>, giveUpAt: () => number, onBusy: () => void = () => {}): Promise<Received | null> {
    for (let attempt = 0; Date.now() < giveUpAt(); attempt++) {
      if (!this.terminal.connected) {
        await sleep(100);
        continue;
      }
      try {
        const reply = await this.terminal.requestPastBusy(type, body, giveUpAt(), onBusy, Math.max(100, Math.min(ANSWER_MS, giveUpAt() - Date.now())));
        if (reply.type === "error" && RETRY_CODES.has((reply.body as { code?: string }).code ?? "")) {
          await sleep(Math.min(100 * (attempt + 1), 1000));
          continue;
        }
        return reply;
      } catch {
        // no answer in time, or not connected: try again
      }
    }
    return null;
  }

  #waitResult(paymentId: string, ms: number): Promise<boolean> {
    if (this.#results.has(paymentId)) return Promise.resolve(true);
    return new Promise((resolve) => {
      const wake = () => {
        if (!this.#results.has(paymentId)) return;
        done(true);
      };
      const done = (got: boolean) => {
        clearTimeout(timer);
        this.#wake.delete(wake);
        resolve(got);
      };
      const timer = setTimeout(() => done(false), ms);
      this.#wake.add(wake);
    });
  }

  async close(): Promise<void> {
    await Promise.all([this.terminal.close().catch(() => {}), this.phone.close().catch(() => {})]);
  }
}

/** A fresh registered device that connects and asks for a pong: the broker still serves. */
export async function probe(url: string, key: DeviceKey, brokerPublicKey: Uint8Array, ms = 10_000): Promise<{ ok: boolean; detail: string }> {
  const d = new Device({ url, key, brokerPublicKey, reconnect: false, connectTimeoutMs: ms });
  d.on("error", () => {});
  let refused = "";
  d.on("refused", (code, message) => (refused = `refused ${code}: ${message}`));
  try {
    const connected = await within(
      d.connect().catch(() => {}),
      ms,
    );
    if (!connected || !d.connected) return { ok: false, detail: refused || `no connection within ${ms} ms` };
    const pong = await d.request("ping", { echo: "still serving?" }, ms).catch(() => null);
    if (pong?.type !== "pong") return { ok: false, detail: pong === null ? `no pong within ${ms} ms` : `answered ${pong.type}` };
    return { ok: true, detail: "connected and answered a ping" };
  } finally {
    await within(d.close().catch(() => {}), 3000);
  }
}
