/**
 * PostgreSQL behind the same seam as SQLite: a `Db` whose statements, transactions and
 * savepoints behave as better-sqlite3's do, so every repository and service runs unchanged on
 * either store (docs/operations.md §Several nodes).
 *
 * Synchronous on purpose. The services are synchronous functions inside one transaction per
 * batch (src/service/inbox.ts); on PostgreSQL each statement is sent to a worker thread that owns
 * the connection (the `pg` client, src/store/pg-worker.mjs), and the broker's thread waits for the
 * answer. The event loop stands still for that round trip (~0.1-0.2 ms on loopback), exactly as
 * it does for SQLite's own I/O; in exchange a handled message is the same code, with the same
 * atomicity, on both stores.
 *
 * One writer at a time, cluster-wide. Every transaction takes one advisory lock
 * (pg_advisory_xact_lock) right after BEGIN, so write transactions of all nodes run one after
 * another, as SQLite's BEGIN IMMEDIATE makes them on one node. That is what keeps every rule of
 * the single node true across nodes without a second proof: a connect token is used once, two
 * nodes cannot both move the same payment or agreement, a deadline fires its effect once, the
 * outbox sequence follows commit order (a device's resend cursor never skips a row), and the
 * audit log keeps one append order. Reads outside a transaction take no lock.
 *
 * COMMIT returns once PostgreSQL has flushed its WAL (synchronous_commit on, the default), so
 * nothing that depends on a commit can leave before it is durable.
 */
import { MessageChannel, receiveMessageOnPort, Worker, type MessagePort } from "node:worker_threads";

/** The advisory lock every transaction holds: one writer across the cluster. */
export const WRITE_LOCK = 0x4850_5052;
/** How long the broker's thread waits for one statement before it calls the store failed. */
const STATEMENT_WAIT_MS = 60_000;

export interface RunResult {
  readonly changes: number;
  readonly lastInsertRowid: number;
}

interface Answer {
  /** The request it answers (0: the worker's ready message). */
  readonly id: number;
  readonly ready?: boolean;
  readonly rows?: unknown[][];
  readonly fields?: string[];
  readonly n?: number;
  readonly error?: { message: string; code?: string; detail?: string; constraint?: string };
}

/**
 * A PostgreSQL error, or the connection's failure. `code` is `PG_` + the SQLSTATE (so it never
 * reads as a SQLite code), `sqlState` the bare SQLSTATE.
 */
export class PgError extends Error {
  readonly code: string;
  constructor(
    message: string,
    readonly sqlState: string,
    readonly constraint?: string,
  ) {
    super(message);
    this.name = "PgError";
    this.code = `PG_${sqlState}`;
  }
}

/**
 * SQLSTATE classes that mean the store itself failed (connection, resources, operator, system,
 * lock timeout, a transaction that cannot go on), not one handler's mistake: the whole batch fails.
 */
export function isPgStorageFault(code: string): boolean {
  return /^PG_(08|53|57|58|XX|40|25|55|HP)/.test(code);
}

/** `?` and `@name` placeholders (SQLite's) as `$n` (PostgreSQL's), outside string literals. */
export function toPgPlaceholders(sql: string): { text: string; names: string[] | null } {
  let out = "";
  let n = 0;
  const names: string[] = [];
  let named = false;
  for (let i = 0; i < sql.length; i++) {
    const c = sql[i]!;
    if (c === "'") {
      const end = sql.indexOf("'", i + 1);
      const stop = end === -1 ? sql.length : end + 1;
      out += sql.slice(i, stop);
      i = stop - 1;
    } else if (c === "?") {
      out += `$${++n}`;
    } else if (c === "@" && /[A-Za-z_]/.test(sql[i + 1] ?? "")) {
      const m = /^[A-Za-z_][A-Za-z0-9_]*/.exec(sql.slice(i + 1))![0];
      named = true;
      let k = names.indexOf(m);
      if (k === -1) k = names.push(m) - 1;
      out += `$${k + 1}`;
      i += m.length;
    } else out += c;
  }
  if (named && n > 0) throw new Error("a statement mixes ? and @name placeholders");
  return { text: out, names: named ? names : null };
}

type Mode = "rows" | "pluck" | "raw";

