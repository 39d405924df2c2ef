/**
 * Keeps docs/payment-states.md honest: the transition table checked exhaustively against the core.
 *
 * The test parses the page's tables and footnotes, builds a payment in each status by every
 * path the core allows (auto-confirmed or approved, expired at the prompt or at the task, …),
 * and applies each event with the values that make the cell's main outcome happen, then again
 * under each footnote's condition, and under every pair of conditions (the first footnote of
 * a cell must win). Each resulting transition must carry the reason and the effects the
 * page's Effects table lists. Times sit on both sides of every deadline, so an off-by-one in a
 * deadline check fails here.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { PAYMENT_STATUSES, isFinal, startPayment, step, type Deadlines, type Decision, type Effect, type Payment, type PaymentEvent, type PaymentStatus } from "../../src/core/payment.ts";
import { isErrorCode, type ErrorCode } from "../../src/protocol/errors.ts";
import { upBodies } from "../../src/protocol/messages.ts";

const DOC = readFileSync(new URL("../../docs/payment-states.md", import.meta.url), "utf8");

// ── Reading the page ────────────────────────────────────────────────────────────────────────

/** The text of a `## title` section, up to the next `## ` heading. */
function section(title: string): string {
  const start = DOC.indexOf(`\n## ${title}\n`);
  if (start < 0) throw new Error(`docs/payment-states.md has no "## ${title}" section`);
  const end = DOC.indexOf("\n## ", start + 1);
  return DOC.slice(start, end < 0 ? undefined : end);
}

/** The first markdown table of a section: its header cells and its rows of cells. */
function table(text: string): { header: string[]; rows: string[][] } {
  const lines = text.split("\n");
  const first = lines.findIndex((l) => l.startsWith("| "));
  if (first < 0) throw new Error("no table in this section");
  const block: string[] = [];
  for (const line of lines.slice(first)) {
    if (!line.startsWith("|")) break;
    block.push(line);
  }
  const cells = (line: string) => line.slice(1, -1).split("|").map((c) => c.trim());
  return { header: cells(block[0]!), rows: block.slice(2).map(cells) };
}

