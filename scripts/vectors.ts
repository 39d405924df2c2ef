/**
 * The test vectors of docs/protocol.md §Test vectors, computed with the real protocol code.
 *
 *   npx tsx scripts/vectors.ts        prints them as the labelled ```vector blocks the document holds
 *
 * Every input is fixed (seeds, timestamps, nonce, message ids) and Ed25519 is deterministic, so
 * the output never changes unless the wire format does. test/unit/protocol-doc.test.ts holds
 * the document equal to this output and checks each vector against the code independently.
 */
import { pathToFileURL } from "node:url";
import { createHash } from "node:crypto";
import { keyPairFromSeed, Signer } from "../src/crypto/ed25519.ts";
import { toBase32, toBase64 } from "../src/crypto/encoding.ts";
import { deviceIdFor } from "../src/crypto/ids.ts";
import { BROKER_ID, parseEnvelope, PROTOCOL_VERSION, sealEnvelope, type Payload } from "../src/protocol/envelope.ts";
import { makeToken, tokenSignedBytes } from "../src/protocol/token.ts";
import { signedDown } from "../src/service/outgoing.ts";

/** The fixed inputs. */
export const VECTOR_INPUTS = {
  /** Device seed: the 32 bytes 0x01, 0x02, …, 0x20. */
  deviceSeed: Uint8Array.from({ length: 32 }, (_, i) => i + 1),
  /** Broker seed: the 32 bytes 0x21, 0x22, …, 0x40. */
  brokerSeed: Uint8Array.from({ length: 32 }, (_, i) => i + 0x21),
  /** 2026-01-01T00:00:00.000Z */
  tsMs: 1_767_225_600_000,
  /** base64url (no padding) of the 16 bytes 0x00 … 0x0f. */
  nonce: Buffer.from(Uint8Array.from({ length: 16 }, (_, i) => i)).toString("base64url"),
  pingId: "ping-0001",
  pingEcho: "hello",
  /** The broker answers 42 ms later; its message ids are UUIDs. */
  pongTsMs: 1_767_225_600_042,
  pongId: "00000000-0000-4000-8000-000000000001",
  /** A ping that names two ids: JSON.parse keeps the second, another parser may keep the first. */
  duplicateIds: ["dup-0001", "dup-0002"],
} as const;

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const utf8 = new TextEncoder();

/** label → exact value, in the order the document lists them. */
export function computeVectors(): [label: string, value: string][] {
  const i = VECTOR_INPUTS;
  const device = keyPairFromSeed(i.deviceSeed);
  const deviceSigner = new Signer(device);
  const deviceId = deviceIdFor(device.publicKey);
  const digest = new Uint8Array(createHash("sha256").update(device.publicKey).digest());

  const signed = tokenSignedBytes(deviceId, i.tsMs, i.nonce);
  const tokenSig = deviceSigner.sign(signed);
  const password = makeToken(deviceId, i.tsMs, i.nonce, (b) => deviceSigner.sign(b));

  const ping: Payload = { v: PROTOCOL_VERSION, type: "ping", id: i.pingId, from: deviceId, to: BROKER_ID, ts: i.tsMs, body: { echo: i.pingEcho } };
  const pingText = JSON.stringify(ping);
  const pingEnvelope = sealEnvelope(ping, (b) => deviceSigner.sign(b)).text;

  const broker = keyPairFromSeed(i.brokerSeed);
  const brokerSigner = new Signer(broker);
  const pong = signedDown(brokerSigner, deviceId, "pong", { echo: i.pingEcho, brokerTs: i.pongTsMs }, i.pingId, i.pongTsMs, i.pongId);
  const pongEnvelope = new TextDecoder().decode(pong.bytes);
  const pongText = (JSON.parse(pongEnvelope) as { payload: string }).payload;

  // Signed correctly, and still refused: its id is ambiguous (§Envelope, member names).
  const [firstId, secondId] = i.duplicateIds;
  const dupText = JSON.stringify({ ...ping, id: firstId }).replace(`"id":"${firstId}",`, `"id":"${firstId}","id":"${secondId}",`);
  const dupSig = toBase64(deviceSigner.sign(utf8.encode(dupText)));
  const dupEnvelope = JSON.stringify({ payload: dupText, sig: dupSig });
  const refused = parseEnvelope(utf8.encode(dupEnvelope));
  if (refused.ok) throw new Error("the duplicate-id vector parses: the broker would handle it");
  const dupAnswer = JSON.stringify({ code: refused.code, detail: refused.detail, inReplyTo: refused.id });

  return [
    ["device.seed.hex", hex(i.deviceSeed)],
    ["device.public-key.hex", hex(device.publicKey)],
    ["device.public-key.base64", toBase64(device.publicKey)],
    ["device.public-key.sha256.hex", hex(digest)],
    ["device.public-key.sha256.base32", toBase32(digest)],
    ["device.id", deviceId],
    ["token.ts", String(i.tsMs)],
    ["token.nonce", i.nonce],
    ["token.signed-text", new TextDecoder().decode(signed)],
    ["token.signed-hex", hex(signed)],
    ["token.signature.base64", toBase64(tokenSig)],
    ["token.password", password],
    ["ping.payload", pingText],
    ["ping.signature.base64", toBase64(deviceSigner.sign(utf8.encode(pingText)))],
    ["ping.envelope", pingEnvelope],
    ["broker.seed.hex", hex(i.brokerSeed)],
    ["broker.public-key.base64", toBase64(broker.publicKey)],
    ["pong.payload", pongText],
    ["pong.signature.base64", toBase64(brokerSigner.sign(utf8.encode(pongText)))],
    ["pong.envelope", pongEnvelope],
    ["duplicate-id.payload", dupText],
    ["duplicate-id.signature.base64", dupSig],
    ["duplicate-id.envelope", dupEnvelope],
    ["duplicate-id.error-body", dupAnswer],
  ];
}

/** The vectors as the document's fenced blocks: ```vector <label> … ```. */
export function vectorsMarkdown(): string {
  return computeVectors()
    .map(([label, value]) => "```vector " + label + "\n" + value + "\n```")
    .join("\n\n");
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  console.log(vectorsMarkdown());
}
