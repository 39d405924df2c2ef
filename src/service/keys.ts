/**
 * Master key management: rotate (add a version that new seals use), reseal (move sealed data to
 * the current version in batches), remove (drop a version nothing uses any more).
 *
 * Runs in the admin tool against the database, with or without a running broker; each batch is
 * one IMMEDIATE transaction, so it never interleaves with the broker's writes to the same rows.
 */
import { Keyring } from "../crypto/keyring.ts";
import { appendAudit } from "../store/audit.ts";
import { AgreementRepo } from "../store/binding.ts";
import type { Db } from "../store/db.ts";
import { DeviceRepo } from "../store/devices.ts";
import { sealedDigest, triggerField, type Trigger } from "./audit-trail.ts";
import { INDEX_KEY_VERSION, openAgreement, sealAgreement } from "./sealing.ts";

export interface KeyUse {
  readonly version: number;
  readonly current: boolean;
  readonly agreements: number;
  readonly devices: number;
  readonly pairings: number;
}

/** What each key version still seals: active agreements, phones' user ids, live pairing requests. */
export function keyUsage(db: Db, keyring: Keyring): KeyUse[] {
  const count = new Map<number, { agreements: number; devices: number; pairings: number }>();
  const bump = (v: number | null, field: "agreements" | "devices" | "pairings") => {
    if (v === null) return;
    const c = count.get(v) ?? { agreements: 0, devices: 0, pairings: 0 };
    c[field]++;
    count.set(v, c);
  };
  for (const [v, n] of new AgreementRepo(db).countByKeyVersion()) for (let i = 0; i < n; i++) bump(v, "agreements");
  for (const r of db.prepare<[], { s: Buffer }>("SELECT user_sealed AS s FROM devices WHERE user_sealed IS NOT NULL").iterate()) bump(Keyring.versionOf(r.s), "devices");
  for (const r of db.prepare<[], { s: Buffer }>("SELECT request_sealed AS s FROM pairings WHERE request_sealed IS NOT NULL").iterate()) bump(Keyring.versionOf(r.s), "pairings");
  const versions = new Set([...keyring.versions, ...count.keys()]);
  return [...versions]
    .sort((a, b) => a - b)
    .map((version) => ({ version, current: version === keyring.current, agreements: 0, devices: 0, pairings: 0, ...count.get(version) }));
}

export interface ResealReport {
  resealed: number;
  unreadable: string[];
  devicesResealed: number;
}

/**
 * The keyring file changed (a version added or removed): records it in the audit log and tells
 * a running broker to reload its keys (admin_events), in one transaction. Only version numbers
 * are recorded, never key bytes.
 */
export function keysChanged(db: Db, nowMs: number, change: { kind: "keys.rotated" | "keys.removed"; version: number; keyring: Keyring }, trigger?: Trigger): number {
  return db
    .transaction(() => {
      new DeviceRepo(db).notify("keys_changed", nowMs);
      return appendAudit(db, nowMs, change.kind, null, { version: change.version, current: change.keyring.current, versions: change.keyring.versions, ...triggerField(trigger) });
    })
    .immediate();
}

/**
 * Re-seals every active agreement and phone registration not yet under the current key.
 * `progress` hears after each batch; unreadable agreements are listed, left as they are. Each
 * resealed agreement is an audit entry in its batch's transaction.
 */
export function reseal(db: Db, keyring: Keyring, batchSize: number, progress: (done: number, total: number) => void = () => {}, trigger?: Trigger): ResealReport {
  const repo = new AgreementRepo(db);
  const total = [...repo.countByKeyVersion()].filter(([v]) => v !== keyring.current).reduce((sum, [, n]) => sum + n, 0);
  const report: ResealReport = { resealed: 0, unreadable: [], devicesResealed: 0 };
  let afterId = "";
  for (;;) {
    const batch = db.transaction(() => {
      const rows = repo.sealedWithOtherKey(keyring.current, afterId, batchSize);
      for (const row of rows) {
        const opened = openAgreement(keyring, row);
        if (!opened.ok) {
          report.unreadable.push(`${row.id} (${opened.code})`);
          continue;
        }
        const { sealed, keyVersion } = sealAgreement(keyring, opened.value);
        if (repo.reseal(row.id, sealed, keyVersion, row.version, row.version)) {
          report.resealed++;
          appendAudit(db, Date.now(), "agreement.resealed", row.id, { version: row.version, fromKeyVersion: row.keyVersion, keyVersion, sealedDigest: sealedDigest(sealed), ...triggerField(trigger) });
        }
      }
      return rows;
    }).immediate();
    if (batch.length === 0) break;
    afterId = batch[batch.length - 1]!.id;
    progress(report.resealed + report.unreadable.length, total);
  }
  // Phones' sealed user ids and pending pairing requests: few, one transaction each.
  report.devicesResealed = resealColumn(db, keyring, "devices", "user_sealed");
  resealColumn(db, keyring, "pairings", "request_sealed");
  return report;
}

