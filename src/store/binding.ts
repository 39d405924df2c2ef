/**
 * Pairings and agreements as stored. Nothing here is in clear that could identify a person:
 * the login, user id and terminal serial live only inside sealed blobs, and an agreement is
 * found by a blind index (HMAC of terminal id + login). Unbinding sets the sealed blob and the
 * index to NULL (with secure_delete on, SQLite overwrites the freed bytes).
 */
import type { Db } from "./db.ts";

export interface PairingRow {
  readonly id: string;
  readonly terminalId: string;
  readonly selector: string;
  readonly verifierHash: Uint8Array;
  readonly requestSealed: Uint8Array | null;
  readonly status: "live" | "used" | "void" | "replaced";
  readonly wrongTries: number;
  readonly createdMs: number;
  readonly expiresAtMs: number;
}

export interface AgreementRow {
  readonly id: string;
  readonly lookup: Uint8Array | null;
  readonly terminalId: string;
  readonly phoneId: string;
  readonly status: "active" | "unbound";
  readonly sealed: Uint8Array | null;
  readonly keyVersion: number | null;
  readonly version: number;
  readonly createdMs: number;
  readonly unboundMs: number | null;
  readonly unboundBy: string | null;
}

const pairingFromRaw = (r: Record<string, unknown>): PairingRow => ({
  id: r.id as string,
  terminalId: r.terminal_id as string,
  selector: r.selector as string,
  verifierHash: new Uint8Array(r.verifier_hash as Buffer),
  requestSealed: r.request_sealed === null ? null : new Uint8Array(r.request_sealed as Buffer),
  status: r.status as PairingRow["status"],
  wrongTries: r.wrong_tries as number,
  createdMs: r.created_ms as number,
  expiresAtMs: r.expires_ms as number,
});

const agreementFromRaw = (r: Record<string, unknown>): AgreementRow => ({
  id: r.id as string,
  lookup: r.lookup === null ? null : new Uint8Array(r.lookup as Buffer),
  terminalId: r.terminal_id as string,
  phoneId: r.phone_id as string,
  status: r.status as AgreementRow["status"],
  sealed: r.sealed === null ? null : new Uint8Array(r.sealed as Buffer),
  keyVersion: r.key_version as number | null,
  version: r.version as number,
  createdMs: r.created_ms as number,
  unboundMs: r.unbound_ms as number | null,
  unboundBy: r.unbound_by as string | null,
});

export class PairingRepo {
  readonly #insert;
  readonly #bySelector;
  readonly #liveForTerminal;
  readonly #update;
  readonly #countSince;
  readonly #purge;

  constructor(db: Db) {
    this.#insert = db.prepare(
      "INSERT INTO pairings (id, terminal_id, selector, verifier_hash, request_sealed, status, wrong_tries, created_ms, expires_ms) VALUES (?, ?, ?, ?, ?, 'live', 0, ?, ?)",
    );
    this.#bySelector = db.prepare<[string], Record<string, unknown>>("SELECT * FROM pairings WHERE selector = ? ORDER BY created_ms DESC, rowid DESC LIMIT 20");
    this.#liveForTerminal = db.prepare<[string], Record<string, unknown>>("SELECT * FROM pairings WHERE terminal_id = ? AND status = 'live'");
    this.#update = db.prepare("UPDATE pairings SET status = ?, wrong_tries = ?, request_sealed = CASE WHEN ? = 'live' THEN request_sealed ELSE NULL END WHERE id = ?");
    this.#countSince = db.prepare<[string, number], { n: number }>("SELECT count(*) AS n FROM pairings WHERE terminal_id = ? AND created_ms >= ?");
    this.#purge = db.prepare("DELETE FROM pairings WHERE id IN (SELECT id FROM pairings WHERE expires_ms < ? LIMIT ?)");
  }

  insert(p: { id: string; terminalId: string; selector: string; verifierHash: Uint8Array; requestSealed: Uint8Array; createdMs: number; expiresAtMs: number }): void {
    this.#insert.run(p.id, p.terminalId, p.selector, p.verifierHash, p.requestSealed, p.createdMs, p.expiresAtMs);
  }

  bySelector(selector: string): PairingRow[] {
    return this.#bySelector.all(selector).map(pairingFromRaw);
  }

  liveForTerminal(terminalId: string): PairingRow[] {
    return this.#liveForTerminal.all(terminalId).map(pairingFromRaw);
  }

  /** Saves status and wrong tries; any status but live also drops the sealed request. */
  update(id: string, status: PairingRow["status"], wrongTries: number): void {
    this.#update.run(status, wrongTries, status, id);
  }

  countSince(terminalId: string, sinceMs: number): number {
    return this.#countSince.get(terminalId, sinceMs)?.n ?? 0;
  }

  /** Deletes up to `limit` pairings that expired before `beforeMs`; returns how many went. */
  purge(beforeMs: number, limit: number): number {
    return this.#purge.run(beforeMs, limit).changes;
  }
}

