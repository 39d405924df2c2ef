/**
 * Registering and revoking devices: what `npm run admin -- device ...` and `sim keygen
 * --register` do. Works on the database file whether or not a broker is running; a running
 * broker learns of a revocation through admin_events and disconnects the device at once.
 */
import { createHmac } from "node:crypto";
import { z } from "zod";
import { fromBase64, toBase64 } from "../crypto/encoding.ts";
import { deviceIdFor } from "../crypto/ids.ts";
import type { Keyring } from "../crypto/keyring.ts";
import { appendAudit } from "../store/audit.ts";
import type { Db } from "../store/db.ts";
import { DeviceRepo, type DeviceKind, type DeviceRow } from "../store/devices.ts";
import { triggerField, type Trigger } from "./audit-trail.ts";

export const USER_ID_RE = /^[A-Za-z0-9._@+-]{1,64}$/;

export const deviceInputSchema = z.strictObject({
  kind: z.enum(["terminal", "phone"]),
  name: z
    .string()
    .trim()
    .min(1, "a device name is required")
    .max(64, "a device name is at most 64 characters")
    .regex(/^[^\p{Cc}]+$/u, "a device name may not contain control characters"),
  publicKey: z.string(),
  userId: z.string().regex(USER_ID_RE, "a user id is 1-64 characters of letters, digits and . _ @ + -").optional(),
});

export type DeviceInput = z.input<typeof deviceInputSchema>;
export type RegisterResult = { ok: true; device: DeviceRow } | { ok: false; error: string };

const utf8 = new TextEncoder();

/** The blind index of a user id: HMAC-SHA256 under a key derived from master key version 1. */
export function userIndex(keyring: Keyring, userId: string): Uint8Array {
  return new Uint8Array(createHmac("sha256", keyring.derive("handoff-pay user-index v1", 1)).update(userId).digest());
}

/**
 * Registers a device, with its audit entry, in one transaction. The entry holds the kind and
 * public key, never the name or the user id (a phone's user is sealed on its row).
 */
export function registerDevice(db: Db, keyring: Keyring, input: DeviceInput, nowMs: number, trigger?: Trigger): RegisterResult {
  const parsed = deviceInputSchema.safeParse(input);
  if (!parsed.success) return { ok: false, error: parsed.error.issues.map((i) => i.message).join("; ") };
  const { kind, name, userId } = parsed.data;
  const publicKey = fromBase64(parsed.data.publicKey.trim());
  if (publicKey === null || publicKey.length !== 32) return { ok: false, error: "--public-key must be a 32-byte Ed25519 public key in base64 (44 characters)" };
  if (kind === "phone" && userId === undefined) return { ok: false, error: "a phone needs --user <userId>: the user whose wallet it pays from" };
  if (kind === "terminal" && userId !== undefined) return { ok: false, error: "--user is for phones; a terminal learns its user at login" };
  const repo = new DeviceRepo(db);
  return db.transaction((): RegisterResult => {
    const existing = repo.byPublicKey(publicKey);
    if (existing !== null) return { ok: false, error: `this public key is already registered as device ${existing.id} (${existing.status}); make a new key pair` };
    const id = deviceIdFor(publicKey);
    const userSealed = userId === undefined ? null : keyring.seal(utf8.encode(JSON.stringify({ deviceId: id, userId })));
    repo.insert({ id, kind: kind as DeviceKind, name, publicKey, userIndex: userId === undefined ? null : userIndex(keyring, userId), userSealed, createdMs: nowMs });
    appendAudit(db, nowMs, "device.registered", id, { deviceKind: kind, publicKey: toBase64(publicKey), ...triggerField(trigger) });
    return { ok: true, device: repo.get(id)! };
  }).immediate();
}

/** Opens a phone's sealed user id; null when the device has none or the seal does not open. */
export function deviceUserId(keyring: Keyring, device: DeviceRow): string | null {
  if (device.userSealed === null) return null;
  const opened = keyring.open(device.userSealed);
  if (!opened.ok) return null;
  const plain = JSON.parse(new TextDecoder().decode(opened.plaintext)) as { deviceId: string; userId: string };
  // The device id inside the seal stops a sealed value from being copied onto another row.
  return plain.deviceId === device.id ? plain.userId : null;
}

export function revokeDevice(db: Db, id: string, nowMs: number, trigger?: Trigger): { ok: true } | { ok: false; error: string } {
  const repo = new DeviceRepo(db);
  return db
    .transaction((): { ok: true } | { ok: false; error: string } => {
      const device = repo.get(id);
      if (device === null) return { ok: false, error: `no device ${id}` };
      if (device.status === "revoked") return { ok: false, error: `device ${id} is already revoked` };
      repo.revoke(id, nowMs);
      appendAudit(db, nowMs, "device.revoked", id, { deviceKind: device.kind, ...triggerField(trigger) });
      return { ok: true };
    })
    .immediate();
}
