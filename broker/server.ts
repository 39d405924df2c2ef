/**
 * The broker's composition root: it only wires parts together, each in its own file.
 *
 *   data-dir.ts      the data dir, database, identity and keyring
 *   hooks.ts         Aedes' hooks: CONNECT policy, connect tokens, the topic ACL, connection logs
 *   delivery.ts      what devices are sent, flow-controlled per connection; PUBACKs as receipts
 *   certs.ts         the TLS certificate: from files, or self-signed in the data dir
 *   listener.ts      the listeners (TCP, TLS, WebSocket, WebSocket over TLS), each with the frame guard
 *   pages.ts         the browser terminal and phone pages, served on the WebSocket listeners' HTTP side
 *   deadlines.ts     payment deadlines, polled from their rows
 *   housekeeping.ts  the bounded purge of what is no longer needed
 *   audit-heads.ts   signed heads of the audit log: at an interval, and on shutdown
 *   admin-feed.ts    what the admin tool asks a running broker to do
 *
 * startBroker() is what `npm start` runs and what tests and the demo run in-process on port 0;
 * close() stops the parts in the reverse order.
 */
import { Aedes, type Client } from "aedes";
import type { Logger } from "pino";
import type { BrokerConfig } from "../src/config.ts";
import { Signer } from "../src/crypto/ed25519.ts";
import { toBase64 } from "../src/crypto/encoding.ts";
import type { Keyring } from "../src/crypto/keyring.ts";
import { registerAuditProofs } from "../src/service/audit-proofs.ts";
import { BINDING_DEFAULTS, registerBinding } from "../src/service/binding.ts";
import { ConnectAuthenticator } from "../src/service/connect.ts";
import { Inbox, errorSummary } from "../src/service/inbox.ts";
import { PAYMENT_DEFAULTS, Payments } from "../src/service/payments.ts";
import { RateLimiter } from "../src/service/rate-limit.ts";
import type { Db } from "../src/store/db.ts";
import { OutboxRepo } from "../src/store/outbox.ts";
import { PaymentRepo } from "../src/store/payments.ts";
import { Checkpointer } from "../src/store/checkpointer.ts";
import { WalSync, type WalIo } from "../src/store/wal-sync.ts";
import { Admission } from "../src/service/admission.ts";
import { AdminFeed } from "./admin-feed.ts";
import { AuditHeads } from "./audit-heads.ts";
import { hostname } from "node:os";
import { ClusterLink, clusterEmitter, HEARTBEAT_MS, redisOf, releaseRedis, SharedLimits } from "./cluster.ts";
import { openPostgres } from "../src/store/db.ts";
import { redactUrl } from "../src/store/pg.ts";
import { checkNodeKeys } from "../src/service/keys.ts";
import { DataDirError, ensureDataDir, loadBrokerIdentity, loadKeyring, lockDataDir, openDataDb } from "./data-dir.ts";
import { Deadlines } from "./deadlines.ts";
import { connectLimiter, installHooks } from "./hooks.ts";
import { Housekeeping } from "./housekeeping.ts";
import { loadCertificate, readCertificate, type Certificate } from "./certs.ts";
import { pagesHandler } from "./pages.ts";
import { openListeners, type ListenerAddress, type ListenerKind, type Listeners } from "./listener.ts";
import { Delivery } from "./delivery.ts";
import { connectionsByListener, outboxBacklogReader, promMetrics } from "./metrics.ts";
import { startOperatorHttp, type OperatorServer } from "./operator-http.ts";

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
  /** SQLite: the file calls that sync the WAL (node:fs unless a test holds or watches them). */
  readonly walIo?: WalIo;
}

