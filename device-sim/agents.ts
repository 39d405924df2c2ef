/**
 * What a terminal and a phone do around payments, on top of the Device client: the simulator
 * CLI, the demo and the tests all drive payments through these two.
 */
import { randomUUID } from "node:crypto";
import type { Device, Received } from "./device.ts";
import type { DownBody } from "../src/protocol/messages.ts";

/** A payment_prompt as the broker sends it (docs/protocol.md §payment_prompt). */
export type PromptView = DownBody<"payment_prompt">;

/** A payment_result as the broker sends it. */
export type ResultView = DownBody<"payment_result">;

export type PromptAnswer = "approve" | "decline" | "ignore";

/**
 * The phone's payment app: asks `decide` about each prompt, answers with exactly the values it
 * showed (dynamic linking), and executes every task it is given (a task may arrive as the
 * answer to the approval; the Device hands every message to its listeners either way).
 */
export class PhoneAgent {
  readonly #device: Device;
  readonly #decide: (p: PromptView) => Promise<PromptAnswer> | PromptAnswer;
  readonly #onEvent: (line: string, m: Received) => void;
  readonly #answered = new Set<string>();

  constructor(device: Device, decide: (p: PromptView) => Promise<PromptAnswer> | PromptAnswer, onEvent: (line: string, m: Received) => void = () => {}) {
    this.#device = device;
    this.#decide = decide;
    this.#onEvent = onEvent;
    device.on("message", (m) => void this.#handle(m));
  }

  async #handle(m: Received): Promise<void> {
    try {
      if (m.type === "payment_prompt") await this.#prompt(m.body as unknown as PromptView, m);
      else if (m.type === "payment_task") await this.#task(m);
    } catch (err) {
      this.#onEvent(`could not answer ${m.type}: ${(err as Error).message}`, m);
    }
  }

  async #prompt(p: PromptView, m: Received): Promise<void> {
    if (this.#answered.has(p.paymentId)) return;
    this.#answered.add(p.paymentId);
    // No prompt_received: the PUBACK the client sends for the prompt is the receipt the broker tells the terminal about.
    const answer = await this.#decide(p);
    this.#onEvent(`prompt ${p.paymentId}: ${answer}`, m);
    if (answer === "approve") {
      this.#device.send("payment_approve", { paymentId: p.paymentId, amountMinor: p.amountMinor, currency: p.currency, merchantName: p.merchantName, terminalName: p.terminalName });
    } else if (answer === "decline") {
      this.#device.send("payment_decline", { paymentId: p.paymentId });
    }
  }

  async #task(m: Received): Promise<void> {
    const t = m.body as { paymentId: string; amountMinor: number; currency: string; payee: string };
    if (this.#answered.has(`task:${t.paymentId}`)) return;
    this.#answered.add(`task:${t.paymentId}`);
    this.#device.send("payment_execute", { paymentId: t.paymentId, amountMinor: t.amountMinor, currency: t.currency, payee: t.payee });
  }
}

export interface PayRequest {
  readonly login: string;
  readonly merchantId: string;
  readonly amountMinor: number;
  readonly currency: string;
  readonly orderRef: string;
  readonly idempotencyKey?: string;
  readonly description?: string;
}

export type PayOutcome =
  | { readonly kind: "rejected"; readonly code: string; readonly detail: string }
  | { readonly kind: "result"; readonly paymentId: string; readonly result: ResultView; readonly mode: "auto" | "prompt" };

/**
 * The terminal side of one payment: ask, follow the progress, wait for the result. A `busy`
 * answer (the broker past its capacity) is retried after its retry-after, with the same
 * idempotency key, and reported to `onProgress` as the step "busy".
 */
export async function pay(
  terminal: Device,
  req: PayRequest,
  onProgress: (step: string, m: Received) => void = () => {},
  timeoutMs = 300_000,
  retryBusy = true,
): Promise<PayOutcome> {
  const idempotencyKey = req.idempotencyKey ?? randomUUID();
  // Listen before asking: the result of an auto-confirmed payment can follow the reply closely.
  const seen: Received[] = [];
  const collect = (m: Received) => {
    if (m.type === "payment_update" || m.type === "payment_result") seen.push(m);
  };
  terminal.on("message", collect);
  try {
    // A broker past its capacity answers busy: wait as it says and ask again, same idempotency key.
    const reply = await terminal.requestPastBusy("pay_request", { ...req, idempotencyKey }, retryBusy ? Date.now() + timeoutMs : 0, (m) => onProgress("busy", m));
    if (reply.type === "error") {
      const b = reply.body as { code: string; detail: string };
      return { kind: "rejected", code: b.code, detail: b.detail };
    }
    const paymentId = reply.body.paymentId as string;
    const mode = reply.body.mode as "auto" | "prompt";
    onProgress("accepted", reply);
    if (reply.body.status !== "awaiting_confirmation" && reply.body.status !== "executing") {
      // A retried request for a payment that already ended: ask for its outcome.
      const state = await terminal.call("payment_status", { paymentId });
      const p = state.body.payment as Record<string, unknown>;
      return { kind: "result", paymentId, mode, result: { ...(p as object), status: p.status } as unknown as ResultView };
    }
    const mine = (m: Received) => m.body.paymentId === paymentId;
    for (const m of seen.filter(mine)) if (m.type === "payment_update") onProgress(m.body.step as string, m);
    const early = seen.find((m) => m.type === "payment_result" && mine(m));
    if (early) return { kind: "result", paymentId, mode, result: early.body as unknown as ResultView };
    const onUpdate = (m: Received) => {
      if (m.type === "payment_update" && mine(m)) onProgress(m.body.step as string, m);
    };
    terminal.on("message", onUpdate);
    try {
      const result = await terminal.next("payment_result", timeoutMs, mine);
      return { kind: "result", paymentId, mode, result: result.body as unknown as ResultView };
    } finally {
      terminal.off("message", onUpdate);
    }
  } finally {
    terminal.off("message", collect);
  }
}
