/**
 * The short form of `npm run test:abuse`: 12 s of misbehaving devices (every kind of attack in
 * the first round, several at once) while 4 honest pairs pay. The broker must survive and keep
 * serving: a fresh device gets a pong at the end, honest payments complete, and every honest
 * payment gets its final result. A `busy` answer (the attacks can take a small, shared machine
 * past capacity) is retried as the protocol asks and counted, not a refusal; a broker that kept
 * refusing would leave payments without a result. Timings and sizes are printed, never asserted.
 * CI uses a fixed seed (the attack schedule is then the same every run) unless ABUSE_SEED is set.
 */
import { describe, expect, it } from "vitest";
import { runAbuse } from "../../device-sim/abuse.ts";

describe("abuse", () => {
  it("keeps the broker up and every honest payment answered while misbehaving devices attack it", async () => {
    const seed = Number(process.env.ABUSE_SEED ?? 20261126);
    const lines: string[] = [];
    const report = await runAbuse({ seed, seconds: 12, pairs: 4, log: (l) => lines.push(l) });
    const replay = `replay with: npm run test:abuse -- --seed ${report.seed} --seconds 12 --pairs 4\n${lines.join("\n")}`;
    expect(report.brokerDeath, replay).toBeNull();
    expect(report.brokerAlive, replay).toBe(true);
    expect(report.honestCompleted, replay).toBeGreaterThan(0);
    expect(report.honestLost, replay).toBe(0);
    expect(report.honestRejected, replay).toBe(0);
    expect(report.problems, replay).toEqual([]);
    expect(report.ok, replay).toBe(true);
    // Every kind of attack ran at least once (the first round goes through them all).
    for (const [name, tally] of Object.entries(report.attacks)) expect(tally.runs, `${name} never ran\n${replay}`).toBeGreaterThan(0);
  }, 120_000);
});
