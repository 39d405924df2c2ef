/**
 * The browser's half of the device client (src/device/client.ts is the protocol, shared with
 * Node): tweetnacl Ed25519, crypto.getRandomValues, MQTT over WebSocket through the browser's
 * own TLS, and keys kept in IndexedDB (src/device/browser-store.ts).
 *
 * tweetnacl signs and verifies with the same 32-byte seed and public key as node:crypto, and
 * produces the same signatures (Ed25519 is deterministic); a device verifies a few messages a
 * second, far below its ~65 verifies/s. WebCrypto's Ed25519 would be faster but is asynchronous
 * and missing in some browsers still in use, and outside a secure context (http off localhost).
 */
import nacl from "tweetnacl";
import { fromBase64, toBase64 } from "../crypto/encoding.ts";
import { deviceIdFor } from "../crypto/ids.ts";
import { DeviceClient, brokerUrls, type DevicePlatform } from "./client.ts";

export type DeviceKind = "terminal" | "phone";

/** A device key as a page keeps it. The seed is the private key: it never leaves the browser. */
export interface BrowserKey {
  readonly deviceId: string;
  readonly kind: DeviceKind;
  readonly name: string;
  readonly publicKey: Uint8Array;
  readonly seed: Uint8Array;
}

/** A new key pair from the browser's CSPRNG. */
export function generateBrowserKey(kind: DeviceKind, name: string): BrowserKey {
  const pair = nacl.sign.keyPair();
  return { deviceId: deviceIdFor(pair.publicKey), kind, name, publicKey: pair.publicKey, seed: pair.secretKey.slice(0, 32) };
}

/** The key for a 32-byte seed (e.g. one the demo hands a page in its URL fragment). */
export function browserKeyFromSeed(kind: DeviceKind, name: string, seed: Uint8Array): BrowserKey {
  if (seed.length !== 32) throw new Error(`an Ed25519 seed is 32 bytes, got ${seed.length}`);
  const pair = nacl.sign.keyPair.fromSeed(seed);
  return { deviceId: deviceIdFor(pair.publicKey), kind, name, publicKey: pair.publicKey, seed: Uint8Array.from(seed) };
}

/** The admin command that registers this key in the broker started by `npm start` (its ./data). */
export function registerCommand(key: BrowserKey, user?: string): string {
  const quoted = `'${key.name.replace(/'/g, "'\\''")}'`;
  const userPart = key.kind === "phone" ? ` --user ${user === undefined || user === "" ? "USER_ID" : user}` : "";
  return `npm run admin -- device add --kind ${key.kind} --name ${quoted} --public-key ${toBase64(key.publicKey)}${userPart}`;
}

export const browserPlatform: DevicePlatform = {
  verify: (publicKey, message, signature) => publicKey.length === 32 && signature.length === 64 && nacl.sign.detached.verify(message, signature, publicKey),
  randomBytes: (n) => crypto.getRandomValues(new Uint8Array(n)),
};

export interface BrowserDeviceOptions {
  /**
   * ws:// or wss://host:port/path: a page uses the origin it was served from. Or several (the
   * nodes of one cluster), tried in turn after a failure or a drop.
   */
  readonly url: string | readonly string[];
  readonly key: BrowserKey;
  /** The broker's Ed25519 public key, base64 or bytes (the page pins it; see pinnedBrokerKey). */
  readonly brokerPublicKey: Uint8Array | string;
  readonly reconnectMs?: number;
}

/** A device in a web page. */
export class BrowserDevice extends DeviceClient {
  readonly key: BrowserKey;

  constructor(o: BrowserDeviceOptions) {
    for (const url of brokerUrls(o.url)) {
      const scheme = new URL(url).protocol;
      if (scheme !== "ws:" && scheme !== "wss:") throw new Error(`a page reaches the broker over WebSocket (ws:// or wss://), not ${scheme}`);
    }
    const brokerKey = typeof o.brokerPublicKey === "string" ? fromBase64(o.brokerPublicKey) : o.brokerPublicKey;
    if (brokerKey === null || brokerKey.length !== 32) throw new Error("the broker public key must be 32 bytes of base64");
    const secretKey = new Uint8Array(64);
    secretKey.set(o.key.seed, 0);
    secretKey.set(o.key.publicKey, 32);
    super({
      url: o.url,
      identity: { deviceId: o.key.deviceId, sign: (b) => nacl.sign.detached(b, secretKey) },
      brokerPublicKey: brokerKey,
      platform: browserPlatform,
      ...(o.reconnectMs === undefined ? {} : { reconnectMs: o.reconnectMs }),
    });
    this.key = o.key;
  }
}

/** The broker's WebSocket URL for a page served by the broker itself: same host and port, path /mqtt. */
export function brokerUrlFor(location: { protocol: string; host: string }): string {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/mqtt`;
}
