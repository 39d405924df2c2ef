/**
 * CONNECT authentication: clientId = device id, username = device id, password = a fresh,
 * single-use token signed by the device key (src/protocol/token.ts). Each refusal has a stable
 * reason and the MQTT 3.1.1 CONNACK return code it is answered with (docs/protocol.md §Connecting).
 */
import { verify } from "../crypto/ed25519.ts";
import { parseToken } from "../protocol/token.ts";
import type { Db } from "../store/db.ts";
import { DeviceRepo, type DeviceRow } from "../store/devices.ts";
import { ReplayRepo } from "../store/replay.ts";

/** MQTT 3.1.1 CONNACK return codes [MQTT-3.2.2.3]. */
export const CONNACK = { identifierRejected: 2, serverUnavailable: 3, badUsernameOrPassword: 4, notAuthorized: 5 } as const;

export const CONNECT_REFUSALS = {
  anonymous: { returnCode: CONNACK.notAuthorized, detail: "no username and password: anonymous clients are refused" },
  malformed_token: { returnCode: CONNACK.badUsernameOrPassword, detail: "the password is not a connect token of the documented format" },
  username_mismatch: { returnCode: CONNACK.badUsernameOrPassword, detail: "the username is not the device id the token names" },
  client_id_mismatch: { returnCode: CONNACK.identifierRejected, detail: "the clientId is not the device id the token names" },
  unknown_device: { returnCode: CONNACK.identifierRejected, detail: "no device is registered under this id" },
  revoked_device: { returnCode: CONNACK.notAuthorized, detail: "the device has been revoked" },
  bad_signature: { returnCode: CONNACK.badUsernameOrPassword, detail: "the token signature does not verify against the registered key" },
  stale_token: { returnCode: CONNACK.badUsernameOrPassword, detail: "the token timestamp is outside the freshness window" },
  too_many_connects: { returnCode: CONNACK.serverUnavailable, detail: "the device connected too often; retry later, with backoff" },
  reused_token: { returnCode: CONNACK.badUsernameOrPassword, detail: "the token was already used; make a new one for every connection" },
  unavailable: { returnCode: CONNACK.serverUnavailable, detail: "the broker cannot reach its database" },
} as const;

export type ConnectRefusal = keyof typeof CONNECT_REFUSALS;
export type ConnectResult = { ok: true; device: DeviceRow } | { ok: false; reason: ConnectRefusal };
/** A token that passed every check but one: it is not yet recorded as used. */
export type CheckedConnect = { ok: true; device: DeviceRow; nonce: string; expiresMs: number; nowMs: number } | { ok: false; reason: ConnectRefusal };

export class ConnectAuthenticator {
  readonly #devices: DeviceRepo;
  readonly #replay: ReplayRepo;
  readonly #freshnessMs: number;

  constructor(db: Db, freshnessMs: number) {
    this.#devices = new DeviceRepo(db);
    this.#replay = new ReplayRepo(db);
    this.#freshnessMs = freshnessMs;
  }

  /** Checks a CONNECT and consumes its token, in one autocommit write. */
  authenticate(clientId: string, username: string | undefined, password: Uint8Array | undefined, nowMs: number): ConnectResult {
    const checked = this.check(clientId, username, password, nowMs);
    if (!checked.ok) return checked;
    return this.useToken(checked) ? { ok: true, device: checked.device } : { ok: false, reason: "reused_token" };
  }

  /** Every check that needs no write; the token still has to be consumed (useToken). */
  check(clientId: string, username: string | undefined, password: Uint8Array | undefined, nowMs: number): CheckedConnect {
    const refuse = (reason: ConnectRefusal): CheckedConnect => ({ ok: false, reason });
    if (password === undefined || password.length === 0) return refuse("anonymous");
    const token = password.length > 512 ? null : parseToken(Buffer.from(password).toString("utf8"));
    if (token === null) return refuse("malformed_token");
    if (token.deviceId !== clientId) return refuse("client_id_mismatch");
    if (username !== token.deviceId) return refuse("username_mismatch");
    const device = this.#devices.get(token.deviceId);
    if (device === null) return refuse("unknown_device");
    if (device.status !== "active") return refuse("revoked_device");
    if (!verify(device.publicKey, token.signedBytes, token.signature)) return refuse("bad_signature");
    if (Math.abs(nowMs - token.tsMs) > this.#freshnessMs) return refuse("stale_token");
    // Consumed (useToken) only after every other check passed, so garbage cannot fill the table.
    // The nonce is remembered until the token itself goes stale (tsMs + window + 1 ms): after that,
    // this token is refused by its timestamp, and a new token may carry the same nonce.
    return { ok: true, device, nonce: token.nonce, expiresMs: token.tsMs + this.#freshnessMs + 1, nowMs };
  }

  /** Records the token as used; false if a token with its nonce was used and has not expired (a replayed or concurrent CONNECT). */
  useToken(checked: { device: DeviceRow; nonce: string; expiresMs: number; nowMs: number }): boolean {
    return this.#replay.useToken(checked.device.id, checked.nonce, checked.expiresMs, checked.nowMs);
  }
}
