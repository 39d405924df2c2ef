/**
 * The data dir holds prompts, amounts, names and keys: only the broker's user may read it
 * (docs/operations.md §The data dir). The broker makes its files 0600 and its dir 0700, tightens
 * a looser dir or file it finds at start and says so in its log, and refuses a dir that another
 * user owns. The umask is set to the common 022 for these tests, so that a file created with
 * default permissions shows up as 0644.
 */
import { chmodSync, chownSync, existsSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import pino from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { adminMain } from "../../broker/admin.ts";
import { DataDirError } from "../../broker/data-dir.ts";
import { startTestBroker, tempDir, type TestBroker } from "../helpers.ts";

const SECRET_FILES = ["handoff.db", "handoff.db-wal", "handoff.db-shm", "broker.lock", "broker.key", "master.key"];

/** A file's permission bits in octal, as `ls -l` and chmod spell them: "600". */
const modeOf = (path: string) => (statSync(path).mode & 0o777).toString(8);

/** A pino logger that keeps every line it writes, parsed. */
function capturedLog(): { log: pino.Logger; lines: { level: number; msg: string; [k: string]: unknown }[] } {
  const lines: { level: number; msg: string }[] = [];
  const log = pino({ level: "info" }, { write: (line: string) => lines.push(JSON.parse(line) as { level: number; msg: string }) });
  return { log, lines };
}

const WARN = 40;

describe("data dir and file modes", () => {
  let previousUmask: number;
  let broker: TestBroker | null = null;
  const dirs: string[] = [];
  beforeAll(() => {
    previousUmask = process.umask(0o022);
  });
  afterAll(() => {
    process.umask(previousUmask);
  });
  afterEach(async () => {
    await broker?.stop();
    broker = null;
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  function newParent(): string {
    const d = tempDir("hp-mode-");
    dirs.push(d);
    return d;
  }

  it("creates a new data dir 0700 and every data file 0600, and warns about nothing", async () => {
    const dataDir = join(newParent(), "data");
    const { log, lines } = capturedLog();
    broker = await startTestBroker({}, dataDir, undefined, { log });
    // A write, so that the WAL and its index certainly exist.
    broker.register("terminal");
    expect(modeOf(dataDir)).toBe("700");
    for (const f of SECRET_FILES) expect([f, modeOf(join(dataDir, f))]).toEqual([f, "600"]);
    expect(modeOf(join(dataDir, "broker.pub"))).toBe("644");
    expect(lines.filter((l) => l.level >= WARN)).toEqual([]);
  });

  it("tightens an existing 0755 dir to 0700 and 0644 data files to 0600, and logs each change", async () => {
    const dataDir = join(newParent(), "data");
    broker = await startTestBroker({}, dataDir);
    await broker.stop({ keepData: true });
    broker = null;
    chmodSync(dataDir, 0o755);
    for (const f of SECRET_FILES) {
      const path = join(dataDir, f);
      // The WAL and its index go when the last connection closes; empty ones are valid for SQLite.
      if (!existsSync(path)) writeFileSync(path, "");
      chmodSync(path, 0o644);
    }

    const { log, lines } = capturedLog();
    broker = await startTestBroker({}, dataDir, undefined, { log });
    broker.register("terminal");
    expect(modeOf(dataDir)).toBe("700");
    for (const f of SECRET_FILES) expect([f, modeOf(join(dataDir, f))]).toEqual([f, "600"]);

    const warnings = lines.filter((l) => l.level === WARN).map((l) => l.msg);
    expect(warnings).toContainEqual(expect.stringMatching(new RegExp(`data dir ${dataDir}.*755.*700`)));
    for (const f of SECRET_FILES) expect(warnings).toContainEqual(expect.stringMatching(new RegExp(`${join(dataDir, f)}.*644.*600`)));
    expect(warnings).toHaveLength(1 + SECRET_FILES.length);
  });

  it("has the admin tool create a new data dir 0700 and its database and key file 0600", async () => {
    const dataDir = join(newParent(), "data");
    expect(await adminMain(["device", "list", "--data-dir", dataDir], () => {})).toBe(0);
    expect(modeOf(dataDir)).toBe("700");
    for (const f of ["handoff.db", "master.key"]) expect([f, modeOf(join(dataDir, f))]).toEqual([f, "600"]);
  });

  it("refuses a data dir that another user owns, and says what to do", async () => {
    const parent = newParent();
    let dataDir = "/";
    if (process.getuid?.() === 0) {
      dataDir = join(parent, "data");
      await startTestBroker({}, dataDir).then((b) => b.stop({ keepData: true }));
      chownSync(dataDir, 65534, 65534);
    }
    const { log } = capturedLog();
    // Kept for afterEach if it wrongly starts.
    const started = startTestBroker({}, dataDir, undefined, { log }).then((b) => (broker = b));
    await expect(started).rejects.toBeInstanceOf(DataDirError);
    await expect(started).rejects.toThrow(/owned by uid \d+.*not .*uid \d+/);
  });
});
