/**
 * `npm run demo`: the whole story plays to its expected outcomes, in-process and as a program,
 * against its own broker and a running one, and leaves no login or serial in clear on disk.
 */
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { runDemo } from "../../device-sim/demo.ts";
import { runProgram, startTestBroker, tempDir, type TestBroker } from "../helpers.ts";


interface Summary {
  ok: boolean;
  steps: { name: string; expected: string; actual: string; ok: boolean; skipped?: string }[];
  balances: { wallets: Record<string, Record<string, number>>; merchants: Record<string, Record<string, number>>; funding: Record<string, number>; sums: Record<string, number> };
  login: string;
  terminalSerial: string;
  skipped: { name: string; reason: string }[];
  dataDir: string;
  dataDirKept: boolean;
  elapsedMs: number;
}

async function demo(argv: string[]): Promise<{ code: number; lines: string[]; errors: string[]; summary: Summary }> {
  const lines: string[] = [];
  const errors: string[] = [];
  const code = await runDemo(argv, { out: (l) => lines.push(l), err: (l) => errors.push(l), columns: 120 });
  let summary: Summary;
  try {
    summary = JSON.parse(lines.at(-1) ?? "null") as Summary;
  } catch {
    summary = null as unknown as Summary;
  }
  return { code, lines, errors, summary };
}

function expectEveryStepAsExpected(summary: Summary): void {
  expect(summary.ok).toBe(true);
  for (const s of summary.steps) expect(s.actual, s.name).toBe(s.expected);
}

/** What the demo must show, in order (issue 5): the demo scenario's expected outcomes. */
const DEMO_OUTCOMES = [
  "bound",
  "completed (auto)",
  "completed (prompt)",
  "declined (prompt)",
  "rejected:over_limit",
  "expired (prompt)",
  "cancelled (prompt)",
  "cancelled",
  "completed (prompt)",
  "same payment, no second prompt",
  "unbound",
  "rejected:not_bound",
];

/**
 * The broker messages one device column heard during a step, from the --json events: "type",
 * or "type:step" for an update, with "← its <type>" when it answered that device's own message.
 */
function heard(lines: readonly string[], stepIndex: number, column: "terminal" | "phone"): string[] {
  let step = -1;
  const out: string[] = [];
  for (const line of lines) {
    const e = JSON.parse(line) as { event: string; index?: number; column?: string; dir?: string; type?: string; body?: { step?: string }; answers?: string };
    if (e.event === "step") step = e.index!;
    if (e.event !== "message" || step !== stepIndex || e.column !== column || e.dir !== "down") continue;
    out.push(`${e.type!}${e.body?.step !== undefined ? `:${e.body.step}` : ""}${e.answers !== undefined ? ` ← its ${e.answers}` : ""}`);
  }
  return out;
}

let broker: TestBroker | null = null;
afterEach(async () => {
  await broker?.stop();
  broker = null;
});

