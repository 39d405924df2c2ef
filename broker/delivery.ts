/**
 * Delivery to devices, flow-controlled per connection (docs/protocol.md §Delivery).
 *
 * The PUBACK is the receipt: the message reached the device over its authenticated connection
 * and is not sent again (a signed `ack` says the same). Sessions are clean, so Aedes keeps no
 * record of what it sent: the broker numbers each packet to a device itself and matches the
 * PUBACK's identifier to the outbox row.
 *
 * Each connection has at most `window` outbox messages awaiting their receipt. What does not fit
 * stays in the outbox, where it already is, and is read from there as receipts free the window:
 * one resend pass per connection, started by its first SUBSCRIBE of the down topic, reading the
 * outbox in order past a cursor. A repeated SUBSCRIBE adds nothing. So a device with a thousand
 * undelivered messages costs the broker `window` messages in flight, however it behaves, and a
 * device that never acknowledges stops receiving after `window` messages until it reconnects.
 *
 * Messages are written to the device's own connection (Aedes' client.publish), not through
 * Aedes' shared emitter: a device that stops reading holds up only its own deliveries, never
 * everybody's (the emitter has one queue for all, whose backlog once overflowed the stack).
 */
import type { Aedes, Client } from "aedes";
import { Readable } from "node:stream";
import type { Logger } from "pino";
import { downTopic, filterMatches } from "../src/protocol/topics.ts";
import { errorSummary } from "../src/service/inbox.ts";
import { NO_METRICS, type Metrics } from "../src/service/metrics.ts";
import type { OutboxRow } from "../src/store/outbox.ts";

/** Broker messages one connection may have awaiting their receipt (docs/protocol.md §Limits). */
export const DELIVERY_WINDOW = 100;

export interface DeliveryOptions {
  readonly aedes: Aedes;
  readonly log: Logger;
  /** Most outbox messages awaiting a receipt per connection; default DELIVERY_WINDOW. */
  readonly window?: number;
  /** Undelivered outbox rows of a device with seq above `afterSeq`, oldest first, at most `limit`. */
  readonly undelivered: (deviceId: string, afterSeq: number, limit: number) => readonly OutboxRow[];
  /** A device's PUBACK for one of its outbox messages (Inbox.delivered: written in the next batch). */
  readonly delivered: (deviceId: string, msgId: string) => void;
  /** Runs `fn` once every commit made so far is on disk (rows read may be committed, not yet synced). */
  readonly afterDurable: (fn: () => void) => void;
  /**
   * A connection whose window stays full this long without a receipt is closed: the device has
   * stopped reading or acknowledging (--drain-timeout-ms). Its messages stay undelivered.
   */
  readonly stallTimeoutMs: number;
  /** Counts each message written to a device's connection, by type (broker/metrics.ts); none when absent. */
  readonly metrics?: Metrics;
  /**
   * Other nodes add rows to the same outbox (several nodes, broker/cluster.ts). A row this node
   * commits is then read from the outbox like theirs, never sent straight away: its seq may lie
   * past a row another node committed first whose notice is still on its way, and sending it
   * would move the cursor past that row for good.
   */
  readonly sharedOutbox?: boolean;
}

/** What one connection has been sent and may be sent. */
interface Conn {
  readonly client: Client;
  readonly deviceId: string;
  /** The QoS it gets on its down topic (at most 1), or null while it has no subscription to it. */
  qos: 0 | 1 | null;
  nextPacketId: number;
  /** Outbox messages sent and not yet receipted: message id → packet identifier (0 under QoS 0). */
  readonly awaiting: Map<string, number>;
  readonly byPacketId: Map<number, string>;
  /** The highest outbox seq this connection has been handed: the resend pass reads past it. */
  cursor: number;
  /** Undelivered rows may wait in the outbox past the cursor: they are read as the window frees. */
  behind: boolean;
  /** A read of the outbox is under way (it waits for the disk before sending). */
  reading: boolean;
  /** A live message was left in the outbox while a read was under way: read once more. */
  missed: boolean;
  /** Messages the resend pass has sent, for its log line. */
  resent: number;
  /** Runs while the window is full: no receipt before it fires closes the connection. */
  stallTimer: NodeJS.Timeout | null;
}

export class Delivery {
  readonly #o: DeliveryOptions;
  readonly #window: number;
  readonly #conns = new WeakMap<Client, Conn>();
  readonly #clients: Record<string, Client | undefined>;
  /** The packet identifier of each payload buffer handed to Aedes (its authorizeForward sets it). */
  readonly #packetIds = new WeakMap<Buffer, number>();
  readonly #metrics: Metrics;

