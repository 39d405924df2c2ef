/**
 * Scenarios: a story of terminals, phones, users and merchants, told as steps, and a runner
 * that plays it against a broker over real MQTT and says, step by step, whether each outcome
 * was the expected one. `npm run demo` is the scenario in scenarios/demo.json.
 *
 * A scenario file is JSON:
 *
 *   {
 *     "name": "demo",
 *     "description": "…",
 *     "broker": { "promptTtlMs": 1500 },          // for a broker the demo starts itself
 *     "merchants": [{ "id": "coffee-corner", "name": "Coffee Corner" }],
 *     "users": [{ "id": "alice", "funds": [{ "amount": "500.00", "currency": "CNY" }] }],
 *     "terminals": [{ "id": "tv", "name": "Living room TV", "serial": "TV9-{run}", "login": "alice.tv-{run}" }],
 *     "phones": [{ "id": "alice-phone", "name": "Alice's phone", "user": "alice" }],
 *     "steps": [
 *       { "do": "bind", "terminal": "tv", "phone": "alice-phone",
 *         "limits": { "currency": "CNY", "autoConfirmMax": "50.00", "autoConfirmDaily": "200.00", "perPaymentMax": "300.00" } },
 *       { "do": "pay", "terminal": "tv", "merchant": "coffee-corner", "amount": "12.80", "currency": "CNY",
 *         "mode": "auto", "expect": "completed" },
 *       { "do": "pay", "as": "cake", "terminal": "tv", "merchant": "coffee-corner", "amount": "66.00",
 *         "currency": "CNY", "answer": "ignore", "wait": false, "expect": "cancelled" },
 *       { "do": "retry", "payment": "cake" },
 *       { "do": "cancel", "payment": "cake" },
 *       { "do": "wait", "payment": "cake" },
 *       { "do": "unbind", "terminal": "tv", "by": "phone" },
 *       { "do": "pay", "terminal": "tv", "merchant": "coffee-corner", "amount": "1.00", "currency": "CNY",
 *         "expect": "rejected:not_bound" }
 *     ]
 *   }
 *
 * Amounts are decimal strings in their currency ("12.80"), never floats. `{run}` in a login or a
 * serial becomes a random suffix for this run, so a reader can search the database for it and
 * find it is not stored in clear. A login defaults to the terminal's `login`.
 *
 * Expected outcomes: completed | declined | expired | cancelled | failed:<reason> |
 * rejected:<error code> (docs/protocol.md §Errors); a retry expects `same_payment` (the same
 * payment id and no second prompt) or a rejection. A pay step's `answer` is what the phone's user
 * does with a prompt (approve, decline, ignore; default approve); `wait: false` moves on once the
 * payment is accepted (and prompted), so a later step can cancel or retry it; `wait` waits for
 * it. The runner ends with a ledger step: every wallet and merchant moved by exactly the
 * payments expected to complete, and each currency's balances sum to zero.
 */