describe("npm run demo", () => {
  it("plays every flow to its expected outcome, balances the ledger to zero, and removes its temporary data dir", { timeout: 30_000 }, async () => {
    const { code, lines, errors, summary } = await demo(["--json"]);
    expect(code, errors.join("\n")).toBe(0);
    expect(errors).toEqual([]);
    expectEveryStepAsExpected(summary);
    expect(summary.steps.slice(0, -1).map((s) => s.expected)).toEqual(DEMO_OUTCOMES);
    expect(summary.steps.at(-1)!.name).toMatch(/^ledger/);
    // ¥500.00 in; ¥12.80 + ¥128.00 + ¥99.00 out to Coffee Corner; nothing else moved.
    expect(summary.balances).toEqual({ wallets: { alice: { CNY: 26_020 } }, merchants: { "coffee-corner": { CNY: 23_980 } }, funding: { CNY: -50_000 }, sums: { CNY: 0 } });
    expect(summary.skipped).toEqual([]);
    expect(summary.dataDirKept).toBe(false);
    expect(existsSync(summary.dataDir)).toBe(false);
    // --json: every line is one JSON object, none of them columns.
    for (const line of lines) expect(() => JSON.parse(line) as unknown, line).not.toThrow();

    // Each device hears what it needs, once: the task and the result that answer its own
    // message come as those answers, and the terminal hears no update its answer already told.
    const events = lines.slice(0, -1);
    // Step 2, auto-confirmed: the terminal's answer says so; then only the result.
    expect(heard(events, 1, "terminal")).toEqual(["payment_accepted ← its pay_request", "payment_result"]);
    expect(heard(events, 1, "phone")).toEqual(["payment_task", "payment_result ← its payment_execute"]);
    // Step 3, prompted and approved: the phone's receipt (its PUBACK), then one update for the approval.
    expect(heard(events, 2, "terminal")).toEqual(["payment_accepted ← its pay_request", "payment_update:prompt_delivered", "payment_update:executing", "payment_result"]);
    expect(heard(events, 2, "phone")).toEqual(["payment_prompt", "payment_task ← its payment_approve", "payment_result ← its payment_execute"]);
    // Step 4, declined: the decline is answered by the result.
    expect(heard(events, 3, "terminal")).toEqual(["payment_accepted ← its pay_request", "payment_update:prompt_delivered", "payment_result"]);
    expect(heard(events, 3, "phone")).toEqual(["payment_prompt", "payment_result ← its payment_decline"]);
    // Step 6, expired: nobody's message ended it, so both get the result pushed.
    expect(heard(events, 5, "terminal").at(-1)).toBe("payment_result");
    expect(heard(events, 5, "phone").at(-1)).toBe("payment_result");
    // Step 8, the cancel: answered by the terminal's result, and that is all the terminal hears.
    expect(heard(events, 7, "terminal")).toEqual(expect.arrayContaining(["payment_result ← its payment_cancel"]));
    expect(heard(events, 7, "terminal").filter((m) => m.startsWith("payment_result"))).toHaveLength(1);
  });

  it("narrates in two columns, terminal and phone, with the pairing code boxed and amounts in their currency", { timeout: 30_000 }, async () => {
    const { code, lines } = await demo([]);
    expect(code).toBe(0);
    const text = lines.join("\n");
    expect(text).toMatch(/TERMINAL: Living room TV\s+│ PHONE: Alice's phone/);
    expect(text).toMatch(/│ +[A-Z] [A-Z] [A-Z] [A-Z] - [A-Z] [A-Z] [A-Z] [A-Z] +│/);
    // A phone line: the terminal column is empty, the phone column has the prompt.
    expect(text).toMatch(/^ +\d+\.\d{3} │ +│ ← Pay ¥128\.00 to Coffee Corner from Living room TV\?/m);
    expect(text).toMatch(/^ +\d+\.\d{3} │ ← refused: over_limit — ¥2,000\.00 is above/m);
    // The answer to a request tells what the broker did with it: no update follows for that.
    expect(text).toMatch(/^ +\d+\.\d{3} │ ← accepted pay_\S+: auto-confirmed within the +│/m);
    expect(text).toMatch(/^ +\d+\.\d{3} │ ← accepted pay_\S+: prompt sent to the phone, +│/m);
    expect(text).toMatch(/^ +\d+\.\d{3} │ ← the same payment pay_\S+: still waiting for the +│/m);
    expect(text).toContain("sum      all CNY accounts     ¥0.00");
    expect(lines.at(-1)).toMatch(/^✓ All 13 steps ended as expected/);
  });

  it(
    "runs as a program (npm run demo -- --json, compiled): exit 0, ok summary, and the login and serial it used are not stored in clear",
    { timeout: 60_000 },
    async () => {
      const dataDir = tempDir("hp-demo-test-");
      try {
        const { code, stdout, stderr } = await runProgram("device-sim/demo", ["--json", "--data-dir", dataDir]);
        expect(code, stderr).toBe(0);
        const summary = JSON.parse(stdout.trimEnd().split("\n").at(-1)!) as Summary;
        expectEveryStepAsExpected(summary);
        expect(summary.dataDirKept).toBe(true);
        expect(summary.login).toMatch(/^alice\.tv-[0-9a-f]{10}$/);
        expect(summary.terminalSerial).toMatch(/^TV9-[0-9a-f]{10}$/);

        const files = ["handoff.db", "handoff.db-wal", "handoff.db-shm"].map((f) => join(dataDir, f)).filter(existsSync);
        expect(files.length).toBeGreaterThan(0);
        const bytes = Buffer.concat(files.map((f) => readFileSync(f)));
        // The check reads the right bytes: what is stored in clear (a merchant's name) is found.
        expect(bytes.includes("Coffee Corner")).toBe(true);
        expect(bytes.includes(summary.login), "login").toBe(false);
        expect(bytes.includes(summary.terminalSerial), "terminal serial").toBe(false);
        // The random suffix alone would find a copy of either in another encoding or table.
        expect(bytes.includes(summary.login.slice(-10)), "run suffix").toBe(false);
      } finally {
        rmSync(dataDir, { recursive: true, force: true });
      }
    },
  );

  it("plays against a running broker (--url and its --data-dir), waiting for a prompt deadline that is near", { timeout: 30_000 }, async () => {
    broker = await startTestBroker({ promptTtlMs: 1500 });
    const { code, errors, summary } = await demo(["--json", "--url", broker.url, "--data-dir", broker.dataDir]);
    expect(code, errors.join("\n")).toBe(0);
    expectEveryStepAsExpected(summary);
    expect(summary.skipped).toEqual([]);
    expect(summary.dataDirKept).toBe(true);
  });

  it("with --url, skips the expiry step and says why when the running broker's prompts live longer than --max-wait-ms", { timeout: 30_000 }, async () => {
    broker = await startTestBroker(); // prompts live 120 s
    const { code, summary } = await demo(["--json", "--url", broker.url, "--data-dir", broker.dataDir, "--max-wait-ms", "5000"]);
    expect(code).toBe(0);
    expect(summary.ok).toBe(true);
    expect(summary.skipped).toHaveLength(1);
    expect(summary.skipped[0]!.name).toMatch(/expires/);
    expect(summary.skipped[0]!.reason).toContain("--prompt-ttl-ms");
    const step = summary.steps.find((s) => s.skipped !== undefined)!;
    expect(step).toMatchObject({ expected: "expired (prompt)", actual: "skipped" });
    for (const s of summary.steps.filter((x) => x.skipped === undefined)) expect(s.actual, s.name).toBe(s.expected);
  });

  it("exits 1 naming the broker when --url points at nothing", { timeout: 30_000 }, async () => {
    // A real data dir (broker.pub, master.key), but no broker listening at the URL any more.
    const stopped = await startTestBroker();
    await stopped.stop({ keepData: true });
    try {
      const { code, errors, summary } = await demo(["--json", "--url", stopped.url, "--data-dir", stopped.dataDir]);
      expect(code).toBe(1);
      expect(errors.join("\n")).toContain(stopped.url);
      expect(summary.ok).toBe(false);
    } finally {
      rmSync(stopped.dataDir, { recursive: true, force: true });
    }
  });

  it.each([
    [["--url", "mqtt://127.0.0.1:1"], "--url needs --data-dir"],
    [["--max-wait-ms", "soon"], "--max-wait-ms"],
    [["--log-level", "loud"], "--log-level"],
    [["--frobnicate"], "Unknown option"],
  ])("refuses %j with exit status 2 and says why", async (argv, message) => {
    const { code, errors } = await demo(argv);
    expect(code).toBe(2);
    expect(errors.join("\n")).toContain(message);
  });

  it("refuses --url with a data dir that has no master key instead of making a new one", async () => {
    const dir = tempDir("hp-demo-nokey-");
    try {
      writeFileSync(join(dir, "broker.pub"), Buffer.alloc(32).toString("base64") + "\n");
      const { code, errors } = await demo(["--url", "mqtt://127.0.0.1:1", "--data-dir", dir]);
      expect(code).toBe(1);
      expect(errors.join("\n")).toContain("master.key");
      expect(existsSync(join(dir, "master.key"))).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("--help lists every option, with examples", async () => {
    const { code, lines } = await demo(["--help"]);
    expect(code).toBe(0);
    const help = lines.join("\n");
    for (const option of ["--scenario", "--json", "--data-dir", "--url", "--max-wait-ms", "--log-level", "--help"]) expect(help).toContain(option);
    expect(help).toContain("Examples:");
    expect(help).toContain("npm run demo -- --json | tail -1");
  });
});
