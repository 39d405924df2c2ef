/**
 * The deadline poller (broker/deadlines.ts): driven by an injected clock, so these tests move
 * time instead of sleeping through it.
 */
import pino from "pino";
import { describe, expect, it } from "vitest";
import { Deadlines, type DeadlineKind } from "../../broker/deadlines.ts";
import type { TxContext } from "../../src/service/inbox.ts";

function world(rows: { paymentId: string; which: DeadlineKind; dueMs: number }[]) {
  let nowMs = 1_000;
  const queued: { label: string; run: (ctx: TxContext) => void }[] = [];
  const fired: string[] = [];
  const deadlines = new Deadlines({
    due: (now, limit) => rows.filter((r) => r.dueMs <= now).slice(0, limit),
    queue: (label, run) => queued.push({ label, run }),
    fire: (_ctx, paymentId, which) => {
      fired.push(`${paymentId}/${which}`);
      // Firing ends the deadline, as Payments.fireDeadline does by disarming its row.
      rows.splice(rows.findIndex((r) => r.paymentId === paymentId && r.which === which), 1);
    },
    clock: () => nowMs,
    log: pino({ level: "silent" }),
    batch: 2,
  });
  const runQueued = () => {
    for (const job of queued.splice(0)) job.run({} as TxContext);
  };
  return { deadlines, queued, fired, runQueued, advance: (ms: number) => (nowMs += ms) };
}

describe("Deadlines", () => {
  it("queues nothing before a deadline is due, and fires it once the clock passes it", () => {
    const w = world([{ paymentId: "pay_a", which: "prompt", dueMs: 1_500 }]);
    expect(w.deadlines.poll()).toBe(0);
    w.advance(499);
    expect(w.deadlines.poll()).toBe(0);
    w.advance(1);
    expect(w.deadlines.poll()).toBe(1);
    expect(w.queued.map((q) => q.label)).toEqual(["deadline pay_a/prompt"]);
    w.runQueued();
    expect(w.fired).toEqual(["pay_a/prompt"]);
  });

  it("does not queue a deadline again while its first firing waits for the next batch", () => {
    const w = world([{ paymentId: "pay_a", which: "task", dueMs: 1_000 }]);
    expect(w.deadlines.poll()).toBe(1);
    w.advance(100);
    expect(w.deadlines.poll()).toBe(0);
    expect(w.queued).toHaveLength(1);
  });

  it("queues it again when the first firing never ran (its batch was lost) after 5 s", () => {
    const w = world([{ paymentId: "pay_a", which: "task", dueMs: 1_000 }]);
    w.deadlines.poll();
    w.queued.splice(0); // the batch that held it failed: the job never ran
    w.advance(5_001);
    expect(w.deadlines.poll()).toBe(1);
  });

  it("takes at most `batch` due deadlines a poll, oldest first, and the rest on the next", () => {
    const w = world([
      { paymentId: "pay_a", which: "prompt", dueMs: 900 },
      { paymentId: "pay_b", which: "prompt", dueMs: 950 },
      { paymentId: "pay_c", which: "task", dueMs: 990 },
    ]);
    expect(w.deadlines.poll()).toBe(2);
    w.runQueued();
    expect(w.deadlines.poll()).toBe(1);
    w.runQueued();
    expect(w.fired).toEqual(["pay_a/prompt", "pay_b/prompt", "pay_c/task"]);
  });

  it("logs a failed read and keeps polling", () => {
    let fail = true;
    const lines: string[] = [];
    const log = pino({ level: "error" }, { write: (l: string) => lines.push(l) });
    const deadlines = new Deadlines({
      due: () => {
        if (fail) throw Object.assign(new Error("disk I/O error"), { code: "SQLITE_IOERR" });
        return [{ paymentId: "pay_a", which: "prompt" as const }];
      },
      queue: () => {},
      fire: () => {},
      clock: () => 0,
      log,
    });
    expect(deadlines.poll()).toBe(0);
    expect(lines.join("")).toContain("reading deadlines failed");
    fail = false;
    expect(deadlines.poll()).toBe(1);
  });
});
