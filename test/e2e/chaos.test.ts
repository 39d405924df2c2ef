/**
 * The short form of `npm run test:chaos`: the broker process is SIGKILLed 5 times while 20
 * terminal/phone pairs pay through it, and nothing may be lost, doubled or paid twice.
 * CI uses a fixed seed (its kill schedule is then the same every run; message interleaving still
 * varies) unless CHAOS_SEED is set; `npm run test:chaos` draws a fresh one each time to explore.
 * A failure names the seed to replay (npm run test:chaos -- --seed N).
 * The second run is `npm run test:chaos -- --nodes 2`'s short form: two nodes sharing PostgreSQL
 * and Redis (started for the run), each device given both URLs, each kill a node at random.
 */
import { describe, expect, it } from "vitest";
import { runChaos } from "../../device-sim/chaos.ts";

describe("chaos", () => {
  it("loses and doubles no payment while the broker is SIGKILLed and restarted under 20 paying pairs", async () => {
    const seed = Number(process.env.CHAOS_SEED ?? 20261125);
    const lines: string[] = [];
    const report = await runChaos({ seed, kills: 5, pairs: 20, log: (l) => lines.push(l) });
    const replay = `replay with: npm run test:chaos -- --seed ${report.seed} --kills 5 --pairs 20\n${lines.join("\n")}`;
    expect(report.problems, replay).toEqual([]);
    expect(report, replay).toMatchObject({ ok: true, kills: 5, lost: 0, doubled: 0 });
    expect(report.payments, replay).toBeGreaterThanOrEqual(20);
    expect(report.completed, replay).toBeGreaterThan(0);
    // Every answered payment's result reached both devices, once each (problems names any copy):
    // as the answer to the message that ended it (the phone's payment_execute or
    // payment_decline, the terminal's payment_cancel), or pushed; and both ways were seen.
    expect(report.checked.resultsDelivered, replay).toBe(2 * report.payments);
    expect(report.checked.resultsAsAnswers! + report.checked.resultsPushed!, replay).toBe(report.checked.resultsDelivered);
    expect(report.checked.resultsAsAnswers, replay).toBeGreaterThan(0);
    expect(report.checked.resultsPushed, replay).toBeGreaterThan(0);
    // The audit log verified after each kill (nothing half-appended) and after the clean stop, and
    // every result a device holds names the entry that records it.
    expect(report.checked.auditVerified, replay).toBe(5 + 1);
    expect(report.checked.receiptsInLog, replay).toBe(report.checked.resultsDelivered);
  }, 150_000);

  it("loses and doubles no payment while two nodes on PostgreSQL and Redis are SIGKILLed at random and their devices move between them", async () => {
    const seed = Number(process.env.CHAOS_SEED ?? 20261201);
    const lines: string[] = [];
    const report = await runChaos({ seed, kills: 6, pairs: 12, nodes: 2, log: (l) => lines.push(l) });
    const replay = `replay with: npm run test:chaos -- --seed ${report.seed} --kills 6 --pairs 12 --nodes 2\n${lines.join("\n")}`;
    expect(report.problems, replay).toEqual([]);
    expect(report, replay).toMatchObject({ ok: true, kills: 6, lost: 0, doubled: 0, nodes: 2 });
    // Both nodes died at least once (this seed's schedule), so devices of each moved to the other.
    expect(report.killsPerNode.every((n) => n > 0), replay).toBe(true);
    expect(report.completed, replay).toBeGreaterThan(0);
    expect(report.checked.resultsDelivered, replay).toBe(2 * report.payments);
    expect(report.checked.resultsPushed, replay).toBeGreaterThan(0);
    expect(report.checked.auditVerified, replay).toBe(6 + 1);
    expect(report.checked.receiptsInLog, replay).toBe(report.checked.resultsDelivered);
  }, 150_000);
});
