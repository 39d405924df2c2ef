/**
 * Durable group commit off the event loop (src/store/wal-sync.ts): nothing that depends on a
 * commit leaves before an fsync that began after it, callbacks keep their order, and a failed
 * sync releases nothing.
 */
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { keyPairFromSeed, Signer } from "../../src/crypto/ed25519.ts";
import { Inbox, type Durability } from "../../src/service/inbox.ts";
import { openDatabase } from "../../src/store/db.ts";
import { WalSync } from "../../src/store/wal-sync.ts";
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

describe("WalSync", () => {
  it("calls back after the sync, in order, with later commits waiting for a sync of their own", async () => {
    const failures: Error[] = [];
    const sync = new WalSync(walFile(), (err) => failures.push(err));
    const order: string[] = [];
    sync.committed();
    sync.afterDurable(() => order.push("a"));
    // Committed while the first sync runs: it needs the next one.
    sync.committed();
    sync.afterDurable(() => order.push("b"));
    sync.afterDurable(() => order.push("c"));
    expect(order).toEqual([]);
    expect(sync.busy).toBe(true);
    await until(() => order.length === 3);
    expect(order).toEqual(["a", "b", "c"]);
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
    sync.afterDurable(() => order.push("nothing new"));
    expect(order).toEqual([]);
    await until(() => order.length === 2);
    expect(order).toEqual(["committed", "nothing new"]);
    sync.close();
  });

  it("follows the file when it is replaced", async () => {
    const path = walFile();
    const sync = new WalSync(path, () => {});
    let n = 0;
    sync.committed();
    sync.afterDurable(() => n++);
    await until(() => n === 1);
    rmSync(path);
    writeFileSync(path, "new frames");
    sync.committed();
    sync.afterDurable(() => n++);
    await until(() => n === 2);
    sync.close();
  });

  it("reports a sync that cannot be made and releases nothing that waited for it", async () => {
    const failures: Error[] = [];
    const sync = new WalSync(join(walFile(), "..", "missing-wal"), (err) => failures.push(err));
    let called = false;
    sync.committed();
    sync.afterDurable(() => (called = true));
    await until(() => failures.length === 1);
    expect((failures[0] as NodeJS.ErrnoException).code).toBe("ENOENT");
    expect(called).toBe(false);
    sync.close();
  });

  it("stays failed: after a failed sync nothing is released again, even once a sync could succeed", async () => {
    const path = join(walFile(), "..", "comes-later-wal");
    const failures: Error[] = [];
    const sync = new WalSync(path, (err) => failures.push(err));
    sync.committed();
    sync.afterDurable(() => {});
    await until(() => failures.length === 1);
    writeFileSync(path, "frames");
    let called = false;
    sync.committed();
    sync.afterDurable(() => (called = true));
    sync.afterDurable(() => (called = true));
    await new Promise((r) => setTimeout(r, 50));
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
    const durable: Durability = { committed: () => void commits++, afterDurable: (fn) => void gate.push(fn) };
    const published: string[] = [];
    const inbox = new Inbox({ db, signer: new Signer(keyPairFromSeed(new Uint8Array(32).fill(9))), log: pino({ level: "silent" }), freshnessMs: 30_000, clock: () => 1_767_225_600_000, publish: (to) => published.push(to), durable });
    let ran: boolean | null = null;
    inbox.internal("test", (ctx) => ctx.send("device-1", "pong", { brokerTs: ctx.nowMs }), (committed) => (ran = committed));
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
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
    const inbox = new Inbox({ db, signer: new Signer(keyPairFromSeed(new Uint8Array(32).fill(9))), log: pino({ level: "silent" }), freshnessMs: 30_000, clock: () => 1_767_225_600_000, publish: (to) => published.push(to), durable: { committed: () => {}, afterDurable: () => {} } });
    inbox.internal("test", (ctx) => ctx.send("device-1", "pong", { brokerTs: ctx.nowMs }));
    let idle = false;
    void inbox.idle().then(() => (idle = true));
    await new Promise((r) => setTimeout(r, 20));
    expect(idle).toBe(false);
    inbox.abandon();
    await new Promise((r) => setImmediate(r));
    expect(idle).toBe(true);
    await inbox.idle();
    expect(published).toEqual([]);
    db.close();
  });
});

async function until(done: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!done()) {
    if (Date.now() > end) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 2));
  }
}
