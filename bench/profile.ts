/**
 * Reads a V8 CPU profile (`node --cpu-prof`) and tells where the time went: the functions with
 * the most self time, the most inclusive time, and the totals per area (a package, a source
 * folder, native code, the garbage collector).
 *
 *   node --enable-source-maps scripts/run.mjs bench/profile <file.cpuprofile> [--top N]
 *
 * `npm run bench -- --profile` runs the broker under --cpu-prof and prints this summary.
 */
import { readFileSync } from "node:fs";
import { SourceMap } from "node:module";
import { relative } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber?: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

export interface Row {
  readonly name: string;
  readonly ms: number;
  readonly pct: number;
}

export interface ProfileSummary {
  readonly totalMs: number;
  /** Sampled time not spent idle: what the profile says the process worked. */
  readonly busyMs: number;
  readonly self: readonly Row[];
  readonly inclusive: readonly Row[];
  readonly areas: readonly Row[];
}

const root = process.cwd();

function where(url: string): string {
  if (url === "") return "";
  const path = url.startsWith("file://") ? fileURLToPath(url) : url;
  return path.startsWith("/") ? relative(root, path) : path;
}

function label(f: CallFrame): string {
  const name = f.functionName === "" ? "(anonymous)" : f.functionName;
  const file = where(f.url);
  if (file === "") return name;
  return `${name} ${file}:${f.lineNumber + 1}`;
}

/** The area a frame belongs to: its package, its source folder, or what V8 calls it. */
function area(f: CallFrame): string {
  const file = where(f.url);
  if (file === "") return f.functionName.startsWith("(") ? f.functionName : "(native: bindings, crypto, sqlite)";
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(file);
  if (pkg !== null) return pkg[1]!;
  if (file.startsWith("node:")) return "node internals";
  const dir = /^((?:src|broker|device-sim|bench)(?:\/[^/]+)?)\//.exec(file);
  return dir !== null ? dir[1]! : file;
}

const IDLE = new Set(["(idle)", "(root)"]);

/**
 * The programs run compiled (dist/<dir>/<name>.mjs, scripts/build.mjs): a frame in a bundle is
 * put back at its .ts file and line through the bundle's source map, so areas and labels name
 * the sources. Frames of files without a map stay as they are.
 */
const maps = new Map<string, SourceMap | null>();
function original(f: CallFrame): CallFrame {
  if (!f.url.startsWith("file://") || !f.url.endsWith(".mjs")) return f;
  let map = maps.get(f.url);
  if (map === undefined) {
    try {
      map = new SourceMap(JSON.parse(readFileSync(fileURLToPath(f.url) + ".map", "utf8")) as ConstructorParameters<typeof SourceMap>[0]);
    } catch {
      map = null;
    }
    maps.set(f.url, map);
  }
  const entry = map?.findEntry(f.lineNumber, f.columnNumber ?? 0);
  if (entry === undefined || !("originalSource" in entry)) return f;
  return { functionName: f.functionName, url: new URL(entry.originalSource, f.url).href, lineNumber: entry.originalLine };
}

export function summarize(file: string, top = 25): ProfileSummary {
  const p = JSON.parse(readFileSync(file, "utf8")) as CpuProfile;
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const n of p.nodes) {
    n.callFrame = original(n.callFrame);
    byId.set(n.id, n);
    for (const c of n.children ?? []) parent.set(c, n.id);
  }
  const self = new Map<string, number>();
  const inclusive = new Map<string, number>();
  const areas = new Map<string, number>();
  let totalUs = 0;
  let busyUs = 0;
  for (let i = 0; i < p.samples.length; i++) {
    // A sample's time is the gap to the next sample.
    const us = p.timeDeltas[i + 1] ?? 0;
    const node = byId.get(p.samples[i]!)!;
    totalUs += us;
    if (IDLE.has(node.callFrame.functionName)) continue;
    busyUs += us;
    const add = (m: Map<string, number>, k: string) => m.set(k, (m.get(k) ?? 0) + us);
    add(self, label(node.callFrame));
    add(areas, area(node.callFrame));
    const onStack = new Set<string>();
    for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
      const f = byId.get(id)!.callFrame;
      if (IDLE.has(f.functionName)) continue;
      onStack.add(label(f));
    }
    for (const k of onStack) add(inclusive, k);
  }
  const rows = (m: Map<string, number>, n: number): Row[] =>
    [...m]
      .sort((a, b) => b[1] - a[1])
      .slice(0, n)
      .map(([name, us]) => ({ name, ms: Math.round(us / 1000), pct: Math.round((1000 * us) / Math.max(1, busyUs)) / 10 }));
  return { totalMs: Math.round(totalUs / 1000), busyMs: Math.round(busyUs / 1000), self: rows(self, top), inclusive: rows(inclusive, top), areas: rows(areas, 20) };
}

export function formatSummary(s: ProfileSummary): string {
  const table = (title: string, rows: readonly Row[]) => [title, ...rows.map((r) => `  ${String(r.ms).padStart(7)} ms ${r.pct.toFixed(1).padStart(5)}%  ${r.name}`)].join("\n");
  return [
    `profile: ${s.totalMs} ms sampled, ${s.busyMs} ms busy (percentages are of busy time)`,
    table("self time by area:", s.areas),
    table("top self time:", s.self),
    table("top inclusive time:", s.inclusive),
  ].join("\n");
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const args = process.argv.slice(2);
  const topAt = args.indexOf("--top");
  const file = args.find((a, i) => !a.startsWith("--") && !(topAt >= 0 && i === topAt + 1));
  if (file === undefined || args.includes("--help")) {
    process.stdout.write("Usage: node scripts/run.mjs bench/profile <file.cpuprofile> [--top N]\n");
    process.exit(file === undefined ? 2 : 0);
  }
  process.stdout.write(formatSummary(summarize(file, topAt >= 0 ? Number(args[topAt + 1]) : 30)) + "\n");
}
