/**
 * Scenario files: every file in scenarios/ plays to its expected outcomes, and a file with a
 * mistake is refused before anything runs, with a message naming the field.
 */
import { readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { runDemo } from "../../device-sim/demo.ts";
import { ScenarioError, loadScenario, parseScenario } from "../../device-sim/scenario.ts";
import { tempDir } from "../helpers.ts";

const DIR = fileURLToPath(new URL("../../scenarios/", import.meta.url));
const FILES = readdirSync(DIR).filter((f) => f.endsWith(".json")).sort();
const demoJson = () => JSON.parse(readFileSync(join(DIR, "demo.json"), "utf8")) as { steps: Record<string, unknown>[]; phones: Record<string, unknown>[] } & Record<string, unknown>;

async function play(argv: string[]) {
  const lines: string[] = [];
  const errors: string[] = [];
  const code = await runDemo(argv, { out: (l) => lines.push(l), err: (l) => errors.push(l) });
  return { code, lines, errors };
}

describe("scenario files", () => {
  it("include the demo and at least one more", () => {
    expect(FILES).toContain("demo.json");
    expect(FILES.length).toBeGreaterThanOrEqual(2);
  });

  it.each(FILES)("%s plays to every expected outcome", { timeout: 30_000 }, async (file) => {
    const { code, lines, errors } = await play(["--json", "--scenario", join(DIR, file)]);
    expect(code, errors.join("\n")).toBe(0);
    const summary = JSON.parse(lines.at(-1)!) as { ok: boolean; steps: { name: string; expected: string; actual: string }[]; balances: { sums: Record<string, number> } };
    expect(summary.ok).toBe(true);
    for (const s of summary.steps) expect(s.actual, s.name).toBe(s.expected);
    for (const [currency, sum] of Object.entries(summary.balances.sums)) expect(sum, currency).toBe(0);
  });

  it("two-households runs several terminal and phone pairs, with one phone bound to two terminals", () => {
    const s = loadScenario(join(DIR, "two-households.json"));
    expect(s.terminals.length).toBeGreaterThanOrEqual(3);
    expect(s.phones.length).toBeGreaterThanOrEqual(2);
    const binds = s.steps.filter((x) => x.do === "bind");
    const perPhone = new Map<string, number>();
    for (const b of binds) perPhone.set(b.phone, (perPhone.get(b.phone) ?? 0) + 1);
    expect(Math.max(...perPhone.values())).toBeGreaterThanOrEqual(2);
  });

  it("refuses an invalid scenario file with exit status 2 and a message naming the bad field, before starting anything", async () => {
    const dir = tempDir("hp-scenario-");
    try {
      const bad = demoJson();
      bad.steps[2]!.answer = "maybe";
      const file = join(dir, "bad.json");
      writeFileSync(file, JSON.stringify(bad));
      const { code, lines, errors } = await play(["--json", "--scenario", file]);
      expect(code).toBe(2);
      expect(lines).toEqual([]);
      expect(errors.join("\n")).toContain(`${file} is not a valid scenario`);
      expect(errors.join("\n")).toContain('steps[2] ("Lunch for two: the phone asks, Alice approves").answer: the phone\'s answer is approve, decline or ignore');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("refuses a file that is not JSON, naming the file", () => {
    const dir = tempDir("hp-scenario-");
    try {
      const file = join(dir, "broken.json");
      writeFileSync(file, "{ steps: ");
      expect(() => loadScenario(file)).toThrow(`${file} is not JSON`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  type Scn = ReturnType<typeof demoJson>;
  it.each<[string, (s: Scn) => void, string]>([
    ["an amount written as a number", (s) => (s.steps[1]!.amount = 12.8), 'steps[1] ("A flat white: small enough to confirm without asking").amount: write an amount as a string'],
    ["an amount with too many decimals", (s) => (s.steps[1]!.amount = "12.805"), '.amount: "12.805" is not an amount in CNY (2 decimals'],
    ["an unknown error code", (s) => (s.steps[4]!.expect = "rejected:over_limt"), '.expect: unknown error code "over_limt"'],
    ["an unknown step kind", (s) => (s.steps[4]!.do = "buy"), '.do: each step needs "do": bind, pay, cancel, retry, unbind or wait'],
    ["a misspelt field", (s) => (s.steps[4]!.amont = "1.00"), 'steps[4] ("An espresso machine: above the per-payment maximum"): unknown field "amont"'],
    ["an unknown terminal", (s) => (s.steps[4]!.terminal = "fridge"), '.terminal: no terminal "fridge" (known: tv)'],
    ["a cancel of a payment no step labelled", (s) => (s.steps[7]!.payment = "pie"), '.payment: no earlier pay step has "as": "pie"'],
    ["a phone of an unknown user", (s) => (s.phones[0]!.user = "carol"), 'phones[0].user: no user "carol" in users'],
    ["limits that are not amounts", (s) => ((s.steps[0]!.limits as Record<string, unknown>).perPaymentMax = "lots"), 'limits.perPaymentMax: "lots" is not an amount in CNY'],
    ["an unsupported currency", (s) => (s.steps[1]!.currency = "XYZ"), "steps[1] (\"A flat white: small enough to confirm without asking\").currency: not a supported currency"],
    ["a background payment without a label", (s) => delete s.steps[6]!.as, '.as: a payment with "wait": false needs "as"'],
    ["no steps", (s) => (s.steps = []), "steps: a scenario needs at least one step"],
    ["an unknown top-level field", (s) => (s.colour = "red"), '(top level): unknown field "colour"'],
  ])("names the field of %s", (_what, mutate, message) => {
    const s = demoJson();
    mutate(s);
    let error: unknown;
    try {
      parseScenario(s, "x.json");
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ScenarioError);
    expect((error as Error).message).toContain(message);
  });
});
