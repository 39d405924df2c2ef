/** The device registry: public keys, kinds, names, status. A phone's user is sealed and blind-indexed. */
import type { Db } from "./db.ts";

export type DeviceKind = "terminal" | "phone";
export type DeviceStatus = "active" | "revoked";

export interface DeviceRow {
  readonly id: string;
  readonly kind: DeviceKind;
  readonly name: string;
  readonly publicKey: Uint8Array;
  readonly userIndex: Uint8Array | null;
  readonly userSealed: Uint8Array | null;
  readonly status: DeviceStatus;
  readonly createdMs: number;
  readonly revokedMs: number | null;
}

interface RawRow {
  id: string;
  kind: DeviceKind;
  name: string;
  public_key: Buffer;
  user_index: Buffer | null;
  user_sealed: Buffer | null;
  status: DeviceStatus;
  created_ms: number;
  revoked_ms: number | null;
}

function fromRaw(r: RawRow): DeviceRow {
  return {
    id: r.id,
    kind: r.kind,
    name: r.name,
    publicKey: new Uint8Array(r.public_key),
    userIndex: r.user_index === null ? null : new Uint8Array(r.user_index),
    userSealed: r.user_sealed === null ? null : new Uint8Array(r.user_sealed),
    status: r.status,
    createdMs: r.created_ms,
    revokedMs: r.revoked_ms,
  };
}

export class DeviceRepo {
  readonly #get;
  readonly #byKey;
  readonly #list;
  readonly #insert;
  readonly #revoke;
  readonly #event;

  constructor(db: Db) {
    this.#get = db.prepare<[string], RawRow>("SELECT * FROM devices WHERE id = ?");
    this.#byKey = db.prepare<[Uint8Array], RawRow>("SELECT * FROM devices WHERE public_key = ?");
    this.#list = db.prepare<[], RawRow>("SELECT * FROM devices ORDER BY created_ms, id");
    this.#insert = db.prepare(
      "INSERT INTO devices (id, kind, name, public_key, user_index, user_sealed, status, created_ms) VALUES (?, ?, ?, ?, ?, ?, 'active', ?)",
    );
    this.#revoke = db.prepare("UPDATE devices SET status = 'revoked', revoked_ms = ? WHERE id = ? AND status = 'active'");
    this.#event = db.prepare("INSERT INTO admin_events (kind, device_id, at_ms) VALUES (?, ?, ?)");
  }

  get(id: string): DeviceRow | null {
    const row = this.#get.get(id);
    return row === undefined ? null : fromRaw(row);
  }

  byPublicKey(publicKey: Uint8Array): DeviceRow | null {
    const row = this.#byKey.get(publicKey);
    return row === undefined ? null : fromRaw(row);
  }

  list(): DeviceRow[] {
    return this.#list.all().map(fromRaw);
  }

  insert(d: { id: string; kind: DeviceKind; name: string; publicKey: Uint8Array; userIndex: Uint8Array | null; userSealed: Uint8Array | null; createdMs: number }): void {
    this.#insert.run(d.id, d.kind, d.name, d.publicKey, d.userIndex, d.userSealed, d.createdMs);
  }

  /** Appends to the admin event feed a running broker polls (e.g. "keys_changed"). */
  notify(kind: string, nowMs: number, deviceId: string | null = null): void {
    this.#event.run(kind, deviceId, nowMs);
  }

  /** Marks the device revoked and tells a running broker (admin_events); false if it was not active. */
  revoke(id: string, nowMs: number): boolean {
    const changed = this.#revoke.run(nowMs, id).changes === 1;
    if (changed) this.#event.run("device_revoked", id, nowMs);
    return changed;
  }
}

/** The feed a running broker polls to learn what an admin command changed in the database. */
export class AdminEventFeed {
  readonly #since;
  readonly #last;

  constructor(db: Db) {
    this.#since = db.prepare<[number], { seq: number; kind: string; device_id: string | null }>(
      "SELECT seq, kind, device_id FROM admin_events WHERE seq > ? ORDER BY seq LIMIT 1000",
    );
    this.#last = db.prepare<[], { seq: number | null }>("SELECT max(seq) AS seq FROM admin_events");
  }

  lastSeq(): number {
    return this.#last.get()?.seq ?? 0;
  }

  since(seq: number): { seq: number; kind: string; deviceId: string | null }[] {
    return this.#since.all(seq).map((r) => ({ seq: r.seq, kind: r.kind, deviceId: r.device_id }));
  }
}

/** Device rows a DeviceCache keeps; past it the cache is cleared whole (rows are read again). */
export const DEVICE_CACHE_MAX = 100_000;

/**
 * Device rows as the broker reads them for every message, kept in memory. A device row changes
 * only when the device is revoked, and a revocation appends to admin_events in the same
 * transaction (DeviceRepo.revoke). So the cache empties itself whenever admin_events has grown:
 * `refresh()` reads the feed's last seq (one indexed read, once per batch of messages) and
 * drops every row if it moved. Rows read after a refresh are then as current as a read of the
 * table at that refresh. A device not found is not kept: it may be registered next.
 */
export class DeviceCache {
  readonly #repo: DeviceRepo;
  readonly #feed: AdminEventFeed;
  readonly #rows = new Map<string, DeviceRow>();
  #seq: number | null = null;

  constructor(db: Db) {
    this.#repo = new DeviceRepo(db);
    this.#feed = new AdminEventFeed(db);
  }

  /** Forgets every row if an admin event (a revocation, say) was written since the last refresh. */
  refresh(): void {
    let seq: number | null = null;
    try {
      seq = this.#feed.lastSeq();
    } catch {
      // Not known: nothing is kept until a refresh succeeds, and each get reads the table.
    }
    if (seq === null || seq !== this.#seq) this.#rows.clear();
    this.#seq = seq;
  }

  get(id: string): DeviceRow | null {
    const cached = this.#rows.get(id);
    if (cached !== undefined) return cached;
    const row = this.#repo.get(id);
    if (row === null || this.#seq === null) return row;
    if (this.#rows.size >= DEVICE_CACHE_MAX) this.#rows.clear();
    this.#rows.set(id, row);
    return row;
  }
}
