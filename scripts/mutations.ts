/**
 * Do the tests catch the bugs they promise to? Plants each bug of test/mutations/list.ts, one at
 * a time, in a scratch copy of the tree, runs the tests named for it there, and reports it
 * caught (a test failed), missed (they all passed) or broken (it could not be planted, or the
 * run failed without a test failing: a load error, a timeout, a filter that matches nothing).
 *
 *   npm run test:mutations [-- --quick] [-- --only id,id] [-- --list]
 *
 * The real tree is never written: the scratch copy holds the files git tracks plus untracked
 * ones it does not ignore, as they are in the working tree (uncommitted edits count), and a
 * symlink to node_modules. Before planting anything the selected tests run once unmutated and
 * must pass, so that "caught" means the bug was caught. One mutation runs at a time: the e2e
 * tests open real sockets and time out on a starved machine, and two cores are already kept
 * busy by one vitest run (see docs/operations.md §Mutations for the measured times).
 *
 * Prints a progress line per mutation, a table, and a JSON line last (`planted`, `caught`,
 * `missed`, `broken`, `missedIds`, `brokenIds`, `seconds`). Exit 0 when every bug was caught,
 * 1 when one was missed or broken (or the baseline failed), 2 for a bad command line.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { copyFileSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, realpathSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { MUTATIONS, type Mutation } from "../test/mutations/list.ts";

export type Outcome = "caught" | "missed" | "broken";

export interface MutationResult {
  readonly id: string;
  readonly rule: string;
  readonly outcome: Outcome;
  /** Caught: the tests that failed. Missed: how many passed. Broken: why. */
  readonly detail: string;
  readonly seconds: number;
}

export interface MutationReport {
  /** False when the selected tests failed on the unmutated copy (nothing was planted then). */
  readonly baselineOk: boolean;
  readonly baselineDetail: string;
  readonly results: readonly MutationResult[];
  readonly planted: number;
  readonly caught: number;
  readonly missed: number;
  readonly broken: number;
  readonly missedIds: readonly string[];
  readonly brokenIds: readonly string[];
  /** Set when the real tree's `git status` changed during the run (it must not). */
  readonly realTreeChanged: string | null;
  readonly seconds: number;
}

export interface MutationOptions {
  /** Only the entries marked quick. */
  readonly quick?: boolean;
  /** Only these ids (each must exist). */
  readonly only?: readonly string[];
  /** Per vitest run; default 300 s. */
  readonly timeoutMs?: number;
  readonly log?: (line: string) => void;
  /** The list to plant; default test/mutations/list.ts. */
  readonly mutations?: readonly Mutation[];
}

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const DEFAULT_TIMEOUT_MS = 300_000;

/** The entries selected by `quick` and `only`; throws on an unknown id. */
export function selectMutations(list: readonly Mutation[], o: Pick<MutationOptions, "quick" | "only">): Mutation[] {
  if (o.only !== undefined) {
    const unknown = o.only.filter((id) => !list.some((m) => m.id === id));
    if (unknown.length > 0) throw new Error(`no mutation named ${unknown.join(", ")} (see --list)`);
  }
  return list.filter((m) => (o.quick !== true || m.quick === true) && (o.only === undefined || o.only.includes(m.id)));
}

/** How often `needle` occurs in `hay` (without overlaps). */
export function occurrences(hay: string, needle: string): number {
  return needle.length === 0 ? 0 : hay.split(needle).length - 1;
}

const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

