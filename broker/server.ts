/**
 * The broker's composition root: data dir, database, identity, keyring, Aedes and its hooks.
 *
 * startBroker() is what `npm start` runs and what tests and the demo run in-process on port 0.
 * Policy plugs into Aedes' hooks: authenticate (connect tokens), authorizePublish /
 * authorizeSubscribe (the per-device topic ACL), and the inbox receives every up message.
 */
import { Aedes, type Client } from "aedes";
import { createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { Readable } from "node:stream";
import type { Logger } from "pino";
import type { BrokerConfig } from "../src/config.ts";
import { Signer } from "../src/crypto/ed25519.ts";
import { toBase64 } from "../src/crypto/encoding.ts";
import type { Keyring } from "../src/crypto/keyring.ts";
import { downTopic, mayPublish, maySubscribe } from "../src/protocol/topics.ts";
import { CONNECT_REFUSALS, ConnectAuthenticator, type CheckedConnect, type ConnectRefusal } from "../src/service/connect.ts";
import { BINDING_DEFAULTS, registerBinding } from "../src/service/binding.ts";
import { Inbox, errorSummary } from "../src/service/inbox.ts";
import { PAYMENT_DEFAULTS, Payments } from "../src/service/payments.ts";
import { PaymentRepo } from "../src/store/payments.ts";
import { RateLimiter } from "../src/service/rate-limit.ts";
import type { Db } from "../src/store/db.ts";
import { PairingRepo } from "../src/store/binding.ts";
import { AdminEventFeed } from "../src/store/devices.ts";
import { OutboxRepo } from "../src/store/outbox.ts";
import { ReplayRepo } from "../src/store/replay.ts";
import { WalSync } from "../src/store/wal-sync.ts";
import { Checkpointer } from "../src/store/checkpointer.ts";
import { ensureDataDir, loadBrokerIdentity, loadKeyring, lockDataDir, openDataDb } from "./data-dir.ts";
import { guardFrames } from "./frame-guard.ts";

export interface BrokerDeps {
  readonly log: Logger;
  /** HANDOFF_MASTER_KEY's value, when the master key comes from the environment. */
  readonly masterKeyEnv?: string | undefined;
  readonly clock?: () => number;
  /**
   * The disk failed to sync a commit: the broker has stopped (nothing that depended on the
   * commit left it). Absent: logged, and the broker stops.
   */
  readonly onFatal?: (err: Error) => void;
}

export interface BrokerHandle {
  readonly host: string;
  readonly port: number;
  readonly url: string;
  readonly dataDir: string;
  readonly publicKey: Uint8Array;
  readonly db: Db;
  readonly keyring: Keyring;
  readonly inbox: Inbox;
  readonly aedes: Aedes;
  /** Stops accepting, finishes in-flight messages, disconnects everyone, closes the database. */
  close(): Promise<void>;
}

const ADMIN_POLL_MS = 200;
/** Rows of each table one purge step deletes (~2 ms each with secure_delete). */
const PURGE_CHUNK_ROWS = 250;
const DEADLINE_POLL_MS = 100;
/** Broker messages sent to one connection whose PUBACK is still awaited, at most (older ones are resent on reconnect). */
const MAX_UNCONFIRMED_PER_DEVICE = 1024;

export async function startBroker(config: BrokerConfig, deps: BrokerDeps): Promise<BrokerHandle> {
  const { log } = deps;
  const clock = deps.clock ?? Date.now;
  const dataDir = ensureDataDir(config.dataDir, (msg, detail) => log.warn(detail, msg));
  const lock = lockDataDir(dataDir);
  let db: Db;
  let keyring: Keyring;
  let signer: Signer;
  let publicKey: Uint8Array;
  try {
    // The key first: it refuses a database whose key file is missing.
    const loaded = loadKeyring(dataDir, deps.masterKeyEnv, (msg) => log.warn(msg));
    keyring = loaded.keyring;
    if (loaded.source === "created") log.info({ dataDir }, "created master key file master.key (mode 0600)");
    // Commits are synced off the event loop (WalSync), and nothing leaves before its sync.
    db = openDataDb(dataDir, { durability: "caller" }, (msg, detail) => log.warn(detail, msg));
    const identity = loadBrokerIdentity(dataDir);
    signer = new Signer(identity);
    publicKey = identity.publicKey;
  } catch (err) {
    lock.release();
    throw err;
  }

  const aedes = await Aedes.createBroker({
    id: "handoff-pay",
    connectTimeout: config.connectTimeoutMs,
    // Keepalive is clamped in preConnect instead: Aedes' own limit refuses with CONNACK 6,
    // which MQTT 3.1.1 does not define.
    keepaliveLimit: 0,
    drainTimeout: config.drainTimeoutMs,
    maxTopicLevels: config.maxTopicLevels,
    maxClientsIdLength: 64,
    heartbeatInterval: 3_600_000,
  });

  // Outbox message id by payload buffer: Aedes hands the same buffer back with the device's PUBACK.
  const outboxIds = new WeakMap<Buffer, string>();
  const publish = (deviceId: string, bytes: Uint8Array, outboxId: string | null) => {
    const payload = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (outboxId !== null) outboxIds.set(payload, outboxId);
    aedes.publish({ cmd: "publish", topic: downTopic(deviceId), payload, qos: 1, retain: false, dup: false }, (err) => {
      if (err) log.warn({ device: deviceId, err: errorSummary(err) }, "publish failed; the outbox keeps it for the next connect");
    });
  };
  const walSync = new WalSync(`${db.name}-wal`, (err) => {
    log.fatal({ err: errorSummary(err) }, "the disk failed to sync committed data; stopping (what was not synced was never answered)");
    inbox.abandon();
    void close().then(() => deps.onFatal?.(err));
  });
  // Checkpoints too run off the event loop (a worker thread with its own connection).
  const checkpointer = new Checkpointer(db, log);
  const inbox = new Inbox({
    db,
    signer,
    log,
    clock,
    freshnessMs: config.freshnessMs,
    publish,
    rateLimiter: new RateLimiter(config.deviceRatePerSec, config.deviceBurst),
    durable: walSync,
  });
  const payments = new Payments(db, {
    keyring: () => keyring,
    log,
    deadlines: { promptMs: config.promptTtlMs, taskMs: config.taskTtlMs },
    maxConsecutiveAuto: config.maxConsecutiveAuto,
    maxLivePerTerminal: PAYMENT_DEFAULTS.maxLivePerTerminal,
    maxPromptsPerPhone: PAYMENT_DEFAULTS.maxPromptsPerPhone,
    isOnline: (deviceId) => (aedes as unknown as { clients: Record<string, unknown> }).clients[deviceId] !== undefined,
  });
  registerBinding(inbox, db, {
    keyring: () => keyring,
    log,
    pairingTtlMs: config.pairingTtlMs,
    bindRequestsPerWindow: BINDING_DEFAULTS.bindRequestsPerWindow,
    bindWindowMs: BINDING_DEFAULTS.bindWindowMs,
    onUnbound: (ctx, agreementId) => payments.endForAgreement(ctx, agreementId),
  });
  payments.register(inbox);
  const authenticator = new ConnectAuthenticator(db, config.freshnessMs);

  aedes.preConnect = (client, packet, callback) => {
    // Wills would let a device publish after it is gone, outside the signed envelope: none are kept.
    if (packet.will) delete (packet as { will?: unknown }).will;
    // Sessions are always clean: the outbox, not Aedes' memory, redelivers, once the device
    // subscribes after connecting (docs/protocol.md §Delivery).
    packet.clean = true;
    // A silent connection must not live forever: keepalive 0 or above the limit becomes the limit,
    // and Aedes drops a client silent for 1.5 times it.
    if (!packet.keepalive || packet.keepalive > config.keepaliveLimitS) packet.keepalive = config.keepaliveLimitS;
    callback(null, true);
  };

  aedes.authenticate = (client, username, password, callback) => {
    const remote = remoteOf(client);
    const refuse = (reason: ConnectRefusal) => {
      const refusal = CONNECT_REFUSALS[reason];
      log.warn({ clientId: client.id.slice(0, 64), reason, returnCode: refusal.returnCode, remote }, `connection refused: ${refusal.detail}`);
      const err = Object.assign(new Error(refusal.detail), { returnCode: refusal.returnCode });
      callback(err as Error & { returnCode: 2 | 3 | 4 | 5 }, false);
    };
    let checked: CheckedConnect;
    try {
      checked = authenticator.check(client.id, username, password, clock());
    } catch (err) {
      log.error({ err: errorSummary(err), clientId: client.id }, "connect check failed");
      return refuse("unavailable");
    }
    if (!checked.ok) return refuse(checked.reason);
    const device = checked.device;
    // The token is consumed in the next group commit, with the messages of that turn: a storm of
    // reconnects (after a broker restart) shares fsyncs instead of paying one per CONNECT.
    let fresh = false;
    inbox.internal(
      "connect token",
      () => {
        fresh = authenticator.useToken(checked);
      },
      (committed) => {
        if (!committed) return refuse("unavailable");
        if (!fresh) return refuse("reused_token");
        log.info({ device: device.id, kind: device.kind, remote }, "connection accepted");
        callback(null, true);
      },
    );
  };

  aedes.authorizePublish = (client, packet, callback) => {
    if (client === null) return callback(new Error("server-side publishes only"));
    if (!mayPublish(client.id, packet.topic)) {
      log.warn({ device: client.id, topic: packet.topic.slice(0, 200) }, "publish refused: not the device's own up topic; connection closed");
      return callback(new Error("topic not allowed"));
    }
    packet.retain = false; // up messages are never retained
    // Held until the message's transaction commits: the PUBACK then means "stored".
    inbox.submit(client.id, packet.payload as Buffer, () => callback(null));
  };

  aedes.authorizeSubscribe = (client, sub, callback) => {
    if (client === null || !maySubscribe(client.id, sub.topic)) {
      log.warn({ device: client?.id, filter: sub.topic.slice(0, 200) }, "subscription refused: outside the device's own down topic");
      return callback(null, null); // SUBACK 0x80 for this filter [MQTT-3.9.3]
    }
    callback(null, sub);
  };

  // Undelivered outbox messages go again once the device subscribes to its down topic (after
  // every connect): sent earlier, a clean-session client would not receive them.
  aedes.on("subscribe", (subscriptions, client) => {
    if (client === null || !subscriptions.some((s) => (s.qos as number) !== 128 && maySubscribe(client.id, s.topic))) return;
    const resent = inbox.resendUndelivered(client.id);
    if (resent > 0) log.info({ device: client.id, resent }, "resent undelivered messages");
  });
  // The PUBACK is the receipt (docs/protocol.md §Delivery): the message reached the device over
  // its authenticated connection and is not sent again. (A signed `ack` says the same, at the
  // cost of a signature check; the PUBACK costs nothing.) Sessions are clean, so Aedes keeps no
  // record of what it sent: the broker numbers each packet to a device itself (Aedes uses a
  // packet identifier it is given) and matches the PUBACK's identifier to the outbox row.
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
  aedes.on("clientDisconnect", (client) => log.info({ device: client.id }, "disconnected"));
  const errorLogged = new WeakSet<Client>();
  aedes.on("clientError", (client, err) => {
    // A refused CONNECT was already logged, with its reason, by authenticate; and one line per
    // client is enough (a drain timeout fires once for every message stuck behind it).
    if ((err as { returnCode?: number }).returnCode !== undefined || errorLogged.has(client)) return;
    errorLogged.add(client);
    log.info({ device: client.id, err: err.message }, "client error; connection closed");
  });
  aedes.on("connectionError", (client, err) => log.info({ clientId: client?.id?.slice(0, 64), err: err.message, remote: remoteOf(client) }, "connection error"));
  aedes.on("keepaliveTimeout", (client) => log.info({ device: client.id }, "keepalive timeout"));

  const server: Server = createServer((socket: Socket) => {
    // Nagle + delayed ACK cost ~40 ms per QoS 1 round trip on loopback (measured: 1,100 vs 10,000/s).
    socket.setNoDelay(true);
    // Aedes reads the socket itself; the guard sees every chunk first (broker/frame-guard.ts).
    guardFrames(socket, config.maxPacketBytes, (err, s) => {
      log.warn({ remote: `${s.remoteAddress}:${s.remotePort}`, err: err.message }, "connection dropped: packet too large or malformed");
    });
    aedes.handle(socket);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(config.port, config.host, () => {
      server.off("error", reject);
      resolve();
    });
  }).catch(async (err: Error) => {
    await new Promise<void>((r) => aedes.close(() => r()));
    await checkpointer.close();
    walSync.close();
    db.close();
    lock.release();
    throw err;
  });
  const address = server.address() as AddressInfo;

  // A running broker learns of admin commands (device revoke) from admin_events.
  const feed = new AdminEventFeed(db);
  let adminSeq = feed.lastSeq();
  const adminTimer = setInterval(() => {
    try {
      for (const ev of feed.since(adminSeq)) {
        adminSeq = ev.seq;
        if (ev.kind === "keys_changed") {
          // An admin rotated or removed a master key version: new seals use the file's current one.
          keyring = loadKeyring(dataDir, deps.masterKeyEnv).keyring;
          log.info({ keyVersions: keyring.versions, current: keyring.current }, "master keyring reloaded");
        }
        if (ev.kind === "device_revoked" && ev.deviceId !== null) {
          const client = (aedes as unknown as { clients: Record<string, Client | undefined> }).clients[ev.deviceId];
          log.info({ device: ev.deviceId, connected: client !== undefined }, "device revoked");
          client?.close();
        }
      }
    } catch (err) {
      log.error({ err: errorSummary(err) }, "reading admin events failed");
    }
  }, ADMIN_POLL_MS);
  adminTimer.unref();
  const replay = new ReplayRepo(db);
  const pairings = new PairingRepo(db);
  const outbox = new OutboxRepo(db);
  // A purge goes in small steps, one short transaction per event-loop turn, so that a minute's
  // worth of expired rows (~100,000 at 300 flows/s) never stalls the broker for long.
  const purgeStep = db.transaction((now: number) =>
    replay.purge(now, PURGE_CHUNK_ROWS) +
    // Spent and expired pairing codes are kept a day for the answers they give, then dropped;
    // so are delivered outbox messages (a duplicate within the freshness window needs them).
    pairings.purge(now - 86_400_000, PURGE_CHUNK_ROWS) +
    outbox.purgeDelivered(now - 86_400_000, PURGE_CHUNK_ROWS),
  );
  let purging = false;
  const purge = () => {
    let more = false;
    try {
      more = db.open && purgeStep.immediate(clock()) > 0;
    } catch (err) {
      log.error({ err: errorSummary(err) }, "purging expired rows failed");
    }
    purging = more;
    if (more) setImmediate(purge);
  };
  const purgeTimer = setInterval(() => {
    if (!purging) purge();
  }, config.purgeEveryMs);
  purgeTimer.unref();

  // Deadlines are rows: whatever is due, now or after a restart, goes through the core.
  const paymentRepo = new PaymentRepo(db);
  const queuedDeadlines = new Map<string, number>();
  const deadlineTimer = setInterval(() => {
    try {
      const now = clock();
      for (const [key, at] of queuedDeadlines) if (now - at > 5000) queuedDeadlines.delete(key);
      for (const due of paymentRepo.due(now, 500)) {
        const key = `${due.paymentId}/${due.which}`;
        if (queuedDeadlines.has(key)) continue;
        queuedDeadlines.set(key, now);
        inbox.internal(`deadline ${key}`, (ctx) => {
          queuedDeadlines.delete(key);
          payments.fireDeadline(ctx, due.paymentId, due.which);
        });
      }
    } catch (err) {
      log.error({ err: errorSummary(err) }, "reading deadlines failed");
    }
  }, DEADLINE_POLL_MS);
  deadlineTimer.unref();

  log.info(
    {
      host: address.address,
      port: address.port,
      dataDir,
      brokerPublicKey: toBase64(publicKey),
      keyVersions: keyring.versions,
      undeliveredOutbox: new OutboxRepo(db).countUndelivered(),
      armedDeadlines: paymentRepo.armedCount(),
    },
    `broker listening on mqtt://${address.address}:${address.port}`,
  );

  let closing: Promise<void> | null = null;
  const close = () => {
    closing ??= (async () => {
      clearInterval(adminTimer);
      clearInterval(deadlineTimer);
      clearInterval(purgeTimer);
      // Stop accepting first; the listener's close completes once Aedes has closed every client.
      const listenerClosed = new Promise<void>((r) => server.close(() => r()));
      await inbox.idle();
      await new Promise<void>((r) => aedes.close(() => r()));
      await inbox.idle();
      await listenerClosed;
      await checkpointer.close();
      walSync.close();
      db.close();
      lock.release();
      log.info("broker stopped");
    })();
    return closing;
  };

  return {
    host: address.address,
    port: address.port,
    url: `mqtt://${address.address}:${address.port}`,
    dataDir,
    publicKey,
    db,
    get keyring() {
      return keyring;
    },
    inbox,
    aedes,
    close,
  };
}

function emptyStream(): Readable {
  return new Readable({
    objectMode: true,
    read() {
      this.push(null);
    },
  });
}

/** The peer address of a client's connection (Aedes reads the TCP socket itself: `conn` is it). */
function remoteOf(client: Client | undefined | null): string | undefined {
  const s = (client as unknown as { conn?: Partial<Socket> } | undefined | null)?.conn;
  return s?.remoteAddress === undefined ? undefined : `${s.remoteAddress}:${s.remotePort}`;
}