export class AgreementRepo {
  readonly #insert;
  readonly #get;
  readonly #byLookup;
  readonly #activeForPhone;
  readonly #reseal;
  readonly #resealSameKey;
  readonly #shred;
  readonly #list;
  readonly #sealedBatch;
  readonly #countByKey;

  constructor(db: Db) {
    this.#insert = db.prepare(
      "INSERT INTO agreements (id, lookup, terminal_id, phone_id, status, sealed, key_version, version, created_ms) VALUES (?, ?, ?, ?, 'active', ?, ?, ?, ?)",
    );
    this.#get = db.prepare<[string], Record<string, unknown>>("SELECT * FROM agreements WHERE id = ?");
    this.#byLookup = db.prepare<[Uint8Array], Record<string, unknown>>("SELECT * FROM agreements WHERE lookup = ? AND status = 'active'");
    this.#activeForPhone = db.prepare<[string], Record<string, unknown>>("SELECT * FROM agreements WHERE phone_id = ? AND status = 'active' ORDER BY created_ms");
    this.#reseal = db.prepare("UPDATE agreements SET sealed = ?, key_version = ?, version = ? WHERE id = ? AND status = 'active' AND version = ?");
    // The same update when the key version stays: SQLite rewrites an index entry for every
    // indexed column an UPDATE sets, changed or not, so leaving key_version out of the SET spares
    // agreements_by_key_version a page write per payment that reseals its agreement.
    this.#resealSameKey = db.prepare("UPDATE agreements SET sealed = ?, version = ? WHERE id = ? AND status = 'active' AND version = ? AND key_version = ?");
    this.#shred = db.prepare("UPDATE agreements SET status = 'unbound', sealed = NULL, lookup = NULL, key_version = NULL, unbound_ms = ?, unbound_by = ? WHERE id = ? AND status = 'active'");
    this.#list = db.prepare<[], Record<string, unknown>>("SELECT * FROM agreements ORDER BY created_ms, id");
    this.#sealedBatch = db.prepare<[number, string, number], Record<string, unknown>>(
      "SELECT * FROM agreements WHERE status = 'active' AND key_version != ? AND id > ? ORDER BY id LIMIT ?",
    );
    this.#countByKey = db.prepare<[], { key_version: number; n: number }>("SELECT key_version, count(*) AS n FROM agreements WHERE status = 'active' GROUP BY key_version");
  }

  insert(a: { id: string; lookup: Uint8Array; terminalId: string; phoneId: string; sealed: Uint8Array; keyVersion: number; version: number; createdMs: number }): void {
    this.#insert.run(a.id, a.lookup, a.terminalId, a.phoneId, a.sealed, a.keyVersion, a.version, a.createdMs);
  }

  get(id: string): AgreementRow | null {
    const r = this.#get.get(id);
    return r === undefined ? null : agreementFromRaw(r);
  }

  byLookup(lookup: Uint8Array): AgreementRow | null {
    const r = this.#byLookup.get(lookup);
    return r === undefined ? null : agreementFromRaw(r);
  }

  activeForPhone(phoneId: string): AgreementRow[] {
    return this.#activeForPhone.all(phoneId).map(agreementFromRaw);
  }

  /** Replaces the sealed blob if the row is still at `expectedVersion` (no lost updates). */
  reseal(id: string, sealed: Uint8Array, keyVersion: number, version: number, expectedVersion: number): boolean {
    if (this.#resealSameKey.run(sealed, version, id, expectedVersion, keyVersion).changes === 1) return true;
    return this.#reseal.run(sealed, keyVersion, version, id, expectedVersion).changes === 1;
  }

  /** Unbinds: the sealed data and the blind index are destroyed, only the bare facts stay. */
  shred(id: string, by: string, nowMs: number): boolean {
    return this.#shred.run(nowMs, by, id).changes === 1;
  }

  list(): AgreementRow[] {
    return this.#list.all().map(agreementFromRaw);
  }

  /** Active agreements not sealed with `currentVersion`, after `afterId`, in id order. */
  sealedWithOtherKey(currentVersion: number, afterId: string, limit: number): AgreementRow[] {
    return this.#sealedBatch.all(currentVersion, afterId, limit).map(agreementFromRaw);
  }

  countByKeyVersion(): Map<number, number> {
    return new Map(this.#countByKey.all().map((r) => [r.key_version, r.n]));
  }
}