import { STEP_TEXT, acceptedText, codeBox, limitsText } from "./present.ts";
import { randomBytes, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { z } from "zod";
import { toBase64 } from "../src/crypto/encoding.ts";
import type { Keyring } from "../src/crypto/keyring.ts";
import { formatAmount, isCurrency, parseAmount, CURRENCY_EXPONENTS } from "../src/core/money.ts";
import { ERROR_CODES } from "../src/protocol/errors.ts";
import { registerDevice, USER_ID_RE } from "../src/service/devices.ts";
import { addMerchant, creditWallet, MERCHANT_ID_RE, walletBalance } from "../src/service/ledger.ts";
import type { Db } from "../src/store/db.ts";
import { LedgerRepo } from "../src/store/ledger.ts";
import { PhoneAgent, pay, type PayOutcome, type PromptAnswer } from "./agents.ts";
import { RecordingDevice, type Device, type DeviceOptions, type Received } from "./device.ts";
import { newDeviceKey } from "./keyfile.ts";

// ─── The file format ──────────────────────────────────────────────────────────────────────

const ID_RE = /^[a-z0-9][a-z0-9_-]{0,31}$/;
const LABEL = "an id is 1-32 lowercase letters, digits, - and _ (e.g. living-room-tv)";
const PLAIN = /^[^\p{Cc}]+$/u;

const id = () => z.string({ error: "expected an id (a string)" }).regex(ID_RE, LABEL);
const name = (max: number) =>
  z.string({ error: "expected a name (a string)" }).trim().min(1, "must not be empty").max(max, `at most ${max} characters`).regex(PLAIN, "no control characters");
const amount = () => z.string({ error: 'write an amount as a string of its currency, e.g. "12.80"' });
const currency = () =>
  z.string({ error: 'expected an ISO 4217 currency code, e.g. "CNY"' }).refine(isCurrency, { message: `not a supported currency; one of ${Object.keys(CURRENCY_EXPONENTS).join(", ")}` });
const ms = (min: number, max: number) => z.number({ error: "expected a number of milliseconds" }).int().min(min).max(max);

const ERROR_CODE_NAMES = Object.keys(ERROR_CODES);
const PAY_OUTCOMES = ["completed", "declined", "expired", "cancelled"] as const;

function outcomeProblem(value: string, plain: readonly string[]): string | null {
  if (plain.includes(value)) return null;
  const [head, tail] = value.split(/:(.*)/s) as [string, string | undefined];
  if (head === "rejected") {
    if (tail !== undefined && ERROR_CODE_NAMES.includes(tail)) return null;
    return `unknown error code "${tail ?? ""}" after rejected: (the codes are in src/protocol/errors.ts, e.g. rejected:over_limit)`;
  }
  if (head === "failed" && plain.includes("completed")) {
    if (tail !== undefined && /^[a-z_]+$/.test(tail)) return null;
    return 'a failure names its reason, e.g. "failed:insufficient_funds"';
  }
  return `expected one of ${[...plain, ...(plain.includes("completed") ? ["failed:<reason>"] : []), "rejected:<error code>"].join(", ")}; got "${value}"`;
}

const outcome = (plain: readonly string[]) =>
  z.string({ error: "expected an outcome (a string)" }).superRefine((v, ctx) => {
    const problem = outcomeProblem(v, plain);
    if (problem !== null) ctx.addIssue({ code: "custom", message: problem });
  });

const limitsSchema = z.strictObject({
  currency: currency(),
  autoConfirmMax: amount(),
  autoConfirmDaily: amount(),
  perPaymentMax: amount(),
});

const stepName = name(120).optional();

const bindStep = z.strictObject({
  do: z.literal("bind"),
  name: stepName,
  terminal: id(),
  phone: id(),
  login: name(128).optional(),
  limits: limitsSchema,
  expect: outcome(["bound"]).default("bound"),
});

const payStep = z.strictObject({
  do: z.literal("pay"),
  name: stepName,
  /** A label later steps (cancel, retry, wait) use for this payment. */
  as: id().optional(),
  terminal: id(),
  login: name(128).optional(),
  merchant: z.string({ error: "expected a merchant id" }).regex(MERCHANT_ID_RE, "a merchant id is lowercase letters, digits and . _ - (e.g. coffee-corner)"),
  amount: amount(),
  currency: currency(),
  orderRef: name(64).optional(),
  description: name(140).optional(),
  answer: z.enum(["approve", "decline", "ignore"], { error: "the phone's answer is approve, decline or ignore" }).default("approve"),
  /** How long the phone's user looks at the prompt before answering. */
  answerAfterMs: ms(0, 60_000).default(0),
  mode: z.enum(["auto", "prompt"], { error: "mode is auto or prompt" }).optional(),
  wait: z.boolean({ error: "wait is true or false" }).default(true),
  expect: outcome(PAY_OUTCOMES),
});

const cancelStep = z.strictObject({ do: z.literal("cancel"), name: stepName, payment: id(), expect: outcome(["cancelled"]).default("cancelled") });

const retryStep = z.strictObject({
  do: z.literal("retry"),
  name: stepName,
  payment: id(),
  /** Fields to change in the retried request: the broker must then refuse it (idempotency_conflict). */
  change: z.strictObject({ amount: amount().optional(), orderRef: name(64).optional(), description: name(140).optional() }).optional(),
  expect: outcome(["same_payment"]).default("same_payment"),
});

const unbindStep = z.strictObject({
  do: z.literal("unbind"),
  name: stepName,
  terminal: id(),
  login: name(128).optional(),
  by: z.enum(["phone", "terminal"], { error: "by is phone or terminal" }).default("phone"),
  expect: outcome(["unbound"]).default("unbound"),
});

const waitStep = z.strictObject({ do: z.literal("wait"), name: stepName, payment: id() });

const stepSchema = z.discriminatedUnion("do", [bindStep, payStep, cancelStep, retryStep, unbindStep, waitStep], {
  error: "each step needs \"do\": bind, pay, cancel, retry, unbind or wait",
});

export const scenarioSchema = z.strictObject({
  $schema: z.string().optional(),
  name: name(64),
  description: z.string().max(2000).optional(),
  /** Settings for a broker the demo starts itself; a running broker (--url) keeps its own. */
  broker: z
    .strictObject({
      promptTtlMs: ms(100, 3_600_000).optional(),
      taskTtlMs: ms(100, 3_600_000).optional(),
      pairingTtlMs: ms(1000, 3_600_000).optional(),
      maxConsecutiveAuto: z.number().int().min(0).max(1000).optional(),
    })
    .default({}),
  merchants: z.array(z.strictObject({ id: z.string().regex(MERCHANT_ID_RE, "a merchant id is lowercase letters, digits and . _ - (e.g. coffee-corner)"), name: name(64) })).default([]),
  users: z
    .array(
      z.strictObject({
        id: z.string({ error: "expected a user id" }).regex(USER_ID_RE, "a user id is 1-64 letters, digits and . _ @ + -"),
        funds: z.array(z.strictObject({ amount: amount(), currency: currency() })).default([]),
      }),
    )
    .default([]),
  terminals: z
    .array(z.strictObject({ id: id(), name: name(64), model: name(64).default("Handoff simulator"), serial: name(64), login: name(128) }))
    .min(1, "a scenario needs at least one terminal"),
  phones: z.array(z.strictObject({ id: id(), name: name(64), user: z.string({ error: "expected the phone's user id" }) })).min(1, "a scenario needs at least one phone"),
  steps: z.array(stepSchema).min(1, "a scenario needs at least one step"),
});

export type Scenario = z.output<typeof scenarioSchema>;
export type Step = Scenario["steps"][number];
type PayStep = z.output<typeof payStep>;

export class ScenarioError extends Error {}

type Path = readonly PropertyKey[];

function pathText(path: Path, raw: unknown): string {
  let out = "";
  let node: unknown = raw;
  for (const p of path) {
    out += typeof p === "number" ? `[${p}]` : out === "" ? String(p) : `.${String(p)}`;
    node = node !== null && typeof node === "object" ? (node as Record<PropertyKey, unknown>)[p] : undefined;
    // A step is easier to find by its name than by its index.
    if (typeof p === "number" && path[0] === "steps" && out === `steps[${p}]`) {
      const stepName = node !== null && typeof node === "object" ? (node as { name?: unknown }).name : undefined;
      if (typeof stepName === "string") out += ` ("${stepName}")`;
    }
  }
  return out === "" ? "(top level)" : out;
}

/** Validates a parsed scenario; throws ScenarioError whose lines each name the bad field. */
export function parseScenario(raw: unknown, source = "scenario"): Scenario {
  const parsed = scenarioSchema.safeParse(raw);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => {
      if (i.code === "unrecognized_keys") return `${pathText(i.path, raw)}: unknown field${i.keys.length > 1 ? "s" : ""} ${i.keys.map((k) => `"${k}"`).join(", ")}`;
      return `${pathText(i.path, raw)}: ${i.message}`;
    });
    throw new ScenarioError(`${source} is not a valid scenario:\n  ${lines.join("\n  ")}`);
  }
  const problems = crossCheck(parsed.data).map((p) => `${pathText(p.path, raw)}: ${p.message}`);
  if (problems.length > 0) throw new ScenarioError(`${source} is not a valid scenario:\n  ${problems.join("\n  ")}`);
  return parsed.data;
}

export function loadScenario(file: string): Scenario {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new ScenarioError(`cannot read scenario ${file}: ${(err as Error).message}`, { cause: err });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new ScenarioError(`${file} is not JSON: ${(err as Error).message}`, { cause: err });
  }
  return parseScenario(raw, file);
}

