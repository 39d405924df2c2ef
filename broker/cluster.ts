/**
 * Several broker nodes (docs/operations.md §Several nodes): what one node must hear from the others.
 *
 * The nodes share one PostgreSQL database (src/store/pg.ts: every transaction of every node runs
 * under one write lock) and one Redis, through the Aedes team's mqemitter-redis: Aedes' own
 * messages between nodes travel there (a device connecting to node B is disconnected from node
 * A, `$SYS/<node>/new/clients`), and so do this module's two:
 *
 *   $HP/stored     "device X has new outbox rows": a node that commits a message for a device it
 *                  does not hold says so after the commit; the node holding the device reads the
 *                  outbox past its cursor and sends. The rows themselves never travel through
 *                  Redis: the database is the only copy, so a notice lost (Redis down, a node
 *                  restarting) delays a message until the device's next connect, never loses it.
 *   $HP/presence   a node's connected devices, sent when another node is born, so that the newcomer
 *                  knows who is online elsewhere (`isOnline`, which only chooses whether the
 *                  terminal hears "waiting_for_phone").
 *
 * Presence otherwise follows Aedes' `new/clients` and `disconnect/clients`, and a node whose
 * heartbeat (every HEARTBEAT_MS) has not been heard for 3 beats counts as gone, with its devices.
 */
import type { Aedes } from "aedes";
import MQEmitterRedis from "mqemitter-redis";
import type { Logger } from "pino";
import { errorSummary } from "../src/service/inbox.ts";
import { redactUrl } from "../src/store/pg.ts";
import type { Bucket, RateLimiter } from "../src/service/rate-limit.ts";

/** Aedes' heartbeat between nodes in a cluster (a single node beats once an hour: nobody listens). */
export const HEARTBEAT_MS = 2_000;
const STORED = "$HP/stored";
/** How long a stopping node waits for Redis to take what it still sends (its QUIT among them). */
const CLOSE_GRACE_MS = 2_000;
const REDIS_DOWN = Symbol("redisDown");

/**
 * Called when the node starts to stop. With Redis away, everything sent to it waits for its return
 * (Aedes' disconnect notices, the emitter's QUIT), and the stop with it: past a grace period, none
 * when Redis is known to be away, the connections are dropped, and what waits fails at once.
 */
export function releaseRedis(mq: Emitter): void {
  type Conn = { disconnect(): void; quit(): Promise<unknown> };
  type Internals = { subConn: Conn; pubConn: Conn; closing: boolean; _close(cb: () => void): void; [REDIS_DOWN]?: () => boolean };
  const m = mq as unknown as Internals;
  const close = mq.close.bind(mq);
  // The emitter's close QUITs each connection and drops the promise; a QUIT still waiting when the
  // connection is dropped (abandon, below) rejects with "Connection is closed." and nothing would
  // catch it: an unhandled rejection, which ends a Node process. The emitter hears of the end by
  // its "end" event, not by the promise, so it loses nothing.
  for (const conn of [m.subConn, m.pubConn]) {
    const quit = conn.quit.bind(conn);
    conn.quit = () => {
      const p = quit();
      p.catch(() => {});
      return p;
    };
  }
  // The emitter's own close QUITs both connections and waits for their "end", which a connection
  // between two reconnect attempts never emits (ioredis): then it is dropped and closed here.
  const abandon = (finish: () => void) => {
    m.closing = true;
    m.subConn.disconnect();
    m.pubConn.disconnect();
    m._close(finish);
  };
  mq.close = (cb?: () => void) => {
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      cb?.();
    };
    if (m[REDIS_DOWN]?.() === true) abandon(finish);
    else {
      close(finish);
      setTimeout(() => done || abandon(finish), CLOSE_GRACE_MS).unref();
    }
    return mq;
  };
}
const PRESENCE = "$HP/presence";

type Emitter = ReturnType<typeof MQEmitterRedis>;
type Packet = { topic: string; payload: Buffer | string };

export interface ClusterOptions {
  readonly url: string;
  readonly nodeId: string;
  readonly log: Logger;
}

/** The emitter Aedes routes through, made before Aedes starts. */
export function clusterEmitter(options: ClusterOptions): Emitter {
  const u = new URL(options.url);
  const mq = MQEmitterRedis({
    host: u.hostname,
    port: u.port === "" ? 6379 : Number(u.port),
    ...(u.password === "" ? {} : { password: decodeURIComponent(u.password) }),
    ...(u.username === "" ? {} : { username: decodeURIComponent(u.username) }),
    ...(u.pathname.length > 1 ? { db: Number(u.pathname.slice(1)) } : {}),
    ...(u.protocol === "rediss:" ? { tls: {} } : {}),
    // ioredis 5 with aedes: its ready check and CLIENT SETINFO stall the first commands (ioredis #2037).
    enableReadyCheck: false,
    disableClientInfo: true,
    // Redis away: commands wait for the reconnect instead of failing after 20 tries.
    maxRetriesPerRequest: null,
  } as Parameters<typeof MQEmitterRedis>[0]);
  let down = false;
  // The emitter's connection events (on `state`, which its typings leave out).
  const state = (mq as unknown as { state: import("node:events").EventEmitter }).state;
  state.on("error", (err: Error) => {
    if (!down) options.log.error({ err: errorSummary(err), redis: redactUrl(options.url) }, "cluster: Redis unreachable; messages for devices on other nodes wait in the outbox until Redis is back or the device reconnects");
    down = true;
  });
  state.on("pubConnect", () => {
    if (down) options.log.info({ redis: redactUrl(options.url) }, "cluster: Redis reachable again");
    down = false;
  });
  (mq as unknown as { [REDIS_DOWN]: () => boolean })[REDIS_DOWN] = () => down;
  return mq;
}