export async function runMutations(o: MutationOptions = {}): Promise<MutationReport> {
  const started = Date.now();
  const log = o.log ?? ((line: string) => process.stdout.write(`${line}\n`));
  const selected = selectMutations(o.mutations ?? MUTATIONS, o);
  const timeoutMs = o.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const statusBefore = gitStatus();
  const scratch = makeScratchCopy();
  scratchDirs.add(scratch);
  const results: MutationResult[] = [];
  let baseline: { ok: boolean; detail: string };
  try {
    log(`scratch copy: ${scratch}; ${selected.length} mutation(s), one at a time`);
    baseline = await runBaseline(scratch, selected, timeoutMs, log);
    if (baseline.ok) {
      for (const [i, m] of selected.entries()) {
        const r = await plant(scratch, m, timeoutMs);
        results.push(r);
        log(`[${i + 1}/${selected.length}] ${r.outcome.padEnd(6)} ${m.id} (${r.seconds.toFixed(1)} s): ${r.detail}`);
      }
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true });
    scratchDirs.delete(scratch);
  }
  const statusAfter = gitStatus();
  const ids = (outcome: Outcome) => results.filter((r) => r.outcome === outcome).map((r) => r.id);
  return {
    baselineOk: baseline.ok,
    baselineDetail: baseline.detail,
    results,
    planted: results.length,
    caught: ids("caught").length,
    missed: ids("missed").length,
    broken: ids("broken").length,
    missedIds: ids("missed"),
    brokenIds: ids("broken"),
    realTreeChanged: statusAfter === statusBefore ? null : `git status before:\n${statusBefore}\nafter:\n${statusAfter}`,
    seconds: Math.round((Date.now() - started) / 100) / 10,
  };
}