/** Why `version` cannot be removed yet, or null when nothing uses it. */
export function removalProblem(db: Db, keyring: Keyring, version: number): string | null {
  if (!keyring.versions.includes(version)) return `there is no key version ${version} (versions: ${keyring.versions.join(", ")})`;
  if (version === keyring.current) return `version ${version} is the current key; rotate first`;
  if (version === INDEX_KEY_VERSION) return `version ${INDEX_KEY_VERSION} keys the blind indexes (agreement and user lookups) and stays for as long as they exist`;
  const use = keyUsage(db, keyring).find((u) => u.version === version);
  if (use !== undefined && use.agreements + use.devices + use.pairings > 0) {
    return `version ${version} still seals ${use.agreements} agreements, ${use.devices} phone registrations and ${use.pairings} pairing requests; run keys reseal first`;
  }
  return null;
}

/** Re-seals one sealed column of a small table; the plaintext (which names its row) is unchanged. */
function resealColumn(db: Db, keyring: Keyring, table: "devices" | "pairings", column: "user_sealed" | "request_sealed"): number {
  let changed = 0;
  db.transaction(() => {
    const update = db.prepare(`UPDATE ${table} SET ${column} = ? WHERE id = ? AND ${column} = ?`);
    for (const r of db.prepare<[], { id: string; s: Buffer }>(`SELECT id, ${column} AS s FROM ${table} WHERE ${column} IS NOT NULL`).all()) {
      if (Keyring.versionOf(r.s) === keyring.current) continue;
      const opened = keyring.open(r.s);
      if (opened.ok) changed += update.run(keyring.seal(opened.plaintext), r.id, r.s).changes;
    }
  }).immediate();
  return changed;
}

/**
 * Whether this node's keys are the ones the database's data was made under: its broker identity
 * (recorded by the first start) and its master key (it opens a phone's sealed user id). Several
 * nodes share one database, each with its own data dir: a node given a fresh key file by mistake
 * would sign what every device refuses, or seal what no other node can open. Returns the problem,
 * or null; records the identity on the first start.
 */
export function checkNodeKeys(db: Db, keyring: Keyring, brokerPublicKey: Uint8Array, nowMs: number): string | null {
  return db
    .transaction((): string | null => {
      const row = db.prepare<[], { public_key: Buffer }>("SELECT public_key FROM broker_identity WHERE id = 1").get();
      if (row === undefined) db.prepare("INSERT INTO broker_identity (id, public_key, created_ms) VALUES (1, ?, ?)").run(brokerPublicKey, nowMs);
      else if (!Buffer.from(brokerPublicKey).equals(row.public_key)) {
        return `this node's broker key (${Buffer.from(brokerPublicKey).toString("base64")}) is not the one the database's devices pin (${row.public_key.toString("base64")}): give the node the cluster's broker.key (copy it from another node's data dir)`;
      }
      const phone = db.prepare<[], { id: string }>("SELECT id FROM devices WHERE user_sealed IS NOT NULL ORDER BY created_ms, id LIMIT 1").get();
      if (phone !== undefined) {
        const device = new DeviceRepo(db).get(phone.id);
        const opened = device?.userSealed == null ? null : keyring.open(device.userSealed);
        if (opened === null || !opened.ok) {
          return "this node's master key does not open the database's sealed data (a phone's user id): give the node the cluster's master key (master.key from another node's data dir, or the same HANDOFF_MASTER_KEY)";
        }
      }
      return null;
    })
    .immediate();
}