  constructor(options: DeliveryOptions) {
    this.#o = options;
    this.#window = options.window ?? DELIVERY_WINDOW;
    this.#metrics = options.metrics ?? NO_METRICS;
    const aedes = options.aedes;
    this.#clients = (aedes as unknown as { clients: Record<string, Client | undefined> }).clients;
    // Aedes numbers QoS 1 packets itself unless the packet it forwards has an identifier.
    aedes.authorizeForward = (_client, packet) => {
      const id = Buffer.isBuffer(packet.payload) ? this.#packetIds.get(packet.payload) : undefined;
      return id === undefined ? packet : { ...packet, messageId: id };
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
      if (packet.cmd === "puback" && packet.messageId !== undefined) this.#puback(client, packet.messageId);
      return clearMessageId(client, packet);
    };
  }

  /**
   * Sends a committed, synced message to its device if it is connected and subscribed. `row`
   * null: an answer that is not stored (a refusal): sent once, outside the window, or lost.
   */
  publish(deviceId: string, bytes: Uint8Array, row: Pick<OutboxRow, "seq" | "msgId"> | null): void {
    const client = this.#clients[deviceId];
    const conn = client === undefined ? undefined : this.#conns.get(client);
    if (conn === undefined) return; // not subscribed yet: stored rows wait in the outbox for its pass
    if (conn.qos === null) {
      // Unsubscribed for now: read it from the outbox when it subscribes again.
      if (row !== null) conn.behind = true;
      return;
    }
    if (row === null) return this.#send(conn, bytes, null);
    if (row.seq <= conn.cursor) return; // a resend pass already read it from the outbox
    if (this.#o.sharedOutbox === true) return this.stored(deviceId);
    if (conn.behind || conn.awaiting.size >= this.#window) {
      conn.behind = true;
      if (conn.reading) conn.missed = true;
      return;
    }
    this.#send(conn, bytes, row.msgId);
    conn.cursor = row.seq;
  }

  /**
   * The client's subscriptions changed. Its first subscription to its own down topic starts the
   * resend pass; a repeated one sends nothing again; losing it stops sending (what was sent still
   * awaits its receipt).
   */
  subscriptionsChanged(client: Client): void {
    const qos = downQos(client);
    let conn = this.#conns.get(client);
    if (conn === undefined) {
      if (qos === null) return;
      conn = { client, deviceId: client.id, qos: null, nextPacketId: 1, awaiting: new Map(), byPacketId: new Map(), cursor: 0, behind: true, reading: false, missed: false, resent: 0, stallTimer: null };
      this.#conns.set(client, conn);
    }
    conn.qos = qos;
    // Only reads what it has not read yet, and nothing while a read is under way or the window is full.
    if (qos !== null) this.#fill(conn);
  }

  /**
   * Another node committed outbox rows for this device (broker/cluster.ts): read the outbox past
   * the cursor, as after a receipt.
   */
  stored(deviceId: string): void {
    const client = this.#clients[deviceId];
    const conn = client === undefined ? undefined : this.#conns.get(client);
    if (conn === undefined) return; // its resend pass, when it subscribes, reads them
    conn.behind = true;
    if (conn.reading) conn.missed = true;
    else this.#fill(conn);
  }

  /** A receipt written for a device (a PUBACK or a signed `ack`): its window slot is free. */
  receipted(deviceId: string, msgId: string): void {
    const client = this.#clients[deviceId];
    const conn = client === undefined ? undefined : this.#conns.get(client);
    if (conn === undefined) return;
    const packetId = conn.awaiting.get(msgId);
    if (packetId === undefined) return;
    conn.awaiting.delete(msgId);
    if (packetId !== 0) conn.byPacketId.delete(packetId);
    this.#unstalled(conn);
    this.#fill(conn);
  }

  /** How many messages a device's connection has awaiting their receipt (for tests and logs). */
  awaiting(deviceId: string): number {
    const client = this.#clients[deviceId];
    return (client === undefined ? undefined : this.#conns.get(client))?.awaiting.size ?? 0;
  }

  #puback(client: Client, packetId: number): void {
    const conn = this.#conns.get(client);
    const msgId = conn?.byPacketId.get(packetId);
    if (conn === undefined || msgId === undefined) return;
    conn.byPacketId.delete(packetId);
    conn.awaiting.delete(msgId);
    this.#o.delivered(conn.deviceId, msgId);
    this.#unstalled(conn);
    this.#fill(conn);
  }

  #unstalled(conn: Conn): void {
    if (conn.stallTimer === null) return;
    clearTimeout(conn.stallTimer);
    conn.stallTimer = null;
  }