/** What the schema cannot see alone: references between sections, amounts in their currency. */
function crossCheck(s: Scenario): { path: Path; message: string }[] {
  const out: { path: Path; message: string }[] = [];
  const amountOk = (text: string, cur: string, path: Path, positive = true) => {
    const minor = parseAmount(text, cur);
    if (minor === null) out.push({ path, message: `"${text}" is not an amount in ${cur} (${CURRENCY_EXPONENTS[cur]} decimals, e.g. "${formatAmount(1280, cur).replace(/[^\d.]/g, "")}")` });
    else if (positive && minor === 0) out.push({ path, message: "must be more than zero" });
  };
  const unique = (items: readonly { id: string }[], section: string) => {
    const seen = new Set<string>();
    items.forEach((item, i) => {
      if (seen.has(item.id)) out.push({ path: [section, i, "id"], message: `"${item.id}" is used twice in ${section}` });
      seen.add(item.id);
    });
  };
  unique(s.merchants, "merchants");
  unique(s.users, "users");
  unique([...s.terminals, ...s.phones], "terminals");
  s.users.forEach((u, i) => u.funds.forEach((f, j) => amountOk(f.amount, f.currency, ["users", i, "funds", j, "amount"])));
  const users = new Set(s.users.map((u) => u.id));
  s.phones.forEach((p, i) => {
    if (!users.has(p.user)) out.push({ path: ["phones", i, "user"], message: `no user "${p.user}" in users` });
  });
  const terminals = new Set(s.terminals.map((t) => t.id));
  const phones = new Set(s.phones.map((p) => p.id));
  const merchants = new Set(s.merchants.map((m) => m.id));
  const labels = new Map<string, PayStep>();
  const ref = (set: Set<string>, value: string, path: Path, what: string) => {
    if (!set.has(value)) out.push({ path, message: `no ${what} "${value}" (known: ${[...set].join(", ") || "none"})` });
  };
  s.steps.forEach((step, i) => {
    const at = (field: string): Path => ["steps", i, field];
    switch (step.do) {
      case "bind":
        ref(terminals, step.terminal, at("terminal"), "terminal");
        ref(phones, step.phone, at("phone"), "phone");
        for (const f of ["autoConfirmMax", "autoConfirmDaily", "perPaymentMax"] as const) amountOk(step.limits[f], step.limits.currency, ["steps", i, "limits", f], false);
        break;
      case "pay":
        ref(terminals, step.terminal, at("terminal"), "terminal");
        // A merchant the scenario does not add is allowed only to show the refusal.
        if (!merchants.has(step.merchant) && step.expect !== "rejected:unknown_merchant") ref(merchants, step.merchant, at("merchant"), "merchant");
        // Zero and other odd amounts are how a scenario shows invalid_amount.
        if (step.expect !== "rejected:invalid_amount") amountOk(step.amount, step.currency, at("amount"));
        if (step.mode !== undefined && step.expect.startsWith("rejected:")) out.push({ path: at("mode"), message: "a rejected request has no mode; leave mode out" });
        if (step.as !== undefined) {
          if (labels.has(step.as)) out.push({ path: at("as"), message: `the label "${step.as}" is already used by an earlier step` });
          labels.set(step.as, step);
        }
        if (!step.wait && step.as === undefined) out.push({ path: at("as"), message: 'a payment with "wait": false needs "as": a label to wait for it by' });
        break;
      case "cancel":
      case "retry":
      case "wait": {
        const target = labels.get(step.payment);
        if (target === undefined) out.push({ path: at("payment"), message: `no earlier pay step has "as": "${step.payment}"` });
        else if (step.do === "retry" && step.change?.amount !== undefined) amountOk(step.change.amount, target.currency, ["steps", i, "change", "amount"]);
        if (step.do === "retry" && step.change !== undefined && step.expect === "same_payment") {
          out.push({ path: at("expect"), message: 'a retry with other fields under the same key is refused: expect "rejected:idempotency_conflict"' });
        }
        break;
      }
      case "unbind":
        ref(terminals, step.terminal, at("terminal"), "terminal");
        break;
    }
  });
  return out;
}

// ─── Running one ───────────────────────────────────────────────────────────────────────────

/** Where a scenario runs: a broker's address and key, and its database for the operator's part. */
export interface ScenarioTarget {
  /** The broker's URL, or the URLs of the nodes of one cluster (tried in turn). */
  readonly url: string | readonly string[];
  readonly brokerPublicKey: Uint8Array;
  /** mqtts:// and wss://: what the devices trust of the broker's TLS certificate. */
  readonly trust?: Pick<DeviceOptions, "ca" | "fingerprint256">;
  /** The broker's database: devices, merchants and funds are written here, as `npm run admin` does. */
  readonly db: Db;
  readonly keyring: Keyring;
  /**
   * A prompt expected to expire is waited for only if its deadline is this close; otherwise the
   * step is skipped (the terminal cancels the payment) and the report says why.
   */
  readonly maxPromptWaitMs: number;
  /** Time zero for the events' `t`. */
  readonly startMs?: number;
}

export type Column = "terminal" | "phone";

export type ScenarioEvent =
  | { readonly event: "setup"; readonly t: number; readonly text: string }
  | { readonly event: "step"; readonly t: number; readonly index: number; readonly name: string; readonly expected: string | null; readonly background?: boolean }
  | {
      readonly event: "message";
      readonly t: number;
      readonly column: Column;
      readonly device: string;
      readonly deviceName: string;
      readonly dir: "up" | "down";
      readonly type: string;
      readonly text: string;
      readonly body: Record<string, unknown>;
      /** A broker message that answers one of this device's own (it carries `re`): that message's type. Absent when pushed. */
      readonly answers?: string;
    }
  | { readonly event: "note"; readonly t: number; readonly column: Column; readonly device: string; readonly deviceName: string; readonly text: string }
  | { readonly event: "step_end"; readonly t: number; readonly index: number; readonly name: string; readonly expected: string; readonly actual: string; readonly ok: boolean; readonly skipped?: string };

export interface StepReport {
  readonly name: string;
  readonly expected: string;
  actual: string;
  ok: boolean;
  /** Why the step did not run to its outcome (and so neither passed nor failed). */
  skipped?: string;
}

export interface Balances {
  /** user id → currency → minor units */
  readonly wallets: Record<string, Record<string, number>>;
  /** merchant id → currency → minor units */
  readonly merchants: Record<string, Record<string, number>>;
  /** currency → minor units (negative: what was paid in) */
  readonly funding: Record<string, number>;
  /** currency → sum of every account's balance: 0 in a double-entry ledger */
  readonly sums: Record<string, number>;
}

