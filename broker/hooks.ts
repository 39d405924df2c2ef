/**
 * Policy in Aedes' hooks: preConnect (what a CONNECT may ask for), authenticate (connect tokens,
 * docs/protocol.md §Connecting), authorizePublish / authorizeSubscribe (the per-device topic ACL,
 * §Topics and ACL), and a log line for each way a connection ends.
 */
import type { Aedes, Client } from "aedes";
import type { Socket } from "node:net";
import type { Logger } from "pino";
import type { BrokerConfig } from "../src/config.ts";
import { mayPublish, maySubscribe } from "../src/protocol/topics.ts";
import { CONNECT_REFUSALS, type CheckedConnect, type ConnectAuthenticator, type ConnectRefusal } from "../src/service/connect.ts";
import { errorSummary, type Inbox } from "../src/service/inbox.ts";
import { NO_METRICS, type Metrics } from "../src/service/metrics.ts";
import { RateLimiter } from "../src/service/rate-limit.ts";

/** Connects one device may make at once, and how often one more is allowed after that. */
export const CONNECT_BURST = 20;
export const CONNECT_REFILL_MS = 3000;

export interface HookOptions {
  readonly config: BrokerConfig;
  readonly log: Logger;
  readonly clock: () => number;
  readonly inbox: Inbox;
  readonly authenticator: ConnectAuthenticator;
  /** A device's subscriptions changed (a SUBSCRIBE or UNSUBSCRIBE was granted). */
  readonly onSubscriptionsChanged: (client: Client) => void;
  /** Counts connects accepted and refused by reason (broker/metrics.ts); none when absent. */
  readonly metrics?: Metrics;
  /** Connects per device (default: a limiter of CONNECT_BURST, one per CONNECT_REFILL_MS, of its own). */
  readonly connects?: RateLimiter;
  /** Several nodes: brings a device's limits from the node it was on before it is accepted here. */
  readonly seedLimits?: (deviceId: string) => Promise<void>;
  /** A device's connection closed. */
  readonly onDisconnected?: (deviceId: string) => void;
  /** Up messages a connection may have read and not yet stored; default MAX_UP_UNSTORED. */
  readonly maxUpUnstored?: number;
}

/**
 * Up messages one connection may have read and not yet stored (docs/protocol.md §Limits): past
 * it the broker reads nothing more from that connection until one of them is.
 */
export const MAX_UP_UNSTORED = 32;

/** A connection's up messages read and not yet stored, and whether it is paused for them. */
interface UpState {
  unstored: number;
  paused: boolean;
}

/**
 * Aedes' Client as far as pausing it goes (none of it in its types): pause() and resume(), and
 * the count of read packets still being handled, which must come to 0 before it reads again.
 */
interface Pausable {
  pause(): void;
  resume(): void;
  _parsingBatch: number;
}

/** The connect budget of one device (docs/protocol.md §Limits). */
export function connectLimiter(): RateLimiter {
  return new RateLimiter(1000 / CONNECT_REFILL_MS, CONNECT_BURST);
}

