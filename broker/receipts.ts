/**
 * The PUBACK is the receipt (docs/protocol.md §Delivery): the message reached the device over its
 * authenticated connection and is not sent again. (A signed `ack` says the same, at the cost of a
 * signature check; the PUBACK costs nothing.)
 *
 * Sessions are clean, so Aedes keeps no record of what it sent: the broker numbers each packet
 * to a device itself (Aedes uses a packet identifier it is given) and matches the PUBACK's
 * identifier to the outbox row.
 */
import type { Aedes, Client } from "aedes";
import { Readable } from "node:stream";
import type { Logger } from "pino";
import { downTopic } from "../src/protocol/topics.ts";
import { errorSummary, type Inbox } from "../src/service/inbox.ts";

/** Broker messages sent to one connection whose PUBACK is still awaited, at most (older ones are resent on reconnect). */
const MAX_UNCONFIRMED_PER_DEVICE = 1024;

/** Hands a signed message to a device: QoS 1 on its down topic. `outboxId` null: not stored, no receipt wanted. */
export type Publish = (deviceId: string, bytes: Uint8Array, outboxId: string | null) => void;

export function installReceipts(aedes: Aedes, inbox: Pick<Inbox, "delivered">, log: Logger): Publish {
  // Outbox message id by payload buffer: Aedes hands the same buffer back with the device's PUBACK.
  const outboxIds = new WeakMap<Buffer, string>();
  const publish: Publish = (deviceId, bytes, outboxId) => {
    const payload = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (outboxId !== null) outboxIds.set(payload, outboxId);
    aedes.publish({ cmd: "publish", topic: downTopic(deviceId), payload, qos: 1, retain: false, dup: false }, (err) => {
      if (err) log.warn({ device: deviceId, err: errorSummary(err) }, "publish failed; the outbox keeps it for the next connect");
    });
  };

  const inflight = new WeakMap<Client, { next: number; outbox: Map<number, string> }>();
  aedes.authorizeForward = (client, packet) => {
    // A QoS 0 subscriber sends no PUBACK: nothing to match, nothing to keep (it needs an `ack`).
    const subscription = (client as unknown as { subscriptions?: Record<string, { qos?: number } | undefined> }).subscriptions?.[packet.topic];
    if (subscription !== undefined && !subscription.qos) return packet;
    let state = inflight.get(client);
    if (state === undefined) inflight.set(client, (state = { next: 1, outbox: new Map() }));
    const messageId = state.next;
    state.next = messageId >= 65_535 ? 1 : messageId + 1;
    state.outbox.delete(messageId);
    const outboxId = Buffer.isBuffer(packet.payload) ? outboxIds.get(packet.payload) : undefined;
    if (outboxId !== undefined) {
      state.outbox.set(messageId, outboxId);
      // A device that never confirms must not grow this without end: the oldest entry goes, and
      // that message stays undelivered, so it is sent again on the next connect.
      if (state.outbox.size > MAX_UNCONFIRMED_PER_DEVICE) state.outbox.delete(state.outbox.keys().next().value!);
    }
    return { ...packet, messageId };
  };
  // Aedes' PUBACK handler asks its persistence to forget the packet: the one place that sees the identifier.
  const { persistence } = aedes as unknown as {
    persistence: { outgoingClearMessageId(client: Client, packet: { cmd?: string; messageId?: number }): Promise<unknown>; outgoingStream(client: Client): Readable };
  };
  // Sessions are always clean, so a client's stored outgoing queue is always empty; yet Aedes pipes
  // aedes-persistence's Readable.from(Readable.from([])) on every CONNECT: ~11 KB of short-lived
  // objects each, which made a reconnect storm's RSS depend on GC timing (docs/performance.md).
  const storedOutgoing = persistence.outgoingStream.bind(persistence);
  persistence.outgoingStream = (client) => (client.clean ? emptyStream() : storedOutgoing(client));
  const clearMessageId = persistence.outgoingClearMessageId.bind(persistence);
  persistence.outgoingClearMessageId = (client, packet) => {
    if (packet.cmd === "puback" && packet.messageId !== undefined) {
      const state = inflight.get(client);
      const outboxId = state?.outbox.get(packet.messageId);
      if (outboxId !== undefined) {
        state!.outbox.delete(packet.messageId);
        inbox.delivered(client.id, outboxId);
      }
    }
    return clearMessageId(client, packet);
  };
  return publish;
}

function emptyStream(): Readable {
  return new Readable({
    objectMode: true,
    read() {
      this.push(null);
    },
  });
}
