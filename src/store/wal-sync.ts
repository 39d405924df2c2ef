/**
 * Durable group commit, off the event loop whenever it has other work.
 *
 * With `synchronous = FULL`, SQLite fsyncs the WAL inside every COMMIT, and better-sqlite3 runs
 * COMMIT on the event loop: the broker stood still ~3 ms a commit waiting for the disk. The
 * broker's connection runs `synchronous = NORMAL` instead (a COMMIT writes the WAL but does not
 * sync it), and this class syncs the WAL file in libuv's thread pool. Nothing that depends on a
 * commit — an answer, a PUBACK, a CONNACK, a resend — may leave before `afterDurable` calls it
 * back, so no device ever hears of a write a power cut could still take back. A process crash
 * (SIGKILL) loses nothing either way: the written WAL is in the operating system's cache.
 *
 * One fsync covers every commit written before it started, so callbacks wait in order behind
 * at most one sync in flight and the next sync serves everyone who queued meanwhile.
 * Linux's fsync flushes the file, whichever descriptor wrote it; the WAL's inode is checked
 * before each sync in case SQLite ever replaced the file.
 *
 * At light load the handoff costs more than it saves: the fsync itself takes ~1 ms here, but
 * its callback waits for the event loop to come round to it (a batch, a GC pause), p99 10-25 ms
 * at 200 payments/s (docs/performance.md §Eighth session). So a caller with nothing else to do
 * may `syncNow()`: the sync runs on its thread, and what waited is released at once. Only while
 * recent syncs have been quick (`inlineMaxMs`): a slow disk would otherwise stall the loop; and
 * not back to back, so that inline syncs hold the loop at most about half of the time.
 */
import { closeSync, fstatSync, fsync, fsyncSync, openSync, statSync } from "node:fs";

/** The file calls WalSync makes: node:fs, or a test's wrapper that sees which file each sync reaches. */
export interface WalIo {
  readonly stat: (path: string) => { readonly ino: number };
  readonly open: (path: string) => number;
  readonly fstat: (fd: number) => { readonly ino: number };
  readonly fsync: (fd: number, done: (err: NodeJS.ErrnoException | null) => void) => void;
  readonly close: (fd: number) => void;
  /** The same sync on the caller's thread (syncNow); without it, syncNow never syncs inline. */
  readonly fsyncSync?: (fd: number) => void;
}

export const NODE_WAL_IO: WalIo = {
  stat: (path) => statSync(path),
  open: (path) => openSync(path, "r+"),
  fstat: (fd) => fstatSync(fd),
  fsync: (fd, done) => fsync(fd, done),
  close: (fd) => closeSync(fd),
  fsyncSync: (fd) => fsyncSync(fd),
};

/** syncNow syncs inline only while its recent syncs' average stays under this (ms)... */
export const INLINE_SYNC_MAX_MS = 2;
/** ...or, past it, once a second, to see whether the disk is quick again. */
export const INLINE_RETRY_MS = 1000;

/** When syncNow may sync on the caller's thread (defaults above; tests set their own). */
export interface InlineSyncBounds {
  readonly maxMs?: number;
  readonly retryMs?: number;
}

export class WalSync {
  readonly #path: string;
  readonly #onFailure: (err: Error) => void;
  readonly #io: WalIo;
  readonly #onSynced: (ms: number) => void;
  #fd: number | null = null;
  #ino = -1;
  /** Commits were written since the sync in flight (or the last one) started. */
  #dirty = false;
  #inFlight = false;
  /** Waiting for the sync in flight to end. */
  #current: (() => void)[] = [];
  /** Waiting for the next sync. */
  #next: (() => void)[] = [];
  #closed = false;
  #failed = false;
  /** Recent inline syncs' duration, a moving average (ms; -1 before the first): syncNow is for a quick disk only. */
  #inlineMs = -1;
  /** When the last inline sync ended (performance.now()). */
  #inlineEndedAt = -Infinity;
  readonly #inlineMaxMs: number;
  readonly #inlineRetryMs: number;

  /**
   * `walPath`: the database's `-wal` file. `onFailure`: a failed fsync means the disk may not
   * hold what was committed; the callbacks waiting for it are never called. `io`: node:fs unless
   * a test watches the calls. `onSynced`: hears how long each successful fsync took, in ms (metrics).
   */
  constructor(walPath: string, onFailure: (err: Error) => void, io: WalIo = NODE_WAL_IO, onSynced: (ms: number) => void = () => {}, inline: InlineSyncBounds = {}) {
    this.#path = walPath;
    this.#onFailure = onFailure;
    this.#io = io;
    this.#onSynced = onSynced;
    this.#inlineMaxMs = inline.maxMs ?? INLINE_SYNC_MAX_MS;
    this.#inlineRetryMs = inline.retryMs ?? INLINE_RETRY_MS;
  }