/** `a` `b` → a b: a cell's words without the code marks. */
const plain = (cell: string) => cell.replaceAll("`", "").trim();
/** The backticked words of a cell, in order. */
const ticked = (cell: string) => [...cell.matchAll(/`([^`]+)`/g)].map((m) => m[1]!);

type Outcome = { kind: "none" } | { kind: "status"; status: PaymentStatus } | { kind: "error"; code: ErrorCode };

function outcomeOf(text: string): Outcome {
  if (text === "no change") return { kind: "none" };
  const word = /^`([a-z_]+)`$/.exec(text)?.[1];
  if (word !== undefined && (PAYMENT_STATUSES as readonly string[]).includes(word)) return { kind: "status", status: word as PaymentStatus };
  if (word !== undefined && isErrorCode(word)) return { kind: "error", code: word };
  throw new Error(`"${text}" is neither a status, an error code nor "no change"`);
}

const EVENT_KEYS = ["prompt_received", "approve", "decline", "execute", "cancel", "deadline prompt", "deadline task", "unbound"] as const;
type EventKey = (typeof EVENT_KEYS)[number];

interface Cell {
  readonly status: PaymentStatus;
  readonly event: EventKey;
  readonly outcome: Outcome;
  /** Footnote labels, in the order the cell lists them. */
  readonly notes: readonly string[];
}

const TRANSITIONS = table(section("Transition table"));
const CELLS: Cell[] = TRANSITIONS.rows.flatMap((row) =>
  row.slice(1).map((text, i) => ({
    status: plain(row[0]!) as PaymentStatus,
    event: plain(TRANSITIONS.header[i + 1]!) as EventKey,
    outcome: outcomeOf(text.replace(/\[\^[a-z-]+\]/g, "").trim()),
    notes: [...text.matchAll(/\[\^([a-z-]+)\]/g)].map((m) => m[1]!),
  })),
);

/** Footnote definitions: a condition gives an outcome after "→"; a note has none. */
type Footnote = { label: string; outcome: Outcome | "same" | null };
const FOOTNOTES: Footnote[] = [...DOC.matchAll(/^\[\^([a-z-]+)\]: (.+)$/gm)].map((m) => {
  const after = /→ (.+)$/.exec(m[2]!)?.[1];
  if (after === undefined) return { label: m[1]!, outcome: null };
  if (after.startsWith("the same outcome")) return { label: m[1]!, outcome: "same" };
  if (after.startsWith("no change")) return { label: m[1]!, outcome: { kind: "none" } };
  return { label: m[1]!, outcome: outcomeOf(/^`[a-z_]+`/.exec(after)?.[0] ?? after) };
});
const footnote = (label: string) => FOOTNOTES.find((f) => f.label === label);

interface EffectRow {
  readonly from: PaymentStatus | "new";
  readonly event: string;
  readonly to: PaymentStatus;
  readonly reason: string | null;
  readonly effects: readonly string[];
}
const EFFECT_ROWS: EffectRow[] = table(section("Effects")).rows.map((r) => ({
  from: plain(r[0]!) as PaymentStatus | "new",
  event: plain(r[1]!),
  to: plain(r[2]!) as PaymentStatus,
  reason: plain(r[3]!) === "null" ? null : plain(r[3]!),
  effects: ticked(r[4]!),
}));

function effectRow(from: PaymentStatus | "new", event: string, to: PaymentStatus): EffectRow {
  const row = EFFECT_ROWS.find((r) => r.from === from && r.event === event && r.to === to);
  if (row === undefined) throw new Error(`§Effects has no row for ${from} --${event}--> ${to}`);
  return row;
}

// ── Driving the core ────────────────────────────────────────────────────────────────────────

const D: Deadlines = { promptMs: 120_000, taskMs: 60_000 };
const T0 = Date.UTC(2026, 0, 1, 12);
const LATER = 10 * 3_600_000;

function newPayment(mode: "auto" | "prompt") {
  return startPayment(
    {
      id: "pay_aaaaaaaaaaaaaaaaaaaa",
      terminalId: "dterminalaaaaaaaaaaa",
      phoneId: "dphoneaaaaaaaaaaaaaa",
      agreementId: "ag_aaaaaaaaaaaaaaaaaaaa",
      merchantId: "coffee-corner",
      merchantName: "Coffee Corner",
      terminalName: "Living room TV",
      amountMinor: 12_800,
      currency: "CNY",
      walletAccountId: "wallet:0123:CNY",
      createdMs: T0,
    },
    mode,
    D,
  );
}

/** How a cell's event is varied: the main case is no knobs at all. */
interface Knobs {
  /** The phone already sent prompt_received. */
  readonly delivered?: true;
  /** At or after the deadline of the payment's status. */
  readonly late?: true;
  /** Before the deadline event's due time. */
  readonly notDue?: true;
  /** Values of the approval or the execution that differ from the payment's. */
  readonly change?: Readonly<Record<string, string | number>>;
  /** The second agreement state: the agreement has ended. */
  readonly inactive?: true;
  /** The wallet's balance at the execution (the main case: exactly the amount). */
  readonly balanceMinor?: number;
}

const merge = (a: Knobs, b: Knobs): Knobs => ({ ...a, ...b, change: { ...a.change, ...b.change } });

/** Each condition footnote, as the knob sets that make its condition true. */
const CONDITIONS: Record<string, (p: Payment) => Knobs[]> = {
  again: () => [{ delivered: true }],
  "no-clock": () => [{ late: true }],
  "prompt-late": () => [{ late: true }],
  "approve-mismatch": (p): Knobs[] => [
    { change: { amountMinor: p.amountMinor + 1 } },
    { change: { amountMinor: p.amountMinor - 1 } },
    { change: { currency: "EUR" } },
    { change: { merchantName: "Evil Corp" } },
    { change: { merchantName: `${p.merchantName} ` } },
    { change: { merchantName: p.merchantName.toUpperCase() } },
    { change: { terminalName: "Other TV" } },
  ],
  unbound: () => [{ inactive: true }],
  "task-late": () => [{ late: true }],
  "execute-mismatch": (p): Knobs[] => [{ change: { amountMinor: p.amountMinor + 1 } }, { change: { currency: "EUR" } }, { change: { payee: "evil-corp" } }],
  funds: (p) => [{ balanceMinor: p.amountMinor - 1 }, { balanceMinor: 0 }],
  "not-due": () => [{ notDue: true }],
};
/** Footnotes that explain a cell and state no condition. */
const NOTES = ["moved-on"];

function eventFor(key: EventKey, p: Payment, k: Knobs): PaymentEvent {
  switch (key) {
    case "prompt_received":
    case "decline":
    case "cancel":
    case "unbound":
      return { kind: key };
    case "approve":
      return { kind: "approve", values: { amountMinor: p.amountMinor, currency: p.currency, merchantName: p.merchantName, terminalName: p.terminalName, ...k.change }, agreementActive: k.inactive !== true };
    case "execute":
      return { kind: "execute", values: { amountMinor: p.amountMinor, currency: p.currency, payee: p.merchantId, ...k.change }, walletBalanceMinor: k.balanceMinor ?? p.amountMinor, transferId: "tr_bbbbbbbbbbbbbbbbbbbb" };
    case "deadline prompt":
      return { kind: "deadline", which: "prompt" };
    case "deadline task":
      return { kind: "deadline", which: "task" };
  }
}

/** The deadline that runs in the payment's status, if any. */
function liveDeadline(p: Payment): number | null {
  if (p.status === "awaiting_confirmation") return p.promptDeadlineMs;
  if (p.status === "executing") return p.taskDeadlineMs;
  return null;
}

/** The clock readings at which to apply the event: both edges of the window the knobs ask for. */
function timesFor(key: EventKey, p: Payment, sinceMs: number, k: Knobs): number[] {
  if (key === "deadline prompt" || key === "deadline task") {
    const due = key === "deadline prompt" ? p.promptDeadlineMs : p.taskDeadlineMs;
    if (k.notDue) {
      if (due === null) throw new Error("not-due needs a deadline");
      return [sinceMs + 1, due - 1];
    }
    return [...(due === null ? [] : [due, due + 1]), sinceMs + LATER].filter((t) => t >= sinceMs);
  }
  const due = liveDeadline(p);
  if (k.late) {
    if (due === null) throw new Error("late needs a live deadline");
    return [due, due + 1, due + LATER];
  }
  return due === null ? [sinceMs + 1, sinceMs + LATER] : [sinceMs + 1, due - 1];
}

/** A status, reached along one path from the start: the payment, and when it got there. */
interface Reached {
  readonly path: string;
  readonly payment: Payment;
  readonly atMs: number;
}

function walk(path: string, mode: "auto" | "prompt", events: readonly [(p: Payment) => PaymentEvent, (p: Payment, nowMs: number) => number][]): Reached {
  let p = newPayment(mode).payment;
  let now = T0;
  for (const [event, when] of events) {
    now = when(p, now);
    const d = step(p, event(p), now, D);
    if (!d.ok) throw new Error(`${path}: ${d.code}`);
    p = d.payment;
  }
  return { path, payment: p, atMs: now };
}

const soon = (_p: Payment, now: number) => now + 1000;
const atPromptDeadline = (p: Payment) => p.promptDeadlineMs!;
const atTaskDeadline = (p: Payment) => p.taskDeadlineMs!;
const ev = (key: EventKey, k: Knobs = {}) => (p: Payment) => eventFor(key, p, k);

/** Every path to every status that the core allows, with at most three events. */
const REACHED: Record<PaymentStatus, Reached[]> = {
  awaiting_confirmation: [walk("prompted", "prompt", [])],
  executing: [
    walk("auto-confirmed", "auto", []),
    walk("prompted, delivered, approved", "prompt", [[ev("prompt_received"), soon], [ev("approve"), soon]]),
    walk("prompted, approved", "prompt", [[ev("approve"), soon]]),
  ],
  completed: [
    walk("auto-confirmed, executed", "auto", [[ev("execute"), soon]]),
    walk("prompted, delivered, approved, executed", "prompt", [[ev("prompt_received"), soon], [ev("approve"), soon], [ev("execute"), soon]]),
  ],
  failed: [
    walk("prompted, approved after the unbind", "prompt", [[ev("approve", { inactive: true }), soon]]),
    walk("auto-confirmed, executed without funds", "auto", [[ev("execute", { balanceMinor: 0 }), soon]]),
    walk("prompted, approved, executed without funds", "prompt", [[ev("approve"), soon], [ev("execute", { balanceMinor: 1 }), soon]]),
  ],
  declined: [walk("prompted, declined", "prompt", [[ev("decline"), soon]]), walk("prompted, delivered, declined", "prompt", [[ev("prompt_received"), soon], [ev("decline"), soon]])],
  expired: [
    walk("prompted, prompt deadline", "prompt", [[ev("deadline prompt"), atPromptDeadline]]),
    walk("auto-confirmed, task deadline", "auto", [[ev("deadline task"), atTaskDeadline]]),
    walk("prompted, approved, task deadline", "prompt", [[ev("approve"), soon], [ev("deadline task"), atTaskDeadline]]),
  ],
  cancelled: [
    walk("prompted, cancelled", "prompt", [[ev("cancel"), soon]]),
    walk("auto-confirmed, cancelled", "auto", [[ev("cancel"), soon]]),
    walk("prompted, approved, cancelled", "prompt", [[ev("approve"), soon], [ev("cancel"), soon]]),
  ],
};

const effectNotation = (e: Effect) => (e.kind === "progress" ? `progress:${e.step}` : e.kind === "arm_deadline" ? `arm_deadline:${e.which}` : e.kind);

/** What a transition must never touch: what was agreed when the payment started. */
const agreed = (p: Payment) => ({
  id: p.id,
  terminalId: p.terminalId,
  phoneId: p.phoneId,
  agreementId: p.agreementId,
  merchantId: p.merchantId,
  merchantName: p.merchantName,
  terminalName: p.terminalName,
  amountMinor: p.amountMinor,
  currency: p.currency,
  walletAccountId: p.walletAccountId,
  mode: p.mode,
  createdMs: p.createdMs,
});

/** Applies one event and holds the result to the documented outcome. */
function expectOutcome(reached: Reached, key: EventKey, knobs: Knobs, expected: Outcome, what: string): void {
  let p = reached.payment;
  let since = reached.atMs;
  if (knobs.delivered) {
    since += 1;
    const d = step(p, { kind: "prompt_received" }, since, D);
    if (!d.ok) throw new Error(`${what}: prompt_received before the event was refused (${d.code})`);
    p = d.payment;
  }
  for (const nowMs of timesFor(key, p, since, knobs)) {
    const where = `${what}, from "${reached.path}", at ${nowMs - T0} ms`;
    const before = structuredClone(p);
    const event = eventFor(key, p, knobs);
    const d: Decision = step(p, event, nowMs, D);
    expect(p, `${where}: step changed its input`).toEqual(before);
    switch (expected.kind) {
      case "none":
        expect(d, where).toEqual({ ok: true, payment: p, effects: [] });
        expect(d.ok && d.payment, `${where}: "no change" returns the very same payment`).toBe(p);
        break;
      case "error":
        expect(d.ok ? { ok: true, status: d.payment.status } : { ok: false, code: d.code }, where).toEqual({ ok: false, code: expected.code });
        break;
      case "status": {
        expect(d.ok ? { ok: true, status: d.payment.status } : { ok: false, code: d.code }, where).toEqual({ ok: true, status: expected.status });
        if (!d.ok) return;
        const row = effectRow(p.status, key, expected.status);
        expect({ reason: d.payment.reason, effects: d.effects.map(effectNotation) }, `${where}: §Effects row`).toEqual({ reason: row.reason, effects: row.effects });
        expect(agreed(d.payment), `${where}: what was agreed`).toEqual(agreed(p));
        expect(d.payment.updatedMs, where).toBe(nowMs);
        for (const e of d.effects) {
          if (e.kind === "arm_deadline") expect({ dueMs: e.dueMs, deadline: e.which === "task" ? d.payment.taskDeadlineMs : d.payment.promptDeadlineMs }, where).toEqual({ dueMs: nowMs + (e.which === "task" ? D.taskMs : D.promptMs), deadline: e.dueMs });
          if (e.kind === "post_transfer") expect(e.transferId, where).toBe(d.payment.transferId);
        }
        expect(d.payment.transferId !== null, `${where}: a transfer id exactly when completed`).toBe(expected.status === "completed");
        if (key === "prompt_received") expect(d.payment.promptDelivered, where).toBe(true);
        break;
      }
    }
  }
}

/** A footnote's outcome for a cell: "the same outcome" resolves to the cell's own. */
function conditionOutcome(cell: Cell, label: string): Outcome {
  const f = footnote(label);
  if (f === undefined || f.outcome === null) throw new Error(`[^${label}] is not a condition footnote`);
  return f.outcome === "same" ? cell.outcome : f.outcome;
}

const conditionLabels = (cell: Cell) => cell.notes.filter((n) => !NOTES.includes(n));
const cellName = (c: Cell) => `${c.status} × ${c.event}`;

// ── The checks ──────────────────────────────────────────────────────────────────────────────

describe("docs/payment-states.md: the tables' shape", () => {
  it("lists every status once, in the core's order, with the core's idea of final", () => {
    const rows = table(section("Statuses")).rows;
    expect(rows.map((r) => plain(r[0]!))).toEqual([...PAYMENT_STATUSES]);
    for (const r of rows) expect({ status: plain(r[0]!), final: r[1] }).toEqual({ status: plain(r[0]!), final: isFinal(plain(r[0]!) as PaymentStatus) ? "yes" : "no" });
  });

  it("has one transition row per status and one column per event, in order", () => {
    expect(TRANSITIONS.rows.map((r) => plain(r[0]!))).toEqual([...PAYMENT_STATUSES]);
    expect(TRANSITIONS.header.slice(1).map(plain)).toEqual([...EVENT_KEYS]);
    expect(CELLS).toHaveLength(PAYMENT_STATUSES.length * EVENT_KEYS.length);
  });

  it("names, in §Events, each event and only up messages the protocol has", () => {
    const rows = table(section("Events")).rows;
    expect(rows.map((r) => plain(r[0]!))).toEqual([...EVENT_KEYS]);
    for (const r of rows) for (const type of ticked(r[1]!)) expect(Object.keys(upBodies), `§Events names ${type}`).toContain(type);
  });

  it("defines every footnote a cell uses and uses every footnote it defines", () => {
    const used = new Set(CELLS.flatMap((c) => c.notes));
    expect([...used].sort()).toEqual(FOOTNOTES.map((f) => f.label).sort());
  });

  it("gives each condition footnote an outcome and a way to make it true, and each note none", () => {
    const conditions = FOOTNOTES.filter((f) => f.outcome !== null).map((f) => f.label);
    expect(conditions.sort()).toEqual(Object.keys(CONDITIONS).sort());
    expect(FOOTNOTES.filter((f) => f.outcome === null).map((f) => f.label)).toEqual(NOTES);
  });

  it("reaches every status along each path the test uses", () => {
    for (const status of PAYMENT_STATUSES) {
      expect(REACHED[status].length, status).toBeGreaterThan(0);
      for (const r of REACHED[status]) expect({ path: r.path, status: r.payment.status }).toEqual({ path: r.path, status });
    }
  });

  it("lists in §Effects only transitions the transition table has, and draws the same arrows in its diagram", () => {
    const possible = new Set<string>();
    for (const c of CELLS) {
      const outcomes = [c.outcome, ...conditionLabels(c).map((l) => conditionOutcome(c, l))];
      for (const o of outcomes) if (o.kind === "status") possible.add(`${c.status} ${c.event} ${o.status}`);
    }
    const starts = EFFECT_ROWS.filter((r) => r.from === "new");
    const rest = EFFECT_ROWS.filter((r) => r.from !== "new").map((r) => `${r.from} ${r.event} ${r.to}`);
    expect(rest.sort()).toEqual([...possible].sort());
    expect(starts.map((r) => r.event).sort()).toEqual(["pay_request, mode auto", "pay_request, mode prompt"]);

    const arrows = [...DOC.matchAll(/^ {4}(\[\*\]|[a-z_]+) --> ([a-z_]+)/gm)].map((m) => `${m[1] === "[*]" ? "new" : m[1]} ${m[2]}`);
    const pairs = EFFECT_ROWS.filter((r) => r.from !== r.to).map((r) => `${r.from} ${r.to}`);
    expect(arrows.sort()).toEqual(pairs.sort());
  });
});

describe("docs/payment-states.md §Effects: the start of a payment", () => {
  it.each(["auto", "prompt"] as const)("starts a payment in mode %s as the table says", (mode) => {
    const { payment, effects } = newPayment(mode);
    const row = EFFECT_ROWS.find((r) => r.from === "new" && r.event === `pay_request, mode ${mode}`)!;
    expect({ status: payment.status, reason: payment.reason, effects: effects.map(effectNotation) }).toEqual({ status: row.to, reason: row.reason, effects: row.effects });
  });
});

describe("docs/payment-states.md §Transition table, every cell against the core", () => {
  it.each(CELLS.map((c) => [cellName(c), c] as const))("%s: the main outcome", (name, cell) => {
    for (const reached of REACHED[cell.status]) expectOutcome(reached, cell.event, {}, cell.outcome, name);
  });

  const conditional = CELLS.flatMap((c) => conditionLabels(c).map((label) => [`${cellName(c)} [^${label}]`, c, label] as const));

  it.each(conditional)("%s: the footnote's outcome under its condition", (name, cell, label) => {
    const expected = conditionOutcome(cell, label);
    for (const reached of REACHED[cell.status]) for (const knobs of CONDITIONS[label]!(reached.payment)) expectOutcome(reached, cell.event, knobs, expected, `${name} ${JSON.stringify(knobs)}`);
  });

  const pairs = CELLS.flatMap((c) => {
    const labels = conditionLabels(c);
    return labels.flatMap((first, i) => labels.slice(i + 1).map((second) => [`${cellName(c)} [^${first}] before [^${second}]`, c, first, second] as const));
  });

  it.each(pairs)("%s: when both conditions hold, the footnote listed first wins", (name, cell, first, second) => {
    const expected = conditionOutcome(cell, first);
    for (const reached of REACHED[cell.status]) {
      for (const a of CONDITIONS[first]!(reached.payment)) for (const b of CONDITIONS[second]!(reached.payment)) expectOutcome(reached, cell.event, merge(a, b), expected, `${name} ${JSON.stringify(merge(a, b))}`);
    }
  });
});