export class PgStatement {
  readonly #db: PgDatabase;
  readonly #text: string;
  readonly #names: string[] | null;
  #mode: Mode = "rows";
  readonly source: string;

  constructor(db: PgDatabase, sql: string) {
    this.#db = db;
    this.source = sql;
    const { text, names } = toPgPlaceholders(sql);
    this.#text = text;
    this.#names = names;
  }

  /** Rows as their first column's value (better-sqlite3's pluck). */
  pluck(on = true): this {
    this.#mode = on ? "pluck" : "rows";
    return this;
  }

  /** Rows as arrays (better-sqlite3's raw). */
  raw(on = true): this {
    this.#mode = on ? "raw" : "rows";
    return this;
  }

  run(...args: unknown[]): RunResult {
    const a = this.#db.query(this.#text, this.#params(args));
    return { changes: a.n ?? 0, lastInsertRowid: 0 };
  }

  get(...args: unknown[]): unknown {
    return this.#shape(this.#db.query(this.#text, this.#params(args)))[0];
  }

  all(...args: unknown[]): unknown[] {
    return this.#shape(this.#db.query(this.#text, this.#params(args)));
  }

  iterate(...args: unknown[]): IterableIterator<unknown> {
    return this.all(...args)[Symbol.iterator]();
  }

  #params(args: unknown[]): unknown[] {
    if (this.#names !== null) {
      const bag = (args[0] ?? {}) as Record<string, unknown>;
      return this.#names.map((k) => param(bag[k]));
    }
    const flat = args.length === 1 && Array.isArray(args[0]) ? (args[0] as unknown[]) : args;
    return flat.map(param);
  }

  #shape(a: Answer): unknown[] {
    const rows = a.rows ?? [];
    const fields = a.fields ?? [];
    if (this.#mode === "pluck") return rows.map((r) => value(r[0]));
    if (this.#mode === "raw") return rows.map((r) => r.map(value));
    return rows.map((r) => {
      const o: Record<string, unknown> = {};
      for (let i = 0; i < fields.length; i++) o[fields[i]!] = value(r[i]);
      return o;
    });
  }
}

function param(v: unknown): unknown {
  if (v === undefined) return null;
  if (typeof v === "bigint") return v.toString();
  if (typeof v === "boolean") throw new TypeError("booleans are not stored: use 0 or 1, as on SQLite");
  return v;
}

/** Bytes come back from the worker as Uint8Array: the services expect Buffers, as from SQLite. */
function value(v: unknown): unknown {
  return v instanceof Uint8Array && !Buffer.isBuffer(v) ? Buffer.from(v.buffer, v.byteOffset, v.byteLength) : v;
}

type TxFn<F extends (...args: never[]) => unknown> = F & { immediate: F; deferred: F; exclusive: F };

export interface PgOpenOptions {
  /** Shown in pg_stat_activity (which node holds a connection). */
  readonly applicationName?: string;
}

export class PgDatabase {
  readonly #worker: Worker;
  readonly #port: MessagePort;
  readonly #flag: Int32Array;
  #open = true;
  #depth = 0;
  /** Requests sent so far: the id of the last one. */
  #requests = 0;
  /** The URL without its password: what logs and errors may show. */
  readonly name: string;
  readonly readonly = false;
  readonly memory = false;

