/**
 * Durable group commit without blocking the event loop.
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
 */
import { closeSync, fstatSync, fsync, openSync, statSync } from "node:fs";

/** The file calls WalSync makes: node:fs, or a test's wrapper that sees which file each sync reaches. */
export interface WalIo {
  readonly stat: (path: string) => { readonly ino: number };
  readonly open: (path: string) => number;
  readonly fstat: (fd: number) => { readonly ino: number };
  readonly fsync: (fd: number, done: (err: NodeJS.ErrnoException | null) => void) => void;
  readonly close: (fd: number) => void;
}

export const NODE_WAL_IO: WalIo = {
  stat: (path) => statSync(path),
  open: (path) => openSync(path, "r+"),
  fstat: (fd) => fstatSync(fd),
  fsync: (fd, done) => fsync(fd, done),
  close: (fd) => closeSync(fd),
};

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

  /**
   * `walPath`: the database's `-wal` file. `onFailure`: a failed fsync means the disk may not
   * hold what was committed; the callbacks waiting for it are never called. `io`: node:fs unless
   * a test watches the calls. `onSynced`: hears how long each successful fsync took, in ms (metrics).
   */
  constructor(walPath: string, onFailure: (err: Error) => void, io: WalIo = NODE_WAL_IO, onSynced: (ms: number) => void = () => {}) {
    this.#path = walPath;
    this.#onFailure = onFailure;
    this.#io = io;
    this.#onSynced = onSynced;
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