export interface BrokerHandle {
  /**
   * Address, port and URL of the plain TCP listener (mqtt://); when TCP is off, of the first
   * listener that is on, in the order tls, ws, wss (see `listeners`).
   */
  readonly host: string;
  readonly port: number;
  readonly url: string;
  /** Every open listener's port and URL (mqtt://, mqtts://, ws://, wss://). */
  readonly listeners: Readonly<Partial<Record<ListenerKind, ListenerAddress>>>;
  /** The certificate the TLS listeners present (PEM) and its SHA-256 fingerprint; null when neither tls nor wss is on. */
  readonly certificate: { readonly pem: string; readonly fingerprint256: string } | null;
  /**
   * Re-reads the certificate and key files; new TLS handshakes use them, open connections keep
   * theirs. A file that does not load is logged and the certificate in use kept (false).
   */
  reloadCertificates(): boolean;
  readonly dataDir: string;
  readonly publicKey: Uint8Array;
  readonly db: Db;
  readonly keyring: Keyring;
  readonly inbox: Inbox;
  readonly aedes: Aedes;
  /** Payment deadlines: `poll()` fires what is due by the broker's clock now. */
  readonly deadlines: Deadlines;
  /** The purge: `step()` runs one bounded step now. */
  readonly housekeeping: Housekeeping;
  /** Signed audit heads: `step()` signs one in the next batch if the log has grown (await `inbox.idle()`). */
  readonly auditHeads: AuditHeads;
  /** The operator endpoints (/healthz, /readyz, /metrics); undefined when --metrics-port is off. */
  readonly operator: { readonly port: number; readonly url: string } | undefined;
  /** Stops accepting, finishes in-flight messages, disconnects everyone, closes the database. */
  close(): Promise<void>;
}

