/**
 * Nothing leaves the broker before the commit it depends on is on disk (docs/operations.md
 * §Durability), and a sync that fails stops the broker instead of answering.
 */
import { rmSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { startTestBroker, tempDir, type TestBroker } from "../helpers.ts";

describe("durability", () => {
  let broker: TestBroker | null = null;
  let dataDir: string | null = null;
  afterEach(async () => {
    await broker?.stop({ keepData: true }).catch(() => {});
    if (dataDir !== null) rmSync(dataDir, { recursive: true, force: true });
    broker = null;
    dataDir = null;
  });

  it("answers only after the commit is synced, and stops without answering when the sync fails", async () => {
    dataDir = tempDir();
    let fatal: Error | null = null;
    broker = await startTestBroker({}, dataDir, (err) => (fatal = err));
    const device = await broker.device(broker.register("terminal"));
    // The broker's connection leaves the WAL's sync to the broker (synchronous = NORMAL).
    expect(broker.db.pragma("synchronous", { simple: true })).toBe(1);
    expect((await device.call("ping", { echo: "synced" })).body.echo).toBe("synced");

    // The WAL file disappears from under the broker: the next sync cannot be made.
    rmSync(join(dataDir, "handoff.db-wal"));
    const answer = device.request("ping", { echo: "never synced" }, 3000).then(
      () => "answered",
      (err: Error) => err.message,
    );
    const end = Date.now() + 5000;
    while (fatal === null && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    expect((fatal as NodeJS.ErrnoException | null)?.code).toBe("ENOENT");
    // The answer was committed but never synced: it never reached the device.
    expect(await answer).not.toBe("answered");
  });
});
