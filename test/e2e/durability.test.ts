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
    let stopped!: (err: Error) => void;
    // onFatal runs once the broker has closed: from then on it can send nothing.
    const fatal = new Promise<Error>((resolve) => (stopped = resolve));
    broker = await startTestBroker({}, dataDir, (err) => stopped(err));
    const device = await broker.device(broker.register("terminal"));
    // The broker's connection leaves the WAL's sync to the broker (synchronous = NORMAL).
    expect(broker.db.pragma("synchronous", { simple: true })).toBe(1);
    expect((await device.call("ping", { echo: "synced" })).body.echo).toBe("synced");

    // The WAL file disappears from under the broker: the next sync cannot be made.
    rmSync(join(dataDir, "handoff.db-wal"));
    const answer = device.request("ping", { echo: "never synced" }, 60_000).then(
      () => "answered",
      (err: Error) => err.message,
    );
    expect(((await fatal) as NodeJS.ErrnoException).code).toBe("ENOENT");
    // The device has read everything the broker sent before it closed (the close comes last on
    // the connection); closing it then settles the request that is still waiting.
    await expect.poll(() => device.connected, { timeout: 10_000 }).toBe(false);
    await device.close();
    // The answer was committed but never synced: it never reached the device.
    expect(await answer).toBe("device closed");
  });
});
