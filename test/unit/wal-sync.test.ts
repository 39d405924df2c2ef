/**
 * Durable group commit off the event loop (src/store/wal-sync.ts): nothing that depends on a
 * commit leaves before an fsync that began after it, callbacks keep their order, and a failed
 * sync releases nothing.
 */
import { rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { keyPairFromSeed, Signer } from "../../src/crypto/ed25519.ts";
import { Inbox, INLINE_SYNC_MAX_BATCH, type Durability } from "../../src/service/inbox.ts";
import { openDatabase } from "../../src/store/db.ts";
import { NODE_WAL_IO, WalSync, type WalIo } from "../../src/store/wal-sync.ts";
import { tempDir } from "../helpers.ts";

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function walFile(): string {
  const dir = tempDir("hp-walsync-");
  dirs.push(dir);
  const path = join(dir, "handoff.db-wal");
  writeFileSync(path, "frames");
  return path;
}

/**
 * node:fs, watched: the inode each fsync reached (an fsync of a replaced, unlinked file succeeds
 * on Linux, so only this tells which file was synced), the descriptors still open, and every
 * fsync issued so far to wait for.
 */
function watchedIo(): { io: WalIo; syncedInodes: number[]; openFds: Set<number>; syncsSettled: () => Promise<unknown> } {
  const syncedInodes: number[] = [];
  const openFds = new Set<number>();
  const syncs: Promise<void>[] = [];
  const io: WalIo = {
    ...NODE_WAL_IO,
    open: (path) => {
      const fd = NODE_WAL_IO.open(path);
      openFds.add(fd);
      return fd;
    },
    close: (fd) => {
      openFds.delete(fd);
      NODE_WAL_IO.close(fd);
    },
    fsync: (fd, done) => {
      syncedInodes.push(NODE_WAL_IO.fstat(fd).ino);
      syncs.push(new Promise((resolve) => NODE_WAL_IO.fsync(fd, (err) => (done(err), resolve()))));
    },
  };
  return { io, syncedInodes, openFds, syncsSettled: () => Promise.all(syncs) };
}

/** Resolves once every commit made so far is durable: the sync point these tests wait on. */
const durable = (sync: WalSync) => new Promise<void>((resolve) => sync.afterDurable(resolve));

describe("WalSync", () => {
  it("calls back after the sync, in order, with later commits waiting for a sync of their own", async () => {
    const failures: Error[] = [];
    const { io, syncedInodes } = watchedIo();
    const sync = new WalSync(walFile(), (err) => failures.push(err), io);
    const order: string[] = [];
    sync.committed();
    sync.afterDurable(() => order.push("a"));
    // Committed while the first sync runs: it needs the next one.
    sync.committed();
    sync.afterDurable(() => order.push("b"));
    const last = new Promise<void>((resolve) => sync.afterDurable(() => (order.push("c"), resolve())));
    expect(order).toEqual([]);
    expect(sync.busy).toBe(true);
    expect(syncedInodes).toHaveLength(1);
    await last;
    expect(order).toEqual(["a", "b", "c"]);
    // "b" and "c" were released by a second sync, begun after their commit.
    expect(syncedInodes).toHaveLength(2);
    expect(sync.busy).toBe(false);
    expect(failures).toEqual([]);
    sync.close();
  });

  it("calls back at once when nothing was committed since the last sync and none runs", () => {
    const sync = new WalSync(walFile(), () => {});
    let called = false;
    sync.afterDurable(() => (called = true));
    expect(called).toBe(true);
    sync.close();
  });

  it("keeps a caller with nothing to sync behind the sync in flight, so it cannot overtake it", async () => {
    const sync = new WalSync(walFile(), () => {});
    const order: string[] = [];
    sync.committed();
    sync.afterDurable(() => order.push("committed"));
    const last = new Promise<void>((resolve) => sync.afterDurable(() => (order.push("nothing new"), resolve())));
    expect(order).toEqual([]);
    await last;
    expect(order).toEqual(["committed", "nothing new"]);
    sync.close();
  });

  it("follows the file when it is replaced", async () => {
    const path = walFile();
    const { io, syncedInodes, openFds } = watchedIo();
    const sync = new WalSync(path, () => {}, io);
    const oldInode = statSync(path).ino;
    sync.committed();
    await durable(sync);
    expect(syncedInodes).toEqual([oldInode]);

    rmSync(path);
    writeFileSync(path, "new frames");
    const newInode = statSync(path).ino;
    // WalSync still holds the old file open, so the new one cannot reuse its inode.
    expect(newInode).not.toBe(oldInode);
    sync.committed();
    await durable(sync);
    // The second sync reached the new file, and the old file's descriptor was closed.
    expect(syncedInodes).toEqual([oldInode, newInode]);
    expect(openFds.size).toBe(1);
    sync.close();
    expect(openFds.size).toBe(0);
  });

  it("reports a sync that cannot be made and releases nothing that waited for it", async () => {
    let failed!: (err: Error) => void;
    const failure = new Promise<Error>((resolve) => (failed = resolve));
    const sync = new WalSync(join(walFile(), "..", "missing-wal"), (err) => failed(err));
    let called = false;
    sync.committed();
    sync.afterDurable(() => (called = true));
    expect(((await failure) as NodeJS.ErrnoException).code).toBe("ENOENT");
    expect(called).toBe(false);
    sync.close();
  });

  it("stays failed: after a failed sync nothing is released again, even once a sync could succeed", async () => {
    const path = join(walFile(), "..", "comes-later-wal");
    const failures: Error[] = [];
    const { io, syncedInodes, syncsSettled } = watchedIo();
    const sync = new WalSync(path, (err) => failures.push(err), io);
    sync.committed();
    sync.afterDurable(() => {});
    expect(failures).toHaveLength(1);
    writeFileSync(path, "frames");
    let called = false;
    sync.committed();
    sync.afterDurable(() => (called = true));
    sync.afterDurable(() => (called = true));
    // Whatever sync was started has ended: only its end could have released a caller.
    await syncsSettled();
    await new Promise((r) => setImmediate(r));
    expect(syncedInodes).toEqual([]);
    expect(called).toBe(false);
    expect(failures).toHaveLength(1);
    sync.close();
  });
});

/**
 * node:fs with the thread pool's fsync held until `release()`, and every inline fsync counted;
 * `slowMs` makes each inline fsync take at least that long, `fail` makes it throw.
 */
function heldIo(): { io: WalIo; inline: () => number; release: () => void; slowMs: number; fail: boolean; log: string[] } {
  const held: (() => void)[] = [];
  let inline = 0;
  const state = {
    log: [] as string[],
    io: undefined as unknown as WalIo,
    inline: () => inline,
    release: () => {
      for (const go of held.splice(0)) go();
    },
    slowMs: 0,
    fail: false,
  };
  state.io = {
    ...NODE_WAL_IO,
    fsync: (fd, done) => void held.push(() => NODE_WAL_IO.fsync(fd, done)),
    fsyncSync: (fd) => {
      inline++;
      state.log.push("fsync");
      if (state.fail) throw Object.assign(new Error("EIO: i/o error, fsync"), { code: "EIO" });
      const until = performance.now() + state.slowMs;
      NODE_WAL_IO.fsyncSync!(fd);
      while (performance.now() < until);
    },
  };
  return state;
}

describe("WalSync.syncNow (a sync on the caller's thread, at light load)", () => {
  it("syncs before releasing anything, then releases what waited for the sync in flight and what came after, in order and once each", async () => {
    const h = heldIo();
    const sync = new WalSync(walFile(), () => {}, h.io);
    const order = h.log;
    sync.committed();
    sync.afterDurable(() => order.push("a"));
    // "a" waits on a pool sync that does not end; "b" was committed after it began.
    sync.committed();
    sync.afterDurable(() => order.push("b"));
    expect(order).toEqual([]);
    expect(h.inline()).toBe(0);
    expect(sync.syncNow()).toBe(true);
    // The sync came first: nothing was released before it.
    expect(order).toEqual(["fsync", "a", "b"]);
    // Nothing new since: a later caller is behind the pool's sync still in flight, not released twice.
    const late = new Promise<void>((resolve) => sync.afterDurable(() => (order.push("c"), resolve())));
    h.release();
    await late;
    await new Promise((r) => setImmediate(r));
    expect(order).toEqual(["fsync", "a", "b", "c"]);
    sync.close();
  });

  it("does nothing when nothing was committed since the last sync", () => {
    const h = heldIo();
    const sync = new WalSync(walFile(), () => {}, h.io);
    expect(sync.syncNow()).toBe(false);
    expect(h.inline()).toBe(0);
    sync.committed();
    expect(sync.syncNow()).toBe(true);
    expect(sync.syncNow()).toBe(false);
    expect(h.inline()).toBe(1);
    sync.close();
  });

  it("leaves the syncs to the thread pool while the disk is slow, and takes them back once one quick sync a retry later shows it is quick again", async () => {
    const h = heldIo();
    const sync = new WalSync(walFile(), () => {}, h.io, () => {}, { maxMs: 2, retryMs: 50 });
    h.slowMs = 6;
    sync.committed();
    expect(sync.syncNow()).toBe(true);
    // Slow: the next commit is not synced inline; it waits for the pool.
    sync.committed();
    expect(sync.syncNow()).toBe(false);
    expect(h.inline()).toBe(1);
    let released = false;
    sync.afterDurable(() => (released = true));
    expect(released).toBe(false);
    h.release();
    await new Promise((r) => setTimeout(r, 60));
    expect(released).toBe(true);
    // A retry after retryMs measures the disk again: quick now, so inline syncs are back.
    h.slowMs = 0;
    sync.committed();
    expect(sync.syncNow()).toBe(true);
    await new Promise((r) => setTimeout(r, 5));
    sync.committed();
    expect(sync.syncNow()).toBe(true);
    expect(h.inline()).toBe(3);
    sync.close();
  });

  it("does not sync inline back to back: within one sync's time of the last, the pool takes it", async () => {
    const h = heldIo();
    const sync = new WalSync(walFile(), () => {}, h.io, () => {}, { maxMs: 1000 });
    h.slowMs = 20;
    sync.committed();
    expect(sync.syncNow()).toBe(true);
    // At once after a 20 ms inline sync: refused, so the loop is not held by the disk all the time.
    sync.committed();
    expect(sync.syncNow()).toBe(false);
    expect(h.inline()).toBe(1);
    await new Promise((r) => setTimeout(r, 30));
    // A sync's time later it may again.
    expect(sync.syncNow()).toBe(true);
    expect(h.inline()).toBe(2);
    h.release();
    sync.close();
  });

  it("reports a failed inline sync and releases nothing that waited, then or later", async () => {
    const h = heldIo();
    const failures: Error[] = [];
    const sync = new WalSync(walFile(), (err) => failures.push(err), h.io);
    const called: string[] = [];
    sync.committed();
    sync.afterDurable(() => called.push("in flight"));
    sync.committed();
    sync.afterDurable(() => called.push("next"));
    h.fail = true;
    expect(sync.syncNow()).toBe(false);
    expect(failures.map((e) => (e as NodeJS.ErrnoException).code)).toEqual(["EIO"]);
    // Even the pool's sync, which began before, no longer releases anything.
    h.release();
    await new Promise((r) => setTimeout(r, 20));
    h.fail = false;
    sync.committed();
    expect(sync.syncNow()).toBe(false);
    sync.afterDurable(() => called.push("later"));
    expect(called).toEqual([]);
    expect(failures).toHaveLength(1);
    sync.close();
  });
});

describe("Inbox with a durability gate", () => {
  it("publishes what a batch sent, and says it ran, only once its commit is durable", async () => {
    const db = openDatabase(":memory:");
    const gate: (() => void)[] = [];
    let commits = 0;
    let gated!: () => void;
    const waitsForDisk = new Promise<void>((resolve) => (gated = resolve));
    const durable: Durability = { committed: () => void commits++, afterDurable: (fn) => void (gate.push(fn), gated()) };
    const published: string[] = [];
    const inbox = new Inbox({ db, signer: new Signer(keyPairFromSeed(new Uint8Array(32).fill(9))), log: pino({ level: "silent" }), freshnessMs: 30_000, clock: () => 1_767_225_600_000, publish: (to) => published.push(to), durable });
    let ran: boolean | null = null;
    inbox.internal("test", (ctx) => ctx.send("device-1", "pong", { brokerTs: ctx.nowMs }), (committed) => (ran = committed));
    await waitsForDisk;
    // Committed, written to the outbox, but not yet on disk: nothing has left.
    expect(commits).toBe(1);
    expect((db.prepare("SELECT count(*) AS n FROM outbox").get() as { n: number }).n).toBe(1);
    expect(published).toEqual([]);
    expect(ran).toBeNull();
    const idle = inbox.idle();
    for (const fn of gate.splice(0)) fn();
    await idle;
    expect(published).toEqual(["device-1"]);
    expect(ran).toBe(true);
    db.close();
  });
});

describe("Inbox abandoned after a failed sync", () => {
  it("resolves idle() at once, so the broker can stop without the answers that will never leave", async () => {
    const db = openDatabase(":memory:");
    const published: string[] = [];
    let parked!: () => void;
    const waitsForDisk = new Promise<void>((resolve) => (parked = resolve));
    // The sync never ends: the answer waits for it for ever.
    const durable: Durability = { committed: () => {}, afterDurable: () => parked() };
    const inbox = new Inbox({ db, signer: new Signer(keyPairFromSeed(new Uint8Array(32).fill(9))), log: pino({ level: "silent" }), freshnessMs: 30_000, clock: () => 1_767_225_600_000, publish: (to) => published.push(to), durable });
    inbox.internal("test", (ctx) => ctx.send("device-1", "pong", { brokerTs: ctx.nowMs }));
    let idle = false;
    void inbox.idle().then(() => (idle = true));
    await waitsForDisk;
    await new Promise((r) => setImmediate(r));
    expect(idle).toBe(false);
    inbox.abandon();
    await new Promise((r) => setImmediate(r));
    expect(idle).toBe(true);
    await inbox.idle();
    expect(published).toEqual([]);
    db.close();
  });
});

describe("Inbox syncing a small batch itself", () => {
  function inboxWith(durable: Durability, published: string[]) {
    const db = openDatabase(":memory:");
    const inbox = new Inbox({ db, signer: new Signer(keyPairFromSeed(new Uint8Array(32).fill(9))), log: pino({ level: "silent" }), freshnessMs: 30_000, clock: () => 1_767_225_600_000, publish: (to) => published.push(to), durable });
    return { db, inbox };
  }

  it("syncs at once after a batch of at most INLINE_SYNC_MAX_BATCH with nothing queued behind it, and leaves a larger one to the pool", async () => {
    const calls: string[] = [];
    const gate: (() => void)[] = [];
    let dirty = false;
    const durable: Durability = {
      committed: () => void (dirty = true),
      afterDurable: (fn) => (dirty ? gate.push(fn) : fn()),
      syncNow: () => {
        calls.push("syncNow");
        if (!dirty) return false;
        dirty = false;
        for (const fn of gate.splice(0)) fn();
        return true;
      },
    };
    const published: string[] = [];
    const { db, inbox } = inboxWith(durable, published);
    for (let i = 0; i < INLINE_SYNC_MAX_BATCH; i++) inbox.internal("small", (ctx) => ctx.send(`small-${i}`, "pong", { brokerTs: ctx.nowMs }));
    await inbox.idle();
    // Synced by the inbox itself: published without anyone releasing the gate.
    expect(calls).toEqual(["syncNow"]);
    expect(published.sort()).toEqual(Array.from({ length: INLINE_SYNC_MAX_BATCH }, (_, i) => `small-${i}`));

    published.length = 0;
    calls.length = 0;
    for (let i = 0; i <= INLINE_SYNC_MAX_BATCH; i++) inbox.internal("large", (ctx) => ctx.send(`large-${i}`, "pong", { brokerTs: ctx.nowMs }));
    const idle = inbox.idle();
    await new Promise((r) => setTimeout(r, 20));
    // One more than that: the batch's answers wait for the pool's sync, as under load.
    expect(calls).toEqual([]);
    expect(published).toEqual([]);
    dirty = false;
    for (const fn of gate.splice(0)) fn();
    await idle;
    expect(published).toHaveLength(INLINE_SYNC_MAX_BATCH + 1);
    db.close();
  });
});
