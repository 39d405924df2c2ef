/**
 * The misbehaving devices of `npm run test:abuse`: one small function per kind of abuse. Each
 * runs until `untilMs` (or the driver stops it), counts what it did, and closes what it opened.
 * All except the raw-socket ones (half-open, malformed) are registered devices with valid
 * tokens: they pass authentication and abuse the broker from the inside.
 */
import { randomBytes } from "node:crypto";
import mqttPacket from "mqtt-packet";
import type { DeviceKey } from "../keyfile.ts";
import { between, sleep } from "../util.ts";
import { RawClient, connectPacket, freshToken, openSocket, publishPacket, subscribePacket, type Sockets } from "./raw.ts";

export const ATTACKS = ["flood", "never_reads", "never_acks", "subscribe_storm", "reconnect_loop", "half_open", "malformed", "backlog", "qos2_v31"] as const;
export type AttackName = (typeof ATTACKS)[number];

/** Registered attacker keys: fresh ones, and ones whose outbox holds undelivered answers. */
export class KeyPool {
  readonly #fresh: DeviceKey[];
  /** Keys with a backlog, and about how many answers wait for each. */
  readonly #loaded = new Map<string, { key: DeviceKey; undelivered: number }>();

  constructor(keys: readonly DeviceKey[]) {
    this.#fresh = [...keys];
  }

  take(): DeviceKey | null {
    return this.#fresh.shift() ?? null;
  }