function gitStatus(): string {
  const r = spawnSync("git", ["status", "--porcelain"], { cwd: ROOT, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`git status failed in ${ROOT}: ${r.stderr}`);
  return r.stdout;
}

/** Tracked files and untracked, unignored ones, as they are now, plus a node_modules symlink. */
function makeScratchCopy(): string {
  const listed = spawnSync("git", ["ls-files", "-z", "--cached", "--others", "--exclude-standard"], { cwd: ROOT, encoding: "utf8" });
  if (listed.status !== 0) throw new Error(`git ls-files failed: ${listed.stderr}`);
  const scratch = mkdtempSync(join(tmpdir(), "handoff-mutations-"));
  try {
    for (const rel of new Set(listed.stdout.split("\0").filter((f) => f.length > 0))) {
      const from = join(ROOT, rel);
      if (!existsSync(from)) continue; // deleted in the working tree
      const to = join(scratch, rel);
      mkdirSync(dirname(to), { recursive: true });
      if (lstatSync(from).isSymbolicLink()) symlinkSync(readlinkSync(from), to);
      else copyFileSync(from, to);
    }
    symlinkSync(realpathSync(join(ROOT, "node_modules")), join(scratch, "node_modules"), "dir");
  } catch (err) {
    rmSync(scratch, { recursive: true, force: true });
    throw err;
  }
  return scratch;
}

/**
 * The selected tests on the unmutated copy, in at most two vitest runs: the files some entry
 * runs whole, and the rest with the union of the entries' filters.
 */
async function runBaseline(scratch: string, selected: readonly Mutation[], timeoutMs: number, log: (l: string) => void): Promise<{ ok: boolean; detail: string }> {
  const whole = new Set(selected.filter((m) => m.filter === undefined).flatMap((m) => m.tests));
  const filtered = selected.filter((m) => m.filter !== undefined);
  const rest = [...new Set(filtered.flatMap((m) => m.tests))].filter((f) => !whole.has(f));
  const runs: { files: string[]; pattern?: string }[] = [];
  if (whole.size > 0) runs.push({ files: [...whole] });
  if (rest.length > 0) runs.push({ files: rest, pattern: [...new Set(filtered.map((m) => escapeRegExp(m.filter!)))].join("|") });
  for (const run of runs) {
    const missing = run.files.filter((f) => !existsSync(join(scratch, f)));
    if (missing.length > 0) return { ok: false, detail: `test file(s) not found: ${missing.join(", ")}` };
    const t0 = Date.now();
    const v = await vitest(scratch, run.files, run.pattern, timeoutMs);
    log(`baseline: ${run.files.length} file(s)${run.pattern === undefined ? "" : ", filtered"}: ${v.passed} passed, ${v.failed.length} failed (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    if (v.exitCode !== 0 || v.failed.length > 0 || v.passed === 0) {
      const why = v.failed.length > 0 ? `failing: ${v.failed.join("; ")}` : (v.problem ?? (v.passed === 0 ? "no test ran (does a filter match no test name?)" : `vitest exited ${v.exitCode}: ${v.tail}`));
      return { ok: false, detail: `baseline fails (${run.files.join(" ")}): ${why}` };
    }
  }
  return { ok: true, detail: "" };
}

/** Plants one mutation, runs its tests, restores the file. */
async function plant(scratch: string, m: Mutation, timeoutMs: number): Promise<MutationResult> {
  const t0 = Date.now();
  const done = (outcome: Outcome, detail: string): MutationResult => ({ id: m.id, rule: m.rule, outcome, detail, seconds: (Date.now() - t0) / 1000 });
  const path = join(scratch, m.file);
  if (!existsSync(path)) return done("broken", `${m.file} does not exist`);
  const original = readFileSync(path, "utf8");
  const n = occurrences(original, m.search);
  if (n !== 1) return done("broken", `the search text occurs ${n} times in ${m.file}, not once: update the entry to the code as it is now`);
  const missing = m.tests.filter((f) => !existsSync(join(scratch, f)));
  if (missing.length > 0) return done("broken", `test file(s) not found: ${missing.join(", ")}`);
  writeFileSync(path, original.replace(m.search, () => m.replace));
  try {
    const v = await vitest(scratch, m.tests, m.filter === undefined ? undefined : escapeRegExp(m.filter), timeoutMs);
    if (v.failed.length > 0) return done("caught", `${v.failed.length} failed: ${v.failed.slice(0, 3).join("; ")}${v.failed.length > 3 ? "; …" : ""}`);
    if (v.problem !== undefined) return done("broken", v.problem);
    if (v.exitCode !== 0) return done("broken", `vitest exited ${v.exitCode} with no failed test: ${v.tail}`);
    if (v.passed === 0) return done("broken", "no test ran: the filter matches no test name");
    return done("missed", `all ${v.passed} test(s) passed`);
  } finally {
    writeFileSync(path, original);
  }
}

interface VitestRun {
  readonly exitCode: number | null;
  readonly passed: number;
  /** Full names of the failed tests. */
  readonly failed: readonly string[];
  /** Why the run says nothing about the tests: a timeout, no report, a file that failed to load. */
  readonly problem?: string;
  readonly tail: string;
}

const running = new Set<ChildProcess>();
const scratchDirs = new Set<string>();

function killGroup(child: ChildProcess): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, "SIGKILL");
  } catch {
    // already gone
  }
}

process.once("exit", () => {
  for (const child of running) killGroup(child);
  for (const dir of scratchDirs) rmSync(dir, { recursive: true, force: true });
});

/** `vitest run <files> [-t pattern]` in `cwd`, in its own process group, killed after `timeoutMs`. */
function vitest(cwd: string, files: readonly string[], pattern: string | undefined, timeoutMs: number): Promise<VitestRun> {
  const reportPath = join(cwd, ".mutation-report.json");
  rmSync(reportPath, { force: true });
  const bin = join(cwd, "node_modules", "vitest", "vitest.mjs");
  const args = [bin, "run", ...files, "--reporter=json", `--outputFile=${reportPath}`, ...(pattern === undefined ? [] : ["-t", pattern])];
  // A vitest run inside a test (test/e2e/mutations.test.ts) must not look like a worker of the outer one.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("VITEST")));
  return new Promise((resolve) => {
    const child = spawn(process.execPath, args, { cwd, env, detached: true, stdio: ["ignore", "pipe", "pipe"] });
    running.add(child);
    let tail = "";
    const keep = (chunk: Buffer) => {
      tail = (tail + chunk.toString("utf8")).slice(-4000);
    };
    child.stdout!.on("data", keep);
    child.stderr!.on("data", keep);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(child);
    }, timeoutMs);
    child.on("close", (code) => {
      clearTimeout(timer);
      running.delete(child);
      const short = tail.trim().split("\n").slice(-6).join(" | ");
      if (timedOut) return resolve({ exitCode: code, passed: 0, failed: [], problem: `timed out after ${timeoutMs / 1000} s`, tail: short });
      let report: JsonReport;
      try {
        report = JSON.parse(readFileSync(reportPath, "utf8")) as JsonReport;
      } catch {
        return resolve({ exitCode: code, passed: 0, failed: [], problem: `vitest wrote no report (exit ${code}): ${short}`, tail: short });
      }
      const failed = report.testResults.flatMap((f) => f.assertionResults.filter((a) => a.status === "failed").map((a) => a.fullName));
      const unloaded = report.testResults.filter((f) => f.status === "failed" && !f.assertionResults.some((a) => a.status === "failed"));
      const problem = unloaded.length > 0 ? `a test file failed outside any test: ${unloaded.map((f) => `${f.name.replace(cwd, "")}: ${(f.message ?? "").split("\n")[0]}`).join("; ")}` : undefined;
      resolve({ exitCode: code, passed: report.numPassedTests, failed, ...(problem === undefined ? {} : { problem }), tail: short });
    });
  });
}

/** The part of vitest's JSON reporter output read here. */
interface JsonReport {
  numPassedTests: number;
  testResults: { name: string; status: string; message?: string; assertionResults: { fullName: string; status: string }[] }[];
}

// ── The command line ───────────────────────────────────────────────────────────────────────

const USAGE = `Usage: npm run test:mutations [-- options]

Plants each bug of test/mutations/list.ts in a scratch copy of the tree, one at a time, runs
the tests named for it, and says whether they caught it.

Options:
  --quick          only the mutations marked quick (the form CI runs)
  --only ID,ID     only these mutations
  --list           print the mutations and exit
  -h, --help       this text

Exit status: 0 every bug caught, 1 one missed or broken (or the baseline failed), 2 bad usage.`;

function table(rows: readonly (readonly string[])[]): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows.map((r) => r.map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c]!))).join("  ")).join("\n");
}

export async function main(argv: readonly string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({ args: [...argv], options: { quick: { type: "boolean" }, only: { type: "string" }, list: { type: "boolean" }, help: { type: "boolean", short: "h" } }, strict: true, allowPositionals: false }));
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n\n${USAGE}\n`);
    return 2;
  }
  if (values.help === true) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const only = values.only?.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
  let selected: Mutation[];
  try {
    selected = selectMutations(MUTATIONS, { quick: values.quick === true, ...(only === undefined ? {} : { only }) });
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n`);
    return 2;
  }
  if (values.list === true) {
    const rows = selected.map((m) => [m.id, m.quick === true ? "quick" : "", m.file, `${m.tests.join(" ")}${m.filter === undefined ? "" : ` -t "${m.filter}"`}`, m.rule]);
    process.stdout.write(`${table([["id", "", "file", "tests", "rule"], ...rows])}\n`);
    return 0;
  }
  const stop = () => process.exit(130);
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  const report = await runMutations({ quick: values.quick === true, ...(only === undefined ? {} : { only }) });
  if (!report.baselineOk) process.stdout.write(`${report.baselineDetail}\n`);
  if (report.results.length > 0) {
    const rows = report.results.map((r) => [r.id, r.outcome, `${r.seconds.toFixed(1)} s`, r.rule]);
    process.stdout.write(`\n${table([["mutation", "result", "time", "rule"], ...rows])}\n\n`);
  }
  if (report.realTreeChanged !== null) process.stdout.write(`the real tree changed during the run (it must not):\n${report.realTreeChanged}\n`);
  const { planted, caught, missed, broken, missedIds, brokenIds, seconds } = report;
  process.stdout.write(`${JSON.stringify({ planted, caught, missed, broken, missedIds, brokenIds, baselineOk: report.baselineOk, seconds })}\n`);
  return report.baselineOk && missed === 0 && broken === 0 && report.realTreeChanged === null ? 0 : 1;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`error: ${(err as Error).message ?? String(err)}\n`);
      process.exit(1);
    },
  );
}
