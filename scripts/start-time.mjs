// How long `npm start` takes to print its "broker listening" line (docs/performance.md §Start-up).
//
//   node scripts/start-time.mjs [--runs N] [--dir D] [-- command ...]
//
// Starts the command (default: npm start) N times (default 10) in D (default: this checkout),
// each on a fresh temporary data dir, port 0 and TCP only, and measures from the spawn to the
// log line; then stops it (SIGINT to its process group) and waits for it to exit. Prints each
// time, then the median and the maximum. Plain JavaScript: no loader in the measuring process.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const { values, positionals } = parseArgs({
  options: { runs: { type: "string", default: "10" }, dir: { type: "string", default: fileURLToPath(new URL("..", import.meta.url)) } },
  allowPositionals: true,
});
const command = positionals.length > 0 ? positionals : ["npm", "start", "--"];
const FLAGS = ["--port", "0", "--tls-port", "off", "--ws-port", "off", "--wss-port", "off", "--metrics-port", "off", "--log-level", "info"];
const TIMEOUT_MS = 60_000;

function once() {
  const dir = mkdtempSync(join(tmpdir(), "hp-start-"));
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("HANDOFF_")));
  const t0 = performance.now();
  const child = spawn(command[0], [...command.slice(1), ...FLAGS, "--data-dir", join(dir, "data")], { cwd: values.dir, env, detached: true, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  return new Promise((resolve) => {
    let ms = null;
    const timer = setTimeout(() => process.kill(-child.pid, "SIGKILL"), TIMEOUT_MS);
    const onData = (d) => {
      out += d.toString();
      if (ms === null && out.includes("broker listening")) {
        ms = performance.now() - t0;
        process.kill(-child.pid, "SIGINT");
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("close", () => {
      clearTimeout(timer);
      rmSync(dir, { recursive: true, force: true });
      if (ms === null) process.stderr.write(`no listening line within ${TIMEOUT_MS / 1000} s:\n${out.slice(-2000)}\n`);
      resolve(ms);
    });
  });
}

const times = [];
for (let i = 0; i < Number(values.runs); i++) {
  const ms = await once();
  process.stdout.write(`run ${i + 1}: ${ms === null ? "hung" : `${Math.round(ms)} ms`}\n`);
  if (ms !== null) times.push(ms);
}
times.sort((a, b) => a - b);
const median = times.length === 0 ? NaN : times.length % 2 === 1 ? times[(times.length - 1) / 2] : (times[times.length / 2 - 1] + times[times.length / 2]) / 2;
process.stdout.write(`${command.join(" ")}: median ${Math.round(median)} ms, max ${Math.round(times.at(-1) ?? NaN)} ms, ${Number(values.runs) - times.length} of ${values.runs} without a listening line\n`);