  /** An fsync failed: nothing committed since is released, ever (the broker is stopping). */
  get failed(): boolean {
    return this.#failed;
  }

  /** A transaction committed: the next `afterDurable` must wait for a sync. */
  committed(): void {
    this.#dirty = true;
  }

  /** Calls `fn` once every commit made so far is on disk (at once if nothing waits to be). */
  afterDurable(fn: () => void): void {
    if (this.#failed) return;
    if (this.#closed) return fn();
    if (this.#dirty) {
      this.#next.push(fn);
      if (!this.#inFlight) this.#start();
    } else if (this.#inFlight) {
      // Nothing new to sync, but what the sync in flight covers must not be overtaken.
      this.#current.push(fn);
    } else fn();
  }

  /**
   * Syncs on this thread, if there is a commit to sync and recent syncs were quick, and releases
   * everything waiting, in order (a sync in flight covers less than this one: what waits for it
   * is released too, and only once). Returns whether it synced. For a caller that has nothing
   * else to do meanwhile (the inbox after a small batch with none queued behind it).
   */
  syncNow(): boolean {
    if (this.#failed || this.#closed || !this.#dirty || this.#io.fsyncSync === undefined) return false;
    const startedMs = performance.now();
    // A slow disk: the syncs go to the thread pool, and one is tried here again a second after
    // the last (slow) inline one.
    const retry = this.#inlineMs > this.#inlineMaxMs;
    if (retry && startedMs < this.#inlineEndedAt + this.#inlineRetryMs) return false;
    // Back to back (the last one ended less than a sync ago): the loop has been waiting on the
    // disk half its time, so the pool takes this one and the next batch overlaps it.
    if (startedMs - this.#inlineEndedAt < this.#inlineMs) return false;
    try {
      this.#io.fsyncSync(this.#descriptor());
    } catch (err) {
      this.#fail(err as Error);
      return false;
    }
    this.#inlineEndedAt = performance.now();
    const ms = this.#inlineEndedAt - startedMs;
    this.#onSynced(ms);
    // A retry measures afresh: one quick sync is enough to say the disk is quick again.
    this.#inlineMs = retry || this.#inlineMs < 0 ? ms : this.#inlineMs + 0.2 * (ms - this.#inlineMs);
    this.#dirty = false;
    const waiting = this.#current.concat(this.#next);
    this.#current = [];
    this.#next = [];
    for (const fn of waiting) fn();
    return true;
  }

  /** Whether a sync is running or waiting: close only once this is false. */
  get busy(): boolean {
    return this.#inFlight || this.#next.length > 0;
  }

  /** Stops syncing; the descriptor closes once no sync uses it. */
  close(): void {
    this.#closed = true;
    if (!this.#inFlight) this.#closeFd();
  }

  #closeFd(): void {
    if (this.#fd !== null) this.#io.close(this.#fd);
    this.#fd = null;
  }

  #start(): void {
    let fd: number;
    try {
      fd = this.#descriptor();
    } catch (err) {
      this.#fail(err as Error);
      return;
    }
    this.#inFlight = true;
    this.#dirty = false;
    this.#current = this.#next;
    this.#next = [];
    const startedMs = performance.now();
    this.#io.fsync(fd, (err) => {
      this.#inFlight = false;
      if (!err) this.#onSynced(performance.now() - startedMs);
      if (this.#closed) this.#closeFd();
      const waiting = this.#current;
      this.#current = [];
      if (err) return this.#fail(err);
      for (const fn of waiting) fn();
      // Whoever waits for the next sync queued after a commit, so it has something to sync.
      if (this.#next.length > 0 && !this.#closed) this.#start();
    });
  }

  /** A descriptor of the WAL file as it is now (reopened if SQLite replaced the file). */
  #descriptor(): number {
    const ino = this.#io.stat(this.#path).ino;
    // (An open descriptor keeps its inode: the one read when it was opened is still its own.)
    if (this.#fd !== null && ino === this.#ino) return this.#fd;
    if (this.#fd !== null) this.#io.close(this.#fd);
    this.#fd = this.#io.open(this.#path);
    this.#ino = this.#io.fstat(this.#fd).ino;
    return this.#fd;
  }

  #fail(err: Error): void {
    // For good: after a failed fsync the kernel may have dropped the dirty pages, and a later
    // fsync can succeed without them ever reaching the disk. Nothing waiting is released again.
    this.#failed = true;
    this.#current = [];
    this.#next = [];
    this.#onFailure(err);
  }
}
