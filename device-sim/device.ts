/**
 * The device client in Node: what the simulator, the demo and the tests use to be a terminal or
 * phone. The protocol itself is src/device/client.ts, shared with the browser pages; this file
 * is its Node adapter: node:crypto signatures, node:crypto randomness, Nagle off, and TLS.
 *
 * Transports: mqtt:// (TCP), mqtts:// (TLS), ws:// and wss:// (MQTT over WebSocket, sub-protocol
 * `mqtt`). Over TLS the broker's certificate must be trusted before the CONNECT, which carries
 * the token, is sent: by the system's CAs, by `ca`, or by its pinned SHA-256 fingerprint. The
 * certificate is never accepted unchecked (no rejectUnauthorized false on a connection that
 * carries MQTT).
 */
import { X509Certificate } from "node:crypto";
import { isIP } from "node:net";
import { connect as tlsConnect, rootCertificates, type ConnectionOptions, type PeerCertificate } from "node:tls";
import type { IClientOptions, MqttClient } from "mqtt";
import { Signer, verify } from "../src/crypto/ed25519.ts";
import { randomBytesPooled } from "../src/crypto/random.ts";
import type { Payload } from "../src/protocol/envelope.ts";
import { DeviceClient, type DeviceClientOptions, type DevicePlatform } from "../src/device/client.ts";
import type { DeviceKey } from "./keyfile.ts";

export { CONNACK_TEXT, DeviceError, type DeviceEvents, type Received } from "../src/device/client.ts";

/**
 * DeviceClient's options, with the key from a key file instead of an identity, and the TLS trust
 * (for every mqtts:// and wss:// URL, when `url` lists several).
 */
export interface DeviceOptions extends Omit<DeviceClientOptions, "identity" | "platform"> {
  /**
   * mqtts and wss: the certificates (PEM) to trust instead of the system's CAs, e.g. the
   * broker's own self-signed tls.crt. The host name is still checked unless a pin is given.
   */
  readonly ca?: string | Buffer;
  /**
   * mqtts and wss: the SHA-256 fingerprint of the broker's certificate ("AB:CD:…", as
   * `openssl x509 -fingerprint -sha256` or X509Certificate.fingerprint256 print it; colons and
   * case optional). Only that certificate is accepted, whatever its host names.
   */
  readonly fingerprint256?: string;
  readonly key: DeviceKey;
}

const SCHEMES = ["mqtt:", "mqtts:", "ws:", "wss:"];

/** "ab cd…" or "AB:CD:…" → "AB:CD:…" (32 bytes), or null if it is not a SHA-256 fingerprint. */
export function normalizeFingerprint(text: string): string | null {
  const hex = text.replace(/[:\s]/g, "").toUpperCase();
  if (!/^[0-9A-F]{64}$/.test(hex)) return null;
  return hex.match(/../g)!.join(":");
}

/** The SHA-256 fingerprint of a PEM certificate, as X509Certificate prints it. */
export function certificateFingerprint(pem: string | Buffer): string {
  return new X509Certificate(pem).fingerprint256;
}

/**
 * The broker URLs in a --url flag or HANDOFF_URL: one, or several separated by commas (the nodes
 * of one cluster, tried in turn). Spaces around each are ignored; an empty one is an error.
 */
export function parseUrlList(text: string): string[] {
  const urls = text.split(",").map((u) => u.trim());
  if (urls.some((u) => u === "")) throw new Error(`broker URL list ${JSON.stringify(text)} has an empty entry: separate URLs with single commas`);
  return urls;
}

/** The broker's certificate is not the pinned one. */
export class CertificatePinError extends Error {
  // MQTT.js passes a stream error on to the client only if it has a code (the wss path).
  readonly code = "ERR_TLS_CERT_PIN_MISMATCH";
  constructor(actual: string, pinned: string) {
    super(`the broker's TLS certificate has SHA-256 fingerprint ${actual}, not the pinned ${pinned}: refusing to connect`);
  }
}

/** Node's codes for a certificate that does not verify (chain or host name). */
const TLS_TRUST_CODES = new Set([
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "UNABLE_TO_GET_ISSUER_CERT",
  "CERT_HAS_EXPIRED",
  "CERT_NOT_YET_VALID",
  "CERT_UNTRUSTED",
  "ERR_TLS_CERT_ALTNAME_INVALID",
]);

/** A refused certificate, said so that the person knows what to pass. */
function explainTlsError(err: Error): Error {
  const code = (err as { code?: unknown }).code;
  if (typeof code !== "string" || !TLS_TRUST_CODES.has(code)) return err;
  const wrapped = new Error(
    `the broker's TLS certificate is not trusted (${err.message}): trust it with ca (--ca FILE, e.g. <data-dir>/tls.crt) or pin its SHA-256 fingerprint (--fingerprint)`,
    { cause: err },
  );
  return Object.assign(wrapped, { code });
}

/**
 * The certificate a TLS server presents, read with a handshake that sends nothing else: only
 * used to compare it with a pin before the real connection, which then trusts exactly it.
 */
function presentedCertificate(host: string, port: number, timeoutMs: number): Promise<PeerCertificate> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host, port, ...(isIP(host) === 0 ? { servername: host } : {}), rejectUnauthorized: false }, () => {
      const cert = socket.getPeerCertificate();
      socket.destroy();
      if (cert?.raw === undefined) reject(new Error(`${host}:${port} presented no TLS certificate`));
      else resolve(cert);
    });
    socket.setTimeout(timeoutMs, () => socket.destroy(new Error(`no TLS handshake with ${host}:${port} within ${timeoutMs} ms`)));
    socket.once("error", reject);
  });
}