  /** The key with the largest backlog (taken out of the pool), or a fresh one. */
  takeLoaded(): { key: DeviceKey; undelivered: number } | null {
    let best: { key: DeviceKey; undelivered: number } | null = null;
    for (const v of this.#loaded.values()) if (best === null || v.undelivered > best.undelivered) best = v;
    if (best !== null) {
      this.#loaded.delete(best.key.deviceId);
      return best;
    }
    const key = this.take();
    return key === null ? null : { key, undelivered: 0 };
  }

  /** Gives a key back; one left with undelivered answers goes to the loaded keys. */
  give(key: DeviceKey, undelivered = 0): void {
    if (undelivered > 0) this.#loaded.set(key.deviceId, { key, undelivered });
    else this.#fresh.push(key);
  }
}

export interface AttackContext {
  readonly port: number;
  /** The broker's per-device limits the attacks aim at. */
  readonly ratePerSec: number;
  readonly burst: number;
  readonly maxPacketBytes: number;
  readonly keys: KeyPool;
  readonly sockets: Sockets;
  /** True once the driver wants every attack to end now. */
  readonly stopped: () => boolean;
  /** Adds to one of the attack's counters (shown in the summary). */
  count(what: string, n?: number): void;
}

export type Attack = (ctx: AttackContext, rng: () => number, untilMs: number) => Promise<void>;

const going = (ctx: AttackContext, untilMs: number) => !ctx.stopped() && Date.now() < untilMs;
/** Sleeps in short steps so a stop is seen within ~100 ms. */
async function pause(ctx: AttackContext, ms: number, untilMs: number): Promise<void> {
  const end = Math.min(Date.now() + ms, untilMs);
  while (going(ctx, end)) await sleep(Math.min(100, end - Date.now()));
}
const ECHO = "x".repeat(256); // the largest echo a ping may carry: the biggest answer per message

/**
 * Sends signed pings at `perSec` (after `first` at once) until time is up or the connection
 * closes; returns how many were written.
 */
async function pingAt(ctx: AttackContext, c: RawClient, untilMs: number, first: number, perSec: number, qos: 0 | 1 | 2, echo = ""): Promise<number> {
  let sent = 0;
  for (let i = 0; i < first && c.open; i++) if (c.publishPing(qos, echo)) sent++;
  let owed = 0;
  while (going(ctx, untilMs) && c.open) {
    await sleep(100);
    owed += perSec / 10;
    for (; owed >= 1 && c.open; owed--) if (c.publishPing(qos, echo)) sent++;
  }
  return sent;
}

/** Takes a key, connects as it, runs `body`, and always closes and returns the key. */
async function asDevice(ctx: AttackContext, options: { acks?: boolean; protocolVersion?: 3 | 4 }, body: (c: RawClient) => Promise<number | void>): Promise<void> {
  const key = ctx.keys.take();
  if (key === null) return ctx.count("no free key");
  let undelivered = 0;
  try {
    const c = await RawClient.connect(ctx.sockets, ctx.port, key, { ms: 5000, ...options });
    if (!(c instanceof RawClient)) return ctx.count(c.refused === null ? "no CONNACK within 5 s" : `connect refused (CONNACK ${c.refused})`);
    ctx.count("connected");
    try {
      undelivered = (await body(c)) ?? 0;
    } finally {
      if (c.closedByPeer) ctx.count("closed by broker");
      c.destroy();
    }
  } finally {
    ctx.keys.give(key, undelivered);
  }
}

/** (a) Pings at one to three times the rate limit, after a burst past the bucket. Reads and confirms its answers. */
export const flood: Attack = (ctx, rng, untilMs) =>
  asDevice(ctx, { acks: true }, async (c) => {
    await c.subscribe(1);
    const factor = 1 + rng() * 2;
    const sent = await pingAt(ctx, c, untilMs, ctx.burst + 50, ctx.ratePerSec * factor, 1);
    ctx.count("pings sent", sent);
    ctx.count("answers read", c.received);
  });

/** (b) Subscribes, then never reads its socket again while it keeps asking (big answers) within the rate. */
export const neverReads: Attack = (ctx, _rng, untilMs) =>
  asDevice(ctx, { acks: false }, async (c) => {
    await c.subscribe(1);
    c.socket.pause();
    const sent = await pingAt(ctx, c, untilMs, Math.floor(ctx.burst * 0.9), ctx.ratePerSec * 0.9, 1, ECHO);
    ctx.count("pings sent", sent);
    return sent; // its answers stay undelivered
  });

/** (c) Reads everything and confirms nothing (no PUBACK), while it keeps asking within the rate. */
export const neverAcks: Attack = (ctx, _rng, untilMs) =>
  asDevice(ctx, { acks: false }, async (c) => {
    await c.subscribe(1);
    const sent = await pingAt(ctx, c, untilMs, Math.floor(ctx.burst * 0.9), ctx.ratePerSec * 0.9, 1);
    ctx.count("pings sent", sent);
    ctx.count("answers read, none confirmed", c.received);
    return sent;
  });

/** (h) Pings without ever subscribing: every answer stays in its outbox, up to whatever bound there is. */
export const backlog: Attack = (ctx, _rng, untilMs) =>
  asDevice(ctx, { acks: false }, async (c) => {
    const sent = await pingAt(ctx, c, untilMs, Math.floor(ctx.burst * 0.9), ctx.ratePerSec * 0.9, 1);
    ctx.count("pings sent", sent);
    return sent;
  });

/**
 * (d) With answers piled up (a backlog's key, or its own pings for a while), one write of many
 * SUBSCRIBE packets to its own down topic, QoS 0 and 1: each one asks the broker to resend the
 * whole backlog. It reads but never confirms, so the backlog stays for the next storm.
 */
export const subscribeStorm: Attack = async (ctx, rng, untilMs) => {
  const taken = ctx.keys.takeLoaded();
  if (taken === null) return ctx.count("no free key");
  let undelivered = taken.undelivered;
  try {
    const c = await RawClient.connect(ctx.sockets, ctx.port, taken.key, { acks: false, ms: 5000 });
    if (!(c instanceof RawClient)) return ctx.count(c.refused === null ? "no CONNACK within 5 s" : `connect refused (CONNACK ${c.refused})`);
    try {
      // Pile up to ~1,000 answers, for at most half of the time left.
      const buildUntil = Date.now() + Math.max(0, (untilMs - Date.now()) / 2);
      if (undelivered < 1000) undelivered += await pingAt(ctx, c, Math.min(buildUntil, Date.now() + ((1000 - undelivered) / ctx.ratePerSec) * 1000), Math.floor(ctx.burst * 0.9), ctx.ratePerSec * 0.9, 1);
      while (going(ctx, untilMs) && c.open) {
        const n = between(rng, 100, 400);
        const packets: Buffer[] = [];
        for (let i = 0; i < n; i++) packets.push(subscribePacket(taken.key, i % 2 === 0 ? 1 : 0, c.messageId()));
        c.write(Buffer.concat(packets));
        ctx.count("storms");
        ctx.count("SUBSCRIBEs", n);
        ctx.count(`storms on ~${Math.min(Math.floor(undelivered / 500) * 500, 5000)}+ undelivered`);
        await pause(ctx, between(rng, 1000, 3000), untilMs);
      }
      ctx.count("messages received", c.received);
    } finally {
      if (c.closedByPeer) ctx.count("closed by broker");
      c.destroy();
    }
  } finally {
    ctx.keys.give(taken.key, Math.max(undelivered, 1));
  }
};

/** (e) Connects and disconnects as fast as the broker answers, with fresh tokens (and now and then a reused one). */
export const reconnectLoop: Attack = async (ctx, rng, untilMs) => {
  const key = ctx.keys.take();
  if (key === null) return ctx.count("no free key");
  try {
    // Only a token the broker accepted has been used: one it refused (say, over the connect
    // budget) was never consumed, and may rightly be accepted on a later try.
    let lastUsed: string | null = null;
    let lastToken: string | null = null;
    while (going(ctx, untilMs)) {
      const reuse: boolean = lastToken !== null && rng() < 0.1;
      const token: string = reuse ? lastToken! : freshToken(key);
      const used = token === lastUsed;
      lastToken = token;
      const c = await RawClient.connect(ctx.sockets, ctx.port, key, { token, ms: 2000 });
      if (c instanceof RawClient) {
        lastUsed = token;
        ctx.count(used ? "USED TOKEN ACCEPTED AGAIN" : reuse ? "connects (a token refused before, never used)" : "connects");
        if (rng() < 0.5) c.write(mqttPacket.generate({ cmd: "disconnect" }));
        c.destroy();
      } else ctx.count(`${c.refused === null ? "no CONNACK within 2 s" : `refused (CONNACK ${c.refused})`}${reuse ? " on a reused token" : ""}`);
    }
  } finally {
    ctx.keys.give(key);
  }
};

/** (f) Sockets that connect and say nothing, or half a CONNECT, kept open until the broker drops them. */
export const halfOpen: Attack = async (ctx, rng, untilMs) => {
  const key = ctx.keys.take();
  const want = between(rng, 10, 30);
  const open = new Set<Promise<void>>();
  const one = async () => {
    const socket = await openSocket(ctx.sockets, ctx.port);
    if (socket === null) return ctx.count("could not connect");
    const half = key !== null && rng() < 0.5;
    if (half) {
      const bytes = connectPacket(key);
      socket.write(bytes.subarray(0, Math.floor(bytes.length / 2)));
    }
    ctx.count(half ? "half CONNECTs" : "silent sockets");
    let closed = false;
    socket.once("close", () => (closed = true));
    while (!closed && going(ctx, untilMs)) await sleep(100);
    if (closed) ctx.count("closed by broker");
    socket.destroy();
  };
  try {
    while (going(ctx, untilMs)) {
      while (open.size < want && going(ctx, untilMs)) {
        const p: Promise<void> = one().finally(() => open.delete(p));
        open.add(p);
      }
      await sleep(100);
    }
    await Promise.all(open);
  } finally {
    if (key !== null) ctx.keys.give(key);
  }
};

/** (g) Packets announcing more than the limit, and malformed ones, each on a new connection. */
export const malformed: Attack = async (ctx, rng, untilMs) => {
  const key = ctx.keys.take();
  const varint = (n: number) => {
    const out: number[] = [];
    do {
      let b = n % 128;
      n = Math.floor(n / 128);
      if (n > 0) b |= 0x80;
      out.push(b);
    } while (n > 0);
    return Buffer.from(out);
  };
  const variants: [string, () => Buffer[]][] = [
    ["oversize announced before CONNECT", () => [Buffer.concat([Buffer.from([0x30]), varint(ctx.maxPacketBytes + between(rng, 1, 1_000_000)), randomBytes(1024)])]],
    ["five-byte remaining length", () => [Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x7f, 0, 0])]],
    ["garbage bytes", () => [randomBytes(between(rng, 1, 512))]],
    ["reserved packet type", () => [Buffer.from([0xf0, 0x00])]],
    ["CONNECT with a bad protocol name", () => [Buffer.concat([Buffer.from([0x10, 12, 0, 4]), Buffer.from("MQTX"), Buffer.from([4, 2, 0, 30, 0, 0])])]],
    ...(key === null
      ? []
      : ([
          ["oversize PUBLISH after a valid CONNECT", () => [connectPacket(key), publishPacket(key, randomBytes(ctx.maxPacketBytes + 100), 1, 1)]],
          ["unparseable PUBLISH after a valid CONNECT", () => [connectPacket(key), Buffer.from([0x32, 0x03, 0xff, 0xff, 0x00])]],
        ] as [string, () => Buffer[]][])),
  ];
  try {
    while (going(ctx, untilMs)) {
      const [name, make] = variants[Math.floor(rng() * variants.length)]!;
      const socket = await openSocket(ctx.sockets, ctx.port);
      if (socket === null) {
        ctx.count("could not connect");
        await pause(ctx, 200, untilMs);
        continue;
      }
      let closed = false;
      socket.once("close", () => (closed = true));
      for (const b of make()) socket.write(b);
      ctx.count(name);
      const until = Math.min(Date.now() + 1000, untilMs);
      while (!closed && going(ctx, until)) await sleep(20);
      ctx.count(closed ? "closed by broker" : "still open after 1 s");
      socket.destroy();
    }
  } finally {
    if (key !== null) ctx.keys.give(key);
  }
};