export interface ScenarioReport {
  readonly ok: boolean;
  readonly scenario: string;
  readonly steps: readonly StepReport[];
  readonly firstFailure: { readonly index: number; readonly name: string; readonly expected: string; readonly actual: string } | null;
  readonly skipped: readonly { readonly name: string; readonly reason: string }[];
  readonly balances: Balances;
  readonly logins: readonly string[];
  readonly terminalSerials: readonly string[];
  readonly elapsedMs: number;
}

interface Deferred<T> {
  readonly promise: Promise<T>;
  resolve(value: T): void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/** A map whose entries are made on first use; `values()` lists those made so far. */
function lazyMap<T>(make: () => T): ((key: string) => T) & { values(): IterableIterator<T> } {
  const map = new Map<string, T>();
  const get = (key: string) => {
    let v = map.get(key);
    if (v === undefined) map.set(key, (v = make()));
    return v;
  };
  return Object.assign(get, { values: () => map.values() });
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms);
    }),
  ]);
}

/** A Device that tells the runner what it sends, so the narration shows both directions. */
class NarratedDevice extends RecordingDevice {
  constructor(
    options: DeviceOptions,
    private readonly onSend: (type: string, body: Record<string, unknown>) => void,
  ) {
    super(options);
  }

  override send(type: string, body: Record<string, unknown>, overrides: Parameters<Device["send"]>[2] = {}): string {
    this.onSend(type, body);
    return super.send(type, body, overrides);
  }
}

interface Actor {
  readonly id: string;
  readonly name: string;
  readonly column: Column;
  readonly device: NarratedDevice;
}

interface TerminalActor extends Actor {
  readonly serial: string;
  readonly login: string;
  readonly model: string;
}

interface PaymentRun {
  readonly step: PayStep;
  readonly terminal: TerminalActor;
  readonly request: { login: string; merchantId: string; amountMinor: number; currency: string; orderRef: string; idempotencyKey: string; description?: string };
  /** The payment id and mode, once accepted; null if it was refused or never answered. */
  readonly accepted: Promise<{ paymentId: string; mode: "auto" | "prompt" } | null>;
  readonly done: Promise<void>;
  /** Cancels it if it is still open: the run stopped at an unexpected outcome elsewhere. */
  abandon(): Promise<void>;
}


const short = (v: unknown) => (typeof v === "string" && v.length > 12 ? `${v.slice(0, 10)}…` : String(v));
const money = (b: Record<string, unknown>) => formatAmount(b.amountMinor as number, b.currency as string);



/** The outcome of a pay step, in the notation scenarios expect. */
export function payOutcomeText(o: PayOutcome, withMode: boolean): string {
  if (o.kind === "rejected") return `rejected:${o.code}`;
  const r = o.result;
  const base = r.status === "failed" ? `failed:${r.reason ?? "unknown"}` : r.status;
  return withMode ? `${base} (${o.mode})` : base;
}

function expectedPayText(step: PayStep): string {
  return step.mode === undefined ? step.expect : `${step.expect} (${step.mode})`;
}

function stepTitle(step: Step, s: Scenario): string {
  if (step.name !== undefined) return step.name;
  const nameOf = (list: readonly { id: string; name: string }[], key: string) => list.find((x) => x.id === key)?.name ?? key;
  switch (step.do) {
    case "bind":
      return `bind ${nameOf(s.terminals, step.terminal)} to ${nameOf(s.phones, step.phone)}`;
    case "pay": {
      const minor = parseAmount(step.amount, step.currency);
      const what = minor === null ? `${step.amount} ${step.currency}` : formatAmount(minor, step.currency);
      return `pay ${what} at ${nameOf(s.merchants, step.merchant)} from ${nameOf(s.terminals, step.terminal)}${step.mode === "auto" ? "" : `, the phone ${step.answer === "approve" ? "approves" : step.answer === "decline" ? "declines" : "ignores the prompt"}`}`;
    }
    case "cancel":
      return `the terminal cancels ${step.payment}`;
    case "retry":
      return step.change === undefined ? `${step.payment}: retry with the same idempotency key` : `${step.payment}: same idempotency key, other fields`;
    case "unbind":
      return `unbind ${nameOf(s.terminals, step.terminal)} (by the ${step.by})`;
    case "wait":
      return `wait for ${step.payment}`;
  }
}

const RETRY_SAME = "same payment, no second prompt";

/** How long a retry watches for a second prompt that must not come. */
const SECOND_PROMPT_WATCH_MS = 250;

/**
 * Plays a scenario: registers its devices and merchants, funds its users, connects every device,
 * runs the steps, checks the ledger, and closes the devices. Stops at the first unexpected
 * outcome (the remaining steps are reported "not run"). Never throws for an outcome; throws only
 * when the world itself is broken (the broker cannot be reached).
 */
