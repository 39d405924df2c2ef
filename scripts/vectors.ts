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
import { consistencyProof, EMPTY_ROOT, headSignedBytes, inclusionPath, leafHash, rootOf } from "../src/core/merkle.ts";
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
  /** The audit vectors: a payment of the vector device (the terminal) and its transfer. */
  paymentId: "pay_k4d2q7vmxa3hzt5nrwby",
  transferId: "tr_m5c7xq2pfz4kvta3hnwe",
  otherPaymentId: "pay_r7tz2xw4kq5mbn3dvh6c",
  agreementId: "ag_w3nh6tq2xk5ry7bdzm4a",
  phoneId: "dq7kx3mfw2zt5nrb4vhc",
  /** The receipt: the payment_result sent to the terminal, with this message id. */
  resultId: "00000000-0000-4000-8000-000000000002",
  /** The broker signs the head of the five sample entries one second after the first. */
  headTsMs: 1_767_225_601_000,
  /** The inclusion proof is for the result's entry; the consistency proof from 3 to 5 entries. */
  resultIndex: 2,
  consistencyFrom: 3,
} as const;

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const utf8 = new TextEncoder();
const sha256Base64 = (text: string) => createHash("sha256").update(text).digest("base64");

/**
 * Five sample audit entries, in the shape the broker writes them (docs/protocol.md §Audit log and
 * receipts): the terminal registered, an auto-confirmed payment accepted, its result (the
 * receipt's entry, index 2) and the transfer that follows it, then another payment accepted.
 */
export function sampleAuditEntries(deviceId: string): string[] {
  const i = VECTOR_INPUTS;
  // Triggers name signed messages by id and the SHA-256 of their payload bytes; these samples
  // stand for a pay_request and a payment_execute.
  const execute = { msgId: "exec-0001", digest: sha256Base64("a payment_execute payload") };
  /** A payment.event entry's fields, in the broker's order (src/service/payments.ts). */
  const payment = (id: string, event: string, from: string | null, status: string, transferId: string | null, trigger: object) => ({
    kind: "payment.event",
    subject: id,
    event,
    from,
    status,
    mode: "auto",
    terminalId: deviceId,
    phoneId: i.phoneId,
    agreementId: i.agreementId,
    merchantId: "coffee-corner",
    amountMinor: 1280,
    currency: "CNY",
    reason: null,
    transferId,
    trigger,
  });
  const accepted = (id: string, n: number) => payment(id, "pay_request", null, "executing", null, { msgId: `pay-000${n}`, digest: sha256Base64(`pay_request payload ${n}`) });
  const entries: Record<string, unknown>[] = [
    { atMs: i.tsMs, kind: "device.registered", subject: deviceId, deviceKind: "terminal", trigger: { admin: "device add", osUser: "operator" } },
    { atMs: i.tsMs + 100, ...accepted(i.paymentId, 1) },
    { atMs: i.tsMs + 200, ...payment(i.paymentId, "execute", "executing", "completed", i.transferId, execute) },
    { atMs: i.tsMs + 200, kind: "ledger.transfer", subject: i.paymentId, transferId: i.transferId, transferKind: "payment", paymentId: i.paymentId, reference: "order-1", debitAccount: "wallet:5f1c0e9a7b3d2c4e6a8b0d1f:CNY", creditAccount: "merchant:coffee-corner:CNY", amountMinor: 1280, currency: "CNY", trigger: execute },
    { atMs: i.tsMs + 300, ...accepted(i.otherPaymentId, 2) },
  ];
  // Members in the broker's order: v, index, atMs, kind, subject, then the kind's fields.
  return entries.map((e, index) => {
    const { atMs, kind, subject, ...fields } = e;
    return JSON.stringify({ v: 1, index, atMs, kind, subject, ...fields });
  });
}

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

  // The audit log: five entries, their tree, proofs, a signed head and a receipt proven by them.
  const entries = sampleAuditEntries(deviceId);
  const leaves = entries.map((e) => leafHash(utf8.encode(e)));
  const subtree = (start: number, size: number) => rootOf(leaves.slice(start, start + size));
  const root = rootOf(leaves);
  const headBytes = headSignedBytes(leaves.length, root, i.headTsMs);
  const head = { treeSize: leaves.length, rootHash: toBase64(root), timestampMs: i.headTsMs, signature: toBase64(brokerSigner.sign(headBytes)) };
  const path = inclusionPath(i.resultIndex, leaves.length, subtree).map(toBase64);
  const resultEntry = JSON.parse(entries[i.resultIndex]!) as { atMs: number };
  const result: Payload = {
    v: PROTOCOL_VERSION,
    type: "payment_result",
    id: i.resultId,
    from: BROKER_ID,
    to: deviceId,
    ts: resultEntry.atMs,
    body: { paymentId: i.paymentId, seq: 4, status: "completed", reason: null, transferId: i.transferId, amountMinor: 1280, currency: "CNY", merchantName: "Coffee Corner", terminalName: "Living room TV", auditIndex: i.resultIndex, atMs: resultEntry.atMs },
  };
  const resultEnvelope = JSON.parse(sealEnvelope(result, (b) => brokerSigner.sign(b)).text) as { payload: string; sig: string };
  const receipt = {
    format: "handoff-pay-receipt/1",
    envelope: resultEnvelope,
    inclusion: { index: i.resultIndex, treeSize: leaves.length, entry: entries[i.resultIndex]!, head, path },
  };

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
    ["audit.empty-root.hex", hex(EMPTY_ROOT)],
    ["audit.entries", entries.join("\n")],
    [`audit.entry.${i.resultIndex}.leaf-hash.hex`, hex(leaves[i.resultIndex]!)],
    ["audit.leaf-hashes.base64", leaves.map(toBase64).join("\n")],
    [`audit.root.${i.consistencyFrom}.base64`, toBase64(rootOf(leaves.slice(0, i.consistencyFrom)))],
    [`audit.root.${leaves.length}.base64`, toBase64(root)],
    [`audit.inclusion.${i.resultIndex}-in-${leaves.length}.path`, path.join("\n")],
    [`audit.consistency.${i.consistencyFrom}-to-${leaves.length}.path`, consistencyProof(i.consistencyFrom, leaves.length, subtree).map(toBase64).join("\n")],
    ["audit.head.signed-text", new TextDecoder().decode(headBytes)],
    ["audit.head.signature.base64", head.signature],
    ["audit.head.json", JSON.stringify(head)],
    ["receipt.payload", resultEnvelope.payload],
    ["receipt.file", JSON.stringify(receipt, null, 2)],
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
