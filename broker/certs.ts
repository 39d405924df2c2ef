/**
 * The broker's TLS certificate and key, for the TLS and WebSocket-over-TLS listeners.
 *
 * From files (--tls-cert, --tls-key) when given; otherwise a self-signed certificate for
 * localhost that the first start creates in the data dir (tls.crt, and tls.key with mode 0600),
 * so a developer has TLS with no set-up. Devices trust it by its SHA-256 fingerprint
 * (`npm run admin -- broker cert`; docs/protocol.md §Connecting over TLS and WebSocket).
 */
import { X509Certificate, createPrivateKey } from "node:crypto";
import { chmodSync, existsSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { generate } from "selfsigned";

export const SELF_SIGNED_CERT_FILE = "tls.crt";
export const SELF_SIGNED_KEY_FILE = "tls.key";
/** How long a generated certificate is valid: 825 days, the longest that TLS clients commonly accept. */
export const SELF_SIGNED_VALID_DAYS = 825;

export class CertificateError extends Error {}

/** A certificate and its key, checked to belong together, with what devices pin. */
export interface Certificate {
  readonly certPem: string;
  readonly keyPem: string;
  /** "AB:CD:…": SHA-256 of the DER certificate, as `openssl x509 -fingerprint -sha256` prints it. */
  readonly fingerprint256: string;
  readonly validTo: Date;
  readonly certFile: string;
  readonly keyFile: string;
  /** True when this start created the self-signed pair. */
  readonly created: boolean;
}

export interface CertificateSource {
  /** "" when none is given: the self-signed pair in the data dir. */
  readonly tlsCert: string;
  readonly tlsKey: string;
  readonly dataDir: string;
}

/** The files the certificate is read from: the given ones, or the data dir's self-signed pair. */
export function certificateFiles(s: CertificateSource): { certFile: string; keyFile: string; given: boolean } {
  if ((s.tlsCert === "") !== (s.tlsKey === "")) throw new CertificateError("give both --tls-cert and --tls-key, or neither (then a self-signed certificate in the data dir is used)");
  if (s.tlsCert !== "") return { certFile: s.tlsCert, keyFile: s.tlsKey, given: true };
  return { certFile: join(s.dataDir, SELF_SIGNED_CERT_FILE), keyFile: join(s.dataDir, SELF_SIGNED_KEY_FILE), given: false };
}

/** Reads the certificate and key; creates the self-signed pair first when none is given and none exists yet. */
export async function loadCertificate(s: CertificateSource): Promise<Certificate> {
  const files = certificateFiles(s);
  let created = false;
  if (!files.given && !existsSync(files.certFile)) {
    await createSelfSigned(files.certFile, files.keyFile);
    created = true;
  }
  return { ...readCertificate(files.certFile, files.keyFile), created };
}

/** Reads and checks a certificate and key pair from their files (what a SIGHUP reload does). */
export function readCertificate(certFile: string, keyFile: string): Omit<Certificate, "created"> {
  let certPem: string;
  let keyPem: string;
  try {
    certPem = readFileSync(certFile, "utf8");
    keyPem = readFileSync(keyFile, "utf8");
  } catch (err) {
    throw new CertificateError(`cannot read the TLS certificate or key: ${(err as Error).message}`);
  }
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(certPem);
  } catch (err) {
    throw new CertificateError(`${certFile} is not a PEM certificate: ${(err as Error).message}`);
  }
  let matches: boolean;
  try {
    matches = x509.checkPrivateKey(createPrivateKey(keyPem));
  } catch (err) {
    throw new CertificateError(`${keyFile} is not a PEM private key: ${(err as Error).message}`);
  }
  if (!matches) throw new CertificateError(`${keyFile} is not the private key of ${certFile}`);
  return { certPem, keyPem, fingerprint256: x509.fingerprint256, validTo: new Date(x509.validTo), certFile, keyFile };
}

/**
 * A self-signed EC P-256 certificate for localhost and 127.0.0.1/::1 (measured: ~25 ms; RSA 2048
 * took ~150 ms). The key is written with mode 0600 before the certificate, each file by rename, so
 * a crash leaves either no certificate (the next start makes a pair) or a complete pair.
 */
async function createSelfSigned(certFile: string, keyFile: string): Promise<void> {
  const now = Date.now();
  const pems = await generate([{ name: "commonName", value: "localhost" }], {
    keyType: "ec",
    curve: "P-256",
    algorithm: "sha256",
    notBeforeDate: new Date(now - 60_000),
    notAfterDate: new Date(now + SELF_SIGNED_VALID_DAYS * 86_400_000),
    extensions: [
      { name: "basicConstraints", cA: false },
      { name: "keyUsage", digitalSignature: true, keyEncipherment: true },
      { name: "extKeyUsage", serverAuth: true },
      { name: "subjectAltName", altNames: [{ type: 2, value: "localhost" }, { type: 7, ip: "127.0.0.1" }, { type: 7, ip: "::1" }] },
    ],
  });
  writeAtomically(keyFile, pems.private, 0o600);
  writeAtomically(certFile, pems.cert, 0o644);
}

function writeAtomically(file: string, text: string, mode: number): void {
  const tmp = `${file}.tmp`;
  writeFileSync(tmp, text, { mode });
  chmodSync(tmp, mode); // the umask may have narrowed or a leftover tmp file kept another mode
  renameSync(tmp, file);
}
