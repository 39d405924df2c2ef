/**
 * The broker as a child process, for the drivers that need one they can kill or watch
 * (chaos, abuse): the compiled broker, `node dist/broker/main.mjs`, exactly what `npm start` runs,
 * with the driver's flags only, its JSON log read line by line, and a free TCP port picked
 * beforehand. dist/ is built by `npm ci`, by `npm run test:chaos` / `test:abuse` when a source
 * changed (scripts/run.mjs), and by vitest's global setup (scripts/vitest-build.mjs).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createServer, type AddressInfo } from "node:net";
import { join } from "node:path";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { onJsonLines } from "./util.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const BROKER_MAIN = join(ROOT, "dist", "broker", "main.mjs");

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolvePort(port));
    });
  });
}

export interface Spawned {
  /** Resolves when the broker logs "broker listening"; rejects if it exits first. */
  readonly listening: Promise<Record<string, unknown>>;
  readonly exited: Promise<number | null>;
  readonly child: ChildProcess;
  /** Whether it had logged "broker listening" (so far). */
  listened: boolean;
  /** How it ended, once it has: exit code, or the signal that killed it. */
  exit: { code: number | null; signal: NodeJS.Signals | null } | null;
}

export class BrokerProcess {
  /** Error and fatal log lines of every run, and a start that failed. */
  readonly errors: string[] = [];
  /** Messages the outbox sent again on a device's reconnect, summed over the broker's log. */
  resent = 0;
  #current: Spawned | null = null;
  #stderrTail = "";

  /** `onLine` sees every JSON log line the broker writes on stdout. */
  constructor(
    readonly args: readonly string[],
    readonly onLine: (line: Record<string, unknown>) => void = () => {},
  ) {}

  /** The last 2,000 characters the broker wrote on stderr (an uncaught exception's stack lands here). */
  get stderrTail(): string {
    return this.#stderrTail;
  }

  spawn(): Spawned {
    // The broker's settings come from our flags only: HANDOFF_* from the caller's shell stay out.
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("HANDOFF_")));
    if (!existsSync(BROKER_MAIN)) throw new Error(`${BROKER_MAIN} is missing: build the programs with node scripts/build.mjs`);
    const child = spawn(process.execPath, ["--enable-source-maps", BROKER_MAIN, ...this.args], { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"] });
    let spawned: Spawned | null = null;
    const exited = new Promise<number | null>((r) =>
      child.once("exit", (code, signal) => {
        if (spawned !== null) spawned.exit = { code, signal };
        r(code);
      }),
    );
    const listening = new Promise<Record<string, unknown>>((resolveListening, reject) => {
      onJsonLines(child.stdout!, (obj) => {
        if (String(obj.msg).startsWith("broker listening")) {
          if (spawned !== null) spawned.listened = true;
          resolveListening(obj);
        }
        if (obj.msg === "resent undelivered messages" && typeof obj.resent === "number") this.resent += obj.resent;
        if (typeof obj.level === "number" && obj.level >= 50) this.errors.push(`${String(obj.msg)} ${JSON.stringify(obj.err ?? obj.code ?? "")}`);
        this.onLine(obj);
      });
      child.stderr!.on("data", (d: Buffer) => {
        this.#stderrTail = (this.#stderrTail + d.toString()).slice(-2000);
      });
      void exited.then((code) => reject(new Error(`broker exited (${code ?? "killed"}) before it listened${this.#stderrTail ? `: ${this.#stderrTail.trim()}` : ""}`)));
    });
    listening.catch(() => {}); // a kill during start is expected; callers that wait see the rejection
    spawned = { listening, exited, child, listened: false, exit: null };
    this.#current = spawned;
    return spawned;
  }

  get current(): Spawned | null {
    return this.#current;
  }

  /** Waits until the current run listens; false if it exited (or was never started) first. */
  async listening(): Promise<boolean> {
    const c = this.#current;
    if (c === null) return false;
    return c.listening.then(
      () => true,
      () => false,
    );
  }

  /** SIGKILL: no cleanup of any kind, as a power cut or the OOM killer would do it. */
  async kill(): Promise<void> {
    const c = this.#current;
    if (c === null) return;
    if (c.exit === null) c.child.kill("SIGKILL");
    await c.exited;
    this.#current = null;
  }

  /** SIGTERM and wait; the exit code (0 after a clean stop). */
  async stop(): Promise<number | null> {
    const c = this.#current;
    if (c === null) return null;
    if (c.exit === null) c.child.kill("SIGTERM");
    const timer = setTimeout(() => c.child.kill("SIGKILL"), 20_000);
    const code = await c.exited;
    clearTimeout(timer);
    this.#current = null;
    return code;
  }
}
