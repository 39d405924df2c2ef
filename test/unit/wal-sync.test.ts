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
import { Inbox, type Durability } from "../../src/service/inbox.ts";
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
