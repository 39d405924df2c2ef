// `npm run bench`: runs bench/run.ts under tsx, and starts it again if it hangs before its first
// line of output. Node 20's off-thread module loader (which tsx uses) can deadlock at start-up,
// before any of our code runs: about once in 15-20 starts here (docs/performance.md §Known
// problem). This file is plain JavaScript, so the loader cannot hang it.
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const STARTUP_MS = 30_000; // the bench prints its first line within a second
const TRIES = 3;

function runOnce() {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ["--import", "tsx", "bench/run.ts", ...process.argv.slice(2)], { cwd: ROOT, stdio: ["inherit", "pipe", "pipe"] });
    let started = false;
    const timer = setTimeout(() => {
      if (!started) child.kill("SIGKILL"); // a thread blocked in the loader ignores SIGTERM
    }, STARTUP_MS);
    const onData = (out) => (chunk) => {
      if (!started) {
        started = true;
        clearTimeout(timer);
      }
      out.write(chunk);
    };
    child.stdout.on("data", onData(process.stdout));
    child.stderr.on("data", onData(process.stderr));
    const forward = (signal) => child.kill(signal);
    process.on("SIGINT", forward);
    process.on("SIGTERM", forward);
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      process.off("SIGINT", forward);
      process.off("SIGTERM", forward);
      if (!started && signal === "SIGKILL") resolve("hung");
      else resolve(code ?? (signal === "SIGINT" ? 130 : 1));
    });
  });
}

for (let attempt = 1; ; attempt++) {
  const result = await runOnce();
  if (result !== "hung") process.exit(result);
  if (attempt >= TRIES) {
    process.stderr.write(`bench: the TypeScript loader hung at start-up ${TRIES} times in a row; giving up\n`);
    process.exit(1);
  }
  process.stderr.write(`bench: no output ${STARTUP_MS / 1000} s after start: the TypeScript loader hung (a known Node 20 deadlock); starting again\n`);
}