export async function runScenario(s: Scenario, target: ScenarioTarget, onEvent: (e: ScenarioEvent) => void = () => {}): Promise<ScenarioReport> {
  const startMs = target.startMs ?? Date.now();
  const t = () => Date.now() - startMs;
  const run = randomBytes(5).toString("hex");
  const fill = (text: string) => text.replaceAll("{run}", run);
  // Order references and idempotency keys are stored in clear: they get their own tag, so the
  // run suffix of logins and serials can be searched for in the database and not be found.
  const orderTag = randomBytes(3).toString("hex");
  const ledger = new LedgerRepo(target.db);
  const actors: Actor[] = [];
  const namesById = new Map<string, string>();
  const setup = (text: string) => onEvent({ event: "setup", t: t(), text });

  const scope = ledgerScope(s);
  const before = balances(s, target, ledger, scope);
  // What the phones hear, by payment id; filled by whichever comes first, the message or the wait.
  const prompts = lazyMap(() => ({ count: 0, arrived: deferred<number>() }));
  const phoneResults = lazyMap(() => deferred<void>());
  const answers = lazyMap(() => deferred<{ answer: PromptAnswer; afterMs: number }>());

  const terminals = new Map<string, TerminalActor>();
  const phones = new Map<string, Actor>();
  // Once the devices close, what they still hear or do is no longer part of the story.
  let closing = false;
  const deviceEvent = (e: ScenarioEvent) => {
    if (!closing) onEvent(e);
  };
  const note = (a: Actor, text: string) => deviceEvent({ event: "note", t: t(), column: a.column, device: a.id, deviceName: a.name, text });

  // The operator's part, as `npm run admin` would do it: devices first (they must connect before
  // anything is spent on an unreachable broker), then merchants and funds.
  const connectActor = (column: Column, spec: { id: string; name: string }, userId?: string) => {
    const key = newDeviceKey(column, spec.name);
    const res = registerDevice(target.db, target.keyring, { kind: column, name: spec.name, publicKey: toBase64(key.pair.publicKey), ...(userId ? { userId } : {}) }, Date.now());
    if (!res.ok) throw new Error(`${column} ${spec.id}: ${res.error}`);
    namesById.set(key.deviceId, spec.name);
    const device = new NarratedDevice({ url: target.url, ...target.trust, key, brokerPublicKey: target.brokerPublicKey, reconnect: false }, (type, body) => {
      const text = describeUp(type, body);
      if (text !== null) deviceEvent({ event: "message", t: t(), column, device: spec.id, deviceName: spec.name, dir: "up", type, text, body });
    });
    // A terminal told the same payment id again (a retried request) hears of a payment it knows.
    const acceptedIds = new Set<string>();
    device.on("message", (m) => {
      const again = m.type === "payment_accepted" && acceptedIds.has(m.body.paymentId as string);
      if (m.type === "payment_accepted") acceptedIds.add(m.body.paymentId as string);
      if (m.type === "payment_result" && column === "phone") phoneResults(m.body.paymentId as string).resolve();
      if (m.type === "payment_prompt") {
        const e = prompts(m.body.paymentId as string);
        e.count++;
        e.arrived.resolve(m.body.deadlineMs as number);
      }
      const text = describeDown(column, m, namesById, again);
      const answers = m.re === undefined ? {} : { answers: device.sentTypes.get(m.re) ?? "an unknown message" };
      if (text !== null) deviceEvent({ event: "message", t: t(), column, device: spec.id, deviceName: spec.name, dir: "down", type: m.type, text, body: m.body, ...answers });
    });
    const actor: Actor = { id: spec.id, name: spec.name, column, device };
    device.on("rejected", (reason) => note(actor, `dropped a broker message: ${reason}`));
    device.on("error", (err) => note(actor, `connection error: ${err.message}`));
    device.on("refused", (code, text) => note(actor, `the broker refused the connection (CONNACK ${code}): ${text}`));
    actors.push(actor);
    setup(`${column} ${spec.name} registered as ${key.deviceId}${userId ? ` (user ${userId})` : ""}`);
    return actor;
  };

  const reports: (StepReport | null)[] = s.steps.map(() => null);
  const skipped: { name: string; reason: string }[] = [];
  let firstFailure: ScenarioReport["firstFailure"] = null;
  const bindings = new Map<string, { agreementId: string; phone: Actor }>();
  const payments = new Map<string, PaymentRun>();
  const pending: PaymentRun[] = [];
  const paidOk: { userId: string | null; merchantId: string; currency: string; amountMinor: number }[] = [];

  const finish = (index: number, name: string, expected: string, actual: string, skip?: string) => {
    const ok = skip !== undefined || expected === actual;
    reports[index] = { name, expected, actual, ok, ...(skip !== undefined ? { skipped: skip } : {}) };
    if (skip !== undefined) skipped.push({ name, reason: skip });
    if (!ok && firstFailure === null) firstFailure = { index, name, expected, actual };
    onEvent({ event: "step_end", t: t(), index, name, expected, actual, ok, ...(skip !== undefined ? { skipped: skip } : {}) });
  };

  try {
    for (const spec of s.terminals) {
      const a = connectActor("terminal", spec);
      terminals.set(spec.id, { ...a, serial: fill(spec.serial), login: fill(spec.login), model: spec.model });
    }
    for (const spec of s.phones) {
      const a = connectActor("phone", spec, spec.user);
      phones.set(spec.id, a);
      new PhoneAgent(
        a.device,
        async (p) => {
          const { answer, afterMs } = await withTimeout(answers(p.paymentId).promise, 10_000, "answer").catch(() => ({ answer: "ignore" as const, afterMs: 0 }));
          if (afterMs > 0) await sleep(afterMs);
          if (closing) return "ignore";
          if (answer === "ignore") note(a, "(the user leaves the prompt unanswered)");
          return answer;
        },
        (line) => {
          if (line.startsWith("could not")) note(a, line);
        },
      );
    }
    await Promise.all(actors.map((a) => a.device.connect()));
    setup(`${actors.length} devices connected to ${[...new Set(actors.map((a) => a.device.currentUrl))].join(", ")}`);
    for (const m of s.merchants) {
      const existing = ledger.merchant(m.id);
      if (existing === null) {
        const res = addMerchant(target.db, m, Date.now());
        if (!res.ok) throw new Error(`merchant ${m.id}: ${res.error}`);
        setup(`merchant ${m.name} (${m.id}) added`);
      } else setup(`merchant ${existing.name} (${m.id}) already exists`);
    }
    for (const u of s.users) {
      for (const f of u.funds) {
        const res = creditWallet(target.db, target.keyring, { userId: u.id, amountMinor: parseAmount(f.amount, f.currency)!, currency: f.currency }, Date.now());
        if (!res.ok) throw new Error(`funds for ${u.id}: ${res.error}`);
        setup(`wallet of ${u.id} credited ${formatAmount(res.transfer.amountMinor, f.currency)}: balance ${formatAmount(res.balanceMinor, f.currency)}`);
      }
    }

    const payTimeoutMs = Math.max(20_000, target.maxPromptWaitMs + 10_000);

    const startPay = (step: PayStep, index: number, title: string): PaymentRun => {
      const terminal = terminals.get(step.terminal)!;
      const login = step.login !== undefined ? fill(step.login) : terminal.login;
      const request = {
        login,
        merchantId: step.merchant,
        // An unparsable amount is how a scenario shows invalid_amount: send it as the number it reads as.
        amountMinor: parseAmount(step.amount, step.currency) ?? Number(step.amount),
        currency: step.currency,
        orderRef: step.orderRef ?? `${s.name.replace(/[^A-Za-z0-9]/g, "").slice(0, 20) || "order"}-${orderTag}-${index + 1}`,
        idempotencyKey: `${orderTag}-${index + 1}-${randomUUID().slice(0, 8)}`,
        ...(step.description !== undefined ? { description: step.description } : {}),
      };
      // The user whose wallet pays: the one whose phone is bound to this terminal and login now.
      const binding = bindings.get(`${step.terminal}/${login}`);
      const payer = binding === undefined ? null : (s.phones.find((p) => p.id === binding.phone.id)?.user ?? null);
      const accepted = deferred<{ paymentId: string; mode: "auto" | "prompt" } | null>();
      let skipReason: string | undefined;
      let settled = false;
      let abandoned = false;
      const outcome = pay(
        terminal.device,
        request,
        (progress, m) => {
          if (progress !== "accepted") return;
          const paymentId = m.body.paymentId as string;
          answers(paymentId).resolve({ answer: step.answer, afterMs: step.answerAfterMs });
          accepted.resolve({ paymentId, mode: m.body.mode as "auto" | "prompt" });
        },
        payTimeoutMs,
      );
      void outcome.then(
        () => accepted.resolve(null),
        () => accepted.resolve(null),
      );
      const expected = expectedPayText(step);
      const done = (async () => {
        // A prompt left to expire is waited for only when its deadline is near (see maxPromptWaitMs).
        if (step.expect === "expired" && step.answer === "ignore") {
          const a = await accepted.promise;
          if (a !== null && a.mode === "prompt") {
            const deadlineMs = await withTimeout(prompts(a.paymentId).arrived.promise, 10_000, "prompt").catch(() => null);
            const leftMs = deadlineMs === null ? 0 : deadlineMs - Date.now();
            if (leftMs > target.maxPromptWaitMs) {
              skipReason = `the broker's prompt lives ${Math.round(leftMs / 1000)} s, longer than the ${Math.round(target.maxPromptWaitMs / 1000)} s this run waits (--max-wait-ms); start that broker with --prompt-ttl-ms 1500 to see the expiry. The terminal cancels the payment instead.`;
              note(terminal, "(the prompt would take too long to expire: cancelling it instead)");
              await terminal.device.request("payment_cancel", { paymentId: a.paymentId }).catch(() => undefined);
            }
          }
        }
        let actual: string;
        try {
          const o = await outcome;
          actual = payOutcomeText(o, step.mode !== undefined);
          // The phone hears the result too; let its line come before the step's verdict.
          if (o.kind === "result") await withTimeout(phoneResults(o.paymentId).promise, 1000, "result on the phone").catch(() => undefined);
        } catch (err) {
          actual = `error: ${(err as Error).message}`;
        }
        if (step.expect === "completed") paidOk.push({ userId: payer, merchantId: step.merchant, currency: step.currency, amountMinor: request.amountMinor });
        settled = true;
        if (abandoned) actual = `not finished: cancelled when the run stopped (${actual})`;
        finish(index, title, expected, skipReason !== undefined ? "skipped" : actual, skipReason);
      })();
      const abandon = async () => {
        if (settled) return;
        abandoned = true;
        const a = await accepted.promise;
        if (a !== null && !settled) await terminal.device.request("payment_cancel", { paymentId: a.paymentId }, 5000).catch(() => undefined);
      };
      const r: PaymentRun = { step, terminal, request, accepted: accepted.promise, done, abandon };
      if (step.as !== undefined) payments.set(step.as, r);
      return r;
    };

    for (let index = 0; index < s.steps.length; index++) {
      if (firstFailure !== null) break;
      const step = s.steps[index]!;
      const title = stepTitle(step, s);
      if (step.do === "wait") {
        onEvent({ event: "step", t: t(), index, name: title, expected: null });
        await payments.get(step.payment)!.done;
        continue;
      }
      if (step.do === "pay") {
        onEvent({ event: "step", t: t(), index, name: title, expected: expectedPayText(step), ...(step.wait ? {} : { background: true }) });
        const r = startPay(step, index, title);
        if (step.wait) await r.done;
        else {
          pending.push(r);
          // Move on once the payment is accepted and, if it asks the phone, the phone shows it.
          const a = await withTimeout(r.accepted, 15_000, "payment_accepted").catch(() => null);
          if (a?.mode === "prompt") await withTimeout(prompts(a.paymentId).arrived.promise, 10_000, "prompt").catch(() => undefined);
        }
        continue;
      }
      onEvent({ event: "step", t: t(), index, name: title, expected: step.do === "retry" && step.expect === "same_payment" ? RETRY_SAME : step.expect });
      let actual: string;
      let expected: string = step.expect;
      try {
        switch (step.do) {
          case "bind":
            actual = await bind(step);
            break;
          case "cancel":
            actual = await cancel(step);
            break;
          case "retry":
            if (step.expect === "same_payment") expected = RETRY_SAME;
            actual = await retry(step);
            break;
          case "unbind":
            actual = await unbind(step);
            break;
        }
      } catch (err) {
        actual = `error: ${(err as Error).message}`;
      }
      finish(index, title, expected, actual);
    }

    if (firstFailure !== null) {
      // The story stopped: payments left open in the background are cancelled, not waited out.
      await Promise.all(pending.map((r) => r.abandon()));
    }
    // Payments still running in the background end (or time out) before the ledger is read.
    await Promise.all(pending.map((r) => r.done));
  } finally {
    closing = true;
    for (const d of answers.values()) d.resolve({ answer: "ignore", afterMs: 0 });
    await Promise.all(actors.map((a) => a.device.close().catch(() => undefined)));
  }

  // The ledger step: wallets and merchants moved by exactly the payments expected to complete.
  const after = balances(s, target, ledger, scope);
  const ledgerIndex = s.steps.length;
  const ledgerName = "ledger: every wallet and merchant moved by exactly the completed payments; each currency sums to 0";
  const expectedDelta = new Map<string, number>();
  const add = (k: string, v: number) => expectedDelta.set(k, (expectedDelta.get(k) ?? 0) + v);
  for (const u of s.users) for (const f of u.funds) add(`wallet ${u.id} ${f.currency}`, parseAmount(f.amount, f.currency)!);
  for (const p of paidOk) {
    if (p.userId !== null) add(`wallet ${p.userId} ${p.currency}`, -p.amountMinor);
    add(`merchant ${p.merchantId} ${p.currency}`, p.amountMinor);
  }
  const deltaText = (delta: (k: string) => number, sums: Record<string, number>) => {
    const parts: string[] = [];
    for (const c of scope.currencies) parts.push(`${c} sum ${formatAmount(sums[c] ?? 0, c)}`);
    for (const [user, cs] of scope.wallets) for (const c of cs) parts.push(`${user} ${signed(delta(`wallet ${user} ${c}`), c)}`);
    for (const [merchant, cs] of scope.merchants) for (const c of cs) parts.push(`${merchant} ${signed(delta(`merchant ${merchant} ${c}`), c)}`);
    return parts.join("; ");
  };
  const measured = (k: string) => {
    const [kind, who, c] = k.split(" ") as ["wallet" | "merchant", string, string];
    const table = kind === "wallet" ? "wallets" : "merchants";
    return (after[table][who]?.[c] ?? 0) - (before[table][who]?.[c] ?? 0);
  };
  const expectedLedger = deltaText((k) => expectedDelta.get(k) ?? 0, Object.fromEntries(scope.currencies.map((c) => [c, 0])));
  let ledgerReport: StepReport = { name: ledgerName, expected: expectedLedger, actual: "not run", ok: false };
  // After an unexpected outcome the expected movements no longer hold: the balances are shown, not judged.
  if (firstFailure === null) {
    onEvent({ event: "step", t: t(), index: ledgerIndex, name: ledgerName, expected: expectedLedger });
    finish(ledgerIndex, ledgerName, expectedLedger, deltaText(measured, after.sums));
    ledgerReport = reports[ledgerIndex]!;
  }

  const steps: StepReport[] = [];
  s.steps.forEach((step, i) => {
    if (step.do === "wait") return;
    const r = reports[i];
    if (r !== null && r !== undefined) steps.push(r);
    else steps.push({ name: stepTitle(step, s), expected: step.do === "pay" ? expectedPayText(step) : step.do === "retry" && step.expect === "same_payment" ? RETRY_SAME : step.expect, actual: "not run", ok: false });
  });
  steps.push(ledgerReport);
  const failure = firstFailure as ScenarioReport["firstFailure"];
  return {
    ok: failure === null && steps.every((r) => r.ok),
    scenario: s.name,
    steps,
    firstFailure: failure,
    skipped,
    balances: after,
    logins: [...new Set([...terminals.values()].map((x) => x.login))],
    terminalSerials: [...terminals.values()].map((x) => x.serial),
    elapsedMs: t(),
  };

  async function bind(step: z.output<typeof bindStep>): Promise<string> {
    const terminal = terminals.get(step.terminal)!;
    const phone = phones.get(step.phone)!;
    const login = step.login !== undefined ? fill(step.login) : terminal.login;
    const reply = await terminal.device.request("bind_request", { login, terminal: { model: terminal.model, serial: terminal.serial, displayName: terminal.name } });
    if (reply.type === "error") return `rejected:${(reply.body as { code: string }).code}`;
    const code = reply.body.code as string;
    note(phone, `(the user reads ${code} off ${terminal.name} and types it)`);
    const terminalBound = terminal.device.next("bound", 10_000);
    const l = step.limits;
    const limits = {
      currency: l.currency,
      autoConfirmMaxMinor: parseAmount(l.autoConfirmMax, l.currency)!,
      autoConfirmDailyMinor: parseAmount(l.autoConfirmDaily, l.currency)!,
      perPaymentMaxMinor: parseAmount(l.perPaymentMax, l.currency)!,
    };
    const confirm = await phone.device.request("bind_confirm", { code, limits });
    if (confirm.type === "error") {
      terminalBound.catch(() => undefined);
      return `rejected:${(confirm.body as { code: string }).code}`;
    }
    const agreementId = confirm.body.agreementId as string;
    const told = await terminalBound.then(
      (m) => m.body.agreementId === agreementId,
      () => false,
    );
    bindings.set(`${step.terminal}/${login}`, { agreementId, phone });
    return told ? "bound" : "bound (the terminal was not told)";
  }

  async function cancel(step: z.output<typeof cancelStep>): Promise<string> {
    const r = payments.get(step.payment)!;
    const a = await r.accepted;
    if (a === null) return "error: that payment was never accepted";
    note(r.terminal, "(the user changes their mind and cancels on the terminal)");
    const reply = await r.terminal.device.request("payment_cancel", { paymentId: a.paymentId });
    if (reply.type === "error") return `rejected:${(reply.body as { code: string }).code}`;
    // A cancel ends the payment: its answer is the terminal's payment_result.
    if (reply.type !== "payment_result") return `answered with ${reply.type}, not payment_result`;
    return String(reply.body.status);
  }

  async function retry(step: z.output<typeof retryStep>): Promise<string> {
    const r = payments.get(step.payment)!;
    const a = await r.accepted;
    if (a === null) return "error: that payment was never accepted";
    const change = step.change ?? {};
    const body = {
      ...r.request,
      ...(change.amount !== undefined ? { amountMinor: parseAmount(change.amount, r.request.currency)! } : {}),
      ...(change.orderRef !== undefined ? { orderRef: change.orderRef } : {}),
      ...(change.description !== undefined ? { description: change.description } : {}),
    };
    note(r.terminal, step.change === undefined ? "(no answer heard: the terminal asks again, same idempotency key)" : "(the same idempotency key, with other fields)");
    const promptsBefore = prompts(a.paymentId).count;
    const reply = await r.terminal.device.request("pay_request", body);
    if (reply.type === "error") return `rejected:${(reply.body as { code: string }).code}`;
    if (reply.body.paymentId !== a.paymentId) return `a new payment ${String(reply.body.paymentId)} (the first was ${a.paymentId})`;
    // A second prompt would have been published before the reply; give it time to arrive anyway.
    await sleep(SECOND_PROMPT_WATCH_MS);
    if (prompts(a.paymentId).count > promptsBefore) return "same payment, but the phone was prompted again";
    // The phone drops a copy of a message it has seen; the broker's own record counts every prompt sent.
    const state = await r.terminal.device.request("payment_status", { paymentId: a.paymentId });
    if (state.type === "error") return `payment_status refused: ${(state.body as { code: string }).code}`;
    const sent = (state.body.events as { kind: string }[]).filter((e) => e.kind === "prompt_sent").length;
    if (sent > 1) return `same payment, but the broker sent ${sent} prompts`;
    note(r.terminal, `(both answers name ${a.paymentId}; its history shows one prompt sent)`);
    return RETRY_SAME;
  }

  async function unbind(step: z.output<typeof unbindStep>): Promise<string> {
    const terminal = terminals.get(step.terminal)!;
    const login = step.login !== undefined ? fill(step.login) : terminal.login;
    const binding = bindings.get(`${step.terminal}/${login}`);
    if (binding === undefined) return "error: no earlier bind step bound this terminal and login";
    const [actor, other] = step.by === "phone" ? [binding.phone, terminal] : [terminal, binding.phone];
    const told = other.device.next("unbound", 5000, (m) => m.body.agreementId === binding.agreementId);
    const reply = await actor.device.request("unbind", { agreementId: binding.agreementId });
    if (reply.type === "error") {
      told.catch(() => undefined);
      return `rejected:${(reply.body as { code: string }).code}`;
    }
    bindings.delete(`${step.terminal}/${login}`);
    return (await told.then(
      () => true,
      () => false,
    ))
      ? "unbound"
      : `unbound (the ${other.column} was not told)`;
  }
}