export function installHooks(aedes: Aedes, o: HookOptions): void {
  const { config, log, inbox, authenticator } = o;
  const metrics = o.metrics ?? NO_METRICS;
  const maxUpUnstored = o.maxUpUnstored ?? MAX_UP_UNSTORED;
  const upStates = new WeakMap<Client, UpState>();
  const upState = (client: Client): UpState => {
    let state = upStates.get(client);
    if (state === undefined) upStates.set(client, (state = { unstored: 0, paused: false }));
    return state;
  };

  aedes.preConnect = (client, packet, callback) => {
    if (packet.protocolVersion !== 4) {
      // MQTT 3.1 (level 3) is refused with CONNACK 1, unacceptable protocol level [MQTT-3.1.2-2]:
      // Aedes answers so, and disconnects, for any level it does not know, so it is told this
      // one is such a level. (MQTT 5, level 5, Aedes refuses by itself.)
      log.warn({ remote: remoteOf(client), protocolVersion: packet.protocolVersion, returnCode: 1 }, "connection refused: only MQTT 3.1.1 (protocol level 4) is spoken");
      metrics.connectRefused("protocol_level"); // PROTOCOL_LEVEL_REFUSAL (broker/metrics.ts)
      if (packet.protocolVersion === 3) (packet as { protocolVersion: number }).protocolVersion = 0;
    }
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

  // Connects per device (docs/protocol.md §Limits): a reconnect loop costs a signature check, a
  // token row and a session each time; an authenticated device gets CONNECT_BURST at once, then
  // one every CONNECT_REFILL_MS. Only authenticated attempts count, so nobody can spend another
  // device's budget.
  const connects = o.connects ?? connectLimiter();
  /** Devices refused for connecting too often since their last accepted connect: logged once each. */
  const throttled = new Set<string>();

  type ConnectCallback = Parameters<Aedes["authenticate"]>[3];
  const refuser = (client: Client, callback: ConnectCallback) => (reason: ConnectRefusal) => {
    const refusal = CONNECT_REFUSALS[reason];
    metrics.connectRefused(reason);
    // A reconnect loop would otherwise write a log line per attempt: the first refusal says it.
    const repeated = reason === "too_many_connects" && throttled.has(client.id);
    if (reason === "too_many_connects") throttled.add(client.id);
    if (!repeated) log.warn({ clientId: client.id.slice(0, 64), reason, returnCode: refusal.returnCode, remote: remoteOf(client) }, `connection refused: ${refusal.detail}`);
    const err = Object.assign(new Error(refusal.detail), { returnCode: refusal.returnCode });
    callback(err as Error & { returnCode: 2 | 3 | 4 | 5 }, false);
  };

  aedes.authenticate = (client, username, password, callback) => {
    const refuse = refuser(client, callback);
    let checked: CheckedConnect;
    try {
      checked = authenticator.check(client.id, username, password, o.clock());
    } catch (err) {
      log.error({ err: errorSummary(err), clientId: client.id }, "connect check failed");
      return refuse("unavailable");
    }
    if (!checked.ok) return refuse(checked.reason);
    const ok = checked;
    const admit = () => admitChecked(client, ok, callback);
    // Several nodes: the device's budgets come along from the node it was on (broker/cluster.ts).
    if (o.seedLimits === undefined) admit();
    else o.seedLimits(ok.device.id).then(admit, admit);
  };

  const admitChecked = (client: Client, checked: Extract<CheckedConnect, { ok: true }>, callback: ConnectCallback) => {
    const refuse = refuser(client, callback);
    const remote = remoteOf(client);
    const device = checked.device;
    if (!connects.take(device.id, o.clock())) return refuse("too_many_connects");
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
        throttled.delete(device.id);
        log.info({ device: device.id, kind: device.kind, remote }, "connection accepted");
        metrics.connectAccepted();
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
    const state = upState(client);
    // Aedes reads on from a connection while its messages wait for their commit: past the bound
    // it reads nothing more from it (the device's TCP window fills) until one of them is stored.
    if (++state.unstored >= maxUpUnstored && !state.paused) {
      state.paused = true;
      (client as unknown as Pausable).pause();
    }
    // Held until the message's transaction commits: the PUBACK then means "stored".
    inbox.submit(client.id, packet.payload as Buffer, () => {
      callback(null);
      if (--state.unstored < maxUpUnstored && state.paused) {
        state.paused = false;
        // Not from inside the inbox's answers: the reads it starts go through these hooks again.
        setImmediate(() => {
          if (client.closed || state.paused) return;
          // While paused, Aedes does not count down the packets whose handling ends, so its count
          // would never reach 0 again: it starts over from 1, which resume() takes to 0 to read.
          const c = client as unknown as Pausable;
          c._parsingBatch = 1;
          c.resume();
        });
      }
    });
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
  aedes.on("subscribe", (_subscriptions, client) => {
    if (client !== null) o.onSubscriptionsChanged(client);
  });
  aedes.on("unsubscribe", (_unsubscriptions, client) => {
    if (client !== null) o.onSubscriptionsChanged(client);
  });

  aedes.on("clientDisconnect", (client) => {
    log.info({ device: client.id }, "disconnected");
    o.onDisconnected?.(client.id);
  });
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
}

/** The peer address of a client's connection (Aedes reads the TCP socket itself: `conn` is it). */
export function remoteOf(client: Client | undefined | null): string | undefined {
  const s = (client as unknown as { conn?: Partial<Socket> } | undefined | null)?.conn;
  return s?.remoteAddress === undefined ? undefined : `${s.remoteAddress}:${s.remotePort}`;
}