export async function startBroker(config: BrokerConfig, deps: BrokerDeps): Promise<BrokerHandle> {
  const { log } = deps;
  const clock = deps.clock ?? Date.now;
  const dataDir = ensureDataDir(config.dataDir, (msg, detail) => log.warn(detail, msg));
  const lock = lockDataDir(dataDir);
  const postgres = config.database !== "";
  const nodeId = config.nodeId !== "" ? config.nodeId : `${hostname()}-${process.pid}`;
  let db: Db;
  let keyring: Keyring;
  let signer: Signer;
  let publicKey: Uint8Array;
  try {
    // The key first: it refuses a database whose key file is missing.
    const loaded = loadKeyring(dataDir, deps.masterKeyEnv, (msg) => log.warn(msg));
    keyring = loaded.keyring;
    if (loaded.source === "created") log.info({ dataDir }, "created master key file master.key (mode 0600)");
    // SQLite: commits are synced off the event loop (WalSync), and nothing leaves before its sync.
    // PostgreSQL: a COMMIT returns once it is durable (src/store/pg.ts).
    db = postgres
      ? openPostgres(config.database, { applicationName: `handoff-pay node ${nodeId}` })
      : openDataDb(dataDir, { durability: "caller" }, (msg, detail) => log.warn(detail, msg));
    const identity = loadBrokerIdentity(dataDir);
    signer = new Signer(identity);
    publicKey = identity.publicKey;
    const keyProblem = checkNodeKeys(db, keyring, publicKey, clock());
    if (keyProblem !== null) {
      db.close();
      throw new DataDirError(keyProblem);
    }
  } catch (err) {
    lock.release();
    throw err;
  }

  // Several nodes: Aedes routes through Redis, and the nodes hear each other (broker/cluster.ts).
  const mq = config.cluster === "" ? undefined : clusterEmitter({ url: config.cluster, nodeId, log });
  const aedes = await Aedes.createBroker({
    id: mq === undefined ? "handoff-pay" : nodeId,
    ...(mq === undefined ? {} : { mq }),
    connectTimeout: config.connectTimeoutMs,
    // Keepalive is clamped in preConnect instead: Aedes' own limit refuses with CONNACK 6,
    // which MQTT 3.1.1 does not define.
    keepaliveLimit: 0,
    drainTimeout: config.drainTimeoutMs,
    maxTopicLevels: config.maxTopicLevels,
    maxClientsIdLength: 64,
    heartbeatInterval: mq === undefined ? 3_600_000 : HEARTBEAT_MS,
  });
  const clients = (aedes as unknown as { clients: Record<string, Client | undefined> }).clients;

  // Metrics (broker/metrics.ts): counted by the parts below, read on each scrape.
  const admission = new Admission(config.busyAfterMs);
  const metrics = promMetrics({
    openConnections: () => connectionsByListener(clients as Record<string, { conn?: unknown } | undefined>),
    outboxBacklog: outboxBacklogReader(db),
    messageWaitMs: () => admission.behindMs(clock()),
  });

  const walSync = postgres
    ? null
    : new WalSync(`${db.name}-wal`, (err) => {
        log.fatal({ err: errorSummary(err) }, "the disk failed to sync committed data; stopping (what was not synced was never answered)");
        inbox.abandon();
        void close().then(() => deps.onFatal?.(err));
      }, deps.walIo, (ms) => metrics.diskSync(ms));
  // Checkpoints too run off the event loop (a worker thread with its own connection).
  const checkpointer = postgres ? null : new Checkpointer(db, log);
  const messageLimiter = new RateLimiter(config.deviceRatePerSec, config.deviceBurst);
  const connects = connectLimiter();
  // Several nodes: a device's budgets move with it (broker/cluster.ts).
  const sharedLimits = mq === undefined ? null : new SharedLimits(redisOf(mq), { messages: messageLimiter, connects }, clock, log);
  const inbox: Inbox = new Inbox({
    db,
    signer,
    log,
    clock,
    freshnessMs: config.freshnessMs,
    publish: (deviceId, bytes, row) => {
      // A device held by another node: that node reads the row from the outbox when told.
      if (cluster !== null && clients[deviceId] === undefined) {
        if (row !== null) cluster.stored(deviceId);
      } else delivery.publish(deviceId, bytes, row);
    },
    onReceipt: (deviceId, msgId) => delivery.receipted(deviceId, msgId),
    rateLimiter: messageLimiter,
    maxBacklog: config.deviceBacklog,
    admission,
    // On SQLite a batch takes about a quarter of the admission threshold (10 ms by default), so
    // that the broker reads its sockets, and refuses new payments as they arrive, well within it;
    // none with admission off. None on PostgreSQL: a message there costs ms of round trips, and
    // a 75 ms budget looked like costing throughput (docs/performance.md §Seventh session).
    batchBudgetMs: postgres ? 0 : config.busyAfterMs / 4,
    ...(walSync === null ? {} : { durable: walSync }),
    metrics,
  });
  const outbox = new OutboxRepo(db);
  const delivery = new Delivery({
    aedes,
    log,
    undelivered: (deviceId, afterSeq, limit) => outbox.undelivered(deviceId, clock(), limit, afterSeq),
    delivered: (deviceId, msgId) => inbox.delivered(deviceId, msgId),
    afterDurable: (fn) => (walSync === null ? fn() : walSync.afterDurable(fn)),
    stallTimeoutMs: config.drainTimeoutMs,
    metrics,
    sharedOutbox: mq !== undefined,
  });
  const cluster = mq === undefined ? null : new ClusterLink(aedes, mq, { nodeId, log, onStored: (deviceId) => delivery.stored(deviceId) });
  const payments = new Payments(db, {
    keyring: () => keyring,
    log,
    deadlines: { promptMs: config.promptTtlMs, taskMs: config.taskTtlMs },
    maxConsecutiveAuto: config.maxConsecutiveAuto,
    maxLivePerTerminal: PAYMENT_DEFAULTS.maxLivePerTerminal,
    maxPromptsPerPhone: PAYMENT_DEFAULTS.maxPromptsPerPhone,
    isOnline: (deviceId) => (cluster === null ? clients[deviceId] !== undefined : cluster.isOnline(deviceId)),
    metrics,
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
  const sign = (bytes: Uint8Array) => signer.sign(bytes);
  registerAuditProofs(inbox, db, { sign });

  installHooks(aedes, {
    config,
    log,
    clock,
    inbox,
    authenticator: new ConnectAuthenticator(db, config.freshnessMs),
    onSubscriptionsChanged: (client) => delivery.subscriptionsChanged(client),
    metrics,
    connects,
    ...(sharedLimits === null ? {} : { seedLimits: (deviceId: string) => sharedLimits.seed(deviceId), onDisconnected: (deviceId: string) => sharedLimits.flush(deviceId) }),
  });

  let listeners: Listeners;
  let certificate: Certificate | null = null;
  try {
    const secure = config.tlsPort !== "off" || config.wssPort !== "off";
    if (secure) certificate = await loadCertificate(config);
    if (certificate?.created) log.info({ certFile: certificate.certFile, keyFile: certificate.keyFile, fingerprint256: certificate.fingerprint256 }, "created a self-signed TLS certificate for localhost (key mode 0600); devices pin its SHA-256 fingerprint");
    listeners = await openListeners(
      aedes,
      {
        host: config.host,
        ports: { tcp: config.port, tls: config.tlsPort, ws: config.wsPort, wss: config.wssPort },
        maxPacketBytes: config.maxPacketBytes,
        connectTimeoutMs: config.connectTimeoutMs,
        wsOrigins: config.wsOrigin,
        tls: certificate,
        // The ws and wss listeners also serve the browser terminal and phone (broker/pages.ts).
        httpHandler: pagesHandler({
          brokerPublicKey: toBase64(publicKey),
          tlsFingerprint: () => (config.wssPort === "off" ? null : (certificate?.fingerprint256 ?? null)),
          log,
        }),
      },
      log,
    );
  } catch (err) {
    await new Promise<void>((r) => aedes.close(() => r()));
    await checkpointer?.close();
    walSync?.close();
    db.close();
    lock.release();
    throw err;
  }
  const addresses = listeners.addresses;
  // The handle's host/port/url: plain TCP when on (what tools and tests have always used).
  const main = (addresses.tcp ?? addresses.tls ?? addresses.ws ?? addresses.wss)!;
  const mainUrl = new URL(main.url);
  const mainHost = mainUrl.hostname.replace(/^\[(.*)\]$/, "$1");

  const adminFeed = new AdminFeed({
    db,
    log,
    onKeysChanged: () => {
      // An admin rotated or removed a master key version: new seals use the file's current one.
      keyring = loadKeyring(dataDir, deps.masterKeyEnv).keyring;
      log.info({ keyVersions: keyring.versions, current: keyring.current }, "master keyring reloaded");
    },
    onDeviceRevoked: (deviceId) => {
      const client = clients[deviceId];
      log.info({ device: deviceId, connected: client !== undefined }, "device revoked");
      client?.close();
    },
  });
  const housekeeping = new Housekeeping({ db, clock, log, everyMs: config.purgeEveryMs });
  const auditHeads = new AuditHeads({ db, log, everyMs: config.auditHeadEveryMs, sign, queue: (label, run, after) => inbox.internal(label, run, after) });
  const paymentRepo = new PaymentRepo(db);
  const deadlines = new Deadlines({
    due: (now, limit) => paymentRepo.due(now, limit),
    queue: (label, run) => inbox.internal(label, run),
    fire: (ctx, paymentId, which) => payments.fireDeadline(ctx, paymentId, which),
    clock,
    log,
  });
  adminFeed.start();
  housekeeping.start();
  deadlines.start();
  auditHeads.start();

  for (const [listener, a] of Object.entries(addresses)) log.info({ listener, url: a.url, port: a.port }, `listening on ${a.url}`);
  for (const kind of ["ws", "wss"] as const) {
    const a = addresses[kind];
    const http = a?.url.replace(/^ws/, "http");
    if (http !== undefined) log.info({ listener: kind, terminal: `${http}/terminal`, phone: `${http}/phone` }, `browser pages: ${http}/terminal and ${http}/phone`);
  }
  if (certificate !== null) log.info({ certFile: certificate.certFile, fingerprint256: certificate.fingerprint256, validTo: certificate.validTo.toISOString() }, `TLS certificate SHA-256 fingerprint ${certificate.fingerprint256}`);
  log.info(
    {
      host: mainHost,
      port: main.port,
      listeners: Object.fromEntries(Object.entries(addresses).map(([k, a]) => [k, a.url])),
      dataDir,
      database: postgres ? db.name : "sqlite",
      node: nodeId,
      cluster: mq === undefined ? null : redactUrl(config.cluster),
      brokerPublicKey: toBase64(publicKey),
      keyVersions: keyring.versions,
      undeliveredOutbox: outbox.countUndelivered(),
      armedDeadlines: paymentRepo.armedCount(),
      // The threshold in force (--busy-after-ms auto depends on the store).
      busyAfterMs: config.busyAfterMs,
    },
    `broker listening on ${main.url}`,
  );

  let operator: OperatorServer | undefined;
  let closing: Promise<void> | null = null;
  const close = () => {
    closing ??= (async () => {
      await operator?.close();
      auditHeads.stop();
      deadlines.stop();
      housekeeping.stop();
      adminFeed.stop();
      if (mq !== undefined) releaseRedis(mq);
      // Stop accepting first; the listener's close completes once Aedes has closed every client.
      const listenerClosed = listeners.close();
      await inbox.idle();
      await new Promise<void>((r) => aedes.close(() => r()));
      await inbox.idle();
      cluster?.close();
      sharedLimits?.close();
      // The last head covers every entry written, so a receipt from before the stop is provable.
      if (walSync?.failed !== true) {
        auditHeads.step();
        await inbox.idle();
      }
      await listenerClosed;
      await checkpointer?.close();
      walSync?.close();
      db.close();
      lock.release();
      log.info("broker stopped");
    })();
    return closing;
  };

  const reloadCertificates = (): boolean => {
    if (certificate === null) return false;
    try {
      const next = readCertificate(certificate.certFile, certificate.keyFile);
      listeners.setCertificate(next);
      certificate = { ...next, created: false };
      log.info({ certFile: next.certFile, fingerprint256: next.fingerprint256, validTo: next.validTo.toISOString() }, `TLS certificate reloaded; new connections get SHA-256 fingerprint ${next.fingerprint256}`);
      return true;
    } catch (err) {
      log.error({ err: (err as Error).message, fingerprint256: certificate.fingerprint256 }, "TLS certificate not reloaded: keeping the one in use");
      return false;
    }
  };

  // The operator endpoints (broker/operator-http.ts), once everything they report on is up.
  if (config.metricsPort !== "off") {
    try {
      operator = await startOperatorHttp({
        host: config.metricsHost,
        port: config.metricsPort,
        log,
        registry: metrics.registry,
        notReady: () => [
          ...(db.open ? [] : ["database closed"]),
          ...(walSync?.failed === true ? ["disk sync failed"] : []),
          ...listeners.notListening().map((kind) => `MQTT listener (${kind}) not listening`),
        ],
      });
    } catch (err) {
      await close();
      throw err;
    }
  }

  return {
    host: mainHost,
    port: main.port,
    url: main.url,
    listeners: addresses,
    get certificate() {
      return certificate === null ? null : { pem: certificate.certPem, fingerprint256: certificate.fingerprint256 };
    },
    reloadCertificates,
    dataDir,
    publicKey,
    db,
    get keyring() {
      return keyring;
    },
    inbox,
    aedes,
    deadlines,
    housekeeping,
    auditHeads,
    operator: operator === undefined ? undefined : { port: operator.port, url: operator.url },
    close,
  };
}