function signed(minor: number, currency: string): string {
  return minor > 0 ? `+${formatAmount(minor, currency)}` : formatAmount(minor, currency);
}

interface LedgerScope {
  readonly currencies: readonly string[];
  /** user id → the currencies the scenario funds or binds it in */
  readonly wallets: ReadonlyMap<string, readonly string[]>;
  /** merchant id → the currencies the scenario may pay it in */
  readonly merchants: ReadonlyMap<string, readonly string[]>;
}

/** The accounts a scenario can move: what its ledger step checks and the report shows. */
function ledgerScope(s: Scenario): LedgerScope {
  const wallets = new Map<string, Set<string>>(s.users.map((u) => [u.id, new Set(u.funds.map((f) => f.currency))]));
  const merchants = new Map<string, Set<string>>(s.merchants.map((m) => [m.id, new Set()]));
  for (const step of s.steps) {
    if (step.do === "bind") {
      const user = s.phones.find((p) => p.id === step.phone)?.user;
      if (user !== undefined) wallets.get(user)?.add(step.limits.currency);
    }
    if (step.do === "pay" && !step.expect.startsWith("rejected:")) merchants.get(step.merchant)?.add(step.currency);
  }
  const sorted = (m: Map<string, Set<string>>) => new Map([...m].filter(([, cs]) => cs.size > 0).map(([k, cs]) => [k, [...cs].sort()]));
  const all = new Set([...wallets.values(), ...merchants.values()].flatMap((cs) => [...cs]));
  return { currencies: [...all].sort(), wallets: sorted(wallets), merchants: sorted(merchants) };
}

