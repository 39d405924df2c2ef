// What a flow's storage would cost if the broker kept its state in memory and wrote one
// sequential journal per batch instead of SQLite's B-tree pages: `node bench/journal-cost.mjs
// [flows per batch] [batches]` (default 6 and 1,000). A mixed flow is written as 14 records of
// ~600 bytes (its 2.5 device messages, 5.5 signed broker messages, audit entries, ledger and
// events, about what SQLite stores for it today), a batch as one write() and one fdatasync(),
// here on the caller's thread. Prints CPU per flow, user and system. Numbers only, no assertion
// (docs/performance.md §Eighth session: an estimate for planning, not a design).
import { closeSync, fdatasyncSync, mkdtempSync, openSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";

const flowsPerBatch = Number(process.argv[2] ?? 6);
const batches = Number(process.argv[3] ?? 1000);
if (!Number.isInteger(flowsPerBatch) || flowsPerBatch < 1 || !Number.isInteger(batches) || batches < 1) {
  process.stderr.write("usage: node bench/journal-cost.mjs [flows per batch, >= 1] [batches, >= 1]\n");
  process.exit(2);
}
const RECORDS_PER_FLOW = 14;
const dir = mkdtempSync(join(tmpdir(), "hp-journal-"));
try {
  const fd = openSync(join(dir, "journal"), "a");
  const record = (i) => JSON.stringify({ type: "message", i, device: "d-0123456789abcdef", id: "0190c1f2-7b1c-7cde-8f00-0123456789ab", bytes: "x".repeat(500) });
  const cpu0 = process.cpuUsage();
  const wall0 = performance.now();
  for (let b = 0; b < batches; b++) {
    const lines = [];
    for (let f = 0; f < flowsPerBatch; f++) for (let r = 0; r < RECORDS_PER_FLOW; r++) lines.push(record(r));
    writeSync(fd, Buffer.from(lines.join("\n") + "\n"));
    fdatasyncSync(fd);
  }
  const cpu = process.cpuUsage(cpu0);
  const wallMs = performance.now() - wall0;
  closeSync(fd);
  const flows = flowsPerBatch * batches;
  const us = (micros) => (micros / flows).toFixed(1);
  process.stdout.write(
    `${flows} flows, ${flowsPerBatch} per batch: ${us(cpu.user + cpu.system)} us CPU per flow (user ${us(cpu.user)}, system ${us(cpu.system)}); ${(wallMs / batches).toFixed(2)} ms per batch\n`,
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}
