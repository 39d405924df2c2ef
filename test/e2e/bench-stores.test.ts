/**
 * `npm run bench` on PostgreSQL and on several nodes (issue 17): tiny runs of the real bench
 * (the compiled bench/run, its brokers and load generator as processes) that must complete
 * payments without an error and report what they ran on, per node.
 *
 *   --database postgres://…  on the test run's shared server (test/services.ts): the bench
 *                            creates a database of its own there and drops it at the end
 *   --nodes 2                PostgreSQL and Redis the bench starts itself (device-sim/services.ts)
 */
import pg from "pg";
import { describe, expect, it } from "vitest";
import { freshPostgresDatabase } from "../services.ts";
import { runProgram } from "../helpers.ts";

/** Small enough for a few seconds per phase on a loaded 2-core machine; no bound (no bare Aedes, no crypto rates). */
const TINY = ["--quick", "--no-bound", "--phases", "mixed,auto,open300", "--pairs", "4", "--flows", "40", "--auto-flows", "40", "--open-rate", "10", "--open-seconds", "2"];
const PHASES = ["mixed", "auto", "open300"] as const;

interface NodeFigures {
  readonly node: string;
  readonly peakRssMB: number | null;
  readonly phases: Record<string, { completed: number; errors: number; flowsPerSec: number; p50: number; p99: number; brokerCpuMsPerFlow: number | null }>;
}

interface Figures {
  readonly store: string;
  readonly nodes: number;
  readonly errors: number;
  readonly errorCounts: Record<string, number>;
  readonly phases: Record<string, { completed: number; errors: number; brokerCpuMsPerFlow: number | null; postgresCpuMsPerFlow: number | null; redisCpuMsPerFlow: number | null; refused: number; startLagMs: { n: number }; downLagMs: { n: number; p50: number | null }; answeredMs: { n: number }; up: Record<string, number>; down: Record<string, number> }>;
  readonly byNode: readonly NodeFigures[];
}

async function bench(args: readonly string[]): Promise<{ figures: Figures; stdout: string }> {
  const r = await runProgram("bench/run", [...TINY, ...args], { timeoutMs: 90_000 });
  if (r.code !== 0) throw new Error(`bench exited ${String(r.code)}:\n${r.output.slice(-3000)}`);
  const last = r.stdout.trim().split("\n").at(-1)!;
  return { figures: JSON.parse(last) as Figures, stdout: r.stdout };
}

function expectCompleted(f: Figures): void {
  expect(f.errorCounts).toEqual({});
  expect(f.errors).toBe(0);
  for (const name of PHASES) {
    expect(f.phases[name]!.completed, name).toBeGreaterThan(0);
    expect(f.phases[name]!.errors, name).toBe(0);
  }
}

describe("npm run bench on PostgreSQL and several nodes", () => {
  it("--database postgres://… runs one node on a fresh database of that server, and drops it after", async () => {
    const server = await freshPostgresDatabase();
    const { figures: f, stdout } = await bench(["--database", server]);
    expect(f.store).toBe("postgres");
    expect(f.nodes).toBe(1);
    expectCompleted(f);
    expect(stdout).toMatch(/^store: PostgreSQL \(postgres:\/\/.*\); 1 node$/m);
    // The open loop says how late the load generator itself started its flows.
    expect(stdout).toMatch(/^ {2}open300: .*; started late p99 [\d.]+ ms; broker /m);
    expect(f.phases.open300!.startLagMs.n).toBe(f.phases.open300!.completed + f.phases.open300!.errors + f.phases.open300!.refused);
    // And how long after the broker signed them its messages were handled: one figure per message down.
    expect(stdout).toMatch(/^ {2}mixed: .*; broker messages handled p50\/p99 [\d.]+\/[\d.]+ ms after signing; /m);
    expect(f.phases.mixed!.downLagMs.n).toBe(Object.values(f.phases.mixed!.down).reduce((a, b) => a + b, 0));
    expect(f.phases.mixed!.downLagMs.p50).toBeGreaterThanOrEqual(0);
    // And how soon the broker began answering: at most one figure per message up (the first answer).
    expect(stdout).toMatch(/; broker began answering p50\/p99 [\d.]+\/[\d.]+ ms after sending; /m);
    expect(f.phases.mixed!.answeredMs.n).toBeGreaterThanOrEqual(f.phases.mixed!.completed);
    expect(f.phases.mixed!.answeredMs.n).toBeLessThanOrEqual(Object.values(f.phases.mixed!.up).reduce((a, b) => a + b, 0));
    expect(f.byNode).toHaveLength(1);
    expect(f.byNode[0]!.phases.mixed!.completed).toBe(f.phases.mixed!.completed);
    // Not the bench's server: its CPU time is not the bench's to read.
    expect(f.phases.mixed!.postgresCpuMsPerFlow).toBeNull();
    const client = new pg.Client({ connectionString: server });
    await client.connect();
    try {
      const left = await client.query("SELECT datname FROM pg_database WHERE datname LIKE 'hp_bench_%'");
      expect(left.rows).toEqual([]);
    } finally {
      await client.end();
    }
  }, 100_000);

  it("--nodes 2 puts each pair's terminal and phone on different nodes and reports each node", async () => {
    const { figures: f, stdout } = await bench(["--nodes", "2"]);
    expect(f.store).toBe("postgres");
    expect(f.nodes).toBe(2);
    expectCompleted(f);
    expect(stdout).toMatch(/^store: PostgreSQL \(the bench's own\); 2 nodes through Redis/m);
    expect(f.byNode.map((n) => n.node)).toEqual(["node-1", "node-2"]);
    for (const name of PHASES) {
      const phase = f.phases[name]!;
      // Every node runs flows (the terminal's node counts them), and they add up.
      expect(f.byNode.map((n) => n.phases[name]!.completed).every((c) => c > 0), name).toBe(true);
      expect(f.byNode.reduce((a, n) => a + n.phases[name]!.completed, 0), name).toBe(phase.completed);
      // Both nodes work on every flow; their CPU per flow adds up to the total.
      const perNode = f.byNode.map((n) => n.phases[name]!.brokerCpuMsPerFlow!);
      expect(perNode.every((ms) => ms > 0), name).toBe(true);
      expect(perNode.reduce((a, b) => a + b, 0)).toBeCloseTo(phase.brokerCpuMsPerFlow!, 1);
      expect(phase.postgresCpuMsPerFlow, name).toBeGreaterThan(0);
      // Read from /proc in 10 ms ticks: Redis's share of a 40-flow phase can round to none.
      expect(phase.redisCpuMsPerFlow, name).toBeGreaterThanOrEqual(0);
    }
    expect(f.byNode.every((n) => n.peakRssMB !== null && n.peakRssMB > 0)).toBe(true);
  }, 100_000);

  it.each([
    [["--nodes", "1"], /--nodes must be a whole number from 2 to 16/],
    [["--nodes", "2", "--database", "sqlite"], /share one PostgreSQL database/],
    [["--nodes", "2", "--connections", "10"], /--nodes runs payments only/],
    [["--nodes", "2", "--profile"], /--profile profiles one broker/],
    [["--database", "mysql://x"], /--database must be sqlite, postgres or a postgres:\/\/… URL/],
  ])("refuses %j", async (args, message) => {
    const r = await runProgram("bench/run", args);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
  });
});
