/**
 * Device key files: what `npm run sim -- keygen` writes and every simulator command reads.
 *   {"format":"handoff-pay-device-key/1","deviceId":"d…","kind":"terminal","name":"…","publicKey":"<b64>","seed":"<b64>"}
 * The seed is the Ed25519 private key: the file is created with mode 0600.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { generateKeyPair, keyPairFromSeed, type KeyPair } from "../src/crypto/ed25519.ts";
import { fromBase64, toBase64 } from "../src/crypto/encoding.ts";
import { deviceIdFor } from "../src/crypto/ids.ts";

export const KEY_FILE_FORMAT = "handoff-pay-device-key/1";

export interface DeviceKey {
  readonly deviceId: string;
  readonly kind?: "terminal" | "phone";
  readonly name?: string;
  readonly pair: KeyPair;
}

export function newDeviceKey(kind?: "terminal" | "phone", name?: string): DeviceKey {
  const pair = generateKeyPair();
  return { deviceId: deviceIdFor(pair.publicKey), ...(kind ? { kind } : {}), ...(name ? { name } : {}), pair };
}

export function writeKeyFile(file: string, key: DeviceKey, overwrite = false): void {
  if (!overwrite && existsSync(file)) throw new Error(`${file} already exists; pass --force to replace it (the old key is lost)`);
  const json = {
    format: KEY_FILE_FORMAT,
    deviceId: key.deviceId,
    ...(key.kind ? { kind: key.kind } : {}),
    ...(key.name ? { name: key.name } : {}),
    publicKey: toBase64(key.pair.publicKey),
    seed: toBase64(key.pair.seed),
  };
  writeFileSync(file, JSON.stringify(json, null, 2) + "\n", { mode: 0o600 });
}

export function readKeyFile(file: string): DeviceKey {
  let json: { format?: unknown; seed?: unknown; kind?: unknown; name?: unknown };
  try {
    json = JSON.parse(readFileSync(file, "utf8")) as typeof json;
  } catch (err) {
    throw new Error(`cannot read key file ${file}: ${(err as Error).message}`, { cause: err });
  }
  if (json.format !== KEY_FILE_FORMAT) throw new Error(`${file} is not a Handoff Pay device key file (format ${KEY_FILE_FORMAT})`);
  const seed = typeof json.seed === "string" ? fromBase64(json.seed) : null;
  if (seed === null || seed.length !== 32) throw new Error(`${file}: seed must be 32 bytes of base64`);
  const pair = keyPairFromSeed(seed);
  const kind = json.kind === "terminal" || json.kind === "phone" ? json.kind : undefined;
  return { deviceId: deviceIdFor(pair.publicKey), ...(kind ? { kind } : {}), ...(typeof json.name === "string" ? { name: json.name } : {}), pair };
}
