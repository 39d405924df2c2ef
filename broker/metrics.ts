/**
 * The broker's metrics in Prometheus' terms (prom-client): the implementation of the Metrics
 * interface the service and store layers call (src/service/metrics.ts), plus gauges read on
 * each scrape and Node's process metrics (CPU, memory, event-loop delay, GC).
 *
 * Each broker has a registry of its own, not prom-client's global one, so several brokers in one
 * process (the tests, the demo) do not clash. Names start with `handoff_` and end with their unit
 * (`_seconds`, `_bytes`, `_messages`, `_total` for counters); docs/operations.md §Monitoring lists them.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import { FINAL_STATUSES } from "../src/core/payment.ts";
import { ERROR_CODES } from "../src/protocol/errors.ts";
import { downBodies, upBodies } from "../src/protocol/messages.ts";
import { CONNECT_REFUSALS } from "../src/service/connect.ts";
import type { Metrics } from "../src/service/metrics.ts";
import type { Db } from "../src/store/db.ts";

export const METRIC_PREFIX = "handoff_";

/** What the metrics read when scraped, rather than count as it happens. */
export interface ScrapeSources {
  /** Open device connections, by the name of the listener that accepted each. */
  readonly openConnections: () => ReadonlyMap<string, number>;
  /** Outbox messages not yet delivered, or null when it cannot be read now (the database is closed). */
  readonly outboxBacklog: () => number | null;
  /** How long the messages the broker handles have waited, as admission judges it (ms; src/service/admission.ts). */
  readonly messageWaitMs?: () => number;
}

export interface PromMetrics extends Metrics {
  readonly registry: Registry;
}

/** A CONNECT refused in preConnect: a protocol level other than MQTT 3.1.1's (4). */
export const PROTOCOL_LEVEL_REFUSAL = "protocol_level";