/** Node's half of the protocol client: what differs from a page (src/device/browser.ts). */
class NodePlatform implements DevicePlatform {
  readonly #pin: string | null;
  readonly #ca: string | Buffer | undefined;
  readonly #timeoutMs: number;

  constructor(pin: string | null, ca: string | Buffer | undefined, timeoutMs: number) {
    this.#pin = pin;
    this.#ca = ca;
    this.#timeoutMs = timeoutMs;
  }

  verify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
    return verify(publicKey, message, signature);
  }

  randomBytes(n: number): Uint8Array {
    return randomBytesPooled(n);
  }

  onConnected(client: MqttClient): void {
    // Nagle + delayed ACK cost a device 25-45 ms a round trip (docs/performance.md).
    (client.stream as { setNoDelay?: (on: boolean) => void } | undefined)?.setNoDelay?.(true);
  }

  explainError(err: Error): Error {
    return explainTlsError(err);
  }

  async transportOptions(url: URL): Promise<IClientOptions> {
    if (url.protocol !== "mqtts:" && url.protocol !== "wss:") return {};
    const tls = await this.#tlsOptions(url);
    // mqtts hands these options to tls.connect; wss hands wsOptions to ws, which hands them to tls.connect.
    return url.protocol === "wss:" ? { wsOptions: tls } : (tls as IClientOptions);
  }

  /**
   * What TLS trusts: the given CA or the system's, and with a pin only the pinned certificate.
   * Without a CA, a pinned certificate is first read from the server and compared: node checks a
   * pin (checkServerIdentity) only for a certificate whose chain verifies, so the real connection
   * trusts that certificate as its CA and checks its fingerprint again.
   */
  async #tlsOptions(url: URL): Promise<ConnectionOptions> {
    const pin = this.#pin;
    let ca: (string | Buffer)[] | undefined = this.#ca === undefined ? undefined : [this.#ca];
    if (pin !== null && ca === undefined) {
      const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
      const port = Number(url.port || (url.protocol === "wss:" ? 443 : 8883));
      const cert = await presentedCertificate(host, port, this.#timeoutMs);
      if (cert.fingerprint256 !== pin) throw new CertificatePinError(cert.fingerprint256, pin);
      // A pinned certificate a public CA issued verifies by the system's CAs; a self-signed one by itself.
      ca = [...rootCertificates, new X509Certificate(cert.raw).toString()];
    }
    return {
      rejectUnauthorized: true,
      ...(ca === undefined ? {} : { ca }),
      ...(pin === null ? {} : { checkServerIdentity: (_host: string, cert: PeerCertificate) => (cert.fingerprint256 === pin ? undefined : new CertificatePinError(cert.fingerprint256, pin)) }),
    };
  }
}

/** A device in Node, with its key from a key file (device-sim/keyfile.ts). */
export class Device extends DeviceClient {
  constructor(options: DeviceOptions) {
    const urls = typeof options.url === "string" ? [options.url] : options.url;
    if (urls.length === 0) throw new Error("no broker URL: give at least one (mqtt://, mqtts://, ws:// or wss://host:port)");
    let secure = false;
    for (const url of urls) {
      let scheme: string;
      try {
        scheme = new URL(url).protocol;
      } catch {
        throw new Error(`broker URL ${url} is not a URL (mqtt://, mqtts://, ws:// or wss://host:port)`);
      }
      if (!SCHEMES.includes(scheme)) throw new Error(`broker URL ${url}: the scheme must be mqtt://, mqtts://, ws:// or wss://`);
      if (scheme === "mqtts:" || scheme === "wss:") secure = true;
    }
    // With several URLs, the trust applies to each mqtts:// and wss:// one.
    if (!secure && (options.ca !== undefined || options.fingerprint256 !== undefined)) {
      throw new Error(`broker URL ${urls.join(", ")} is not TLS: a CA or fingerprint applies only to mqtts:// and wss://`);
    }
    let pin: string | null = null;
    if (options.fingerprint256 !== undefined) {
      pin = normalizeFingerprint(options.fingerprint256);
      if (pin === null) throw new Error(`fingerprint ${options.fingerprint256} is not a SHA-256 fingerprint (64 hex digits, colons optional)`);
    }
    const { ca, fingerprint256: _pinned, key, ...client } = options;
    const signer = new Signer(key.pair);
    super({
      ...client,
      identity: { deviceId: key.deviceId, sign: (b) => signer.sign(b) },
      platform: new NodePlatform(pin, ca, options.connectTimeoutMs ?? 10_000),
    });
  }
}

/**
 * A Device that remembers the type of every message it sent, by id, so that an answer's `re`
 * tells what it answers (a task or result may be pushed or be the answer to the device's own
 * message). For tools that watch the protocol: the map grows with every message sent.
 */
export class RecordingDevice extends Device {
  readonly sentTypes = new Map<string, string>();

  override send(type: string, body: Record<string, unknown>, overrides: Partial<Payload> = {}): string {
    const id = super.send(type, body, overrides);
    this.sentTypes.set(id, type);
    return id;
  }
}