export class ClusterLink {
  readonly #mq: Emitter;
  readonly #nodeId: string;
  readonly #log: Logger;
  readonly #clients: Record<string, unknown>;
  /** Devices connected to other nodes: device → node. */
  readonly #remote = new Map<string, string>();
  /** Other nodes' last heartbeat (ms, this node's clock). */
  readonly #nodes = new Map<string, number>();
  /** Notices to send at the end of this turn (one per device however many rows it got). */
  #pending = new Set<string>();
  #closed = false;

  constructor(aedes: Aedes, mq: Emitter, options: { nodeId: string; log: Logger; onStored: (deviceId: string) => void }) {
    this.#mq = mq;
    this.#nodeId = options.nodeId;
    this.#log = options.log;
    this.#clients = (aedes as unknown as { clients: Record<string, unknown> }).clients;
    const on = (topic: string, fn: (p: Packet) => void) =>
      mq.on(topic, (packet, done: () => void) => {
        try {
          fn(packet as unknown as Packet);
        } catch (err) {
          this.#log.error({ err: errorSummary(err), topic }, "cluster: a message from another node could not be handled");
        }
        done();
      });
    on(STORED, (p) => {
      for (const deviceId of text(p.payload).split("\n")) if (deviceId !== "" && this.#clients[deviceId] !== undefined) options.onStored(deviceId);
    });
    on("$SYS/+/new/clients", (p) => {
      const node = nodeOf(p.topic);
      if (node !== this.#nodeId) this.#remote.set(text(p.payload), node);
    });
    on("$SYS/+/disconnect/clients", (p) => {
      const id = text(p.payload);
      if (this.#remote.get(id) === nodeOf(p.topic)) this.#remote.delete(id);
    });
    on("$SYS/+/heartbeat", (p) => {
      const node = text(p.payload);
      if (node !== this.#nodeId) this.#nodes.set(node, Date.now());
    });
    on("$SYS/+/birth", (p) => {
      const node = text(p.payload);
      if (node === this.#nodeId) return;
      this.#nodes.set(node, Date.now());
      this.#log.info({ node }, "cluster: a node started");
      // The newcomer hears who is here.
      this.#emit(PRESENCE, `${this.#nodeId}\n${Object.keys(this.#clients).join("\n")}`);
    });
    on(PRESENCE, (p) => {
      const [node, ...ids] = text(p.payload).split("\n");
      if (node === undefined || node === this.#nodeId) return;
      this.#nodes.set(node, Date.now());
      for (const id of ids) if (id !== "" && this.#clients[id] === undefined) this.#remote.set(id, node);
    });
    // Back from a Redis outage: notices published meanwhile were lost (pub/sub keeps nothing), so
    // once subscribed again (the PING is answered after the re-SUBSCRIBE ioredis sends first),
    // every device held here reads its outbox, and the others hear who is here.
    const sub = (mq as unknown as { subConn: import("node:events").EventEmitter & { ping(): Promise<unknown> } }).subConn;
    let lost = false;
    sub.on("close", () => {
      lost = !this.#closed;
    });
    sub.on("ready", () => {
      if (!lost) return;
      lost = false;
      sub.ping().then(
        () => {
          if (this.#closed) return;
          const held = Object.keys(this.#clients);
          this.#log.info({ devices: held.length }, "cluster: resubscribed after a Redis outage; the devices held here read their outboxes");
          for (const deviceId of held) options.onStored(deviceId);
          this.#emit(PRESENCE, `${this.#nodeId}\n${held.join("\n")}`);
        },
        () => {},
      );
    });
  }

  /** A committed message waits in the outbox for a device this node does not hold. */
  stored(deviceId: string): void {
    if (this.#closed) return;
    if (this.#pending.size === 0) setImmediate(() => this.#flush());
    this.#pending.add(deviceId);
  }

  /** Whether the device is connected here or to a node that is alive. */
  isOnline(deviceId: string): boolean {
    if (this.#clients[deviceId] !== undefined) return true;
    const node = this.#remote.get(deviceId);
    if (node === undefined) return false;
    const beat = this.#nodes.get(node);
    return beat !== undefined && Date.now() - beat <= 3 * HEARTBEAT_MS;
  }

  /** Other nodes heard from within 3 heartbeats (for logs and /metrics). */
  liveNodes(): string[] {
    const now = Date.now();
    return [...this.#nodes].filter(([, at]) => now - at <= 3 * HEARTBEAT_MS).map(([n]) => n);
  }

  #flush(): void {
    const ids = [...this.#pending];
    this.#pending = new Set();
    if (ids.length > 0) this.#emit(STORED, ids.join("\n"));
  }

  #emit(topic: string, payload: string): void {
    this.#mq.emit({ topic, payload: Buffer.from(payload) }, (err?: Error) => {
      if (err && !this.#closed) this.#log.warn({ err: errorSummary(err), topic }, "cluster: a notice to the other nodes was not sent; the device gets its messages at its next connect");
    });
  }

  close(): void {
    this.#flush();
    this.#closed = true;
  }
}

function text(payload: Buffer | string): string {
  return typeof payload === "string" ? payload : payload.toString("utf8");
}

function nodeOf(topic: string): string {
  return topic.split("/")[1] ?? "";
}


/** What SharedLimits uses of the emitter's Redis connection (ioredis). */
interface RedisLike {
  get(key: string): Promise<string | null>;
  set(key: string, value: string, px: "PX", ms: number): Promise<unknown>;
}

/** The emitter's own publishing connection (ioredis, auto-pipelined): no second connection to Redis. */
export function redisOf(mq: Emitter): RedisLike {
  return (mq as unknown as { pubConn: RedisLike }).pubConn;
}

/** How often a node writes the buckets its devices used, and how long Redis keeps one. */
export const LIMITS_SYNC_MS = 500;
const LIMITS_TTL_MS = 3_600_000;

/**
 * Per-device rate limits across nodes. A device is connected to one node at a time (Aedes
 * disconnects it from the others); its buckets — messages and connects — live in that node's
 * memory, as on a single node, and travel with it through Redis: the node writes every bucket
 * its devices used at most LIMITS_SYNC_MS ago (and at once when a device leaves), and a node
 * accepting a device first merges the bucket it finds there (the fewer tokens win). So moving to
 * another node gains a device at most LIMITS_SYNC_MS of its own traffic, and moving costs a
 * connect from the connect budget, which travels the same way. Redis away: each node limits on
 * its own, as a single node does.
 */
export class SharedLimits {
  readonly #redis: RedisLike;
  readonly #limiters: Readonly<Record<string, RateLimiter>>;
  readonly #changed: Set<string>[];
  readonly #clock: () => number;
  readonly #log: Logger;
  readonly #timer: NodeJS.Timeout;

  constructor(redis: RedisLike, limiters: Readonly<Record<string, RateLimiter>>, clock: () => number, log: Logger) {
    this.#redis = redis;
    this.#limiters = limiters;
    this.#changed = Object.values(limiters).map((l) => l.trackChanges());
    this.#clock = clock;
    this.#log = log;
    this.#timer = setInterval(() => this.flush(), LIMITS_SYNC_MS);
    this.#timer.unref();
  }

  /** Before a device is accepted: its buckets as another node last left them. Never rejects. */
  async seed(deviceId: string): Promise<void> {
    let text: string | null;
    try {
      text = await this.#redis.get(key(deviceId));
    } catch (err) {
      this.#log.warn({ err: errorSummary(err), device: deviceId }, "cluster: shared rate limits unreadable; this node limits the device on its own");
      return;
    }
    if (text === null) return;
    let saved: Record<string, Bucket>;
    try {
      saved = JSON.parse(text) as Record<string, Bucket>;
    } catch {
      return;
    }
    const now = this.#clock();
    for (const [name, limiter] of Object.entries(this.#limiters)) {
      const b = saved[name];
      if (b !== undefined && Number.isFinite(b.tokens) && Number.isFinite(b.atMs)) limiter.merge(deviceId, b, now);
    }
  }

  /** Writes now the buckets of `deviceId` (it left), or of every device that used one since the last write. */
  flush(deviceId?: string): void {
    const ids = new Set<string>();
    for (const set of this.#changed) {
      if (deviceId === undefined) {
        for (const id of set) ids.add(id);
        set.clear();
      } else if (set.delete(deviceId)) ids.add(deviceId);
    }
    for (const id of ids) {
      const value: Record<string, Bucket> = {};
      for (const [name, limiter] of Object.entries(this.#limiters)) {
        const b = limiter.bucket(id);
        if (b !== undefined) value[name] = b;
      }
      this.#redis.set(key(id), JSON.stringify(value), "PX", LIMITS_TTL_MS).catch(() => {
        // Logged once by the emitter's error handler: Redis is away.
      });
    }
  }

  close(): void {
    clearInterval(this.#timer);
    this.flush();
  }
}

function key(deviceId: string): string {
  return `hp:rl:${deviceId}`;
}