export function promMetrics(sources: ScrapeSources): PromMetrics {
  const registry = new Registry();
  const registers = [registry];
  const p = METRIC_PREFIX;

  // Process CPU, resident memory, heap, open handles, GC and event-loop delay (a histogram from
  // perf_hooks.monitorEventLoopDelay: handoff_nodejs_eventloop_lag_p99_seconds and friends).
  collectDefaultMetrics({ register: registry, prefix: p });

  const listeners = new Set<string>(["tcp"]);
  new Gauge({
    name: `${p}connections_open`,
    help: "Device connections open now (CONNECT accepted), by the listener that accepted them",
    labelNames: ["listener"],
    registers,
    collect() {
      const counts = sources.openConnections();
      for (const name of counts.keys()) listeners.add(name);
      // A listener whose last connection closed reads 0, not its last value.
      for (const name of listeners) this.set({ listener: name }, counts.get(name) ?? 0);
    },
  });
  const accepted = new Counter({ name: `${p}connects_accepted_total`, help: "CONNECTs accepted (CONNACK 0)", registers });
  const refused = new Counter({ name: `${p}connects_refused_total`, help: "CONNECTs refused, by reason (docs/protocol.md §Connecting)", labelNames: ["reason"], registers });
  const messagesIn = new Counter({
    name: `${p}messages_in_total`,
    help: "Messages devices published to the broker, by envelope type (malformed: no readable envelope; unknown: a type the protocol does not have)",
    labelNames: ["type"],
    registers,
  });
  const messagesOut = new Counter({ name: `${p}messages_out_total`, help: "Messages written to device connections, resends included, by type", labelNames: ["type"], registers });
  const errors = new Counter({ name: `${p}error_answers_total`, help: "error answers sent to devices, by code (docs/protocol.md §Errors)", labelNames: ["code"], registers });
  const started = new Counter({ name: `${p}payments_started_total`, help: "Payments created, by mode (auto: no phone prompt; prompt: the phone is asked)", labelNames: ["mode"], registers });
  const ended = new Counter({ name: `${p}payments_ended_total`, help: "Payments that reached a final status, by outcome", labelNames: ["outcome"], registers });
  const paymentSeconds = new Histogram({
    name: `${p}payment_duration_seconds`,
    help: "Time from a payment's pay_request to its result (final status), by the broker's clock",
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300],
    registers,
  });
  const batchSize = new Histogram({
    name: `${p}commit_batch_messages`,
    help: "Messages, broker jobs and receipts handled in one group commit",
    buckets: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000],
    registers,
  });
  const commitSeconds = new Histogram({
    name: `${p}commit_duration_seconds`,
    help: "Time a group commit's SQLite transaction held the event loop (handling and COMMIT, without the disk sync)",
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
    registers,
  });
  const syncSeconds = new Histogram({
    name: `${p}disk_sync_duration_seconds`,
    help: "Time one fsync of the SQLite WAL took (in the thread pool, or on the event loop at light load); answers wait for it",
    buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers,
  });
  new Gauge({
    name: `${p}outbox_undelivered_messages`,
    help: `Messages stored for devices and not yet delivered (the outbox backlog), counted up to ${BACKLOG_COUNT_CAP}: at that value, at least as many`,
    registers,
    collect() {
      const n = sources.outboxBacklog();
      if (n !== null) this.set(n);
    },
  });

  new Gauge({
    name: `${p}message_wait_seconds`,
    help: "How long the messages handled in the last turns waited before handling (moving average, beyond each device's quickest trip); past --busy-after-ms new pay requests are refused busy",
    registers,
    collect() {
      this.set((sources.messageWaitMs?.() ?? 0) / 1000);
    },
  });

  // Every label value known in advance starts at 0: a rate() or an alert sees the series before
  // its first event, and a dashboard shows what did not happen.
  for (const reason of [...Object.keys(CONNECT_REFUSALS), PROTOCOL_LEVEL_REFUSAL]) refused.inc({ reason }, 0);
  for (const type of [...Object.keys(upBodies), "malformed", "unknown"]) messagesIn.inc({ type }, 0);
  for (const type of Object.keys(downBodies)) messagesOut.inc({ type }, 0);
  for (const code of Object.keys(ERROR_CODES)) errors.inc({ code }, 0);
  for (const mode of ["auto", "prompt"]) started.inc({ mode }, 0);
  for (const outcome of FINAL_STATUSES) ended.inc({ outcome }, 0);

  return {
    registry,
    messageIn: (type) => messagesIn.inc({ type }),
    messageOut: (type) => messagesOut.inc({ type }),
    errorAnswer: (code) => errors.inc({ code }),
    batch: (size, commitMs) => {
      batchSize.observe(size);
      commitSeconds.observe(commitMs / 1000);
    },
    diskSync: (ms) => syncSeconds.observe(ms / 1000),
    paymentStarted: (mode) => started.inc({ mode }),
    paymentEnded: (outcome, latencyMs) => {
      ended.inc({ outcome });
      paymentSeconds.observe(Math.max(0, latencyMs) / 1000);
    },
    connectAccepted: () => accepted.inc(),
    connectRefused: (reason) => refused.inc({ reason }),
  };
}

/**
 * Open connections by listener. A listener names the connections it accepts by setting
 * `listenerName` on the stream it hands Aedes (Aedes keeps it as `client.conn`); unnamed ones
 * came from the plain TCP listener.
 */
export function connectionsByListener(clients: Readonly<Record<string, { readonly conn?: unknown } | undefined>>): Map<string, number> {
  const counts = new Map<string, number>();
  for (const client of Object.values(clients)) {
    if (client === undefined) continue;
    const name = (client.conn as { listenerName?: unknown } | undefined)?.listenerName;
    const listener = typeof name === "string" ? name : "tcp";
    counts.set(listener, (counts.get(listener) ?? 0) + 1);
  }
  return counts;
}

/**
 * Undelivered outbox messages are counted up to this many per scrape. Counting is a scan of the
 * undelivered index on the event loop (measured: 0.3 ms for 10,000 rows, 6-9 ms for 100,000,
 * 67-100 ms for 1,000,000): past the cap, the exact number tells an operator nothing more.
 */
export const BACKLOG_COUNT_CAP = 100_000;

/** Reads the outbox backlog for the gauge (null once the database is closed). */
export function outboxBacklogReader(db: Db): () => number | null {
  const count = db.prepare<[number], { n: number }>("SELECT count(*) AS n FROM (SELECT 1 FROM outbox WHERE delivered_ms IS NULL LIMIT ?) AS w");
  return () => (db.open ? (count.get(BACKLOG_COUNT_CAP)?.n ?? 0) : null);
}