  #stalled(conn: Conn): void {
    conn.stallTimer = null;
    if (conn.client.closed || conn.awaiting.size < this.#window) return;
    this.#o.log.warn(
      { device: conn.deviceId, awaiting: conn.awaiting.size, ms: this.#o.stallTimeoutMs },
      "connection dropped: no receipt for any message of its full delivery window; they stay undelivered",
    );
    conn.client.close();
  }

  /** Reads what fits in the window from the outbox past the cursor, and sends it once it is on disk. */
  #fill(conn: Conn): void {
    if (conn.qos === null || !conn.behind || conn.reading) return;
    const room = this.#window - conn.awaiting.size;
    if (room <= 0) return;
    let rows: readonly OutboxRow[];
    try {
      rows = this.#o.undelivered(conn.deviceId, conn.cursor, room);
    } catch (err) {
      // The rows stay undelivered: the next receipt or connect tries again.
      this.#o.log.error({ err: errorSummary(err), device: conn.deviceId }, "reading undelivered messages failed");
      return;
    }
    conn.reading = true;
    conn.missed = false;
    this.#o.afterDurable(() => {
      conn.reading = false;
      if (this.#clients[conn.deviceId] !== conn.client || conn.qos === null) return;
      for (const row of rows) {
        this.#send(conn, row.bytes, row.msgId);
        conn.cursor = row.seq;
      }
      conn.resent += rows.length;
      if (rows.length === room) return; // the window is full: receipts call #fill again
      if (conn.missed) {
        setImmediate(() => this.#fill(conn));
        return;
      }
      conn.behind = false;
      if (conn.resent > 0) this.#o.log.info({ device: conn.deviceId, resent: conn.resent }, "resent undelivered messages");
      conn.resent = 0;
    });
  }

  #send(conn: Conn, bytes: Uint8Array, msgId: string | null): void {
    const payload = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let packetId = 0;
    if (conn.qos === 1) {
      // Identifiers in use are skipped: at most `window` of 65,535 are, so this ends quickly.
      do {
        packetId = conn.nextPacketId;
        conn.nextPacketId = packetId >= 65_535 ? 1 : packetId + 1;
      } while (conn.byPacketId.has(packetId));
      this.#packetIds.set(payload, packetId);
    }
    if (msgId !== null) {
      conn.awaiting.set(msgId, packetId);
      if (packetId !== 0) conn.byPacketId.set(packetId, msgId);
      if (conn.awaiting.size >= this.#window && conn.stallTimer === null) {
        conn.stallTimer = setTimeout(() => this.#stalled(conn), this.#o.stallTimeoutMs);
        conn.stallTimer.unref();
      }
    }
    this.#metrics.messageOut(downType(bytes));
    conn.client.publish({ cmd: "publish", topic: downTopic(conn.deviceId), payload, qos: conn.qos ?? 0, retain: false, dup: false }, (err?: Error) => {
      if (err) this.#o.log.warn({ device: conn.deviceId, err: errorSummary(err) }, "publish failed; the outbox keeps it for the next connect");
    });
  }
}

/** The QoS a client gets on its own down topic: the highest any of its filters grants it, at most 1. */
function downQos(client: Client): 0 | 1 | null {
  const topic = downTopic(client.id);
  let qos: 0 | 1 | null = null;
  const subscriptions = (client as unknown as { subscriptions: Record<string, { qos?: number } | undefined> }).subscriptions;
  for (const [filter, sub] of Object.entries(subscriptions)) {
    if (sub === undefined || !filterMatches(filter, topic)) continue;
    qos = (sub.qos ?? 0) >= 1 ? 1 : (qos ?? 0);
  }
  return qos;
}

/**
 * The type of a signed down message, read from its first bytes without parsing it: the broker's
 * own envelopes put `v` and then `type` first in the payload (src/protocol/envelope.ts
 * sealEnvelope, src/service/outgoing.ts). "unknown" if that ever changes (a test holds it).
 */
export function downType(bytes: Uint8Array): string {
  const head = Buffer.from(bytes.buffer, bytes.byteOffset, Math.min(bytes.byteLength, 80)).toString("latin1");
  return DOWN_TYPE_RE.exec(head)?.[1] ?? "unknown";
}
const DOWN_TYPE_RE = /^\{"payload":"\{\\"v\\":\d+,\\"type\\":\\"([a-z_]{1,40})\\"/;

function emptyStream(): Readable {
  return new Readable({
    objectMode: true,
    read() {
      this.push(null);
    },
  });
}
