/**
 * What one audit append costs: `npx tsx bench/audit-append.ts [count]` (default 100,000).
 * For the figures the broker sees, run it compiled as the programs are (under tsx, @noble/hashes
 * measured ~10x slower here, which only verifyAudit's line feels):
 *   npx esbuild bench/audit-append.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=dist/bench/audit-append.mjs && node dist/bench/audit-append.mjs
 *
 * Times appendAudit alone (the entry's JSON, its leaf hash, the row, the level-0 node and the
 * subtree hashes it completes) in a file database opened as the broker opens it, 6 appends per
 * transaction as a payment makes them; commits are timed separately since the caller's
 * transaction pays them anyway. Also times the right-edge reload another connection's append
 * forces, and a full verifyAudit. Numbers only: no assertion (the machine is shared).
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { generateKeyPair, Signer } from "../src/crypto/ed25519.ts";
import { appendAudit, AuditLog, verifyAudit } from "../src/store/audit.ts";
import { openDatabase } from "../src/store/db.ts";

const count = Number(process.argv[2] ?? 100_000);
const dir = mkdtempSync(join(tmpdir(), "hp-audit-bench-"));
try {
  const db = openDatabase(join(dir, "handoff.db"), { durability: "caller" });
  const fields = { paymentId: "p_8f3k2m9q4x7w1z5t", status: "completed", amountMinor: 1250, currency: "EUR", trigger: { msgId: "m_5t2x9q8w3k1z7m4p", digest: "n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=" } };
  let appendMs = 0;
  let t0 = performance.now();
  for (let i = 0; i < count; i += 6) {
    db.transaction(() => {
      const a = performance.now();
      for (let j = i; j < Math.min(i + 6, count); j++) appendAudit(db, 1_700_000_000_000 + j, "payment.event", "p_8f3k2m9q4x7w1z5t", fields);
      appendMs += performance.now() - a;
    })();
  }
  const totalMs = performance.now() - t0;
  console.log(`appendAudit: ${((appendMs * 1000) / count).toFixed(2)} µs per append over ${count} (${((totalMs * 1000) / count).toFixed(2)} µs with the transactions' commits)`);

  const other = openDatabase(join(dir, "handoff.db"), { durability: "caller" });
  t0 = performance.now();
  for (let i = 0; i < 1000; i++) {
    // Alternating connections: every append reloads the right edge first.
    const d = i % 2 === 0 ? other : db;
    d.transaction(() => appendAudit(d, 1, "payment.event", null, fields))();
  }
  console.log(`append after another connection's append (edge reload + commit): ${((performance.now() - t0) * 1000 / 1000).toFixed(2)} µs`);

  const broker = generateKeyPair();
  const signer = new Signer(broker);
  const log = new AuditLog(db);
  t0 = performance.now();
  const head = log.signHead((m) => signer.sign(m), Date.now());
  console.log(`signHead at ${head.treeSize}: ${((performance.now() - t0) * 1000).toFixed(0)} µs`);
  t0 = performance.now();
  log.inclusionProof(12345, head.treeSize);
  console.log(`inclusionProof: ${((performance.now() - t0) * 1000).toFixed(0)} µs`);
  t0 = performance.now();
  const v = verifyAudit(db, broker.publicKey);
  console.log(`verifyAudit of ${head.treeSize}: ${(performance.now() - t0).toFixed(0)} ms, ${JSON.stringify(v)}`);
  other.close();
  db.close();
} finally {
  rmSync(dir, { recursive: true, force: true });
}
