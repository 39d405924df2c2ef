/**
 * WAL checkpoints off the event loop.
 *
 * SQLite checkpoints automatically inside the COMMIT that takes the WAL past 1,000 pages: it
 * copies them into the database file and fsyncs it, on the broker's only thread (10-30 ms, the
 * slowest tenth of all commits at saturation: docs/performance.md). The broker's connection
 * instead checkpoints automatically only past `fallbackPages` (a safety net, should the worker
 * ever fall behind), and a worker thread with a connection of its own runs a PASSIVE
 * checkpoint every `everyMs`: it never blocks the broker's writes, and once it has copied every
 * frame, the broker's next write starts the WAL over from the beginning. Under steady load a
 * passive checkpoint never has copied every frame when it ends (the broker commits meanwhile),
 * so past 2,000 frames the worker asks for a RESTART checkpoint, which takes the write lock only
 * if it is free that instant (it never waits; the broker may wait a few ms for it) and makes the
 * next write start the WAL over; without it the WAL grew to `fallbackPages` and that checkpoint,
 * database fsync included, ran on the broker's thread every second or so (docs/performance.md).
 */
import { Worker } from "node:worker_threads";
import type { Logger } from "pino";
import type { Db } from "./db.ts";

export interface CheckpointerOptions {
  readonly everyMs?: number;
  readonly fallbackPages?: number;
}

interface Reply {
  readonly ok: boolean;
  readonly busy?: number;
  readonly log?: number;
  readonly checkpointed?: number;
  readonly message?: string;
  readonly code?: string;
}

export class Checkpointer {
  readonly #worker: Worker;
  readonly #timer: NodeJS.Timeout;
  readonly #log: Logger;
  #running = false;
  #closed = false;
  #failures = 0;
  /** Checkpoints finished, and the last one's result (for tests and diagnostics). */
  runs = 0;
  last: { log: number; checkpointed: number } | null = null;

  constructor(db: Db, log: Logger, options: CheckpointerOptions = {}) {
    this.#log = log;
    db.pragma(`wal_autocheckpoint = ${Math.trunc(options.fallbackPages ?? 10_000)}`);
    // No TypeScript loader in the worker: it is plain JavaScript, and starts faster without it.
    this.#worker = new Worker(new URL("./checkpoint-worker.mjs", import.meta.url), { workerData: { file: db.name }, execArgv: [] });
    this.#worker.unref();
    this.#worker.on("message", (reply: Reply) => this.#done(reply));
    this.#worker.on("error", (err) => {
      // Without the worker the broker's own connection still checkpoints, past fallbackPages.
      this.#log.error({ err: err.message }, "checkpoint worker failed; the broker checkpoints by itself from now on");
      this.#closed = true;
      clearInterval(this.#timer);
    });
    this.#timer = setInterval(() => this.#run(), options.everyMs ?? 100);
    this.#timer.unref();
  }

  /** Asks for a checkpoint now (if none is running). */
  #run(): void {
    if (this.#running || this.#closed) return;
    this.#running = true;
    this.#worker.postMessage("checkpoint");
  }

  #done(reply: Reply): void {
    this.#running = false;
    if (!reply.ok) {
      // A busy or failing checkpoint loses nothing: the frames stay in the WAL until the next one.
      if (this.#failures++ % 100 === 0) this.#log.warn({ err: reply.message, code: reply.code }, "checkpoint failed; will retry");
      return;
    }
    this.runs++;
    this.last = { log: reply.log ?? 0, checkpointed: reply.checkpointed ?? 0 };
  }

  /** Stops the worker (before the broker closes its own connection, which then checkpoints last). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#timer);
    const exited = new Promise<void>((resolve) => this.#worker.once("exit", () => resolve()));
    // Referenced again, or a process with nothing else left to do would exit before the worker.
    this.#worker.ref();
    this.#worker.postMessage("close");
    await exited;
  }
}