function balances(s: Scenario, target: ScenarioTarget, ledger: LedgerRepo, scope: LedgerScope): Balances {
  const wallets: Record<string, Record<string, number>> = {};
  for (const [user, cs] of scope.wallets) wallets[user] = Object.fromEntries(cs.map((c) => [c, walletBalance(target.db, target.keyring, user, c)]));
  const merchants: Record<string, Record<string, number>> = {};
  for (const [merchant, cs] of scope.merchants) {
    // Merchant accounts are named merchant:<merchant id>:<currency> (src/store/ledger.ts).
    merchants[merchant] = Object.fromEntries(cs.map((c) => [c, ledger.balanceOf(`merchant:${merchant}:${c}`)]));
  }
  const funding: Record<string, number> = {};
  for (const a of ledger.accounts()) if (a.kind === "funding") funding[a.currency] = (funding[a.currency] ?? 0) + a.balanceMinor;
  return { wallets, merchants, funding, sums: Object.fromEntries(ledger.sums()) };
}

// ─── What each device sees, in words ───────────────────────────────────────────────────────

function describeUp(type: string, b: Record<string, unknown>): string | null {
  switch (type) {
    case "ack":
    case "prompt_received":
      return null;
    case "bind_request":
      return `→ asks to bind, for login ${String(b.login)}`;
    case "bind_confirm":
      return `→ enters code ${String(b.code)}; limits: ${limitsText(b.limits as Parameters<typeof limitsText>[0])}`;
    case "pay_request":
      return `→ pay ${money(b)} at ${String(b.merchantId)}, order ${String(b.orderRef)}${b.description ? ` (${String(b.description)})` : ""}, key …${String(b.idempotencyKey).slice(-8)}`;
    case "payment_approve":
      return `→ APPROVE ${money(b)} to ${String(b.merchantName)} from ${String(b.terminalName)} (signed)`;
    case "payment_decline":
      return "→ DECLINE";
    case "payment_execute":
      return `→ execute: debit ${money(b)} to ${String(b.payee)}`;
    case "payment_cancel":
      return `→ cancel ${short(b.paymentId)}`;
    case "payment_status":
      return `→ status of ${short(b.paymentId)}?`;
    case "unbind":
      return `→ unbind ${short(b.agreementId)}`;
    default:
      return `→ ${type}`;
  }
}

