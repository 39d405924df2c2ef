/**
 * The short form of `npm run test:chaos`: the broker process is SIGKILLed 5 times while 20
 * terminal/phone pairs pay through it, and nothing may be lost, doubled or paid twice.
 * The seed is random unless CHAOS_SEED is set; a failure names it (npm run test:chaos -- --seed N).
 */
import { describe, expect, it } from "vitest";
import { runChaos } from "../../device-sim/chaos.ts";

describe("chaos", () => {
  it("loses and doubles no payment while the broker is SIGKILLed and restarted under 20 paying pairs", async () => {
    const seed = process.env.CHAOS_SEED === undefined ? undefined : Number(process.env.CHAOS_SEED);
    const lines: string[] = [];
    const report = await runChaos({ ...(seed === undefined ? {} : { seed }), kills: 5, pairs: 20, log: (l) => lines.push(l) });
    const replay = `replay with: npm run test:chaos -- --seed ${report.seed} --kills 5 --pairs 20\n${lines.join("\n")}`;
    expect(report.problems, replay).toEqual([]);
    expect(report, replay).toMatchObject({ ok: true, kills: 5, lost: 0, doubled: 0 });
    expect(report.payments, replay).toBeGreaterThanOrEqual(20);
    expect(report.completed, replay).toBeGreaterThan(0);
    // Every answered payment's result reached both devices.
    expect(report.checked.resultsDelivered, replay).toBe(2 * report.payments);
  }, 150_000);
});