  constructor(url: string, options: PgOpenOptions = {}) {
    this.name = redactUrl(url);
    const signal = new SharedArrayBuffer(4);
    this.#flag = new Int32Array(signal);
    const { port1, port2 } = new MessageChannel();
    this.#port = port1;
    this.#worker = new Worker(new URL("./pg-worker.mjs", import.meta.url), {
      workerData: { signal, port: port2, url, applicationName: options.applicationName ?? "handoff-pay" },
      transferList: [port2],
      execArgv: [],
    });
    this.#worker.unref();
    const ready = this.#wait(0);
    if (ready.error !== undefined) {
      this.#stop();
      throw new PgError(`could not connect to PostgreSQL at ${this.name}: ${ready.error.message}`, ready.error.code ?? "08001");
    }
  }

  get open(): boolean {
    return this.#open;
  }

  get inTransaction(): boolean {
    return this.#depth > 0;
  }

  /** One statement (or, without params, several separated by `;`), waited for. */
  query(text: string, params?: unknown[]): Answer {
    if (!this.#open) throw new PgError("the database connection is closed", "HP000");
    const id = ++this.#requests;
    this.#port.postMessage({ id, sql: text, params, inTransaction: this.#depth > 0 });
    const a = this.#wait(id);
    if (a.error !== undefined) throw new PgError(a.error.message, a.error.code ?? "HP001", a.error.constraint);
    return a;
  }

  /**
   * Waits for the answer to request `id`. The flag says "look at the port"; the answer is taken by
   * its id, not by arrival, so a wake-up with nothing queued (seen once under heavy load: HP003
   * before this loop) waits again, and an answer to an earlier request, should one ever arrive
   * late, is dropped instead of being taken for this one's.
   */
  #wait(id: number): Answer {
    const deadline = performance.now() + STATEMENT_WAIT_MS;
    for (;;) {
      for (let m = receiveMessageOnPort(this.#port); m !== undefined; m = receiveMessageOnPort(this.#port)) {
        const a = m.message as Answer;
        if (a.id === id) return a;
      }
      const left = deadline - performance.now();
      const r = left > 0 ? Atomics.wait(this.#flag, 0, 0, left) : "timed-out";
      Atomics.store(this.#flag, 0, 0);
      if (r === "timed-out") {
        this.#stop();
        throw new PgError(`PostgreSQL did not answer within ${STATEMENT_WAIT_MS / 1000} s`, "HP002");
      }
    }
  }

  prepare(sql: string): PgStatement {
    return new PgStatement(this, sql);
  }

  exec(sql: string): this {
    this.query(sql);
    return this;
  }

  pragma(): never {
    throw new Error("pragma is SQLite's; this database is PostgreSQL");
  }

  /**
   * better-sqlite3's transaction(): the outermost call is BEGIN … COMMIT holding the write lock,
   * a nested call a savepoint; an exception rolls back its own level and is rethrown.
   */
  transaction<F extends (...args: never[]) => unknown>(fn: F): TxFn<F> {
    const run = ((...args: Parameters<F>) => {
      if (this.#depth === 0) {
        this.query(`BEGIN; SELECT pg_advisory_xact_lock(${WRITE_LOCK})`);
        this.#depth = 1;
        try {
          const result = fn(...args);
          this.query("COMMIT");
          return result;
        } catch (err) {
          if (this.#open) {
            try {
              this.query("ROLLBACK");
            } catch {
              // The connection is gone: PostgreSQL rolls back what it never saw committed.
            }
          }
          throw err;
        } finally {
          this.#depth = 0;
        }
      }
      const sp = `hp_sp${this.#depth}`;
      this.query(`SAVEPOINT ${sp}`);
      this.#depth++;
      try {
        const result = fn(...args);
        this.query(`RELEASE SAVEPOINT ${sp}`);
        return result;
      } catch (err) {
        try {
          this.query(`ROLLBACK TO SAVEPOINT ${sp}; RELEASE SAVEPOINT ${sp}`);
        } catch {
          // The outer level fails too and rolls everything back.
        }
        throw err;
      } finally {
        this.#depth--;
      }
    }) as unknown as TxFn<F>;
    run.immediate = run;
    run.deferred = run;
    run.exclusive = run;
    return run;
  }

  close(): this {
    if (!this.#open) return this;
    this.#open = false;
    this.#port.postMessage("close");
    // The worker ends its connection and exits by itself; terminate if it does not within 2 s.
    const t = setTimeout(() => void this.#worker.terminate(), 2000);
    t.unref();
    this.#worker.once("exit", () => clearTimeout(t));
    return this;
  }

  #stop(): void {
    this.#open = false;
    void this.#worker.terminate();
  }
}

/** postgres://user:secret@host/db → postgres://user@host/db, and so for redis:// (a password never reaches a log). */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    u.password = "";
    return u.toString();
  } catch {
    return "(unparsable URL)";
  }
}

/** Whether `--database` names PostgreSQL rather than the data dir's SQLite file. */
export function isPostgresUrl(s: string | undefined): s is string {
  return s !== undefined && /^postgres(ql)?:\/\//i.test(s);
}
