// `npm run bench`: runs bench/run.ts under tsx, and starts it again if it falls silent. Node 20's
// off-thread module loader (which tsx uses) can deadlock on a module load: at start-up, before
// any of our code runs, or at the first use of a lazily loaded module (better-sqlite3 loads its
// addon on the first `new Database`): about once in 15-20 runs here (docs/performance.md §Known
// problem). The bench writes a heartbeat byte to fd 3 with every progress line (at least every
// few seconds), so silence there means that hang. Its stdout and stderr go straight to yours,
// untouched and in order (the last stdout line is the JSON). This file is plain JavaScript, so
// the loader cannot hang it.
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const STARTUP_MS = 30_000; // the bench prints its first line within a second
const SILENCE_MS = 90_000; // and then a progress line at least every few seconds
const TRIES = 3;

function runOnce() {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ["--import", "tsx", "bench/run.ts", ...process.argv.slice(2)], {
      cwd: ROOT,
      stdio: ["inherit", "inherit", "inherit", "pipe"],
      env: { ...process.env, BENCH_HEARTBEAT_FD: "3" },
    });
    let started = false;
    let hung = false;
    const hang = () => {
      hung = true;
      child.kill("SIGKILL"); // a thread blocked in the loader ignores SIGTERM
    };
    let timer = setTimeout(hang, STARTUP_MS);
    child.stdio[3].on("data", () => {
      started = true;
      clearTimeout(timer);
      timer = setTimeout(hang, SILENCE_MS);
    });
    const forward = (signal) => child.kill(signal);
    process.on("SIGINT", forward);
    process.on("SIGTERM", forward);
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      process.off("SIGINT", forward);
      process.off("SIGTERM", forward);
      if (hung && signal === "SIGKILL") resolve(started ? "silent" : "hung");
      else resolve(code ?? (signal === "SIGINT" ? 130 : 1));
    });
  });
}

for (let attempt = 1; ; attempt++) {
  const result = await runOnce();
  if (typeof result === "number") process.exit(result);
  if (attempt >= TRIES) {
    process.stderr.write(`bench: the TypeScript loader hung ${TRIES} times in a row; giving up\n`);
    process.exit(1);
  }
  const what = result === "hung" ? `no progress ${STARTUP_MS / 1000} s after start` : `no progress for ${SILENCE_MS / 1000} s`;
  process.stderr.write(`bench: ${what}: the TypeScript loader hung (a known Node 20 deadlock); starting the whole run again\n`);
}