/**
 * (i) An MQTT 3.1 CONNECT (protocol level 3) and QoS 2 publishes whose PUBREL never comes, on
 * one connection or the other: the broker should refuse both, or at least free what they hold.
 */
export const qos2V31: Attack = async (ctx, rng, untilMs) => {
  const v3 = rng() < 0.5;
  ctx.count(v3 ? "MQTT 3.1 CONNECTs (should be refused)" : "MQTT 3.1.1 CONNECTs");
  await asDevice(ctx, { acks: false, protocolVersion: v3 ? 3 : 4 }, async (c) => {
    if (v3) ctx.count("MQTT 3.1 CONNECTs accepted");
    let pubrecs = 0;
    c.socket.on("data", (d: Buffer) => {
      if (d[0] === 0x50) pubrecs++;
    });
    const sent = await pingAt(ctx, c, untilMs, Math.floor(ctx.burst * 0.5), ctx.ratePerSec * 0.9, 2);
    ctx.count("QoS 2 pings sent, never released", sent);
    ctx.count("PUBRECs seen (at least)", pubrecs);
    return sent;
  });
};

export const ATTACK_FNS: Readonly<Record<AttackName, Attack>> = {
  flood,
  never_reads: neverReads,
  never_acks: neverAcks,
  subscribe_storm: subscribeStorm,
  reconnect_loop: reconnectLoop,
  half_open: halfOpen,
  malformed,
  backlog,
  qos2_v31: qos2V31,
};