function describeDown(column: Column, m: Received, names: Map<string, string>, again: boolean): string | null {
  const b = m.body;
  switch (m.type) {
    case "bind_code":
      return `← ${String(b.display)}\n${codeBox(String(b.code))}\nvalid for ${Math.round((b.ttlMs as number) / 1000)} s`;
    case "bound":
      return column === "terminal"
        ? `← bound to ${names.get(b.phoneId as string) ?? short(b.phoneId)} (agreement ${short(b.agreementId)})`
        : `← bound to ${String(b.terminalName)} (agreement ${short(b.agreementId)})`;
    case "unbound":
      return `← unbound${column === "phone" && b.terminalName ? ` from ${String(b.terminalName)}` : ""} (by the ${String(b.by)})`;
    case "payment_accepted":
      return again ? `← the same payment ${short(b.paymentId)}: ${acceptedText(b, true)}` : `← accepted ${short(b.paymentId)}: ${acceptedText(b)}`;
    case "payment_update":
      return `← ${STEP_TEXT[b.step as string] ?? String(b.step)}`;
    case "payment_prompt": {
      const leftS = Math.max(0, ((b.deadlineMs as number) - Date.now()) / 1000);
      return `← Pay ${money(b)} to ${String(b.merchantName)} from ${String(b.terminalName)}?${b.description ? ` (${String(b.description)})` : ""} ${leftS.toFixed(1)} s to answer`;
    }
    case "payment_task":
      return `← task: pay ${money(b)} to ${String(b.merchantName)}`;
    case "payment_result":
      return `← ${String(b.status).toUpperCase()}${b.reason && b.reason !== b.status ? ` (${String(b.reason)})` : ""}: ${money(b)} to ${String(b.merchantName)}`;
    case "payment_state":
      // Only payment_status (and prompt_received) are answered by a state: the step narrates what it learns.
      return null;
    case "error":
      return `← refused: ${String(b.code)} — ${String(b.detail)}`;
    default:
      return `← ${m.type}`;
  }
}
